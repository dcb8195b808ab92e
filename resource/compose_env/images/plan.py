"""`params.images` planned: each input's shape recognised from its files and checked, before any daemon exists.

Shapes, recognised by their files, never by who made them:
- a tarball file (`.tar`, `.tar.gz`, `.tgz`, `.tar.zst`): docker save, or an OCI archive;
- a directory with `image.tar` (registry-image `format: oci`, oci-build-task), `image/image.tar`
  (an oci-build-task output given by its parent) or `image` (docker-image `save: true`);
- a directory with `oci/index.json`, or an OCI layout itself (registry-image `format: oci-layout`);
- a directory with `rootfs/` and `metadata.json` (registry-image's default format, docker-image's `in`).
Producers leave several side by side (docker-image `save: true`: `image`, `rootfs/`, `metadata.json`;
oci-build-task `UNPACK_ROOTFS`: `image.tar`, `rootfs/`, `metadata.json`): the richest form wins, a
tarball or layout, which keeps the whole image config. A `rootfs/` is used only when nothing else
is there, with the config the files beside it carry (rootfs_metadata.py).
`repository` and `tag` files, where present, name the image; an entry's `tag` adds names.

Planning (`plan_images`) needs no daemon: it runs before the daemon starts, so that a bad
entry fails before anything is loaded. Each plan says how its bytes reach the daemon: a
docker-save stream for `load`, and where it can, the config and layers for `layerstore`.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform as host
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from compose_env.config.model import ImageEntry
from compose_env.errors import RuntimeFailure, UserError
from compose_env.images import layerstore
from compose_env.images.compression import compression_of, decompressed_chunks
from compose_env.images.errors import ArchiveError, NoMatchingPlatform
from compose_env.images.layerstore import DirectImage, RootfsImage
from compose_env.images.oci import (
    LayoutReader,
    Platform,
    chosen_platform,
    image_bytes,
    oci_stream,
    select_manifest,
)
from compose_env.images.reference import check_reference, familiar
from compose_env.images.rootfs import RootfsLayer, rootfs_config, rootfs_stream
from compose_env.images.rootfs_metadata import read_rootfs_metadata
from compose_env.images.tar import Blob, FileBody, TarListing, TarStreamChecker, is_tar, list_tar

#: Go's names for `uname -m`, as Docker reports a daemon's architecture.
GO_ARCHITECTURES = {
    "x86_64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i686": ("386", ""),
}
LOAD_HINT = (
    "the file is damaged (an interrupted download or copy?): re-run the step that produced it."
    " Nothing from it was loaded."
)
#: Why a damaged tarball or layout fails the put although a `rootfs/` lies beside it (docker-image `save: true`,
#: oci-build-task `UNPACK_ROOTFS`).
ROOTFS_NOT_INSTEAD = (
    "the rootfs/ beside it is not used in its place: it is not the image the step saved (one squashed layer, with"
    " only the config the files beside it carry), and what damaged one file may have damaged the others"
)
PLATFORM_HINT = (
    "fetch the image for this worker's platform (registry-image's `platform` source option),"
    " or use a multi-platform image"
)
NAME_HINT = "say which name the compose file uses, e.g. images: [{{path: {given}, tag: myorg/app:latest}}]"


def local_platform() -> Platform:
    """The platform of this machine, which the inner daemon shares."""
    architecture, variant = GO_ARCHITECTURES.get(host.machine(), (host.machine(), ""))
    return ("linux", architecture, variant)


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
    #: Said once in the build log when the plan is shown: what this input loses (a rootfs without the whole config).
    warning: str = ""
    #: A `rootfs/` lies beside the tarball or layout used (the richest form wins), not used in its place.
    rootfs_beside: bool = False

    @property
    def estimated_bytes(self) -> int:
        """Space the load needs on the data root: docker load unpacks the archive, then the layers (compressed inputs
        grow about 3×)."""
        return self.size * (3 if self.compressed else 2)

    @property
    def where(self) -> str:
        return f"{self.entry.param_path} ({self.entry.given})"

    @property
    def damage_hint(self) -> str:
        return damage_hint(self.rootfs_beside)


def damage_hint(rootfs_beside: bool) -> str:
    """What to do about a damaged input, and why a rootfs beside it does not stand in."""
    return f"{LOAD_HINT}\n{ROOTFS_NOT_INSTEAD}" if rootfs_beside else LOAD_HINT


def shown_path(entry: ImageEntry, path: Path) -> str:
    """A path inside an entry as the user wrote the entry: `given`, or `given/image/image.tar`."""
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


class DamagedInput(RuntimeFailure):
    """An input's bytes are not what its shape promised (truncated, corrupt, a blob missing), found while planning."""


def _damaged(entry: ImageEntry, error: ArchiveError) -> DamagedInput:
    return DamagedInput(f"{entry.param_path} ({entry.given}): {error}", LOAD_HINT)


def unnamed_error(entry: ImageEntry, what: str) -> UserError:
    """An image nothing names (`what` is the file, as shown): the entry needs a `tag`."""
    return UserError(
        entry.param_path,
        f"{what} carries no image name (no RepoTags, no repository file) and the entry has no tag",
        NAME_HINT.format(given=entry.given),
    )


def _tarball_plan(entry: ImageEntry, path: Path, names: tuple[str, ...], guessed: tuple[str, ...] = ()) -> ImagePlan:
    """`guessed` names (`repository:latest` for want of a tag file) apply only to a tarball without RepoTags."""
    shown = shown_path(entry, path)
    size = path.stat().st_size
    compression = compression_of(path)
    if compression:

        def decompressed(_platform: Platform) -> Iterator[bytes]:
            return TarStreamChecker(shown).feed(decompressed_chunks(path))

        return ImagePlan(
            entry,
            f"tarball, {compression}-compressed (decompressed while streaming)",
            path,
            size,
            names,
            decompressed,
            compressed=True,
        )
    if not is_tar(path):
        raise UserError(
            entry.param_path,
            f"{shown} is not an image: not a tar archive",
            "give a docker save / OCI tarball (.tar, .tar.gz, .tgz, .tar.zst) or an image directory",
        )
    try:
        listing = list_tar(path)
        if listing.has("manifest.json"):
            return _docker_save_plan(entry, path, listing, names, guessed)
        if listing.has("index.json"):
            return _oci_archive_plan(entry, path, listing, names)
    except NoMatchingPlatform as error:
        raise UserError(entry.param_path, f"{shown}: {error}", PLATFORM_HINT) from None
    except ArchiveError as error:
        raise _damaged(entry, error) from None
    raise UserError(
        entry.param_path,
        f"{shown} is not an image: a tar without manifest.json or index.json",
        "is it a docker save or OCI archive?",
    )


def _docker_save_plan(
    entry: ImageEntry, path: Path, listing: TarListing, names: tuple[str, ...], guessed: tuple[str, ...]
) -> ImagePlan:
    """A docker-save archive: named by its RepoTags (then a guessed `latest` gives way) and the entry's names."""
    shown = shown_path(entry, path)
    manifest = listing.read_json("manifest.json")
    embedded = [familiar(tag) for image in manifest if isinstance(image, dict) for tag in image.get("RepoTags") or []]
    if embedded:
        names = tuple(name for name in names if name not in guessed)
    if not names and not embedded:
        raise unnamed_error(entry, shown)
    shape = "docker-save tarball" + (f" (RepoTags: {', '.join(embedded)})" if embedded else " (no RepoTags)")
    direct = _docker_save_direct(listing, manifest, tuple(embedded))
    return ImagePlan(entry, shape, path, path.stat().st_size, names, lambda _platform: FileBody(path), direct=direct)


def _oci_archive_plan(entry: ImageEntry, path: Path, listing: TarListing, names: tuple[str, ...]) -> ImagePlan:
    """An OCI layout as one tar: the daemon's platform, converted while streaming; only the entry's names."""
    if not names:
        raise unnamed_error(entry, f"{shown_path(entry, path)} (an OCI archive)")
    layout = LayoutReader.tar(listing)
    manifest = select_manifest(layout, local_platform())
    size = image_bytes(layout, manifest)
    shape = f"tarball with an OCI layout (the {chosen_platform(layout, manifest)} image, converted while streaming)"

    def stream(platform: Platform) -> Iterator[bytes]:
        return oci_stream(layout, platform, list(names))

    return ImagePlan(entry, shape, path, size, names, stream, direct=_layout_direct(layout))


def _docker_save_direct(
    listing: TarListing, manifest: Any, repo_tags: tuple[str, ...]
) -> Callable[[Platform], DirectImage | None] | None:
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
        manifest = select_manifest(reader, local_platform())
        size = image_bytes(reader, manifest)
        chosen = chosen_platform(reader, manifest)
    except NoMatchingPlatform as error:
        raise UserError(entry.param_path, f"{entry.given}: {error}", PLATFORM_HINT) from None
    except ArchiveError as error:
        raise _damaged(entry, error) from None
    return ImagePlan(
        entry,
        f"directory with an OCI layout (the {chosen} image, converted while streaming)",
        layout,
        size,
        names,
        lambda p: oci_stream(reader, p, list(names)),
        direct=_layout_direct(reader),
    )


def _rootfs_plan(entry: ImageEntry, directory: Path, names: tuple[str, ...]) -> ImagePlan:
    if not names:
        raise UserError(
            entry.param_path,
            f"{entry.given} is a rootfs without a name (no repository file)",
            NAME_HINT.format(given=entry.given),
        )
    metadata = read_rootfs_metadata(entry, directory)
    rootfs = directory / "rootfs"
    layer = RootfsLayer(rootfs)

    def config_for(architecture: str) -> Callable[[str], bytes]:
        return lambda diff_id: json.dumps(rootfs_config(metadata.config, diff_id, architecture)).encode()

    return ImagePlan(
        entry,
        f"rootfs directory (archived while streaming, with {metadata.describe()})",
        rootfs,
        _tree_size(rootfs),
        names,
        lambda p: rootfs_stream(layer, metadata.config, p[1], list(names)),
        direct=lambda p: RootfsImage(rootfs, config_for(p[1])),
        prepare=layer.start,  # docker load needs its size and digest first: measured while the daemon starts
        warning=metadata.warning(f"{entry.param_path} ({entry.given})"),
    )


#: Where a directory may hold the image as a tarball: registry-image `format: oci` and oci-build-task (`image.tar`),
#: an oci-build-task output given by its parent (`image/image.tar`), docker-image `save: true` (`image`).
TARBALL_CANDIDATES = ("image.tar", "image/image.tar", "image")


def _beside_rootfs(plan: ImagePlan, directory: Path) -> ImagePlan:
    """The richest form wins: a tarball or layout keeps the whole image config, a `rootfs/` beside it only
    metadata.json's."""
    used = shown_path(plan.entry, plan.source_path).removeprefix(f"{plan.entry.given}/")
    ignored = [name for name in ("rootfs/", "rootfs.tar", "metadata.json") if (directory / name.rstrip("/")).exists()]
    why = f"{used} used, not the {', '.join(ignored)} beside it: it keeps the whole image config"
    why += " (CMD, ENTRYPOINT, HEALTHCHECK, …)"
    return replace(plan, shape=f"{plan.shape}; {why}", rootfs_beside=True)


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
    has_rootfs = (path / "rootfs").is_dir()
    plan: ImagePlan | None = None
    try:
        if (path / "oci" / "index.json").is_file():
            plan = _layout_plan(entry, path / "oci", names)
        elif (path / "index.json").is_file() and (path / "oci-layout").is_file():
            plan = _layout_plan(entry, path, names)
        elif tarball := next((path / name for name in TARBALL_CANDIDATES if (path / name).is_file()), None):
            guessed = tuple(name for name in from_files.names if name not in explicit) if from_files.guessed else ()
            plan = _tarball_plan(entry, tarball, names, guessed)
    except DamagedInput as damaged:
        if not has_rootfs:
            raise
        raise DamagedInput(damaged.message, damage_hint(rootfs_beside=True)) from None
    if plan is not None:
        return _beside_rootfs(plan, path) if has_rootfs else plan
    if has_rootfs:
        return _rootfs_plan(entry, path, names)
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
            "free space on the worker, or move the data root: source.dockerd.data_root (another volume) or "
            "source.dockerd.data_root_medium (memory or disk)",
        )


def _amount(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
