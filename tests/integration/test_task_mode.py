"""Task mode through the real image, run the way `fly execute -p -i ... -o ...` would run it.

The fixture project (tests/data/task/code) runs the example's redis and test images;
its test service writes /reports/junit.xml, which must come back as an artifact
whether the tests pass or fail.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from harness import Container, run_task

ROOT = Path(__file__).resolve().parents[2]
CODE = ROOT / "tests" / "data" / "task" / "code"
TASK_CONFIG = yaml.safe_load((ROOT / "tasks" / "compose-env.yml").read_text())
OUTPUT_NAME = TASK_CONFIG["outputs"][0]["name"]
SECRET = "tok-4f9a7c1e"
BASE = {
    "compose_files": ["code/docker-compose.yml"],
    "images": ["images/redis-image", {"path": "images/tests-image/image.tar", "tag": "example/tests:ci"}],
    "env": {"API_TOKEN": SECRET},
}


def run(image: str, put_dir: Path, out: Path, compose_env: dict) -> tuple:
    out.mkdir()
    outcome = run_task(
        image, {"code": str(CODE), "images": str(put_dir)}, str(out), compose_env, output_name=OUTPUT_NAME
    )
    report_file = out / "report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else None
    return outcome, report


def test_the_readme_quick_start_runs_the_bundled_example_through_the_shipped_task_file(
    image: str, put_dir: Path, tmp_path: Path, version_line: str, runtime: str
) -> None:
    # fly execute -c tasks/compose-env.yml --privileged --include-ignored -i code=example/put -o
    # compose-env-output=./out:
    # the example (with its image tarballs) as the input, COMPOSE_ENV from the task file's params, the output collected.
    out = tmp_path / "out"
    out.mkdir()
    inputs = {item["name"]: str(put_dir) for item in TASK_CONFIG["inputs"]}
    caches = {item["path"]: str(tmp_path / f"cache-{number}") for number, item in enumerate(TASK_CONFIG["caches"])}
    for host in caches.values():
        os.mkdir(host)

    outcome = run_task(
        image,
        inputs,
        str(out),
        TASK_CONFIG["params"]["COMPOSE_ENV"],
        output_name=OUTPUT_NAME,
        runtime=runtime,
        caches=caches,
    )

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.leftovers == []
    assert outcome.stderr.splitlines()[0] == version_line
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "passed" and report["exit_code"] == 0
    assert report["command"] == ["run", "--rm", "tests"]
    assert {"example/redis:ci", "example/tests:ci"} <= set(" ".join(report["images"]).split())
    assert {"name": "resource", "value": version_line} in report["metadata"]
    assert report["logs"] == {"redis": "logs/redis.log", "tests": "logs/tests.log"}
    assert "test: all passed" in (out / "logs" / "tests.log").read_text()
    assert (out / "logs" / "redis.log").read_text()
    assert {s["name"]: s["health"] for s in report["services"]}["redis"] == "healthy"


def test_shipped_task_config_keeps_the_junit_report_full_redacted_logs_and_a_report(
    image: str, put_dir: Path, tmp_path: Path
) -> None:
    # tasks/compose-env.yml (run --rm tests) with reports from /reports → compose-env-output/reports/tests/reports,
    # plus the images this fixture needs, as `COMPOSE_ENV=... fly execute` would override it.
    out = tmp_path / "out"
    compose_env = {
        **TASK_CONFIG["params"]["COMPOSE_ENV"],
        **BASE,
        "reports": [{"service": "tests", "path": "/reports"}],
    }
    # test_task_cache.py runs the cache on a mounted directory.
    assert compose_env.pop("cache_dir") == TASK_CONFIG["caches"][0]["path"]

    outcome, report = run(image, put_dir, out, compose_env)

    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.leftovers == []
    junit = (out / "reports" / "tests" / "reports" / "junit.xml").read_text()
    assert 'failures="0"' in junit and "ping_set_get" in junit
    tests_log = (out / "logs" / "tests.log").read_text()
    assert "test: all passed" in tests_log
    assert "runner: using API token ***" in tests_log
    assert (out / "logs" / "redis.log").read_text()
    assert SECRET not in outcome.stderr + "".join(p.read_text() for p in (out / "logs").iterdir()) + json.dumps(report)

    assert report["status"] == "passed" and report["exit_code"] == 0
    assert report["version"]["exit_code"] == "0"
    assert {"name": "status", "value": "passed"} in report["metadata"]
    services = {s["name"]: s for s in report["services"]}
    assert services["tests"]["exit_code"] == 0
    assert services["redis"]["health"] == "healthy"
    run_container = services["tests"]["containers"][0]
    assert run_container["one_off"] is True and run_container["exit_code"] == 0
    assert run_container["duration_seconds"] is not None
    assert set(report["timings"]) >= {"daemon", "load", "run", "reports", "teardown"}
    assert report["logs"]["tests"] == "logs/tests.log"
    assert report["tests"]["summary"].startswith("1 passed, 0 failed, 0 errors, 0 skipped (")
    assert report["tests"]["cases"][0]["name"] == "example.redis.ping_set_get"


def test_failing_tests_still_return_the_junit_report_and_fail_the_task(
    image: str, put_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    compose_env = {
        **BASE,
        "env": {**BASE["env"], "EXPECT_FAILURE": "yes"},
        "command": ["up", "--exit-code-from", "tests"],
        "artifacts": [{"service": "tests", "path": "/reports"}, {"service": "redis", "path": "/no/such/file"}],
    }

    outcome, report = run(image, put_dir, out, compose_env)

    assert outcome.exit_code == 1, outcome.stderr
    assert outcome.leftovers == []
    assert "the task fails: failed (exit code 3)" in outcome.stderr
    junit = (out / "artifacts" / "tests" / "reports" / "junit.xml").read_text()
    assert 'failures="1"' in junit and "run-tests exited with 3" in junit
    assert report["status"] == "failed" and report["exit_code"] == 3
    assert "tests" in report["failing_services"]
    assert "failing on purpose" in (out / "logs" / "tests.log").read_text()
    copied, missing = report["artifacts"]
    assert copied["copied"] is True and copied["files"] == 1
    assert missing["copied"] is False and "no such file" in missing["problem"]
    assert "COMPOSE_ENV.artifacts[1]: redis:/no/such/file: no such file" in outcome.stderr


def test_fail_on_error_false_reports_the_failure_and_lets_the_task_pass(
    image: str, put_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    compose_env = {
        **BASE,
        "env": {"EXPECT_FAILURE": "yes"},
        "command": ["run", "--rm", "tests"],
        "fail_on_error": False,
        "output_dir": f"{OUTPUT_NAME}/run-1",
        "artifacts": [{"service": "tests", "path": "/reports/junit.xml"}],
    }

    outcome, _ = run(image, put_dir, out, compose_env)

    assert outcome.exit_code == 0, outcome.stderr
    report = json.loads((out / "run-1" / "report.json").read_text())
    assert report["status"] == "failed" and report["version"]["exit_code"] == "3"
    assert 'failures="1"' in (out / "run-1" / "artifacts" / "tests" / "junit.xml").read_text()


def test_configuration_mistakes_exit_2_naming_the_compose_env_path_without_a_traceback(image: str) -> None:
    bad_artifact = json.dumps(
        {"compose_files": ["code/docker-compose.yml"], "artifacts": [{"service": "tests", "path": "reports"}]}
    )
    with Container(image, [(str(CODE), "/tmp/build/task/code", True)]) as container:
        missing = container.exec(["/opt/resource/task"], workdir="/tmp/build/task")
        invalid = container.exec(
            ["/opt/resource/task"], env={"COMPOSE_ENV": "{compose_files: x}"}, workdir="/tmp/build/task"
        )
        bad_path = container.exec(["/opt/resource/task"], env={"COMPOSE_ENV": bad_artifact}, workdir="/tmp/build/task")

    for outcome in (missing, invalid, bad_path):
        assert outcome.exit_code == 2, outcome.stderr
        assert "Traceback" not in outcome.stderr
    assert "COMPOSE_ENV: is not set" in missing.stderr
    assert "COMPOSE_ENV: is not valid JSON" in invalid.stderr
    assert "COMPOSE_ENV.artifacts[0].path:" in bad_path.stderr
