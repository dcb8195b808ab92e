"""Schema errors become one line per problem, naming the path and the fix."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from compose_env.config.schema import (
    SCHEMA_NAMES,
    default_at,
    did_you_mean,
    problems_in,
    subschema,
    validate,
    with_defaults,
)
from compose_env.errors import UserError


def lines(instance: object, schema: str = "put_params", root: str = "params") -> list[str]:
    with pytest.raises(UserError) as caught:
        validate(instance, schema, root)
    return [
        (f"{path}: {message}" if path else message) + (f" ({hint})" if hint else "")
        for path, message, hint in caught.value.problems
    ]


def test_every_schema_ships_as_json_in_the_package() -> None:
    for name in SCHEMA_NAMES:
        schema = json.loads(resources.files("compose_env.config").joinpath("schemas", f"{name}.json").read_text())
        assert schema["$id"] == f"compose-env/{name}.json"


def test_a_value_of_the_wrong_kind_in_a_list_names_its_index() -> None:
    assert lines({"compose_files": "a.yml", "images": ["a", "b", 42]}) == [
        "params.images[2]: expected a path or {path, tag}, got 42"
    ]


def test_an_object_that_fits_one_branch_reports_its_precise_problem() -> None:
    assert lines({"compose_files": "a.yml", "images": [{"path": 3}]}) == [
        "params.images[0].path: must be a string, got a number (3)"
    ]
    assert lines({"compose_files": "a.yml", "images": [{"path": "a", "tag": 5}]}) == [
        "params.images[0].tag: expected a string or a list of strings, got 5"
    ]


def test_a_list_that_fits_the_list_branch_names_the_bad_item() -> None:
    assert lines({"compose_files": ["a.yml", 3]}) == ["params.compose_files[1]: must be a string, got a number (3)"]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"compose_file": "a.yml"}, "params.compose_file: unknown key (did you mean 'compose_files'?)"),
        ({"composeFiles": "a.yml"}, "params.composeFiles: unknown key (did you mean 'compose_files'?)"),
        ({"compose_files": "a.yml", "logs": {"tial": 3}}, "params.logs.tial: unknown key (did you mean 'tail'?)"),
        (
            {"compose_files": "a.yml", "images": [{"path": "a", "tags": "x"}]},
            "params.images[0].tags: unknown key (did you mean 'tag'?)",
        ),
    ],
)
def test_unknown_keys_get_a_did_you_mean_at_any_depth(params: dict[str, object], expected: str) -> None:
    assert expected in lines(params)


def test_an_unknown_key_far_from_any_lists_the_known_ones() -> None:
    [line] = [line for line in lines({"compose_files": "a.yml", "zzz": 1}) if "zzz" in line]
    assert "known keys: command, compose_files, docker_socket, env" in line


def test_unknown_source_keys_are_errors_too() -> None:
    assert lines({"dockerd": {"storage_drvier": "vfs"}}, "source", "source") == [
        "source.dockerd.storage_drvier: unknown key (did you mean 'storage_driver'?)"
    ]


def test_every_problem_is_reported_at_once_sorted_by_path() -> None:
    found = lines({"compose_file": "a", "timeout": "soon", "env": {"A": [1]}})
    assert [line.split(":")[0] for line in found] == [
        "params.compose_file",
        "params.compose_files",
        "params.env.A",
        "params.timeout",
    ]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"compose_files": ""}, "params.compose_files: must not be empty"),
        ({"compose_files": []}, "params.compose_files: must not be an empty list"),
        ({"compose_files": "a", "timeout": -1}, "params.timeout: must be more than 0, got -1"),
        (
            {"compose_files": "a", "timeout": "10 minutes"},
            'params.timeout: expected a duration such as "90s", "30m", "1h" or a number of seconds, got "10 minutes"',
        ),
        ({"compose_files": "a", "timeout": True}, "params.timeout: expected a duration"),
        ({"compose_files": "a", "stop_grace": -1}, "params.stop_grace: must be at least 0, got -1"),
        ({"compose_files": "a", "fail_on_error": "no"}, 'params.fail_on_error: must be a boolean, got a string ("no")'),
        ({"compose_files": "a", "project_name": "My App"}, "params.project_name: expected a compose project name"),
        ({}, "params.compose_files: is required (name the compose file(s)"),
    ],
)
def test_messages_say_what_the_value_must_be(params: dict[str, object], expected: str) -> None:
    assert any(line.startswith(expected) for line in lines(params)), lines(params)


def test_an_enum_typo_gets_a_did_you_mean() -> None:
    assert lines({"dockerd": {"storage_driver": "overlay"}}, "source", "source") == [
        'source.dockerd.storage_driver: must be one of auto, overlay2, fuse-overlayfs, vfs, got "overlay" (did you '
        "mean 'overlay2'?)"
    ]


def test_a_long_value_is_shortened_in_the_message() -> None:
    [line] = lines({"compose_files": "a", "command": {"x": "y" * 100}})
    assert len(line) < 120 and line.endswith("...")


def test_the_task_config_accepts_put_params_and_task_keys_and_names_unknown_ones() -> None:
    assert (
        problems_in(
            {
                "compose_files": "a.yml",
                "output_dir": "out",
                "artifacts": [{"service": "s", "path": "/x"}],
                "source": {},
            },
            "task_config",
        )
        == []
    )
    assert lines({"compose_file": "a.yml", "source": {"dockerd": {"debug": "yes"}}}, "task_config", "COMPOSE_ENV") == [
        "COMPOSE_ENV.compose_file: unknown key (did you mean 'compose_files'?)",
        'COMPOSE_ENV.source.dockerd.debug: must be a boolean, got a string ("yes")',
    ]


def test_the_in_request_refuses_params_and_needs_a_version() -> None:
    assert lines({"params": {"skip_download": True}}, "in_request", "") == [
        "params.skip_download: unknown key (`in` takes no params: remove get_params from the put step)",
        "version: is required (`in` fetches the version a put produced; Concourse sends it)",
    ]


def test_version_values_must_be_strings() -> None:
    assert lines({"version": {"exit_code": 0}}, "request", "") == [
        "version.exit_code: must be a string, got a number (0)"
    ]
    assert lines({"version": ["x"]}, "request", "") == [
        'version: expected a version object of strings, or null, got ["x"]'
    ]


def test_ignoring_required_checks_defaults_alone() -> None:
    assert problems_in({"timeout": "5m"}, "put_params", ignore_required=True) == []
    assert problems_in({"images": [{"tag": "x"}]}, "put_params", ignore_required=True)[0].message == "is required"


def test_did_you_mean_needs_a_close_match() -> None:
    assert did_you_mean("compose_file", ["compose_files", "command"]) == "compose_files"
    assert did_you_mean("banana", ["compose_files", "command"]) is None


def test_null_is_named_once() -> None:
    assert lines({"compose_files": "a", "env": {"A": None}}) == [
        "params.env.A: expected a string, number or boolean, got null"
    ]


def test_a_flood_of_problems_is_cut_short() -> None:
    found = lines({"compose_files": "a", "env": {f"K{i}": [i] for i in range(30)}})
    assert len(found) == 21
    assert found[-1] == "... and 10 more problems"


# -- defaults


def test_defaults_fill_absent_keys_at_any_depth_and_leave_given_ones() -> None:
    filled = with_defaults(
        {"dockerd": {"debug": True}, "registries": [{"host": "h", "username": "u", "password": "p"}]}, "source"
    )
    assert filled["startup_timeout"] == 60
    assert filled["dockerd"]["debug"] is True
    assert filled["dockerd"]["storage_driver"] == "auto"
    assert filled["registries"] == [{"host": "h", "username": "u", "password": "p"}]
    assert "mtu" not in filled["dockerd"] and "docker_host" not in filled


def test_an_absent_object_with_a_default_gets_its_properties_defaults() -> None:
    assert with_defaults({"compose_files": "a.yml"}, "put_params")["logs"] == {"tail": 20, "metadata_bytes": 4000}


def test_defaults_follow_refs_into_other_schemas() -> None:
    filled = with_defaults({"compose_files": "a.yml"}, "task_config")
    assert filled["fail_on_error"] is True
    assert filled["source"]["dockerd"]["data_root"] == "/scratch/docker"


def test_filling_defaults_leaves_the_document_untouched() -> None:
    given = {"compose_files": "a.yml", "logs": {"services": ["db"]}}
    filled = with_defaults(given, "put_params")
    filled["logs"]["services"].append("web")
    filled["env"]["A"] = "1"
    assert given == {"compose_files": "a.yml", "logs": {"services": ["db"]}}
    assert with_defaults({}, "put_params")["env"] == {}


def test_a_default_is_read_by_its_path_through_refs_and_list_items() -> None:
    assert default_at("source", "dockerd", "storage_driver") == "auto"
    assert default_at("task_config", "logs", "tail") == 20
    assert subschema("task_config", "artifacts", "to")["x-default-folder"] == "artifacts"
    with pytest.raises(KeyError):
        default_at("source", "docker_host")
