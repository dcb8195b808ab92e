"""The put response: version, metadata, redaction and the byte budget (`logs.metadata_bytes`, 4000 by default).

The whole stdout line (JSON plus newline) stays under the budget whatever the logs are. 4000 keeps
the build page readable and works on every Concourse release: before v7.4.0 (concourse#7288, the fix
for #7284) the containerd runtime stored the response as one containerd label of at most 4096
bytes, and a larger one failed the step; since then it is split into chunks. The JSON is ASCII
(non-ASCII is escaped), so no chunk boundary can split a character (concourse#9602, v8.2.4). The
summary entries come first and are cut only in extreme cases; the `logs/<service>` tails
share what is left fairly, failing services first. With test reports, `tests` is a summary
entry and `failed_tests` comes right after the summary: the failing tests' names take their
room before the log tails do.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from compose_env.version import RESOURCE_VERSION

RESPONSE_BUDGET = 4000
LOG_ENTRY_PREFIX = "logs/"
#: Below this many bytes a log tail says nothing useful: rather show fewer services.
MIN_LOG_SHARE = 160
#: What the summary entries may use at most, so that logs always keep some room.
SUMMARY_BUDGET = RESPONSE_BUDGET - 2 * MIN_LOG_SHARE - 200
ELLIPSIS = "…"


class RunStatus(StrEnum):
    """How a run ended: the metadata `status` (its values are the contract's)."""

    PASSED = "passed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class ServiceState:
    """One compose service's container after the run, as `compose ps -a` shows it.

    `stopped` says the container was stopped by compose (the abort cascade, a timeout),
    not by itself: its non-zero exit code (143, 137) is then not a failure of its own.
    """

    name: str
    state: str
    exit_code: int | None = None
    health: str = ""
    container: str = ""
    stopped: bool = False
    #: Compose could not create or start the container (progress.py): what failed, and the engine's reason.
    error: str = ""

    @property
    def exited_by_itself_non_zero(self) -> bool:
        return self.state == "exited" and bool(self.exit_code) and not self.stopped

    @property
    def failed(self) -> bool:
        return (
            self.exited_by_itself_non_zero
            or self.health == "unhealthy"
            or self.state in ("dead", "restarting")
            or bool(self.error)
        )

    def summary(self) -> str:
        """`name=state(exit code or health)`, e.g. `tests=exited(3)`, `redis=running(healthy)`."""
        detail = self.health or (str(self.exit_code) if self.exit_code is not None and self.state == "exited" else "")
        return f"{self.name}={self.state}({detail})" if detail else f"{self.name}={self.state}"


@dataclass
class RunResult:
    """What the compose command did."""

    command: tuple[str, ...]
    exit_code: int
    status: RunStatus
    services: list[ServiceState] = field(default_factory=list)
    logs: dict[str, list[str]] = field(default_factory=dict)
    failing_services: list[str] = field(default_factory=list)
    #: Why containers could not start, when the worker's container is the cause (start_failures.py).
    diagnoses: list[str] = field(default_factory=list)


def new_run_id(build_id: str = "") -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    prefix = f"{build_id}-" if build_id else ""
    return f"{prefix}{stamp}-{secrets.token_hex(3)}"


def format_seconds(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def format_timings(timings: Mapping[str, float]) -> str:
    return " ".join(f"{name}={format_seconds(value)}" for name, value in timings.items())


def response_size(entries: Sequence[Mapping[str, str]], version: Mapping[str, str]) -> int:
    """Bytes of the stdout line protocol writes: `json.dumps(response)` plus the newline."""
    return len(json.dumps({"version": version, "metadata": list(entries)}).encode()) + 1


def _encoded_length(text: str) -> int:
    """Bytes `text` takes inside a JSON string (escapes included, quotes excluded)."""
    return len(json.dumps(text).encode()) - 2


def tail_within(lines: Sequence[str], room: int) -> str:
    """The longest tail of `lines` (joined by newlines) whose JSON-encoded size fits `room` bytes."""
    kept: list[str] = []
    used = 0
    for line in reversed(lines):
        cost = _encoded_length(line) + (2 if kept else 0)  # the joining newline is `\n` in JSON
        if used + cost > room:
            if not kept:
                kept.append(_line_end_within(line, room))
            break
        kept.append(line)
        used += cost
    return "\n".join(reversed(kept))


def _line_end_within(line: str, room: int) -> str:
    """A single line too long for `room`: keep its end (nearest the failure), marked with an ellipsis."""
    marker = _encoded_length(ELLIPSIS)
    if room <= marker:
        return ""
    low, high = 0, len(line)
    while low < high:  # the longest suffix that fits
        middle = (low + high + 1) // 2
        if _encoded_length(line[len(line) - middle :]) + marker <= room:
            low = middle
        else:
            high = middle - 1
    return ELLIPSIS + line[len(line) - low :] if low else ""


def fair_shares(needs: Mapping[str, int], room: int) -> dict[str, int]:
    """Max-min fair split of `room`: whoever needs less than an equal share gets its need, the rest is shared again."""
    shares: dict[str, int] = {}
    pending = sorted(needs, key=lambda name: needs[name])
    while pending:
        equal = room // len(pending)
        name = pending[0]
        if needs[name] > equal:
            for rest in pending:
                shares[rest] = equal
            break
        shares[name] = needs[name]
        room -= needs[name]
        pending.pop(0)
    return shares


def fit_logs(
    base: list[dict[str, str]],
    version: Mapping[str, str],
    logs: Mapping[str, Sequence[str]],
    order: Sequence[str],
    budget: int = RESPONSE_BUDGET,
) -> list[dict[str, str]]:
    """Append `logs/<service>` entries in `order`, trimmed so the response stays under `budget`.

    The room left after the summary is split max-min fairly: a service with a short log
    keeps all of it, the others get equal shares of the rest. When there are too many
    services for each to get `MIN_LOG_SHARE`, the last ones in `order` are left out:
    `order` puts failing services first, so it is the passing ones that go.
    """
    names = [name for name in order if logs.get(name)]
    while names:
        empty_entries = [{"name": LOG_ENTRY_PREFIX + name, "value": ""} for name in names]
        room = budget - 1 - response_size([*base, *empty_entries], version)
        if room >= MIN_LOG_SHARE * len(names):
            break
        names.pop()
    if not names:
        return list(base)
    needs = {name: _encoded_length("\n".join(logs[name])) for name in names}
    shares = fair_shares(needs, room)
    entries = list(base)
    for name in names:
        text = "\n".join(logs[name]) if needs[name] <= shares[name] else tail_within(logs[name], shares[name])
        entries.append({"name": LOG_ENTRY_PREFIX + name, "value": text})
    while response_size(entries, version) >= budget and len(entries) > len(base):
        entries.pop()  # cannot happen by construction; the budget is a hard limit all the same
    return entries


def build_response(
    *,
    run_id: str,
    result: RunResult,
    duration: float,
    timings: Mapping[str, float],
    images: Sequence[str],
    dockerd: str,
    redact: Callable[[str], str],
    tests: str | None = None,
    failed_tests: Sequence[str] = (),
    budget: int = RESPONSE_BUDGET,
    resource: str = RESOURCE_VERSION.describe(),
) -> dict[str, Any]:
    """The response; `tests` and `failed_tests` (from params.reports) only when there are reports and failures."""
    version = {"id": run_id, "exit_code": str(result.exit_code)}
    summary = [
        ("status", str(result.status)),
        ("exit_code", str(result.exit_code)),
        ("command", " ".join(result.command)),
        ("duration", format_seconds(duration)),
        ("timings", format_timings(timings)),
        ("images", " ".join(images)),
        ("services", " ".join(s.summary() for s in result.services)),
        ("dockerd", dockerd),
        ("resource", resource),
    ]
    if tests is not None:
        summary.append(("tests", tests))
    base = [{"name": name, "value": redact(value)} for name, value in summary]
    summary_budget = budget - (RESPONSE_BUDGET - SUMMARY_BUDGET)
    base = shrink_to_fit(base, version, summary_budget)
    if failed_tests:
        base = fit_failed_tests(base, version, [redact(name) for name in failed_tests], summary_budget)
    failing = [name for name in dict.fromkeys(result.failing_services) if name in result.logs]
    order = failing + sorted(name for name in result.logs if name not in failing)
    redacted_logs = {name: [redact(line) for line in lines] for name, lines in result.logs.items()}
    metadata = fit_logs(base, version, redacted_logs, order, budget)
    return {"version": version, "metadata": metadata}


def fit_failed_tests(
    base: list[dict[str, str]], version: Mapping[str, str], names: Sequence[str], budget: int
) -> list[dict[str, str]]:
    """A `failed_tests` entry after the summary: one name a line, as many as fit `budget`, then `+N more`.

    It takes its room before the log tails, which share what is left (at least
    `RESPONSE_BUDGET - SUMMARY_BUDGET` bytes, kept for them whatever the failures).
    """
    room = budget - response_size([*base, {"name": "failed_tests", "value": ""}], version)
    kept: list[str] = []
    used = 0
    for index, name in enumerate(names):
        cost = _encoded_length(name) + (2 if kept else 0)
        rest = len(names) - index - 1
        more = _encoded_length(f"\n+{rest} more") if rest else 0
        if used + cost + more > room:
            break
        kept.append(name)
        used += cost
    if len(kept) < len(names):
        marker = f"+{len(names) - len(kept)} more"
        while kept and used + _encoded_length(("\n" if kept else "") + marker) > room:
            used -= _encoded_length(kept.pop()) + (2 if kept else 0)
        kept.append(marker)
    return [*base, {"name": "failed_tests", "value": "\n".join(kept)}]


def shrink_to_fit(entries: list[dict[str, str]], version: Mapping[str, str], budget: int) -> list[dict[str, str]]:
    """Cut the longest summary values (keeping their start) until the summary fits `budget` bytes."""
    entries = [dict(e) for e in entries]
    while response_size(entries, version) > budget:
        longest = max(entries, key=lambda e: len(e["value"]))
        if len(longest["value"]) <= 40:
            break
        longest["value"] = longest["value"][: len(longest["value"]) // 2] + ELLIPSIS
    return entries


def version_metadata(version: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": key, "value": value} for key, value in version.items()]
