"""One put, top to bottom: config → daemon → images → compose → report, and teardown whatever happens."""

from __future__ import annotations

import os
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
from compose_env.engine.daemon import InnerDaemon, PreparedStore
from compose_env.engine.diagnosis import error_lines
from compose_env.engine.handle import DOCKER_CONFIG_DIR, RUN_DIR, TLS_DIR, DaemonHandle, connect_remote
from compose_env.errors import Aborted, RuntimeFailure
from compose_env.images import layerstore, store_faults
from compose_env.images import load as images_module
from compose_env.images.layerstore import DirectImage, RootfsImage
from compose_env.images.plan import ImagePlan, check_free_space, local_platform, plan_images
from compose_env.redaction import Redactor, secret_env_values
from compose_env.report import RunResult, build_response, format_seconds, new_run_id
from compose_env.run import junit
from compose_env.run import reports as reports_module
from compose_env.run.command import analyse_command
from compose_env.run.containers import service_container
from compose_env.run.logs import ServiceLogs
from compose_env.run.project import ComposeProject
from compose_env.run.reports import ReportsOutcome
from compose_env.signals import AbortOnSignal

#: compose down's deadline after SIGTERM, inside Concourse's 10 s before SIGKILL: with an inner
#: daemon its stop (a few seconds at most) must still fit, and the goal is clean within 5 s.
ABORT_DOWN_SECONDS = {"inner": 3.0, "remote": 7.0}
#: compose down's deadline after a normal run, on top of params.stop_grace.
NORMAL_DOWN_SECONDS = 20.0

#: How layerstore wrote an image: from layer blobs (False) or from a rootfs directory (True).
HOW_WRITTEN = {
    False: "inflated, checked against the config's diff_ids, extracted",
    True: "archived and extracted by GNU tar, with metadata.json's env and user",
}
#: Failing tests named in the build log, each with the first line of its message (all are in the reports).
FAILING_TESTS_IN_LOG = 100
#: Called after the run and before teardown, while the containers still exist (task artifacts).
AfterRun = Callable[[ComposeProject, DaemonHandle, RunResult], None]
#: Called with the validated project before anything starts: more checks of the caller's own.
CheckProject = Callable[[ComposeProject], None]
#: Inputs by their plan's key (its index in params.images, as a string: layerstore's keys too), with the image layerstore writes.
Written = dict[str, tuple[ImagePlan, DirectImage | RootfsImage]]


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
        params, kept_run = keep_run_container(config.params, {entry.service for entry in config.params.reports} | set(files_from), console)
        project = ComposeProject(params, console, logs, env)
        project.load_config()
        shape = project.check_command()
        reports_module.check_services(params.reports, project.all_services())
        if check_project is not None:
            check_project(project)
        console.info(f"project {params.project_name}: services {', '.join(sorted(project.services())) or 'none'}")

    inner: InnerDaemon | None = None
    handle: DaemonHandle | None = None
    result: RunResult | None = None
    loaded: list[images_module.LoadedImage] = []
    loaded_names: list[str] = []
    reports: ReportsOutcome | None = None
    aborted = False
    try:
        direct: Written = {}
        cached: Written = {}
        with console.phase("Starting the Docker daemon", timings, "daemon"):
            if config.source.docker_host:
                _prepare_loads(plans)
                handle = connect_remote(config.source, console, DOCKER_CONFIG_DIR)
            else:
                inner = InnerDaemon(config.source, console)
                store = inner.prepare(sum(plan.estimated_bytes for plan in plans))
                if plans and store.note:
                    console.info(store.note)
                kept = layerstore.has_images(store.data_root, store.driver)
                direct = _writable_images(plans) if store.writable or kept else {}
                cached = {key: planned for key, planned in direct.items() if _in_store(planned[1], store)}
                direct = {key: planned for key, planned in direct.items() if key not in cached} if store.writable else {}
                _prepare_loads([plan for key, plan in _keyed(plans).items() if key not in cached and key not in direct])
                if direct:
                    console.info("dockerd starts once the images are in its store (see Loading)")
                else:
                    handle = inner.launch(DOCKER_CONFIG_DIR)

        if plans:
            with console.phase(f"Loading {len(plans)} image{'s' if len(plans) > 1 else ''}", timings, "load"):
                handle, loaded = _get_images_in(plans, inner, handle, direct, cached, console, timings)
                loaded_names += [name for image in loaded for name in image.names]
        assert handle is not None
        project.use_engine(handle.env)
        project.ensure_images(handle.client)

        with console.phase(f"Running docker compose {' '.join(params.command)}", timings, "run"):
            result = project.run(shape, handle.client)
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


def _get_images_in(
    plans: list[ImagePlan],
    inner: InnerDaemon | None,
    handle: DaemonHandle | None,
    direct: Written,
    cached: Written,
    console: Console,
    timings: dict[str, float],
) -> tuple[DaemonHandle, list[images_module.LoadedImage]]:
    """Images a kept data root holds are only named; direct writes next (dockerd starts after them), docker load for the rest.

    Returns the images in plan order.
    """
    keyed = _keyed(plans)
    if inner is not None:
        check_free_space([plan for key, plan in keyed.items() if key not in cached], inner.data_root)
    loaded: dict[str, images_module.LoadedImage] = {}
    if inner is not None and direct:
        handle, loaded, launch_seconds = _write_then_launch(inner, direct, console)
        # dockerd's own start is the daemon's time, not loading's
        timings["daemon"] += launch_seconds
        timings["load"] = timings.get("load", 0.0) - launch_seconds
    assert handle is not None
    loaded.update(_name_cached(cached, handle, console))
    rest = {key: plan for key, plan in keyed.items() if key not in loaded}
    spool_dir = os.path.dirname(inner.data_root) if inner is not None else None
    for image in images_module.load_images(list(rest.values()), handle.client, handle.load_client, console, spool_dir=spool_dir):
        loaded[next(key for key, plan in rest.items() if plan.entry is image.entry)] = image
    return handle, [loaded[key] for key in keyed]


def _in_store(image: DirectImage | RootfsImage, store: PreparedStore) -> bool:
    return isinstance(image, DirectImage) and layerstore.holds(store.data_root, store.driver, image)


def _name_cached(cached: Written, handle: DaemonHandle, console: Console) -> dict[str, images_module.LoadedImage]:
    """Name the images the kept data root (a task cache) holds: nothing to load. One dockerd does not list goes to docker load."""
    named: dict[str, images_module.LoadedImage] = {}
    for key, (plan, image) in cached.items():
        assert isinstance(image, DirectImage)
        loaded = images_module.name_written_image(plan, image.image_id, image.repo_tags, handle.client, 0.0, 0)
        if loaded is None:
            console.warn(f"{plan.where}: its files are in the cache but dockerd does not list {image.image_id[:19]}: loading it")
            _prepare_loads([plan])
            continue
        console.info(f"{plan.where}: {image.image_id[:19]} already in the cache → {', '.join(loaded.names) or 'no name'}")
        named[key] = loaded
    return named


def _keyed(plans: list[ImagePlan]) -> dict[str, ImagePlan]:
    """The plans by their key: their index in params.images, as a string (layerstore's keys)."""
    return {str(number): plan for number, plan in enumerate(plans)}


def _prepare_loads(plans: list[ImagePlan]) -> None:
    """Start what these plans, which go through docker load, can do before the daemon answers."""
    for plan in plans:
        if plan.prepare is not None:
            plan.prepare()


def _writable_images(plans: list[ImagePlan]) -> Written:
    """The plans layerstore can write, by their key; the rest go through docker load."""
    platform = local_platform()
    writable = {}
    for key, plan in _keyed(plans).items():
        image = plan.direct(platform) if plan.direct is not None else None
        if image is not None:
            writable[key] = (plan, image)
    return writable


def _write_then_launch(inner: InnerDaemon, direct: Written, console: Console) -> tuple[DaemonHandle, dict[str, images_module.LoadedImage], float]:
    """Write the images into the store, start dockerd on it, check and name them; returns dockerd, the images by plan, and its start time.

    Never worse than docker load: an image that could not be written goes to docker load (it left
    nothing in the store). A store that may hold half-registered entries, a dockerd that does not
    start on it, or a written image it does not take as written: dockerd starts again on an emptied
    data root and every input goes through docker load.
    """
    write = layerstore.write_images({key: image for key, (_plan, image) in direct.items()}, inner.data_root)
    store_faults.inject(inner.data_root, write)
    for key, (plan, _image) in direct.items():
        if write.images[key].problem is not None and not write.damaged:
            console.warn(f"{plan.where}: not written into the store directly ({write.images[key].problem}): loading it with docker load")
    accepted = {key: (plan, image) for key, (plan, image) in direct.items() if write.images[key].problem is None}
    if write.damaged:
        culprits = [plan.where for key, (plan, _image) in direct.items() if write.images[key].left_entries] or [plan.where for plan, _image in direct.values()]
        _fall_back(console, direct, f"{', '.join(culprits)}: the store may hold half-registered entries ({write.damaged})", "emptying the data root")
        inner.empty_data_root()
        accepted = {}
    _prepare_loads([plan for key, (plan, _image) in direct.items() if key not in accepted])
    launched = time.monotonic()
    checked = 0.0
    try:
        handle = inner.launch(DOCKER_CONFIG_DIR)
        launch_seconds = time.monotonic() - launched
        refused = _refused_image(handle, accepted, write)
        checked = time.monotonic() - launched - launch_seconds
    except RuntimeFailure as failure:
        if not accepted:
            raise
        launch_seconds = time.monotonic() - launched
        refused = ("", f"dockerd did not start on the written store ({_start_failure(failure)})")
    if refused is not None:
        key, reason = refused
        where = direct[key][0].where if key else ", ".join(plan.where for plan, _image in accepted.values())
        _fall_back(console, accepted, f"{where}: {reason}", "restarting dockerd on an emptied data root")
        _prepare_loads([plan for plan, _image in accepted.values()])
        restarted = time.monotonic()
        handle = inner.relaunch_clean(DOCKER_CONFIG_DIR)
        console.info(f"dockerd restarted on an emptied data root in {time.monotonic() - restarted:.2f}s")
        launch_seconds += time.monotonic() - restarted
        accepted = {}
    written: dict[str, images_module.LoadedImage] = {}
    for key, (plan, image) in accepted.items():
        result = write.images[key]
        loaded = images_module.name_written_image(plan, result.image_id, image.repo_tags, handle.client, result.seconds, result.size)
        layers = f"{result.layers} layer{'s' if result.layers > 1 else ''}"
        console.info(
            f"{plan.where}: {layers}, {result.size / 2**20:.1f} MiB, written into the overlay2 store in {result.seconds:.2f}s"
            f" ({HOW_WRITTEN[isinstance(image, RootfsImage)]}) → {', '.join(loaded.names) or loaded.image_id[:19]}"
        )
        written[key] = loaded
    if written:
        count = f"{len(written)} image{'s' if len(written) > 1 else ''}"
        console.info(f"{count} written in {write.seconds:.2f}s in all (layers several at once) before dockerd started, checked in {checked:.2f}s after")
    return handle, written, launch_seconds


def _refused_image(handle: DaemonHandle, accepted: Written, write: layerstore.StoreWrite) -> tuple[str, str] | None:
    """The first written image dockerd does not take as written, with why; None when it takes them all."""
    for key in accepted:
        result = write.images[key]
        problem = images_module.verify_written_image(handle.client, result.image_id, result.diff_ids)
        if problem:
            return key, problem
    return None


def _start_failure(failure: RuntimeFailure) -> str:
    """dockerd's own last error line when its log has one, else our message."""
    errors = error_lines(failure.diagnosis)
    if not errors:
        return failure.message.removeprefix("the inner Docker daemon did not start: ")
    line = errors[-1].strip()
    return line.split('msg="', 1)[1].rstrip('"') if 'msg="' in line else line


def _fall_back(console: Console, inputs: Written, reason: str, action: str) -> None:
    """The one warning line of a complete fallback: its reason, what happens, and the inputs that now go through docker load."""
    loaded = ", ".join(plan.entry.param_path for plan, _image in inputs.values())
    console.warn(f"direct writes given up: {reason}; {action}, then docker load for {loaded}")


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
    at once (killed at once with none), dockerd and containerd stop, what is left in our cgroups
    is killed, our mounts are undone. A daemon that failed or was aborted while starting has no
    project to take down: only the stop runs. `aborted`: the put was; `abort` tells of a SIGTERM
    that comes during the teardown itself (it shortens the waits).
    """
    project.kill()
    if handle is not None and _down_matters(inner, grace, aborted):
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
    if inner is not None:
        problems = inner.stop(0 if aborted or abort.received else grace)
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
    and for a data root that outlives the put (a task cache, a data_root of the user's).
    """
    if inner is None or inner.keeps_data_root:
        return True
    return grace > 0 and not aborted


def _within(seconds: float, function: Callable[[], str], abort_seconds: float, abort: AbortOnSignal) -> str | None:
    """function()'s result, or None when it takes longer than `seconds` (it is left to finish alone).

    A SIGTERM that arrives meanwhile (deferred during teardown) shortens the wait to
    `abort_seconds` from the start, so the rest of the cleanup still fits before SIGKILL.
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
