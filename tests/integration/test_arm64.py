"""The arm64 part: the image built for linux/arm64 on this amd64 machine, proved in an emulated arm64 guest.

`make image PLATFORM=linux/arm64` builds it here through Debian's qemu-user-static
(scripts/binfmt.sh) from an arm64 base (scripts/base-image.sh), as a fresh machine would; the
example's two images are built for arm64 the same way. tests/arm64vm/ boots a throwaway Debian
trixie arm64 guest (qemu-system-aarch64, cgroup v2, Debian's docker.io) and runs
tests/cgroup2/guest_scenarios.py there: the seed put under `docker run --privileged` and under
Concourse's containerd runtime, and an abort under the latter, each leaving nothing behind.
Guardian is not run: Concourse has not built it for arm64 since 7.14.

The seed put's redis input is registry-image's `oci-layout` of a multi-platform image, holding a
real amd64 and a real arm64 image (as `get` of redis:7 gives): the put must load the arm64 one.
The guest could not run the amd64 one at all (it has no binfmt emulation), and the put's log must
say `the linux/arm64 image`.

The CPU is emulated: one boot, one image load, three puts. Slow (minutes); runs last.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from guest_stage import stage_harness
from image_fixtures import parts_from_docker
from producers import oci_build_task_dir, oci_layout_dir
from worker_container import gdn_init

ROOT = Path(__file__).resolve().parents[2]
GUEST = ROOT / "tests" / "arm64vm"
PLATFORM = "linux/arm64"
IMAGE = os.environ.get("IMAGE", "compose-env:dev")
ARM64_IMAGE = f"{IMAGE}-arm64"  # what `make image PLATFORM=linux/arm64 IMAGE=…` tags
GUEST_SCENARIOS = "tests/cgroup2/guest_scenarios.py"
SCENARIOS = "seed_put@docker seed_put@concourse abort_during_run@concourse"
#: Where .ci/run's background build of the guest writes (its failure is shown with the test's).
BACKGROUND_BUILD_LOG = Path("/var/tmp/compose-env-arm64vm-build.log")


@pytest.fixture(scope="module")
def arm64_tools() -> None:
    """What the arm64 part needs here, or a skip (under CI=true a failure) saying what is missing."""
    if os.environ.get("IMAGE_PREBUILT") == "1":
        # ci/pipeline.yml: its test task runs in a worker's container, where registering an emulator
        # (binfmt_misc is the kernel's, shared by every container) is not ours to do.
        pytest.skip("the pipeline's test task builds no arm64 image: the arm64 guest runs in .ci/run")
    if os.geteuid() != 0:
        pytest.skip("the arm64 part needs root (binfmt_misc, debootstrap, the guest's 9p shares)")
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("no aarch64-linux-gnu-gcc (Debian's gcc-aarch64-linux-gnu) for the guest's gdn-init")


@pytest.fixture(scope="module")
def arm64_guest(arm64_tools: None) -> Path:
    """The guest's disk, built once (or by .ci/run in the background: this waits for it)."""
    built = subprocess.run([str(GUEST / "build.sh")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if built.returncode != 0:
        background = BACKGROUND_BUILD_LOG.read_text()[-3000:] if BACKGROUND_BUILD_LOG.exists() else ""
        pytest.fail(f"tests/arm64vm/build.sh failed:\n{built.stderr[-3000:]}\n.ci/run's build:\n{background}")
    return GUEST


@pytest.fixture(scope="module")
def arm64_image(arm64_tools: None, engine: str) -> str:
    """`make image PLATFORM=linux/arm64`, as the README says (cached layers after the first build)."""
    subprocess.run(["make", "-s", "image", f"PLATFORM={PLATFORM}", f"IMAGE={IMAGE}"], cwd=ROOT, check=True)
    architecture = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Os}}/{{.Architecture}}", ARM64_IMAGE],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert architecture == PLATFORM
    return ARM64_IMAGE


def _build_arm64_example(target: str) -> str:
    base = subprocess.run(
        [str(ROOT / "scripts/base-image.sh"), os.environ.get("BASE_IMAGE", "debian:trixie-slim"), PLATFORM],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    name = f"example-arm64/{target}:ci"
    build = ["docker", "build", "-q", "--platform", PLATFORM, "--build-arg", f"BASE_IMAGE={base}", "--target", target]
    subprocess.run([*build, "-t", name, str(ROOT / "example" / "images")], check=True, stdout=subprocess.DEVNULL)
    return name


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, arm64_image: str, example_images: Path) -> Path:
    """The guest's /mnt/host: the arm64 image, the example's inputs as arm64 producers give them, the harness."""
    stage = tmp_path_factory.mktemp("arm64-stage")
    parts = tmp_path_factory.mktemp("arm64-parts")
    put = stage / "put"
    shutil.copytree(example_images / "src", put / "src")
    shutil.copy(ROOT / "example" / "request.json", put / "request.json")
    # registry-image `get` with format: oci-layout of a multi-platform redis: both images are real.
    amd64_redis = parts_from_docker("example/redis:ci", parts / "amd64-redis")
    arm64_redis = parts_from_docker(_build_arm64_example("redis"), parts / "arm64-redis")
    oci_layout_dir(amd64_redis, put / "redis-image", "example/redis", "ci", arm64=arm64_redis)
    # oci-build-task's output of an arm64 build: a tarball without a name (the request tags it).
    oci_build_task_dir(parts_from_docker(_build_arm64_example("tests"), parts / "arm64-tests"), put / "tests-image")
    stage_harness(stage)
    shutil.copy(gdn_init("aarch64"), stage / "gdn-init")  # Concourse's runtimes start the container with it
    subprocess.run(["docker", "save", arm64_image, "-o", str(stage / "image.tar")], check=True)
    return stage


def test_example_put_and_abort_in_an_arm64_guest(stage: Path, arm64_image: str, arm64_guest: Path) -> None:
    # (The stage first: its builds go on while .ci/run's background build of the guest's disk finishes.)
    environment = {"IMAGE": arm64_image, "SCENARIOS": SCENARIOS, "EXPECT_PLATFORM": PLATFORM}
    options = [argument for name, value in environment.items() for argument in ("-e", f"{name}={value}")]
    run = subprocess.run(
        [str(arm64_guest / "run.sh"), "--timeout", "3000", *options, str(stage), "--", "python3", GUEST_SCENARIOS],
        capture_output=True,
        text=True,
    )
    print(run.stdout)
    assert run.returncode == 0, f"exit code {run.returncode}\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    assert "guest: aarch64, cgroup v2" in run.stdout
    assert "3 passed, 0 failed" in run.stdout
