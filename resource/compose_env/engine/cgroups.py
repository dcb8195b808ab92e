"""Place the inner dockerd's containers inside this container's own cgroup (v1 and v2), and sweep them out.

A worker's privileged container has no cgroup namespace: `/proc/self/cgroup` names host
paths, and `/sys/fs/cgroup` shows the container's own cgroup of each v1 hierarchy
(Concourse's containerd runtime), the host's whole v2 tree (the same on cgroup v2), or
nothing at all (Guardian). A dockerd left to that view puts its containers at the host's
`/docker/<id>`: outside the container's limits, out of reach of the worker's abort, and
leaked after it. So, unless it already is at the root of a cgroup namespace of its own, the
put enters a new cgroup namespace rooted at its own cgroup and mounts the cgroup filesystems
afresh at `/sys/fs/cgroup`: they show that cgroup as their root, whatever the runtime mounted.
dockerd gets the absolute `--cgroup-parent` CGROUP_PARENT, which then lands below the
container's own cgroup in every hierarchy; nothing above it is ever written to.

On v2 the own cgroup holds our processes, which forbids enabling controllers for children:
they move to a leaf (`init`) first, as docker:dind does. On v1 the worker's devices cgroup
allows a handful of devices (no `/dev/console`), and the inner containers, its children,
can be given no more: it is widened to every device when its parent allows that.

At teardown, `CgroupPlacement.sweep` hands the cgroups the put caused (`ours`) to
`engine.cgroup_sweep`, which kills what is left in them and removes them; it needs no dockerd.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from compose_env.engine.cgroup_sweep import SWEEP_SECONDS, sweep_cgroups
from compose_env.engine.mounts import MountError, MountTracker, read_mountinfo, remount_read_write
from compose_env.process import libc

CGROUP_ROOT = "/sys/fs/cgroup"
#: dockerd's --cgroup-parent: absolute, so inside our namespace it is below our own cgroup.
CGROUP_PARENT = "/compose-env"
CLONE_NEWCGROUP = 0x02000000
#: The inode of the host's initial cgroup namespace (PROC_CGROUP_INIT_INO).
INITIAL_CGROUP_NAMESPACE_INODE = 0xEFFFFFFB
#: The v2 leaf our own processes move to (docker:dind's name for it).
V2_LEAF = "init"
# v1 hierarchies left out when this process entered its own cgroup namespace. Inside it every
# path reads "/", so a second placement in the same process (the task retrying on a fresh
# cache) cannot tell them again: the namespace, and so this, is per process.
_left_out_on_entry: frozenset[str] = frozenset()

WORKER_HINT = (
    "a Concourse worker gives a privileged container its own cgroup: use the containerd runtime"
    " (CONCOURSE_RUNTIME=containerd; cgroup v2 works there) or Guardian on cgroup v1, and do not restrict the "
    "worker's own cgroup"
)
DEVICES_HINT = (
    "the worker's devices cgroup does not let this container widen its own: allow the devices on the worker"
    " (containerd runtime: --containerd-allowed-device / CONCOURSE_CONTAINERD_ALLOWED_DEVICE, e.g. `c 5:1 rwm` for "
    "/dev/console),"
    " or run the worker on cgroup v2, which has no devices cgroup to inherit"
)


class PlacementError(Exception):
    """The inner containers cannot be placed below our own cgroup."""


@dataclass
class CgroupPlacement:
    """Where the inner containers go, what was done for it, and how to sweep them out at the end."""

    version: int
    own: str
    actions: list[str]
    #: The mounted hierarchies (one per v1 hierarchy, or the v2 root) the parent is made below.
    roots: list[str] = field(default_factory=list)
    #: dockerd's --cgroup-parent, absolute inside our namespace.
    parent: str = CGROUP_PARENT

    def summary(self) -> str:
        return f"cgroup v{self.version}: " + "; ".join(self.actions)

    def ours(self) -> list[Path]:
        """Every cgroup below the parent, in every hierarchy, the parents included: deepest first.

        Never our own cgroup (a parent of `/`): the put and its daemons live there.
        """
        below = self.parent.strip("/")
        if not below or below == V2_LEAF:
            return []
        found: list[Path] = []
        for root in self.roots:
            found += [Path(top) for top, _dirs, _files in os.walk(os.path.join(root, below), topdown=False)]
        return found

    def sweep(self, seconds: float = SWEEP_SECONDS) -> tuple[int, list[str]]:
        """Kill every process left in our cgroups, then remove them; (processes killed, problems)."""
        return sweep_cgroups(self.ours(), seconds)


# ---------------------------------------------------------------- reading where we are


def read_own_cgroups(proc_self_cgroup: str = "/proc/self/cgroup") -> dict[str, str]:
    """controllers (`cpu,cpuacct`, `name=systemd`, `` for v2) → our cgroup's path, as /proc/self/cgroup says."""
    own = {}
    with open(proc_self_cgroup) as handle:
        for line in handle:
            if line.count(":") >= 2:
                _number, controllers, path = line.rstrip("\n").split(":", 2)
                own[controllers] = path
    return own


def at_namespace_root(own: dict[str, str]) -> bool:
    """Every path is `/`: we are at the root of a cgroup namespace of our own (or of the host)."""
    return bool(own) and all(path == "/" for path in own.values())


def cgroup_version(root: str = CGROUP_ROOT, own: dict[str, str] | None = None) -> int:
    """2 when the host runs the unified hierarchy alone (or it is what is mounted), else 1."""
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return 2
    own = own if own is not None else read_own_cgroups()
    return 2 if list(own) == [""] else 1


def describe_own(own: dict[str, str]) -> str:
    """Our cgroup as the host names it: one path, or each hierarchy's where they differ."""
    paths = {path for controllers, path in own.items() if controllers}
    if not paths:
        return own.get("", "/")
    if len(paths) == 1:
        return paths.pop()
    common = max(paths, key=lambda p: sum(1 for path in own.values() if path == p))
    others = [f"{controllers} {path}" for controllers, path in own.items() if controllers and path != common]
    return f"{common} ({', '.join(others)})"


# ---------------------------------------------------------------- placing


def place(tracker: MountTracker, root: str = CGROUP_ROOT, parent: str = CGROUP_PARENT) -> CgroupPlacement:
    """Make `parent` (absolute, for dockerd's --cgroup-parent) a cgroup below our own in every hierarchy.

    Runs in the main thread before containerd and dockerd are spawned: a namespace entered
    here is the one they, and every later child, inherit.
    """
    global _left_out_on_entry
    own = read_own_cgroups()
    version = cgroup_version(root, own)
    placement = CgroupPlacement(version, describe_own(own), [], parent=parent)
    try:
        if not at_namespace_root(own):
            left_out = frozenset(not_placed_in(own))
            unshare_cgroup_namespace()
            _left_out_on_entry = left_out
            placement.actions.append(f"own cgroup {placement.own}: entered a cgroup namespace rooted there")
            if version == 2:
                # A tmpfs first: the kernel refuses a filesystem mounted on the root of a mount of itself.
                tracker.mount("tmpfs", root, "tmpfs", 0, "mode=0755")
                tracker.mount("cgroup2", root, "cgroup2")
                placement.actions.append(f"mounted cgroup2 at {root}, showing that cgroup")
            else:
                _mount_v1(root, tracker, placement.actions, left_out)
        elif in_initial_namespace():
            raise PlacementError(
                "this process is in the host's root cgroup, not in a container's: nothing to nest the inner "
                "containers in"
            )
        else:
            placement.actions.append("already at the root of our own cgroup namespace")
            _ensure_mounted(root, version, tracker, placement.actions)
        if version == 2:
            placement.actions += enable_v2_controllers(root)
            placement.roots = [root]
        else:
            placement.actions.append(widen_devices(os.path.join(root, "devices")))
            placement.roots = _v1_hierarchy_dirs(root)
    except OSError as error:  # MountError included
        detail = f"{error.filename}: {error.strerror}" if error.filename else error.strerror or str(error)
        raise PlacementError(
            f"cannot place the inner containers below this container's cgroup {placement.own}: {detail}"
        ) from error
    placement.actions.append(f"inner containers go to {parent} below it")
    return placement


def not_placed_in(own: dict[str, str]) -> set[str]:
    """v1 hierarchies where the runtime left us at the host's root while it placed us elsewhere (runc skips a few).

    A cgroup made there would be the host's, not ours: those hierarchies are not mounted for
    dockerd (runc does without them).
    """
    named = {controllers: path for controllers, path in own.items() if controllers}
    if all(path == "/" for path in named.values()):
        return set()
    return {controllers for controllers, path in named.items() if path == "/"}


def unshare_cgroup_namespace() -> None:
    """unshare(CLONE_NEWCGROUP) through libc (os.unshare needs Python 3.12)."""
    if libc.unshare(CLONE_NEWCGROUP) != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"entering a cgroup namespace: {os.strerror(number)}")


def in_initial_namespace(ns_link: str = "/proc/self/ns/cgroup") -> bool:
    """Whether this is the host's initial cgroup namespace (the kernel gives it a fixed inode)."""
    try:
        return os.stat(ns_link).st_ino == INITIAL_CGROUP_NAMESPACE_INODE
    except OSError:
        return False


def _ensure_mounted(root: str, version: int, tracker: MountTracker, actions: list[str]) -> None:
    """Our own namespace already: mount what is missing, make what is read-only writable."""
    if version == 2:
        info = next((m for m in read_mountinfo() if m.mount_point == root), None)
        if info is None:
            tracker.mount("cgroup2", root, "cgroup2")
            actions.append(f"mounted cgroup2 at {root}")
        elif "ro" in info.options:
            remount_read_write(root)
            actions.append(f"remounted {root} read-write")
        return
    mounted = {
        m.mount_point: m for m in read_mountinfo() if m.mount_point == root or m.mount_point.startswith(root + "/")
    }
    if root not in mounted or any(m.fstype == "cgroup" and "ro" in m.options for m in mounted.values()):
        _mount_v1(root, tracker, actions, _left_out_on_entry)


def _mount_v1(root: str, tracker: MountTracker, actions: list[str], left_out: frozenset[str]) -> None:
    """A tmpfs at `root` with the v1 hierarchies the host has below it (co-mounted ones together), less `left_out`."""
    tracker.mount("cgroup", root, "tmpfs", 0, "mode=0755")
    mounted = []
    for grouping in v1_groupings():
        if grouping in left_out:
            continue
        name = "systemd" if grouping == "name=systemd" else grouping
        target = os.path.join(root, name)
        try:
            tracker.mount("cgroup", target, "cgroup", 0, grouping)
        except MountError as error:
            actions.append(f"could not mount {grouping} ({error.strerror})")
            continue
        mounted.append(name)
        for alias in grouping.split(","):
            link = os.path.join(root, alias)
            if alias != name and not alias.startswith("name=") and not os.path.lexists(link):
                os.symlink(name, link)
    actions.append(f"mounted a tmpfs at {root} and {len(mounted)} hierarchies below it ({' '.join(mounted)})")
    if left_out:
        actions.append(f"left out {' '.join(sorted(left_out))}: the container sits at the host's root there")


def v1_groupings(proc_cgroups: str = "/proc/cgroups", proc_self_cgroup: str = "/proc/self/cgroup") -> list[str]:
    """Mount option sets of the v1 hierarchies the host has (co-mounted ones together: `cpu,cpuacct`)."""
    joined = [controllers for controllers in read_own_cgroups(proc_self_cgroup) if controllers]
    groupings: list[str] = []
    with open(proc_cgroups) as handle:
        for line in handle:
            if line.startswith("#"):
                continue
            name, hierarchy, _count, enabled = line.split()
            if enabled != "1" or hierarchy == "0":
                continue  # disabled, or bound to the unified hierarchy
            grouping = next((g for g in joined if name in g.split(",")), name)
            if grouping not in groupings:
                groupings.append(grouping)
    groupings += [g for g in joined if g.startswith("name=") and g not in groupings]
    return groupings


def _v1_hierarchy_dirs(root: str) -> list[str]:
    return sorted(
        {m.mount_point for m in read_mountinfo() if m.fstype == "cgroup" and m.mount_point.startswith(root + "/")}
    )


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def widen_devices(devices: str, write: Callable[[Path, str], None] | None = None) -> str:
    """Let our devices cgroup (and so the inner containers) use every device, when its parent allows it."""
    write = write or _write
    base = Path(devices)
    if not (base / "devices.list").exists():
        return "devices: no devices hierarchy"
    listed = (base / "devices.list").read_text().split("\n")
    if "a *:* rwm" in listed:
        return "devices: every device allowed already"
    rules = len([rule for rule in listed if rule.strip()])
    for attempt in (["a"], ["c *:* rwm", "b *:* rwm"]):
        try:
            for rule in attempt:
                write(base / "devices.allow", rule)
            allowed = f"{rules} rule{'s' if rules != 1 else ''}"
            return f"devices: widened to every device (the worker allowed {allowed}; its parent allows all)"
        except OSError:
            continue
    kept = f"{rules} rule{'s' if rules != 1 else ''}"
    return (
        f"devices: could not be widened, the worker's {kept} stay"
        " (containers needing other devices, e.g. /dev/console, will fail)"
    )


def enable_v2_controllers(root: str, attempts: int = 50, write: Callable[[Path, str], None] | None = None) -> list[str]:
    """The nesting dance of docker:dind: move our processes to `init`, then enable controllers.

    Only at the root of our own cgroup namespace: there `root` is our own cgroup, never the
    host's root. Writing subtree_control fails with EBUSY while processes sit in the cgroup,
    and new processes may appear between the move and the write, so retry.
    """
    write = write or _write
    base = Path(root)
    init = base / V2_LEAF
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
            return [
                f"moved {moved} process{'es' if moved != 1 else ''} to {init}",
                f"enabled controllers: {' '.join(controllers) or 'none'}",
            ]
        except OSError as error:
            if error.errno != errno.EBUSY:
                raise
            time.sleep(0.01)
    raise OSError(errno.EBUSY, f"{base}/cgroup.subtree_control stayed busy after {attempts} attempts")
