"""Kill whatever is still in the cgroups a put caused, and remove them: a step of every teardown.

Until they are empty or time is up: `cgroup.kill` where the kernel has it (v2, 5.14+), frozen
groups thawed, SIGKILL to every pid in `cgroup.procs`; then each cgroup is removed, deepest
first. No dockerd is needed, so this also cleans up after one that died or was killed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from pathlib import Path

#: How long the sweep keeps killing before it removes what it can.
SWEEP_SECONDS = 2.0


def sweep_cgroups(groups: list[Path], seconds: float = SWEEP_SECONDS) -> tuple[int, list[str]]:
    """Kill every process left in `groups`, then remove them in that order (deepest first); (processes killed,
    problems)."""
    if not groups:
        return 0, []
    killed: set[str] = set()
    deadline = time.monotonic() + seconds
    while True:
        pids = {pid for group in groups for pid in _procs(group)}
        if not pids or time.monotonic() > deadline:
            break
        killed |= pids
        _kill_all(groups, pids)
        time.sleep(0.02)
    problems = [f"cgroup {group}: still holds {' '.join(sorted(_procs(group)))}" for group in groups if _procs(group)]
    for group in groups:
        _remove(group, deadline + 1.0, problems)
    return len(killed), problems


def _procs(group: Path) -> list[str]:
    try:
        return (group / "cgroup.procs").read_text().split()
    except OSError:
        return []


def _kill_all(groups: list[Path], pids: set[str]) -> None:
    """cgroup.kill where the kernel has it (v2, 5.14+); thaw frozen groups; SIGKILL each pid."""
    for group in groups:
        with contextlib.suppress(OSError):
            if (group / "cgroup.kill").exists():
                (group / "cgroup.kill").write_text("1")
            elif (group / "cgroup.freeze").exists():
                (group / "cgroup.freeze").write_text("0")
            elif (group / "freezer.state").exists():
                (group / "freezer.state").write_text("THAWED")
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _remove(group: Path, deadline: float, problems: list[str]) -> None:
    """rmdir, retried briefly: a cgroup stays busy for a moment after its last process died."""
    while True:
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as error:
            if error.errno != errno.EBUSY or time.monotonic() > deadline:
                problems.append(f"cgroup {group} not removed: {error.strerror}")
                return
            time.sleep(0.01)
