"""`params.images`: recognise each input's shape from its files, then stream it into the daemon and name it.

Shapes (DESIGN.md §3), recognised by their files, never by who made them:
- a tarball file (`.tar`, `.tar.gz`, `.tgz`, `.tar.zst`): docker save, or an OCI archive;
- a directory with `image.tar` (registry-image `format: oci`, oci-build-task), `image/image.tar`
  (an oci-build-task output given by its parent) or `image` (docker-image `save: true`);
- a directory with `oci/index.json`, or an OCI layout itself (registry-image `format: oci-layout`);
- a directory with `rootfs/` and `metadata.json` (registry-image's default format).
`repository` and `tag` files, where present, name the image; an entry's `tag` adds names.

Planning (`plan_images`) needs no daemon: it runs before the daemon starts, so that a bad
entry fails before anything is loaded. Loading streams each input into `docker load`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform as host
import queue
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import requests

from compose_env.config.model import ImageEntry
from compose_env.console import Console
from compose_env.errors import RuntimeFailure, UserError
from compose_env.images import layerstore
from compose_env.images.compression import compression_of, decompressed_chunks
from compose_env.images.errors import ArchiveError, NoMatchingPlatform
from compose_env.images.layerstore import DirectImage, RootfsImage
from compose_env.images.oci import LayoutReader, Platform, image_bytes, oci_stream, platform_text, select_manifest
from compose_env.images.rootfs import RootfsLayer, rootfs_config, rootfs_stream
from compose_env.images.tar import Blob, FileBody, TarListing, TarStreamChecker, is_tar, list_tar

#: How many loads run at once. Measured with bench/bench_images.py on the 2-core reference VM
#: (3 images, 768 MiB, best of 3; `docker load -i` in turn = 1.00): data root in memory
#: 1 at once 0.78, 2 at once 0.67, 3 at once 0.68; on disk 0.81, 0.80, 0.73. One load leaves
#: a core idle while the daemon unpacks; a fourth would only add contention. Change it here only.
LOAD_CONCURRENCY = 3

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?"
REFERENCE = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?$")
DOCKER_HUB_PREFIXES = ("docker.io/library/", "index.docker.io/library/", "docker.io/", "index.docker.io/")
#: Go's names for `uname -m`, as Docker reports a daemon's architecture.
GO_ARCHITECTURES = {"x86_64": ("amd64", ""), "aarch64": ("arm64", ""), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "i686": ("386", "")}
LOAD_HINT = "the file is damaged (an interrupted download or copy?): re-run the step that produced it. Nothing from it was loaded."
PLATFORM_HINT = "fetch the image for this worker's platform (registry-image's `platform` source option), or use a multi-platform image"
SPACE_HINT = "the data root is full: free space on the worker, or set source.dockerd.data_root / data_root_medium"
NAME_HINT = "say which name the compose file uses, e.g. images: [{{path: {given}, tag: myorg/app:latest}}]"


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
            "use name[:tag] with a lowercase name, e.g. myorg/app:1.2 or registry.local:5000/app:ci (no digest, no spaces)",
        )
    return familiar(reference)


def local_platform() -> Platform:
    """The platform of this machine, which the inner daemon shares."""
    architecture, variant = GO_ARCHITECTURES.get(host.machine(), (host.machine(), ""))
    return ("linux", architecture, variant)


def daemon_platform(client: docker.APIClient) -> Platform:
    version = client.version()
    here = local_platform()
    architecture = version.get("Arch") or here[1]
    return (version.get("Os") or "linux", architecture, here[2] if architecture == here[1] else "")


@dataclass(frozen=True)
class ImagePlan:
    """What will be loaded for one entry, decided before the daemon exists."""

    entry: ImageEntry
    shape: str
    source_path: Path
    size: int
    #: Names to tag after loading (those inside the tarball come back in the load response).
    names: tuple[str, ...]
    #: The docker-save bytes for the daemon's platform: chunks, or the file itself when it can go as is.
    stream: Callable[[Platform], Iterator[bytes] | FileBody]
    compressed: bool = False
    #: The image as config and layer blobs, for writing it straight into the store (layerstore.py);
    #: None when only docker load can take this shape, or the callable's None once it has looked.
    direct: Callable[[Platform], DirectImage | RootfsImage | None] | None = None
    #: Work to start early for docker load, once it is known that this plan goes that way.
    prepare: Callable[[], object] | None = None

    @property
    def estimated_bytes(self) -> int:
        """Space the load needs on the data root: docker load unpacks the archive, then the layers (compressed inputs grow about 3×)."""
        return self.size * (3 if self.compressed else 2)

    @property
    def where(self) -> str:
        return f"{self.entry.param_path} ({self.entry.given})"


@dataclass(frozen=True)
class LoadedImage:
    entry: ImageEntry
    image_id: str
    names: tuple[str, ...]
    seconds: float
    size: int


# ---------------------------------------------------------------- planning


def _shown(entry: ImageEntry, path: Path) -> str:
    return entry.given if path == entry.path else f"{entry.given}/{path.relative_to(entry.path)}"


@dataclass(frozen=True)
class FileNames:
    """The name the `repository` and `tag` files give; `guessed` when the tag file is missing or empty."""

    names: tuple[str, ...] = ()
    guessed: bool = False


def _read_name_files(directory: Path, entry: ImageEntry) -> FileNames:
    repository_file = directory / "repository"
    if not repository_file.is_file():
        return FileNames()
    repository = repository_file.read_text().strip()
    if not repository:
        return FileNames()
    tag_file = directory / "tag"
    tag = tag_file.read_text().strip() if tag_file.is_file() else ""
    name = check_reference(f"{repository}:{tag or 'latest'}", f"{entry.param_path} ({entry.given}/repository and tag)")
    return FileNames((name,), guessed=not tag)


def _explicit_names(entry: ImageEntry) -> tuple[str, ...]:
    where = f"{entry.param_path}.tag"
    if len(entry.tags) == 1:
        return (check_reference(entry.tags[0], where),)
    return tuple(check_reference(tag, f"{where}[{index}]") for index, tag in enumerate(entry.tags))


def _tree_size(root: Path) -> int:
    total = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                pass
    return total


def _damaged(entry: ImageEntry, error: ArchiveError) -> RuntimeFailure:
    return RuntimeFailure(f"{entry.param_path} ({entry.given}): {error}", LOAD_HINT)


def _unnamed(entry: ImageEntry, what: str) -> UserError:
    return UserError(
        entry.param_path, f"{what} carries no image name (no RepoTags, no repository file) and the entry has no tag", NAME_HINT.format(given=entry.given)
    )


def _tarball_plan(entry: ImageEntry, path: Path, names: tuple[str, ...], guessed: tuple[str, ...] = ()) -> ImagePlan:
    """`guessed` names (`repository:latest` for want of a tag file) apply only to a tarball without RepoTags."""
    shown = _shown(entry, path)
    size = path.stat().st_size
    compression = compression_of(path)
    if compression:

        def decompressed(_platform: Platform) -> Iterator[bytes]:
            return TarStreamChecker(shown).feed(decompressed_chunks(path))

        return ImagePlan(entry, f"tarball, {compression}-compressed (decompressed while streaming)", path, size, names, decompressed, compressed=True)
    if not is_tar(path):
        raise UserError(
            entry.param_path,
            f"{shown} is not an image: not a tar archive",
            "give a docker save / OCI tarball (.tar, .tar.gz, .tgz, .tar.zst) or an image directory",
        )
    try:
        listing = list_tar(path)
        if listing.has("manifest.json"):
            manifest = listing.read_json("manifest.json")
            embedded = [familiar(tag) for image in manifest if isinstance(image, dict) for tag in image.get("RepoTags") or []]
            if embedded:
                names = tuple(name for name in names if name not in guessed)
            if not names and not embedded:
                raise _unnamed(entry, shown)
            shape = "docker-save tarball" + (f" (RepoTags: {', '.join(embedded)})" if embedded else " (no RepoTags)")
            direct = _docker_save_direct(listing, manifest, tuple(embedded))
            return ImagePlan(entry, shape, path, size, names, lambda _platform: FileBody(path), direct=direct)
        if listing.has("index.json"):
            if not names:
                raise _unnamed(entry, f"{shown} (an OCI archive)")
            layout = LayoutReader.tar(listing)
            size = image_bytes(layout, select_manifest(layout, local_platform()))
            shape = f"tarball with an OCI layout (the {platform_text(local_platform())} image, converted while streaming)"
            return ImagePlan(entry, shape, path, size, names, lambda p: oci_stream(layout, p, list(names)), direct=_layout_direct(layout))
    except NoMatchingPlatform as error:
        raise UserError(entry.param_path, f"{shown}: {error}", PLATFORM_HINT) from None
    except ArchiveError as error:
        raise _damaged(entry, error) from None
    raise UserError(entry.param_path, f"{shown} is not an image: a tar without manifest.json or index.json", "is it a docker save or OCI archive?")


def _docker_save_direct(listing: TarListing, manifest: Any, repo_tags: tuple[str, ...]) -> Callable[[Platform], DirectImage | None] | None:
    """A single-image docker save whose config and layers are plain members (no symlinked duplicates)."""
    if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
        return None
    config_name, layer_names = manifest[0].get("Config"), manifest[0].get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        return None
    if not listing.has(config_name) or not all(isinstance(name, str) and listing.has(name) for name in layer_names):
        return None

    def direct(_platform: Platform) -> DirectImage | None:
        try:
            config = listing.read(config_name)
        except (ArchiveError, OSError):
            return None
        blobs = [Blob(listing.path, *listing.members[name]) for name in layer_names]
        return layerstore.image_from_config(config, blobs, repo_tags)

    return direct


def _layout_direct(layout: LayoutReader) -> Callable[[Platform], DirectImage | None]:
    """The platform's image of an OCI layout, its config checked against its digest."""

    def direct(platform: Platform) -> DirectImage | None:
        try:
            manifest = select_manifest(layout, platform)
            config_digest = manifest["config"]["digest"]
            config = layout.small_blob(config_digest)
            blobs = [layout.blob(layer["digest"]) for layer in manifest.get("layers") or []]
        except (ArchiveError, OSError, KeyError, TypeError):
            return None
        if "sha256:" + hashlib.sha256(config).hexdigest() != config_digest:
            return None
        return layerstore.image_from_config(config, blobs)

    return direct


def _layout_plan(entry: ImageEntry, layout: Path, names: tuple[str, ...]) -> ImagePlan:
    if not names:
        raise UserError(
            entry.param_path,
            f"{entry.given} is an OCI layout without a name (no repository file)",
            NAME_HINT.format(given=entry.given),
        )
    reader = LayoutReader.directory(layout)
    try:
        size = image_bytes(reader, select_manifest(reader, local_platform()))
    except NoMatchingPlatform as error:
        raise UserError(entry.param_path, f"{entry.given}: {error}", PLATFORM_HINT) from None
    except ArchiveError as error:
        raise _damaged(entry, error) from None
    return ImagePlan(
        entry,
        f"directory with an OCI layout (the {platform_text(local_platform())} image, converted while streaming)",
        layout,
        size,
        names,
        lambda p: oci_stream(reader, p, list(names)),
        direct=_layout_direct(reader),
    )


def _rootfs_plan(entry: ImageEntry, directory: Path, names: tuple[str, ...]) -> ImagePlan:
    if not names:
        raise UserError(entry.param_path, f"{entry.given} is a rootfs without a name (no repository file)", NAME_HINT.format(given=entry.given))
    metadata_file = directory / "metadata.json"
    metadata: dict[str, Any] = {}
    if metadata_file.is_file():
        try:
            metadata = json.loads(metadata_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(entry.param_path, f"{entry.given}/metadata.json is not valid JSON: {error}") from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("env") or [], list) or not isinstance(metadata.get("user") or "", str):
        raise UserError(entry.param_path, f"{entry.given}/metadata.json should be an object with env (a list) and user (a string)")
    rootfs = directory / "rootfs"
    layer = RootfsLayer(rootfs)

    def config_for(architecture: str) -> Callable[[str], bytes]:
        return lambda diff_id: json.dumps(rootfs_config(metadata, diff_id, architecture)).encode()

    return ImagePlan(
        entry,
        "rootfs directory (archived while streaming, with metadata.json's env and user)",
        rootfs,
        _tree_size(rootfs),
        names,
        lambda p: rootfs_stream(layer, metadata, p[1], list(names)),
        direct=lambda p: RootfsImage(rootfs, config_for(p[1])),
        prepare=layer.start,  # docker load needs its size and digest first: measured while the daemon starts
    )


def plan_image(entry: ImageEntry) -> ImagePlan:
    """Recognise the shape of one entry and check it, without a daemon."""
    explicit = _explicit_names(entry)
    path = entry.path
    if path.is_file():
        return _tarball_plan(entry, path, explicit)
    if not path.is_dir():
        raise UserError(entry.param_path, f"{entry.given} is neither a file nor a directory")
    from_files = _read_name_files(path, entry)
    names = tuple(dict.fromkeys([*from_files.names, *explicit]))
    if (path / "oci" / "index.json").is_file():
        return _layout_plan(entry, path / "oci", names)
    if (path / "index.json").is_file() and (path / "oci-layout").is_file():
        return _layout_plan(entry, path, names)
    if (path / "rootfs").is_dir():
        return _rootfs_plan(entry, path, names)
    for candidate in (path / "image.tar", path / "image" / "image.tar", path / "image"):
        if candidate.is_file():
            guessed = tuple(name for name in from_files.names if name not in explicit) if from_files.guessed else ()
            return _tarball_plan(entry, candidate, names, guessed)
    present = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
    raise UserError(
        entry.param_path,
        f"{entry.given} is not an image: no image.tar, image, oci/index.json or rootfs/ in it (it holds: {present})",
        "point at the output of a registry-image get, docker-image get (save: true), oci-build-task, or at a tarball",
    )


def plan_images(entries: tuple[ImageEntry, ...]) -> list[ImagePlan]:
    return [plan_image(entry) for entry in entries]


def check_free_space(plans: list[ImagePlan], data_root: str) -> None:
    """About 2× each tarball (3× compressed): docker load unpacks the archive, then the layers."""
    if not plans:
        return
    needed = sum(plan.estimated_bytes for plan in plans)
    stats = os.statvfs(data_root)
    free = stats.f_bavail * stats.f_frsize
    if free < needed:
        images = sum(plan.size for plan in plans)
        raise RuntimeFailure(
            f"params.images: the data root {data_root} is out of space: {_amount(free)} free, "
            f"about {_amount(needed)} needed to load {_amount(images)} of images",
            "free space on the worker, or move the data root: source.dockerd.data_root (another volume) or source.dockerd.data_root_medium (memory or disk)",
        )


def _amount(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


# ---------------------------------------------------------------- loading


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


def _diagnosis(detail: str) -> str:
    return SPACE_HINT if "no space left on device" in detail else LOAD_HINT


def _read_load_response(plan: ImagePlan, messages: Iterator[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Names and ids from `docker load`'s messages. Failures arrive inside a 200 response: every message is checked."""
    names: list[str] = []
    ids: list[str] = []
    for message in messages:
        if message.get("error") or message.get("errorDetail"):
            detail = message.get("error") or message.get("errorDetail", {}).get("message", "")
            raise RuntimeFailure(f"{plan.where}: docker load failed: {detail}", _diagnosis(str(detail)))
        text = str(message.get("stream", "")).strip()
        if text.startswith("Loaded image ID:"):
            ids.append(text.split(":", 1)[1].strip())
        elif text.startswith("Loaded image:"):
            names.append(text.split(":", 1)[1].strip())
    return names, ids


def load_one(plan: ImagePlan, client: docker.APIClient, load_client: docker.APIClient, platform: Platform, spool_dir: str | None = None) -> LoadedImage:
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
        raise _unnamed(plan.entry, f"{_shown(plan.entry, plan.source_path)} (an OCI archive)")
    layout = LayoutReader.tar(listing)
    names = list(plan.names)
    return ImagePlan(plan.entry, "OCI archive, inflated and converted", spooled, spooled.stat().st_size, plan.names, lambda p: oci_stream(layout, p, names))


def _load_plan(plan: ImagePlan, client: docker.APIClient, load_client: docker.APIClient, platform: Platform) -> LoadedImage:
    started = time.monotonic()
    try:
        loaded_names, loaded_ids, sent = _upload(plan, load_client, platform)
    except (docker.errors.APIError, requests.exceptions.RequestException, ArchiveError, OSError) as error:
        damaged = _archive_error(error)
        if damaged is not None:
            raise RuntimeFailure(f"{plan.where}: {damaged}", LOAD_HINT) from None
        explanation = str(getattr(error, "explanation", None) or error)
        raise RuntimeFailure(f"{plan.where}: docker load failed: {explanation}", _diagnosis(explanation)) from None
    if not loaded_names and not loaded_ids:
        raise RuntimeFailure(f"{plan.where}: docker load reported no image", "the archive holds no image")
    if not loaded_names and not plan.names:
        raise _unnamed(plan.entry, _shown(plan.entry, plan.source_path))
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
        container = client.create_container(image_id, command=VERIFY_COMMAND, network_disabled=True, host_config=host_config)["Id"]
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        return f"creating a container from it failed: {_explained(error)}"
    try:
        client.remove_container(container, v=True, force=True)
    except (docker.errors.DockerException, requests.exceptions.RequestException) as error:
        return f"removing its test container failed: {_explained(error)}"
    return ""


def _explained(error: Exception) -> str:
    return str(getattr(error, "explanation", None) or error)


def name_written_image(plan: ImagePlan, written_id: str, repo_tags: tuple[str, ...], client: docker.APIClient, seconds: float, size: int) -> LoadedImage:
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
        console.info(f"{plan.where}: {image.size / 2**20:.1f} MiB streamed in {image.seconds:.2f}s ({rate:.0f} MiB/s) → {', '.join(image.names)}")
        return image

    return _run_all(plans, load, concurrency)


def _run_all(plans: list[ImagePlan], load: Callable[[ImagePlan], LoadedImage], concurrency: int) -> list[LoadedImage]:
    """`load` every plan on `concurrency` daemon threads; the first failure, whichever plan, is raised at once.

    Daemon threads, not an executor: after a failure or an abort the uploads still in flight
    must not hold the process (stopping the daemon, at teardown, ends them), and a
    ThreadPoolExecutor's workers are joined at interpreter exit.
    """
    pending: queue.SimpleQueue[tuple[int, ImagePlan]] = queue.SimpleQueue()
    for item in enumerate(plans):
        pending.put(item)
    finished: queue.SimpleQueue[tuple[int, LoadedImage | None, BaseException | None]] = queue.SimpleQueue()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            try:
                index, plan = pending.get_nowait()
            except queue.Empty:
                return
            try:
                finished.put((index, load(plan), None))
            except BaseException as error:  # handed to the main thread, raised there
                finished.put((index, None, error))
                return

    for number in range(min(concurrency, len(plans))):
        threading.Thread(target=worker, name=f"load-{number}", daemon=True).start()
    results: dict[int, LoadedImage] = {}
    try:
        while len(results) < len(plans):
            try:
                index, image, error = finished.get(timeout=0.2)  # a short wait keeps SIGTERM responsive
            except queue.Empty:
                continue
            if error is not None:
                raise error
            assert image is not None
            results[index] = image
    finally:
        stop.set()  # loads not yet started are dropped
    return [results[index] for index in range(len(plans))]
