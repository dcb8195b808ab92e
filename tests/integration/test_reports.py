"""params.reports through the real image: a real pytest JUnit file in put and task mode, and every broken case.

The fixture project (tests/data/reports/code, with the `inputs` fixture) runs Debian's pytest
on one test of each outcome; its `writer` service (behind a profile) leaves good, failing,
malformed and billion-laughs report files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from harness import run_script, run_task

SUMMARY = re.compile(r"^2 passed, 1 failed, 1 error, 1 skipped \(\d+\.\ds\)$")


def test_failing_put_reports_test_totals_and_failing_names_in_metadata_and_the_log(image: str, inputs: Path) -> None:
    request = {
        "source": {},
        "params": {
            "compose_files": "code/docker-compose.yml",
            "images": ["runner/image.tar"],
            "command": "run --rm pytest",
            "fail_on_error": False,
            "reports": [{"service": "pytest", "path": "/out/junit.xml"}],
        },
    }

    outcome = run_script(image, "out", request, put_dir=str(inputs))

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.leftovers == []
    metadata = outcome.metadata()
    assert metadata["status"] == "failed" and metadata["exit_code"] == "1"
    assert metadata["command"] == "run --rm pytest"
    assert SUMMARY.match(metadata["tests"]), metadata["tests"]
    assert metadata["failed_tests"] == "test_sample.test_fails\ntest_sample.test_errors"
    names = [entry["name"] for entry in outcome.response["metadata"]]
    assert names.index("failed_tests") < names.index("logs/pytest")
    assert "reports=" in metadata["timings"]
    assert len(outcome.stdout.encode()) < 4000
    # the run container was kept for the report (no --rm), then removed
    assert "keeping it until then (without --rm)" in outcome.stderr
    assert "could not remove the run container" not in outcome.stderr
    log = outcome.stderr
    block = log[log.index("2 failing tests (from the JUnit reports)") :]
    assert "test_sample.test_fails: AssertionError: the answer drifted" in block
    assert 'test_sample.test_errors: failed on setup with "RuntimeError: no database in this environment"' in block
    assert "warning:" not in log[log.index("Reading 1 test report entry") : log.index("2 failing tests")]
    print(json.dumps(outcome.response, indent=2))  # shown with -s: a real failing put's metadata


def test_task_copies_reports_and_writes_every_test_into_report_json(image: str, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    compose_env = {
        "compose_files": ["code/docker-compose.yml"],
        "images": ["runner/image.tar"],
        "command": ["up", "--exit-code-from", "pytest"],
        "reports": [{"service": "pytest", "path": "/out/"}],
    }

    outcome = run_task(image, {"code": str(inputs / "code"), "runner": str(inputs / "runner")}, str(out), compose_env)

    assert outcome.exit_code == 1, outcome.stderr
    assert outcome.leftovers == []
    assert 'name="test_fails"' in (out / "reports" / "pytest" / "out" / "junit.xml").read_text()
    report = json.loads((out / "report.json").read_text())
    tests = report["tests"]
    assert SUMMARY.match(tests["summary"])
    assert (tests["passed"], tests["failed"], tests["errors"], tests["skipped"]) == (2, 1, 1, 1)
    assert tests["files"] == [
        {
            "service": "pytest",
            "path": "/out/junit.xml",
            "file": "reports/pytest/out/junit.xml",
            "tests": 5,
            "problem": "",
        }
    ]
    cases = {case["name"]: case for case in tests["cases"]}
    assert cases["test_sample.test_passes"]["status"] == "passed"
    assert (cases["test_sample.test_skipped"]["status"], cases["test_sample.test_skipped"]["message"]) == (
        "skipped",
        "not on this platform",
    )
    assert cases["test_sample.test_fails"]["message"].startswith("AssertionError: the answer drifted")
    assert cases["test_sample.test_errors"]["status"] == "error"
    assert all(isinstance(case["time"], float) for case in cases.values())
    assert {"name": "failed_tests", "value": "test_sample.test_fails\ntest_sample.test_errors"} in report["metadata"]


def test_broken_missing_and_hostile_reports_are_warnings_and_a_profiled_run_rm_service_gives_its_files(
    image: str, inputs: Path, tmp_path: Path
) -> None:
    # `writer` is behind a profile that is not active; `run --rm writer` starts it all the same.
    out = tmp_path / "out"
    out.mkdir()
    compose_env = {
        "compose_files": ["code/docker-compose.yml"],
        "images": ["runner/image.tar"],
        "command": ["run", "--rm", "writer"],
        "reports": [
            {"service": "writer", "path": "/out/many/*.xml"},
            {"service": "writer", "path": "/out/malformed.xml"},
            {"service": "writer", "path": "/out/lol.xml"},
            {"service": "writer", "path": "/out/missing.xml"},
        ],
        "artifacts": [{"service": "writer", "path": "/out/many"}],
    }

    outcome = run_task(image, {"code": str(inputs / "code"), "runner": str(inputs / "runner")}, str(out), compose_env)

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.leftovers == []
    log = outcome.stderr
    assert "warning: COMPOSE_ENV.reports[1] (writer:/out/malformed.xml): /out/malformed.xml: not well-formed XML" in log
    assert "warning: COMPOSE_ENV.reports[2] (writer:/out/lol.xml): /out/lol.xml: it declares XML entities" in log
    assert (
        "warning: COMPOSE_ENV.reports[3] (writer:/out/missing.xml): no such file or directory in the container" in log
    )
    assert "warning: the reports show 1 failing test but the command exited 0" in log
    assert "many.b.three: expected 3, got 4" in log
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "passed"
    assert report["tests"]["summary"] == "2 passed, 1 failed, 0 errors, 0 skipped (0.8s)"
    assert sorted(f["file"] for f in report["tests"]["files"] if not f["problem"]) == [
        "reports/writer/out/many/a.xml",
        "reports/writer/out/many/b.xml",
    ]
    assert len(report["tests"]["warnings"]) == 4
    # the artifact of the profiled service is copied too (it used to be skipped, failing the task with exit 2)
    assert report["artifacts"][0]["copied"] is True
    assert (out / "artifacts" / "writer" / "many" / "a.xml").is_file()
