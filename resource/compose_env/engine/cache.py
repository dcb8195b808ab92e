"""The task cache (`cache_dir`): the inner dockerd's data root kept between task runs.

Concourse keeps a task's `caches:` directories on the worker from one run to the next.
With `cache_dir` pointing at one, the data root lives there, on disk:

    <cache_dir>/docker                     the data root (images, BuildKit's cache, overlay2 layers)
    <cache_dir>/compose-env-cache.json     the marker: cache format, engine version, last use of each image
    <cache_dir>/.lock                      held (flock) for the whole run: two runs never share the cache

A cache written by another engine version, or one without a readable marker, is wiped with a
warning before dockerd starts; one dockerd refuses is wiped and the run tried again (`run.task`).
After the run, images no container of the run uses are pruned, oldest use first, until images
and build cache fit `cache_max_size`; then the build cache alone is cut if it still does not.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

from compose_env.console import Console
from compose_env.engine.mounts import MountError, read_mountinfo, umount
from compose_env.errors import RuntimeFailure, UserError

CACHE_FORMAT = 1
MARKER_FILE = "compose-env-cache.json"
LOCK_FILE = ".lock"
DATA_ROOT_DIR = "docker"
#: How often a run waiting for the lock tries again (a SIGTERM meanwhile aborts the wait).
LOCK_POLL_SECONDS = 0.5
SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_size(value: int | str, path: str) -> int:
    """Bytes from `10GiB`, `500MB`, `2G` or a number of bytes."""
    if isinstance(value, int):
        return value
    match = SIZE.match(value)
    if not match:
        raise UserError(path, f"{value!r} is not a size", 'use e.g. "10GiB", "500MiB", "20GB" or a number of bytes')
    unit = (match.group(2) or "").lower().removesuffix("b")
    return int(float(match.group(1)) * UNITS[unit])


def engine_version() -> str:
    """`dockerd --version` of this image: a cache made by another engine is not trusted."""
    try:
        return subprocess.run(["dockerd", "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


@dataclass(frozen=True)
class CacheConfig:
    path: Path
    max_size: int

    @property
    def data_root(self) -> Path:
        return self.path / DATA_ROOT_DIR


def _gib(size: float) -> str:
    return f"{size / 2**30:.2f} GiB"


class TaskCache:
    """One run's use of the cache: lock, check, record and prune."""

    def __init__(self, config: CacheConfig, console: Console, version: str | None = None) -> None:
        self.config = config
        self.console = console
        self.version = version if version is not None else engine_version()
        self.marker_path = config.path / MARKER_FILE
        self.last_used: dict[str, float] = {}

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The cache for this run alone; another run holding it is waited for, with a log line."""
        self.config.path.mkdir(parents=True, exist_ok=True)
        with open(self.config.path / LOCK_FILE, "a") as lock:
            started = time.monotonic()
            waiting = False
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waiting:
                        self.console.info(f"cache {self.config.path} is in use by another run: waiting for it")
                        waiting = True
                    time.sleep(LOCK_POLL_SECONDS)
            if waiting:
                self.console.info(f"cache {self.config.path}: ours after {time.monotonic() - started:.1f}s of waiting")
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def check(self) -> None:
        """Before dockerd starts: keep the cache if this engine wrote it, else wipe it with a warning."""
        marker = self._read_marker()
        holds = self.config.data_root.is_dir() and any(self.config.data_root.iterdir())
        if not holds:
            self.console.info(f"cache {self.config.path} is empty: this run fills it")
        elif marker is None:
            self.wipe("it has no readable compose-env marker")
        elif marker.get("format") != CACHE_FORMAT or marker.get("engine") != self.version:
            self.wipe(
                f"it was written by {marker.get('engine') or 'another engine'} (format {marker.get('format')}), this "
                f"is {self.version}"
            )
        else:
            self.last_used = {
                str(k): float(v) for k, v in (marker.get("last_used") or {}).items() if isinstance(v, (int, float))
            }
            self.console.info(
                f"cache {self.config.path}: kept from an earlier run ({len(self.last_used)} images recorded)"
            )
        self.write_marker()

    def wipe(self, why: str) -> None:
        self.console.warn(f"cache {self.config.path}: {why}: wiping it and starting afresh")
        self._unmount_data_root()
        shutil.rmtree(self.config.data_root, ignore_errors=True)
        if self.config.data_root.exists():
            raise RuntimeFailure(
                f"cannot wipe the cache {self.config.path}",
                "remove the task's cache (fly clear-task-cache) and run it again",
            )
        self.last_used = {}

    def _unmount_data_root(self) -> None:
        """A dockerd that failed to start leaves the data root bind-mounted on itself (and maybe more below it)."""
        root = str(self.config.data_root)
        points = [
            m.mount_point for m in read_mountinfo() if m.mount_point == root or m.mount_point.startswith(root + "/")
        ]
        for point in sorted(set(points), key=len, reverse=True):
            try:
                umount(point, lazy=True)
            except MountError:
                continue

    def _read_marker(self) -> dict[str, Any] | None:
        try:
            marker = json.loads(self.marker_path.read_text())
        except (OSError, ValueError):
            return None
        return marker if isinstance(marker, dict) else None

    def write_marker(self) -> None:
        document = {"format": CACHE_FORMAT, "engine": self.version, "last_used": self.last_used}
        self.config.path.mkdir(parents=True, exist_ok=True)
        temporary = self.marker_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(document, indent=1) + "\n")
        os.replace(temporary, self.marker_path)

    def after_run(self, client: docker.APIClient, project: str, service_images: Iterable[str]) -> None:
        """Record the images this run used, then prune the others beyond cache_max_size, oldest use first.

        Used: the images of the project's containers and those the started services name.
        """
        used = self._used_images(client, project, service_images)
        now = time.time()
        for image_id in used:
            self.last_used[image_id] = now
        try:
            self._prune(client, used)
        except docker.errors.APIError as error:
            self.console.warn(
                f"cache {self.config.path}: pruning failed ({error.explanation or error}); it is kept as it is"
            )
        self.write_marker()

    def _used_images(self, client: docker.APIClient, project: str, service_images: Iterable[str]) -> set[str]:
        used = {
            str(c.get("ImageID"))
            for c in client.containers(all=True, filters={"label": f"com.docker.compose.project={project}"})
            if c.get("ImageID")
        }
        for name in service_images:
            try:
                used.add(client.inspect_image(name)["Id"])
            except docker.errors.APIError:
                continue
        return used

    def _prune(self, client: docker.APIClient, used: set[str]) -> None:
        usage = client.df()
        images = usage.get("Images") or []
        build_cache = sum(int(entry.get("Size") or 0) for entry in usage.get("BuildCache") or [])
        layers = int(usage.get("LayersSize") or 0)
        limit = self.config.max_size
        self.last_used = {
            image_id: when for image_id, when in self.last_used.items() if any(i["Id"] == image_id for i in images)
        }
        if layers + build_cache <= limit:
            self.console.info(
                f"cache: {_gib(layers)} of images, {_gib(build_cache)} of build cache: within cache_max_size "
                f"({_gib(limit)})"
            )
            return
        candidates = [image for image in images if image["Id"] not in used and int(image.get("Containers") or 0) <= 0]
        candidates.sort(key=lambda image: self.last_used.get(image["Id"], float(image.get("Created") or 0)))
        removed: list[str] = []
        for image in candidates:
            if layers + build_cache <= limit:
                break
            client.remove_image(image["Id"], force=True)
            layers -= int(image.get("Size") or 0) - max(int(image.get("SharedSize") or 0), 0)
            self.last_used.pop(image["Id"], None)
            removed.append(next(iter(image.get("RepoTags") or []), image["Id"][:19]))
        if removed:
            self.console.info(
                f"cache: pruned {len(removed)} unused image{'s' if len(removed) > 1 else ''}, oldest use first: "
                f"{', '.join(removed)}"
            )
        if layers + build_cache > limit and build_cache:
            client.prune_builds(keep_storage=max(limit - layers, 0))
            self.console.info(f"cache: build cache cut to at most {_gib(max(limit - layers, 0))}")
        after = client.df()
        self.console.info(
            f"cache: {_gib(int(after.get('LayersSize') or 0))} of images after pruning (cache_max_size {_gib(limit)})"
        )
