"""What a run came to: service states (`compose ps -a`'s rows, read from the engine), stops from its events, the exit
code, who failed.

Compose's own exit code is not always the answer (`up` returns 0 whatever the containers did, and
`--exit-code-from` is wrong after the abort cascade): `decide_exit_code` says which to trust.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from compose_env.report import ServiceState
from compose_env.run.command import CommandShape
from compose_env.run.progress import ContainerFailure

TIMED_OUT_EXIT_CODE = 124
#: Exit codes of a container stopped by a signal; used only when the engine's events are unavailable.
STOPPED_BY_SIGNAL = {137, 143}


def ps_row(inspected: Mapping[str, Any]) -> dict[str, Any]:
    """The row `compose ps -a --format json` shows for a container, from the engine's inspect of it.

    As compose 2.26 builds it: the health of a running container only, the exit code of an
    exited (or dead) one only, 0 otherwise.
    """
    state = inspected.get("State") or {}
    status = str(state.get("Status", ""))
    labels = (inspected.get("Config") or {}).get("Labels") or {}
    return {
        "Name": str(inspected.get("Name", "")).lstrip("/"),
        "Service": labels.get("com.docker.compose.service", ""),
        "State": status,
        "ExitCode": int(state.get("ExitCode") or 0) if status in ("exited", "dead") else 0,
        "Health": str((state.get("Health") or {}).get("Status", "")) if status == "running" else "",
    }


def listed_ps_row(container: Mapping[str, Any]) -> dict[str, Any]:
    """The same row from the engine's container list alone (when inspecting fails): no exit code, no health."""
    return {
        "Name": str((container.get("Names") or [""])[0]).lstrip("/"),
        "Service": (container.get("Labels") or {}).get("com.docker.compose.service", ""),
        "State": str(container.get("State", "")),
        "ExitCode": None,
        "Health": "",
    }


def stopped_by_compose(events: Iterable[Mapping[str, Any]]) -> set[str]:
    """Names of containers that were sent a signal (`kill` event) before they died: stopped, not exited by themselves.

    Compose's abort cascade and `stop` go through the engine's stop API, which emits
    `kill` (signal 15, then 9) before `die`; a process that ends on its own only emits `die`.
    """
    signalled: set[str] = set()
    stopped: set[str] = set()
    for event in sorted(events, key=lambda e: int(e.get("timeNano") or 0)):
        if event.get("Type", "container") != "container":
            continue
        name = str((event.get("Actor") or {}).get("Attributes", {}).get("name", ""))
        action = str(event.get("Action") or event.get("status") or "")
        if action == "start":
            signalled.discard(name)
            stopped.discard(name)
        elif action == "kill":
            signalled.add(name)
        elif action == "die" and name in signalled:
            stopped.add(name)
    return stopped


def service_states(rows: Sequence[Mapping[str, Any]], stopped: set[str] | None) -> list[ServiceState]:
    """ps rows → states; `stopped` names the containers compose stopped (None: unknown, guess from the exit code)."""
    states = []
    for row in rows:
        state = str(row.get("State", "")).lower()
        exit_code = int(row["ExitCode"]) if row.get("ExitCode") is not None else None
        container = str(row.get("Name", ""))
        was_stopped = container in stopped if stopped is not None else exit_code in STOPPED_BY_SIGNAL
        name = str(row.get("Service") or container or "?")
        states.append(
            ServiceState(
                name, state, exit_code, str(row.get("Health") or ""), container, was_stopped and state == "exited"
            )
        )
    return sorted(states, key=lambda s: (s.name, s.container))


def decide_exit_code(shape: CommandShape, returncode: int, states: Sequence[ServiceState]) -> int:
    """The exit code the put reports.

    - `run`: compose's own, which is the container's.
    - `up --exit-code-from S`: S's real exit code from ps. Compose 2.26 returns 0 when S
      was stopped by the abort cascade (docker/compose#11712), so its answer is not used.
    - any other `up`: compose's, or else the code of a container that exited non-zero by
      itself (plain `up` returns 0 whatever the containers did).
    """
    if shape.subcommand != "up":
        return returncode
    if shape.exit_code_from:
        exited = [
            s for s in states if s.name == shape.exit_code_from and s.state == "exited" and s.exit_code is not None
        ]
        if exited:
            return next((s.exit_code for s in exited if s.exit_code), 0) or 0
        return returncode
    if returncode:
        return returncode
    own = [s for s in states if s.exited_by_itself_non_zero]
    return int(own[0].exit_code or 1) if own else 0


NOT_CREATED = "not-created"


def with_compose_failures(
    states: Sequence[ServiceState], failures: Sequence[ContainerFailure], project: str, services: Mapping[str, Any]
) -> list[ServiceState]:
    """The states with the containers compose could not create or start: marked, or added when no container exists."""
    by_container = {failure.container: failure for failure in failures}
    marked = [
        replace(state, error=by_container[state.container].note) if state.container in by_container else state
        for state in states
    ]
    present = {state.container for state in states}
    marked += [
        ServiceState(failure.service(project, services), NOT_CREATED, container=failure.container, error=failure.note)
        for failure in failures
        if failure.container not in present
    ]
    return sorted(marked, key=lambda s: (s.name, s.container))


def failing_services(shape: CommandShape, exit_code: int, states: Sequence[ServiceState], timed_out: bool) -> list[str]:
    """Services whose logs explain the failure, most relevant first (also the order of the metadata tails).

    A container compose could not create or start comes first: nothing after it could run.
    """
    names: list[str] = [s.name for s in states if s.error]
    primary = shape.run_service or shape.exit_code_from
    if primary and exit_code != 0:
        names.append(primary)
    if timed_out:
        names += [s.name for s in states if s.state == "running"]
    names += [s.name for s in states if s.failed]
    return list(dict.fromkeys(names))


def ps_table(states: Sequence[ServiceState]) -> list[str]:
    """Aligned rows: service, container, state, exit code, health, and whether compose stopped it."""
    rows = [("SERVICE", "CONTAINER", "STATE", "EXIT", "HEALTH", "NOTE")]
    for state in states:
        exit_text = "" if state.exit_code is None or state.state != "exited" else str(state.exit_code)
        note = "stopped by compose" if state.stopped else state.error or ("failed" if state.failed else "")
        rows.append((state.name, state.container, state.state, exit_text, state.health, note))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
