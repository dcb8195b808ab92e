"""`source.docker_host`: an existing engine, used as it is.

Nothing is started, and compose down is the whole cleanup.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import docker

from compose_env.config.model import Source
from compose_env.console import Console
from compose_env.engine.handle import TLS_DIR, DaemonHandle, make_clients, write_docker_config
from compose_env.errors import RuntimeFailure


@dataclass
class RemoteEngine:
    """An engine of the user's: it keeps everything, so compose down is always the cleanup, and it is never stopped."""

    handle: DaemonHandle
    remote = True

    def compose_down_matters(self, grace: float, aborted: bool) -> bool:
        return True

    def stop(self, grace: float, *, down_done: bool = False) -> list[str]:
        return []  # the put's teardown removes the certificates and the logins


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


def connect_remote(source: Source, console: Console, config_dir: str) -> RemoteEngine:
    """`source.docker_host`: use that engine, start nothing; compose down is the whole cleanup."""
    assert source.docker_host
    cert_dir = TLS_DIR
    tls, tls_env = remote_tls(source, cert_dir)
    env = {
        "DOCKER_HOST": source.docker_host,
        "DOCKER_CONFIG": write_docker_config(source.registries, config_dir),
        **tls_env,
    }
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
    console.info(
        f"using the engine at {source.docker_host} (source.docker_host): Docker {info.get('ServerVersion')}, storage "
        f"driver {info.get('Driver')}"
    )
    console.info("no inner daemon: nothing started, compose down is the whole cleanup")

    return RemoteEngine(DaemonHandle(source.docker_host, env, client, load_client, description))
