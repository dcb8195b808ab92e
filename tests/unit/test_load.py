"""Loading against a fake engine: the load protocol, names from the response, failures named for their entry, the build
log."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from compose_env.config.model import ImageEntry
from compose_env.console import Console
from compose_env.errors import RuntimeFailure, UserError
from compose_env.images.load import load_images
from compose_env.images.plan import LOAD_HINT, ROOTFS_NOT_INSTEAD, ImagePlan, plan_image
from image_fixtures import ImageParts, compress, docker_save_tarball, synthetic_image, truncated_copy
from producers import docker_image_resource_dir


@pytest.fixture
def parts(tmp_path: Path) -> ImageParts:
    return synthetic_image(tmp_path / "parts", {"shape": b"synthetic\n", "bin/sh": b"\x7fELF"})


def entry(path: Path, tags: tuple[str, ...] = (), index: int = 0) -> ImageEntry:
    return ImageEntry(index=index, path=path, given=path.name, tags=tags)


class FakeEngine:
    """Consumes the upload like the daemon and answers with the given messages."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages
        self.received = b""
        self.tags: list[tuple[str, str, str]] = []

    def version(self) -> dict[str, str]:
        return {"Os": "linux", "Arch": "amd64"}

    def load_image(self, data: Iterator[bytes]) -> Iterator[dict[str, Any]]:
        self.received = b"".join(data)
        return iter(self.messages)

    def inspect_image(self, name: str) -> dict[str, str]:
        return {"Id": "sha256:" + "1" * 64}

    def tag(self, image: str, repository: str, tag: str) -> bool:
        self.tags.append((image, repository, tag))
        return True


def _plan(tmp_path: Path, parts: ImageParts, repo_tags: list[str], tags: tuple[str, ...] = ()) -> ImagePlan:
    return plan_image(entry(docker_save_tarball(parts, tmp_path / "app.tar", repo_tags), tags))


def test_load_reads_names_from_the_response_and_adds_the_entry_tags(tmp_path: Path, parts: ImageParts) -> None:
    engine = FakeEngine([{"stream": "Loaded image: redis:7\n"}])
    plan = _plan(tmp_path, parts, ["index.docker.io/library/redis:7"], ("example/redis:ci",))

    [loaded] = load_images([plan], engine, engine, Console(io.StringIO()))  # type: ignore[arg-type]

    assert engine.received == plan.source_path.read_bytes()
    assert loaded.names == ("redis:7", "example/redis:ci")
    assert engine.tags == [("sha256:" + "1" * 64, "example/redis", "ci")]


def test_an_image_loaded_by_id_is_tagged_with_the_planned_names(tmp_path: Path, parts: ImageParts) -> None:
    engine = FakeEngine([{"stream": "Loaded image ID: sha256:" + "1" * 64 + "\n"}])
    plan = _plan(tmp_path, parts, [], ("example/saved:ci",))

    [loaded] = load_images([plan], engine, engine, Console(io.StringIO()))  # type: ignore[arg-type]

    assert loaded.names == ("example/saved:ci",)
    assert engine.tags == [("sha256:" + "1" * 64, "example/saved", "ci")]


def test_an_error_inside_a_successful_response_fails_the_load(tmp_path: Path, parts: ImageParts) -> None:
    engine = FakeEngine(
        [{"stream": "Loading layer"}, {"errorDetail": {"message": "unexpected EOF"}, "error": "unexpected EOF"}]
    )
    plan = _plan(tmp_path, parts, ["a:1"])

    with pytest.raises(RuntimeFailure, match=r"params.images\[0\] \(app.tar\): docker load failed: unexpected EOF"):
        load_images([plan], engine, engine, Console(io.StringIO()))  # type: ignore[arg-type]
    assert engine.tags == []


def test_a_tarball_docker_load_refuses_says_why_the_rootfs_beside_it_does_not_stand_in(
    tmp_path: Path, parts: ImageParts
) -> None:
    engine = FakeEngine([{"error": "archive/tar: invalid tar header"}])
    plan = plan_image(entry(docker_image_resource_dir(parts, tmp_path / "redis", "example/redis", "7")))

    with pytest.raises(RuntimeFailure, match=r"params.images\[0\] \(redis\): docker load failed") as raised:
        load_images([plan], engine, engine, Console(io.StringIO()))  # type: ignore[arg-type]
    assert raised.value.diagnosis.splitlines() == [LOAD_HINT, ROOTFS_NOT_INSTEAD]


def test_a_full_data_root_is_diagnosed_as_such(tmp_path: Path, parts: ImageParts) -> None:
    engine = FakeEngine([{"error": "write /scratch/docker/tmp/x: no space left on device"}])

    with pytest.raises(RuntimeFailure) as raised:
        load_images([_plan(tmp_path, parts, ["a:1"])], engine, engine, Console(io.StringIO()))  # type: ignore[arg-type]
    assert "the data root is full" in raised.value.diagnosis


def test_a_stream_failure_is_reported_for_its_entry(tmp_path: Path, parts: ImageParts) -> None:
    compressed = compress(docker_save_tarball(parts, tmp_path / "app.tar", ["a:1"]), ".tar.gz")
    plan = plan_image(entry(truncated_copy(compressed, tmp_path / "cut.tar.gz", keep_fraction=0.9)))
    engine = FakeEngine([{"stream": "Loaded image: a:1"}])

    with pytest.raises(RuntimeFailure, match=r"params.images\[0\] \(cut.tar.gz\): cut.tar.gz is truncated") as raised:
        load_images([plan], engine, engine, Console(io.StringIO()))  # type: ignore[arg-type]
    assert "Nothing from it was loaded" in raised.value.diagnosis


def test_a_compressed_tarball_without_any_name_asks_for_a_tag_after_loading(tmp_path: Path, parts: ImageParts) -> None:
    compressed = compress(docker_save_tarball(parts, tmp_path / "app.tar", []), ".tgz")
    engine = FakeEngine([{"stream": "Loaded image ID: sha256:" + "1" * 64}])

    with pytest.raises(UserError, match="carries no image name"):
        load_images([plan_image(entry(compressed))], engine, engine, Console(io.StringIO()))  # type: ignore[arg-type]


def test_the_build_log_shows_size_time_and_names(tmp_path: Path, parts: ImageParts) -> None:
    engine = FakeEngine([{"stream": "Loaded image: a:1"}])
    log = io.StringIO()

    load_images([_plan(tmp_path, parts, ["a:1"])], engine, engine, Console(log))  # type: ignore[arg-type]

    assert "params.images[0] (app.tar): 0.0 MiB streamed in " in log.getvalue()
    assert log.getvalue().rstrip().endswith("→ a:1")
