"""One put, top to bottom: config → daemon → images → compose → report, and teardown whatever happens."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import docker

from compose_env.config.model import PutConfig, PutParams
from compose_env.console import Console
from compose_env.engine.daemon import InnerDaemon
from compose_env.engine.handle import DOCKER_CONFIG_DIR, RUN_DIR, TLS_DIR, DaemonHandle, connect_remote
from compose_env.errors import Aborted
from compose_env.images import load as images_module
from compose_env.images.layerstore import NO_HOOKS, StoreHooks
from compose_env.images.plan import plan_images
from compose_env.images.store_format import StoreLayout
from compose_env.redaction import Redactor, secret_env_values
from compose_env.report import RunResult, build_response, format_seconds, new_run_id
from compose_env.run import docker_socket, junit
from compose_env.run import reports as reports_module
from compose_env.run.command import analyse_command
from compose_env.run.containers import service_container
from compose_env.run.intake import Written, by_key, get_images_in, in_store, prepare_loads, writable_images
from compose_env.run.logs import ServiceLogs
from compose_env.run.project import ComposeProject
from compose_env.run.reports import ReportsOutcome
from compose_env.run.socket_watch import SocketWatch
from compose_env.signals import AbortOnSignal

#: compose down's deadline after SIGTERM, inside Concourse's 10 s before SIGKILL: with an inner
#: daemon its stop (a few seconds at most) must still fit, and the goal is clean within 5 s.
ABORT_DOWN_SECONDS = {"inner": 3.0, "remote": 7.0}
#: compose down's deadline after a normal run, on top of params.stop_grace.
NORMAL_DOWN_SECONDS = 20.0

#: Failing tests named in the build log, each with the first line of its message (all are in the reports).
FAILING_TESTS_IN_LOG = 100
#: Called after the run and before teardown, while the containers still exist (task artifacts).
AfterRun = Callable[[ComposeProject, DaemonHandle, RunResult], None]
#: Called with the validated project before any service starts: more checks of the caller's own.
CheckProject = Callable[[ComposeProject], None]


@dataclass
class PutOutcome:
    response: dict[str, Any]
    result: RunResult
    exit_code: int
    logs: ServiceLogs
    timings: dict[str, float]
    images: list[str] = field(default_factory=list)
    reports: ReportsOutcome | None = None


def redactor_for(config: PutConfig) -> Redactor:
    secrets = [r.password for r in config.source.registries] + secret_env_values(config.params.env)
    if config.source.tls and config.source.tls.key:
        secrets.append(config.source.tls.key)
    return Redactor(secrets)


def run_put(
    config: PutConfig,
    console: Console,
    redact: Redactor,
    env: Mapping[str, str],
    abort: AbortOnSignal,
    after_run: AfterRun | None = None,
    check_project: CheckProject | None = None,
    files_from: Collection[str] = (),
    reports_dir: Path | None = None,
    store_hooks: StoreHooks | None = None,
) -> PutOutcome:
    """The put; `env`: our environment (compose inherits it); `abort`: the SIGTERM handler.

    `files_from`: services the caller copies files from in `after_run`; `reports_dir`: where params.reports files go.
    """
    started = time.monotonic()
    timings: dict[str, float] = {}
    logs = ServiceLogs(Path(RUN_DIR) / "service-logs", redact)

    with console.phase("Checking the configuration", timings, "validate"):
        plans = plan_images(config.params.images)
        for plan in plans:
            console.info(f"{plan.entry.param_path}: {plan.entry.given} is a {plan.shape} ({plan.size / 2**20:.1f} MiB)")
            if plan.warning:
                console.warn(plan.warning)
        params, kept_run = keep_run_container(config.params, {entry.service for entry in config.params.reports} | set(files_from), console)
        project = ComposeProject(params, console, logs, env)
        console.info("docker compose config checks the project while the daemon starts")

    inner: InnerDaemon | None = None
    handle: DaemonHandle | None = None
    result: RunResult | None = None
    loaded: list[images_module.LoadedImage] = []
    loaded_names: list[str] = []
    reports: ReportsOutcome | None = None
    aborted = False
    watch: SocketWatch | None = None
    try:
        project.start_config()
        direct: Written = {}
        cached: Written = {}
        with console.phase("Starting the Docker daemon", timings, "daemon"):
            if config.source.docker_host:
                prepare_loads(plans)
                handle = connect_remote(config.source, console, DOCKER_CONFIG_DIR)
            else:
                inner = InnerDaemon(config.source, console)
                store = inner.prepare(sum(plan.estimated_bytes for plan in plans), loads_images=bool(plans))
                if inner.keeps_data_root:
                    StoreLayout(store.data_root, store.driver).remove_partial_layers(console)
                if plans and store.note:
                    console.info(store.note)
                kept = StoreLayout(store.data_root, store.driver).has_images()
                direct = writable_images(plans) if store.writable or kept else {}
                cached = {key: planned for key, planned in direct.items() if in_store(planned[1], store)}
                direct = {key: planned for key, planned in direct.items() if key not in cached} if store.writable else {}
                prepare_loads([plan for key, plan in by_key(plans).items() if key not in cached and key not in direct])
                if direct:
                    console.info("dockerd starts once the images are in its store (see Loading)")
                else:
                    handle = inner.launch(DOCKER_CONFIG_DIR)

        with console.phase("Checking the compose project", timings, "validate"):
            project.load_config()
            shape = project.check_command()
            if params.reports:
                reports_module.check_services(params.reports, project.all_services())
            if params.docker_socket:
                watch = docker_socket.give_engine(project, console)
            if check_project is not None:
                check_project(project)
            console.info(f"project {params.project_name}: services {', '.join(sorted(project.services())) or 'none'}")

        if plans:
            with console.phase(f"Loading {len(plans)} image{'s' if len(plans) > 1 else ''}", timings, "load"):
                handle, loaded = get_images_in(plans, inner, handle, direct, cached, console, timings, store_hooks or NO_HOOKS)
                loaded_names += [name for image in loaded for name in image.names]
        assert handle is not None
        project.use_engine(handle.env)
        project.ensure_images(handle.client)

        with console.phase(f"Running docker compose {' '.join(params.command)}", timings, "run"):
            result = project.run(shape, handle.client)
        if watch is not None:
            result.diagnoses += docker_socket.report_failed_pulls(watch, handle.client, console, failed=result.status != "passed")
        # Reported as the user wrote it; the log shows the argv that ran (without a dropped --rm).
        result.command = tuple(config.params.command)
        _print_verdict(console, result)
        if result.status != "passed":
            project.print_failure_details(result, params.logs.tail)
        if params.reports:
            reports = _read_reports(params, handle.client, reports_dir or Path(RUN_DIR) / "reports", result, console, timings)
        if after_run is not None:
            after_run(project, handle, result)
        if kept_run is not None:
            _remove_run_container(handle.client, params.project_name, kept_run, console)
    except Aborted:
        aborted = True
        console.error("aborted (SIGTERM): tearing down")
        raise
    finally:
        with abort.deferred(), console.phase("Tearing down", timings, "teardown"):
            handle = handle or (inner.handle if inner is not None else None)
            if watch is not None:
                watch.close()
            teardown(project, handle, inner, console, 0 if aborted else params.stop_grace, aborted, abort)
            logs.close()
        duration = time.monotonic() - started
        _print_timings(console, timings, duration, loaded)

    response = build_response(
        run_id=new_run_id(config.build.build_id),
        result=_with_log_tails(result, logs, params.logs.tail, params.logs.services),
        duration=duration,
        timings={k: v for k, v in timings.items() if k != "validate"},
        images=loaded_names,
        dockerd=handle.description if handle else "",
        redact=redact,
        tests=_tests_summary(reports) if reports is not None else None,
        failed_tests=[case.name for case in reports.results.failing] if reports is not None else (),
        budget=params.logs.metadata_bytes,
    )
    exit_code = 0 if result.exit_code == 0 or not params.fail_on_error else 1
    return PutOutcome(response, result, exit_code, logs, timings, loaded_names, reports)


def keep_run_container(params: PutParams, needed: Collection[str], console: Console) -> tuple[PutParams, str | None]:
    """`run --rm S` deletes S's container before its reports or artifacts are copied: drop `--rm`.

    Returns the params to run and the service whose run container must be removed once
    its files are copied (None when nothing changed).
    """
    command = params.command
    service = analyse_command(command).run_service
    if service is None or "--rm" not in command or service not in needed:
        return params, None
    options_end = command.index(service, 1)
    kept = tuple(word for index, word in enumerate(command) if not (word == "--rm" and index < options_end))
    console.info(f"files are copied out of the run container of {service}: keeping it until then (without --rm)")
    return replace(params, command=kept), service


def _read_reports(params: PutParams, client: docker.APIClient, target: Path, result: RunResult, console: Console, timings: dict[str, float]) -> ReportsOutcome:
    """params.reports copied and read; then the failing tests, each with the first line of its message."""
    count = len(params.reports)
    with console.phase(f"Reading {count} test report entr{'ies' if count > 1 else 'y'}", timings, "reports"):
        reports = reports_module.collect_reports(client, params.project_name, params.reports, target)
        for report in reports.read:
            console.info(f"{report.service}:{report.container_path}: {report.tests} test{'s' if report.tests != 1 else ''}")
        failing = reports.results.failing
        if failing and result.exit_code == 0:
            reports.warnings.append(
                f"the reports show {len(failing)} failing test{'s' if len(failing) > 1 else ''} but the command exited 0:"
                " the put's status follows the exit code; check that the test runner's exit code reaches compose"
            )
        for warning in reports.warnings:
            console.warn(warning)
        console.info(f"tests: {_tests_summary(reports)}")
    if failing:
        console.header(f"{len(failing)} failing test{'s' if len(failing) > 1 else ''} (from the JUnit reports)")
        for line in junit.failing_block(failing, FAILING_TESTS_IN_LOG):
            console.error(f"    {line}")
    return reports


def _tests_summary(reports: ReportsOutcome) -> str:
    if not reports.read:
        return "no report could be read (see the warnings in the build log)"
    return reports.results.totals().summary()


def _remove_run_container(client: docker.APIClient, project: str, service: str, console: Console) -> None:
    """The run container kept for its files, removed as `--rm` would have (teardown would otherwise)."""
    container = service_container(client, project, service)
    if container is None:
        return
    try:
        client.remove_container(container, v=True, force=True)
    except docker.errors.APIError as error:
        console.warn(f"could not remove the run container of {service} ({error.explanation or error}): teardown removes it")


def _with_log_tails(result: RunResult, logs: ServiceLogs, tail: int, services: tuple[str, ...] | None) -> RunResult:
    wanted = services if services is not None else tuple(logs.services())
    result.logs = {name: logs.tail(name, tail) for name in wanted}
    return result


def _print_verdict(console: Console, result: RunResult) -> None:
    text = f"{result.status}: exit code {result.exit_code}"
    if result.services:
        text += " | " + " ".join(s.summary() for s in result.services)
    (console.success if result.status == "passed" else console.error)(text)


def teardown(
    project: ComposeProject, handle: DaemonHandle | None, inner: InnerDaemon | None, console: Console, grace: int, aborted: bool, abort: AbortOnSignal
) -> None:
    """The one cleanup for every ending (success, failure, error, SIGTERM), bounded in time.

    `compose down --volumes --remove-orphans` where it matters (see `_down_matters`), with a
    deadline (after SIGTERM it must fit in Concourse's 10 s before SIGKILL, with room for the
    rest). Then, for an inner daemon, its stop: containers still there get `grace` seconds all
    at once (with none they are killed), on a kept data root they are removed (and the volumes
    and networks unless `compose down` finished), dockerd and containerd stop, what is left in
    our cgroups is killed, our mounts are undone. A daemon that failed or was aborted while starting has no
    project to take down: only the stop runs. `aborted`: the put was; `abort` tells of a SIGTERM
    that comes during the teardown itself (it shortens the waits).
    """
    project.kill()
    down_done = False
    if handle is not None and project.started and _down_matters(inner, grace, aborted):
        abort_budget = ABORT_DOWN_SECONDS["inner" if inner else "remote"]
        budget = abort_budget if aborted else grace + NORMAL_DOWN_SECONDS
        started = time.monotonic()
        problem = _within(budget, lambda: project.down(0 if aborted else grace), abort_budget, abort)
        if problem is None:
            console.warn(f"compose down did not finish within {budget:g}s: stopping the engine's containers directly")
        elif problem:
            console.warn(f"compose down: {problem}")
        else:
            console.info(f"compose down --volumes --remove-orphans: {time.monotonic() - started:.2f}s")
            down_done = True
    if inner is not None:
        problems = inner.stop(0 if aborted or abort.received else grace, down_done=down_done)
    elif handle is not None:
        problems = handle.stop()
    else:
        problems = []
    # Registry logins and TLS keys must not outlive the put (`fly intercept` could read them).
    for directory in (DOCKER_CONFIG_DIR, TLS_DIR):
        shutil.rmtree(directory, ignore_errors=True)
    for problem in problems:
        console.warn(f"teardown: {problem}")


def _down_matters(inner: InnerDaemon | None, grace: int, aborted: bool) -> bool:
    """Whether `compose down` does anything the inner daemon's stop does not.

    An inner daemon whose data root is thrown away with the container takes its containers,
    networks and volumes with it: with no grace to give, killing the containers at once is the
    whole job. `compose down` stays for a remote engine, for graceful stops (stop_grace > 0),
    and for a data root that outlives the put (a task cache, a data_root of the user's), but
    not after SIGTERM with an inner daemon: the daemon's stop then removes the containers, volumes
    and networks of a kept data root through the API (`InnerDaemon._stop_containers`), faster
    than compose, and kills the others with the rest.
    """
    if inner is None:
        return True
    if aborted:
        return False
    return inner.keeps_data_root or grace > 0


def _within(seconds: float, function: Callable[[], str], abort_seconds: float, abort: AbortOnSignal) -> str | None:
    """function()'s result, or None when it takes longer than `seconds` (it is left to finish alone).

    A SIGTERM that arrives meanwhile (deferred during teardown) shortens the wait to
    `abort_seconds` from the start, so the rest of the cleanup still fits before SIGKILL.
    Joining a thread is safe here because the signal is deferred: no handler's exception can
    interrupt the join (see concurrency.py for what that does before Python 3.13).
    """
    result: list[str] = []
    worker = threading.Thread(target=lambda: result.append(function()), daemon=True)
    started = time.monotonic()
    worker.start()
    while worker.is_alive():
        limit = started + (min(seconds, abort_seconds) if abort.received else seconds)
        left = limit - time.monotonic()
        if left <= 0:
            break
        worker.join(min(left, 0.1))
    return result[0] if result else None


def _print_timings(console: Console, timings: dict[str, float], total: float, loaded: list[images_module.LoadedImage]) -> None:
    console.header("Timings")
    for name, seconds in timings.items():
        console.info(f"{name:<10} {format_seconds(seconds):>8}")
        if name == "load" and len(loaded) > 1:
            for image in loaded:
                console.info(f"  {image.entry.given:<30} {format_seconds(image.seconds):>8}  {image.size / 2**20:.0f} MiB")
    console.info(f"{'total':<10} {format_seconds(total):>8}")
