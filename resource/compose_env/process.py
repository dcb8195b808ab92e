"""Processes: the C library, children that die with us, and the process table.

Children are started through `setpriv --pdeathsig KILL` (util-linux, in every Debian base) rather
than a `preexec_fn` calling prctl: Python documents `preexec_fn` as unsafe once threads run, and a
put runs several (log streaming, loads, layer writes). Either way the kernel sends SIGKILL to the
child when the thread that started it dies, even by SIGKILL, so nothing outlives an aborted put.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Sequence

#: The C library, for the calls Python does not wrap (mount, umount2, unshare before 3.12).
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL", "--")


def dying_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv`, run so that it gets SIGKILL when the thread that starts it dies."""
    return [*DIE_WITH_PARENT, *argv]


def process_table(proc: str = "/proc") -> dict[int, tuple[int, bytes]]:
    """pid → (parent pid, cmdline with spaces) for every process we can see."""
    table = {}
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat", "rb") as handle:
                parent = int(handle.read().rsplit(b")", 1)[1].split()[1])
            with open(f"{proc}/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ")
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry)] = (parent, cmdline)
    return table


def descendants(table: dict[int, tuple[int, bytes]], roots: list[int]) -> list[int]:
    """`roots` and all their descendants, children first (so nothing is reparented mid-kill)."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    ordered: list[int] = []
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in ordered:
            continue
        ordered.append(pid)
        stack += children.get(pid, [])
    return list(reversed(ordered))
