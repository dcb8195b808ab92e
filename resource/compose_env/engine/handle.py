"""The Docker engine a put talks to: its handle and clients, registry logins, and remote mode.

An inner daemon (`engine.daemon`, which waits for it with `ping`) and an existing engine (`source.docker_host`, here) end in
the same `DaemonHandle`, so the later steps never know which one they talk to.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import docker

from compose_env.config.model import RegistryLogin, Source
from compose_env.console import Console
from compose_env.errors import RuntimeFailure

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
    stop: Callable[[], list[str]] = field(default=lambda: [])


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


def make_clients(base_url: str, tls: docker.tls.TLSConfig | bool = False, version: str = "auto") -> tuple[docker.APIClient, docker.APIClient]:
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


def remote_tls(source: Source, cert_dir: str) -> tuple[docker.tls.TLSConfig | bool, dict[str, str]]:
    """TLS for docker-py and the same settings as DOCKER_* variables for the CLI (compose)."""
    if not source.tls:
        return False, {}
    os.makedirs(cert_dir, mode=0o700, exist_ok=True)
    for name, value in (("ca.pem", source.tls.ca), ("cert.pem", source.tls.cert), ("key.pem", source.tls.key)):
        if value:
            fd = os.open(os.path.join(cert_dir, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(value)
    client_cert = (f"{cert_dir}/cert.pem", f"{cert_dir}/key.pem") if source.tls.cert and source.tls.key else None
    verify = bool(source.tls.ca)
    tls = docker.tls.TLSConfig(client_cert=client_cert, ca_cert=f"{cert_dir}/ca.pem" if verify else None, verify=verify)
    env = {"DOCKER_CERT_PATH": cert_dir, "DOCKER_TLS_VERIFY" if verify else "DOCKER_TLS": "1"}
    return tls, env


def connect_remote(source: Source, console: Console, config_dir: str) -> DaemonHandle:
    """`source.docker_host`: use that engine, start nothing; compose down is the whole cleanup."""
    assert source.docker_host
    cert_dir = TLS_DIR
    tls, tls_env = remote_tls(source, cert_dir)
    env = {"DOCKER_HOST": source.docker_host, "DOCKER_CONFIG": write_docker_config(source.registries, config_dir), **tls_env}
    base_url = source.docker_host.replace("tcp://", "https://", 1) if source.tls else source.docker_host
    deadline = time.monotonic() + source.startup_timeout
    while True:
        try:
            client, load_client = make_clients(base_url, tls)
            info = client.info()
            break
        except Exception as error:
            if time.monotonic() > deadline:
                raise RuntimeFailure(
                    f"source.docker_host: cannot reach the engine at {source.docker_host}",
                    f"{error}\ncheck the address, that the engine listens there, and source.tls",
                ) from None
            time.sleep(0.5)
    description = f"remote {info.get('ServerVersion', '?')} {info.get('Driver', '?')} at {source.docker_host}"
    console.info(f"using the engine at {source.docker_host} (source.docker_host): Docker {info.get('ServerVersion')}, storage driver {info.get('Driver')}")
    console.info("no inner daemon: nothing started, compose down is the whole cleanup")

    # Nothing to stop: put's teardown removes the certificates and the logins.
    return DaemonHandle(source.docker_host, env, client, load_client, description)
