"""The services' logs: compose's prefixed lines, per-service log files, and the engine's own log of a container.

Compose prints each container's output as `service-N | text`; the lines are filed by service
(redacted) in files that can grow to gigabytes, so tails are read from the end. What compose
stopped following is read back from the engine, in time order.
"""

from __future__ import annotations

import heapq
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import docker

from compose_env.logtail import last_lines

#: Compose 2.26 starts each log line with "erase line" (ESC [2K) even with `--ansi never`.
ERASE_AT_START = re.compile(r"^(?:\x1b\[[0-9;]*K|\r)+")
PREFIXED_LINE = re.compile(r"^(?P<prefix>\S+?)\s*\|(?: (?P<text>.*))?$")
REPLICA_SUFFIX = re.compile(r"-\d+$")
#: Compose's own lines on stderr (plain progress, warnings), as opposed to a `run` container's stderr.
COMPOSE_OWN_LINE = re.compile(
    r"^(?: (?:Container|Network|Volume|Image|Service|Secret|Config) \S|WARN\[\d+\]|time=\S+ level=)"
)


@dataclass(frozen=True)
class PrefixedLine:
    """A line of a container's output as compose prints it: `source  | text`, source being `service-N`."""

    service: str
    source: str
    text: str


def split_prefixed(line: str, services: Iterable[str]) -> PrefixedLine | None:
    """`tests-1  | text` → PrefixedLine("tests", "tests-1", "text"); None for compose's own lines."""
    match = PREFIXED_LINE.match(line)
    if not match:
        return None
    source = match.group("prefix")
    known = set(services)
    for candidate in (source, REPLICA_SUFFIX.sub("", source)):
        if candidate in known or not known:
            return PrefixedLine(
                candidate if known else REPLICA_SUFFIX.sub("", source), source, match.group("text") or ""
            )
    return None


@dataclass
class ServiceLogs:
    """Per-service log files, fed by the live stream and completed from the engine after the run."""

    directory: Path
    redact: Callable[[str], str] = lambda text: text
    captured: set[str] = field(default_factory=set)
    _handles: dict[str, IO[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def append(self, service: str, text: str) -> None:
        with self._lock:
            handle = self._handles.get(service)
            if handle is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                handle = self._handles[service] = open(self.path(service), "a")  # noqa: SIM115
                self.captured.add(service)
            handle.write(self.redact(text) + "\n")

    def write_whole(self, service: str, text: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path(service).write_text("".join(self.redact(line) + "\n" for line in text.splitlines()))

    def close(self) -> None:
        with self._lock:
            for handle in self._handles.values():
                handle.close()
            self._handles.clear()

    def path(self, service: str) -> Path:
        return self.directory / f"{_safe(service)}.log"

    def services(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.log")) if self.directory.is_dir() else []

    def tail(self, service: str, lines: int) -> list[str]:
        """The last `lines` lines, reading only the end of the file (logs can be gigabytes)."""
        path = self.path(service)
        return last_lines(path, lines) if path.is_file() else []


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def compose_label(container: Mapping[str, Any], name: str) -> str:
    return str((container.get("Labels") or {}).get(f"com.docker.compose.{name}", ""))


def output_source(container: Mapping[str, Any]) -> str:
    """The prefix compose prints for a container: `service-N`, or its `container_name` if it has one."""
    source = f"{compose_label(container, 'service')}-{compose_label(container, 'container-number') or 1}"
    name = str((container.get("Names") or [""])[0]).lstrip("/")
    return source if not name or name == f"{compose_label(container, 'project')}-{source}" else name


def engine_log_lines(client: docker.APIClient, container_id: str, skip_stdout: int, skip_stderr: int) -> Iterator[str]:
    """The container's logged lines after the first `skip_stdout` of stdout and `skip_stderr` of stderr.

    Compose relays the two streams separately, so what it printed is counted per stream;
    the rest of both is merged in the engine's time order. Read as a stream: constant memory.
    """
    stdout = _timestamped_lines(client, container_id, "stdout", skip_stdout)
    stderr = _timestamped_lines(client, container_id, "stderr", skip_stderr)
    for _stamp, text in heapq.merge(stdout, stderr):
        yield text


def _timestamped_lines(
    client: docker.APIClient, container_id: str, stream: str, skip: int
) -> Iterator[tuple[str, str]]:
    """(sortable timestamp, text) for one stream's lines after the first `skip`."""
    try:
        chunks = client.logs(
            container_id,
            stdout=stream == "stdout",
            stderr=stream == "stderr",
            stream=True,
            follow=False,
            timestamps=True,
        )
        pending = b""
        seen = 0
        for chunk in chunks:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                seen += 1
                if seen > skip:
                    yield _split_timestamp(raw.decode(errors="replace").rstrip("\r"))
        if pending and seen + 1 > skip:
            yield _split_timestamp(pending.decode(errors="replace").rstrip("\r"))
    except docker.errors.APIError:
        return


def _split_timestamp(line: str) -> tuple[str, str]:
    """`2026-11-28T01:35:39.7021Z text` → ("2026-11-28T01:35:39.702100000Z", "text"): RFC 3339 with the nanoseconds
    padded, so it sorts."""
    stamp, _, text = line.partition(" ")
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    return f"{seconds}.{fraction:0<9}Z", text
