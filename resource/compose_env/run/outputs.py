"""What a task leaves in its output_dir: report.json, logs/<service>.log, and the artifacts' files.

report.json is the put's response plus what a put cannot carry: every service's state and
containers (read while they still existed), the tests of params.reports, the timings of every
phase, and what became of each artifact.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import docker

from compose_env.redaction import Redactor
from compose_env.run.containers import streamed_archive
from compose_env.run.put import PutOutcome
from compose_env.run.reports import ReportsOutcome

#: Docker reports a container that never finished with this FinishedAt.
NEVER = "0001-01-01T00:00:00Z"


@dataclass
class ArtifactCopy:
    """What became of one artifact; goes into report.json."""

    service: str
    path: str
    to: str
    copied: bool = False
    files: int = 0
    bytes: int = 0
    problem: str = ""
    skipped: list[str] = field(default_factory=list)


class AfterRunRecord(Protocol):
    """What the task's after-run hook found while the containers still existed."""

    containers: dict[str, list[dict[str, Any]]]
    copies: list[ArtifactCopy]
    timings: dict[str, float]


def write_outputs(outcome: PutOutcome, collector: AfterRunRecord, output_dir: Path, redact: Redactor) -> None:
    """report.json and logs/<service>.log (the put already redacted the log files)."""
    logs_dir = output_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    log_files = {}
    for service in outcome.logs.services():
        shutil.copyfile(outcome.logs.path(service), logs_dir / f"{service}.log")
        log_files[service] = f"logs/{service}.log"
    report = build_report(outcome, collector, log_files, redact)
    if outcome.reports is not None:
        report["tests"] = tests_report(outcome.reports, output_dir, redact)
    write_json(output_dir / "report.json", report)


def tests_report(reports: ReportsOutcome, output_dir: Path, redact: Redactor) -> dict[str, Any]:
    """report.json's `tests`: the totals, the files (under reports/), the warnings, and every test."""
    totals = reports.results.totals()
    return {
        "summary": totals.summary() if reports.read else None,
        "passed": totals.passed,
        "failed": totals.failed,
        "errors": totals.errors,
        "skipped": totals.skipped,
        "time": round(totals.time, 3),
        "files": [
            {
                "service": report.service,
                "path": report.container_path,
                "file": str(report.local_path.relative_to(output_dir))
                if report.local_path.is_relative_to(output_dir)
                else None,
                "tests": report.tests,
                "problem": report.problem,
            }
            for report in reports.files
        ],
        "warnings": [redact(warning) for warning in reports.warnings],
        "cases": [
            {
                "name": redact(case.name),
                "status": case.status,
                "time": round(case.time, 3),
                "message": redact(case.message),
            }
            for case in reports.results.cases
        ],
    }


def build_report(
    outcome: PutOutcome, collector: AfterRunRecord, log_files: Mapping[str, str], redact: Redactor
) -> dict[str, Any]:
    result = outcome.result
    services = []
    for state in result.services:
        services.append(
            {
                "name": state.name,
                "state": state.state,
                "exit_code": state.exit_code,
                "health": state.health or None,
                "failed": state.failed,
                "log": log_files.get(state.name),
                "containers": collector.containers.get(state.name, []),
            }
        )
    return {
        **outcome.response,
        "status": result.status,
        "exit_code": result.exit_code,
        "command": [redact(word) for word in result.command],
        "failing_services": result.failing_services,
        "services": services,
        "images": outcome.images,
        "timings": {phase: round(seconds, 3) for phase, seconds in {**outcome.timings, **collector.timings}.items()},
        "logs": dict(log_files),
        "artifacts": [asdict(copy) for copy in collector.copies],
    }


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def extract_stream(chunks: Iterable[bytes], target: Path, copy: ArtifactCopy) -> None:
    """Unpack a streamed tar archive into `target`: constant memory, nothing lands outside `target`.

    tarfile's `data` filter refuses absolute names, `..`, links that lead out and device
    files, and drops owners and setuid bits; a refused entry is skipped and reported.
    """
    with streamed_archive(chunks) as archive:
        for member in archive:
            try:
                archive.extract(member, target, filter="data")
            except tarfile.FilterError as error:
                copy.skipped.append(f"{member.name}: {error}")
                continue
            if member.isfile():
                copy.files += 1
                copy.bytes += member.size


def container_details(client: docker.APIClient, project: str) -> dict[str, list[dict[str, Any]]]:
    """Every container of the project by service: state, exit code, OOM kill, health and timings."""
    details: dict[str, list[dict[str, Any]]] = {}
    for summary in client.containers(all=True, filters={"label": f"com.docker.compose.project={project}"}):
        inspected = client.inspect_container(summary["Id"])
        labels = inspected["Config"]["Labels"] or {}
        state = inspected["State"]
        started, finished = state.get("StartedAt", ""), state.get("FinishedAt", "")
        details.setdefault(labels.get("com.docker.compose.service", "?"), []).append(
            {
                "container": inspected["Name"].lstrip("/"),
                "one_off": labels.get("com.docker.compose.oneoff") == "True",
                "image": inspected["Config"]["Image"],
                "state": state.get("Status", ""),
                "exit_code": state.get("ExitCode"),
                "oom_killed": state.get("OOMKilled", False),
                "health": (state.get("Health") or {}).get("Status"),
                "restarts": inspected.get("RestartCount", 0),
                "started_at": started if started != NEVER else None,
                "finished_at": finished if finished != NEVER else None,
                "duration_seconds": _seconds_between(started, finished),
            }
        )
    return details


def _seconds_between(started: str, finished: str) -> float | None:
    if not started or not finished or NEVER in (started, finished):
        return None
    return round((_parse_time(finished) - _parse_time(started)).total_seconds(), 3)


def _parse_time(text: str) -> datetime:
    """Docker's RFC 3339 times carry nanoseconds; datetime takes microseconds."""
    stamp, _, fraction = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{stamp}.{(fraction + '000000')[:6]}+00:00")
