"""ci/pipeline.yml: what `fly validate-pipeline` checks, as far as it can be reproduced here, and the release flow.

Reproduced from Concourse's validation: known top-level keys, unique valid names, every `get`/`put`
names a declared resource, every `passed:` names a job that uses that resource, every resource type
is declared or built in, a task has `file:` or `config:`. Added: every `file:` the pipeline names
exists in this repository (input `code` is the repository), every artifact a step reads was made by
an earlier step, and the tasks' files, scripts and build args are there.
"""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_env.config.model import merged_params, parse_source
from compose_env.config.schema import validate

ROOT = Path(__file__).resolve().parents[2]
PIPELINE_FILE = ROOT / "ci" / "pipeline.yml"
PIPELINE = yaml.safe_load(PIPELINE_FILE.read_text())
#: Pipeline keys Concourse accepts (it refuses unknown ones).
TOP_LEVEL_KEYS = {"jobs", "resources", "resource_types", "groups", "var_sources", "display"}
#: Resource types every Concourse worker ships with.
CORE_TYPES = {
    "git",
    "registry-image",
    "time",
    "semver",
    "s3",
    "docker-image",
    "pool",
    "github-release",
    "hg",
    "bosh-io-release",
    "bosh-io-stemcell",
    "cf",
    "mock",
    "tracker",
}
#: Concourse's identifier rule (a lowercase letter first; then letters, digits, `-`, `_`, `.`).
IDENTIFIER = re.compile(r"^[a-z][a-z0-9_.-]*$")
STEP_KINDS = ("get", "put", "task", "load_var", "in_parallel", "do", "try", "set_pipeline")
HOOKS = ("ensure", "on_success", "on_failure", "on_error", "on_abort")
#: Files the git resource writes into its clone, beyond the repository's own.
GIT_RESOURCE_FILES = {".git/ref", ".git/short_ref", ".git/commit_message", ".git/committer"}
REPOSITORY_INPUT = "code"
OCI_BUILD_TASK = "concourse/oci-build-task"


def steps(plan: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for step in plan:
        yield step
        nested = step.get("in_parallel") or step.get("do") or []
        if isinstance(nested, dict):
            nested = nested.get("steps", [])
        yield from steps(nested)
        for key in ("try", *HOOKS):
            if key in step:
                yield from steps([step[key]])


def job(name: str, pipeline: dict[str, Any] = PIPELINE) -> dict[str, Any]:
    return next(j for j in pipeline["jobs"] if j["name"] == name)


def job_steps(name: str, pipeline: dict[str, Any] = PIPELINE) -> list[dict[str, Any]]:
    return list(steps(job(name, pipeline)["plan"]))


def resource(name: str) -> dict[str, Any]:
    return next(r for r in PIPELINE["resources"] if r["name"] == name)


def resource_type(name: str) -> dict[str, Any]:
    return next(t for t in PIPELINE["resource_types"] if t["name"] == name)


def resource_of(step: dict[str, Any]) -> str:
    return step.get("resource", step.get("get") or step.get("put"))


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
    """The problems `fly validate-pipeline` would report (in its words, where it has them), plus missing files."""
    errors = [f"unknown top-level key '{key}'" for key in sorted(set(pipeline) - TOP_LEVEL_KEYS)]
    for kind in ("jobs", "resources", "resource_types"):
        names = [item["name"] for item in pipeline.get(kind, [])]
        errors += [f"{kind}: '{name}' appears more than once" for name in sorted({n for n in names if names.count(n) > 1})]
        errors += [f"{kind}: '{name}' is not a valid identifier" for name in names if not IDENTIFIER.match(name)]
    declared_types = {t["name"] for t in pipeline.get("resource_types", [])}
    errors += [f"resource '{r['name']}': unknown type '{r['type']}'" for r in pipeline["resources"] if r["type"] not in declared_types | CORE_TYPES]
    errors += [f"resource type '{t['name']}': unknown type '{t['type']}'" for t in pipeline.get("resource_types", []) if t["type"] not in CORE_TYPES]
    resources = {r["name"] for r in pipeline["resources"]}
    jobs = {j["name"] for j in pipeline["jobs"]}
    for job_config in pipeline["jobs"]:
        where = f"jobs.{job_config['name']}"
        for step in job_steps(job_config["name"], pipeline):
            kind = next((k for k in STEP_KINDS if k in step), None)
            if kind is None:
                errors.append(f"{where}: a step of no known kind: {sorted(step)}")
                continue
            if "task" in step and ("file" in step) == ("config" in step):
                errors.append(f"{where}.task({step['task']}): must specify one of `file:` or `config:`")
            if "file" in step:
                errors += missing_file(f"{where}.{kind}({step[kind]})", step["file"])
            if kind not in ("get", "put"):
                continue
            name = resource_of(step)
            if name not in resources:
                errors.append(f"{where}.{kind}({step[kind]}): unknown resource '{name}'")
            for upstream in step.get("passed", []):
                if upstream not in jobs:
                    errors.append(f"{where}.get({step['get']}).passed: unknown job '{upstream}'")
                elif name not in {resource_of(s) for s in job_steps(upstream, pipeline) if "get" in s or "put" in s}:
                    errors.append(f"{where}.get({step['get']}).passed: job '{upstream}' does not interact with resource '{name}'")
    return errors


def missing_file(where: str, path: str) -> list[str]:
    first, _, rest = path.partition("/")
    if first != REPOSITORY_INPUT:
        return [f"{where}: file {path} is not in the repository input"]
    if rest in GIT_RESOURCE_FILES or (ROOT / rest).is_file():
        return []
    return [f"{where}: file {path} does not exist in the repository"]


# ---------------------------------------------------------------- what fly validate-pipeline checks


def test_the_pipeline_passes_the_validate_pipeline_rules_and_names_only_existing_files() -> None:
    assert fly_validate(PIPELINE) == []
    assert [s["file"] for j in PIPELINE["jobs"] for s in job_steps(j["name"]) if "file" in s], "the pipeline names no files"


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
        ("missing-task-file", "jobs.smoke-test.task(build-example-redis): file code/ci/tasks/no-such-task.yml does not exist in the repository"),
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

    assert fly_validate(broken) == ["jobs.publish.get(image-rc).passed: job 'lint' does not interact with resource 'image-rc'"]


def test_local_vars_are_loaded_before_they_are_used() -> None:
    for job_config in PIPELINE["jobs"]:
        loaded: set[str] = set()
        for step in job_config["plan"]:
            used = set(re.findall(r"\(\(\.:(\w+)\)\)", yaml.safe_dump(step)))
            assert used <= loaded, f"job {job_config['name']}: ((.:{sorted(used - loaded)})) used before its load_var"
            if "load_var" in step:
                loaded.add(step["load_var"])


def test_every_artifact_a_step_reads_was_made_by_an_earlier_step() -> None:
    """Concourse mounts only artifacts of earlier steps; a typo here fails the build, not set-pipeline."""
    for job_config in PIPELINE["jobs"]:
        available: set[str] = set()
        for step in job_config["plan"]:
            group = step.get("in_parallel", [step])
            made: set[str] = set()
            for member in group.get("steps", []) if isinstance(group, dict) else group:
                made |= check_reads_and_list_outputs(member, available, job_config["name"])
            available |= made


def check_reads_and_list_outputs(step: dict[str, Any], available: set[str], job_name: str) -> set[str]:
    where = f"job {job_name}, step {step.get('task') or step.get('get') or step.get('put') or step.get('load_var')}"
    if "get" in step:
        return {step["get"]}
    if "load_var" in step:
        assert step["file"].split("/")[0] in available, f"{where}: reads {step['file']} before any step made it"
        return set()
    if "put" in step:
        assert set(step.get("inputs", [])) <= available, f"{where}: inputs {step.get('inputs')} not all made yet"
        return {step["put"]}
    config = task_config(step)
    mapping = step.get("input_mapping", {})
    for item in config.get("inputs", []):
        if not item.get("optional"):
            assert mapping.get(item["name"], item["name"]) in available, f"{where}: input {item['name']} not made yet"
    if "image" in step:
        assert step["image"] in available, f"{where}: image {step['image']} not made yet"
    return {step.get("output_mapping", {}).get(item["name"], item["name"]) for item in config.get("outputs", [])}


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
            assert run["path"] == "sh" or repository_path(script).stat().st_mode & 0o111, f"{path.name}: {script} is not executable"
        elif "image_resource" in config:
            assert config["image_resource"]["source"]["repository"] == OCI_BUILD_TASK and run["path"] == "build"


def test_the_image_is_built_by_oci_build_task_with_the_version_and_revision_as_build_args() -> None:
    step = the_step("build-and-test", "task", "build-image")
    config = task_config(step)
    assert config["image_resource"]["source"]["repository"] == OCI_BUILD_TASK
    assert step["privileged"] is True
    assert step["params"]["BUILD_ARG_VERSION"] == "((.:version))"
    assert step["params"]["BUILD_ARG_REVISION"] == "((.:revision))"
    assert the_step("build-and-test", "load_var", "version")["file"] == "code/VERSION"
    assert the_step("build-and-test", "load_var", "revision")["file"] == "code/.git/short_ref"
    dockerfile_args = set(re.findall(r"^ARG (\w+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE))
    build_args = {key.removeprefix("BUILD_ARG_") for key in {**config["params"], **step["params"]} if key.startswith("BUILD_ARG_")}
    assert build_args == {"VERSION", "REVISION", "SOURCE"} and build_args <= dockerfile_args
    assert config["params"]["CONTEXT"] == REPOSITORY_INPUT and config["params"]["UNPACK_ROOTFS"] == "true"


def test_the_test_suite_runs_privileged_inside_the_built_image_against_it() -> None:
    step = the_step("build-and-test", "task", "test-suite")
    assert step["privileged"] is True
    assert step["image"] == "image"  # oci-build-task's output, unpacked (UNPACK_ROOTFS)
    config = task_config(step)
    assert "image_resource" not in config
    assert {item["name"] for item in config["inputs"]} == {REPOSITORY_INPUT, "image"}
    script = repository_path(config["run"]["path"]).read_text()
    assert "image/image.tar" in script and "IMAGE_PREBUILT=1" in script and "pytest $TESTS" in script
    assert config["params"]["TESTS"].split() == ["tests/unit", "tests/integration"]
    plan = [s.get("task") or s.get("put") for s in job("build-and-test")["plan"] if "task" in s or "put" in s]
    assert plan == ["build-image", "test-suite", "image-rc"], "only a tested image becomes rc"


def test_the_smoke_test_puts_the_bundled_example_through_the_freshly_built_resource_type() -> None:
    rc = resource("image-rc")["source"]
    kind = resource_type(resource("compose-env")["type"])
    assert kind["type"] == "registry-image" and kind["privileged"] is True
    assert (kind["source"]["repository"], kind["source"]["tag"]) == (rc["repository"], rc["tag"]), "the type is the test tag"
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
    assert {service["image"] for service in compose["services"].values()} == {image["tag"] for image in put["params"]["images"]}
    assert set(put["inputs"]) == {REPOSITORY_INPUT, *builds}


def test_publish_pushes_the_smoke_tested_image_as_the_version_and_bumps_the_aliases() -> None:
    assert not any(s.get("trigger") for s in job_steps("publish")), "a release is a decision: publish is manual"
    rc = the_step("publish", "get", "image-rc")
    assert rc["passed"] == ["smoke-test"] and rc["params"]["format"] == "oci"
    put = the_step("publish", "put", "image-release")
    assert put["params"] == {"image": "image-rc/image.tar", "version": "((.:version))", "bump_aliases": True}
    release = resource("image-release")["source"]
    assert "tag" not in release, "with a tag, registry-image would push it too and check would not list the versions"
    assert release["repository"] == resource("image-rc")["source"]["repository"]
    order = [s.get("task") or s.get("put") for s in job("publish")["plan"] if "task" in s or "put" in s]
    assert order == ["check-release", "image-release"]


# ---------------------------------------------------------------- check-release.sh


def release_check(tmp_path: Path, version: str, changelog: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "VERSION").write_text(version + "\n")
    if changelog is not None:
        (tmp_path / "CHANGELOG.md").write_text(changelog)
    return subprocess.run(["sh", str(ROOT / "ci/scripts/check-release.sh"), str(tmp_path)], capture_output=True, text=True)


RELEASED = "# Changelog\n\n## [Unreleased]\n\n## [0.2.0] - 2026-12-01\n\n### Added\n\n- a thing\n\n## [0.1.0] - 2026-11-01\n"


def test_the_changelog_keeps_a_changelog_and_its_newest_release_is_the_version_file() -> None:
    """Between releases VERSION is the last release; new entries wait under [Unreleased] (then publish refuses)."""
    changelog = (ROOT / "CHANGELOG.md").read_text()
    sections = re.findall(r"^## (.+)$", changelog, re.MULTILINE)
    assert changelog.startswith("# Changelog\n") and "keepachangelog.com" in changelog and "semver.org" in changelog
    assert sections[0] == "[Unreleased]"
    assert re.fullmatch(r"\[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}", sections[1])
    assert sections[1].startswith(f"[{(ROOT / 'VERSION').read_text().strip()}]")
    assert set(re.findall(r"^### (.+)$", changelog, re.MULTILINE)) <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


@pytest.mark.parametrize(
    ("version", "changelog", "message"),
    [
        ("0.2.0", RELEASED, ""),
        ("0.1.0", RELEASED, "the newest release is '## [0.2.0] - 2026-12-01', not '## [0.1.0]"),
        ("0.2", RELEASED, "VERSION: '0.2' is not MAJOR.MINOR.PATCH"),
        ("0.2.0", RELEASED.replace("## [Unreleased]\n", "## [Unreleased]\n\n- pending fix\n"), "1 entries under [Unreleased]"),
        ("0.2.0", RELEASED.replace("## [0.2.0] - 2026-12-01", "## [0.2.0]"), "not '## [0.2.0] - YYYY-MM-DD'"),
        ("0.3.0", "# Changelog\n\n## [Unreleased]\n", "no released section"),
        ("0.3.0", None, "CHANGELOG.md is missing"),
    ],
)
def test_check_release_refuses_what_is_not_a_release(tmp_path: Path, version: str, changelog: str | None, message: str) -> None:
    checked = release_check(tmp_path, version, changelog)

    assert (checked.returncode == 0) == (not message), checked.stderr
    assert message in checked.stderr
