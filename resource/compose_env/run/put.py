"""One put, top to bottom: configuration, engine, project, images, run, reports; and the teardown, whatever happens.

`run_put` reads as the phases; each is a method of `PutRun`, which holds what the phases hand on.
Its collaborators come through `PutWorld` (the real ones by default): tests pass fakes through the
same door, with no module patched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import docker

from compose_env.config.model import ImageEntry, PutConfig, PutParams, Source
from compose_env.console import Console
from compose_env.engine.budget import BUDGET, TeardownBudget
from compose_env.engine.daemon import InnerDaemon, PreparedDaemon
from compose_env.engine.handle import DOCKER_CONFIG_DIR, RUN_DIR, TLS_DIR, DaemonHandle, RunningEngine
from compose_env.engine.remote import connect_remote
from compose_env.errors import Aborted
from compose_env.images import load as images_module
from compose_env.images.layerstore import NO_HOOKS, StoreHooks
from compose_env.images.plan import ImagePlan, plan_images
from compose_env.redaction import Redactor, secret_env_values
from compose_env.report import RunResult, RunStatus, build_response, format_seconds, new_run_id
from compose_env.run import docker_socket, junit
from compose_env.run import reports as reports_module
from compose_env.run.command import CommandShape, analyse_command
from compose_env.run.containers import service_container
from compose_env.run.intake import REAL_IMAGE_OPS, ImageIntake, ImageOps
from compose_env.run.logs import ServiceLogs
from compose_env.run.project import ComposeProject
from compose_env.run.reports import ReportsOutcome
from compose_env.run.socket_watch import SocketWatch
from compose_env.run.teardown import teardown
from compose_env.signals import AbortOnSignal

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


@dataclass(frozen=True)
class PutExtras:
    """What a task adds to a put: a hook after the run and one on the project, files to copy out, where reports go."""

    after_run: AfterRun | None = None
    check_project: CheckProject | None = None
    files_from: Collection[str] = ()
    reports_dir: Path | None = None


@dataclass(frozen=True)
class PutWorld:
    """The put's collaborators; tests hand in fakes here."""

    inner_daemon: Callable[[Source, Console], InnerDaemon] = InnerDaemon
    connect_remote: Callable[[Source, Console, str], RunningEngine] = connect_remote
    compose_project: Callable[[PutParams, Console, ServiceLogs, Mapping[str, str]], ComposeProject] = ComposeProject
    plan_images: Callable[[tuple[ImageEntry, ...]], list[ImagePlan]] = plan_images
    image_ops: ImageOps = REAL_IMAGE_OPS
    store_hooks: StoreHooks = NO_HOOKS
    run_dir: str = RUN_DIR
    #: Registry logins and client certificates: removed at teardown.
    secrets_dirs: tuple[str, ...] = (DOCKER_CONFIG_DIR, TLS_DIR)
    budget: TeardownBudget = BUDGET


REAL_WORLD = PutWorld()


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
    extras: PutExtras = PutExtras(),
    world: PutWorld = REAL_WORLD,
) -> PutOutcome:
    """The put; `env`: our environment (compose inherits it); `abort`: the SIGTERM handler."""
    put = PutRun(config, console, redact, env, abort, extras, world)
    put.check_configuration()
    try:
        put.start_engine()
        put.check_project()
        put.get_images_in()
        put.run_command()
        put.after_the_run()
    except Aborted:
        put.aborted = True
        console.error("aborted (SIGTERM): tearing down")
        raise
    finally:
        put.tear_down()
    return put.outcome(redact)


class PutRun:
    """One put's state, handed on from phase to phase."""

    def __init__(
        self,
        config: PutConfig,
        console: Console,
        redact: Redactor,
        env: Mapping[str, str],
        abort: AbortOnSignal,
        extras: PutExtras,
        world: PutWorld,
    ) -> None:
        self.config, self.console, self.env, self.abort, self.extras, self.world = (
            config,
            console,
            env,
            abort,
            extras,
            world,
        )
        self.started = time.monotonic()
        self.timings: dict[str, float] = {}
        self.logs = ServiceLogs(Path(world.run_dir) / "service-logs", redact)
        self.params = config.params
        self.plans: list[ImagePlan] = []
        self.kept_run: str | None = None
        self.starting: InnerDaemon | None = None
        self.prepared: PreparedDaemon | None = None
        self.engine: RunningEngine | None = None
        self.watch: SocketWatch | None = None
        self.shape: CommandShape | None = None
        self.result: RunResult | None = None
        self.loaded: list[images_module.LoadedImage] = []
        self.reports: ReportsOutcome | None = None
        self.aborted = False
        self.duration = 0.0

    def check_configuration(self) -> None:
        """The images planned (shape, names, size) and the project set up: all before anything starts."""
        with self.console.phase("Checking the configuration", self.timings, "validate"):
            self.plans = self.world.plan_images(self.params.images)
            for plan in self.plans:
                self.console.info(
                    f"{plan.entry.param_path}: {plan.entry.given} is a {plan.shape} ({plan.size / 2**20:.1f} MiB)"
                )
                if plan.warning:
                    self.console.warn(plan.warning)
            needed = {entry.service for entry in self.params.reports} | set(self.extras.files_from)
            self.params, self.kept_run = keep_run_container(self.params, needed, self.console)
            self.project = self.world.compose_project(self.params, self.console, self.logs, self.env)
            self.intake = ImageIntake(self.plans, self.console, self.world.store_hooks, self.world.image_ops)
            self.console.info("docker compose config checks the project while the daemon starts")

    def start_engine(self) -> None:
        """The engine to talk to: a remote one as it is; an inner one prepared, and launched now unless images go into
        its store first."""
        self.project.start_config()
        with self.console.phase("Starting the Docker daemon", self.timings, "daemon"):
            source = self.config.source
            if source.docker_host:
                self.intake.remote()
                self.engine = self.world.connect_remote(source, self.console, DOCKER_CONFIG_DIR)
                return
            self.starting = self.world.inner_daemon(source, self.console)
            self.prepared = self.starting.prepare(
                sum(plan.estimated_bytes for plan in self.plans), loads_images=bool(self.plans)
            )
            if self.intake.choose(self.prepared):
                self.console.info("dockerd starts once the images are in its store (see Loading)")
            else:
                self.engine = self.prepared.launch(DOCKER_CONFIG_DIR)

    def check_project(self) -> None:
        """compose's answer read, the command's services and the reports' checked; docker_socket's override written."""
        with self.console.phase("Checking the compose project", self.timings, "validate"):
            self.project.load_config()
            self.shape = self.project.check_command()
            if self.params.reports:
                reports_module.check_services(self.params.reports, self.project.all_services())
            if self.params.docker_socket:
                self.watch = docker_socket.give_engine(self.project, self.console)
            if self.extras.check_project is not None:
                self.extras.check_project(self.project)
            self.console.info(
                f"project {self.params.project_name}: services {', '.join(sorted(self.project.services())) or 'none'}"
            )

    def get_images_in(self) -> None:
        if self.plans:
            count = len(self.plans)
            data_root = self.prepared.store.data_root if self.prepared is not None else None
            with self.console.phase(f"Loading {count} image{'s' if count > 1 else ''}", self.timings, "load"):
                try:
                    if self.engine is not None:
                        intake = self.intake.into_running(self.engine, data_root)
                    else:
                        intake = self.intake.into_prepared(self._prepared())
                finally:
                    # launched, then a failure (a damaged input, say): it runs, so it is stopped, not abandoned
                    self.engine = self.engine or self.intake.launched
                self.loaded = intake.loaded
            # dockerd's own start is the daemon's time, not loading's
            self.timings["daemon"] += intake.launch_seconds
            self.timings["load"] -= intake.launch_seconds
        engine = self._engine()
        self.project.use_engine(engine.handle.env)
        self.project.ensure_images(engine.handle.client)

    def run_command(self) -> None:
        engine, shape = self._engine(), self.shape
        assert shape is not None
        with self.console.phase(f"Running docker compose {' '.join(self.params.command)}", self.timings, "run"):
            result = self.result = self.project.run(shape, engine.handle.client)
        if self.watch is not None:
            result.diagnoses += docker_socket.report_failed_pulls(
                self.watch, engine.handle.client, self.console, failed=result.status != RunStatus.PASSED
            )
        # Reported as the user wrote it; the log shows the argv that ran (without a dropped --rm).
        result.command = tuple(self.config.params.command)
        _print_verdict(self.console, result)
        if result.status != RunStatus.PASSED:
            self.project.print_failure_details(result, self.params.logs.tail)

    def after_the_run(self) -> None:
        """Reports read, the caller's after-run hook (task artifacts), the kept run container removed: while the
        containers exist."""
        engine, result = self._engine(), self.result
        assert result is not None
        if self.params.reports:
            target = self.extras.reports_dir or Path(self.world.run_dir) / "reports"
            self.reports = _read_reports(self.params, engine.handle.client, target, result, self.console, self.timings)
        if self.extras.after_run is not None:
            self.extras.after_run(self.project, engine.handle, result)
        if self.kept_run is not None:
            _remove_run_container(engine.handle.client, self.params.project_name, self.kept_run, self.console)

    def tear_down(self) -> None:
        with self.abort.deferred(), self.console.phase("Tearing down", self.timings, "teardown"):
            if self.watch is not None:
                self.watch.close()
            grace = 0 if self.aborted else self.params.stop_grace
            world = self.world
            teardown(
                self.project,
                self.engine,
                self.starting,
                self.console,
                grace,
                self.aborted,
                self.abort,
                world.secrets_dirs,
                world.budget,
            )
            self.logs.close()
        self.duration = time.monotonic() - self.started
        _print_timings(self.console, self.timings, self.duration, self.loaded)

    def outcome(self, redact: Redactor) -> PutOutcome:
        result, engine, params = self.result, self.engine, self.params
        assert result is not None and engine is not None
        names = [name for image in self.loaded for name in image.names]
        response = build_response(
            run_id=new_run_id(self.config.build.build_id),
            result=_with_log_tails(result, self.logs, params.logs.tail, params.logs.services),
            duration=self.duration,
            timings={k: v for k, v in self.timings.items() if k != "validate"},
            images=names,
            dockerd=engine.handle.description,
            redact=redact,
            tests=_tests_summary(self.reports) if self.reports is not None else None,
            failed_tests=[case.name for case in self.reports.results.failing] if self.reports is not None else (),
            budget=params.logs.metadata_bytes,
        )
        exit_code = 0 if result.exit_code == 0 or not params.fail_on_error else 1
        return PutOutcome(response, result, exit_code, self.logs, self.timings, names, self.reports)

    def _engine(self) -> RunningEngine:
        assert self.engine is not None, "the engine runs from the images phase on"
        return self.engine

    def _prepared(self) -> PreparedDaemon:
        assert self.prepared is not None, "an inner daemon waits for its images only once prepared"
        return self.prepared


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


def _read_reports(
    params: PutParams,
    client: docker.APIClient,
    target: Path,
    result: RunResult,
    console: Console,
    timings: dict[str, float],
) -> ReportsOutcome:
    """params.reports copied and read; then the failing tests, each with the first line of its message."""
    count = len(params.reports)
    with console.phase(f"Reading {count} test report entr{'ies' if count > 1 else 'y'}", timings, "reports"):
        reports = reports_module.collect_reports(client, params.project_name, params.reports, target)
        for report in reports.read:
            console.info(
                f"{report.service}:{report.container_path}: {report.tests} test{'s' if report.tests != 1 else ''}"
            )
        failing = reports.results.failing
        if failing and result.exit_code == 0:
            reports.warnings.append(
                f"the reports show {len(failing)} failing test{'s' if len(failing) > 1 else ''} but the command "
                "exited 0:"
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
        console.warn(
            f"could not remove the run container of {service} ({error.explanation or error}): teardown removes it"
        )


def _with_log_tails(result: RunResult, logs: ServiceLogs, tail: int, services: tuple[str, ...] | None) -> RunResult:
    wanted = services if services is not None else tuple(logs.services())
    result.logs = {name: logs.tail(name, tail) for name in wanted}
    return result


def _print_verdict(console: Console, result: RunResult) -> None:
    text = f"{result.status}: exit code {result.exit_code}"
    if result.services:
        text += " | " + " ".join(s.summary() for s in result.services)
    (console.success if result.status == RunStatus.PASSED else console.error)(text)


def _print_timings(
    console: Console, timings: dict[str, float], total: float, loaded: list[images_module.LoadedImage]
) -> None:
    console.header("Timings")
    for name, seconds in timings.items():
        console.info(f"{name:<10} {format_seconds(seconds):>8}")
        if name == "load" and len(loaded) > 1:
            for image in loaded:
                console.info(
                    f"  {image.entry.given:<30} {format_seconds(image.seconds):>8}  {image.size / 2**20:.0f} MiB"
                )
    console.info(f"{'total':<10} {format_seconds(total):>8}")
