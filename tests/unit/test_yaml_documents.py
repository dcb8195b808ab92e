"""Every pipeline and task config the repository shows a user passes tests/pipeline_lint.py, and the lint is not
vacuous."""

from __future__ import annotations

import re

import pytest
from pipeline_lint import ROOT, Document, documents, lint

DOCUMENTS = documents()


def test_the_documents_are_found() -> None:
    labels = {document.label for document in DOCUMENTS}
    assert {
        "README.md yaml block 1",
        "pipeline-example.yml",
        "ci/pipeline.yml",
        "tasks/compose-env.yml",
        "ci/tasks/build-image.yml",
    } <= labels


@pytest.mark.parametrize("document", DOCUMENTS, ids=[document.label for document in DOCUMENTS])
def test_every_pipeline_and_task_config_is_valid(document: Document) -> None:
    assert lint(document) == []


def _readme_pipeline() -> Document:
    return next(document for document in DOCUMENTS if document.label == "README.md yaml block 1")


def _broken(document: Document, old: str, new: str) -> Document:
    assert old in document.text, old
    return Document(document.label, document.text.replace(old, new, 1), document.explanation, document.repository_input)


def test_the_readme_pipeline_is_whole_with_its_app_image_built_by_oci_build_task() -> None:
    pipeline = _readme_pipeline().parsed()
    tasks = [step for job in pipeline["jobs"] for step in job["plan"] if "task" in step]
    assert any("oci-build-task" in str(step.get("config", {}).get("image_resource")) for step in tasks)
    assert {"resource_types", "resources", "jobs"} <= set(pipeline)


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("- name: redis\n", "- name: redis-typo\n", "unknown resource 'redis'"),
        ("    - get: code\n", "    - get: app-image\n", "unknown resource 'app-image'"),
        (
            "inputs: [code, redis, app-image]",
            "inputs: [code, redis, app-image, nothing]",
            "reads 'nothing', which no earlier step made",
        ),
        ("  type: compose-env\n", "  type: compose-env-typo\n", "unknown type 'compose-env-typo'"),
        ("command: run --rm tests", "comand: run --rm tests", "params.comand: unknown key"),
    ],
)
def test_a_broken_copy_of_the_readme_pipeline_is_caught(old: str, new: str, error: str) -> None:
    problems = lint(_broken(_readme_pipeline(), old, new))

    assert any(error in problem for problem in problems), problems


def test_a_task_input_no_step_made_and_a_missing_task_file_are_caught() -> None:
    pipeline = next(document for document in DOCUMENTS if document.label == "ci/pipeline.yml")
    broken = _broken(pipeline, "file: code/ci/tasks/check-release.yml", "file: code/ci/tasks/no-such-task.yml")
    broken = _broken(broken, "inputs: [code, redis-image, tests-image]", "inputs: [code, redis-imgae, tests-image]")

    problems = lint(broken)

    assert (
        "ci/pipeline.yml: jobs.publish.task(check-release): file code/ci/tasks/no-such-task.yml does not exist in the "
        "repository" in problems
    )
    assert "ci/pipeline.yml: jobs.smoke-test.compose-env: reads 'redis-imgae', which no earlier step made" in problems


def test_a_variable_nobody_says_how_to_set_is_caught() -> None:
    example = next(document for document in DOCUMENTS if document.label == "pipeline-example.yml")

    problems = lint(Document(example.label, example.text, re.sub(r"-v compose_env_image=\S+", "", example.explanation)))

    assert problems == [
        "pipeline-example.yml: ((compose_env_image)) is not listed where the document says how to set it"
    ]


def test_a_fragment_is_refused() -> None:
    assert lint(Document("README.md yaml block 9", "caches: [{path: x}]\n", "")) == [
        "README.md yaml block 9: neither a pipeline (jobs:), a task config (platform:, run:) nor a put step: a "
        "fragment a reader cannot use"
    ]


def test_the_lint_reads_the_repository_it_runs_in() -> None:
    assert (ROOT / "ci" / "pipeline.yml").is_file()


def _compose_env_image_sources(node: object) -> list[dict[str, object]]:
    if isinstance(node, dict):
        found = [node] if "compose_env_image" in str(node.get("repository", "")) else []
        return found + [source for value in node.values() for source in _compose_env_image_sources(value)]
    if isinstance(node, list):
        return [source for value in node for source in _compose_env_image_sources(value)]
    return []


def test_every_example_pins_the_released_version_not_latest() -> None:
    version = (ROOT / "VERSION").read_text().strip()
    released = {version, version.rsplit(".", 1)[0]}
    sources = [source for document in DOCUMENTS for source in _compose_env_image_sources(document.parsed())]

    assert len(sources) >= 4
    assert all(str(source.get("tag")) in released for source in sources), [source.get("tag") for source in sources]


def test_a_put_step_shown_alone_is_checked_too() -> None:
    step = next(document for document in DOCUMENTS if document.label == "README.md yaml block 2")

    assert lint(_broken(step, "inputs: [code, redis, app-image]", "inputs: [code, redis]")) == [
        "README.md yaml block 2: app-image/image.tar is not in the put's inputs ['code', 'redis']"
    ]
    assert any(
        "params.docker_sockets: unknown key" in problem
        for problem in lint(_broken(step, "docker_socket:", "docker_sockets:"))
    )
