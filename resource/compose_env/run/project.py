"""Run the compose command like a test runner: validated first, streamed live, exit codes you can trust, always torn
down.

What compose sees is decided here and only here:
- the argv names everything: `-p`, every `-f`, `--project-directory`, each `--env-file`,
  each `--profile`, `--ansi never`, `--progress plain`;
- the environment is ours minus every inherited `COMPOSE_*`, `DOCKER_*` and `BUILDKIT_*`
  variable, plus `params.env`, plus the engine's address (which `params.env` cannot override);
- the project's `.env` is used only when `params.env_files` is empty (compose's own rule),
  and then it is passed explicitly and announced; `COMPOSE_*` settings found in the env
  files or `params.env` are announced too. Nothing changes what runs without a log line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import docker

from compose_env.config.model import PutParams
from compose_env.console import Console
from compose_env.errors import UserError
from compose_env.images import presence
from compose_env.process import dying_with_parent
from compose_env.report import RunResult, RunStatus, ServiceState
from compose_env.run import compose_errors
from compose_env.run.command import CommandShape, analyse_command, services_started
from compose_env.run.logs import ServiceLogs, compose_label
from compose_env.run.outcome import (
    NOT_CREATED,
    TIMED_OUT_EXIT_CODE,
    decide_exit_code,
    failing_services,
    ps_table,
    service_states,
    with_compose_failures,
)
from compose_env.run.output import CommandOutput
from compose_env.run.states import listed_containers, project_containers, ps_rows, stopped_containers

#: How long a quick compose call (config) may take.
QUIET_TIMEOUT_SECONDS = 60
#: Lines of each failing service printed again after the run (the whole log streamed already).
FAILURE_TAIL_MIN, FAILURE_TAIL_MAX = 20, 200
#: Inherited variables that would change what compose does without anyone asking.
STRIPPED_PREFIXES = ("COMPOSE_", "DOCKER_", "BUILDKIT_")
COMPOSE_SETTING = re.compile(r"^\s*(?:export\s+)?(COMPOSE_[A-Za-z0-9_]+)\s*=")


def compose_environment(
    inherited: Mapping[str, str], params_env: Mapping[str, str], engine_env: Mapping[str, str]
) -> dict[str, str]:
    """Inherited variables minus COMPOSE_*/DOCKER_*/BUILDKIT_*, then params.env, then the engine (which wins)."""
    env = {key: value for key, value in inherited.items() if not key.startswith(STRIPPED_PREFIXES)}
    env.update(params_env)
    env.update(engine_env)
    env["BUILDKIT_PROGRESS"] = "plain"
    return env


def compose_settings_in(path: Path) -> list[str]:
    """COMPOSE_* keys an env file sets (compose reads them as its own settings)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [match.group(1) for match in map(COMPOSE_SETTING.match, lines) if match]


class ComposeProject:
    """One compose project: its argv, its environment, and the engine it runs on; `inherited`: our own environment."""

    def __init__(self, params: PutParams, console: Console, logs: ServiceLogs, inherited: Mapping[str, str]) -> None:
        self.params = params
        self.console = console
        self.logs = logs
        self.redact = logs.redact
        self.inherited = inherited
        self.env = compose_environment(inherited, params.env, {})
        self.config: dict[str, Any] = {}
        self.shape = analyse_command(params.command)
        self._all_services: dict[str, Any] | None = None
        #: Compose files the put writes (run/docker_socket.py), passed after the user's.
        self._added_files: list[Path] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._pending_config: subprocess.Popen[str] | None = None
        self._started = False
        #: compose's output during the run (None before it)
        self._output: CommandOutput | None = None

    # -- argv and environment

    def use_engine(self, engine_env: Mapping[str, str]) -> None:
        """From now on talk to this engine (DOCKER_HOST, DOCKER_CONFIG, TLS)."""
        self.env = compose_environment(self.inherited, self.params.env, engine_env)

    def env_files(self) -> list[Path]:
        """params.env_files, or else the project's .env (compose's default), named explicitly."""
        if self.params.env_files:
            return list(self.params.env_files)
        dotenv = self.params.project_directory / ".env"
        return [dotenv] if dotenv.is_file() else []

    def base_argv(
        self, profiles: Sequence[str] | None = None, compose_files: Sequence[Path] | None = None
    ) -> list[str]:
        argv = ["docker", "compose", "--ansi", "never", "--progress", "plain", "-p", self.params.project_name]
        argv += ["--project-directory", str(self.params.project_directory)]
        for compose_file in (
            [*self.params.compose_files, *self._added_files] if compose_files is None else compose_files
        ):
            argv += ["-f", str(compose_file)]
        for env_file in self.env_files():
            argv += ["--env-file", str(env_file)]
        for profile in self.params.profiles if profiles is None else profiles:
            argv += ["--profile", profile]
        return argv

    def _run_quiet(
        self,
        args: Sequence[str],
        timeout: float = QUIET_TIMEOUT_SECONDS,
        profiles: Sequence[str] | None = None,
        compose_files: Sequence[Path] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            dying_with_parent([*self.base_argv(profiles, compose_files), *args]),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    # -- before the run

    def start_config(self) -> None:
        """Start `compose config` (it needs no engine), so that it runs while the daemon starts; `load_config` takes its
        answer."""
        self._pending_config = subprocess.Popen(
            dying_with_parent([*self.base_argv(self.params.profiles), "config", "--format", "json"]),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # the CLI runs the compose plugin as its own child: killed together, by group
        )

    def load_config(self) -> dict[str, Any]:
        """`compose config`: validates the files (no engine needed) and tells the services and images."""
        self._announce_inputs()
        self.config = self._config(self.params.profiles, self._started_config())
        return self.config

    @property
    def started(self) -> bool:
        """Whether the compose command was started: before it, nothing of the project exists to take down."""
        return self._started

    def _started_config(self, timeout: float = QUIET_TIMEOUT_SECONDS) -> subprocess.CompletedProcess[str] | None:
        """The answer of the `compose config` `start_config` started; on an abort or a timeout it is left to `kill`."""
        process = self._pending_config
        if process is None:
            return None
        stdout, stderr = process.communicate(timeout=timeout)
        self._pending_config = None
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def _announce_inputs(self) -> None:
        if self.env_files() and not self.params.env_files:
            self.console.info(
                f"env file: {self.env_files()[0]} (compose's default .env; list params.env_files to use others instead)"
            )
        for env_file in self.env_files():
            settings = compose_settings_in(env_file)
            if settings:
                self.console.info(
                    f"{env_file.name} sets compose settings: {', '.join(settings)} (-p and -f from params still win)"
                )
        from_params = [key for key in self.params.env if key.startswith(STRIPPED_PREFIXES)]
        if from_params:
            self.console.info(f"params.env sets {', '.join(sorted(from_params))} for compose (engine address excepted)")

    def _config(
        self, profiles: Sequence[str], result: subprocess.CompletedProcess[str] | None = None
    ) -> dict[str, Any]:
        if result is None:
            result = self._run_quiet(["config", "--format", "json"], profiles=profiles)
        if result.returncode != 0:
            hint = "fix the compose file, or the env / env_files / profiles it depends on; nothing was started"
            named = self._rejected_file(result.stderr, profiles)
            if named is not None:
                raise UserError(named.path, self.redact(named.message), hint)
            lines = [self.redact(line.strip()) for line in result.stderr.splitlines() if line.strip()] or [
                "(no message)"
            ]
            raise UserError(
                "params.compose_files", "docker compose rejects the project:\n    " + "\n    ".join(lines), hint
            )
        for line in result.stderr.splitlines():
            if line.strip():
                self.console.warn(line.strip())
        model: dict[str, Any] = json.loads(result.stdout)
        return model

    def _rejected_file(self, error: str, profiles: Sequence[str]) -> compose_errors.RejectedFile | None:
        """The compose or env file `error` is about, named as params name it; None when that cannot be told.

        compose names the file in most errors; for the others (YAML syntax) each compose file is
        checked alone, and the one that fails with the same first line is the culprit.
        """
        labels = self.params.file_labels
        culprit = compose_errors.file_named_in(error, labels)
        compose_files = list(dict.fromkeys(self.params.compose_files))
        if culprit is None and len(compose_files) == 1:
            culprit = compose_files[0]
        elif culprit is None and error.strip():
            wanted = compose_errors.first_line(error, labels)
            for compose_file in compose_files:
                alone = self._run_quiet(
                    ["config", "--quiet", "--no-consistency"], profiles=profiles, compose_files=[compose_file]
                )
                if alone.returncode != 0 and compose_errors.first_line(alone.stderr, labels) == wanted:
                    culprit = compose_file
                    break
        if culprit is None or culprit not in labels:
            return None
        return compose_errors.rejected(error, culprit, labels[culprit])

    def add_compose_file(self, path: Path) -> None:
        """A compose file of the put's own, passed after the user's to every later compose command."""
        self._added_files.append(path)

    def services(self) -> dict[str, Any]:
        """The services of the active profiles."""
        return dict(self.config.get("services") or {})

    def all_services(self) -> dict[str, Any]:
        """Every service, whatever its profile (compose starts a targeted service even if its profile is off)."""
        if self._all_services is None:
            self._all_services = dict(self._config(["*"]).get("services") or {})
        return self._all_services

    def check_command(self) -> CommandShape:
        shape = self.shape
        active = self.services()
        for service in shape.named_services:
            if service in active:
                continue
            every = self.all_services()
            if service not in every:
                raise UserError(
                    "params.command",
                    f"unknown service {service!r} in `{' '.join(self.params.command)}`",
                    f"services in the project: {', '.join(sorted(every)) or 'none'}",
                )
            profiles = ", ".join(every[service].get("profiles") or [])
            self.console.info(
                f"{service} belongs to profile {profiles}: compose starts it because the command names it"
            )
        for index, service in enumerate(self.params.logs.services or ()):
            if service not in active and service not in self.all_services():
                raise UserError(
                    f"params.logs.services[{index}]",
                    f"unknown service {service!r}",
                    f"services in the project: {', '.join(sorted(self.all_services()))}",
                )
        return shape

    def services_for(self, names: Iterable[str]) -> dict[str, Any]:
        """The active services, or every service when one of `names` is behind a profile (compose starts it anyway)."""
        active = self.services()
        return active if all(name in active for name in names) else {**self.all_services(), **active}

    def ensure_images(self, client: docker.APIClient) -> None:
        """Every image the command needs is loaded, buildable or pullable: otherwise say which and how to provide it."""
        services = self.services_for(self.shape.named_services)
        presence.ensure_images(
            client, services, services_started(self.shape, services), self.console, self.env.get("DOCKER_CONFIG")
        )

    # -- the run

    def run(self, shape: CommandShape, client: docker.APIClient) -> RunResult:
        """The command, its output streamed and filed, within params.timeout; then what it came to."""
        argv = [*self.base_argv(), *self.params.command]
        self.console.info("$ " + " ".join(shlex.quote(word) for word in argv))
        since = time.time()
        self._started = True
        process = subprocess.Popen(
            dying_with_parent(argv),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._process = process
        assert process.stdout is not None and process.stderr is not None
        output = self._output = CommandOutput(
            self.console, self.logs, shape, set(self.services_for(shape.named_services))
        )
        readers = output.follow(process.stdout, process.stderr)
        timed_out = False
        try:
            try:
                process.wait(timeout=self.params.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                self.console.error(f"timed out after {self.params.timeout:g}s (params.timeout): stopping the run")
                self.kill()
        except BaseException:
            self.kill()  # aborted: compose must not outlive us, and the readers end with it
            raise
        finally:
            output.drain(readers)
            self._process = None
        return self._result(shape, client, process.returncode, output, since, timed_out)

    def _result(
        self,
        shape: CommandShape,
        client: docker.APIClient,
        returncode: int,
        output: CommandOutput,
        since: float,
        timed_out: bool,
    ) -> RunResult:
        """The exit code to report, each service's state, who failed: from compose, its output and the engine."""
        project = self.params.project_name
        containers = listed_containers(client, project, self.console)
        followed = [c for c in containers if shape.follows_output_of(compose_label(c, "service"))]
        output.complete_from_engine_log(followed, client)
        states = service_states(
            ps_rows(client, containers, self.console), stopped_containers(client, project, since, self.console)
        )
        failures = output.progress.failures() if returncode and not timed_out else []
        states = with_compose_failures(states, failures, project, self.services())
        exit_code = TIMED_OUT_EXIT_CODE if timed_out else decide_exit_code(shape, returncode, states)
        if shape.run_service and not timed_out and shape.run_service not in {s.name for s in states}:
            # `run --rm` removed its container: what it did is compose's exit code (none if a dependency failed first).
            ran = (
                ServiceState(shape.run_service, NOT_CREATED)
                if failures
                else ServiceState(shape.run_service, "exited", exit_code)
            )
            states = sorted([*states, ran], key=lambda s: (s.name, s.container))
        for failure in failures:
            if failure.reason:
                self.logs.append(failure.service(project, self.services()), failure.reason)
        status = RunStatus.TIMED_OUT if timed_out else RunStatus.PASSED if exit_code == 0 else RunStatus.FAILED
        self.collect_logs(client)
        failing = failing_services(shape, exit_code, states, timed_out)
        diagnoses = list(output.start_failures) if exit_code else []
        return RunResult(tuple(self.params.command), exit_code, status, states, {}, failing, diagnoses)

    def kill(self) -> None:
        """Stop the compose processes now (timeout, abort, or a failure before the config was read); the containers go
        at teardown."""
        process = self._process
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pending, self._pending_config = self._pending_config, None
        if pending is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pending.pid, signal.SIGKILL)
            try:
                pending.communicate(timeout=2)
            except subprocess.TimeoutExpired:  # something else holds its pipes: not waited for
                pass

    # -- after the run

    def collect_logs(self, client: docker.APIClient) -> None:
        """Complete the log files with the services the stream did not show (the dependencies of `run`)."""
        self.logs.close()
        try:
            containers = project_containers(client, self.params.project_name)
        except docker.errors.APIError:
            return
        for container in containers:
            labels = container.get("Labels") or {}
            service = labels.get("com.docker.compose.service", "")
            if not service or service in self.logs.captured or labels.get("com.docker.compose.oneoff") == "True":
                continue
            try:
                text = client.logs(container["Id"], stdout=True, stderr=True).decode(errors="replace")
            except docker.errors.APIError:
                continue
            self.logs.write_whole(service, text)

    def print_failure_details(self, result: RunResult, tail: int) -> None:
        """Each failing service's last lines, then a ps table: what a reader needs to see why."""
        for service in result.failing_services:
            lines = self.logs.tail(service, min(max(tail, FAILURE_TAIL_MIN), FAILURE_TAIL_MAX))
            self.console.header(f"last {len(lines)} log lines of {service}")
            for line in lines:
                self.console.line(f"    {line}")
        if result.services:
            self.console.header("services (as docker compose ps -a shows them)")
            for row in ps_table(result.services):
                self.console.line(f"    {row}")
        for port in sorted(self._output.ports_taken if self._output else ()):
            publishers = ", ".join(publishers_of(self.services(), port)) or "unknown"
            self.console.error(
                f"error: host port {port} is published twice or already taken on the worker (services {publishers}): "
                "change or remove one of the published ports in the compose file"
            )
        if not self.params.fail_on_error:  # else the put's last line says it
            for diagnosis in result.diagnoses:
                self.console.error(f"diagnosis: {diagnosis}")

    def down(self, grace: int) -> str:
        """`down --volumes --remove-orphans` with a short stop timeout; returns a problem description, or ''."""
        try:
            result = self._run_quiet(
                ["down", "--volumes", "--remove-orphans", "--timeout", str(grace)], timeout=grace + 20, profiles=["*"]
            )
        except subprocess.TimeoutExpired:
            return "compose down did not finish in time"
        if result.returncode == 0:
            return ""
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        return " / ".join(lines[-3:]) or f"exit code {result.returncode}"


def publishers_of(services: Mapping[str, Any], port: str) -> list[str]:
    """The services whose `ports` publish `port` on the host (from `compose config --format json`)."""
    return sorted(
        name
        for name, service in services.items()
        if any(str(p.get("published", "")) == port for p in service.get("ports") or [])
    )
