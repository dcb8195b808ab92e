"""`params.images`: recognise each input's shape from its files, then stream it into the daemon and name it.

Shapes (DESIGN.md §3), recognised by their files, never by who made them:
- a tarball file (`.tar`, `.tar.gz`, `.tgz`, `.tar.zst`): docker save or OCI archive;
- a directory with `image.tar` (registry-image `format: oci`, oci-build-task) or
  `image/image.tar` (an oci-build-task output given by its parent);
- a directory with `image` and `image-id` (docker-image `save: true`);
- a directory with `oci/index.json`, or an OCI layout itself (registry-image `format: oci-layout`);
- a directory with `rootfs/` and `metadata.json` (registry-image's default format).
`repository` and `tag` files, where present, name the image; an entry's `tag` adds names.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker

from . import archives
from .config import ImageEntry
from .console import Console
from .errors import RuntimeFailure, UserError

#: Loads run one after another: on the reference VM three parallel `docker load`s of
#: 300 MB each took 6.0-9.0 s against 5.1-7.4 s in sequence (the daemon's layer
#: extraction is disk- and CPU-bound), so parallel loading only adds contention.
LOAD_CONCURRENCY = 1

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?))*(?::[0-9]+)?"
REFERENCE = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?$")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst")
Platform = tuple[str, str, str]


def split_reference(reference: str) -> tuple[str, str]:
    """`host:5000/app:1.2` → (`host:5000/app`, `1.2`); no tag means `latest`."""
    slash = reference.rfind("/")
    colon = reference.rfind(":")
    if colon > slash:
        return reference[:colon], reference[colon + 1 :]
    return reference, "latest"


def check_reference(reference: str, path: str) -> str:
    if len(reference) > 255 or not REFERENCE.match(reference):
        raise UserError(path, f"{reference!r} is not a valid image reference", "use name[:tag] in lowercase, e.g. myorg/app:1.2 or registry.local:5000/app:ci")
    return reference


@dataclass(frozen=True)
class ImagePlan:
    """What will be loaded for one entry, decided before the daemon exists."""

    entry: ImageEntry
    shape: str
    source_path: Path
    size: int
    names: tuple[str, ...]
    embedded_names: tuple[str, ...]
    stream: Callable[[Platform], Iterator[bytes]]
    compressed: bool = False

    @property
    def estimated_bytes(self) -> int:
        """Unpacked size guess for the memory decision: compressed inputs grow about 3×."""
        return self.size * (3 if self.compressed else 2)


@dataclass(frozen=True)
class LoadedImage:
    entry: ImageEntry
    image_id: str
    names: tuple[str, ...]
    seconds: float
    size: int


def _read_name_files(directory: Path, entry: ImageEntry) -> tuple[str, ...]:
    repository_file = directory / "repository"
    if not repository_file.is_file():
        return ()
    repository = repository_file.read_text().strip()
    if not repository:
        return ()
    tag_file = directory / "tag"
    tag = tag_file.read_text().strip() if tag_file.is_file() else ""
    reference = f"{repository}:{tag or 'latest'}"
    return (check_reference(reference, f"{entry.param_path} (the repository and tag files)"),)


def _tree_size(root: Path) -> int:
    total = 0
    for directory, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except OSError:
                pass
    return total


def _tarball_plan(entry: ImageEntry, path: Path, shape: str, file_names: tuple[str, ...]) -> ImagePlan:
    where = entry.param_path
    size = path.stat().st_size
    compression = archives.compression_of(path)
    embedded: tuple[str, ...] = ()
    if compression == "none":
        if not archives.is_tar(path):
            raise UserError(
                where,
                f"{_shown(entry, path)} is not an image: not a tar archive",
                "give a docker save / OCI tarball (.tar, .tar.gz, .tar.zst) or an image directory",
            )
        manifest = archives.read_manifest(path)
        if manifest is None and not _has_member(path, "index.json"):
            raise UserError(where, f"{_shown(entry, path)} is not an image: a tar without manifest.json or index.json", "is it a docker save or OCI archive?")
        if manifest:
            embedded = tuple(tag for image in manifest for tag in image.get("RepoTags") or [])
    names = tuple(dict.fromkeys([*file_names, *entry.tags]))
    if not names and compression == "none" and not embedded:
        raise UserError(
            where,
            f"{_shown(entry, path)} carries no image name (no RepoTags, no repository file)",
            f"say which name the compose file uses: images: [{{path: {entry.given}, tag: myorg/app:latest}}]",
        )
    return ImagePlan(entry, shape, path, size, names, embedded, lambda _platform: archives.decompressed_chunks(path), compression != "none")


def _has_member(path: Path, name: str) -> bool:
    import tarfile

    try:
        with tarfile.open(path, mode="r:") as archive:
            return any(member.name.lstrip("./") == name for member in archive)
    except (tarfile.TarError, OSError, EOFError):
        return False


def _shown(entry: ImageEntry, path: Path) -> str:
    return entry.given if path == entry.path else f"{entry.given}/{path.relative_to(entry.path)}"


def plan_image(entry: ImageEntry) -> ImagePlan:
    """Recognise the shape of one entry and check it, without a daemon."""
    for tag_index, tag in enumerate(entry.tags):
        check_reference(tag, f"{entry.param_path}.tag" + (f"[{tag_index}]" if len(entry.tags) > 1 else ""))
    path = entry.path
    if path.is_file():
        return _tarball_plan(entry, path, "tarball", ())
    if not path.is_dir():
        raise UserError(entry.param_path, f"{entry.given} is neither a file nor a directory")
    file_names = _read_name_files(path, entry)
    layout = path / "oci" if (path / "oci" / "index.json").is_file() else path if (path / "index.json").is_file() and (path / "oci-layout").is_file() else None
    if layout is not None:
        names = tuple(dict.fromkeys([*file_names, *entry.tags]))
        if not names:
            raise UserError(
                entry.param_path,
                f"{entry.given} is an OCI layout without a name (no repository file)",
                f"add a tag: images: [{{path: {entry.given}, tag: myorg/app:latest}}]",
            )
        return ImagePlan(
            entry, "oci-layout", layout, _tree_size(layout / "blobs"), names, (), lambda platform: archives.oci_layout_stream(layout, platform, list(names))
        )
    if (path / "rootfs").is_dir():
        metadata_file = path / "metadata.json"
        try:
            metadata = json.loads(metadata_file.read_text()) if metadata_file.is_file() else {}
        except json.JSONDecodeError as error:
            raise UserError(entry.param_path, f"{entry.given}/metadata.json is not valid JSON: {error}") from None
        names = tuple(dict.fromkeys([*file_names, *entry.tags]))
        if not names:
            raise UserError(
                entry.param_path,
                f"{entry.given} is a rootfs without a name (no repository file)",
                f"add a tag: images: [{{path: {entry.given}, tag: myorg/app:latest}}]",
            )
        rootfs = path / "rootfs"
        return ImagePlan(
            entry, "rootfs", rootfs, _tree_size(rootfs), names, (), lambda platform: archives.rootfs_stream(rootfs, metadata, platform[1], list(names))
        )
    for candidate, shape in ((path / "image.tar", "image.tar"), (path / "image" / "image.tar", "image.tar"), (path / "image", "docker-image save")):
        if candidate.is_file():
            return _tarball_plan(entry, candidate, shape, file_names)
    present = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
    raise UserError(
        entry.param_path,
        f"{entry.given} is not an image: no image.tar, image, oci/index.json or rootfs/ in it (it holds: {present})",
        "point at the output of a registry-image get, docker-image get (save: true), oci-build-task, or at a tarball",
    )


def plan_images(entries: tuple[ImageEntry, ...]) -> list[ImagePlan]:
    return [plan_image(entry) for entry in entries]


def check_free_space(plans: list[ImagePlan], data_root: str) -> None:
    if not plans:
        return
    needed = sum(2 * plan.size for plan in plans)
    stats = os.statvfs(data_root)
    free = stats.f_bavail * stats.f_frsize
    if free < needed:
        raise RuntimeFailure(
            f"the data root {data_root} is out of space: {free / 2**30:.1f} GiB free, about {needed / 2**30:.1f} GiB needed to load the images",
            "free space on the worker, or set source.dockerd.data_root_medium (memory/disk) or data_root",
        )


def daemon_platform(client: docker.APIClient) -> Platform:
    version = client.version()
    return (version.get("Os", "linux"), version.get("Arch", "amd64"), "")


class _Counter:
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.sent += len(chunk)
            yield chunk


def load_one(plan: ImagePlan, client: docker.APIClient, load_client: docker.APIClient, platform: Platform) -> LoadedImage:
    started = time.monotonic()
    where = f"{plan.entry.param_path} ({plan.entry.given})"
    counter = _Counter(plan.stream(platform))
    loaded_names: list[str] = []
    loaded_ids: list[str] = []
    try:
        for message in load_client.load_image(iter(counter)):
            # Failures arrive inside a 200 response: look at every message.
            if "error" in message or "errorDetail" in message:
                detail = message.get("error") or message.get("errorDetail", {}).get("message", "")
                raise RuntimeFailure(f"{where}: docker load failed: {detail}", "the tarball is corrupt or truncated; rebuild or re-fetch it")
            text = message.get("stream", "").strip()
            if text.startswith("Loaded image ID:"):
                loaded_ids.append(text.split(":", 1)[1].strip())
            elif text.startswith("Loaded image:"):
                loaded_names.append(text.split(":", 1)[1].strip())
    except archives.ArchiveError as error:
        raise RuntimeFailure(f"{where}: {error}") from None
    except docker.errors.APIError as error:
        raise RuntimeFailure(
            f"{where}: docker load failed: {error.explanation or error}", "the tarball is corrupt or truncated; rebuild or re-fetch it"
        ) from None
    if not loaded_names and not loaded_ids:
        raise RuntimeFailure(f"{where}: docker load reported no image", "the archive holds no image")
    target = loaded_ids[0] if loaded_ids else loaded_names[0]
    image_id = client.inspect_image(target)["Id"]
    for name in plan.names:
        repository, tag = split_reference(name)
        client.tag(image_id, repository, tag)
    names = tuple(dict.fromkeys([*loaded_names, *plan.names]))
    return LoadedImage(plan.entry, image_id, names, time.monotonic() - started, counter.sent)


def load_images(plans: list[ImagePlan], client: docker.APIClient, load_client: docker.APIClient, console: Console) -> list[LoadedImage]:
    platform = daemon_platform(client) if plans else ("linux", "amd64", "")
    loaded = []
    for plan in plans:
        console.info(f"{plan.entry.param_path}: {plan.entry.given} ({plan.shape}, {plan.size / 2**20:.1f} MiB on disk)")
        image = load_one(plan, client, load_client, platform)
        console.info(f"  loaded {image.size / 2**20:.1f} MiB in {image.seconds:.2f}s as {', '.join(image.names) or image.image_id[:19]}")
        loaded.append(image)
    return loaded
