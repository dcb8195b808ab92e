"""What a test guest (the cgroup v2 guest, the arm64 guest) sees at /mnt/host: the harness and its scenarios.

Both guests run tests/cgroup2/guest_scenarios.py against a staged directory: these files, the
image under test (`docker save`), and a put directory with the example's inputs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS_FILES = (
    "harness.py",
    "worker_container.py",
    "worker_spec.py",
    "runtime/gdn-init.c",
    "cgroup2/guest_scenarios.py",
)
#: The abort scenario's service: up until the put is signalled.
SLEEPER = """\
services:
  sleeper:
    image: example/tests:ci
    command: ["sh", "-c", "echo sleeper-up; exec sleep 300"]
"""


def stage_harness(stage: Path) -> None:
    """The harness and the scenarios under stage/tests, and the abort scenario's compose file under stage/put."""
    for name in HARNESS_FILES:
        (stage / "tests" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "tests" / name, stage / "tests" / name)
    (stage / "put" / "sleeper").mkdir(parents=True, exist_ok=True)
    (stage / "put" / "sleeper" / "docker-compose.yml").write_text(SLEEPER)
