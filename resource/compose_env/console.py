"""Build-log output on stderr: phase headers, notes, durations.

Everything a CI engineer reads goes through here, so that redaction applies to all of it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

BOLD = "\033[1m"
DIM = "\033[2m"
RED = "\033[31m"
YELLOW = "\033[33m"
GREEN = "\033[32m"
RESET = "\033[0m"


class Console:
    """Line-oriented, thread-safe writer for the build log."""

    def __init__(self, stream: TextIO | None = None, redact: Callable[[str], str] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._redact = redact or (lambda text: text)
        self._lock = threading.Lock()

    @property
    def stream(self) -> TextIO:
        return self._stream

    def set_redactor(self, redact: Callable[[str], str]) -> None:
        self._redact = redact

    def line(self, text: str) -> None:
        with self._lock:
            self._stream.write(self._redact(text) + "\n")
            self._stream.flush()

    def header(self, text: str) -> None:
        self.line(f"{BOLD}==> {text}{RESET}")

    def info(self, text: str) -> None:
        self.line(f"    {text}")

    def warn(self, text: str) -> None:
        self.line(f"{YELLOW}    warning: {text}{RESET}")

    def error(self, text: str) -> None:
        self.line(f"{RED}{text}{RESET}")

    def success(self, text: str) -> None:
        self.line(f"{GREEN}{text}{RESET}")

    @contextmanager
    def phase(self, title: str, timings: dict[str, float] | None = None, key: str = "") -> Iterator[None]:
        """Print a header, run the block, print its duration and record it in `timings[key]`."""
        self.header(title)
        started = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - started
            if timings is not None and key:
                timings[key] = timings.get(key, 0.0) + elapsed
            self.line(f"{DIM}    ({elapsed:.2f}s){RESET}")
