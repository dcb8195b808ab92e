"""Image references: the grammar a name must follow, and the familiar form a compose file uses (`redis:7`, not
`docker.io/library/redis:7`)."""

from __future__ import annotations

import re

from compose_env.errors import UserError

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?"
REFERENCE = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?$")
DOCKER_HUB_PREFIXES = ("docker.io/library/", "index.docker.io/library/", "docker.io/", "index.docker.io/")


def split_reference(reference: str) -> tuple[str, str]:
    """`host:5000/app:1.2` → (`host:5000/app`, `1.2`); no tag means `latest`."""
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > slash:
        return reference[:colon], reference[colon + 1 :]
    return reference, "latest"


def familiar(reference: str) -> str:
    """The name a compose file uses: `index.docker.io/library/redis:7` → `redis:7`, tag `latest` made explicit."""
    repository, tag = split_reference(reference)
    for prefix in DOCKER_HUB_PREFIXES:
        if repository.startswith(prefix):
            repository = repository[len(prefix) :]
            break
    return f"{repository}:{tag}"


def _looks_like_a_registry(component: str) -> bool:
    """Docker's rule: the first component is a registry only with a dot, a port or as `localhost`."""
    return "." in component or ":" in component or component == "localhost"


def check_reference(reference: str, path: str) -> str:
    first, slash, _ = reference.partition("/")
    lowercase_first = not slash or _looks_like_a_registry(first) or re.fullmatch(_COMPONENT, first)
    if len(reference) > 255 or not REFERENCE.match(reference) or not lowercase_first:
        raise UserError(
            path,
            f"{reference!r} is not a valid image reference",
            "use name[:tag] with a lowercase name, e.g. myorg/app:1.2 or registry.local:5000/app:ci (no digest, no "
            "spaces)",
        )
    return familiar(reference)
