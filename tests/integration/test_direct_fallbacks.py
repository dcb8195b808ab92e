"""Direct writes never leave a put worse off than `docker load`: each fallback, forced.

A store dockerd does not take as written (a written layer removed, a layer entry dropped),
a dockerd that does not start on the written store, and an engine version direct writes were
not tested with: each put still passes, every image through `docker load`, with one warning
line naming the input and the reason, and nothing left running. The faults come from the
test-only hooks COMPOSE_ENV_TEST_STORE_FAULT (resource/compose_env/testing/store_faults.py, wired in by assets/out and
assets/task) and
COMPOSE_ENV_TEST_DOCKERD_VERSION (tested_engines.py). Each test prints the put's timings:
the fallback's cost is the difference from the direct put's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from harness import RunOutcome, run_script
from image_fixtures import build_marked_image, docker_save_tarball, parts_from_docker
from producers import registry_image_oci_dir

WRITTEN = "written into the overlay2 store"
STREAMED = "MiB streamed in"
GIVEN_UP = "warning: direct writes given up: "
IMAGES = ["saved.tar", "registry-image"]
#: A fault → (the reason its warning line gives, a regex).
STORE_FAULTS = {
    "remove-layer": (
        r"params\.images\[0\] \(saved\.tar\): inspecting it failed: "
        r"stat /scratch/docker/overlay2/[0-9a-f]{64}: no such file"
    ),
    "corrupt-layer": r"params\.images\[0\] \(saved\.tar\): creating a container from it failed: ",
    "drop-layer-entry": r"params\.images\[0\] \(saved\.tar\): inspecting it failed: layer does not exist",
    "break-dockerd": (
        r"params\.images\[0\] \(saved\.tar\), params\.images\[1\] \(registry-image\):"
        r" dockerd did not start on the written store \(failed to start daemon: Couldn't create reference store"
    ),
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def put(tmp_path_factory: pytest.TempPathFactory, image: str) -> Path:
    work = tmp_path_factory.mktemp("direct-fallbacks")
    put = work / "put"
    docker_save_tarball(
        parts_from_docker(build_marked_image("fallback-saved", "fallback-saved"), work / "saved"),
        put / "saved.tar",
        ["example/saved:ci"],
    )
    registry = parts_from_docker(build_marked_image("fallback-registry", "fallback-registry"), work / "registry")
    registry_image_oci_dir(
        registry, put / "registry-image", "example/registry", "ci", "index.docker.io/example/registry:ci"
    )
    services = {name: {"image": f"example/{name}:ci", "command": ["cat", "/shape"]} for name in ("saved", "registry")}
    (put / "src").mkdir()
    (put / "src" / "docker-compose.yml").write_text(json.dumps({"services": services}))
    return put


def _run(image: str, put: Path, env: dict[str, str] | None = None) -> RunOutcome:
    request = {
        "source": {},
        "params": {"compose_files": ["src/docker-compose.yml"], "images": IMAGES, "command": ["up"]},
    }
    return run_script(image, "out", request, put_dir=str(put), env=env)


def _report(name: str, outcome: RunOutcome) -> None:
    """The put's phases, for measuring what a fallback costs (shown with pytest -s)."""
    metadata = outcome.metadata()
    print(
        f"\n{name}: duration {metadata.get('duration')}; timings {metadata.get('timings')}; harness "
        f"{outcome.duration:.1f}s"
    )


def _passed_through_docker_load(outcome: RunOutcome) -> str:
    log = ANSI.sub("", outcome.stderr)
    assert outcome.exit_code == 0, log[-5000:]
    assert outcome.leftovers == []
    assert WRITTEN not in log, log[-5000:]
    for index, path in enumerate(IMAGES):
        assert re.search(rf"params\.images\[{index}\] \({re.escape(path)}\): [0-9.]+ {STREAMED}", log), log[-5000:]
    assert re.search(r"saved-1\s+\| fallback-saved", log) and re.search(r"registry-1\s+\| fallback-registry", log), log[
        -5000:
    ]
    return log


@pytest.fixture(scope="module")
def direct(image: str, put: Path) -> RunOutcome:
    outcome = _run(image, put)
    _report("direct", outcome)
    return outcome


def test_without_a_fault_both_images_are_written_directly(direct: RunOutcome) -> None:
    log = ANSI.sub("", direct.stderr)
    assert direct.exit_code == 0, log[-5000:]
    assert log.count(WRITTEN) == 2 and STREAMED not in log and GIVEN_UP not in log, log[-5000:]
    assert direct.leftovers == []


@pytest.mark.parametrize("fault", STORE_FAULTS)
def test_a_store_dockerd_does_not_take_falls_back_to_docker_load_on_an_emptied_data_root(
    image: str, put: Path, fault: str
) -> None:
    outcome = _run(image, put, {"COMPOSE_ENV_TEST_STORE_FAULT": fault})
    _report(fault, outcome)

    log = _passed_through_docker_load(outcome)
    warnings = [line for line in log.splitlines() if line.strip().startswith(GIVEN_UP)]
    assert len(warnings) == 1, warnings
    assert re.search(GIVEN_UP + STORE_FAULTS[fault], warnings[0]), warnings[0]
    assert (
        warnings[0]
        .rstrip()
        .endswith("restarting dockerd on an emptied data root, then docker load for params.images[0], params.images[1]")
    ), warnings[0]
    assert "dockerd restarted on an emptied data root in " in log


def test_a_store_left_half_registered_is_emptied_before_dockerd_starts(image: str, put: Path) -> None:
    outcome = _run(image, put, {"COMPOSE_ENV_TEST_STORE_FAULT": "fail-registering"})
    _report("fail-registering", outcome)

    log = _passed_through_docker_load(outcome)
    warnings = [line.strip() for line in log.splitlines() if line.strip().startswith(GIVEN_UP)]
    assert warnings == [
        "warning: direct writes given up: params.images[0] (saved.tar), params.images[1] (registry-image): the store "
        "may hold half-registered entries"
        " (registering an image failed part way (injected by COMPOSE_ENV_TEST_STORE_FAULT)); emptying the data root,"
        " then docker load for params.images[0], params.images[1]"
    ]
    assert "dockerd restarted" not in log


def test_an_untested_engine_loads_every_image_with_docker_load(image: str, put: Path) -> None:
    outcome = _run(image, put, {"COMPOSE_ENV_TEST_DOCKERD_VERSION": "99.0.0-untested"})
    _report("untested engine", outcome)

    log = _passed_through_docker_load(outcome)
    notes = [
        line.strip() for line in log.splitlines() if "is not among the versions direct writes were tested with" in line
    ]
    assert notes == [
        "dockerd 99.0.0-untested is not among the versions direct writes were tested with (26.1.5+dfsg1): every image "
        "goes through docker load"
    ]
    assert GIVEN_UP not in log
