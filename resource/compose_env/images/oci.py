"""OCI image layouts, a directory or the members of a tar: their blobs, the image for a platform, and that image as
docker load takes it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from compose_env.images.errors import ArchiveError, NoMatchingPlatform
from compose_env.images.tar import (
    MAX_JSON_BLOB,
    Blob,
    TarListing,
    bytes_entry,
    docker_save_manifest,
    end_of_archive,
    file_entry,
)

INDEX_TYPES = {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}
MANIFEST_TYPES = {"application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"}
#: (os, architecture, variant) as Docker reports them; variant may be "".
Platform = tuple[str, str, str]


class LayoutReader:
    """The blobs of an OCI image layout, wherever it lives."""

    def __init__(self, label: str, read_index: Callable[[], Any], locate: Callable[[str], Blob | None]) -> None:
        self.label = label
        self._read_index = read_index
        self._locate = locate

    @classmethod
    def directory(cls, layout: Path) -> LayoutReader:
        def locate(relative: str) -> Blob | None:
            path = layout / relative
            return Blob(path, 0, path.stat().st_size) if path.is_file() else None

        return cls(f"{layout.name}/", lambda: _load_json(layout / "index.json"), locate)

    @classmethod
    def tar(cls, listing: TarListing) -> LayoutReader:
        def locate(relative: str) -> Blob | None:
            where = listing.members.get(relative)
            return Blob(listing.path, *where) if where else None

        return cls(listing.path.name, lambda: listing.read_json("index.json"), locate)

    def index(self) -> Any:
        return self._read_index()

    def blob(self, digest: str) -> Blob:
        algorithm, _, hexdigest = digest.partition(":")
        found = self._locate(f"blobs/{algorithm}/{hexdigest}") if hexdigest and "/" not in hexdigest else None
        if found is None:
            raise ArchiveError(f"blob {digest} is missing from {self.label}")
        return found

    def small_blob(self, digest: str) -> bytes:
        """A manifest or config blob's bytes (refused above MAX_JSON_BLOB)."""
        blob = self.blob(digest)
        if blob.size > MAX_JSON_BLOB:
            raise ArchiveError(f"blob {digest} in {self.label} is too big for a manifest")
        with open(blob.path, "rb") as handle:
            handle.seek(blob.offset)
            return handle.read(blob.size)

    def json_blob(self, digest: str) -> Any:
        data = self.small_blob(digest)
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ArchiveError(f"blob {digest} in {self.label} is not valid JSON ({error})") from None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArchiveError(f"{path.name}: {error}") from None


def platform_text(platform: dict[str, str] | Platform) -> str:
    if isinstance(platform, tuple):
        platform = {"os": platform[0], "architecture": platform[1], "variant": platform[2]}
    text = f"{platform.get('os', '?')}/{platform.get('architecture', '?')}"
    return text + (f"/{platform['variant']}" if platform.get("variant") else "")


def _is_attestation(descriptor: dict[str, Any]) -> bool:
    """buildx attaches provenance/SBOM as manifests for platform unknown/unknown."""
    annotations = descriptor.get("annotations") or {}
    platform = descriptor.get("platform") or {}
    return "vnd.docker.reference.type" in annotations or platform.get("os") == "unknown"


def _platform_matches(described: dict[str, str], wanted: Platform) -> bool:
    wanted_os, wanted_arch, wanted_variant = wanted
    if described.get("os") != wanted_os or described.get("architecture") != wanted_arch:
        return False
    return not wanted_variant or described.get("variant") in (None, "", wanted_variant)


def select_manifest(layout: LayoutReader, platform: Platform) -> dict[str, Any]:
    """The image manifest for the daemon's platform, through nested indexes, skipping attestations."""
    offered: list[str] = []

    def walk(index: dict[str, Any], depth: int) -> dict[str, Any] | None:
        if depth > 8:
            raise ArchiveError(f"{layout.label}: indexes nested more than 8 deep")
        matching, unlabelled = [], []
        for descriptor in index.get("manifests") or []:
            if _is_attestation(descriptor):
                continue
            described = descriptor.get("platform")
            if not described:
                unlabelled.append(descriptor)
            elif _platform_matches(described, platform):
                matching.append(descriptor)
            else:
                offered.append(platform_text(described))
        for descriptor in matching + unlabelled:
            document = layout.json_blob(descriptor["digest"])
            kind = descriptor.get("mediaType") or document.get("mediaType", "")
            if kind in INDEX_TYPES or "manifests" in document:
                found = walk(document, depth + 1)
            elif kind in MANIFEST_TYPES or "layers" in document:
                found = (
                    document
                    if descriptor.get("platform") or _config_matches(layout, document, platform, offered)
                    else None
                )
            else:
                found = None
            if found:
                return found
        return None

    manifest = walk(layout.index(), 0)
    if manifest is None:
        choices = ", ".join(sorted(set(offered))) or "no image manifest at all"
        raise NoMatchingPlatform(
            f"{layout.label} has no image for the daemon's platform {platform_text(platform)}; it offers: {choices}"
        )
    return manifest


def _config_matches(layout: LayoutReader, manifest: dict[str, Any], platform: Platform, offered: list[str]) -> bool:
    """A manifest without a platform label (single-image layout): its config says what it is."""
    config = layout.json_blob(manifest["config"]["digest"])
    described = {
        "os": config.get("os", ""),
        "architecture": config.get("architecture", ""),
        "variant": config.get("variant", ""),
    }
    if not described["os"] and not described["architecture"]:
        return True
    if _platform_matches(described, platform):
        return True
    offered.append(platform_text(described))
    return False


def chosen_platform(layout: LayoutReader, manifest: dict[str, Any]) -> str:
    """What the chosen image says it is (its config's os/architecture), for the log: what was taken, not asked for."""
    config = layout.json_blob(manifest["config"]["digest"])
    if not isinstance(config, dict):
        raise ArchiveError(f"{layout.label}: the image config is not a JSON object")
    return platform_text({key: str(config.get(key) or "") for key in ("os", "architecture", "variant")})


def image_bytes(layout: LayoutReader, manifest: dict[str, Any]) -> int:
    """What the chosen image's config and layers weigh (a multi-platform layout holds far more)."""
    digests = {manifest["config"]["digest"], *(layer["digest"] for layer in manifest.get("layers", []))}
    return sum(layout.blob(digest).size for digest in digests)


def oci_stream(layout: LayoutReader, platform: Platform, repo_tags: list[str]) -> Iterator[bytes]:
    """An OCI image layout turned into a docker-save archive that the classic image store loads.

    Only the chosen platform's config and layers are sent, each under its blob path,
    plus a `manifest.json` naming them. The manifest is chosen before the first byte.
    """
    manifest = select_manifest(layout, platform)
    config_digest = manifest["config"]["digest"]
    layer_digests = [layer["digest"] for layer in manifest.get("layers", [])]
    blobs = {digest: layout.blob(digest) for digest in [config_digest, *layer_digests]}

    def name(digest: str) -> str:
        return "blobs/" + digest.replace(":", "/", 1)

    yield from bytes_entry(
        "manifest.json", docker_save_manifest(name(config_digest), [name(d) for d in layer_digests], repo_tags)
    )
    for digest, blob in blobs.items():
        yield from file_entry(name(digest), blob.path, blob.offset, blob.size)
    yield end_of_archive()
