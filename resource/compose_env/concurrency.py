"""Work through a list on a few daemon threads while the main thread waits, interruptibly.

Daemon threads, not a ThreadPoolExecutor: after a failure or an abort the work still in flight
(an upload, a tar, a container stop) must not hold the process, and an executor's workers are
joined at interpreter exit. The main thread polls instead of blocking in `join()`, so that
SIGTERM's handler runs at once and its exception unwinds from `wait()`. It waits on an event
each worker sets as it ends, never on `Thread.join`: before Python 3.13, a join that a signal
handler's exception interrupts marks the still-running thread as stopped, and every later join
or `is_alive()` then says it has ended.
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

    def __init__(
        self,
        work: Callable[[Item], None],
        items: Sequence[Item],
        count: int,
        name: str,
        stop: threading.Event | None = None,
    ) -> None:
        self.stop = stop or threading.Event()
        self._work = work
        self._pending = list(reversed(items))
        self._lock = threading.Lock()
        self._ended = [threading.Event() for _ in range(min(max(count, 1), len(items)))]
        for number, ended in enumerate(self._ended):
            threading.Thread(target=self._run, args=(ended,), name=f"{name}-{number}", daemon=True).start()

    def _run(self, ended: threading.Event) -> None:
        try:
            while not self.stop.is_set():
                with self._lock:
                    if not self._pending:
                        return
                    item = self._pending.pop()
                self._work(item)
        finally:
            ended.set()

    def wait(self, seconds: float | None = None) -> bool:
        """Until every worker has finished, `stop` is set, or `seconds` pass; whether all finished."""
        deadline = None if seconds is None else time.monotonic() + seconds
        for ended in self._ended:
            while not ended.is_set():
                if self.stop.is_set():
                    return False
                left = POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - time.monotonic())
                if left <= 0:
                    return False
                ended.wait(left)
        return True

    def finish(self, seconds: float) -> bool:
        """After `stop`: give the items in flight up to `seconds` to end; whether all did."""
        deadline = time.monotonic() + seconds
        for ended in self._ended:
            ended.wait(max(0.0, deadline - time.monotonic()))
        return all(ended.is_set() for ended in self._ended)
