"""mount(2)/umount(2) through libc, and a record of what we mounted so teardown can undo it."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field
from pathlib import Path

from compose_env.process import libc

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MNT_DETACH = 2


class MountError(OSError):
    pass


def mount(source: str, target: str, fstype: str, flags: int = 0, options: str = "") -> None:
    result = libc.mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        options.encode() if options else None,
    )
    if result != 0:
        errno = ctypes.get_errno()
        raise MountError(errno, f"mount {fstype or source} on {target}: {os.strerror(errno)}")


def remount_read_write(target: str) -> None:
    """Clear both the per-mount read-only flag (bind mounts) and the superblock's."""
    try:
        mount("none", target, "", MS_REMOUNT | MS_BIND, "")
        info = next((m for m in read_mountinfo() if m.mount_point == target), None)
        if info is not None and "ro" not in info.options:
            return
    except MountError:
        pass
    mount("none", target, "", MS_REMOUNT, "rw")


def umount(target: str, *, lazy: bool = False) -> None:
    if libc.umount2(target.encode(), MNT_DETACH if lazy else 0) != 0:
        errno = ctypes.get_errno()
        raise MountError(errno, f"umount {target}: {os.strerror(errno)}")


@dataclass(frozen=True)
class MountInfo:
    mount_point: str
    fstype: str
    options: frozenset[str]
    source: str


def _unescape(field_text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return field_text.encode().decode("unicode_escape") if "\\" in field_text else field_text


def read_mountinfo(path: str = "/proc/self/mountinfo") -> list[MountInfo]:
    mounts = []
    with open(path) as handle:
        for line in handle:
            before, _, after = line.partition(" - ")
            fields = before.split()
            fstype, source, *_ = [*after.split(), ""]
            mounts.append(MountInfo(_unescape(fields[4]), fstype, frozenset(fields[5].split(",")), source))
    return mounts


def mount_of(path: str, mounts: list[MountInfo] | None = None) -> MountInfo:
    """The mount that holds `path` (the longest mount point that is a prefix of it)."""
    real = os.path.realpath(path)
    candidates = [
        m
        for m in (mounts or read_mountinfo())
        if real == m.mount_point or real.startswith(m.mount_point.rstrip("/") + "/")
    ]
    return max(candidates, key=lambda m: len(m.mount_point))


def is_mount_point(path: str) -> bool:
    real = os.path.realpath(path)
    return any(m.mount_point == real for m in read_mountinfo())


@dataclass
class MountTracker:
    """Remembers the mounts this run made; `undo` unmounts them, newest first."""

    made: list[str] = field(default_factory=list)

    def mount(self, source: str, target: str, fstype: str, flags: int = 0, options: str = "") -> None:
        Path(target).mkdir(parents=True, exist_ok=True)
        mount(source, target, fstype, flags, options)
        self.made.append(target)

    def undo(self, also_below: tuple[str, ...] = ()) -> list[str]:
        """Unmount what we mounted, and anything mounted at or below `also_below` (dockerd's leftovers:
        it bind-mounts a data root that is no mount point onto itself)."""
        problems = []
        roots = tuple(p.rstrip("/") for p in also_below)
        prefixes = tuple(root + "/" for root in roots)
        leftovers = (
            [m.mount_point for m in read_mountinfo() if m.mount_point in roots or m.mount_point.startswith(prefixes)]
            if roots
            else []
        )
        for target in sorted(set(leftovers), key=len, reverse=True) + list(reversed(self.made)):
            if not is_mount_point(target):
                continue
            try:
                umount(target)
            except MountError:
                try:
                    umount(target, lazy=True)
                except MountError as error:
                    problems.append(str(error))
        self.made.clear()
        return problems
