"""Run the compose command like a test runner: validated first, streamed live, exit codes you can trust, always torn down."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import docker

from .config import PutParams
from .console import Console
from .daemon import die_with_parent
from .errors import UserError
from .images import split_reference
from .report import RunResult, ServiceState

TIMED_OUT_EXIT_CODE = 124
#: Exit codes of a container stopped by compose's cascade (SIGTERM, then SIGKILL).
STOPPED_BY_SIGNAL = {137, 143}
PREFIX = re.compile(r"^(?P<service>[A-Za-z0-9][A-Za-z0-9_.-]*?)(?:-\d+)?\s+\| ?(?P<text>.*)$")
#: `run` options that take a value: needed to find the service among the arguments.
RUN_VALUE_OPTIONS = {
    "-e",
    "--env",
    "--entrypoint",
    "-l",
    "--label",
    "--name",
    "-p",
    "--publish",
    "-u",
    "--user",
    "-v",
    "--volume",
    "-w",
    "--workdir",
    "--cap-add",
    "--cap-drop",
    "--pull",
    "--env-from-file",
}
UP_VALUE_OPTIONS = {"--exit-code-from", "-t", "--timeout", "--scale", "--attach", "--no-attach", "--pull", "--wait-timeout"}


@dataclass(frozen=True)
class CommandShape:
    """What the user's command is, as far as reporting needs to know."""

    subcommand: str
    services: tuple[str, ...]
    exit_code_from: str | None = None
    run_service: str | None = None


def analyse_command(command: Sequence[str]) -> CommandShape:
    if not command:
        return CommandShape("", ())
    subcommand, args = command[0], list(command[1:])
    value_options = RUN_VALUE_OPTIONS if subcommand == "run" else UP_VALUE_OPTIONS if subcommand == "up" else set()
    positionals: list[str] = []
    exit_code_from = None
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            positionals += args[index + 1 :]
            break
        if arg.startswith("-"):
            option, has_value, value = arg.partition("=")
            if option in value_options and not has_value:
                value = args[index + 1] if index + 1 < len(args) else ""
                index += 1
            if option == "--exit-code-from":
                exit_code_from = value
            index += 1
            continue
        positionals.append(arg)
        if subcommand == "run":
            break  # the rest is the command run inside the container
        index += 1
    if subcommand == "run":
        service = positionals[0] if positionals else None
        return CommandShape("run", (service,) if service else (), None, service)
    services = tuple(positionals) if subcommand in ("up", "start", "restart", "stop", "logs", "create") else ()
    return CommandShape(subcommand, services + ((exit_code_from,) if exit_code_from and exit_code_from not in services else ()), exit_code_from)


def parse_ps_json(text: str) -> list[dict[str, Any]]:
    """`compose ps --format json`: an array in some 2.x releases, NDJSON in others."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        return list(json.loads(text))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def service_states(rows: Sequence[Mapping[str, Any]]) -> list[ServiceState]:
    states = []
    for row in rows:
        state = str(row.get("State", "")).lower()
        exit_code = row.get("ExitCode")
        states.append(
            ServiceState(str(row.get("Service", row.get("Name", "?"))), state, int(exit_code) if exit_code is not None else None, str(row.get("Health") or ""))
        )
    return sorted(states, key=lambda s: s.name)


@dataclass
class ServiceLogs:
    """Per-service log files, fed by the live stream and completed from the engine after the run."""

    directory: Path
    redact: Callable[[str], str] = lambda text: text
    captured: set[str] = field(default_factory=set)
    _handles: dict[str, IO[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def append(self, service: str, text: str) -> None:
        with self._lock:
            handle = self._handles.get(service)
            if handle is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                handle = self._handles[service] = open(self.directory / f"{_safe(service)}.log", "a")  # noqa: SIM115
                self.captured.add(service)
            handle.write(self.redact(text) + "\n")

    def write_whole(self, service: str, text: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"{_safe(service)}.log").write_text(self.redact(text))

    def close(self) -> None:
        with self._lock:
            for handle in self._handles.values():
                handle.close()
            self._handles.clear()

    def path(self, service: str) -> Path:
        return self.directory / f"{_safe(service)}.log"

    def services(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.log")) if self.directory.is_dir() else []

    def tail(self, service: str, lines: int) -> list[str]:
        if lines <= 0:
            return []
        path = self.path(service)
        if not path.is_file():
            return []
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            end = handle.tell()
            handle.seek(max(end - 64 * 1024, 0))
            text = handle.read().decode(errors="replace")
        return text.splitlines()[-lines:]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


class ComposeProject:
    """One compose project: its argv, its environment, and the engine it runs on."""

    def __init__(self, params: PutParams, console: Console, logs: ServiceLogs) -> None:
        self.params = params
        self.console = console
        self.logs = logs
        self.env = self._environment({})
        self.config: dict[str, Any] = {}
        self._process: subprocess.Popen[bytes] | None = None

    # -- argv and environment

    def _environment(self, daemon_env: Mapping[str, str]) -> dict[str, str]:
        """Our environment without inherited COMPOSE_* / DOCKER_* (they would silently change what runs)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
        env.update(daemon_env)
        env.update(self.params.env)
        env["BUILDKIT_PROGRESS"] = "plain"
        return env

    def use_engine(self, daemon_env: Mapping[str, str]) -> None:
        """From now on talk to this engine (DOCKER_HOST, DOCKER_CONFIG, TLS)."""
        self.env = self._environment(daemon_env)

    def env_files(self) -> list[Path]:
        """params.env_files, or the project's .env named explicitly, so that it is never a silent input."""
        if self.params.env_files:
            return list(self.params.env_files)
        dotenv = self.params.project_directory / ".env"
        return [dotenv] if dotenv.is_file() else []

    def base_argv(self) -> list[str]:
        argv = [
            "docker",
            "compose",
            "--ansi",
            "never",
            "--progress",
            "plain",
            "-p",
            self.params.project_name,
            "--project-directory",
            str(self.params.project_directory),
        ]
        for compose_file in self.params.compose_files:
            argv += ["-f", str(compose_file)]
        for env_file in self.env_files():
            argv += ["--env-file", str(env_file)]
        for profile in self.params.profiles:
            argv += ["--profile", profile]
        return argv

    def _run_quiet(self, args: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.base_argv(), *args], env=self.env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent
        )

    # -- before the run

    def load_config(self) -> dict[str, Any]:
        """`compose config`: validates the files (no engine needed) and tells the services and images."""
        if self.env_files() and not self.params.env_files:
            self.console.info(f"using {self.env_files()[0].name} from the project directory (list params.env_files to choose another)")
        result = self._run_quiet(["config", "--format", "json"])
        if result.returncode != 0:
            message = _compose_error(result.stderr)
            raise UserError(
                "params.compose_files", f"docker compose rejects the project: {message}", "fix the compose file, or the env/env_files/profiles it depends on"
            )
        for line in result.stderr.splitlines():
            if line.strip():
                self.console.warn(line.strip())
        self.config = json.loads(result.stdout)
        return self.config

    def services(self) -> dict[str, Any]:
        return dict(self.config.get("services") or {})

    def check_command(self) -> CommandShape:
        shape = analyse_command(self.params.command)
        known = self.services()
        for service in shape.services:
            if service not in known:
                raise UserError(
                    "params.command",
                    f"unknown service {service!r} in `{' '.join(self.params.command)}`",
                    f"services in the project: {', '.join(sorted(known)) or 'none'}" + ("; a service behind a profile needs params.profiles" if known else ""),
                )
        return shape

    def ensure_images(self, client: docker.APIClient) -> None:
        """Every service image is loaded, buildable or pullable: otherwise say which and how to provide it."""
        missing = []
        for name, service in sorted(self.services().items()):
            image = service.get("image")
            if not image or service.get("build"):
                continue
            try:
                client.inspect_image(image)
                continue
            except docker.errors.ImageNotFound:
                pass
            except docker.errors.APIError:
                pass
            if service.get("pull_policy") in ("never",):
                missing.append((name, image, "pull_policy is never"))
                continue
            self.console.info(f"{image} (service {name}) is not loaded: pulling it")
            reason = _try_pull(client, image, self.env.get("DOCKER_CONFIG"))
            if reason:
                missing.append((name, image, reason))
        if missing:
            lines = "; ".join(f"service {s} needs {i} ({why})" for s, i, why in missing)
            raise UserError(
                "params.images",
                f"image not available: {lines}",
                "add the image's artifact to params.images (with tag: "
                + missing[0][1]
                + " if it carries no name), or give source.registries credentials for it",
            )

    # -- the run

    def run(self, shape: CommandShape, client: docker.APIClient) -> RunResult:
        argv = [*self.base_argv(), *self.params.command]
        self.console.line(f"$ docker compose {' '.join(self.params.command)}")
        process = subprocess.Popen(
            argv, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=die_with_parent, start_new_session=True
        )
        self._process = process
        assert process.stdout is not None and process.stderr is not None
        readers = [
            threading.Thread(target=self._pump, args=(process.stdout, shape, True), daemon=True),
            threading.Thread(target=self._pump, args=(process.stderr, shape, False), daemon=True),
        ]
        for reader in readers:
            reader.start()
        timed_out = False
        try:
            process.wait(timeout=self.params.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            self.console.error(f"timed out after {self.params.timeout:g}s (params.timeout): stopping the run")
            self.kill()
        finally:
            for reader in readers:
                reader.join(5)
            self._process = None
        states = self.states()
        exit_code = TIMED_OUT_EXIT_CODE if timed_out else self._exit_code(shape, process.returncode, states, client)
        status = "timed_out" if timed_out else "passed" if exit_code == 0 else "failed"
        if shape.run_service and not timed_out and shape.run_service not in {s.name for s in states}:
            # `run --rm` removed its container: report what it did from compose's exit code.
            states = sorted([*states, ServiceState(shape.run_service, "exited", exit_code)], key=lambda s: s.name)
        failing = [s.name for s in states if s.failed]
        if shape.run_service and exit_code != 0 and shape.run_service not in failing:
            failing.insert(0, shape.run_service)
        if shape.exit_code_from and exit_code != 0 and shape.exit_code_from not in failing:
            failing.insert(0, shape.exit_code_from)
        self.collect_logs(client)
        return RunResult(tuple(self.params.command), exit_code, status, states, {}, failing)

    def kill(self) -> None:
        """Stop the compose process now (timeout or abort); the containers go at teardown."""
        process = self._process
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _pump(self, stream: IO[bytes], shape: CommandShape, is_stdout: bool) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.console.line(line)
            if not is_stdout:
                continue
            match = PREFIX.match(line) if shape.subcommand != "run" else None
            if match:
                self.logs.append(match.group("service"), match.group("text"))
            elif shape.run_service:
                self.logs.append(shape.run_service, line)

    def _exit_code(self, shape: CommandShape, returncode: int, states: list[ServiceState], client: docker.APIClient) -> int:
        if shape.subcommand != "up":
            return returncode
        by_name = {s.name: s for s in states}
        if shape.exit_code_from:
            # compose 2.26 returns 0 when that service was stopped by the cascade (docker/compose#11712).
            target = by_name.get(shape.exit_code_from)
            if target is not None and target.state == "exited" and target.exit_code is not None:
                return target.exit_code
            return returncode
        if returncode != 0:
            return returncode
        return self._first_own_failure(states, client)

    def _first_own_failure(self, states: list[ServiceState], client: docker.APIClient) -> int:
        """Without --exit-code-from: fail if a container exited non-zero by itself, not by the cascade."""
        exited = [s for s in states if s.state == "exited" and s.exit_code]
        if not exited:
            return 0
        finished = self._finish_times(client)
        first_exit = min(finished.values()) if finished else None
        for state in exited:
            by_itself = state.exit_code not in STOPPED_BY_SIGNAL or (first_exit is not None and finished.get(state.name) == first_exit)
            if by_itself:
                return int(state.exit_code or 1)
        return 0

    def _finish_times(self, client: docker.APIClient) -> dict[str, str]:
        times = {}
        for container in self._containers(client):
            details = client.inspect_container(container["Id"])
            service = details["Config"]["Labels"].get("com.docker.compose.service", "")
            finished = details["State"].get("FinishedAt", "")
            if details["State"].get("Status") == "exited" and finished:
                times[service] = finished
        return times

    def _containers(self, client: docker.APIClient) -> list[dict[str, Any]]:
        return client.containers(all=True, filters={"label": f"com.docker.compose.project={self.params.project_name}"})

    # -- after the run

    def states(self) -> list[ServiceState]:
        try:
            result = self._run_quiet(["ps", "-a", "--format", "json"], timeout=30)
            return service_states(parse_ps_json(result.stdout)) if result.returncode == 0 else []
        except (subprocess.TimeoutExpired, json.JSONDecodeError, OSError):
            return []

    def collect_logs(self, client: docker.APIClient) -> None:
        """Complete the log files with the services the stream did not show (dependencies of `run`)."""
        self.logs.close()
        try:
            containers = self._containers(client)
        except docker.errors.APIError:
            return
        for container in containers:
            service = container["Labels"].get("com.docker.compose.service", "")
            if not service or service in self.logs.captured or container["Labels"].get("com.docker.compose.oneoff") == "True":
                continue
            try:
                text = client.logs(container["Id"], stdout=True, stderr=True).decode(errors="replace")
            except docker.errors.APIError:
                continue
            self.logs.write_whole(service, text)

    def print_failure_details(self, result: RunResult, tail: int) -> None:
        for service in result.failing_services:
            lines = self.logs.tail(service, max(tail, 20))
            self.console.header(f"last {len(lines)} log lines of {service}")
            for line in lines:
                self.console.line(f"    {line}")
        if result.services:
            self.console.header("services")
            self.console.line(f"    {'SERVICE':<24} {'STATE':<12} {'EXIT':<5} HEALTH")
            for state in result.services:
                exit_text = "" if state.exit_code is None or state.state != "exited" else str(state.exit_code)
                self.console.line(f"    {state.name:<24} {state.state:<12} {exit_text:<5} {state.health}")

    def down(self, grace: int) -> str:
        """`down --volumes --remove-orphans`; returns a problem description, or ''."""
        try:
            result = self._run_quiet(["down", "--volumes", "--remove-orphans", "--timeout", str(grace)], timeout=grace + 20)
        except subprocess.TimeoutExpired:
            return "compose down did not finish in time"
        return "" if result.returncode == 0 else _compose_error(result.stderr)


def _compose_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return " / ".join(lines[-3:]) if lines else "no message"


def _try_pull(client: docker.APIClient, image: str, docker_config: str | None) -> str:
    repository, tag = split_reference(image)
    auth = _auth_for(repository, docker_config)
    try:
        for message in client.pull(repository, tag, stream=True, decode=True, auth_config=auth):
            if "error" in message:
                return f"pull failed: {message['error']}"
    except docker.errors.APIError as error:
        return f"pull failed: {error.explanation or error}"
    return ""


def _auth_for(repository: str, docker_config: str | None) -> dict[str, str] | None:
    if not docker_config:
        return None
    try:
        auths = json.loads(Path(docker_config, "config.json").read_text()).get("auths", {})
    except (OSError, json.JSONDecodeError):
        return None
    host = (
        repository.split("/", 1)[0]
        if "/" in repository and ("." in repository.split("/", 1)[0] or ":" in repository.split("/", 1)[0])
        else "https://index.docker.io/v1/"
    )
    entry = auths.get(host)
    if not entry:
        return None
    username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    return {"username": username, "password": password}
