"""The cgroup v2 part of the suite, run inside the cgroup v2 guest (see test_cgroup_v2.py, which boots it).

The seed put and an abort during a run, in the container Concourse's containerd runtime makes
(runc, a cgroup2 mount of the host's whole tree, no cgroup namespace), in Guardian's (no cgroup
namespace and nothing at /sys/fs/cgroup, /sys read-only; its abort signals every process in the
container each second) and under `docker run --privileged` (a private cgroup namespace). For
each: the put's result, where the service's cgroup landed (it must be below the resource
container's own), and that nothing is left in the container or on the guest (processes, mounts,
cgroups). The guest is slow (emulated CPU): one image load, six puts. Prints one line per
scenario and `N passed, N failed`; exits 1 if any failed.

The arm64 guest (test_arm64.py) runs a subset, named in SCENARIOS (`seed_put@docker ...`), and sets
EXPECT_PLATFORM: the seed put must say it loaded that platform's image of a multi-platform input.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

STAGE = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(STAGE / "tests"))
os.environ["COMPOSE_ENV_GDN_INIT"] = str(STAGE / "gdn-init")

from harness import DEFAULT_BUILD_ENV, PUT_DIR, RunOutcome, open_container, run_script  # noqa: E402
from worker_container import wait_for_processes_below  # noqa: E402

IMAGE = os.environ.get("IMAGE", "compose-env:dev")
PUT = STAGE / "put"
SEED_REQUEST = json.loads((PUT / "request.json").read_text())
TESTS_IMAGE = {"path": "tests-image/image.tar", "tag": "example/tests:ci"}
SLEEPER_REQUEST = {
    "source": {},
    "params": {"compose_files": ["sleeper/docker-compose.yml"], "images": [TESTS_IMAGE], "command": ["up", "sleeper"]},
}
ALL_SCENARIOS = " ".join(
    f"{key}@{runtime}" for runtime in ("concourse", "guardian", "docker") for key in ("seed_put", "abort_during_run")
)
SCENARIOS = os.environ.get("SCENARIOS") or ALL_SCENARIOS
EXPECT_PLATFORM = os.environ.get("EXPECT_PLATFORM", "")


def expect(condition: bool, what: str, outcome: RunOutcome) -> None:
    if not condition:
        raise AssertionError(
            f"{what}\n--- stderr (last 3000 characters) ---\n{outcome.stderr[-3000:]}\n--- leftovers: "
            f"{outcome.leftovers}"
        )


def seed_put(runtime: str) -> str:
    outcome = run_script(IMAGE, "out", SEED_REQUEST, put_dir=str(PUT), runtime=runtime)
    expect(outcome.exit_code == 0, f"exit code {outcome.exit_code}", outcome)
    expect(outcome.metadata().get("status") == "passed", "status is not passed", outcome)
    expect(outcome.leftovers == [], "something was left behind", outcome)
    if EXPECT_PLATFORM:
        # The plan's log line names the chosen image's own platform (its config), e.g. `(the linux/arm64/v8 image`.
        expect(f"(the {EXPECT_PLATFORM}" in outcome.stderr, f"no {EXPECT_PLATFORM} image was chosen", outcome)
    cgroup_line = next((line.strip() for line in outcome.stderr.splitlines() if "cgroup v2:" in line), "")
    return f"{outcome.duration:.0f}s; {cgroup_line}"


def abort_during_run(runtime: str) -> str:
    placed: dict[int, Path] = {}
    with open_container(IMAGE, [(str(PUT), PUT_DIR, True)], runtime=runtime) as container:
        own = container.host_cgroup()
        outcome = container.exec(
            ["/opt/resource/out", PUT_DIR],
            env=DEFAULT_BUILD_ENV,
            stdin=json.dumps(SLEEPER_REQUEST),
            at_line={"sleeper-up": lambda: placed.update(wait_for_processes_below(own, "sleep 300", seconds=20))},
            sigterm_when="sleeper-up",
        )
    outcome.leftovers += [f"host: {item}" for item in container.host_leftovers]
    expect(outcome.exit_code == 143, f"exit code {outcome.exit_code}", outcome)
    expect(len(placed) == 1, f"the service is not below the container's cgroup {own}", outcome)
    expect(outcome.leftovers == [], "something was left behind", outcome)
    (where,) = placed.values()
    return f"signal to exit {outcome.signal_to_exit:.1f}s; container at {own}, its service at {where}"


def main() -> int:
    deadline = time.monotonic() + 120
    while subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            print("docker did not answer in the guest", flush=True)
            return 1
        time.sleep(1)
    started = time.monotonic()
    subprocess.run(["docker", "load", "-q", "-i", str(STAGE / "image.tar")], check=True, stdout=subprocess.DEVNULL)
    version = "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1"
    machine = os.uname().machine
    print(f"guest: {machine}, cgroup {version}; image loaded in {time.monotonic() - started:.0f}s", flush=True)
    functions: dict[str, Callable[[str], str]] = {"seed_put": seed_put, "abort_during_run": abort_during_run}
    scenarios = [
        (f"{key.replace('_', ' ')} under {runtime}", functions[key], runtime)
        for key, runtime in (item.split("@") for item in SCENARIOS.split())
    ]
    failed = 0
    for name, function, runtime in scenarios:
        started = time.monotonic()
        try:
            detail = function(runtime)
            print(f"PASSED {name} ({time.monotonic() - started:.0f}s): {detail}", flush=True)
        except Exception:
            failed += 1
            print(f"FAILED {name} ({time.monotonic() - started:.0f}s):\n{traceback.format_exc()}", flush=True)
    print(f"{len(scenarios) - failed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
