"""The inner daemon against the real image: start, storage choices, privileges, start failures, SIGTERM, docker_host.

Every put here loads one small image (the base image, saved by the outer engine) so that
the daemon's own behaviour dominates the run time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ci_skips import not_applicable
from harness import DEFAULT_BUILD_ENV, PUT_DIR, Container, open_container, run_script
from image_fixtures import docker_save_tarball, random_image
from worker_container import cgroup_v2, wait_for_processes_below

BASE_IMAGE = os.environ.get("BASE_IMAGE", "debian:trixie-slim")
COMPOSE_FILE = f"""\
services:
  probe:
    image: {BASE_IMAGE}
    command: ["sh", "-c", "echo probe-ok"]
  sleeper:
    image: {BASE_IMAGE}
    command: ["sh", "-c", "echo sleeper-up; exec sleep 300"]
"""


@pytest.fixture(scope="module")
def daemon_put_dir(image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A put directory: the compose file and the base image as a `docker save` tarball."""
    put = tmp_path_factory.mktemp("daemon-put")
    (put / "src").mkdir()
    (put / "src" / "docker-compose.yml").write_text(COMPOSE_FILE)
    (put / "base").mkdir()
    subprocess.run(["docker", "save", BASE_IMAGE, "-o", str(put / "base" / "image.tar")], check=True)
    return put


def request(command: list[str], **source: Any) -> dict[str, Any]:
    params = {"compose_files": ["src/docker-compose.yml"], "images": ["base/image.tar"], "command": command}
    return {"source": source, "params": params}


def phase_lines(stderr: str, header: str) -> str:
    """The log lines of one phase (from its header to the next)."""
    after = stderr.split(f"==> {header}", 1)[1]
    return after.split("==> ", 1)[0]


def test_start_path_memory_medium_logs_every_choice_and_reports_the_daemon(image: str, daemon_put_dir: Path) -> None:
    outcome = run_script(
        image,
        "out",
        request(["run", "--rm", "probe"], dockerd={"data_root_medium": "memory"}),
        put_dir=str(daemon_put_dir),
    )

    assert outcome.exit_code == 0, outcome.stderr
    start = phase_lines(outcome.stderr, "Starting the Docker daemon")
    assert "cgroup v1" in start or "cgroup v2" in start
    assert "data root /scratch/docker on memory: source.dockerd.data_root_medium is memory; need" in start
    assert "storage driver overlay2: a test overlay mount on the data root (tmpfs) worked" in start
    assert "iptables: nft" in start or "iptables: legacy" in start
    assert "mtu: " in start
    # dockerd starts in this phase, or after the images were written into its store (Loading)
    assert "dockerd starts once the images are in its store" in start or "answered" in start
    assert re.search(
        r"dockerd 26\S* answered [0-9.]+s after it was spawned; .* more for containerd to listen", outcome.stderr
    )
    metadata = outcome.metadata()
    assert metadata["dockerd"].startswith("26.") and " overlay2, data root on memory (need " in metadata["dockerd"]
    assert set(dict(item.split("=") for item in metadata["timings"].split())) == {"daemon", "load", "run", "teardown"}
    assert "==> Timings" in outcome.stderr
    assert "inner daemon stopped:" in outcome.stderr
    assert outcome.leftovers == []


def test_disk_medium_keeps_the_data_root_on_the_scratch_volume_with_overlay2(image: str, daemon_put_dir: Path) -> None:
    outcome = run_script(
        image,
        "out",
        request(["run", "--rm", "probe"], dockerd={"data_root_medium": "disk"}),
        put_dir=str(daemon_put_dir),
    )

    assert outcome.exit_code == 0, outcome.stderr
    start = phase_lines(outcome.stderr, "Starting the Docker daemon")
    assert "data root /scratch/docker on disk: source.dockerd.data_root_medium is disk" in start
    assert "storage driver overlay2: a test overlay mount on the data root" in start
    assert "(tmpfs)" not in start
    assert outcome.metadata()["dockerd"].split(",")[0].endswith("overlay2")
    assert "data root on disk" in outcome.metadata()["dockerd"]
    assert outcome.leftovers == []


def test_data_root_on_the_container_overlay_gets_fuse_overlayfs_or_vfs_never_a_silent_fallback(
    image: str, daemon_put_dir: Path
) -> None:
    dockerd = {"data_root": "/var/lib/inner-docker", "data_root_medium": "disk"}
    outcome = run_script(image, "out", request(["run", "--rm", "probe"], dockerd=dockerd), put_dir=str(daemon_put_dir))

    assert outcome.exit_code == 0, outcome.stderr
    start = phase_lines(outcome.stderr, "Starting the Docker daemon")
    assert "overlay cannot mount on the data root (overlay)" in start
    driver = "fuse-overlayfs" if "storage driver fuse-overlayfs" in start else "vfs"
    if driver == "vfs":
        assert "warning: storage driver vfs" in start and "slow" in start
    assert outcome.metadata()["dockerd"].split(",")[0].endswith(driver)
    assert outcome.leftovers == []


def test_auto_medium_reads_the_containers_memory_limit_and_stays_on_disk_when_short(
    image: str, daemon_put_dir: Path
) -> None:
    with Container(image, [(str(daemon_put_dir), PUT_DIR, True)], extra_args=["--memory", "2g"]) as container:
        outcome = container.exec(
            ["/opt/resource/out", PUT_DIR], env=DEFAULT_BUILD_ENV, stdin=json.dumps(request(["run", "--rm", "probe"]))
        )

    assert outcome.exit_code == 0, outcome.stderr
    start = phase_lines(outcome.stderr, "Starting the Docker daemon")
    assert "data root /scratch/docker on disk: auto: not enough memory for a tmpfs" in start
    assert "cgroup v1 memory limit (2.0 GiB)" in start or "cgroup v2 memory.max (2.0 GiB)" in start
    assert "data root on disk (need " in outcome.metadata()["dockerd"]
    assert outcome.leftovers == []


def test_explicit_storage_driver_is_passed_and_verified(image: str, daemon_put_dir: Path) -> None:
    outcome = run_script(
        image, "out", request(["run", "--rm", "probe"], dockerd={"storage_driver": "vfs"}), put_dir=str(daemon_put_dir)
    )

    assert outcome.exit_code == 0, outcome.stderr
    assert "storage driver vfs: source.dockerd.storage_driver is vfs" in outcome.stderr
    assert outcome.metadata()["dockerd"].split(",")[0].endswith("vfs")


def test_not_privileged_fails_at_once_with_the_fix(image: str, daemon_put_dir: Path) -> None:
    outcome = run_script(image, "out", request(["run", "--rm", "probe"]), put_dir=str(daemon_put_dir), privileged=False)

    assert outcome.exit_code == 1
    assert "the resource type must be declared `privileged: true`" in outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert outcome.stdout == ""
    assert outcome.leftovers == []


def test_a_daemon_that_dies_at_start_fails_with_its_log_tail_and_a_diagnosis(image: str, daemon_put_dir: Path) -> None:
    outcome = run_script(
        image,
        "out",
        request(["run", "--rm", "probe"], dockerd={"args": ["--no-such-flag"]}),
        put_dir=str(daemon_put_dir),
    )

    assert outcome.exit_code == 1
    assert "the inner Docker daemon did not start: dockerd exited with code" in outcome.stderr
    assert "last lines of the dockerd log" in outcome.stderr
    assert "unknown flag: --no-such-flag" in outcome.stderr
    assert "diagnosis: dockerd rejected a flag: check source.dockerd.args" in outcome.stderr
    assert "Traceback" not in outcome.stderr
    # containerd was already running: the same teardown stopped it and undid the mounts
    assert outcome.leftovers == []


def test_sigterm_during_a_run_exits_143_within_5_seconds_with_nothing_left(
    image: str, daemon_put_dir: Path, runtime: str
) -> None:
    outcome = run_script(
        image,
        "out",
        request(["up", "sleeper"]),
        put_dir=str(daemon_put_dir),
        sigterm_when="sleeper-up",
        runtime=runtime,
    )

    assert "sleeper-up" in outcome.stderr, "the signal should arrive while the service runs: " + outcome.stderr[-2000:]
    assert outcome.exit_code == 143, outcome.stderr[-3000:]
    assert outcome.signal_to_exit is not None and outcome.signal_to_exit <= 5, outcome.signal_to_exit
    assert outcome.leftovers == []
    assert "aborted (SIGTERM): tearing down" in outcome.stderr and "inner daemon stopped:" in outcome.stderr


def test_sigterm_while_starting_or_loading_also_cleans_up(
    image: str, daemon_put_dir: Path, tmp_path: Path, runtime: str
) -> None:
    # 1 GiB more to load, so that loading lasts past the signal whichever way the images go in.
    put = tmp_path / "put"
    subprocess.run(["cp", "-a", str(daemon_put_dir), str(put)], check=True)
    docker_save_tarball(random_image(tmp_path / "big", [256 << 20] * 4), put / "big.tar", ["example/big:ci"])
    params = request(["run", "--rm", "probe"])
    params["params"]["images"].append("big.tar")

    outcome = run_script(image, "out", params, put_dir=str(put), sigterm_when="==> Loading", runtime=runtime)

    assert outcome.exit_code == 143, outcome.stderr[-3000:]
    assert outcome.signal_to_exit is not None and outcome.signal_to_exit <= 5, outcome.signal_to_exit
    assert "Running docker compose" not in outcome.stderr
    assert outcome.leftovers == []


def test_services_run_inside_the_resource_containers_own_cgroup(image: str, daemon_put_dir: Path, runtime: str) -> None:
    """Within the container's limits and in reach of the worker's abort: never at the host's /docker/<id>."""
    placed: dict[int, Path] = {}
    with open_container(image, [(str(daemon_put_dir), PUT_DIR, True)], runtime=runtime) as container:
        own = container.host_cgroup()
        outcome = container.exec(
            ["/opt/resource/out", PUT_DIR],
            env=DEFAULT_BUILD_ENV,
            stdin=json.dumps(request(["up", "sleeper"])),
            at_line={"sleeper-up": lambda: placed.update(wait_for_processes_below(own, "sleep 300"))},
            sigterm_when="sleeper-up",
        )

    assert outcome.exit_code == 143, outcome.stderr[-3000:]
    assert len(placed) == 1, (
        f"the service's process is not below the container's cgroup {own}: {outcome.stderr[-2000:]}"
    )
    (where,) = placed.values()
    assert f"/{'/'.join(where.relative_to(own).parts[:1])}" == "/compose-env", where
    print(f"{runtime}: container at {own}, its service at {where}")
    assert outcome.leftovers == [] and container.host_leftovers == []


@pytest.fixture
def outer_engine_socket(engine: str) -> Iterator[str]:
    """The outer engine's unix socket on the host, to bind into the resource container."""
    assert engine.startswith("unix://"), f"this test binds the outer engine's unix socket; DOCKER_HOST is {engine}"
    yield engine.removeprefix("unix://")


def test_docker_host_mode_uses_the_outer_engine_and_starts_no_daemon(
    image: str, daemon_put_dir: Path, outer_engine_socket: str
) -> None:
    project = "compose-env-daemon-remote"
    params = request(["run", "--rm", "probe"], docker_host="unix:///run/outer/docker.sock")
    params["params"]["project_name"] = project
    mounts = [(str(daemon_put_dir), PUT_DIR, True), (outer_engine_socket, "/run/outer/docker.sock", False)]
    # not privileged on purpose: a remote engine needs no privileges
    with Container(image, mounts, privileged=False) as container:
        outcome = container.exec(["/opt/resource/out", PUT_DIR], env=DEFAULT_BUILD_ENV, stdin=json.dumps(params))

    assert outcome.exit_code == 0, outcome.stderr
    assert "using the engine at unix:///run/outer/docker.sock (source.docker_host)" in outcome.stderr
    assert "probe-ok" in outcome.stderr
    assert outcome.metadata()["dockerd"].startswith("remote ")
    assert outcome.leftovers == []
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert left.stdout.strip() == ""


def test_a_worker_whose_devices_cgroup_cannot_be_widened_gets_a_diagnosis_naming_the_worker_setting(
    image: str, daemon_put_dir: Path
) -> None:
    if cgroup_v2():
        not_applicable("cgroup v2 has no devices cgroup to inherit (the guest part covers v2)")
    outcome = run_script(
        image,
        "out",
        request(["run", "--rm", "probe"]),
        put_dir=str(daemon_put_dir),
        runtime="concourse",
        strict_devices=True,
    )

    log = outcome.stderr
    assert outcome.exit_code == 1, log[-3000:]
    assert "devices: could not be widened" in log
    last_lines = log.strip().splitlines()[-2:]
    assert last_lines[0].startswith("\x1b[31merror: the put fails: `docker compose run --rm probe` exited with code"), (
        last_lines
    )
    assert (
        "diagnosis: the worker's devices cgroup refused `c 5:1 rwm`" in last_lines[1]
        and "--containerd-allowed-device" in last_lines[1]
    ), last_lines
    assert outcome.leftovers == []
