"""The four things every later feature stands on: a passing put, a failing put, check and in."""

from __future__ import annotations

import json
from pathlib import Path

from harness import run_script

EXAMPLE_REQUEST = json.loads((Path(__file__).resolve().parents[2] / "example" / "request.json").read_text())


def test_passing_put_reports_version_and_metadata_on_stdout_only(image: str, put_dir: Path, runtime: str) -> None:
    outcome = run_script(image, "out", EXAMPLE_REQUEST, put_dir=str(put_dir), runtime=runtime)

    assert outcome.exit_code == 0, outcome.stderr
    response = outcome.response
    assert set(response) == {"version", "metadata"}
    assert response["version"]["exit_code"] == "0"
    assert response["version"]["id"]
    metadata = outcome.metadata()
    assert metadata["status"] == "passed"
    assert metadata["exit_code"] == "0"
    assert metadata["duration"].endswith("s")
    assert "example/redis:ci" in metadata["images"] and "example/tests:ci" in metadata["images"]
    assert "test: all passed" in metadata["logs/tests"]
    assert len(outcome.stdout.encode()) < 4000
    # compose's own output streamed to stderr, never to stdout
    assert "test: all passed" in outcome.stderr
    assert outcome.leftovers == []


def test_failing_command_fails_the_put_after_printing_its_logs(image: str, put_dir: Path) -> None:
    request = {**EXAMPLE_REQUEST, "params": {**EXAMPLE_REQUEST["params"], "env": {"EXPECT_FAILURE": "yes"}}}

    outcome = run_script(image, "out", request, put_dir=str(put_dir))

    assert outcome.exit_code == 1
    assert outcome.stdout == ""
    assert "failing on purpose" in outcome.stderr
    assert "failed: exit code 3" in outcome.stderr
    assert outcome.leftovers == []


def test_failing_command_with_fail_on_error_false_reports_the_exit_code(image: str, put_dir: Path) -> None:
    params = {**EXAMPLE_REQUEST["params"], "env": {"EXPECT_FAILURE": "yes"}, "fail_on_error": False}

    outcome = run_script(image, "out", {"source": {}, "params": params}, put_dir=str(put_dir))

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.response["version"]["exit_code"] == "3"
    assert outcome.metadata()["status"] == "failed"


def test_check_returns_no_versions_without_one_and_echoes_a_given_one(image: str, runtime: str) -> None:
    assert run_script(image, "check", {"source": {}}, runtime=runtime).response == []
    version = {"id": "42-x", "exit_code": "0"}
    assert run_script(image, "check", {"source": {}, "version": version}, runtime=runtime).response == [version]


def test_in_writes_the_version_and_shows_it_as_metadata(image: str, runtime: str) -> None:
    version = {"id": "42-x", "exit_code": "3"}

    outcome = run_script(image, "in", {"source": {}, "version": version, "params": {}}, runtime=runtime)

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.response["version"] == version
    assert {"name": "exit_code", "value": "3"} in outcome.response["metadata"]
