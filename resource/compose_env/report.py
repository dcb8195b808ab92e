"""The put response: version, metadata, redaction and the 4000-byte budget."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

RESPONSE_BUDGET = 4000
LOG_ENTRY_PREFIX = "logs/"


@dataclass(frozen=True)
class ServiceState:
    """One compose service's container after the run, as `compose ps -a` shows it."""

    name: str
    state: str
    exit_code: int | None = None
    health: str = ""

    @property
    def failed(self) -> bool:
        return (self.state == "exited" and bool(self.exit_code)) or self.health == "unhealthy" or self.state in ("dead", "restarting")

    def summary(self) -> str:
        detail = self.health or (str(self.exit_code) if self.exit_code is not None and self.state == "exited" else "")
        return f"{self.name}={self.state}({detail})" if detail else f"{self.name}={self.state}"


@dataclass
class RunResult:
    """What the compose command did."""

    command: tuple[str, ...]
    exit_code: int
    status: str  # passed, failed or timed_out
    services: list[ServiceState] = field(default_factory=list)
    logs: dict[str, list[str]] = field(default_factory=dict)
    failing_services: list[str] = field(default_factory=list)


def new_run_id(build_id: str = "") -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    prefix = f"{build_id}-" if build_id else ""
    return f"{prefix}{stamp}-{secrets.token_hex(3)}"


def format_seconds(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def format_timings(timings: Mapping[str, float]) -> str:
    return " ".join(f"{name}={format_seconds(value)}" for name, value in timings.items())


def _size(entries: Sequence[Mapping[str, str]], version: Mapping[str, str]) -> int:
    return len(json.dumps({"version": version, "metadata": list(entries)}).encode())


def _tail_within(lines: Sequence[str], budget: int) -> str:
    """The longest tail of `lines` whose JSON-encoded size fits `budget` bytes."""
    kept: list[str] = []
    used = 2  # the quotes
    for line in reversed(lines):
        cost = len(json.dumps(line).encode()) - 2 + 1  # escaped text plus "\n"
        if used + cost > budget:
            if not kept and budget > 20:
                # A single huge line: keep its end, the part nearest the failure.
                room = budget - used - 4
                kept.append("…" + line[-max(room // 2, 1) :])
            break
        kept.append(line)
        used += cost
    return "\n".join(reversed(kept))


def fit_logs(
    base: list[dict[str, str]],
    version: Mapping[str, str],
    logs: Mapping[str, Sequence[str]],
    order: Sequence[str],
    budget: int = RESPONSE_BUDGET,
) -> list[dict[str, str]]:
    """Append `logs/<service>` entries in `order`, sharing what the budget leaves fairly.

    Each service gets an equal share of the room that is left; a service that needs
    less hands the rest on to the ones after it. `order` puts failing services first,
    so when the room runs out it is the passing ones that go.
    """
    entries = list(base)
    names = [name for name in order if logs.get(name)]
    for position, name in enumerate(names):
        overhead = _size([*entries, {"name": LOG_ENTRY_PREFIX + name, "value": ""}], version)
        room = budget - overhead
        if room <= 40:
            break
        share = room // (len(names) - position)
        text = _tail_within(logs[name], share)
        if text:
            entries.append({"name": LOG_ENTRY_PREFIX + name, "value": text})
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
    budget: int = RESPONSE_BUDGET,
) -> dict[str, Any]:
    version = {"id": run_id, "exit_code": str(result.exit_code)}
    summary = [
        ("status", result.status),
        ("exit_code", str(result.exit_code)),
        ("command", " ".join(result.command)),
        ("duration", format_seconds(duration)),
        ("timings", format_timings(timings)),
        ("images", " ".join(images)),
        ("services", " ".join(s.summary() for s in result.services)),
        ("dockerd", dockerd),
    ]
    base = [{"name": name, "value": redact(value)} for name, value in summary]
    base = _shrink_to_fit(base, version, budget - 200)
    failing = [name for name in result.failing_services if name in result.logs]
    order = failing + sorted(name for name in result.logs if name not in failing)
    redacted_logs = {name: [redact(line) for line in lines] for name, lines in result.logs.items()}
    metadata = fit_logs(base, version, redacted_logs, order, budget)
    return {"version": version, "metadata": metadata}


def _shrink_to_fit(entries: list[dict[str, str]], version: Mapping[str, str], budget: int) -> list[dict[str, str]]:
    """Cut the longest summary values until the summary alone leaves room for logs."""
    entries = [dict(e) for e in entries]
    while _size(entries, version) > budget:
        longest = max(entries, key=lambda e: len(e["value"]))
        if len(longest["value"]) <= 40:
            break
        longest["value"] = longest["value"][: len(longest["value"]) // 2] + "…"
    return entries


def version_metadata(version: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": key, "value": value} for key, value in version.items()]
