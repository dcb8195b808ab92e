"""The task cache's own logic: sizes, the marker, wiping, the lock, and pruning oldest use first."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest
from compose_env.config.model import BuildMetadata
from compose_env.console import Console
from compose_env.engine import cache as cache_module
from compose_env.engine.cache import CacheConfig, TaskCache, parse_size
from compose_env.errors import UserError
from compose_env.run.task import parse_task_config

VERSION = "Docker version 26.1.5+dfsg1, build a72d7cd"


def make_cache(tmp_path: Path, max_size: int = 10 * 2**30) -> tuple[TaskCache, io.StringIO]:
    log = io.StringIO()
    return TaskCache(CacheConfig(tmp_path / "cache", max_size), Console(log), version=VERSION), log


@pytest.mark.parametrize(
    ("given", "size"),
    [("10GiB", 10 * 2**30), ("500MiB", 500 * 2**20), ("2G", 2 * 10**9), ("1.5 GB", 1_500_000_000), (4096, 4096)],
)
def test_sizes_read_binary_and_decimal_units(given: str | int, size: int) -> None:
    assert parse_size(given, "x") == size


def test_a_bad_size_names_its_path() -> None:
    with pytest.raises(UserError) as error:
        parse_size("ten gigs", "COMPOSE_ENV.cache_max_size")
    assert error.value.path == "COMPOSE_ENV.cache_max_size"


def test_an_empty_cache_is_filled_and_marked(tmp_path: Path) -> None:
    cache, log = make_cache(tmp_path)
    cache.check()
    assert "is empty: this run fills it" in log.getvalue()
    assert json.loads((tmp_path / "cache" / "compose-env-cache.json").read_text()) == {
        "format": 1,
        "engine": VERSION,
        "last_used": {},
    }


def test_a_cache_from_this_engine_is_kept_with_its_record(tmp_path: Path) -> None:
    cache, _ = make_cache(tmp_path)
    (cache.config.data_root / "image").mkdir(parents=True)
    (tmp_path / "cache" / "compose-env-cache.json").write_text(
        json.dumps({"format": 1, "engine": VERSION, "last_used": {"sha256:a": 5}})
    )
    cache.check()
    assert (cache.config.data_root / "image").is_dir()
    assert cache.last_used == {"sha256:a": 5.0}


@pytest.mark.parametrize(
    ("marker", "why"),
    [
        (
            json.dumps({"format": 1, "engine": "Docker version 20.10.0", "last_used": {}}),
            "it was written by Docker version 20.10.0",
        ),
        ("{trunc", "it has no readable compose-env marker"),
        (None, "it has no readable compose-env marker"),
    ],
)
def test_a_cache_of_another_engine_or_without_a_marker_is_wiped_with_a_warning(
    tmp_path: Path, marker: str | None, why: str
) -> None:
    cache, log = make_cache(tmp_path)
    (cache.config.data_root / "image").mkdir(parents=True)
    if marker is not None:
        (tmp_path / "cache" / "compose-env-cache.json").write_text(marker)
    cache.check()
    assert f"warning: cache {tmp_path / 'cache'}: {why}" in log.getvalue()
    assert "wiping it and starting afresh" in log.getvalue()
    assert not cache.config.data_root.exists()
    assert json.loads((tmp_path / "cache" / "compose-env-cache.json").read_text())["engine"] == VERSION


def test_a_second_run_waits_for_the_lock_with_a_log_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "LOCK_POLL_SECONDS", 0.02)
    first, _ = make_cache(tmp_path)
    second, log = make_cache(tmp_path)
    order: list[str] = []
    holding = threading.Event()

    def hold() -> None:
        with first.locked():
            holding.set()
            time.sleep(0.3)
            order.append("first done")

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait()
    with second.locked():
        order.append("second in")
    thread.join()

    assert order == ["first done", "second in"]
    assert "is in use by another run: waiting for it" in log.getvalue()
    assert "ours after" in log.getvalue()


class FakeEngine:
    """Images of 1 GiB each (no layer shared), `sha256:c` used by a container.

    remove_image and prune_builds are recorded.
    """

    def __init__(self, build_cache: int = 0) -> None:
        self.images = [
            {
                "Id": f"sha256:{name}",
                "Size": 2**30,
                "SharedSize": 0,
                "Containers": 1 if name == "c" else 0,
                "Created": created,
                "RepoTags": [f"{name}:ci"],
            }
            for name, created in (("a", 300), ("b", 100), ("c", 200), ("d", 400))
        ]
        self.build_cache = build_cache
        self.removed: list[str] = []
        self.kept_storage: int | None = None

    def containers(self, all: bool, filters: dict) -> list[dict]:
        return [{"ImageID": "sha256:c"}]

    def inspect_image(self, name: str) -> dict:
        return {"Id": "sha256:d"} if name == "d:ci" else {"Id": "sha256:missing"}

    def df(self) -> dict:
        return {
            "Images": self.images,
            "LayersSize": sum(i["Size"] for i in self.images),
            "BuildCache": [{"Size": self.build_cache}],
        }

    def remove_image(self, image: str, force: bool) -> None:
        self.removed.append(image)
        self.images = [i for i in self.images if i["Id"] != image]

    def prune_builds(self, keep_storage: int) -> None:
        self.kept_storage = keep_storage
        self.build_cache = min(self.build_cache, keep_storage)


def test_unused_images_beyond_the_limit_go_oldest_use_first_and_used_ones_stay(tmp_path: Path) -> None:
    cache, log = make_cache(tmp_path, max_size=2 * 2**30)
    cache.last_used = {"sha256:a": 50.0}  # used long ago: older than b's creation counts
    engine = FakeEngine()

    cache.after_run(engine, "p", ["d:ci"])  # type: ignore[arg-type]

    assert engine.removed == ["sha256:a", "sha256:b"]
    assert "pruned 2 unused images, oldest use first: a:ci, b:ci" in log.getvalue()
    marker = json.loads((tmp_path / "cache" / "compose-env-cache.json").read_text())
    assert set(marker["last_used"]) == {"sha256:c", "sha256:d"}


def test_within_the_limit_nothing_is_pruned(tmp_path: Path) -> None:
    cache, log = make_cache(tmp_path)
    engine = FakeEngine()
    cache.after_run(engine, "p", [])  # type: ignore[arg-type]
    assert engine.removed == []
    assert "within cache_max_size (10.00 GiB)" in log.getvalue()


def test_the_build_cache_is_cut_when_images_alone_do_not_free_enough(tmp_path: Path) -> None:
    cache, _ = make_cache(tmp_path, max_size=3 * 2**30)
    engine = FakeEngine(build_cache=2 * 2**30)
    cache.after_run(engine, "p", ["d:ci"])  # type: ignore[arg-type]
    assert engine.removed == ["sha256:b", "sha256:a"]
    assert engine.kept_storage == 2**30


# ---------------------------------------------------------------- configuration


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "docker-compose.yml").write_text("services: {}\n")
    return tmp_path


def test_cache_dir_puts_the_data_root_in_the_cache_on_disk(work_dir: Path) -> None:
    task = parse_task_config(
        {"compose_files": ["code/docker-compose.yml"], "cache_dir": "cache", "cache_max_size": "2GiB"},
        work_dir,
        BuildMetadata(),
    )
    assert task.cache == CacheConfig(work_dir / "cache", 2 * 2**30)
    assert task.put.source.dockerd.data_root == str(work_dir / "cache" / "docker")
    assert task.put.source.dockerd.data_root_medium == "disk"


@pytest.mark.parametrize(
    ("extra", "path", "message"),
    [
        ({"cache_max_size": "1GiB"}, "COMPOSE_ENV.cache_max_size", "only used with cache_dir"),
        ({"cache_dir": "../elsewhere"}, "COMPOSE_ENV.cache_dir", "leads outside"),
        ({"cache_dir": "compose-env-output"}, "COMPOSE_ENV.cache_dir", "directory of its own"),
        (
            {"cache_dir": "c", "source": {"dockerd": {"data_root": "/scratch/d"}}},
            "COMPOSE_ENV.cache_dir",
            "source.dockerd.data_root",
        ),
        ({"cache_dir": "c", "source": {"docker_host": "tcp://h:2375"}}, "COMPOSE_ENV.cache_dir", "source.docker_host"),
        ({"cache_dir": "c", "cache_max_size": "lots"}, "COMPOSE_ENV.cache_max_size", "a size such as"),
    ],
)
def test_cache_settings_that_cannot_work_are_refused_naming_their_path(
    work_dir: Path, extra: dict, path: str, message: str
) -> None:
    with pytest.raises(UserError) as error:
        parse_task_config({"compose_files": ["code/docker-compose.yml"], **extra}, work_dir, BuildMetadata())
    assert path in [problem[0] for problem in error.value.problems]
    assert message in error.value.render()
