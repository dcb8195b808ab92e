"""Image loading: ours against the naive `docker load -i` loop, and our memory on a 1 GiB tarball.

One run, inside one resource container (the real image, started like Concourse does):
1. the three-shape bench set (registry-image `format: oci` dir with gzip layers, docker-image
   `save: true` dir, oci-build-task output), about 3 × 256 MiB of incompressible layers, loaded
   by our planner and loader (1, 2 and 3 loads at once; LOAD_CONCURRENCY is the one a put uses), then by
   `docker load -i` + `docker tag` per image through the CLI, in alternating order, twice;
2. a 1 GiB docker-save tarball loaded by a fresh Python process running our loader, whose
   peak RSS (VmHWM in /proc/self/status) is read when it finishes; then by the CLI.
The inner daemon is our own (compose_env.engine.daemon), its data root chosen as a put would.

    python3 bench/bench_images.py [--image compose-env:dev] [--layer-mib 64] [--big-mib 1024]

The inputs are cached in /tmp/compose-env-bench-images (delete it to rebuild).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

sys.path.insert(0, str(ROOT / "resource"))

from compose_env.images.load import LOAD_CONCURRENCY  # noqa: E402
from harness import PUT_DIR, Container  # noqa: E402
from image_fixtures import docker_save_tarball, random_image  # noqa: E402
from producers import docker_image_resource_dir, oci_build_task_dir, registry_image_oci_dir  # noqa: E402

CACHE = Path("/tmp/compose-env-bench-images")
#: `params.images` for the three-shape set, and the naive equivalent: (file, names to tag).
BENCH_SET = [
    {"path": "redis-image", "tag": []},
    {"path": "saved-image", "tag": []},
    {"path": "built", "tag": ["bench/built:ci"]},
]
NAIVE_SET = [
    ("redis-image/image.tar", []),
    ("saved-image/image", ["bench/saved:ci"]),
    ("built/image/image.tar", ["bench/built:ci"]),
]
BIG = {"path": "big/big.tar", "tag": []}

# Runs inside the resource container (python3.13 with the package installed).
DRIVER = r"""
import json, os, re, subprocess, sys, time
from pathlib import Path
from compose_env.images import load as images
from compose_env.images.plan import plan_images
from compose_env.config.model import DockerdOptions, ImageEntry, Source
from compose_env.console import Console
from compose_env.engine.daemon import InnerDaemon

PUT = Path(sys.argv[1])
spec = json.loads(sys.argv[2])
console = Console()
inner = InnerDaemon(Source(dockerd=DockerdOptions(data_root_medium=spec["medium"])), console)
engine = inner.prepare(spec["bytes"], loads_images=False).launch("/run/compose-env/docker-config")
handle = engine.handle
env = {**os.environ, **handle.env}
quiet = Console(open(os.devnull, "w"))

def entries(items):
    return tuple(ImageEntry(i, PUT / e["path"], e["path"], tuple(e["tag"])) for i, e in enumerate(items))

def wipe():
    for image in handle.client.images(quiet=True):
        handle.client.remove_image(image, force=True)

def ours(items, concurrency):
    started = time.monotonic()
    images.load_images(plan_images(entries(items)), handle.client, handle.load_client, quiet, concurrency)
    return time.monotonic() - started

def naive(steps):
    started = time.monotonic()
    for path, names in steps:
        load = ["docker", "load", "-i", str(PUT / path)]
        out = subprocess.run(load, env=env, check=True, capture_output=True, text=True).stdout
        loaded = re.findall(r"Loaded image(?: ID)?: (\S+)", out)
        for name in names:
            subprocess.run(["docker", "tag", loaded[0], name], env=env, check=True, capture_output=True)
    return time.monotonic() - started

variants = ["naive"] + [f"ours@{n}" for n in spec["concurrency"]]
results = {name: [] for name in variants}
try:
    for round_ in range(spec["rounds"]):
        for name in (variants if round_ % 2 == 0 else variants[::-1]):
            if name == "naive":
                results[name].append(naive(spec["naive"]))
            else:
                results[name].append(ours(spec["set"], int(name.split("@")[1])))
            wipe()
    # The 1 GiB tarball in a fresh process: its VmHWM is the peak RSS of loading alone.
    probe = '''
import json, os, re, sys, time
from pathlib import Path
import docker
from compose_env.images import load as images
from compose_env.images.plan import plan_images
from compose_env.config.model import ImageEntry
from compose_env.console import Console
def hwm():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
before = hwm()
client = docker.APIClient(base_url=sys.argv[1], version="auto", timeout=60)
load_client = docker.APIClient(base_url=sys.argv[1], version=client.api_version, timeout=None)
started = time.monotonic()
plans = plan_images((ImageEntry(0, Path(sys.argv[2]), "big.tar", ()),))
images.load_images(plans, client, load_client, Console(open(os.devnull, "w")))
print(json.dumps({"seconds": time.monotonic() - started, "hwm_kb": hwm(), "before_kb": before, "bytes": plans[0].size}))
'''
    results["big"], results["big_naive"] = [], []
    for round_ in range(spec["rounds"]):
        for name in (["ours", "naive"] if round_ % 2 == 0 else ["naive", "ours"]):
            if name == "ours":
                argv = ["python3", "-c", probe, handle.docker_host, str(PUT / spec["big"]["path"])]
                big = subprocess.run(argv, check=True, capture_output=True, text=True)
                results["big"].append(json.loads(big.stdout))
            else:
                results["big_naive"].append(naive([(spec["big"]["path"], [])]))
            wipe()
finally:
    engine.stop(0)
print("BENCH " + json.dumps(results))
"""


def build_inputs(layer_mib: int, big_mib: int) -> int:
    """The bench set and the big tarball in CACHE (built once); returns their total size."""
    marker = CACHE / f"ready-{layer_mib}-{big_mib}"
    if not marker.exists():
        shutil.rmtree(CACHE, ignore_errors=True)
        CACHE.mkdir(parents=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
            work = Path(scratch)
            sizes = [layer_mib << 20] * 4
            registry_image_oci_dir(
                random_image(work / "a", sizes),
                CACHE / "redis-image",
                "bench/redis",
                "7",
                "index.docker.io/bench/redis:7",
            )
            docker_image_resource_dir(random_image(work / "b", sizes), CACHE / "saved-image", "bench/saved", "ci")
            oci_build_task_dir(random_image(work / "c", sizes), CACHE / "built" / "image")
            docker_save_tarball(
                random_image(work / "d", [big_mib << 20 >> 2] * 4), CACHE / "big" / "big.tar", ["bench/big:1"]
            )
        marker.touch()
    return sum(path.stat().st_size for path in CACHE.rglob("*") if path.is_file())


def _all(seconds: list[float]) -> str:
    return " ".join(f"{value:.2f}" for value in seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=os.environ.get("IMAGE", "compose-env:dev"))
    parser.add_argument("--layer-mib", type=int, default=64, help="each of the 4 layers of each bench-set image")
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the big tarball")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant, in alternating order")
    parser.add_argument("--concurrency", default="1,2,3", help="the numbers of parallel loads to try")
    parser.add_argument(
        "--medium", default="auto", choices=["auto", "memory", "disk"], help="the inner daemon's data root medium"
    )
    args = parser.parse_args()

    total = build_inputs(args.layer_mib, args.big_mib)
    concurrency = [int(n) for n in args.concurrency.split(",")]
    spec = {
        "set": BENCH_SET,
        "naive": NAIVE_SET,
        "big": BIG,
        "rounds": args.rounds,
        "bytes": 2 * total,
        "concurrency": concurrency,
        "medium": args.medium,
    }
    with Container(args.image, [(str(CACHE), PUT_DIR, True)]) as container:
        outcome = container.exec(["python3", "-c", DRIVER, PUT_DIR, json.dumps(spec)], timeout=1800)
    line = next((line for line in outcome.stdout.splitlines() if line.startswith("BENCH ")), None)
    if outcome.exit_code != 0 or line is None:
        sys.stderr.write(outcome.stderr[-4000:])
        return 1
    results = json.loads(line[len("BENCH ") :])
    set_mib = (
        sum(
            p.stat().st_size
            for name in ("redis-image", "saved-image", "built")
            for p in (CACHE / name).rglob("*")
            if p.is_file()
        )
        / 2**20
    )
    naive = min(results["naive"])
    ours = min(results[f"ours@{LOAD_CONCURRENCY}"]) if f"ours@{LOAD_CONCURRENCY}" in results else None
    big = min(results["big"], key=lambda run: run["seconds"])
    big_naive = min(results["big_naive"])
    print(f"three-shape set ({set_mib:.0f} MiB on disk), data root medium {args.medium}, best of {args.rounds}:")
    print(f"  docker load -i + docker tag, in turn   {naive:6.2f}s   all: {_all(results['naive'])}")
    for n in concurrency:
        runs = results[f"ours@{n}"]
        mark = "  <- LOAD_CONCURRENCY" if n == LOAD_CONCURRENCY else ""
        print(
            f"  ours, {n} at once                      {min(runs):6.2f}s   all: {_all(runs)}   ratio to naive "
            f"{min(runs) / naive:.2f}{mark}"
        )
    if ours is not None:
        print(f"  ratio ours (LOAD_CONCURRENCY={LOAD_CONCURRENCY}) / naive: {ours / naive:.2f}")
    print(f"big tarball ({big['bytes'] / 2**20:.0f} MiB), best of {args.rounds}:")
    print(f"  ours {big['seconds']:6.2f}s   all: {_all([run['seconds'] for run in results['big']])}")
    print(f"  docker load -i {big_naive:6.2f}s   all: {_all(results['big_naive'])}")
    print(f"  ratio ours/naive: {big['seconds'] / big_naive:.2f}")
    peak = max(run["hwm_kb"] for run in results["big"]) / 1024
    print(
        f"  peak RSS of our loading process: {peak:.1f} MiB (after imports, before loading: "
        f"{big['before_kb'] / 1024:.1f} MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
