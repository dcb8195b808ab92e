"""`params.images` loaded: each plan streamed into `docker load` (several at once) and named; images `layerstore` wrote
verified and named."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import requests

from compose_env.concurrency import Workers
from compose_env.config.model import ImageEntry
from compose_env.console import Console
from compose_env.errors import RuntimeFailure
from compose_env.images.compression import decompressed_chunks
from compose_env.images.errors import ArchiveError
from compose_env.images.oci import LayoutReader, Platform, oci_stream
from compose_env.images.plan import ImagePlan, local_platform, shown_path, unnamed_error
from compose_env.images.reference import familiar, split_reference
from compose_env.images.tar import FileBody, list_tar

#: How many loads run at once. Measured with bench/bench_images.py on the 2-core reference VM
#: (3 images, 768 MiB, best of 3; `docker load -i` in turn = 1.00): data root in memory
#: 1 at once 0.78, 2 at once 0.67, 3 at once 0.68; on disk 0.81, 0.80, 0.73. One load leaves
#: a core idle while the daemon unpacks; a fourth would only add contention. Change it here only.
LOAD_CONCURRENCY = 3
SPACE_HINT = "the data root is full: free space on the worker, or set source.dockerd.data_root / data_root_medium"


def daemon_platform(client: docker.APIClient) -> Platform:
    version = client.version()
    here = local_platform()
    architecture = version.get("Arch") or here[1]
    return (version.get("Os") or "linux", architecture, here[2] if architecture == here[1] else "")


@dataclass(frozen=True)
class LoadedImage:
    entry: ImageEntry
    image_id: str
    names: tuple[str, ...]
    seconds: float
    size: int


class _Counter:
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.sent += len(chunk)
            yield chunk


def _upload(plan: ImagePlan, load_client: docker.APIClient, platform: Platform) -> tuple[list[str], list[str], int]:
    """Send one input to `docker load`; returns the names and ids it reports and the bytes sent."""
    body = plan.stream(platform)
    if isinstance(body, FileBody):
        with body:
            return (*_read_load_response(plan, load_client.load_image(body)), plan.size)
    counter = _Counter(body)
    return (*_read_load_response(plan, load_client.load_image(iter(counter))), counter.sent)


def _archive_error(error: BaseException) -> ArchiveError | None:
    """Our stream's own failure, however the HTTP stack wrapped it."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ArchiveError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _diagnosis(plan: ImagePlan, detail: str) -> str:
    return SPACE_HINT if "no space left on device" in detail else plan.damage_hint


def _read_load_response(plan: ImagePlan, messages: Iterator[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Names and ids from `docker load`'s messages. Failures arrive inside a 200 response: every message is checked."""
    names: list[str] = []
    ids: list[str] = []
    for message in messages:
        if message.get("error") or message.get("errorDetail"):
            detail = message.get("error") or message.get("errorDetail", {}).get("message", "")
            raise RuntimeFailure(f"{plan.where}: docker load failed: {detail}", _diagnosis(plan, str(detail)))
        text = str(message.get("stream", "")).strip()
        if text.startswith("Loaded image ID:"):
            ids.append(text.split(":", 1)[1].strip())
        elif text.startswith("Loaded image:"):
            names.append(text.split(":", 1)[1].strip())
    return names, ids


def load_one(
    plan: ImagePlan,
    client: docker.APIClient,
    load_client: docker.APIClient,
    platform: Platform,
    spool_dir: str | None = None,
) -> LoadedImage:
    """Load one plan; a compressed OCI-only archive that the daemon refuses is converted and loaded again."""
    try:
        return _load_plan(plan, client, load_client, platform)
    except RuntimeFailure as failure:
        # The classic image store cannot load an OCI archive (index.json, no manifest.json), and
        # for a compressed input that is known only once it has been inflated: a rare case, so
        # it is handled here, at the cost of one spooled copy, rather than by reading every
        # compressed input twice.
        if not plan.compressed or "no such file or directory" not in failure.message:
            raise
        with tempfile.TemporaryDirectory(prefix="compose-env-oci-", dir=spool_dir) as spool:
            converted = _spooled_oci_plan(plan, Path(spool) / "image.tar")
            if converted is None:
                raise
            return _load_plan(converted, client, load_client, platform)


def _spooled_oci_plan(plan: ImagePlan, spooled: Path) -> ImagePlan | None:
    """`plan`'s archive inflated to `spooled` and planned as an OCI archive; None if it is not one."""
    with open(spooled, "wb") as handle:
        for chunk in decompressed_chunks(plan.source_path):
            handle.write(chunk)
    listing = list_tar(spooled)
    if listing.has("manifest.json") or not listing.has("index.json"):
        return None
    if not plan.names:
        raise unnamed_error(plan.entry, f"{shown_path(plan.entry, plan.source_path)} (an OCI archive)")
    layout = LayoutReader.tar(listing)
    names = list(plan.names)
    return ImagePlan(
        plan.entry,
        "OCI archive, inflated and converted",
        spooled,
        spooled.stat().st_size,
        plan.names,
        lambda p: oci_stream(layout, p, names),
        rootfs_beside=plan.rootfs_beside,
    )


def _load_plan(
    plan: ImagePlan, client: docker.APIClient, load_client: docker.APIClient, platform: Platform
) -> LoadedImage:
    started = time.monotonic()
    try:
        loaded_names, loaded_ids, sent = _upload(plan, load_client, platform)
    except (docker.errors.APIError, requests.exceptions.RequestException, ArchiveError, OSError) as error:
        damaged = _archive_error(error)
        if damaged is not None:
            raise RuntimeFailure(f"{plan.where}: {damaged}", plan.damage_hint) from None
        detail = str(getattr(error, "explanation", None) or error)
        raise RuntimeFailure(f"{plan.where}: docker load failed: {detail}", _diagnosis(plan, detail)) from None
    if not loaded_names and not loaded_ids:
        raise RuntimeFailure(f"{plan.where}: docker load reported no image", "the archive holds no image")
    if not loaded_names and not plan.names:
        raise unnamed_error(plan.entry, shown_path(plan.entry, plan.source_path))
    image_id = client.inspect_image(loaded_ids[0] if loaded_ids else loaded_names[0])["Id"]
    names = tuple(dict.fromkeys([*(familiar(name) for name in loaded_names), *plan.names]))
    for name in names:
        if name not in loaded_names:
            repository, tag = split_reference(name)
            client.tag(image_id, repository, tag)
    return LoadedImage(plan.entry, image_id, names, time.monotonic() - started, sent)


#: What a verification container runs: nothing (it is created, never started); any path will do.
VERIFY_COMMAND = ["/compose-env-verify"]


def verify_written_image(client: docker.APIClient, image_id: str, diff_ids: tuple[str, ...]) -> str:
    """Why dockerd cannot be trusted with an image layerstore wrote ("" when it can).

    Its RootFS.Layers must be the config's diff_ids, and a container must be creatable from it:
    creating one mounts the whole overlay chain (dockerd copies image data into volumes then).
    """
    try:
        layers = (client.inspect_image(image_id).get("RootFS") or {}).get("Layers") or []
    except docker.errors.NotFound:
        return "dockerd did not list it"
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        return f"inspecting it failed: {_explained(error)}"
    if list(layers) != list(diff_ids):
        return f"dockerd lists {len(layers)} layers for it, not the {len(diff_ids)} diff_ids of its config"
    host_config = client.create_host_config(network_mode="none")
    try:
        container = client.create_container(
            image_id, command=VERIFY_COMMAND, network_disabled=True, host_config=host_config
        )["Id"]
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        return f"creating a container from it failed: {_explained(error)}"
    try:
        client.remove_container(container, v=True, force=True)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        return f"removing its test container failed: {_explained(error)}"
    return ""


def _explained(error: Exception) -> str:
    return str(getattr(error, "explanation", None) or error)


def name_written_image(
    plan: ImagePlan, written_id: str, repo_tags: tuple[str, ...], client: docker.APIClient, seconds: float, size: int
) -> LoadedImage:
    """Tag an image that layerstore wrote before dockerd started (and verify_written_image accepted)."""
    image_id = client.inspect_image(written_id)["Id"]
    names = tuple(dict.fromkeys([*repo_tags, *plan.names]))
    for name in names:
        repository, tag = split_reference(name)
        client.tag(image_id, repository, tag)
    return LoadedImage(plan.entry, image_id, names, seconds, size)


def load_images(
    plans: list[ImagePlan],
    client: docker.APIClient,
    load_client: docker.APIClient,
    console: Console,
    concurrency: int = LOAD_CONCURRENCY,
    spool_dir: str | None = None,
) -> list[LoadedImage]:
    """Load every plan (LOAD_CONCURRENCY at a time); the first failure is raised and loads not yet started are dropped.

    `spool_dir` (a directory with room, next to the data root) holds the rare inflated copy of a
    compressed OCI archive.
    """
    if not plans:
        return []
    platform = daemon_platform(client)

    def load(plan: ImagePlan) -> LoadedImage:
        image = load_one(plan, client, load_client, platform, spool_dir)
        rate = image.size / 2**20 / max(image.seconds, 0.001)
        console.info(
            f"{plan.where}: {image.size / 2**20:.1f} MiB streamed in {image.seconds:.2f}s ({rate:.0f} MiB/s) → "
            f"{', '.join(image.names)}"
        )
        return image

    return _run_all(plans, load, concurrency)


def _run_all(plans: list[ImagePlan], load: Callable[[ImagePlan], LoadedImage], concurrency: int) -> list[LoadedImage]:
    """`load` every plan, `concurrency` at a time; the first failure, whichever plan, is raised at once.

    The uploads still in flight then are left to the teardown (stopping the daemon ends them).
    """
    results: dict[int, LoadedImage] = {}
    failures: list[BaseException] = []
    stop = threading.Event()

    def load_one_of(item: tuple[int, ImagePlan]) -> None:
        index, plan = item
        try:
            results[index] = load(plan)
        except BaseException as error:  # handed to the main thread, raised there
            failures.append(error)
            stop.set()

    try:
        Workers(load_one_of, list(enumerate(plans)), concurrency, "load", stop=stop).wait()
        if failures:
            raise failures[0]
    finally:
        stop.set()  # loads not yet started are dropped
    return [results[index] for index in range(len(plans))]
