"""Make the container's cgroups usable by a nested dockerd (v1 and v2).

Inside a privileged Concourse container the cgroup filesystem is often mounted
read-only, v1 hierarchies may be missing, and on v2 the root of our cgroup
namespace holds our own processes, which forbids enabling controllers for children.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .mounts import MountError, MountTracker, read_mountinfo, remount_read_write

CGROUP_ROOT = "/sys/fs/cgroup"


@dataclass(frozen=True)
class CgroupReport:
    version: int
    actions: tuple[str, ...]


def cgroup_version(root: str = CGROUP_ROOT) -> int:
    return 2 if os.path.exists(os.path.join(root, "cgroup.controllers")) else 1


def in_own_cgroup_namespace(proc_self_cgroup: str = "/proc/self/cgroup") -> bool:
    """On v2, `0::/` means we are at the root of our own cgroup namespace."""
    with open(proc_self_cgroup) as handle:
        lines = [line.strip() for line in handle if line.strip()]
    return lines == ["0::/"]


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def enable_v2_controllers(root: str, attempts: int = 50, write: Callable[[Path, str], None] = _write) -> list[str]:
    """The nesting dance of docker:dind: move our processes to `init`, then enable controllers.

    Only for the root of our own cgroup namespace, never for a host's root cgroup.
    Writing subtree_control fails with EBUSY while processes sit in the cgroup, and new
    processes may appear between the move and the write, so retry.
    """
    base = Path(root)
    init = base / "init"
    init.mkdir(exist_ok=True)
    controllers = (base / "cgroup.controllers").read_text().split()
    wanted = " ".join(f"+{c}" for c in controllers)
    moved = 0
    for _ in range(attempts):
        for pid in (base / "cgroup.procs").read_text().split():
            try:
                write(init / "cgroup.procs", pid)
                moved += 1
            except OSError:
                pass  # it exited meanwhile, or is a kernel thread we may not move
        try:
            if wanted:
                write(base / "cgroup.subtree_control", wanted)
            return [f"moved {moved} process{'es' if moved != 1 else ''} to {init}", f"enabled controllers: {' '.join(controllers) or 'none'}"]
        except OSError as error:
            if error.errno != errno.EBUSY:
                raise
            time.sleep(0.01)
    raise OSError(errno.EBUSY, f"{base}/cgroup.subtree_control stayed busy after {attempts} attempts")


def _mounted_v1_hierarchies(root: str) -> dict[str, tuple[str, bool]]:
    """subsystem/name → (mount point, read-only) for the v1 hierarchies mounted below `root`."""
    found: dict[str, tuple[str, bool]] = {}
    for info in read_mountinfo():
        if info.fstype == "cgroup" and info.mount_point.startswith(root + "/"):
            found[os.path.basename(info.mount_point)] = (info.mount_point, "ro" in info.options)
    return found


def _v1_groupings(proc_cgroups: str = "/proc/cgroups", proc_self_cgroup: str = "/proc/self/cgroup") -> list[str]:
    """Mount option sets for the enabled v1 subsystems, co-mounted ones together (`cpu,cpuacct`)."""
    with open(proc_self_cgroup) as handle:
        joined = [line.split(":")[1] for line in handle if line.count(":") >= 2 and line.split(":")[1]]
    groupings: list[str] = []
    with open(proc_cgroups) as handle:
        for line in handle:
            if line.startswith("#"):
                continue
            name, _hierarchy, _count, enabled = line.split()
            if enabled != "1":
                continue
            grouping = next((g for g in joined if name in g.split(",")), name)
            if grouping not in groupings:
                groupings.append(grouping)
    return groupings


def prepare_v1(root: str, tracker: MountTracker) -> list[str]:
    """Read-write cgroup tree with every enabled hierarchy, as docker-image-resource does."""
    actions = []
    root_info = next((m for m in read_mountinfo() if m.mount_point == root), None)
    if root_info is None:
        tracker.mount("cgroup", root, "tmpfs", 0, "mode=0755")
        actions.append(f"mounted a tmpfs at {root}")
    elif "ro" in root_info.options:
        remount_read_write(root)
        actions.append(f"remounted {root} read-write")
    mounted = _mounted_v1_hierarchies(root)
    for point, read_only in mounted.values():
        if read_only:
            remount_read_write(point)
            actions.append(f"remounted {os.path.basename(point)} read-write")
    for grouping in _v1_groupings():
        name = grouping.removeprefix("name=")
        target = os.path.join(root, name)
        if name in mounted:
            continue
        tracker.mount("cgroup", target, "cgroup", 0, grouping)
        actions.append(f"mounted {grouping} at {target}")
        for alias in grouping.split(","):
            link = os.path.join(root, alias)
            if alias != name and not os.path.exists(link):
                os.symlink(target, link)
    systemd = os.path.join(root, "systemd")
    if not os.path.exists(systemd):
        tracker.mount("cgroup", systemd, "cgroup", 0, "none,name=systemd")
        actions.append(f"mounted name=systemd at {systemd}")
    return actions


def prepare_v2(root: str, proc_self_cgroup: str = "/proc/self/cgroup", mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Writable cgroup2 root, and the nesting dance when (and only when) we own the namespace."""
    actions = []
    info = next((m for m in read_mountinfo(mountinfo) if m.mount_point == root), None)
    if info is not None and "ro" in info.options:
        remount_read_write(root)
        actions.append(f"remounted {root} read-write")
    if in_own_cgroup_namespace(proc_self_cgroup):
        actions += enable_v2_controllers(root)
    else:
        actions.append("not at the root of our own cgroup namespace: left the (host's) cgroup tree as it is")
    return actions


def unified_only(proc_self_cgroup: str = "/proc/self/cgroup") -> bool:
    """A cgroup v2-only host: our /proc/self/cgroup has the single `0::` line."""
    with open(proc_self_cgroup) as handle:
        lines = [line.strip() for line in handle if line.strip()]
    return len(lines) == 1 and lines[0].startswith("0::")


def prepare(tracker: MountTracker, root: str = CGROUP_ROOT) -> CgroupReport:
    try:
        if cgroup_version(root) == 2:
            return CgroupReport(2, tuple(prepare_v2(root)))
        if unified_only() and not any(m.mount_point == root for m in read_mountinfo()):
            tracker.mount("cgroup", root, "cgroup2")
            return CgroupReport(2, (f"mounted cgroup2 at {root}", *prepare_v2(root)))
        return CgroupReport(1, tuple(prepare_v1(root, tracker)))
    except (OSError, MountError) as error:
        raise OSError(error.errno, f"preparing cgroups: {error}") from error
