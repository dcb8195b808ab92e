"""Whether the images a compose command needs are there: loaded, built by compose, or pulled now.

If not, one error names each service that lacks its image and says how to provide it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import docker

from compose_env.console import Console
from compose_env.errors import UserError


def ensure_images(
    client: docker.APIClient,
    services: Mapping[str, Any],
    needed: Sequence[str],
    console: Console,
    docker_config: str | None,
) -> None:
    """Every image the `needed` services use is loaded, buildable or pullable: otherwise say which and how to provide
    it.

    `services` is the compose configuration's services; `docker_config` holds the logins source.registries gave.
    """
    missing: list[tuple[str, str, str]] = []
    checked: dict[str, str] = {}
    for name in needed:
        service = services[name]
        image = service.get("image")
        policy = service.get("pull_policy", "")
        if not image or service.get("build") or policy == "build":
            continue  # compose builds it
        if policy == "always":
            console.warn(
                f"service {name} has pull_policy: always: compose will pull {image} even if params.images loaded it"
            )
        if image not in checked:
            checked[image] = _provide(client, console, name, image, policy, docker_config)
        if checked[image]:
            missing.append((name, image, checked[image]))
    if missing:
        raise UserError("params.images", _missing_message(missing), _missing_hint(missing, _tags_in(client)))


def _provide(
    client: docker.APIClient, console: Console, service: str, image: str, policy: str, docker_config: str | None
) -> str:
    """'' when `image` is there or could be pulled; else why not."""
    try:
        client.inspect_image(image)
        return ""
    except docker.errors.APIError:
        pass
    if policy == "never":
        return "pull_policy: never"
    console.info(f"{image} (service {service}) is not loaded: pulling it")
    return _pull(client, image, docker_config)


def _missing_message(missing: Sequence[tuple[str, str, str]]) -> str:
    return "; ".join(
        f"service {service} needs image {image}, which is not loaded ({why})" for service, image, why in missing
    )


def _missing_hint(missing: Sequence[tuple[str, str, str]], present: Sequence[str]) -> str:
    image = missing[0][1]
    hint = (
        f"add the artifact that holds it to params.images, e.g. {{path: <input>/image.tar, tag: {image}}} (tag is "
        "needed when the tarball "
        "carries no name, as oci-build-task's do); or, for a private registry, add a login to source.registries"
    )
    return hint + (f". Images in the daemon: {', '.join(present)}" if present else ". No image is loaded")


def _tags_in(client: docker.APIClient) -> list[str]:
    try:
        return sorted(tag for image in client.images() for tag in image.get("RepoTags") or [] if tag != "<none>:<none>")
    except docker.errors.APIError:
        return []


def _pull(client: docker.APIClient, image: str, docker_config: str | None) -> str:
    """Pull `image` with the login source.registries gave for its registry; '' on success, else why not."""
    auth = None
    if docker_config:
        registry, _ = docker.auth.resolve_repository_name(image.split("@")[0])
        auth = docker.auth.resolve_authconfig(
            docker.auth.load_config(os.path.join(docker_config, "config.json")), registry
        )
    try:
        for message in client.pull(image, stream=True, decode=True, auth_config=auth):
            if "error" in message:
                return f"pull failed: {message['error']}"
    except docker.errors.APIError as error:
        return f"pull failed: {error.explanation or error}"
    return ""
