"""The project's containers after the run, as the engine tells: their `compose ps -a` rows, who compose stopped."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import docker
import requests

from compose_env.console import Console
from compose_env.run.outcome import listed_ps_row, ps_row, stopped_by_compose


def project_containers(client: docker.APIClient, project: str) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = client.containers(
        all=True, filters={"label": f"com.docker.compose.project={project}"}
    )
    return containers


def listed_containers(client: docker.APIClient, project: str, console: Console) -> list[dict[str, Any]]:
    """The project's containers; none (said once) when the engine cannot list them."""
    try:
        return project_containers(client, project)
    except (docker.errors.DockerException, requests.RequestException) as error:
        console.warn(f"cannot list the project's containers ({error}): no service states")
        return []


def ps_rows(
    client: docker.APIClient, containers: Iterable[Mapping[str, Any]], console: Console
) -> list[dict[str, Any]]:
    """`compose ps -a`'s rows for the project's containers, read from the engine (a second compose process took
    0.15-0.3 s).

    A container the engine cannot inspect keeps the state the list gave it, without exit code or health.
    """
    rows = []
    for container in containers:
        try:
            rows.append(ps_row(client.inspect_container(container["Id"])))
        except docker.errors.NotFound:
            continue  # removed since it was listed
        except (docker.errors.DockerException, requests.RequestException) as error:
            name = listed_ps_row(container)["Name"]
            console.warn(f"cannot inspect {name} ({error}): its exit code and health are unknown")
            rows.append(listed_ps_row(container))
    return rows


def stopped_containers(client: docker.APIClient, project: str, since: float, console: Console) -> set[str] | None:
    """Containers compose stopped during the run, from the engine's events (None if they cannot be read)."""
    now = time.time_ns()
    filters = {"type": ["container"], "label": [f"com.docker.compose.project={project}"]}
    try:
        events = client.events(
            since=int(since) - 1, until=f"{now // 10**9}.{now % 10**9:09d}", filters=filters, decode=True
        )
        return stopped_by_compose(list(events))
    except (docker.errors.DockerException, OSError, ValueError) as error:
        console.warn(f"cannot read the engine's events ({error}): treating exit codes 137/143 as stopped by compose")
        return None
