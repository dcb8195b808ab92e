"""Integration fixtures: a Docker engine, the real image, and the example's image artifacts.

Nothing here skips: without an engine the suite fails, so a green run always means the
image really ran.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import RUNTIMES
from worker_spec import bounding_set, capabilities_within

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("IMAGE", "compose-env:dev")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
    # The emulated guests (cgroup v2, arm64: minutes each) last: a quick failure elsewhere shows first.
    items.sort(key=lambda item: Path(str(item.fspath)).name in ("test_cgroup_v2.py", "test_arm64.py"))


@pytest.fixture(scope="session")
def engine() -> str:
    """DOCKER_HOST of a working engine (started by scripts/dev-engine.sh when none answers)."""
    host = subprocess.run(
        [str(ROOT / "scripts/dev-engine.sh")], check=True, capture_output=True, text=True
    ).stdout.strip()
    os.environ["DOCKER_HOST"] = host
    return host


@pytest.fixture(scope="session")
def image(engine: str) -> str:
    """The resource image, (re)built once per session by `make image` (cached layers: seconds).

    With IMAGE_PREBUILT=1 the image named IMAGE is tested as it is: ci/pipeline.yml tests the
    image it built and will publish, not a rebuild.
    """
    if os.environ.get("IMAGE_PREBUILT") == "1":
        subprocess.run(["docker", "image", "inspect", IMAGE], check=True, capture_output=True)
    else:
        subprocess.run(["make", "-s", "image", f"IMAGE={IMAGE}"], cwd=ROOT, check=True)
    return IMAGE


@pytest.fixture(scope="session")
def image_labels(image: str) -> dict[str, str]:
    inspected = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{json .Config.Labels}}", image],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(inspected.stdout) or {}


@pytest.fixture(scope="session")
def version_line(image_labels: dict[str, str]) -> str:
    """What the image says it is, from its OCI labels: `compose-env 0.1.0 (3f2c1ab)`."""
    version, revision = (
        image_labels["org.opencontainers.image.version"],
        image_labels["org.opencontainers.image.revision"],
    )
    return f"compose-env {version} ({revision})"


@pytest.fixture(scope="session")
def example_images(image: str) -> Path:
    """example/put with the redis and tests image artifacts in it (example/build.sh)."""
    subprocess.run([str(ROOT / "example/build.sh")], check=True, capture_output=True)
    return ROOT / "example" / "put"


@pytest.fixture
def put_dir(tmp_path: Path, example_images: Path) -> Iterator[Path]:
    """A fresh put directory holding the example's artifacts (hard links: no copy)."""
    target = tmp_path / "put"
    shutil.copytree(example_images, target, copy_function=os.link)
    yield target


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    """Each way the resource container is made: docker --privileged, Concourse's containerd runtime, Guardian."""
    return str(request.param)


def pytest_report_header() -> str:
    """Say what the worker runtimes could not give here: the host's bounding set limits runc's containers."""
    _kept, dropped = capabilities_within(bounding_set())
    return f"worker runtimes: capabilities this host cannot give: {', '.join(dropped) or 'none'}"


# The reports and task-cache tests' project (tests/data/reports): a pytest runner image built from the base image.
REPORTS_DATA = ROOT / "tests" / "data" / "reports"
RUNNER_IMAGE = "compose-env-test/pytest:ci"


@pytest.fixture(scope="session")
def runner_tarball(image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pytest image, built from the base image with Debian's python3-pytest, saved as an oci-build-task would."""
    base = os.environ.get("BASE_IMAGE", "debian:trixie-slim")
    subprocess.run(
        ["docker", "build", "-q", "--build-arg", f"BASE_IMAGE={base}", "-t", RUNNER_IMAGE, str(REPORTS_DATA)],
        check=True,
        capture_output=True,
    )
    tarball = tmp_path_factory.mktemp("runner") / "image.tar"
    subprocess.run(["docker", "save", RUNNER_IMAGE, "-o", str(tarball)], check=True, capture_output=True)
    return tarball


@pytest.fixture
def inputs(tmp_path: Path, runner_tarball: Path) -> Path:
    """A put directory (or task working directory): code/ and runner/image.tar."""
    put = tmp_path / "put"
    shutil.copytree(REPORTS_DATA / "code", put / "code")
    (put / "runner").mkdir()
    os.link(runner_tarball, put / "runner" / "image.tar")
    return put


_SECONDS_BY_PART: dict[str, float] = {}


def _part_of(nodeid: str) -> str:
    """Which part of the runtime matrix a test belongs to: its runtime, or one of the emulated guests."""
    if "test_cgroup_v2.py" in nodeid:
        return "cgroup v2 guest (concourse, guardian, docker)"
    if "test_arm64.py" in nodeid:
        return "arm64 guest, cgroup v2 (docker, concourse), with its builds"
    runtime = next(
        (name for name in RUNTIMES if f"[{name}" in nodeid or f"-{name}]" in nodeid or f"-{name}-" in nodeid), "docker"
    )
    return f"cgroup v1 host, {runtime}"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _SECONDS_BY_PART[_part_of(report.nodeid)] = _SECONDS_BY_PART.get(_part_of(report.nodeid), 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The time each part of the runtime matrix took (setup, call and teardown of its tests)."""
    if _SECONDS_BY_PART:
        terminalreporter.section("integration time by runtime")
        for part, seconds in sorted(_SECONDS_BY_PART.items()):
            terminalreporter.write_line(f"{part:<60} {seconds / 60:6.1f} min")
