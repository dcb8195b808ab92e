"""Image references: the names a compose file uses, and a reference split into repository and tag."""

from __future__ import annotations

import pytest
from compose_env.images.reference import familiar, split_reference


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("index.docker.io/library/redis:7", "redis:7"),
        ("docker.io/library/redis", "redis:latest"),
        ("docker.io/bitnami/redis:7.2", "bitnami/redis:7.2"),
        ("registry.local:5000/team/app", "registry.local:5000/team/app:latest"),
        ("app:ci", "app:ci"),
    ],
)
def test_names_are_the_ones_a_compose_file_uses(reference: str, expected: str) -> None:
    assert familiar(reference) == expected


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("registry.local:5000/team/app:ci", ("registry.local:5000/team/app", "ci")),
        ("registry.local:5000/app", ("registry.local:5000/app", "latest")),
    ],
)
def test_a_registry_port_is_not_a_tag(reference: str, expected: tuple[str, str]) -> None:
    assert split_reference(reference) == expected
