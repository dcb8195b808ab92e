"""Side-by-side benchmarks, ours against the dcind way, on the same image and inputs, in one run.

1. Inner daemon ready time, alternating, each start in a fresh resource container:
   - ours: `InnerDaemon.prepare` then `launch` (pre-flight, cgroups, data root, containerd first, probes,
     dockerd, the API answering), then its stop;
   - naive: `dockerd` with its managed containerd, `sleep 1` then `docker info` every second
     as the dcind-family scripts do; the moment the API really started serving (from the
     dockerd log) is recorded too.
2. The fixed overhead: a put that loads nothing and runs `docker compose ps` (`/opt/resource/out`)
   against dcind's start_docker + `docker compose ps` + stop_docker (bench/dcind.sh ps).
3. The seed scenario end to end: a redis server from a registry-image `format: oci` tarball
   (gzip layers, ~150 MB) and a test client from a docker-image `save: true` tarball (~330 MB),
   `docker compose run --rm tests`:
   - ours: `/opt/resource/out` through the Concourse-style harness;
   - dcind: bench/dcind.sh (start dockerd, poll every second, `docker load` each, run, down).
In 2 and 3 each run is in a fresh resource container (as Concourse gives each step), the two
sides alternating which goes first. Phases: ours from the put's log (each phase's duration),
dcind's from the script; "rest" is the wall time of the `docker exec` beyond the phases (for
ours: Python's start, imports, the response). The machine's 1-minute load average is sampled
throughout.

    python3 bench/run.py [--image compose-env:dev] [--daemon-runs 7] [--overhead-runs 7] [--e2e-runs 3]

The seed inputs are built from the base image with Debian packages (bench/images) and
cached in /tmp/compose-env-bench-seed. Results also go to bench/results/ as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness import DEFAULT_BUILD_ENV, PUT_DIR, Container  # noqa: E402
from image_fixtures import parts_from_docker  # noqa: E402
from producers import docker_image_resource_dir, registry_image_oci_dir  # noqa: E402

SEED = Path("/tmp/compose-env-bench-seed")
BENCH_MOUNT = "/bench"
SERVER_TAG, CLIENT_TAG = "bench/redis:7", "bench/tests:ci"
COMPOSE_FILE = f"""\
# The seed scenario: a redis server and a test client that talks to it.
services:
  redis:
    image: {SERVER_TAG}
  tests:
    image: {CLIENT_TAG}
    depends_on: [redis]
    environment:
      REDIS_HOST: redis
"""


@dataclass(frozen=True)
class Scenario:
    title: str
    #: The put's params (ours) and bench/dcind.sh's mode (theirs).
    params: dict[str, object]
    dcind_mode: str
    goal: float


OVERHEAD = Scenario(
    "Fixed overhead: no images, `docker compose ps`",
    {"compose_files": ["src/docker-compose.yml"], "command": ["ps"]},
    "ps",
    0.45,
)
SEED_SCENARIO = Scenario(
    "Seed scenario end to end",
    {
        "compose_files": ["src/docker-compose.yml"],
        "images": ["redis-image", "tests-image"],
        "command": ["run", "--rm", "tests"],
    },
    "seed",
    0.3,
)
PHASES = ("validate", "daemon", "load", "run", "teardown", "rest", "total")
#: The put's phase headers (`==> ...` in its log) → phase names.
PUT_PHASES = {
    "Checking the configuration": "validate",
    "Checking the compose project": "validate",  # compose config's answer, read after the daemon started
    "Starting the Docker daemon": "daemon",
    "Loading": "load",
    "Running docker compose": "run",
    "Tearing down": "teardown",
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")

OURS_READY = r"""
import io, json, os, time
from compose_env.config.model import Source
from compose_env.console import Console
from compose_env.engine.daemon import InnerDaemon
log = io.StringIO()
inner = InnerDaemon(Source(), Console(log))
os.sync()  # the previous run's writeback must not land in this one
started = time.monotonic()
engine = inner.prepare(0, loads_images=False).launch("/run/compose-env/docker-config")
ready = time.monotonic() - started
started = time.monotonic()
engine.stop(0)
detail = next((line.strip() for line in log.getvalue().splitlines() if "answered" in line), "")
print(json.dumps({"ready": ready, "stop": time.monotonic() - started, "detail": detail}))
"""

NAIVE_READY = r"""
import datetime, json, os, re, subprocess, time
log_path = "/tmp/naive-dockerd.log"
os.sync()  # the previous run's writeback must not land in this one
with open(log_path, "w") as log:
    wall, started = time.time(), time.monotonic()
    dockerd = subprocess.Popen(["dockerd", "--data-root=/scratch/docker"], stdout=log, stderr=log)
time.sleep(1)
while subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
    time.sleep(1)
detected = time.monotonic() - started
stamp = re.search(r'time="([^".]+)\.(\d{6})\d*Z" level=info msg="API listen on', open(log_path).read())
serving = datetime.datetime.fromisoformat(f"{stamp[1]}.{stamp[2]}+00:00").timestamp() - wall
dockerd.terminate()
dockerd.wait(20)
print(json.dumps({"ready": detected, "serving": serving}))
"""


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout.strip()


def seed_put_dir() -> Path:
    """Build the two images (cached by Docker) and lay them out as the earlier steps would."""
    base = os.environ.get("BASE_IMAGE", "debian:trixie-slim")
    images = ROOT / "bench" / "images"
    for target, tag in (("server", SERVER_TAG), ("client", CLIENT_TAG)):
        subprocess.run(
            ["docker", "build", "-q", "--build-arg", f"BASE_IMAGE={base}", "--target", target, "-t", tag, str(images)],
            check=True,
            capture_output=True,
        )
    key = docker("image", "inspect", "-f", "{{.Id}}", SERVER_TAG) + docker(
        "image", "inspect", "-f", "{{.Id}}", CLIENT_TAG
    )
    put = SEED / "put"
    if (SEED / "key").is_file() and (SEED / "key").read_text() == key:
        return put
    subprocess.run(["rm", "-rf", str(SEED)], check=True)
    (put / "src").mkdir(parents=True)
    (put / "src" / "docker-compose.yml").write_text(COMPOSE_FILE)
    with tempfile.TemporaryDirectory(dir="/tmp") as work:
        server = parts_from_docker(SERVER_TAG, Path(work) / "server")
        registry_image_oci_dir(server, put / "redis-image", "bench/redis", "7", SERVER_TAG)
        client = parts_from_docker(CLIENT_TAG, Path(work) / "client")
        docker_image_resource_dir(client, put / "tests-image", "bench/tests", "ci")
    (SEED / "key").write_text(key)
    return put


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def daemon_ready(image: str, runs: int) -> dict[str, list[float]]:
    """Each start in a fresh container, as a put gets: a daemon that ran before leaves iptables rules and a bridge
    behind."""
    results: dict[str, list[float]] = {"ours": [], "ours_stop": [], "naive": [], "naive_serving": []}
    for run in range(runs):
        numbers = {}
        for name, driver in (("ours", OURS_READY), ("naive", NAIVE_READY)):
            with Container(image) as container:
                outcome = container.exec(["python3", "-c", driver], workdir="/")
            if outcome.exit_code != 0:
                raise SystemExit(f"daemon bench run failed:\n{outcome.stderr[-3000:]}")
            numbers[name] = json.loads(outcome.stdout)
        results["ours"].append(numbers["ours"]["ready"])
        results["ours_stop"].append(numbers["ours"]["stop"])
        results["naive"].append(numbers["naive"]["ready"])
        results["naive_serving"].append(numbers["naive"]["serving"])
        print(
            f"  daemon run {run + 1}: ours {numbers['ours']['ready']:.3f}s, naive {numbers['naive']['ready']:.2f}s"
            f" (API up {numbers['naive']['serving']:.2f}s) | ours: {numbers['ours']['detail']}",
            file=sys.stderr,
        )
    return results


def put_phases(log: str) -> dict[str, float]:
    """Each phase's duration from a put's log: its `==> title` header, then `(1.23s)` when it ends."""
    phases: dict[str, float] = {}
    current: str | None = None
    for line in ANSI.sub("", log).splitlines():
        text = line.strip()
        if text.startswith("==> "):
            current = next((key for title, key in PUT_PHASES.items() if text[4:].startswith(title)), None)
        elif current and (ended := re.fullmatch(r"\((\d+\.\d+)s\)", text)):
            phases[current] = phases.get(current, 0.0) + float(ended[1])
            current = None
    return phases


def with_rest(wall: float, phases: dict[str, float]) -> dict[str, float]:
    return {**{name: phases.get(name, 0.0) for name in PHASES[:-2]}, "rest": wall - sum(phases.values()), "total": wall}


def run_ours(image: str, put: Path, scenario: Scenario) -> dict[str, float]:
    request = {"source": {}, "params": scenario.params}
    with Container(image, [(str(put), PUT_DIR, True)]) as container:
        outcome = container.exec(["/opt/resource/out", PUT_DIR], env=DEFAULT_BUILD_ENV, stdin=json.dumps(request))
    if outcome.exit_code != 0 or outcome.leftovers:
        raise SystemExit(
            f"our put failed (exit {outcome.exit_code}, left {outcome.leftovers}):\n{outcome.stderr[-3000:]}"
        )
    return with_rest(outcome.duration, put_phases(outcome.stderr))


def run_dcind(image: str, put: Path, scenario: Scenario) -> dict[str, float]:
    mounts = [(str(put), PUT_DIR, True), (str(ROOT / "bench"), BENCH_MOUNT, True)]
    with Container(image, mounts) as container:
        outcome = container.exec([f"{BENCH_MOUNT}/dcind.sh", PUT_DIR, scenario.dcind_mode])
    phases = json.loads(outcome.stdout.strip().splitlines()[-1]) if outcome.stdout.strip() else {}
    if outcome.exit_code != 0 or phases.get("exit_code") != 0:
        raise SystemExit(f"the dcind run failed (exit {outcome.exit_code}):\n{outcome.stderr[-3000:]}")
    load = phases["load_server"] + phases["load_client"]
    return with_rest(
        outcome.duration,
        {"daemon": phases["daemon"], "load": load, "run": phases["run"], "teardown": phases["teardown"]},
    )


def side_by_side(image: str, put: Path, scenario: Scenario, runs: int) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {"ours": [], "dcind": []}
    for run in range(runs):
        order = [("ours", run_ours), ("dcind", run_dcind)]
        for name, function in order if run % 2 == 0 else reversed(order):
            numbers = function(image, put, scenario)
            results[name].append(numbers)
            print(
                f"  {scenario.dcind_mode} run {run + 1} {name}: "
                + " ".join(f"{k}={v:.2f}s" for k, v in numbers.items()),
                file=sys.stderr,
            )
    return results


class LoadSampler:
    """The machine's 1-minute load average, sampled every few seconds while the bench runs."""

    def __init__(self, every: float = 5.0) -> None:
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(every,), daemon=True)
        self._thread.start()

    def _sample(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> str:
        self._stop.set()
        self._thread.join()
        low, middle, high = min(self.samples), median(self.samples), max(self.samples)
        return f"1-minute load average during the run: min {low:.1f}, median {middle:.1f}, max {high:.1f}"


def size_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def report(
    ready: dict[str, list[float]],
    results: dict[str, dict[str, list[dict[str, float]]]],
    put: Path,
    args: argparse.Namespace,
    load: str,
) -> str:
    lines = [
        f"machine: {platform.node()}, {os.cpu_count()} cores, {platform.release()}; {load};"
        f" image {args.image}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
    ]
    lines += daemon_table(ready) if ready["ours"] else []
    overhead, seed = results[OVERHEAD.dcind_mode], results[SEED_SCENARIO.dcind_mode]
    lines += [*scenario_table(OVERHEAD, overhead), ""] if overhead["ours"] else []
    if seed["ours"]:
        lines += [
            f"inputs: redis-image/ (registry-image oci tarball, gzip layers) {size_mib(put / 'redis-image'):.0f} MiB,"
            f" tests-image/ (docker-image save) {size_mib(put / 'tests-image'):.0f} MiB; command: run --rm tests",
            "",
        ]
        lines += [*scenario_table(SEED_SCENARIO, seed), ""]
    if overhead["ours"] or seed["ours"]:
        lines += [
            "(total: the wall time of the `docker exec` of each, in a fresh container; rest: total minus the phases)"
        ]
    return "\n".join(lines)


def daemon_table(ready: dict[str, list[float]]) -> list[str]:
    ours, naive = median(ready["ours"]), median(ready["naive"])
    listed = {name: " ".join(f"{v:.2f}" for v in values) for name, values in ready.items()}
    return [
        f"## Inner daemon ready ({len(ready['ours'])} runs each, alternating, fresh container per run)",
        "",
        "| | median | runs |",
        "|---|---|---|",
        f"| ours (containerd first, every choice explicit) | {ours:.3f} s | {listed['ours']} |",
        f"| naive dcind (managed containerd, 1 s polling) | {naive:.2f} s | {listed['naive']} |",
        f"| naive, API serving per its log (no polling loss) | {median(ready['naive_serving']):.2f} s | "
        f"{listed['naive_serving']} |",
        "",
        f"ratio ours/naive: {ours / naive:.2f}× (against the naive API-serving time: "
        f"{ours / median(ready['naive_serving']):.2f}×);"
        f" our stop: median {median(ready['ours_stop']):.3f} s",
        "",
    ]


def scenario_table(scenario: Scenario, results: dict[str, list[dict[str, float]]]) -> list[str]:
    """Medians of each phase, ours and dcind's, and their ratios; then every run's total."""
    medians = {
        name: {phase: median([run[phase] for run in runs]) for phase in PHASES} for name, runs in results.items()
    }
    ratio = medians["ours"]["total"] / medians["dcind"]["total"]
    met = "met" if ratio <= scenario.goal else "not met"
    lines = [
        f"## {scenario.title} ({len(results['ours'])} runs each, alternating, fresh container per run)",
        "",
        "| median | " + " | ".join(PHASES) + " |",
        "|---|" + "---|" * len(PHASES),
    ]
    for name in ("ours", "dcind"):
        lines.append(f"| {name} | " + " | ".join(f"{medians[name][phase]:.2f} s" for phase in PHASES) + " |")
    ratios = [
        f"{medians['ours'][p] / medians['dcind'][p]:.2f}×" if medians["dcind"][p] >= 0.005 else "" for p in PHASES
    ]
    lines.append("| ours/dcind | " + " | ".join(ratios) + " |")
    totals = {name: " ".join(f"{run['total']:.2f}" for run in runs) for name, runs in results.items()}
    lines += [
        "",
        f"ratio ours/dcind: **{ratio:.2f}×** (goal ≤ {scenario.goal}×: {met}); totals ours {totals['ours']}, dcind "
        f"{totals['dcind']}",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=os.environ.get("IMAGE", "compose-env:dev"))
    parser.add_argument("--daemon-runs", type=int, default=7, help="0 skips the daemon ready section")
    parser.add_argument("--overhead-runs", type=int, default=7, help="0 skips the fixed overhead section")
    parser.add_argument("--e2e-runs", type=int, default=3, help="0 skips the seed scenario section")
    args = parser.parse_args()
    started = time.monotonic()
    load = LoadSampler()
    print("preparing the seed inputs...", file=sys.stderr)
    put = seed_put_dir()
    print(f"daemon ready time, {args.daemon_runs} runs each...", file=sys.stderr)
    ready = daemon_ready(args.image, args.daemon_runs)
    results = {}
    for scenario, runs in ((OVERHEAD, args.overhead_runs), (SEED_SCENARIO, args.e2e_runs)):
        print(f"{scenario.title}, {runs} runs each...", file=sys.stderr)
        results[scenario.dcind_mode] = side_by_side(args.image, put, scenario, runs)
    text = report(ready, results, put, args, load.stop())
    print(text)
    print(f"(bench took {time.monotonic() - started:.0f}s)", file=sys.stderr)
    directory = ROOT / "bench" / "results"
    directory.mkdir(exist_ok=True)
    (directory / f"run-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(
        json.dumps(
            {"daemon_ready": ready, "scenarios": results, "load_samples": load.samples, "report": text}, indent=1
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
