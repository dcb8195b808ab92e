"""The Docker engine a put talks to, running: its handle and clients, registry logins.

An inner daemon (`engine.daemon`, which waits for it with `ping`) and an existing engine
(`source.docker_host`, `engine.remote`) are both a `RunningEngine` with the same `DaemonHandle`, so
the later steps never know which one they talk to; only the teardown asks.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from dataclasses import dataclass
from typing import Protocol

import docker

from compose_env.config.model import RegistryLogin

RUN_DIR = "/run/compose-env"
#: Private DOCKER_CONFIG (registry logins) and client certificates: removed at teardown.
DOCKER_CONFIG_DIR = f"{RUN_DIR}/docker-config"
TLS_DIR = f"{RUN_DIR}/tls"
API_TIMEOUT = 30


@dataclass
class DaemonHandle:
    """The engine in use, and everything the later steps need to talk to it."""

    docker_host: str
    env: dict[str, str]
    client: docker.APIClient
    load_client: docker.APIClient
    description: str


class RunningEngine(Protocol):
    """An engine serving the put; the one state of an engine that stops."""

    @property
    def handle(self) -> DaemonHandle: ...

    @property
    def remote(self) -> bool: ...

    def compose_down_matters(self, grace: float, aborted: bool) -> bool:
        """Whether `compose down` does anything the engine's stop does not."""
        ...

    def stop(self, grace: float, *, down_done: bool = False) -> list[str]:
        """Bounded and idempotent: problems met, as lines for the log."""
        ...


def write_docker_config(registries: tuple[RegistryLogin, ...], directory: str) -> str:
    """A DOCKER_CONFIG with the logins, so compose can pull without `docker login` (no password printed)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    auths = {}
    for registry in registries:
        token = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
        auths[registry.host] = {"auth": token}
        if registry.host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
            auths["https://index.docker.io/v1/"] = {"auth": token}
    path = os.path.join(directory, "config.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"auths": auths}, handle)
    return directory


def make_clients(
    base_url: str, tls: docker.tls.TLSConfig | bool = False, version: str = "auto"
) -> tuple[docker.APIClient, docker.APIClient]:
    """A client for short calls, and one without a read timeout for image loads."""
    client = docker.APIClient(base_url=base_url, version=version, timeout=API_TIMEOUT, tls=tls)
    load_client = docker.APIClient(base_url=base_url, version=client.api_version, timeout=None, tls=tls)
    return client, load_client


def ping(socket_path: str, timeout: float) -> str | None:
    """GET /_ping on the unix socket: the API version when it answers 200, else None.

    dockerd creates its listener early and serves only when ready, so the request waits
    in the backlog and returns the moment the API is up: no polling interval to lose.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(socket_path)
            conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            response = b""
            while b"\r\n\r\n" not in response:
                chunk = conn.recv(1024)
                if not chunk:
                    break
                response += chunk
    except OSError:
        return None
    head = response.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
    if not head or not head[0].startswith("HTTP/1.") or " 200" not in head[0]:
        return None
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in head[1:])}
    return headers.get("api-version", "auto")
