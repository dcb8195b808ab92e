"""Where the inner daemon keeps its data, and which storage driver it gets.

Both are decided here, up front, with their reasons, instead of letting dockerd try
overlay2, fail, and fall back by itself (about 1 s lost, and a silent slow vfs).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .mounts import MountError, MountTracker, mount, mount_of, umount

GIB = 1024**3
MIB = 1024**2
#: Room for containers' writable layers, volumes and logs beyond the images themselves.
CONTAINER_HEADROOM = GIB
#: Loaded layers plus the extraction that happens while loading: about 3× the images.
IMAGE_FACTOR = 3
#: What we leave to the processes (compose services) that will run next to the tmpfs.
MEMORY_RESERVE = GIB


@dataclass(frozen=True)
class MemoryBudget:
    available: int
    source: str


@dataclass(frozen=True)
class Placement:
    data_root: str
    medium: str  # memory or disk
    reason: str
    tmpfs_size: int = 0


@dataclass(frozen=True)
class DriverChoice:
    driver: str
    reason: str


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return None if text in ("", "max") else int(text)


def memory_available(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> MemoryBudget:
    """The smaller of the machine's MemAvailable and what our memory cgroup still allows."""
    meminfo = {}
    for line in (proc / "meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        meminfo[key] = int(value.split()[0]) * 1024
    budget = MemoryBudget(meminfo.get("MemAvailable", meminfo.get("MemFree", 0)), "MemAvailable")
    limits = [
        (cgroup_root / "memory.max", cgroup_root / "memory.current", "cgroup v2 memory.max"),
        (cgroup_root / "memory" / "memory.limit_in_bytes", cgroup_root / "memory" / "memory.usage_in_bytes", "cgroup v1 memory limit"),
    ]
    for limit_file, usage_file, label in limits:
        limit = _read_int(limit_file)
        # v1 reports "no limit" as a huge number near 2**63.
        if limit is None or limit >= 2**60:
            continue
        usage = _read_int(usage_file) or 0
        if limit - usage < budget.available:
            budget = MemoryBudget(max(limit - usage, 0), label)
    return budget


def choose_placement(medium: str, data_root: str, images_bytes: int, memory: MemoryBudget | None) -> Placement:
    """memory (a tmpfs below the data root's parent) or disk, from the option and the numbers."""
    need = IMAGE_FACTOR * images_bytes + CONTAINER_HEADROOM
    if medium == "disk":
        return Placement(data_root, "disk", "source.dockerd.data_root_medium is disk")
    if memory is None:
        memory = memory_available()
    room = memory.available - MEMORY_RESERVE
    numbers = f"need {need / GIB:.1f} GiB (3 × {images_bytes / GIB:.2f} GiB of images + 1 GiB), {memory.source} leaves {room / GIB:.1f} GiB"
    if medium == "memory":
        size = max(room, need)
        return Placement(data_root, "memory", f"source.dockerd.data_root_medium is memory; {numbers}", size)
    if room >= need:
        return Placement(data_root, "memory", f"auto: {numbers}", room)
    return Placement(data_root, "disk", f"auto: not enough memory, {numbers}")


def mount_placement(placement: Placement, tracker: MountTracker) -> None:
    os.makedirs(placement.data_root, exist_ok=True)
    if placement.medium == "memory":
        tracker.mount("compose-env", placement.data_root, "tmpfs", 0, f"size={placement.tmpfs_size},mode=0711")


def overlay_works(directory: str) -> bool:
    """A real test mount of overlayfs in `directory`: the only reliable probe."""
    probe = tempfile.mkdtemp(prefix=".overlay-probe-", dir=directory)
    try:
        for part in ("lower", "upper", "work", "merged"):
            os.mkdir(os.path.join(probe, part))
        options = f"lowerdir={probe}/lower,upperdir={probe}/upper,workdir={probe}/work"
        try:
            mount("overlay", f"{probe}/merged", "overlay", 0, options)
        except MountError:
            return False
        umount(f"{probe}/merged")
        return True
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def fuse_overlayfs_available() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fuse-overlayfs") is not None


def choose_driver(requested: str, data_root: str) -> DriverChoice:
    filesystem = mount_of(data_root).fstype
    if requested != "auto":
        return DriverChoice(requested, f"source.dockerd.storage_driver is {requested} (data root on {filesystem})")
    if overlay_works(data_root):
        return DriverChoice("overlay2", f"a test overlay mount on the data root ({filesystem}) worked")
    if fuse_overlayfs_available():
        return DriverChoice("fuse-overlayfs", f"overlay cannot mount on the data root ({filesystem}); /dev/fuse is there")
    return DriverChoice("vfs", f"overlay cannot mount on the data root ({filesystem}) and fuse-overlayfs is unavailable: vfs copies every layer and is slow")
