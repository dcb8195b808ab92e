"""Abort handling: Concourse sends SIGTERM on abort or step timeout, then SIGKILL 10 s later.

The first signal raises `Aborted` in the main thread, so the flow unwinds through its
`finally` blocks. Teardown runs inside `ABORT.deferred()`: a signal that arrives
then is remembered, not raised, so it cannot cut the cleanup short.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

from compose_env.errors import Aborted


class AbortOnSignal:
    def __init__(self) -> None:
        self.received = False
        self._deferring = 0

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, _signum: int, _frame: object) -> None:
        if self.received:
            return
        self.received = True
        if not self._deferring:
            raise Aborted()

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Run the block to its end even if a signal comes; raise Aborted afterwards if one did."""
        already = self.received
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        if self.received and not already and not self._deferring:
            raise Aborted()


ABORT = AbortOnSignal()
