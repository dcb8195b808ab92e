"""Task mode (`/opt/resource/task`): the same put, plus the outputs a put cannot have.

Configuration comes from the COMPOSE_ENV variable: the put params plus optional
`source`, `output_dir` and `artifacts`. Concourse JSON-encodes object-valued task
params; a value given as a string (`fly execute` reads it from the local environment)
may itself hold JSON, so the variable is decoded once or twice.

The run is `put.run_put`, as for `out`. Only two things are added: a hook that runs
while the containers still exist (container details, artifacts copied out), and the
files written into `output_dir` afterwards (outputs.py): report.json, logs/<service>.log,
artifacts, and the params.reports files under reports/ (run_put copies them there).
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import docker

from compose_env.config.model import BuildMetadata, PutConfig, deep_merge, parse_put_request
from compose_env.config.schema import default_at, subschema, validate
from compose_env.console import Console
from compose_env.engine.cache import CacheConfig, TaskCache, parse_size
from compose_env.engine.handle import DaemonHandle
from compose_env.errors import Aborted, DaemonStartFailure, RuntimeFailure, UserError
from compose_env.images.layerstore import NO_HOOKS, StoreHooks
from compose_env.redaction import Redactor, secrets_in_request
from compose_env.report import RunResult
from compose_env.run.command import services_started
from compose_env.run.containers import service_container
from compose_env.run.outputs import ArtifactCopy, container_details, extract_stream, write_json, write_outputs
from compose_env.run.project import ComposeProject
from compose_env.run.put import PutExtras, PutOutcome, PutWorld, redactor_for, run_put
from compose_env.signals import AbortOnSignal

ROOT = "COMPOSE_ENV"
TASK_KEYS = ("source", "output_dir", "artifacts", "cache_dir", "cache_max_size")
DEFAULT_OUTPUT_DIR: str = default_at("task_config", "output_dir")
DEFAULT_ARTIFACTS_DIR: str = subschema("task_config", "artifacts", "to")["x-default-folder"]
DEFAULT_MAX_SIZE: str = default_at("task_config", "cache_max_size")
#: Where params.reports files go in the output: reports/<service>/<their path in the container>.
REPORTS_DIR = "reports"
USAGE_HINT = "in the task config: params: {COMPOSE_ENV: {compose_files: [code/docker-compose.yml], ...}}"


@dataclass(frozen=True)
class Artifact:
    """`artifacts[index]`: copy `path` out of a container of `service` into `output_dir/to`."""

    index: int
    service: str
    path: str
    to: str

    @property
    def param_path(self) -> str:
        return f"{ROOT}.artifacts[{self.index}]"


@dataclass(frozen=True)
class TaskConfig:
    put: PutConfig
    output_dir: Path
    artifacts: tuple[Artifact, ...] = ()
    cache: CacheConfig | None = None


# ---------------------------------------------------------------- configuration


def decode_compose_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The COMPOSE_ENV object, whether Concourse encoded it once or it was a JSON string encoded again."""
    raw = env.get(ROOT)
    if raw is None or not raw.strip():
        raise UserError(ROOT, "is not set: the task takes its configuration from this variable", USAGE_HINT)
    value: Any = raw
    for _ in range(2):
        if not isinstance(value, str):
            break
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise UserError(
                ROOT, f"is not valid JSON ({error.msg} at line {error.lineno} column {error.colno})", USAGE_HINT
            ) from None
    if not isinstance(value, dict):
        kind = "a string" if isinstance(value, str) else type(value).__name__
        raise UserError(ROOT, f"must be a JSON object of put params, got {kind}", USAGE_HINT)
    return value


def validate_compose_env(value: Mapping[str, Any]) -> None:
    """Every schema check, without touching the file system (the pipeline example's test uses it too)."""
    validate(dict(value), "task_config", ROOT)
    source_params = (value.get("source") or {}).get("params") or {}
    params = deep_merge(source_params, {k: v for k, v in value.items() if k not in TASK_KEYS})
    validate(params, "put_params", ROOT)


def parse_task_config(value: Mapping[str, Any], work_dir: Path, build: BuildMetadata) -> TaskConfig:
    validate_compose_env(value)
    output_dir = _inside(
        work_dir, value.get("output_dir", DEFAULT_OUTPUT_DIR), f"{ROOT}.output_dir", "the task's working directory"
    )
    artifacts = tuple(
        Artifact(index, item["service"], item["path"], item.get("to") or f"{DEFAULT_ARTIFACTS_DIR}/{item['service']}")
        for index, item in enumerate(value.get("artifacts", ()))
    )
    for artifact in artifacts:
        _inside(output_dir, artifact.to, f"{artifact.param_path}.to", "output_dir")
    params = {k: v for k, v in value.items() if k not in TASK_KEYS}
    try:
        put = parse_put_request({"source": value.get("source") or {}, "params": params}, work_dir, build)
    except UserError as error:
        raise in_task_terms(error) from None
    reports = tuple(replace(entry, param_path=task_path(entry.param_path)) for entry in put.params.reports)
    put = replace(put, params=replace(put.params, reports=reports))
    cache = parse_cache(value, work_dir, output_dir)
    if cache is not None:
        # The inner dockerd keeps its data root in the cache, on disk (a tmpfs would not outlive the task).
        put = replace(
            put,
            source=replace(
                put.source, dockerd=replace(put.source.dockerd, data_root=str(cache.data_root), data_root_medium="disk")
            ),
        )
    return TaskConfig(put, output_dir, artifacts, cache)


def parse_cache(value: Mapping[str, Any], work_dir: Path, output_dir: Path) -> CacheConfig | None:
    """`cache_dir` and `cache_max_size`, refused where they cannot work (another data root, a remote engine)."""
    if "cache_dir" not in value:
        if "cache_max_size" in value:
            raise UserError(
                f"{ROOT}.cache_max_size",
                "is only used with cache_dir",
                "set cache_dir (a directory declared under the task's caches:) or remove it",
            )
        return None
    path = _inside(work_dir, value["cache_dir"], f"{ROOT}.cache_dir", "the task's working directory")
    if path == Path(os.path.realpath(work_dir)) or path == output_dir or output_dir.is_relative_to(path):
        raise UserError(
            f"{ROOT}.cache_dir",
            f"{value['cache_dir']!r} must be a directory of its own",
            "use the path of the task's cache, e.g. compose-env-cache",
        )
    source = value.get("source") or {}
    clashing = [f"source.{key}" for key in ("docker_host",) if key in source]
    clashing += [
        f"source.dockerd.{key}" for key in ("data_root", "data_root_medium") if key in (source.get("dockerd") or {})
    ]
    if clashing:
        raise UserError(
            f"{ROOT}.cache_dir",
            f"cannot be used with {ROOT}.{clashing[0]}: the cache is the inner dockerd's data root",
            "remove one of them",
        )
    max_size = parse_size(value.get("cache_max_size", DEFAULT_MAX_SIZE), f"{ROOT}.cache_max_size")
    return CacheConfig(path, max_size)


def _inside(base: Path, given: str, path: str, what: str) -> Path:
    """`base/given`, refusing anything that leads out of `base` (symlinks followed)."""
    target = Path(os.path.realpath(base / given))
    if not target.is_relative_to(os.path.realpath(base)):
        raise UserError(path, f"{given!r} leads outside {what}", "use a relative path without '..'")
    return target


def task_path(path: str) -> str:
    """The put names `params.images[0]`; here the user wrote `COMPOSE_ENV.images[0]`."""
    if path == "params" or path.startswith(("params.", "params[")):
        return ROOT + path[len("params") :]
    if path.startswith("source"):
        return f"{ROOT}.{path}"
    return path


def in_task_terms(error: UserError) -> UserError:
    """A put's error in the task's words: `COMPOSE_ENV` paths, the task's working directory and inputs."""

    def reword(text: str) -> str:
        return text.replace("put directory", "task's working directory").replace(
            "the put's `inputs`", "the task's `inputs`"
        )

    return UserError.many([(task_path(path), reword(message), reword(hint)) for path, message, hint in error.problems])


# ---------------------------------------------------------------- the run


class TaskEnding(StrEnum):
    """report.json's `status` when there is no run to report (else it is the run's, report.RunStatus)."""

    ERROR = "error"
    ABORTED = "aborted"


def run_task(
    env: Mapping[str, str],
    work_dir: Path,
    console: Console,
    abort: AbortOnSignal,
    store_hooks: StoreHooks | None = None,
) -> int:
    value = decode_compose_env(env)
    # Mask the secrets before validation can echo them.
    console.set_redactor(Redactor(secrets_in_request({"source": value.get("source"), "params": value})))
    task = parse_task_config(value, work_dir, BuildMetadata.from_env(env))
    redact = redactor_for(task.put)
    console.set_redactor(redact)
    if not task.output_dir.is_dir():
        console.warn(
            f"{task.output_dir} does not exist: creating it (declare it as a task output to keep what is written there)"
        )
    task.output_dir.mkdir(parents=True, exist_ok=True)
    collector = AfterRunCollector(task, console)
    report_file = task.output_dir / "report.json"
    try:
        with ExitStack() as stack:
            cache = None
            if task.cache is not None:
                cache = TaskCache(task.cache, console)
                stack.enter_context(cache.locked())
                cache.check()
            outcome = run_with_cache(task, console, redact, collector, cache, env, abort, store_hooks)
    except UserError as error:
        renamed = in_task_terms(error)
        write_json(
            report_file, {"status": TaskEnding.ERROR, "exit_code": renamed.exit_code, "error": redact(renamed.render())}
        )
        raise renamed from None
    except RuntimeFailure as error:
        write_json(
            report_file, {"status": TaskEnding.ERROR, "exit_code": error.exit_code, "error": redact(error.render())}
        )
        raise
    except Aborted:
        # Concourse keeps the outputs of an aborted task too: say what happened.
        write_json(report_file, {"status": TaskEnding.ABORTED, "exit_code": Aborted.exit_code})
        raise
    write_outputs(outcome, collector, task.output_dir, redact)
    copied = sum(copy.copied for copy in collector.copies)
    reports = f", {len(outcome.reports.read)} test reports in {REPORTS_DIR}/" if outcome.reports is not None else ""
    console.info(
        f"wrote report.json, logs/ for {len(outcome.logs.services())} services{reports} and {copied} of "
        f"{len(task.artifacts)} artifacts to {task.output_dir}"
    )
    if outcome.exit_code != 0:
        console.error(
            f"the task fails: {outcome.result.status} (exit code {outcome.result.exit_code}); set fail_on_error: "
            "false to report it instead"
        )
    return outcome.exit_code


def run_with_cache(
    task: TaskConfig,
    console: Console,
    redact: Redactor,
    collector: AfterRunCollector,
    cache: TaskCache | None,
    env: Mapping[str, str],
    abort: AbortOnSignal,
    store_hooks: StoreHooks | None = None,
) -> PutOutcome:
    """The put; with a cache, also its after-run pruning, and one more try on a fresh cache if dockerd refused it."""

    def after_run(project: ComposeProject, handle: DaemonHandle, result: RunResult) -> None:
        collector(project, handle, result)
        if cache is not None:
            with console.phase("Keeping the cache", collector.timings, "cache"):
                services = project.all_services()
                started = services_started(project.shape, services)
                cache.after_run(
                    handle.client,
                    project.params.project_name,
                    [services[name]["image"] for name in started if services[name].get("image")],
                )

    def run() -> PutOutcome:
        return run_put(
            task.put,
            console,
            redact,
            env,
            abort,
            PutExtras(
                after_run,
                collector.check_services,
                {artifact.service for artifact in task.artifacts},
                task.output_dir / REPORTS_DIR,
            ),
            PutWorld(store_hooks=store_hooks or NO_HOOKS),
        )

    if cache is None:
        return run()
    try:
        return run()
    except DaemonStartFailure as error:
        cache.wipe(f"dockerd did not start on it ({error.message})")
        cache.write_marker()
        return run()


class AfterRunCollector:
    """put's after_run hook: runs after the command, before teardown, while the containers still exist."""

    def __init__(self, task: TaskConfig, console: Console) -> None:
        self.task = task
        self.console = console
        self.containers: dict[str, list[dict[str, Any]]] = {}
        self.copies: list[ArtifactCopy] = []
        self.timings: dict[str, float] = {}

    def __call__(self, project: ComposeProject, handle: DaemonHandle, result: RunResult) -> None:
        name = project.params.project_name
        try:
            self.containers = container_details(handle.client, name)
        except docker.errors.APIError as error:
            self.console.warn(f"could not inspect the containers for report.json: {error.explanation or error}")
        if not self.task.artifacts:
            return
        count = len(self.task.artifacts)
        with self.console.phase(f"Copying {count} artifact{'s' if count > 1 else ''}", self.timings, "artifacts"):
            self._copy_all(handle.client, name)

    def _copy_all(self, client: docker.APIClient, project: str) -> None:
        """Every artifact (check_services made sure each names a service, whatever its profile)."""
        for artifact in self.task.artifacts:
            copy = self._copy(client, project, artifact)
            self.copies.append(copy)
            if copy.copied:
                skipped = f" ({len(copy.skipped)} unsafe entries skipped)" if copy.skipped else ""
                where = os.path.normpath(f"{self.task.output_dir.name}/{copy.to}")
                count = f"{copy.files} file{'s' if copy.files != 1 else ''}"
                self.console.info(
                    f"{artifact.service}:{artifact.path} → {where}/: {count}, {_human_size(copy.bytes)}{skipped}"
                )
            else:
                self.console.warn(f"{artifact.param_path}: {artifact.service}:{artifact.path}: {copy.problem}")
            for entry in copy.skipped:
                self.console.warn(f"{artifact.param_path}: skipped {entry}")

    def _copy(self, client: docker.APIClient, project: str, artifact: Artifact) -> ArtifactCopy:
        copy = ArtifactCopy(artifact.service, artifact.path, artifact.to)
        try:
            container = service_container(client, project, artifact.service)
            if container is None:
                copy.problem = "no container of that service (it did not run)"
                return copy
            target = _inside(self.task.output_dir, artifact.to, f"{artifact.param_path}.to", "output_dir")
            chunks, _stat = client.get_archive(container, artifact.path)
            target.mkdir(parents=True, exist_ok=True)
            extract_stream(chunks, target, copy)
        except docker.errors.NotFound:
            copy.problem = "no such file or directory in the container (did the tests get far enough to write it?)"
        except (docker.errors.APIError, tarfile.TarError, OSError, UserError) as error:
            copy.problem = f"copy failed: {error}"
        else:
            copy.copied = True
        return copy

    def check_services(self, project: ComposeProject) -> None:
        """Before any service starts: every artifact names a service of the project (a typo would cost a whole run)."""
        if not self.task.artifacts:
            return
        known = sorted(project.all_services())
        unknown = [a for a in self.task.artifacts if a.service not in known]
        if unknown:
            raise UserError.many(
                [
                    (
                        f"{a.param_path}.service",
                        f"{a.service!r} is not a service of the project",
                        f"services: {', '.join(known) or 'none'}",
                    )
                    for a in unknown
                ]
            )


def _human_size(size: int) -> str:
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"
