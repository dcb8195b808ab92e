"""Tests that start their own containers: a real testcontainers-python suite in a compose service, given the engine.

The runner image is Debian's Python with the testcontainers wheel from PyPI (downloaded here, on the
host); Redis is the bundled example's, loaded from params.images as `redis:7`. The inner engine
reaches no registry: what the suite asks for must be passed in.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import run_script, run_task

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "testcontainers"
RUNNER = "compose-env-test/testcontainers:ci"
NODE_RUNNER = "compose-env-test/testcontainers-node:ci"
#: The release the image is built with (its PyPI wheel, downloaded by the fixture).
TESTCONTAINERS_VERSION = "4.15.0"
#: The Node binding's newest release that runs on Debian trixie's nodejs 20 (12.2.0 wants node >= 22.22).
TESTCONTAINERS_NODE_VERSION = "11.14.0"
SAYS = "says 'hello from testcontainers'"


def _docker(*args: str) -> None:
    subprocess.run(["docker", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def tarballs(image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runner.tar (the testcontainers-python image) and redis.tar (the example's Redis as redis:7)."""
    work = tmp_path_factory.mktemp("testcontainers")
    context = work / "context"
    shutil.copytree(DATA, context)
    subprocess.run(
        [
            "python3",
            "-m",
            "pip",
            "download",
            "-q",
            f"testcontainers=={TESTCONTAINERS_VERSION}",
            "--no-deps",
            "-d",
            str(context / "wheels"),
        ],
        check=True,
        capture_output=True,
    )
    base = os.environ.get("BASE_IMAGE", "debian:trixie-slim")
    _docker("build", "-q", "--build-arg", f"BASE_IMAGE={base}", "-t", RUNNER, str(context))
    _docker(
        "build",
        "-q",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--target",
        "redis",
        "-t",
        "redis:7",
        str(ROOT / "example" / "images"),
    )
    _docker("save", "-o", str(work / "runner.tar"), RUNNER)
    _docker("save", "-o", str(work / "redis.tar"), "redis:7")
    return work


@pytest.fixture(scope="module")
def node_tarball(image: str, tarballs: Path) -> Path:
    """node-runner.tar: Debian's nodejs with the testcontainers npm package, installed here (npm, on the host)."""
    context = tarballs / "node-context"
    shutil.copytree(DATA, context)
    install = [
        "npm",
        "install",
        "--silent",
        "--no-audit",
        "--no-fund",
        "--omit=dev",
        "--ignore-scripts",
        f"testcontainers@{TESTCONTAINERS_NODE_VERSION}",
    ]
    subprocess.run(install, cwd=context, check=True, capture_output=True)
    base = os.environ.get("BASE_IMAGE", "debian:trixie-slim")
    _docker(
        "build",
        "-q",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "-f",
        str(context / "node.Dockerfile"),
        "-t",
        NODE_RUNNER,
        str(context),
    )
    _docker("save", "-o", str(tarballs / "node-runner.tar"), NODE_RUNNER)
    return tarballs / "node-runner.tar"


@pytest.fixture
def suite(tmp_path: Path, tarballs: Path) -> Path:
    """A put directory (or a task input): the compose files and both tarballs (hard links)."""
    put = tmp_path / "put"
    put.mkdir()
    for name in ("docker-compose.yml", "socket-bound.yml"):
        shutil.copy(DATA / name, put / name)
    for name in ("runner.tar", "redis.tar"):
        os.link(tarballs / name, put / name)
    return put


def _params(**extra: object) -> dict[str, object]:
    return {
        "compose_files": ["docker-compose.yml"],
        "images": ["runner.tar", "redis.tar"],
        "command": "run --rm tests",
        "timeout": "3m",
        **extra,
    }


@pytest.mark.parametrize("runtime", ["docker", "concourse"])
def test_a_testcontainers_suite_starts_redis_from_a_passed_image_and_leaves_nothing(
    image: str, suite: Path, runtime: str
) -> None:
    outcome = run_script(
        image, "out", {"source": {}, "params": _params(docker_socket=["tests"])}, put_dir=str(suite), runtime=runtime
    )

    assert outcome.exit_code == 0, outcome.stderr
    assert re.search(rf"^testcontainers: redis:7 at [0-9.]+:\d+ {re.escape(SAYS)}$", outcome.stderr, re.MULTILINE), (
        outcome.stderr
    )
    assert "params.docker_socket: tests get the engine: its socket at /var/run/docker.sock" in outcome.stderr
    assert "-f /run/compose-env/docker-socket.compose.yml run --rm tests" in outcome.stderr
    assert "did not arrive" not in outcome.stderr  # nothing pulled: redis:7 was loaded
    assert outcome.leftovers == []


def test_the_node_binding_reaches_the_container_it_started_too(image: str, suite: Path, node_tarball: Path) -> None:
    os.link(node_tarball, suite / "node-runner.tar")
    params = _params(
        images=["node-runner.tar", "redis.tar"], command="run --rm tests-node", docker_socket=["tests-node"]
    )

    outcome = run_script(image, "out", {"source": {}, "params": params}, put_dir=str(suite))

    assert outcome.exit_code == 0, outcome.stderr
    assert re.search(r"^testcontainers \(node\): redis:7 at [0-9.]+:\d+ says \+PONG$", outcome.stderr, re.MULTILINE), (
        outcome.stderr
    )
    assert outcome.leftovers == []


def test_the_plain_socket_bind_pattern_works_without_the_param(image: str, suite: Path) -> None:
    params = _params(compose_files=["docker-compose.yml", "socket-bound.yml"])

    outcome = run_script(image, "out", {"source": {}, "params": params}, put_dir=str(suite))

    assert outcome.exit_code == 0, outcome.stderr
    assert SAYS in outcome.stderr
    assert outcome.leftovers == []


def test_an_image_the_suite_asks_for_that_was_not_passed_is_named_with_the_fix(image: str, suite: Path) -> None:
    params = _params(docker_socket=["tests"], env={"REDIS_IMAGE": "redis:6"})

    outcome = run_script(image, "out", {"source": {}, "params": params}, put_dir=str(suite))

    assert outcome.exit_code == 1
    assert (
        "error: a params.docker_socket service asked the engine to pull redis:6, which did not arrive" in outcome.stderr
    )
    assert "hint: pass redis:6 in params.images" in outcome.stderr
    assert (
        "  diagnosis: the tests asked for redis:6, which could not be pulled: pass redis:6 in params.images"
        in outcome.stderr
    )
    assert outcome.leftovers == []


def test_an_abort_while_a_started_container_runs_leaves_nothing_on_the_worker(image: str, suite: Path) -> None:
    params = _params(docker_socket=["tests"], env={"TC_MODE": "hold"})

    outcome = run_script(
        image, "out", {"source": {}, "params": params}, put_dir=str(suite), runtime="guardian", sigterm_when=SAYS
    )

    assert outcome.exit_code == 143, outcome.stderr
    assert outcome.signal_to_exit is not None and outcome.signal_to_exit < 10
    assert outcome.leftovers == []


def test_what_a_suite_leaves_on_a_task_cache_is_gone_before_the_next_run(
    image: str, suite: Path, tmp_path: Path
) -> None:
    """A container, a network and a volume the suite started and did not stop: teardown removes them from the kept data
    root."""
    compose_env = {
        **_params(compose_files=["code/docker-compose.yml"], docker_socket=["tests"], env={"TC_MODE": "leave"}),
        "cache_dir": "cache",
    }
    compose_env["images"] = ["code/runner.tar", "code/redis.tar"]
    cache = tmp_path / "cache"
    cache.mkdir()
    outcomes = []
    for run in ("first", "second"):
        output = tmp_path / f"out-{run}"
        output.mkdir()
        outcomes.append(run_task(image, {"code": str(suite)}, str(output), compose_env, caches={"cache": str(cache)}))

    for outcome in outcomes:
        assert outcome.exit_code == 0, outcome.stderr
        assert SAYS in outcome.stderr
        assert outcome.leftovers == []
    assert "held what an earlier run left" not in outcomes[1].stderr, outcomes[1].stderr
