"""Where the inner daemon keeps its data, and which storage driver it gets.

Both are decided here, up front, with their reasons, instead of letting dockerd try
overlay2, fail, and fall back by itself (about 1 s lost, and a silent slow vfs).

The data root goes on a tmpfs when memory allows: loading images is dominated by
writing their layers, which a tmpfs does several times faster than a disk volume (the
measurement is in docs/performance.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from compose_env.engine.mounts import MountError, MountTracker, mount, mount_of, umount
from compose_env.errors import UserError

GIB = 1024**3
#: Room for containers' writable layers, volumes and logs beyond the images themselves.
CONTAINER_HEADROOM = GIB
#: Loaded layers plus the extraction that happens while loading: about 3× the images.
IMAGE_FACTOR = 3
#: What we leave to the processes (compose services) that will run next to the tmpfs.
MEMORY_RESERVE = GIB
#: cgroup v1 writes "no limit" as a number near 2**63.
UNLIMITED = 2**60
FUSE_DEVICE = "/dev/fuse"
FUSE_MAJOR, FUSE_MINOR = 10, 229


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes this container can still use, and which limit decided it."""

    available: int
    source: str


@dataclass(frozen=True)
class Placement:
    data_root: str
    medium: str  # memory or disk
    reason: str
    tmpfs_size: int = 0
    need: int = 0
    room: int | None = None

    @property
    def short_of_memory(self) -> bool:
        return self.medium == "memory" and self.room is not None and self.room < self.need

    def summary(self) -> str:
        """For the `dockerd` metadata: the medium and the numbers behind it."""
        if self.room is None:
            return self.medium
        return f"{self.medium} (need {self.need / GIB:.1f} GiB, {self.room / GIB:.1f} GiB free)"


@dataclass(frozen=True)
class DriverChoice:
    driver: str
    reason: str


# ---------------------------------------------------------------- memory


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return UNLIMITED
    try:
        return int(text)
    except ValueError:
        return None


def _stat_values(path: Path) -> dict[str, int]:
    values = {}
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                values[key] = int(value)
    except OSError:
        pass
    return values


def _own_cgroup_path(proc_self_cgroup: Path, controller: str) -> str:
    """Our path in the hierarchy of `controller` ("" for the v2 unified one)."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return "/"
    for line in lines:
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if (controller == "" and controllers == "") or controller in controllers.split(","):
            return path or "/"
    return "/"


def _candidate_dirs(mount_root: Path, own_path: str) -> list[Path]:
    """Our cgroup and its ancestors as seen below `mount_root`; the mount root itself when the path is not visible.

    Inside a container the mount usually shows our own cgroup as its root, while
    /proc/self/cgroup may still name the full host path.
    """
    inner = mount_root / own_path.strip("/")
    if own_path.strip("/") and inner.is_dir():
        chain = [inner, *inner.parents]
        return [d for d in chain if d == mount_root or mount_root in d.parents]
    return [mount_root]


def cgroup_memory_room(cgroup_root: Path, proc_self_cgroup: Path) -> MemoryBudget | None:
    """What our memory cgroup (v1 or v2, with its ancestors) still lets us use; None without a limit.

    Usage counts page cache, much of it reclaimable: inactive file pages are not counted,
    as `docker stats` does.
    """
    budgets = []
    if (cgroup_root / "cgroup.controllers").exists():
        for directory in _candidate_dirs(cgroup_root, _own_cgroup_path(proc_self_cgroup, "")):
            limit = _read_int(directory / "memory.max")
            if limit is None or limit >= UNLIMITED:
                continue
            usage = (_read_int(directory / "memory.current") or 0) - _stat_values(directory / "memory.stat").get(
                "inactive_file", 0
            )
            budgets.append(MemoryBudget(max(limit - max(usage, 0), 0), f"cgroup v2 memory.max ({limit / GIB:.1f} GiB)"))
    else:
        memory_root = cgroup_root / "memory"
        for directory in _candidate_dirs(memory_root, _own_cgroup_path(proc_self_cgroup, "memory")):
            stats = _stat_values(directory / "memory.stat")
            limits = [
                v
                for v in (_read_int(directory / "memory.limit_in_bytes"), stats.get("hierarchical_memory_limit"))
                if v is not None
            ]
            limit = min(limits, default=UNLIMITED)
            if limit >= UNLIMITED:
                continue
            usage = (_read_int(directory / "memory.usage_in_bytes") or 0) - stats.get("total_inactive_file", 0)
            budgets.append(
                MemoryBudget(max(limit - max(usage, 0), 0), f"cgroup v1 memory limit ({limit / GIB:.1f} GiB)")
            )
    return min(budgets, key=lambda b: b.available, default=None)


def memory_available(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> MemoryBudget:
    """The smaller of the machine's MemAvailable and what our memory cgroup still allows."""
    meminfo = {}
    for line in (proc / "meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.split():
            meminfo[key] = int(value.split()[0]) * 1024
    budget = MemoryBudget(meminfo.get("MemAvailable", meminfo.get("MemFree", 0)), "MemAvailable")
    limited = cgroup_memory_room(cgroup_root, proc / "self" / "cgroup")
    return limited if limited is not None and limited.available < budget.available else budget


def _hidden_entries(data_root: str) -> list[str]:
    try:
        return sorted(os.listdir(data_root))
    except OSError:
        return []


def choose_placement(medium: str, data_root: str, images_bytes: int, memory: MemoryBudget | None = None) -> Placement:
    """memory (a tmpfs at the data root) or disk, from source.dockerd.data_root_medium and the numbers.

    Needed: 3 × the images' unpacked size plus 1 GiB for containers; available: the
    smaller of MemAvailable and the memory cgroup's room, minus 1 GiB left to the services.
    """
    if medium == "disk":
        return Placement(data_root, "disk", "source.dockerd.data_root_medium is disk")
    hidden = _hidden_entries(data_root)
    if os.path.realpath(data_root) in ("/", "/tmp") or hidden:
        what = f"it already holds {', '.join(hidden[:3])}" if hidden else "it holds the put's inputs"
        if medium == "memory":
            raise UserError(
                "source.dockerd.data_root",
                f"{data_root} cannot be a tmpfs: {what}",
                "choose an empty or new directory, e.g. /scratch/docker",
            )
        return Placement(data_root, "disk", f"auto: a tmpfs would hide what is in {data_root} ({what})")
    need = IMAGE_FACTOR * images_bytes + CONTAINER_HEADROOM
    memory = memory or memory_available()
    room = memory.available - MEMORY_RESERVE
    numbers = f"need {need / GIB:.1f} GiB (3 × {images_bytes / GIB:.2f} GiB of images + 1 GiB)"
    numbers += f", {memory.source} leaves {room / GIB:.1f} GiB"
    if medium == "memory":
        shortfall = "; memory is short, the put may run out of it" if room < need else ""
        return Placement(
            data_root,
            "memory",
            f"source.dockerd.data_root_medium is memory; {numbers}{shortfall}",
            max(room, need),
            need,
            room,
        )
    if room >= need:
        return Placement(data_root, "memory", f"auto: {numbers}", room, need, room)
    return Placement(data_root, "disk", f"auto: not enough memory for a tmpfs, {numbers}", 0, need, room)


def mount_placement(placement: Placement, tracker: MountTracker) -> None:
    os.makedirs(placement.data_root, exist_ok=True)
    if placement.medium == "memory":
        tracker.mount("compose-env", placement.data_root, "tmpfs", 0, f"size={placement.tmpfs_size},mode=0711")


# ---------------------------------------------------------------- storage driver


@contextmanager
def _overlay_probe(directory: str, prefix: str) -> Iterator[tuple[str, str]]:
    """A scratch lower/upper/work/merged tree in `directory`: (merged dir, overlay options); removed after."""
    probe = tempfile.mkdtemp(prefix=prefix, dir=directory)
    try:
        for part in ("lower", "upper", "work", "merged"):
            os.mkdir(os.path.join(probe, part))
        yield f"{probe}/merged", f"lowerdir={probe}/lower,upperdir={probe}/upper,workdir={probe}/work"
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def overlay_works(directory: str) -> bool:
    """A real test mount of overlayfs in `directory`: the only reliable probe."""
    with _overlay_probe(directory, ".overlay-probe-") as (merged, options):
        try:
            mount("overlay", merged, "overlay", 0, options)
        except MountError:
            return False
        umount(merged)
        return True


def ensure_fuse_device() -> str:
    """/dev/fuse, created when a privileged container lacks the node; '' when it cannot exist."""
    if os.path.exists(FUSE_DEVICE):
        return "/dev/fuse is there"
    try:
        os.mknod(FUSE_DEVICE, 0o666 | 0o020000, os.makedev(FUSE_MAJOR, FUSE_MINOR))
    except OSError:
        return ""
    return "created /dev/fuse"


def fuse_overlay_works(directory: str) -> bool:
    """A real test mount with fuse-overlayfs (the binary and the device may exist and still fail)."""
    if shutil.which("fuse-overlayfs") is None:
        return False
    with _overlay_probe(directory, ".fuse-probe-") as (merged, options):
        try:
            result = subprocess.run(["fuse-overlayfs", "-o", options, merged], capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if result.returncode != 0:
            return False
        try:
            umount(merged)
        except MountError:
            umount(merged, lazy=True)
        return True


def choose_driver(requested: str, data_root: str) -> DriverChoice:
    """overlay2 if a test mount works on the data root, else fuse-overlayfs if its test mount works, else vfs."""
    filesystem = mount_of(data_root).fstype
    if requested != "auto":
        if requested == "fuse-overlayfs":
            ensure_fuse_device()
        return DriverChoice(requested, f"source.dockerd.storage_driver is {requested} (data root on {filesystem})")
    if overlay_works(data_root):
        return DriverChoice("overlay2", f"a test overlay mount on the data root ({filesystem}) worked")
    device = ensure_fuse_device()
    if device and fuse_overlay_works(data_root):
        return DriverChoice(
            "fuse-overlayfs",
            f"overlay cannot mount on the data root ({filesystem}); a fuse-overlayfs test mount worked ({device})",
        )
    return DriverChoice(
        "vfs",
        f"overlay cannot mount on the data root ({filesystem}) and fuse-overlayfs does not work here: vfs copies "
        "every layer and is slow;"
        " put source.dockerd.data_root on /scratch or use data_root_medium: memory",
    )
