"""Configuration: source.params merged under params, every path confined to the put directory."""

from __future__ import annotations

import ast
import inspect
import os
from collections.abc import Iterator
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest
from compose_env.config import model
from compose_env.config.model import (
    BuildMetadata,
    DockerdOptions,
    LogOptions,
    PutParams,
    Source,
    deep_merge,
    merged_params,
    parse_put_request,
    parse_source,
)
from compose_env.config.paths import PathResolver
from compose_env.config.schema import SCHEMA_NAMES, load_schema, subschema
from compose_env.engine.cache import parse_size
from compose_env.errors import UserError
from compose_env.run.task import parse_task_config

BUILD = BuildMetadata(pipeline_name="pipe", job_name="job", build_name="3")


@pytest.fixture
def put_dir(tmp_path: Path) -> Path:
    put = tmp_path / "put"
    (put / "repo" / "ci").mkdir(parents=True)
    (put / "repo" / "ci" / "docker-compose.yml").write_text("services: {}\n")
    (put / "repo" / "ci" / ".env").write_text("A=1\n")
    (put / "image").mkdir()
    (put / "image" / "image.tar").write_bytes(b"")
    (tmp_path / "outside.yml").write_text("services: {}\n")
    return put


def error_of(request: dict[str, object], put_dir: Path) -> UserError:
    with pytest.raises(UserError) as caught:
        parse_put_request(request, put_dir, BUILD)
    return caught.value


def rendered(request: dict[str, object], put_dir: Path) -> str:
    return error_of(request, put_dir).render()


# -- paths


def test_paths_inside_resolve_to_real_paths(put_dir: Path) -> None:
    config = parse_put_request(
        {"params": {"compose_files": "repo/ci/docker-compose.yml", "images": ["image"]}}, put_dir, BUILD
    )

    assert config.params.compose_files == (put_dir / "repo/ci/docker-compose.yml",)
    assert config.params.project_directory == put_dir / "repo/ci"
    assert config.params.images[0].path == put_dir / "image"
    assert config.params.project_name == "pipe-job-3"


def test_an_absolute_path_inside_the_put_directory_is_fine(put_dir: Path) -> None:
    given = str(put_dir / "repo/ci/docker-compose.yml")
    assert PathResolver(put_dir).resolve(given, "params.compose_files") == put_dir / "repo/ci/docker-compose.yml"


def test_dotdot_escape_is_refused_with_the_param_path(put_dir: Path) -> None:
    text = rendered({"params": {"compose_files": ["repo/../../outside.yml"]}}, put_dir)
    assert text.startswith(
        "error: params.compose_files[0]: 'repo/../../outside.yml' is a path that leads outside the put directory"
    )
    assert "<input>/<file>" in text


def test_absolute_path_outside_is_refused(put_dir: Path, tmp_path: Path) -> None:
    outside = str(tmp_path / "outside.yml")
    assert f"'{outside}' is an absolute path outside the put directory" in rendered(
        {"params": {"compose_files": outside}}, put_dir
    )


def test_a_symlink_leading_outside_is_refused(put_dir: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "outside.yml", put_dir / "link.yml")
    os.symlink(tmp_path, put_dir / "dir-link")

    assert "'link.yml' is a symlink that leads outside the put directory" in rendered(
        {"params": {"compose_files": "link.yml"}}, put_dir
    )
    text = rendered(
        {"params": {"compose_files": "repo/ci/docker-compose.yml", "images": ["dir-link/outside.yml"]}}, put_dir
    )
    assert text.startswith("error: params.images[0]: 'dir-link/outside.yml' is a symlink that leads outside")


def test_a_symlink_inside_the_put_directory_is_followed(put_dir: Path) -> None:
    os.symlink("repo/ci/docker-compose.yml", put_dir / "compose.yml")
    config = parse_put_request({"params": {"compose_files": "compose.yml"}}, put_dir, BUILD)
    assert config.params.compose_files == (put_dir / "repo/ci/docker-compose.yml",)


def test_a_nul_character_is_a_user_error_not_a_crash(put_dir: Path) -> None:
    assert "contains a NUL character" in rendered({"params": {"compose_files": "a\0b"}}, put_dir)


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        ("repo/ci/docker-compose.yaml", "did you mean repo/ci/docker-compose.yml?"),
        ("rpeo/ci/docker-compose.yml", "did you mean repo?"),
        ("src/docker-compose.yml", "the put directory holds: image, repo. Is 'src' among the put's `inputs`?"),
        ("repo/deploy/docker-compose.yml", "repo/ holds: ci"),
    ],
)
def test_a_missing_path_says_where_it_stops_and_what_is_there(put_dir: Path, given: str, hint: str) -> None:
    error = error_of({"params": {"compose_files": given}}, put_dir)
    assert error.message == f"no such file: {given}"
    assert error.hint == hint


def test_kinds_are_checked(put_dir: Path) -> None:
    assert "repo is not a file but a directory" in rendered({"params": {"compose_files": "repo"}}, put_dir)
    text = rendered(
        {"params": {"compose_files": "repo/ci/docker-compose.yml", "project_directory": "image/image.tar"}}, put_dir
    )
    assert "params.project_directory: image/image.tar is not a directory" in text
    assert "params.env_files[1]: no such file: nope.env" in rendered(
        {"params": {"compose_files": "repo/ci/docker-compose.yml", "env_files": ["repo/ci/.env", "nope.env"]}}, put_dir
    )


def test_parsing_never_writes_into_the_put_directory(put_dir: Path) -> None:
    before = {p: (p.lstat().st_mtime_ns, p.lstat().st_size) for p in put_dir.rglob("*")}
    parse_put_request(
        {"params": {"compose_files": "repo/ci/docker-compose.yml", "images": ["image"], "env_files": ["repo/ci/.env"]}},
        put_dir,
        BUILD,
    )
    assert {p: (p.lstat().st_mtime_ns, p.lstat().st_size) for p in put_dir.rglob("*")} == before


# -- source.params


def test_source_params_are_deep_merged_under_params() -> None:
    merged = merged_params(
        {"params": {"compose_files": ["a.yml"], "env": {"A": "1", "B": "1"}, "logs": {"tail": 5}, "profiles": ["x"]}},
        {"env": {"B": "2"}, "profiles": ["y"]},
    )
    assert merged.values == {
        "compose_files": ["a.yml"],
        "env": {"A": "1", "B": "2"},
        "logs": {"tail": 5},
        "profiles": ["y"],
    }


def test_deep_merge_copies_so_inputs_stay_untouched() -> None:
    base = {"env": {"A": "1"}}
    deep_merge(base, {"env": {"B": "2"}})["env"]["C"] = "3"
    assert base == {"env": {"A": "1"}}


def test_a_problem_in_a_default_is_named_under_source_params(put_dir: Path) -> None:
    error = error_of(
        {
            "source": {"params": {"timeout": "soon", "logs": {"tial": 1}}},
            "params": {"compose_files": 3, "logs": {"tail": 2}},
        },
        put_dir,
    )
    assert [path for path, _message, _hint in error.problems] == [
        "params.compose_files",
        "source.params.logs.tial",
        "source.params.timeout",
    ]


def test_a_path_from_source_params_is_named_there(put_dir: Path) -> None:
    text = rendered({"source": {"params": {"compose_files": "nope.yml"}}}, put_dir)
    assert text.startswith("error: source.params.compose_files: no such file: nope.yml")


def test_compose_files_may_come_from_source_params_alone(put_dir: Path) -> None:
    config = parse_put_request({"source": {"params": {"compose_files": "repo/ci/docker-compose.yml"}}}, put_dir, BUILD)
    assert config.params.compose_files == (put_dir / "repo/ci/docker-compose.yml",)


def test_source_and_params_problems_are_reported_together(put_dir: Path) -> None:
    error = error_of({"source": {"dockerd": {"debug": "yes"}}, "params": {"compose_file": "x"}}, put_dir)
    assert [path for path, _m, _h in error.problems] == [
        "source.dockerd.debug",
        "params.compose_file",
        "params.compose_files",
    ]


def test_parse_source_checks_the_defaults_without_requiring_compose_files() -> None:
    assert parse_source({"params": {"timeout": "5m"}}).startup_timeout == 60
    with pytest.raises(UserError, match=r"source\.params\.timout: unknown key"):
        parse_source({"params": {"timout": "5m"}})


def test_tls_needs_a_docker_host() -> None:
    with pytest.raises(UserError, match=r"source\.tls: is only used with source\.docker_host"):
        parse_source({"tls": {"ca": "x"}})


def test_a_duration_in_minutes_is_read_as_seconds(put_dir: Path) -> None:
    config = parse_put_request(
        {"params": {"compose_files": "repo/ci/docker-compose.yml", "timeout": "1.5m"}}, put_dir, BUILD
    )
    assert config.params.timeout == 90


def test_an_empty_source_params_from_yaml_is_no_defaults(put_dir: Path) -> None:
    # `params:` with no value under `source` arrives as null
    assert parse_source({"params": None}).startup_timeout == 60
    assert merged_params({"params": None}, {"compose_files": "a"}).values == {"compose_files": "a"}


# -- defaults: written in the schemas only

COMPOSE_FILE = "repo/ci/docker-compose.yml"
NO_BUILD = BuildMetadata()


def defaults_in(schema: dict[str, Any], keys: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every `default` under the schema's properties, at any depth (list items included), with its keys."""
    for key, child in schema.get("properties", {}).items():
        if "default" in child:
            yield (*keys, key), child["default"]
        yield from defaults_in(child, (*keys, key))
        yield from defaults_in(child.get("items", {}), (*keys, key))


def count_defaults(node: Any) -> int:
    if isinstance(node, dict):
        return ("default" in node) + sum(count_defaults(value) for value in node.values())
    return sum(count_defaults(value) for value in node) if isinstance(node, list) else 0


def as_field(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def attribute(value: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = getattr(value, key)
    return value


def observed(schema_name: str, keys: tuple[str, ...], put_dir: Path) -> tuple[Any, Any]:
    """(what a minimal request parses to at `keys`, what the schema's default there should give)."""
    default = as_field(subschema(schema_name, *keys)["default"])
    task = {"compose_files": COMPOSE_FILE}
    match schema_name, keys:
        case "source", ("params",):
            return merged_params({}, {}).defaults, default
        case "source", _:
            return attribute(parse_source({}), keys), default
        case "put_params", _:
            return attribute(
                parse_put_request({"params": {"compose_files": COMPOSE_FILE}}, put_dir, NO_BUILD).params, keys
            ), default
        case "task_config", ("output_dir",):
            return parse_task_config(task, put_dir, NO_BUILD).output_dir, put_dir / default
        case "task_config", ("cache_max_size",):
            cache = parse_task_config({**task, "cache_dir": "cache"}, put_dir, NO_BUILD).cache
            return cache and cache.max_size, parse_size(default, "")
        case "task_config", ("source",):
            return parse_task_config(task, put_dir, NO_BUILD).put.source, parse_source(default)
        case "task_config", _:
            return attribute(parse_task_config(task, put_dir, NO_BUILD), keys), default
    raise AssertionError(f"no way to observe {schema_name} {keys}")


def test_every_default_in_the_schemas_is_found_by_the_walk() -> None:
    for name in SCHEMA_NAMES:
        assert len(list(defaults_in(load_schema(name)))) == count_defaults(load_schema(name)), name


@pytest.mark.parametrize(
    ("schema_name", "keys"),
    [(name, keys) for name in SCHEMA_NAMES for keys, _default in defaults_in(load_schema(name))],
)
def test_a_minimal_request_gets_every_schema_default(schema_name: str, keys: tuple[str, ...], put_dir: Path) -> None:
    if "properties" in subschema(schema_name, *keys):
        # An object's `{}` default only lets its properties' defaults apply; each of them is a case of its own.
        assert subschema(schema_name, *keys)["default"] == {}
        return
    got, expected = observed(schema_name, keys, put_dir)
    assert got == expected


def test_an_artifact_without_to_goes_to_the_schemas_folder_for_its_service(put_dir: Path) -> None:
    folder = subschema("task_config", "artifacts", "to")["x-default-folder"]
    task = parse_task_config(
        {"compose_files": COMPOSE_FILE, "artifacts": [{"service": "tests", "path": "/reports"}]}, put_dir, NO_BUILD
    )
    assert [artifact.to for artifact in task.artifacts] == [f"{folder}/tests"]


@pytest.mark.parametrize(
    ("dataclass", "schema_name", "keys"),
    [
        (Source, "source", ()),
        (DockerdOptions, "source", ("dockerd",)),
        (PutParams, "put_params", ()),
        (LogOptions, "put_params", ("logs",)),
    ],
)
def test_a_dataclass_default_is_the_schemas_or_none(dataclass: type, schema_name: str, keys: tuple[str, ...]) -> None:
    properties = subschema(schema_name, *keys)["properties"]
    for item in fields(dataclass):
        if (item.default is MISSING and item.default_factory is MISSING) or item.name not in properties:
            continue  # required, or internal (file_labels)
        value = item.default_factory() if item.default is MISSING else item.default
        schema = subschema(schema_name, *keys, item.name)
        if "properties" in schema:
            assert value == type(value)(), f"{dataclass.__name__}.{item.name}"
        elif "default" in schema:
            assert value == as_field(schema["default"]), f"{dataclass.__name__}.{item.name}"
        else:
            assert value is None, f"{dataclass.__name__}.{item.name} has a default the schema does not have"


def test_the_parsers_take_no_fallback_for_a_schema_key() -> None:
    """`raw.get("tail", 20)` would be a second place for a default; `raw.get("mtu")` (absent: None) is not."""
    schema_keys = {keys[-1] for name in SCHEMA_NAMES for keys, _default in defaults_in(load_schema(name))}
    fallbacks = [
        node.args[0].value
        for node in ast.walk(ast.parse(inspect.getsource(model)))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and len(node.args) == 2
        if isinstance(node.args[0], ast.Constant) and node.args[0].value in schema_keys
    ]
    assert fallbacks == []


# -- env values


def test_env_takes_numbers_and_booleans_as_compose_passes_its_environment_values(put_dir: Path) -> None:
    env = {"PORT": 5432, "DEBUG": True, "QUIET": False, "RATIO": 0.5, "NAME": "app"}

    config = parse_put_request({"params": {"compose_files": "repo/ci/docker-compose.yml", "env": env}}, put_dir, BUILD)

    assert config.params.env == {"PORT": "5432", "DEBUG": "true", "QUIET": "false", "RATIO": "0.5", "NAME": "app"}


@pytest.mark.parametrize("value", [None, [1], {"a": 1}])
def test_env_refuses_values_compose_would_not_pass_as_they_are(put_dir: Path, value: object) -> None:
    message = rendered({"params": {"compose_files": "repo/ci/docker-compose.yml", "env": {"PORT": value}}}, put_dir)

    assert "params.env.PORT: expected a string, number or boolean" in message


def test_task_env_takes_numbers_and_booleans_too(tmp_path: Path) -> None:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "docker-compose.yml").write_text("services: {}\n")

    task = parse_task_config(
        {"compose_files": ["code/docker-compose.yml"], "env": {"PORT": 5432, "DEBUG": True}}, tmp_path, BUILD
    )

    assert task.put.params.env == {"PORT": "5432", "DEBUG": "true"}


def test_metadata_bytes_is_bounded_and_named(put_dir: Path) -> None:
    base = {"compose_files": "repo/ci/docker-compose.yml"}
    assert parse_put_request({"params": base}, put_dir, BUILD).params.logs.metadata_bytes == 4000
    assert (
        parse_put_request(
            {"params": {**base, "logs": {"metadata_bytes": 16384}}}, put_dir, BUILD
        ).params.logs.metadata_bytes
        == 16384
    )

    assert "params.logs.metadata_bytes: " in rendered(
        {"params": {**base, "logs": {"metadata_bytes": 100_000}}}, put_dir
    )
    assert "params.logs.metadata_bytes: " in rendered({"params": {**base, "logs": {"metadata_bytes": 1000}}}, put_dir)
