"""Work through a list on a few daemon threads while the main thread waits, interruptibly.

Daemon threads, not a ThreadPoolExecutor: after a failure or an abort the work still in flight
(an upload, a tar, a container stop) must not hold the process, and an executor's workers are
joined at interpreter exit. The main thread polls instead of blocking in `join()`, so that
SIGTERM's handler runs at once and its exception unwinds from `wait()`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")

POLL_SECONDS = 0.1


class Workers(Generic[Item]):
    """`work(item)` for every item, `count` at a time, in the given order; started at once.

    `work` handles its own failures. Setting `stop` ends the workers after their current item:
    the items not yet started are dropped.
    """

    def __init__(self, work: Callable[[Item], None], items: Sequence[Item], count: int, name: str, stop: threading.Event | None = None) -> None:
        self.stop = stop or threading.Event()
        self._work = work
        self._pending = list(reversed(items))
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{n}", daemon=True) for n in range(min(count, len(items)))]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            with self._lock:
                if not self._pending:
                    return
                item = self._pending.pop()
            self._work(item)

    def wait(self, seconds: float | None = None) -> bool:
        """Until every worker has finished, `stop` is set, or `seconds` pass; whether all finished."""
        deadline = None if seconds is None else time.monotonic() + seconds
        for thread in self._threads:
            while thread.is_alive():
                if self.stop.is_set():
                    return False
                left = POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - time.monotonic())
                if left <= 0:
                    return False
                thread.join(left)
        return True

    def finish(self, seconds: float) -> bool:
        """After `stop`: give the items in flight up to `seconds` to end; whether all did."""
        deadline = time.monotonic() + seconds
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)
