"""The last lines of a log file, read from its end: a log can be gigabytes."""

from __future__ import annotations

import os
from pathlib import Path


def last_lines(path: str | Path, count: int, window: int = 64 * 1024) -> list[str]:
    """The last `count` lines within the file's last `window` bytes; one line saying so when it cannot be read."""
    if count <= 0:
        return []
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - window, 0))
            text = handle.read().decode(errors="replace")
    except OSError:
        return [f"(no log at {path})"]
    return text.splitlines()[-count:]
