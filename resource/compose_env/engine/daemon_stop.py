"""The inner daemon's containers and processes at its stop, and what an earlier run left on a kept data root.

Every call here has a deadline (engine/budget.py): after a SIGTERM the whole stop fits in
Concourse's grace, whatever the engine does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import docker
import requests

from compose_env.concurrency import Workers
from compose_env.console import Console
from compose_env.engine.budget import BUDGET
from compose_env.engine.daemon_argv import CONTAINERD_SOCKET, DOCKER_SOCKET
from compose_env.process import descendants, process_table


def stop_containers(api_version: str, grace: float, problems: list[str], *, remove: bool, prune: bool) -> int:
    """Every running container given `grace` to stop, all at once through the API; returns how many there were.

    `remove` (a kept data root): it is left as `compose down --volumes` would leave it, faster:
    every container removed (a `restart: always` one would start again with the next dockerd),
    then the volumes and networks, unless compose down removed the project (`prune` false) and no
    container was left. All of it within one deadline: what is left after it, the next run removes.
    """
    deadline = time.monotonic() + BUDGET.containers + grace
    try:
        client = docker.APIClient(
            base_url=f"unix://{DOCKER_SOCKET}", version=api_version or "auto", timeout=BUDGET.containers + grace
        )
        running = client.containers(quiet=True, all=remove)
    except Exception as error:
        problems.append(f"listing containers: {error}")
        return 0

    def stop_one(container_id: str) -> None:
        try:
            if grace > 0:
                client.stop(container_id, timeout=int(grace))
            if remove:
                client.remove_container(container_id, force=True, v=True)
        except Exception:
            pass  # the shim sweep after the daemons are down catches what survives

    Workers(stop_one, [container["Id"] for container in running], len(running), "stop").wait(
        max(0.0, deadline - time.monotonic())
    )
    if remove and (prune or running):
        try:
            problems += prune_volumes_and_networks(client, deadline)[1]
        except Exception as error:  # whatever it is, the daemons must still be stopped
            problems.append(f"volumes and networks: {error}")
    return len(running)


def terminate(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM and `grace` seconds, then SIGKILL (at once when `grace` is 0)."""
    if grace > 0:
        process.terminate()
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            pass
    process.kill()
    try:
        process.wait(BUDGET.reap)
    except subprocess.TimeoutExpired:
        pass  # stuck in the kernel (D state): the stray sweep and the unmounts go on regardless


def kill_strays(data_root: str) -> int:
    """What outlives containerd and dockerd by design: our shims with their containers, fuse-overlayfs helpers."""
    table = process_table()
    roots = [
        pid
        for pid, (_, cmdline) in table.items()
        if (b"containerd-shim" in cmdline and CONTAINERD_SOCKET.encode() in cmdline)
        or (cmdline.startswith(b"fuse-overlayfs") and data_root.encode() in cmdline)
    ]
    doomed = descendants(table, roots)
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(doomed)


def clear_left_behind(client: docker.APIClient, data_root: str, console: Console) -> None:
    """Containers, volumes and networks a kept data root still holds, removed before anything runs.

    A run killed before its teardown finished leaves them in a task cache (or a data root of
    the user's); a `restart: always` service of it would even start again with dockerd. Every
    run starts from the images (and build cache) alone, as with a fresh data root.
    """
    removed: list[str] = []
    problems: list[str] = []
    try:
        containers = client.containers(all=True)
    except (docker.errors.DockerException, requests.RequestException) as error:
        console.warn(f"data root {data_root}: could not list what an earlier run left ({error})")
        return
    for container in containers:
        name = (container.get("Names") or [container["Id"][:12]])[0].lstrip("/")
        try:
            client.remove_container(container["Id"], force=True, v=True)
            removed.append(f"container {name}")
        except (docker.errors.DockerException, requests.RequestException) as error:
            problems.append(f"container {name}: {error}")
    pruned, prune_problems = prune_volumes_and_networks(client)
    removed += pruned
    problems += prune_problems
    if removed:
        console.warn(f"data root {data_root} held what an earlier run left: removed {', '.join(removed)}")
    for problem in problems:
        console.warn(f"data root {data_root}: could not remove what an earlier run left: {problem}")


def prune_volumes_and_networks(client: docker.APIClient, deadline: float | None = None) -> tuple[list[str], list[str]]:
    """Every volume (named ones too) and every network no container uses, removed: (what went, problems).

    With a `deadline` (time.monotonic()), each call gets only the time left before it.
    """
    removed: list[str] = []
    problems: list[str] = []
    for what, prune, key in (
        ("volume", lambda: client.prune_volumes(filters={"all": "true"}), "VolumesDeleted"),
        ("network", client.prune_networks, "NetworksDeleted"),
    ):
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                problems.append(f"{what}s: no time left to remove them (the next run does)")
                continue
            client.timeout = left
        try:
            removed += [f"{what} {name}" for name in prune().get(key) or []]
        except (docker.errors.DockerException, requests.RequestException) as error:
            problems.append(f"{what}s: {error}")
    return removed, problems
