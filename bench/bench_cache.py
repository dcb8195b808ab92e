"""The task cache: a task run on a warm cache against the first run that filled it.

Each round takes a new, empty cache directory and runs the seed scenario (bench/run.py's: a
redis server from a registry-image `format: oci` tarball, a test client from a docker-image
`save: true` tarball, `docker compose run --rm tests`) twice as a task with `cache_dir`, each
run in a fresh resource container with the same cache directory mounted, as Concourse does
with a task's `caches:`. The first run loads both images; the second finds them in the cache.

    python3 bench/bench_cache.py [--image compose-env:dev] [--rounds 3]

Results also go to bench/results/ as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness import Container  # noqa: E402
from run import seed_put_dir  # noqa: E402

WORKDIR = "/tmp/build/task"
COMPOSE_ENV = {
    "compose_files": ["src/docker-compose.yml"],
    "images": ["redis-image", "tests-image"],
    "command": ["run", "--rm", "tests"],
    "cache_dir": "compose-env-cache",
}


def task_run(image: str, put: Path, cache: Path, out: Path) -> dict[str, float]:
    """One task run in a fresh container: its wall time and report.json's timings."""
    out.mkdir()
    mounts = [(str(put / name), f"{WORKDIR}/{name}", True) for name in ("src", "redis-image", "tests-image")]
    mounts += [(str(out), f"{WORKDIR}/compose-env-output", False), (str(cache), f"{WORKDIR}/compose-env-cache", False)]
    with Container(image, mounts) as container:
        outcome = container.exec(["/opt/resource/task"], env={"COMPOSE_ENV": json.dumps(COMPOSE_ENV)}, workdir=WORKDIR)
    if outcome.exit_code != 0:
        raise SystemExit(f"the task failed (exit {outcome.exit_code}):\n{outcome.stderr[-3000:]}")
    timings = json.loads((out / "report.json").read_text())["timings"]
    return {
        "wall": round(outcome.duration, 3),
        **{name: timings.get(name, 0.0) for name in ("daemon", "load", "run", "cache", "teardown")},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=os.environ.get("IMAGE", "compose-env:dev"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("preparing the seed inputs...", file=sys.stderr)
    put = seed_put_dir()
    runs: dict[str, list[dict[str, float]]] = {"cold": [], "warm": []}
    for number in range(args.rounds):
        work = Path(tempfile.mkdtemp(prefix="compose-env-bench-cache-", dir="/tmp"))
        try:
            (work / "cache").mkdir()
            for kind in ("cold", "warm"):
                runs[kind].append(task_run(args.image, put, work / "cache", work / f"out-{kind}"))
                print(f"round {number + 1}: {kind} {runs[kind][-1]}", file=sys.stderr)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    medians = {
        kind: {key: statistics.median(run[key] for run in values) for key in values[0]} for kind, values in runs.items()
    }
    lines = [
        f"task cache, seed scenario (redis + test client, run --rm tests), {args.rounds} rounds, medians:",
        f"  {'':<6} {'wall':>7} {'daemon':>7} {'load':>7} {'run':>7} {'cache':>7} {'teardown':>8}",
    ]
    for kind in ("cold", "warm"):
        m = medians[kind]
        lines.append(
            f"  {kind:<6} {m['wall']:>6.2f}s {m['daemon']:>6.2f}s {m['load']:>6.2f}s {m['run']:>6.2f}s "
            f"{m['cache']:>6.2f}s {m['teardown']:>7.2f}s"
        )
    ratio = medians["warm"]["wall"] / medians["cold"]["wall"]
    cold, warm = medians["cold"], medians["warm"]
    lines.append(
        f"  warm/cold wall time: {ratio:.2f} ({cold['wall'] / warm['wall']:.1f}x faster); load {cold['load']:.2f}s → "
        f"{warm['load']:.2f}s"
    )
    text = "\n".join(lines)
    print(text)
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / f"cache-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(
        json.dumps({"runs": runs, "medians": medians, "report": text}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
