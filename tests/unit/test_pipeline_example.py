"""pipeline-example.yml and tasks/compose-env.yml: valid YAML whose every compose-env block passes our own validation.

Paths are not resolved here (that needs the real inputs); what is checked instead is
that every path starts with an input the step actually receives.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_env.config.model import merged_params, parse_source
from compose_env.config.schema import validate
from compose_env.errors import UserError
from compose_env.run.task import DEFAULT_OUTPUT_DIR, validate_compose_env
from pipeline_lint import steps

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = yaml.safe_load((ROOT / "pipeline-example.yml").read_text())
TASK_FILE = yaml.safe_load((ROOT / "tasks" / "compose-env.yml").read_text())
TASK_PATH = "/opt/resource/task"
#: The one variable a user fills in: where their compose-env image is (there is no public one).
IMAGE_VARIABLE = "((compose_env_image))"


def all_steps() -> list[dict[str, Any]]:
    return [step for job in PIPELINE["jobs"] for step in steps(job["plan"])]


def resource_types() -> dict[str, str]:
    return {resource["name"]: resource["type"] for resource in PIPELINE["resources"]}


def compose_env_type() -> dict[str, Any]:
    return next(t for t in PIPELINE["resource_types"] if t["source"]["repository"] == IMAGE_VARIABLE)


def compose_env_puts() -> list[dict[str, Any]]:
    kind = compose_env_type()["name"]
    return [
        step for step in all_steps() if "put" in step and resource_types()[step.get("resource", step["put"])] == kind
    ]


def compose_env_tasks() -> list[dict[str, Any]]:
    return [
        step["config"]
        for step in all_steps()
        if "task" in step and step.get("config", {}).get("run", {}).get("path") == TASK_PATH
    ]


def validate_put(resource_name: str, params: dict[str, Any]) -> None:
    """What `out` checks before it resolves paths: source, source.params, and the merged params."""
    source = next(r for r in PIPELINE["resources"] if r["name"] == resource_name)["source"]
    parse_source(source)
    merged = merged_params(source, params)
    validate(merged.values, "put_params", merged.root_for)


def image_paths(params: dict[str, Any]) -> list[str]:
    return [item if isinstance(item, str) else item["path"] for item in params.get("images", [])]


def first_components(params: dict[str, Any], defaults: dict[str, Any]) -> set[str]:
    merged = {**defaults, **params}
    compose_files = merged["compose_files"]
    paths = [
        *([compose_files] if isinstance(compose_files, str) else compose_files),
        *image_paths(merged),
        *merged.get("env_files", []),
    ]
    return {Path(path).parts[0] for path in paths}


# ---------------------------------------------------------------- the pipeline


def test_the_pipeline_declares_the_resource_type_privileged() -> None:
    assert compose_env_type()["privileged"] is True
    assert compose_env_type()["type"] == "registry-image"


def test_every_compose_env_put_passes_validation_and_streams_only_what_it_reads() -> None:
    puts = compose_env_puts()
    assert puts, "the example has no compose-env put"
    for step in puts:
        resource = step.get("resource", step["put"])
        validate_put(resource, step["params"])
        assert step["no_get"] is True
        defaults = next(r for r in PIPELINE["resources"] if r["name"] == resource)["source"].get("params", {})
        assert first_components(step["params"], defaults) <= set(step["inputs"]), (
            f"put {resource}: a path outside its inputs"
        )


def test_every_compose_env_task_passes_validation_and_has_its_inputs_and_output() -> None:
    tasks = compose_env_tasks()
    assert tasks, "the example has no compose-env task"
    for config in tasks:
        compose_env = config["params"]["COMPOSE_ENV"]
        validate_compose_env(compose_env)
        inputs = {item["name"] for item in config["inputs"]}
        assert first_components(compose_env, {}) <= inputs
        assert compose_env.get("output_dir", DEFAULT_OUTPUT_DIR) in {item["name"] for item in config["outputs"]}


def test_compose_env_tasks_run_privileged_from_the_published_image() -> None:
    for step in all_steps():
        if step.get("config", {}).get("run", {}).get("path") == TASK_PATH:
            assert step["privileged"] is True
            assert (
                step["config"]["image_resource"]["source"]["repository"] == compose_env_type()["source"]["repository"]
            )


def test_the_pipeline_shows_every_image_producer_shape() -> None:
    types = resource_types()
    gets = [step for step in all_steps() if "get" in step]
    assert any(types[s["get"]] == "registry-image" and s.get("params", {}).get("format") == "oci" for s in gets)
    assert any(types[s["get"]] == "docker-image" and s.get("params", {}).get("save") is True for s in gets)
    builds = [
        s for s in all_steps() if "task" in s and "oci-build-task" in str(s.get("config", {}).get("image_resource"))
    ]
    assert builds and all(s["privileged"] for s in builds)
    built = {s.get("output_mapping", {}).get("image", "image") for s in builds}
    for params in [step["params"] for step in compose_env_puts()] + [
        c["params"]["COMPOSE_ENV"] for c in compose_env_tasks()
    ]:
        explicit = [
            item for item in params["images"] if isinstance(item, dict) and Path(item["path"]).parts[0] in built
        ]
        assert explicit and all(item.get("tag") for item in explicit), "oci-build-task output needs an explicit tag"


def test_the_task_variant_keeps_the_junit_report_even_when_the_tests_fail() -> None:
    task_steps = [s for s in all_steps() if s.get("config", {}).get("run", {}).get("path") == TASK_PATH]
    artifacts = [a for s in task_steps for a in s["config"]["params"]["COMPOSE_ENV"].get("artifacts", [])]
    assert any(a["path"].endswith(".xml") for a in artifacts)
    assert all("ensure" in s for s in task_steps), "the report must be published whether the task passes or not"


def test_validation_is_not_vacuous_a_typo_in_the_example_would_be_caught() -> None:
    step = copy.deepcopy(compose_env_puts()[0])
    step["params"]["comand"] = step["params"].pop("command")
    with pytest.raises(UserError) as error:
        validate_put(step["put"], step["params"])
    assert error.value.path == "params.comand"

    compose_env = copy.deepcopy(compose_env_tasks()[0]["params"]["COMPOSE_ENV"])
    compose_env["artifacts"][0]["path"] = "reports/junit.xml"
    with pytest.raises(UserError) as error:
        validate_compose_env(compose_env)
    assert error.value.path == "COMPOSE_ENV.artifacts[0].path"


# ---------------------------------------------------------------- tasks/compose-env.yml


def test_the_shipped_task_config_is_runnable_by_fly_execute() -> None:
    assert TASK_FILE["platform"] == "linux"
    assert TASK_FILE["image_resource"]["type"] == "registry-image"
    assert TASK_FILE["image_resource"]["source"]["repository"] == IMAGE_VARIABLE
    assert TASK_FILE["run"]["path"] == TASK_PATH
    assert [item["name"] for item in TASK_FILE["inputs"]] == ["code"]
    assert [item["name"] for item in TASK_FILE["outputs"]] == [DEFAULT_OUTPUT_DIR]


def test_the_shipped_task_configs_compose_env_passes_validation() -> None:
    compose_env = TASK_FILE["params"]["COMPOSE_ENV"]
    validate_compose_env(compose_env)
    assert first_components(compose_env, {}) <= {item["name"] for item in TASK_FILE["inputs"]}


def test_the_shipped_task_config_runs_the_bundled_example_as_is() -> None:
    """The README's quick start: `-i code=example/put`, the example's compose file and both image layouts."""
    compose_env = TASK_FILE["params"]["COMPOSE_ENV"]
    example = ROOT / "example" / "put"
    for path in [*compose_env["compose_files"], *image_paths(compose_env)]:
        assert path.startswith("code/")
    for compose_file in compose_env["compose_files"]:
        assert (example / Path(compose_file).relative_to("code")).is_file()
    built_by_example = (ROOT / "example" / "build.sh").read_text()
    for path in image_paths(compose_env):
        assert f'"$put/{Path(path).parts[1]}' in built_by_example, f"example/build.sh does not make {path}"


# ---------------------------------------------------------------- the image variable


def test_both_files_name_the_image_only_through_the_one_variable() -> None:
    """Copy-paste safe: no made-up public repository, and every compose-env image reference is the variable."""
    texts = {name: (ROOT / name).read_text() for name in ("pipeline-example.yml", "tasks/compose-env.yml", "README.md")}
    for name, text in texts.items():
        assert "compose-env/compose-env" not in text, f"{name} names a made-up public repository"
    for name in ("pipeline-example.yml", "tasks/compose-env.yml"):
        assert IMAGE_VARIABLE in texts[name]
    variables = set(re.findall(r"\(\((\w+)\)\)", texts["tasks/compose-env.yml"]))
    assert variables == {"compose_env_image"}, "fly execute must need no other variable"
    images = [compose_env_type()["source"]] + [config["image_resource"]["source"] for config in compose_env_tasks()]
    assert {source["repository"] for source in images} == {IMAGE_VARIABLE}


def test_the_readme_quick_start_runs_the_shipped_task_file_on_the_example() -> None:
    """The README's quick start sits in its Task mode section.

    (Concourse's convention puts Source Configuration first.)
    """
    readme = (ROOT / "README.md").read_text()
    task_mode = readme.index("\n## Task mode")
    start = readme.index("### Quick start", task_mode)
    quick_start = readme[start : readme.index("\n## ", start)]
    command = " ".join(quick_start.replace("\\\n", " ").split())
    assert (
        "fly -t ci execute -c tasks/compose-env.yml --privileged --include-ignored -i code=example/put -o "
        "compose-env-output=./out" in command
    )
    assert f"-v {IMAGE_VARIABLE[2:-2]}=" in command
