"""The task cache (`cache_dir`) through the real image: runs in fresh containers sharing one cache directory.

As Concourse does with a task's `caches:`, each run gets a new container and the same cache
directory (bind-mounted here). The fixture is the reports project: its runner image is
loaded from a tarball, and its `built` service is built by compose from it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from harness import Container, RunOutcome

WORKDIR = "/tmp/build/task"
BUILT = re.compile(r"built at (\d+)")
#: Where direct writes stage layers until registered (store_format.PARTIAL_DIR), in the cache's data root.
STAGING = "docker/overlay2/compose-env-partial"
#: The test-only fault that holds each layer's extraction half-way, and the line it prints then
#: (compose_env/testing/store_faults.py).
HOLD_EXTRACTING = {"COMPOSE_ENV_TEST_STORE_FAULT": "hold-extracting"}
HELD_LINE = "COMPOSE_ENV_TEST_STORE_FAULT: a layer's extraction is held half-way"
REMOVED = re.compile(
    rf"data root {WORKDIR}/compose-env-cache/docker: removed (\d+) half-written layers? an interrupted run left "
    r"\([0-9.]+ MiB\)"
)


def task_mounts(put: Path, out: Path, cache: Path) -> list[tuple[str, str, bool]]:
    """The task's inputs, its output and its cache, where `fly execute` puts them."""
    return [
        (str(put / "code"), f"{WORKDIR}/code", True),
        (str(put / "runner"), f"{WORKDIR}/runner", True),
        (str(out), f"{WORKDIR}/compose-env-output", False),
        (str(cache), f"{WORKDIR}/compose-env-cache", False),
    ]


def cached_task(extra: dict | None = None) -> dict:
    """The task's COMPOSE_ENV: the reports project, with its runner image, on the cache."""
    return {
        "compose_files": ["code/docker-compose.yml"],
        "images": ["runner/image.tar"],
        "command": ["run", "--build", "--rm", "built"],
        "cache_dir": "compose-env-cache",
        **(extra or {}),
    }


def run_cached(image: str, put: Path, out: Path, cache: Path, extra: dict | None = None) -> tuple[RunOutcome, dict]:
    out.mkdir(exist_ok=True)
    cache.mkdir(exist_ok=True)
    compose_env = cached_task(extra)
    with Container(image, task_mounts(put, out, cache)) as container:
        outcome = container.exec(["/opt/resource/task"], env={"COMPOSE_ENV": json.dumps(compose_env)}, workdir=WORKDIR)
    report_file = out / "report.json"
    assert report_file.is_file(), outcome.stderr
    return outcome, json.loads(report_file.read_text())


def built_stamp(outcome: RunOutcome) -> str:
    match = BUILT.search(outcome.stderr)
    assert match, outcome.stderr
    return match.group(1)


def test_a_warm_cache_loads_nothing_keeps_build_layers_and_an_unusable_one_is_rebuilt(
    image: str, inputs: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"

    cold, cold_report = run_cached(image, inputs, tmp_path / "out1", cache)
    assert cold.exit_code == 0, cold.stderr
    assert cold.leftovers == []
    assert "is empty: this run fills it" in cold.stderr
    assert "already in the cache" not in cold.stderr
    stamp = built_stamp(cold)
    marker = json.loads((cache / "compose-env-cache.json").read_text())
    assert marker["format"] == 1 and marker["engine"].startswith("Docker version")

    warm, warm_report = run_cached(image, inputs, tmp_path / "out2", cache)
    assert warm.exit_code == 0, warm.stderr
    assert warm.leftovers == []
    assert "kept from an earlier run" in warm.stderr
    assert "already in the cache → compose-env-test/pytest:ci" in warm.stderr
    assert "streamed in" not in warm.stderr and "written into the overlay2 store" not in warm.stderr
    assert built_stamp(warm) == stamp  # the RUN step came from BuildKit's cache
    assert warm_report["timings"]["load"] < cold_report["timings"]["load"]
    print(f"\ncold load {cold_report['timings']['load']}s, warm load {warm_report['timings']['load']}s")

    # Another engine version wrote it: wiped with a warning, rebuilt, and the task passes.
    marker["engine"] = "Docker version 1.0.0, build 0000000"
    (cache / "compose-env-cache.json").write_text(json.dumps(marker))
    other, _ = run_cached(image, inputs, tmp_path / "out3", cache)
    assert other.exit_code == 0, other.stderr
    assert "written by Docker version 1.0.0" in other.stderr and "wiping it and starting afresh" in other.stderr
    assert "already in the cache" not in other.stderr
    assert built_stamp(other) != stamp

    # Truncated files in the data root: dockerd refuses it, or loses the images; either way the run rebuilds.
    image_store = cache / "docker" / "image" / "overlay2"
    for path in [image_store / "repositories.json", *(image_store / "imagedb" / "content" / "sha256").iterdir()]:
        path.write_bytes(path.read_bytes()[:10])
    truncated, _ = run_cached(image, inputs, tmp_path / "out4", cache)
    assert truncated.exit_code == 0, truncated.stderr
    assert truncated.leftovers == []
    assert "wiping it and starting afresh" in truncated.stderr or "does not list" in truncated.stderr
    assert "already in the cache" not in truncated.stderr


def test_unused_images_beyond_cache_max_size_are_pruned_oldest_use_first(
    image: str, inputs: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first, _ = run_cached(image, inputs, tmp_path / "out1", cache)
    assert first.exit_code == 0, first.stderr
    assert "within cache_max_size (10.00 GiB)" in first.stderr

    # `run --rm built` uses only the built image: the runner image it was built from goes.
    pruned, report = run_cached(image, inputs, tmp_path / "out2", cache, {"cache_max_size": "1MiB"})
    assert pruned.exit_code == 0, pruned.stderr
    assert "pruned 1 unused image, oldest use first: compose-env-test/pytest:ci" in pruned.stderr
    assert "cache" in report["timings"]


KILL_THE_TASK = """
import os, signal
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        cmdline = open(f'/proc/{pid}/cmdline', 'rb').read()
    except OSError:
        continue
    if b'/opt/resource/task' in cmdline and b'python3\\0-c' not in cmdline:
        os.kill(int(pid), signal.SIGKILL)
        print(pid)
"""

STICKY_SERVICE = """
services:
  sticky:
    image: compose-env-test/pytest:ci
    restart: always
    volumes: [sticky-data:/data]
    command: ["sh", "-c", "echo sticky-up; sleep 300"]
volumes:
  sticky-data:
"""


@pytest.mark.parametrize("ending", ["SIGKILL", "SIGTERM"])
def test_what_a_killed_run_left_in_the_cache_is_removed_before_the_next_run_starts_and_an_abort_leaves_nothing(
    image: str, inputs: Path, tmp_path: Path, ending: str
) -> None:
    """What a run left in the cache, cleared by the next run before anything starts.

    SIGKILL (Concourse's, 10 s after an abort) leaves no teardown at all. An abort (SIGTERM)
    spends no time on `compose down`: the API removes the containers, volumes and networks at once.
    """
    cache = tmp_path / "cache"
    cache.mkdir()
    (inputs / "code" / "sticky.yml").write_text(STICKY_SERVICE)
    compose_env = {
        "compose_files": ["code/docker-compose.yml", "code/sticky.yml"],
        "images": ["runner/image.tar"],
        "command": ["up", "sticky"],
        "cache_dir": "compose-env-cache",
    }
    out = tmp_path / "out-killed"
    out.mkdir()
    with Container(image, task_mounts(inputs, out, cache)) as container:
        killed: list[str] = []
        outcome = container.exec(
            ["/opt/resource/task"],
            env={"COMPOSE_ENV": json.dumps(compose_env)},
            workdir=WORKDIR,
            at_line={"sticky-up": lambda: killed.extend(container.probe(KILL_THE_TASK))} if ending == "SIGKILL" else {},
            sigterm_when="sticky-up" if ending == "SIGTERM" else None,
        )
    if ending == "SIGKILL":
        assert killed, outcome.stderr
        assert outcome.exit_code != 0
    else:
        assert outcome.exit_code == 143, outcome.stderr
        assert "compose down" not in outcome.stderr
        assert outcome.signal_to_exit is not None and outcome.signal_to_exit < 5, outcome.signal_to_exit
        assert outcome.leftovers == []

    after, _ = run_cached(image, inputs, tmp_path / "out-after", cache)
    assert after.exit_code == 0, after.stderr
    cleared = [line for line in after.stderr.splitlines() if "held what an earlier run left: removed" in line]
    if ending == "SIGKILL":
        assert len(cleared) == 1, after.stderr
        assert "-sticky-1" in cleared[0] and "sticky-data" in cleared[0] and "_default" in cleared[0], cleared
    else:  # the abort removed them all itself, through the API
        assert cleared == [], cleared
    assert "could not remove" not in after.stderr
    assert after.leftovers == []


def test_layers_a_killed_direct_write_left_half_written_are_removed_before_the_next_run_writes(
    image: str, inputs: Path, tmp_path: Path
) -> None:
    """SIGKILL while the runner image's layers are extracted into the cache: the next run removes them first, and
    passes."""
    cache = tmp_path / "cache"
    cache.mkdir()
    out = tmp_path / "out-killed"
    out.mkdir()
    with Container(image, task_mounts(inputs, out, cache)) as container:
        killed: list[str] = []
        outcome = container.exec(
            ["/opt/resource/task"],
            env={"COMPOSE_ENV": json.dumps(cached_task()), **HOLD_EXTRACTING},
            workdir=WORKDIR,
            at_line={HELD_LINE: lambda: killed.extend(container.probe(KILL_THE_TASK))},
        )
    assert killed, outcome.stderr
    staging = cache / STAGING
    half_written = sorted(path.name for path in staging.iterdir())
    assert half_written, outcome.stderr
    assert list((cache / "docker" / "image" / "overlay2" / "layerdb" / "sha256").iterdir()) == []

    after, _ = run_cached(image, inputs, tmp_path / "out-after", cache)
    assert after.exit_code == 0, after.stderr
    assert after.leftovers == []
    removed = [line for line in after.stderr.splitlines() if "half-written layer" in line]
    assert len(removed) == 1, after.stderr
    match = REMOVED.search(removed[0])
    assert match and int(match.group(1)) == len(half_written), removed[0]
    print(f"\n{removed[0].strip()}")
    assert after.stderr.index("half-written layer") < after.stderr.index("written into the overlay2 store")
    assert not staging.exists()
    assert not any((cache / "docker" / "overlay2" / name).exists() for name in half_written)
