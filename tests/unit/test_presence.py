"""Image presence against a fake engine: what is loaded or built passes, the rest is pulled, and what stays missing is
named with how to provide it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from compose_env.console import Console
from compose_env.errors import UserError
from compose_env.images.presence import ensure_images


class FakeEngine:
    """Holds `present` images; a pull answers with `pull_messages`."""

    def __init__(self, present: list[str], pull_messages: list[dict[str, str]] | None = None) -> None:
        self.present = present
        self.pull_messages = pull_messages or [{"status": "Downloaded"}]
        self.inspected: list[str] = []
        self.pulled: list[str] = []

    def inspect_image(self, image: str) -> dict[str, str]:
        self.inspected.append(image)
        if image not in self.present:
            raise docker.errors.ImageNotFound(f"No such image: {image}")
        return {"Id": "sha256:" + "1" * 64}

    def pull(self, image: str, **_options: Any) -> Iterator[dict[str, str]]:
        self.pulled.append(image)
        return iter(self.pull_messages)

    def images(self) -> list[dict[str, Any]]:
        return [{"RepoTags": [name]} for name in self.present] + [{"RepoTags": ["<none>:<none>"]}]


def _ensure(engine: FakeEngine, services: dict[str, Any], log: io.StringIO | None = None) -> None:
    ensure_images(engine, services, list(services), Console(log or io.StringIO()), None)  # type: ignore[arg-type]


def test_loaded_and_built_images_need_nothing_and_one_image_is_checked_once() -> None:
    engine = FakeEngine(["app:ci"])

    _ensure(
        engine,
        {
            "app": {"image": "app:ci"},
            "worker": {"image": "app:ci"},
            "built": {"image": "mine:1", "build": "."},
            "bare": {},
        },
    )

    assert engine.inspected == ["app:ci"]
    assert engine.pulled == []


def test_an_image_not_loaded_is_pulled_and_announced() -> None:
    engine = FakeEngine([])
    log = io.StringIO()

    _ensure(engine, {"db": {"image": "postgres:16"}}, log)

    assert engine.pulled == ["postgres:16"]
    assert "postgres:16 (service db) is not loaded: pulling it" in log.getvalue()


def test_what_stays_missing_is_named_with_its_service_and_the_images_there() -> None:
    engine = FakeEngine(["other:1"], pull_messages=[{"error": "pull access denied"}])

    with pytest.raises(UserError) as raised:
        _ensure(engine, {"db": {"image": "postgres:16"}, "cache": {"image": "redis:7", "pull_policy": "never"}})

    assert raised.value.path == "params.images"
    assert raised.value.message == (
        "service db needs image postgres:16, which is not loaded (pull failed: pull access denied); "
        "service cache needs image redis:7, which is not loaded (pull_policy: never)"
    )
    assert "tag: postgres:16" in raised.value.hint
    assert raised.value.hint.endswith(". Images in the daemon: other:1")
    assert engine.pulled == ["postgres:16"]


def test_pull_policy_always_is_warned_about() -> None:
    log = io.StringIO()

    _ensure(FakeEngine(["app:ci"]), {"app": {"image": "app:ci", "pull_policy": "always"}}, log)

    assert (
        "service app has pull_policy: always: compose will pull app:ci even if params.images loaded it"
        in log.getvalue()
    )
