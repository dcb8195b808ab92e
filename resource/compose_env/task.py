"""Task mode (`/opt/resource/task`): the same put, plus outputs a put cannot have.

Configuration comes from the COMPOSE_ENV variable: put params plus optional
`source`, `output_dir` and `artifacts`. Concourse JSON-encodes object-valued task
params, so the variable holds a JSON object (sometimes encoded twice).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import docker

from .compose import ComposeProject, analyse_command
from .config import BuildMetadata, PutConfig, parse_put_request
from .console import Console
from .daemon import DaemonHandle
from .errors import UserError
from .put import PutOutcome, redactor_for, run_put
from .report import RunResult
from .schema import validate

TASK_KEYS = ("source", "output_dir", "artifacts")
DEFAULT_OUTPUT_DIR = "compose-env-output"


@dataclass(frozen=True)
class Artifact:
    service: str
    path: str
    to: str


def parse_task_env(env: Mapping[str, str]) -> dict[str, Any]:
    raw = env.get("COMPOSE_ENV")
    if raw is None or not raw.strip():
        raise UserError("COMPOSE_ENV", "is not set", "give the put params as a task param: params: {COMPOSE_ENV: {compose_files: [...]}}")
    try:
        value: Any = json.loads(raw)
        if isinstance(value, str):
            value = json.loads(value)
    except json.JSONDecodeError as error:
        raise UserError("COMPOSE_ENV", f"is not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(value, dict):
        raise UserError("COMPOSE_ENV", f"must be a JSON object, got {type(value).__name__}")
    validate({k: v for k, v in value.items() if k in TASK_KEYS}, "task_config", "COMPOSE_ENV")
    return value


def parse_artifacts(raw: list[dict[str, str]]) -> list[Artifact]:
    return [Artifact(item["service"], item["path"], item.get("to") or f"artifacts/{item['service']}") for item in raw]


def run_task(env: Mapping[str, str], work_dir: Path, stderr: TextIO) -> int:
    task_config = parse_task_env(env)
    params = {k: v for k, v in task_config.items() if k not in TASK_KEYS}
    artifacts = parse_artifacts(task_config.get("artifacts", []))
    output_dir = work_dir / task_config.get("output_dir", DEFAULT_OUTPUT_DIR)
    for index, artifact in enumerate(artifacts):
        target = (output_dir / artifact.to).resolve()
        if not target.is_relative_to(output_dir.resolve()):
            raise UserError(f"COMPOSE_ENV.artifacts[{index}].to", f"{artifact.to!r} leads outside output_dir")
    config = parse_put_request({"source": task_config.get("source") or {}, "params": params}, work_dir, BuildMetadata.from_env(env))
    redact = redactor_for(config)
    console = Console(stderr, redact)
    output_dir.mkdir(parents=True, exist_ok=True)

    services = {a.service for a in artifacts}
    config = _keep_run_container(config, services, console)

    def copy_artifacts(project: ComposeProject, handle: DaemonHandle, result: RunResult) -> None:
        for artifact in artifacts:
            copy_artifact(handle.client, project.params.project_name, artifact, output_dir, console)

    outcome = run_put(config, console, redact, after_run=copy_artifacts if artifacts else None)
    write_outputs(outcome, output_dir)
    console.info(f"wrote {output_dir}/report.json and {len(outcome.logs.services())} service logs")
    return outcome.exit_code


def _keep_run_container(config: PutConfig, services: set[str], console: Console) -> PutConfig:
    """`run --rm S` would delete S's container before its artifacts are copied: drop `--rm` (teardown removes it)."""
    command = config.params.command
    if command and command[0] == "run" and "--rm" in command and services:
        console.info("artifacts are copied from the run container: keeping it until teardown (ignoring --rm)")
        kept = tuple(word for index, word in enumerate(command) if not (word == "--rm" and index < _service_index(command)))
        return replace(config, params=replace(config.params, command=kept))
    return config


def _service_index(command: tuple[str, ...]) -> int:
    service = analyse_command(command).run_service
    return command.index(service) if service in command else len(command)


def _service_container(client: docker.APIClient, project: str, service: str) -> str | None:
    containers = client.containers(all=True, filters={"label": [f"com.docker.compose.project={project}", f"com.docker.compose.service={service}"]})
    if not containers:
        return None
    return max(containers, key=lambda c: c.get("Created", 0))["Id"]


def copy_artifact(client: docker.APIClient, project: str, artifact: Artifact, output_dir: Path, console: Console) -> None:
    container = _service_container(client, project, artifact.service)
    if container is None:
        console.warn(f"artifact {artifact.path} of {artifact.service}: no container of that service")
        return
    try:
        stream, _stat = client.get_archive(container, artifact.path)
        data = io.BytesIO(b"".join(stream))
    except docker.errors.NotFound:
        console.warn(f"artifact {artifact.path} of {artifact.service}: no such path in the container")
        return
    target = output_dir / artifact.to
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=data) as archive:
        archive.extractall(target, filter="data")
    console.info(f"artifact {artifact.service}:{artifact.path} → {target}")


def write_outputs(outcome: PutOutcome, output_dir: Path) -> None:
    logs_dir = output_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    for service in outcome.logs.services():
        shutil.copyfile(outcome.logs.path(service), logs_dir / f"{service}.log")
    result = outcome.result
    report = {
        **outcome.response,
        "status": result.status,
        "exit_code": result.exit_code,
        "command": list(result.command),
        "services": [{"name": s.name, "state": s.state, "exit_code": s.exit_code, "health": s.health or None, "failed": s.failed} for s in result.services],
        "failing_services": result.failing_services,
        "images": outcome.images,
        "timings": {k: round(v, 3) for k, v in outcome.timings.items()},
    }
    (output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
