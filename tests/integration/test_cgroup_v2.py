"""The cgroup v2 part: the seed put and an abort, under the concourse, guardian and docker runtimes, in a v2 guest.

This host is cgroup v1; shared/vm/ boots a throwaway Debian trixie guest on a pure cgroup v2
hierarchy (systemd, Docker) and runs one command in it. The guest gets the image (docker
save), the example's artifacts, the harness and tests/cgroup2/guest_scenarios.py, which runs
the scenarios and reports each. The CPU is emulated, so this is the slowest test (minutes):
the scenarios are few, and the image is loaded once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from guest_stage import stage_harness
from worker_container import gdn_init

ROOT = Path(__file__).resolve().parents[2]
VM_TOOL = Path(os.environ.get("CG2VM_TOOL", ROOT.parent / "shared" / "vm"))
VM_CACHE = "/var/tmp/cg2vm-compose-env"


@pytest.fixture(scope="module")
def vm_tool() -> Path:
    if not (VM_TOOL / "run.sh").exists():
        # A skip here; under CI=true a failure (tests/ci_skips.py).
        pytest.skip(
            f"no cgroup v2 guest tool at {VM_TOOL} (shared/vm beside the repository, or CG2VM_TOOL): the cgroup v2 "
            "part did not run"
        )
    env = {**os.environ, "CG2VM_CACHE": VM_CACHE, "CG2VM_EXTRA_PACKAGES": "python3"}
    subprocess.run([str(VM_TOOL / "build.sh")], check=True, env=env, stdout=subprocess.DEVNULL)
    return VM_TOOL


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, image: str, example_images: Path) -> Path:
    """What the guest sees at /mnt/host: the image, the example's artifacts, the harness, a static gdn-init."""
    stage = tmp_path_factory.mktemp("cgroup2-stage")
    shutil.copytree(example_images, stage / "put", copy_function=os.link)
    shutil.copy(ROOT / "example" / "request.json", stage / "put" / "request.json")
    stage_harness(stage)
    shutil.copy(gdn_init(), stage / "gdn-init")
    subprocess.run(["docker", "save", image, "-o", str(stage / "image.tar")], check=True)
    return stage


def test_seed_put_and_abort_under_concourse_guardian_and_docker_on_cgroup_v2(
    vm_tool: Path, stage: Path, image: str
) -> None:
    run = subprocess.run(
        [
            str(vm_tool / "run.sh"),
            "--timeout",
            "2400",
            "-e",
            f"IMAGE={image}",
            str(stage),
            "--",
            "python3",
            "tests/cgroup2/guest_scenarios.py",
        ],
        env={**os.environ, "CG2VM_CACHE": VM_CACHE},
        capture_output=True,
        text=True,
    )
    print(run.stdout)
    assert run.returncode == 0, f"exit code {run.returncode}\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    assert "6 passed, 0 failed" in run.stdout
