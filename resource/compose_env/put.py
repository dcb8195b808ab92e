"""One put, top to bottom: config → daemon → images → compose → report, and teardown whatever happens."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import daemon as daemon_module
from . import images as images_module
from .compose import ComposeProject, ServiceLogs
from .config import PutConfig
from .console import Console
from .daemon import RUN_DIR, DaemonHandle, InnerDaemon
from .errors import Aborted
from .redaction import Redactor, secret_env_values
from .report import RunResult, build_response, format_seconds, new_run_id
from .signals import ABORT

#: Called after the run and before teardown, while the containers still exist (task artifacts).
AfterRun = Callable[[ComposeProject, DaemonHandle, RunResult], None]


@dataclass
class PutOutcome:
    response: dict[str, Any]
    result: RunResult
    exit_code: int
    logs: ServiceLogs
    timings: dict[str, float]
    images: list[str] = field(default_factory=list)


def redactor_for(config: PutConfig) -> Redactor:
    secrets = [r.password for r in config.source.registries] + secret_env_values(config.params.env)
    if config.source.tls and config.source.tls.key:
        secrets.append(config.source.tls.key)
    return Redactor(secrets)


def run_put(config: PutConfig, console: Console, redact: Redactor, after_run: AfterRun | None = None) -> PutOutcome:
    started = time.monotonic()
    timings: dict[str, float] = {}
    params = config.params
    logs = ServiceLogs(Path(RUN_DIR) / "service-logs", redact)

    with console.phase("Checking the configuration", timings, "validate"):
        plans = images_module.plan_images(params.images)
        for plan in plans:
            console.info(f"{plan.entry.param_path}: {plan.entry.given} is a {plan.shape} ({plan.size / 2**20:.1f} MiB)")
        project = ComposeProject(params, console, logs)
        project.load_config()
        shape = project.check_command()
        console.info(f"project {params.project_name}: services {', '.join(sorted(project.services())) or 'none'}")

    inner: InnerDaemon | None = None
    handle: DaemonHandle | None = None
    result: RunResult | None = None
    loaded_names: list[str] = []
    aborted = False
    try:
        with console.phase("Starting the Docker daemon", timings, "daemon"):
            if config.source.docker_host:
                handle = daemon_module.connect_remote(config.source, console, f"{RUN_DIR}/docker-config")
            else:
                inner = InnerDaemon(config.source, console)
                placement, driver = inner.prepare(sum(plan.estimated_bytes for plan in plans))
                handle = inner.start(placement, driver, f"{RUN_DIR}/docker-config")
                console.info(f"dockerd {handle.description} ready")
        project.use_engine(handle.env)

        if plans:
            with console.phase(f"Loading {len(plans)} image{'s' if len(plans) > 1 else ''}", timings, "load"):
                if inner is not None:
                    images_module.check_free_space(plans, inner.data_root)
                for image in images_module.load_images(plans, handle.client, handle.load_client, console):
                    loaded_names += image.names
        project.ensure_images(handle.client)

        with console.phase(f"Running docker compose {' '.join(params.command)}", timings, "run"):
            result = project.run(shape, handle.client)
        _print_verdict(console, result)
        if result.status != "passed":
            project.print_failure_details(result, params.logs.tail)
        if after_run is not None:
            after_run(project, handle, result)
    except Aborted:
        aborted = True
        console.error("aborted (SIGTERM): tearing down")
        raise
    finally:
        with ABORT.deferred(), console.phase("Tearing down", timings, "teardown"):
            project.kill()
            if handle is not None:
                problem = project.down(0 if aborted else params.stop_grace)
                if problem:
                    console.warn(f"compose down: {problem}")
                for problem in handle.stop():
                    console.warn(f"teardown: {problem}")
            logs.close()

    duration = time.monotonic() - started
    _print_timings(console, timings, duration)
    response = build_response(
        run_id=new_run_id(config.build.build_id),
        result=_with_log_tails(result, logs, params.logs.tail, params.logs.services),
        duration=duration,
        timings={k: v for k, v in timings.items() if k != "validate"},
        images=loaded_names,
        dockerd=handle.description if handle else "",
        redact=redact,
    )
    exit_code = 0 if result.exit_code == 0 or not params.fail_on_error else 1
    return PutOutcome(response, result, exit_code, logs, timings, loaded_names)


def _with_log_tails(result: RunResult, logs: ServiceLogs, tail: int, services: tuple[str, ...] | None) -> RunResult:
    wanted = services if services is not None else tuple(logs.services())
    result.logs = {name: logs.tail(name, tail) for name in wanted}
    return result


def _print_verdict(console: Console, result: RunResult) -> None:
    text = f"{result.status}: exit code {result.exit_code}"
    if result.services:
        text += " | " + " ".join(s.summary() for s in result.services)
    (console.success if result.status == "passed" else console.error)(text)


def _print_timings(console: Console, timings: dict[str, float], total: float) -> None:
    console.header("Timings")
    for name, seconds in timings.items():
        console.info(f"{name:<10} {format_seconds(seconds):>8}")
    console.info(f"{'total':<10} {format_seconds(total):>8}")
