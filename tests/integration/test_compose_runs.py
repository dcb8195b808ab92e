"""Compose runs like a test runner, through the real image's `out` (README: Behavior, out).

Each put proves several things at once, to keep the suite short: every test here starts
an inner daemon and loads the example's images (tests/data/compose/README.md).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from harness import RunOutcome, run_script

DATA = Path(__file__).resolve().parents[1] / "data" / "compose"
REDIS_IMAGE = "redis-image"
TESTS_IMAGE = {"path": "tests-image/image.tar", "tag": "example/tests:ci"}
BUDGET = 4000


def put(
    image: str, put_dir: Path, scenario: str, params: dict[str, Any], source: dict[str, Any] | None = None, **env: str
) -> RunOutcome:
    """One `out` with tests/data/compose/<scenario> copied into the put directory."""
    shutil.copytree(DATA / scenario, put_dir / scenario)
    request = {"source": source or {}, "params": {"compose_files": f"{scenario}/compose.yml", **params}}
    return run_script(image, "out", request, put_dir=str(put_dir), env=env)


def log_of(outcome: RunOutcome) -> str:
    return outcome.stdout + outcome.stderr


def test_healthy_dependency_then_passing_client_with_the_default_up_command(image: str, put_dir: Path) -> None:
    outcome = put(image, put_dir, "service", {"images": [REDIS_IMAGE, TESTS_IMAGE]})

    assert outcome.exit_code == 0, outcome.stderr
    metadata = outcome.metadata()
    assert metadata["status"] == "passed" and metadata["exit_code"] == "0"
    assert metadata["command"] == "up --abort-on-container-exit"
    # tests ran only once redis was healthy (its PING succeeded); redis was then stopped by the cascade
    assert "redis=exited(0)" in metadata["services"] and "tests=exited(0)" in metadata["services"]
    assert "test: all passed" in metadata["logs/tests"]
    assert "Ready to accept connections" in metadata["logs/redis"]
    # streamed live with service prefixes, without compose's terminal escapes
    assert re.search(r"^tests-1 +\| test: all passed$", outcome.stderr, re.MULTILINE)
    assert outcome.stderr.index("Ready to accept connections") < outcome.stderr.index("tests-1  | test: PING redis")
    assert "\x1b[2K" not in outcome.stderr
    assert "--ansi never --progress plain -p compose-env-tests-integration-7" in outcome.stderr
    assert len(outcome.stdout.encode()) < BUDGET
    assert outcome.leftovers == []


def test_failing_client_shows_its_last_lines_and_ps_and_no_secret_appears_anywhere(image: str, put_dir: Path) -> None:
    token, password = "tok-9f8e7d6c5b", "pw-Zx81-secret"
    params = {
        "images": [REDIS_IMAGE, TESTS_IMAGE],
        "env": {"EXPECT_FAILURE": "yes", "API_TOKEN": token, "MIRROR_LOGIN": password},
        "fail_on_error": False,
        "command": "up --exit-code-from tests",
    }
    source = {"registries": [{"host": "registry.example.com", "username": "ci", "password": password}]}

    outcome = put(image, put_dir, "service", params, source)

    assert outcome.exit_code == 0, outcome.stderr
    metadata = outcome.metadata()
    assert metadata["status"] == "failed" and metadata["exit_code"] == "3"
    assert outcome.response["version"]["exit_code"] == "3"
    names = [item["name"] for item in outcome.response["metadata"]]
    assert names.index("logs/tests") < names.index("logs/redis")  # the failing service first
    assert "failing on purpose" in metadata["logs/tests"]
    assert "last " in outcome.stderr and "log lines of tests" in outcome.stderr
    assert re.search(r"^ +tests +\S+ +exited +3 +failed$", outcome.stderr, re.MULTILINE)
    assert re.search(r"^ +redis +\S+ +exited +0 +stopped by compose$", outcome.stderr, re.MULTILINE)
    # the container echoed both secrets: masked in the stream, the tails and the response
    everything = log_of(outcome)
    assert token not in everything and password not in everything
    # printed once: compose's stderr carries the container's stderr, and it is not repeated from the engine's log
    assert len(re.findall(r"^tests-1 +\| debug: token=\*\*\* login=\*\*\*$", outcome.stderr, re.MULTILINE)) == 1
    assert "debug: token=*** login=***" in metadata["logs/tests"]


def test_exit_code_from_reports_the_real_code_of_a_service_stopped_by_the_cascade(image: str, put_dir: Path) -> None:
    params = {
        "images": [TESTS_IMAGE],
        "command": ["up", "--exit-code-from", "tests"],
        "fail_on_error": False,
        "logs": {"services": ["tests"]},
    }

    outcome = put(image, put_dir, "cascade", params)

    # compose 2.26 itself exits 0 here (docker/compose#11712)
    assert outcome.exit_code == 0, outcome.stderr
    metadata = outcome.metadata()
    assert metadata["exit_code"] == "137" and metadata["status"] == "failed"
    assert "tests=exited(137)" in metadata["services"] and "setup=exited(0)" in metadata["services"]
    assert "never comes" in metadata["logs/tests"]
    assert "logs/setup" not in metadata  # params.logs.services
    assert re.search(r"^ +tests +\S+ +exited +137 .*stopped by compose$", outcome.stderr, re.MULTILINE)


def test_five_megabytes_of_logs_stream_whole_while_the_response_stays_small(image: str, put_dir: Path) -> None:
    params = {"images": [TESTS_IMAGE], "command": "up", "logs": {"tail": 5000}, "fail_on_error": False}

    outcome = put(image, put_dir, "flood", params)

    assert outcome.exit_code == 0, outcome.stderr[-3000:]
    assert len(outcome.stdout.encode()) < BUDGET
    metadata = outcome.metadata()
    # plain `up` returns 0, but noisy-b exited 1 by itself
    assert metadata["status"] == "failed" and metadata["exit_code"] == "1"
    names = [item["name"] for item in outcome.response["metadata"]]
    assert names.index("logs/noisy-b") < names.index("logs/noisy-a")
    assert metadata["logs/noisy-b"].endswith("b: giving up")
    for line in (
        r"noisy-b-1 +\| b: giving up",
        r"noisy-a-1 +\| a: starting \(stderr\)",
    ):  # once each: nothing printed twice
        assert len(re.findall(f"^{line}$", outcome.stderr, re.MULTILINE)) == 1, line
    assert (
        metadata["logs/noisy-a"]
        .rstrip()
        .endswith(
            "a 00025000 the quick brown fox jumps over the lazy dog; the quick brown fox jumps over the lazy dog."
        )
    )
    for prefix in ("a", "b"):
        numbers = [
            int(n)
            for n in re.findall(rf"^noisy-{prefix}-1 +\| {prefix} (\d{{8}}) the quick", outcome.stderr, re.MULTILINE)
        ]
        assert numbers == list(range(1, 25001)), (
            f"noisy-{prefix}: {len(numbers)} lines, in order: {numbers == sorted(numbers)}"
        )


def test_timeout_stops_the_run_fails_the_put_and_keeps_the_logs(image: str, put_dir: Path) -> None:
    params = {"images": [TESTS_IMAGE], "command": ["run", "--rm", "tests"], "timeout": "4s"}

    outcome = put(image, put_dir, "slow", params)

    assert outcome.exit_code == 1
    assert outcome.stdout == ""
    assert "timed out after 4s (params.timeout)" in outcome.stderr
    assert re.search(r"timed_out\b.*\b124\b", outcome.stderr)  # the verdict: status and exit code
    tail = outcome.stderr[outcome.stderr.index("log lines of tests") :]
    assert "tests: started, now hanging" in tail
    assert outcome.duration < 60
    assert outcome.leftovers == []


def test_env_env_files_profiles_and_several_compose_files_reach_compose_and_inherited_settings_do_not(
    image: str, put_dir: Path
) -> None:
    params = {
        "images": [TESTS_IMAGE],
        "compose_files": ["inputs/compose.yml", "inputs/override.yml"],
        # numbers and booleans as YAML users write them, passed as compose passes its own `environment:`
        "env": {"FROM_PARAMS": "from-params", "PORT": 5432, "DEBUG": True, "API_KEY": 31415926},
        "env_files": ["inputs/ci.env"],
        "profiles": ["extra"],
        "command": "up",
    }
    inherited = {
        "COMPOSE_FILE": "/nonexistent.yml",
        "COMPOSE_PROFILES": "never-enabled",
        "COMPOSE_PROJECT_NAME": "evil",
        "BUILD_JOB_NAME": "Run Tests!",
    }

    outcome = put(image, put_dir, "inputs", params, **inherited)

    assert outcome.exit_code == 0, outcome.stderr
    metadata = outcome.metadata()
    assert (
        metadata["logs/tests"]
        == "params=from-params file=from-ci-env dotenv=not-read override=applied port=5432 debug=true key=***"
    )
    assert "31415926" not in outcome.stderr
    assert metadata["logs/extra"] == "extra: profile service ran"
    assert "hidden" not in metadata["services"]
    assert "compose-env-tests-run-tests-7-tests-1" in outcome.stderr  # the project name, sanitised from BUILD_*


def test_a_compose_file_compose_rejects_fails_with_exit_2_before_any_service_starts(image: str, put_dir: Path) -> None:
    """compose config runs while the daemon starts: its error comes before any image or service, and the daemon goes."""
    outcome = put(image, put_dir, "broken", {})

    assert outcome.exit_code == 2
    assert outcome.stdout == ""
    assert (
        "error: params.compose_files (broken/compose.yml)" in outcome.stderr
    )  # the file compose rejects, as params name it
    assert "restart_policy" in outcome.stderr
    assert "docker compose config checks the project while the daemon starts" in outcome.stderr
    assert "Running docker compose" not in outcome.stderr and "compose down" not in outcome.stderr
    assert outcome.leftovers == []


def test_a_missing_image_is_named_with_its_service_and_how_to_provide_it(image: str, put_dir: Path) -> None:
    outcome = put(image, put_dir, "missing-image", {"images": [TESTS_IMAGE], "command": ["run", "--rm", "tests"]})

    assert outcome.exit_code == 2, outcome.stderr
    assert "service api needs image example/absent-api:ci" in outcome.stderr
    assert "absent-docs" not in outcome.stderr  # not started by `run tests`
    assert "params.images" in outcome.stderr and "example/tests:ci" in outcome.stderr
    assert "Running docker compose" not in outcome.stderr
    assert outcome.leftovers == []
