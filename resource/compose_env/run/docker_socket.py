"""`params.docker_socket`: services given the environment's engine, for tests that start their own containers.

Testcontainers (Java, Go, Python, Node, .NET) and any Docker API client in a service need the
engine's socket. The put writes a compose override, passed after the user's files, that gives each
named service:

- the inner engine's socket, bound at `/var/run/docker.sock`, and `DOCKER_HOST` pointing at it;
- `TESTCONTAINERS_RYUK_DISABLED=true`, unless the service or `params.env` sets it: Ryuk's image
  would have to be pulled, and the engine with everything started through it goes at teardown anyway.

Nothing else is needed for a mapped port: every binding, inside a container with the socket
(`/.dockerenv`) and `DOCKER_HOST` on a unix socket, connects to its network's default gateway,
which is this container, where the inner engine publishes the ports (see the README's
"Tests that start containers"). The user's compose file stays as it is for local development.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import requests

from compose_env.config.schema import did_you_mean
from compose_env.console import Console
from compose_env.engine.daemon_argv import DOCKER_SOCKET
from compose_env.engine.handle import RUN_DIR
from compose_env.errors import RuntimeFailure, UserError
from compose_env.run.project import ComposeProject
from compose_env.run.socket_watch import SocketWatch

#: Where services find the engine (what Docker clients and Testcontainers look for by default).
SERVICE_SOCKET = "/var/run/docker.sock"
RYUK_SWITCH = "TESTCONTAINERS_RYUK_DISABLED"
OVERRIDE_FILE = Path(RUN_DIR) / "docker-socket.compose.yml"
#: The socket the services get: the engine's, forwarded through socket_watch.py, which notes the pulls they ask for.
WATCHED_SOCKET = Path(RUN_DIR) / "docker-socket-watch.sock"


def check_services(wanted: Sequence[str], known: Mapping[str, Any], root: str) -> None:
    """Every name is a service of the project (a typo would cost a whole run): unknown ones all named, with a
    did-you-mean."""
    problems = []
    for index, name in enumerate(wanted):
        if name not in known:
            close = did_you_mean(name, sorted(known))
            hint = f"did you mean {close!r}?" if close else f"services: {', '.join(sorted(known)) or 'none'}"
            problems.append((f"{root}[{index}]", f"unknown service {name!r}", hint))
    if problems:
        raise UserError.many(problems)


def override(
    wanted: Sequence[str], services: Mapping[str, Any], env: Mapping[str, str], socket_path: str
) -> dict[str, Any]:
    """The compose override for the `wanted` services (`services`: compose config's view of them); `socket_path`: what
    they get."""
    document: dict[str, Any] = {"services": {}}
    for name in wanted:
        environment: dict[str, str] = {"DOCKER_HOST": f"unix://{SERVICE_SOCKET}"}
        if RYUK_SWITCH not in ((services.get(name) or {}).get("environment") or {}):
            environment[RYUK_SWITCH] = env.get(RYUK_SWITCH, "true")
        socket = {"type": "bind", "source": socket_path, "target": SERVICE_SOCKET}
        document["services"][name] = {"volumes": [socket], "environment": environment}
    return document


def write_override(document: Mapping[str, Any], path: Path) -> Path:
    """The override as a compose file (JSON is YAML)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2))
    return path


def describe(document: Mapping[str, Any], path: Path) -> str:
    services = document["services"]
    settings = sorted(
        {f"{key}={value}" for service in services.values() for key, value in service["environment"].items()}
    )
    given = f"its socket at {SERVICE_SOCKET}, {', '.join(settings)}"
    return f"params.docker_socket: {', '.join(services)} get the engine: {given} ({path}, after the compose files)"


def give_engine(project: ComposeProject, console: Console) -> SocketWatch:
    """Check the services, start the socket they get, write the override and pass it to every later compose command."""
    params = project.params
    known = project.services_for(params.docker_socket)
    check_services(params.docker_socket, known, "params.docker_socket")
    watch = SocketWatch(WATCHED_SOCKET, DOCKER_SOCKET)
    watch.start()
    document = override(params.docker_socket, known, params.env, str(WATCHED_SOCKET))
    try:
        path = write_override(document, OVERRIDE_FILE)
    except OSError as error:
        watch.close()
        raise RuntimeFailure(
            f"params.docker_socket: cannot write the compose override {OVERRIDE_FILE}: {error}"
        ) from None
    project.add_compose_file(path)
    console.info(describe(document, path))
    return watch


def report_failed_pulls(watch: SocketWatch, client: docker.APIClient, console: Console, *, failed: bool) -> list[str]:
    """Images the services asked the engine to pull and it does not have (no registry answered, or none has them).

    Each is named in the log; returns the diagnoses for the put's last line (none when the run passed).
    """
    missing = []
    for reference in watch.pulls():
        try:
            client.inspect_image(reference)
        except docker.errors.NotFound:
            missing.append(reference)
        except (docker.errors.DockerException, requests.RequestException):
            continue  # cannot tell: say nothing rather than something wrong
    say = console.error if failed else console.warn
    for reference in missing:
        say(
            f"{'error' if failed else 'warning'}: a params.docker_socket service asked the engine to pull "
            f"{reference}, which did not arrive"
            " (no registry answers here, or it has no such image)"
        )
    if not missing:
        return []
    names = ", ".join(missing)
    fix = (
        f"pass {names} in params.images (e.g. a registry-image get with params: {{format: oci}}):"
        " nothing is pulled then"
    )
    console.info(f"hint: {fix}")
    return [f"the tests asked for {', '.join(missing)}, which could not be pulled: {fix}"] if failed else []
