"""ci/pipeline.yml: the lint every pipeline passes (tests/pipeline_lint.py) catching each kind of mistake here, and the
release flow."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_env.config.model import merged_params, parse_source
from compose_env.config.schema import validate
from pipeline_lint import Document, Pipeline, steps

ROOT = Path(__file__).resolve().parents[2]
PIPELINE_FILE = ROOT / "ci" / "pipeline.yml"
PIPELINE = yaml.safe_load(PIPELINE_FILE.read_text())
REPOSITORY_INPUT = "code"
OCI_BUILD_TASK = "concourse/oci-build-task"


def job(name: str, pipeline: dict[str, Any] = PIPELINE) -> dict[str, Any]:
    return next(j for j in pipeline["jobs"] if j["name"] == name)


def job_steps(name: str, pipeline: dict[str, Any] = PIPELINE) -> list[dict[str, Any]]:
    return list(steps(job(name, pipeline)["plan"]))


def resource(name: str) -> dict[str, Any]:
    return next(r for r in PIPELINE["resources"] if r["name"] == name)


def resource_type(name: str) -> dict[str, Any]:
    return next(t for t in PIPELINE["resource_types"] if t["name"] == name)


def task_config(step: dict[str, Any]) -> dict[str, Any]:
    return step["config"] if "config" in step else yaml.safe_load(repository_path(step["file"]).read_text())


def repository_path(path: str) -> Path:
    """`code/x/y` is the repository's `x/y`: the pipeline's only repository input is named `code`."""
    first, _, rest = path.partition("/")
    assert first == REPOSITORY_INPUT, f"{path}: not in the repository input"
    return ROOT / rest


def the_step(job_name: str, kind: str, name: str) -> dict[str, Any]:
    return next(s for s in job_steps(job_name) if s.get(kind) == name)


def fly_validate(pipeline: dict[str, Any]) -> list[str]:
    """The problems tests/pipeline_lint.py finds (`fly validate-pipeline`'s, and the artifact flow's), without the
    file's label."""
    document = Document("ci/pipeline.yml", PIPELINE_FILE.read_text(), "", REPOSITORY_INPUT)
    return [problem.removeprefix("ci/pipeline.yml: ") for problem in Pipeline(pipeline, document, ROOT).problems()]


# ---------------------------------------------------------------- what fly validate-pipeline checks


def test_the_pipeline_passes_the_validate_pipeline_rules_and_names_only_existing_files() -> None:
    assert fly_validate(PIPELINE) == []
    assert [s["file"] for j in PIPELINE["jobs"] for s in job_steps(j["name"]) if "file" in s], (
        "the pipeline names no files"
    )


def _break(change: str) -> dict[str, Any]:
    broken = copy.deepcopy(PIPELINE)
    smoke = job("smoke-test", broken)["plan"]
    if change == "unknown-passed-job":
        smoke[0]["in_parallel"][0]["passed"] = ["biuld-and-test"]
    elif change == "unknown-resource":
        smoke[-1]["put"] = "compose-env-typo"
    elif change == "unknown-type":
        broken["resources"][-1]["type"] = "compose-env-release"
    elif change == "missing-task-file":
        smoke[1]["in_parallel"][0]["file"] = "code/ci/tasks/no-such-task.yml"
    elif change == "top-level-typo":
        broken["resource_type"] = broken.pop("resource_types")
    return broken


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ("unknown-passed-job", "jobs.smoke-test.get(code).passed: unknown job 'biuld-and-test'"),
        ("unknown-resource", "jobs.smoke-test.put(compose-env-typo): unknown resource 'compose-env-typo'"),
        ("unknown-type", "resource 'compose-env': unknown type 'compose-env-release'"),
        (
            "missing-task-file",
            "jobs.smoke-test.task(build-example-redis): file code/ci/tasks/no-such-task.yml does not exist in the "
            "repository",
        ),
        ("top-level-typo", "unknown top-level key 'resource_type'"),
    ],
)
def test_the_validation_catches_each_kind_of_mistake(change: str, error: str) -> None:
    assert error in fly_validate(_break(change))


def test_a_passed_job_must_use_the_resource() -> None:
    broken = copy.deepcopy(PIPELINE)
    job("publish", broken)["plan"][0]["in_parallel"][0]["passed"] = ["publish"]
    broken["jobs"].append({"name": "lint", "plan": [{"get": "code"}]})
    job("publish", broken)["plan"][0]["in_parallel"][1]["passed"] = ["lint"]

    assert fly_validate(broken) == [
        "jobs.publish.get(image-rc).passed: job 'lint' does not interact with resource 'image-rc'"
    ]


def test_local_vars_are_loaded_before_they_are_used() -> None:
    for job_config in PIPELINE["jobs"]:
        loaded: set[str] = set()
        for step in job_config["plan"]:
            used = set(re.findall(r"\(\(\.:(\w+)\)\)", yaml.safe_dump(step)))
            assert used <= loaded, f"job {job_config['name']}: ((.:{sorted(used - loaded)})) used before its load_var"
            if "load_var" in step:
                loaded.add(step["load_var"])


def test_every_pipeline_variable_is_in_the_set_pipeline_command_of_the_header() -> None:
    text = PIPELINE_FILE.read_text()
    header = text[: text.index("\nresource_types:")]
    variables = set(re.findall(r"\(\(([a-z_]+)\)\)", text[len(header) :]))
    assert variables == {"git_uri", "git_branch", "image_repository", "registry_username", "registry_password"}
    for variable in variables:
        assert f"-v {variable}=" in header


# ---------------------------------------------------------------- the tasks and their files


def test_task_files_are_runnable_configs_whose_scripts_exist() -> None:
    for path in sorted((ROOT / "ci" / "tasks").glob("*.yml")):
        config = yaml.safe_load(path.read_text())
        assert config["platform"] == "linux", path
        run = config["run"]
        script = run["args"][0] if run["path"] == "sh" else run["path"]
        if script.startswith(f"{REPOSITORY_INPUT}/"):
            assert repository_path(script).is_file(), f"{path.name}: {script} is missing"
            assert run["path"] == "sh" or repository_path(script).stat().st_mode & 0o111, (
                f"{path.name}: {script} is not executable"
            )
        elif "image_resource" in config:
            assert config["image_resource"]["source"]["repository"] == OCI_BUILD_TASK and run["path"] == "build"


def test_the_image_is_built_by_oci_build_task_with_the_version_and_revision_as_build_args() -> None:
    step = the_step("build-and-test", "task", "build-image")
    config = task_config(step)
    assert config["image_resource"]["source"]["repository"] == OCI_BUILD_TASK
    assert step["privileged"] is True
    assert step["params"]["BUILD_ARG_VERSION"] == "((.:version))"
    assert step["params"]["BUILD_ARG_REVISION"] == "((.:revision))"
    assert the_step("build-and-test", "load_var", "version")["file"] == "version/version"
    assert the_step("build-and-test", "task", "version")["file"] == "code/ci/tasks/version.yml"
    assert the_step("build-and-test", "load_var", "revision")["file"] == "code/.git/short_ref"
    dockerfile_args = set(re.findall(r"^ARG (\w+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE))
    build_args = {
        key.removeprefix("BUILD_ARG_") for key in {**config["params"], **step["params"]} if key.startswith("BUILD_ARG_")
    }
    assert build_args == {"VERSION", "REVISION", "SOURCE"} and build_args <= dockerfile_args
    assert config["params"]["CONTEXT"] == REPOSITORY_INPUT
    # One index of both (several platforms turn OUTPUT_OCI on: UNPACK_ROOTFS would be ignored, so it is not set).
    assert config["params"]["IMAGE_PLATFORM"] == "linux/amd64,linux/arm64" and "UNPACK_ROOTFS" not in config["params"]


def test_the_test_suite_runs_privileged_against_the_amd64_image_of_the_built_index() -> None:
    step = the_step("build-and-test", "task", "test-suite")
    assert step["privileged"] is True
    assert "image" not in step, "a task image must be a rootfs; the build's output is an OCI layout"
    config = task_config(step)
    assert config["image_resource"]["source"] == {"repository": "debian", "tag": "trixie-slim"}
    assert {item["name"] for item in config["inputs"]} == {REPOSITORY_INPUT, "image"}
    script = repository_path(config["run"]["path"]).read_text()
    assert 'skopeo copy -q "oci:$work/image/image"' in script
    assert "IMAGE_PREBUILT=1" in script and "pytest $TESTS" in script
    assert config["params"]["TESTS"].split() == ["tests/unit", "tests/integration"]
    plan = [s.get("task") or s.get("put") for s in job("build-and-test")["plan"] if "task" in s or "put" in s]
    assert plan == ["version", "build-image", "test-suite", "image-rc"], "only a tested image becomes rc"


def test_rc_and_releases_are_pushed_as_one_index_by_a_registry_image_that_pushes_indexes() -> None:
    assert the_step("build-and-test", "put", "image-rc")["params"] == {"image": "image/image"}
    for name in ("image-rc", "image-release"):
        kind = resource_type(resource(name)["type"])
        assert kind["source"]["repository"] == "concourse/registry-image-resource"
        major, minor, _patch = (int(part) for part in kind["source"]["tag"].split("."))
        assert (major, minor) >= (1, 12), f"{name}: registry-image pushes a layout's whole index from v1.12.0"


def test_the_smoke_test_puts_the_bundled_example_through_the_freshly_built_resource_type() -> None:
    rc = resource("image-rc")["source"]
    kind = resource_type(resource("compose-env")["type"])
    assert kind["type"] == "registry-image" and kind["privileged"] is True
    assert (kind["source"]["repository"], kind["source"]["tag"]) == (rc["repository"], rc["tag"]), (
        "the type is the test tag"
    )
    put = the_step("smoke-test", "put", "compose-env")
    source = resource("compose-env")["source"]
    parse_source(source)
    merged = merged_params(source, put["params"])
    validate(merged.values, "put_params", merged.root_for)
    for compose_file in put["params"]["compose_files"]:
        assert repository_path(compose_file).is_file()
    builds = {s["output_mapping"]["image"]: s for s in job_steps("smoke-test") if "task" in s}
    for image in put["params"]["images"]:
        build = builds[Path(image["path"]).parts[0]]
        assert task_config(build)["params"]["CONTEXT"] == "code/example/images"
        assert build["privileged"] is True
        assert image["tag"] == f"example/{build['params']['TARGET']}:ci"
    compose = yaml.safe_load(repository_path(put["params"]["compose_files"][0]).read_text())
    assert {service["image"] for service in compose["services"].values()} == {
        image["tag"] for image in put["params"]["images"]
    }
    assert set(put["inputs"]) == {REPOSITORY_INPUT, *builds}


def test_publish_pushes_the_smoke_tested_image_as_the_version_and_bumps_the_aliases() -> None:
    assert not any(s.get("trigger") for s in job_steps("publish")), "a release is a decision: publish is manual"
    rc = the_step("publish", "get", "image-rc")
    assert rc["passed"] == ["smoke-test"] and rc["params"]["format"] == "oci-layout", "oci: only one platform"
    put = the_step("publish", "put", "image-release")
    assert put["params"] == {"image": "image-rc/oci", "version": "((.:version))", "bump_aliases": True}
    release = resource("image-release")["source"]
    assert "tag" not in release, "with a tag, registry-image would push it too and check would not list the versions"
    assert release["repository"] == resource("image-rc")["source"]["repository"]
    order = [s.get("task") or s.get("put") for s in job("publish")["plan"] if "task" in s or "put" in s]
    assert order == ["version", "check-release", "image-release"]


# ---------------------------------------------------------------- check-release.sh


def release_check(tmp_path: Path, version: str, changelog: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "VERSION").write_text(version + "\n")
    if changelog is not None:
        (tmp_path / "CHANGELOG.md").write_text(changelog)
    return subprocess.run(
        ["sh", str(ROOT / "ci/scripts/check-release.sh"), str(tmp_path)], capture_output=True, text=True
    )


RELEASED = (
    "# Changelog\n\n## [Unreleased]\n\n## [0.2.0] - 2026-12-01\n\n### Added\n\n- a thing\n\n## [0.1.0] - 2026-11-01\n"
)


def test_the_changelog_keeps_a_changelog_and_its_newest_release_is_the_version_file() -> None:
    """Between releases VERSION is the last release; new entries wait under [Unreleased] (then publish refuses)."""
    changelog = (ROOT / "CHANGELOG.md").read_text()
    sections = re.findall(r"^## (.+)$", changelog, re.MULTILINE)
    assert changelog.startswith("# Changelog\n") and "keepachangelog.com" in changelog and "semver.org" in changelog
    assert sections[0] == "[Unreleased]"
    assert re.fullmatch(r"\[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}", sections[1])
    assert sections[1].startswith(f"[{(ROOT / 'VERSION').read_text().strip()}]")
    assert set(re.findall(r"^### (.+)$", changelog, re.MULTILINE)) <= {
        "Added",
        "Changed",
        "Deprecated",
        "Removed",
        "Fixed",
        "Security",
    }


@pytest.mark.parametrize(
    ("version", "changelog", "message"),
    [
        ("0.2.0", RELEASED, ""),
        ("0.1.0", RELEASED, "the newest release is '## [0.2.0] - 2026-12-01', not '## [0.1.0]"),
        ("0.2", RELEASED, "VERSION: '0.2' is not MAJOR.MINOR.PATCH"),
        (
            "0.2.0",
            RELEASED.replace("## [Unreleased]\n", "## [Unreleased]\n\n- pending fix\n"),
            "1 entries under [Unreleased]",
        ),
        ("0.2.0", RELEASED.replace("## [0.2.0] - 2026-12-01", "## [0.2.0]"), "not '## [0.2.0] - YYYY-MM-DD'"),
        ("0.3.0", "# Changelog\n\n## [Unreleased]\n", "no released section"),
        ("0.3.0", None, "CHANGELOG.md is missing"),
    ],
)
def test_check_release_refuses_what_is_not_a_release(
    tmp_path: Path, version: str, changelog: str | None, message: str
) -> None:
    checked = release_check(tmp_path, version, changelog)

    assert (checked.returncode == 0) == (not message), checked.stderr
    assert message in checked.stderr


def test_check_release_refuses_a_commit_after_the_release(tmp_path: Path) -> None:
    """The publish job runs it with the version ci/tasks/version.yml found: only the release commit's is VERSION."""
    built = tmp_path / "built"
    built.write_text("0.2.0-dev+3f2c1ab\n")
    (tmp_path / "VERSION").write_text("0.2.0\n")
    (tmp_path / "CHANGELOG.md").write_text(RELEASED)

    checked = subprocess.run(
        ["sh", str(ROOT / "ci/scripts/check-release.sh"), str(tmp_path), str(built)], capture_output=True, text=True
    )

    assert checked.returncode == 1
    assert (
        "this commit's image is 0.2.0-dev+3f2c1ab, not a release: publish the commit that changed VERSION"
        in checked.stderr
    )
    built.write_text("0.2.0\n")
    assert (
        subprocess.run(
            ["sh", str(ROOT / "ci/scripts/check-release.sh"), str(tmp_path), str(built)], capture_output=True
        ).returncode
        == 0
    )
