"""Byte streams of docker-save archives, made on the fly from whatever shape an input has.

Everything here yields chunks: a 1 GB tarball never sits in memory, and nothing is
copied to disk. `docker load` extracts the whole archive before reading it, so the
order of entries in a synthesised archive does not matter.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHUNK = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

INDEX_TYPES = {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}
MANIFEST_TYPES = {"application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"}


class ArchiveError(Exception):
    """The input is not what its shape promised (bad JSON, missing blob, no platform)."""


def compression_of(path: Path) -> str:
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def gunzip_chunks(path: Path) -> Iterator[bytes]:
    """Streaming gunzip that also handles multi-member files (pigz, concatenated gzip)."""
    decompressor = zlib.decompressobj(wbits=31)
    for chunk in file_chunks(path):
        while chunk:
            if decompressor.eof:
                decompressor = zlib.decompressobj(wbits=31)
            try:
                data = decompressor.decompress(chunk)
            except zlib.error as error:
                raise ArchiveError(f"{path.name} is not valid gzip ({error})") from None
            if data:
                yield data
            chunk = decompressor.unused_data if decompressor.eof else b""
    if not decompressor.eof:
        raise ArchiveError(f"{path.name} is truncated: its gzip stream ends early")


def unzstd_chunks(path: Path) -> Iterator[bytes]:
    """zstd has no stdlib module before Python 3.14: stream through the zstd tool."""
    process = subprocess.Popen(["zstd", "-dcq", "--", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None
    try:
        while chunk := process.stdout.read(CHUNK):
            yield chunk
    finally:
        process.stdout.close()
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.returncode not in (0, -9):
            raise ArchiveError(f"zstd could not decompress {path.name}: {process.stderr.read().decode(errors='replace').strip()}")


def decompressed_chunks(path: Path) -> Iterator[bytes]:
    kind = compression_of(path)
    if kind == "gzip":
        return gunzip_chunks(path)
    if kind == "zstd":
        return unzstd_chunks(path)
    return file_chunks(path)


def read_manifest(path: Path) -> list[dict[str, Any]] | None:
    """manifest.json of an uncompressed docker-save tar, by seeking over the members (cheap)."""
    try:
        with tarfile.open(path, mode="r:") as archive:
            for member in archive:
                if member.name.lstrip("./") == "manifest.json":
                    handle = archive.extractfile(member)
                    return json.load(handle) if handle else None
    except (tarfile.TarError, json.JSONDecodeError, OSError, EOFError):
        return None
    return None


def is_tar(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(257)
        return handle.read(5) == b"ustar"


# ---------------------------------------------------------------- building archives


def _header(name: str, size: int, mode: int = 0o644) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = 0
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def bytes_entry(name: str, data: bytes) -> Iterator[bytes]:
    yield _header(name, len(data))
    yield data
    yield _padding(len(data))


def file_entry(name: str, path: Path) -> Iterator[bytes]:
    size = path.stat().st_size
    yield _header(name, size)
    yield from file_chunks(path)
    yield _padding(size)


def end_of_archive() -> bytes:
    return b"\0" * (tarfile.BLOCKSIZE * 2)


def docker_save_manifest(config: str, layers: list[str], repo_tags: list[str]) -> bytes:
    return json.dumps([{"Config": config, "RepoTags": repo_tags, "Layers": layers}]).encode()


# ---------------------------------------------------------------- OCI layout


def _blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    path = layout / "blobs" / algorithm / hexdigest
    if not hexdigest or not path.is_file():
        raise ArchiveError(f"blob {digest} is missing from {layout.name}/blobs")
    return path


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ArchiveError(f"{path.name}: {error}") from None


def _platform_text(platform: dict[str, str]) -> str:
    text = f"{platform.get('os', '?')}/{platform.get('architecture', '?')}"
    return text + (f"/{platform['variant']}" if platform.get("variant") else "")


def _is_attestation(descriptor: dict[str, Any]) -> bool:
    annotations = descriptor.get("annotations") or {}
    platform = descriptor.get("platform") or {}
    return "vnd.docker.reference.type" in annotations or platform.get("os") == "unknown"


def select_manifest(layout: Path, platform: tuple[str, str, str]) -> dict[str, Any]:
    """The image manifest for the daemon's (os, architecture, variant), through nested indexes."""
    wanted_os, wanted_arch, wanted_variant = platform
    seen: list[str] = []

    def walk(index: dict[str, Any]) -> dict[str, Any] | None:
        candidates = []
        for descriptor in index.get("manifests", []):
            if _is_attestation(descriptor):
                continue
            media_type = descriptor.get("mediaType", "")
            described = descriptor.get("platform")
            if described:
                seen.append(_platform_text(described))
                if described.get("os") != wanted_os or described.get("architecture") != wanted_arch:
                    continue
                if wanted_variant and described.get("variant") not in (None, "", wanted_variant):
                    continue
            candidates.append((0 if described else 1, media_type, descriptor))
        for _, media_type, descriptor in sorted(candidates, key=lambda c: c[0]):
            document = _load_json(_blob_path(layout, descriptor["digest"]))
            kind = media_type or document.get("mediaType", "")
            if kind in INDEX_TYPES or "manifests" in document:
                found = walk(document)
                if found:
                    return found
            elif kind in MANIFEST_TYPES or "layers" in document:
                return document
        return None

    manifest = walk(_load_json(layout / "index.json"))
    if manifest is None:
        offered = ", ".join(sorted(set(seen))) or "none"
        wanted = _platform_text({"os": wanted_os, "architecture": wanted_arch, "variant": wanted_variant})
        raise ArchiveError(f"no image for the daemon's platform {wanted} (the index offers: {offered})")
    return manifest


def oci_layout_stream(layout: Path, platform: tuple[str, str, str], repo_tags: list[str]) -> Iterator[bytes]:
    """An OCI image layout turned into a docker-save archive that the classic image store loads."""
    manifest = select_manifest(layout, platform)
    config_digest = manifest["config"]["digest"]
    layer_digests = [layer["digest"] for layer in manifest.get("layers", [])]
    paths = {digest: _blob_path(layout, digest) for digest in [config_digest, *layer_digests]}

    def name(digest: str) -> str:
        return "blobs/" + digest.replace(":", "/", 1)

    yield from bytes_entry("manifest.json", docker_save_manifest(name(config_digest), [name(d) for d in layer_digests], repo_tags))
    for digest in dict.fromkeys([config_digest, *layer_digests]):
        yield from file_entry(name(digest), paths[digest])
    yield end_of_archive()


# ---------------------------------------------------------------- rootfs


class _Sink(io.RawIOBase):
    """A write-only file that hands what tarfile writes to a callback."""

    def __init__(self) -> None:
        self.pending: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.pending.append(bytes(data))
        return len(data)


def _rootfs_tar(rootfs: Path) -> Iterator[bytes]:
    """A deterministic tar of `rootfs` (sorted, same metadata every time), as chunks."""
    sink = _Sink()
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK) as archive:
        for directory, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            relative_dir = os.path.relpath(directory, rootfs)
            for name in sorted(dirnames) + sorted(filenames):
                full = os.path.join(directory, name)
                arcname = name if relative_dir == "." else f"{relative_dir}/{name}"
                info = archive.gettarinfo(full, arcname)
                if info is None:  # sockets
                    continue
                if info.isreg():
                    with open(full, "rb") as handle:
                        archive.addfile(info, handle)
                else:
                    archive.addfile(info)
                if sink.pending:
                    yield b"".join(sink.pending)
                    sink.pending.clear()
    if sink.pending:
        yield b"".join(sink.pending)


def _measure(chunks: Iterator[bytes]) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return size, "sha256:" + digest.hexdigest()


def rootfs_config(metadata: dict[str, Any], diff_id: str, architecture: str) -> dict[str, Any]:
    config: dict[str, Any] = {"Env": list(metadata.get("env") or [])}
    if metadata.get("user"):
        config["User"] = str(metadata["user"])
    for ours, theirs in (("WorkingDir", "workdir"), ("WorkingDir", "working_dir"), ("Cmd", "cmd"), ("Entrypoint", "entrypoint")):
        if metadata.get(theirs):
            config[ours] = metadata[theirs]
    return {
        "architecture": architecture,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "compose-env: imported from a registry-image rootfs"}],
    }


def rootfs_stream(rootfs: Path, metadata: dict[str, Any], architecture: str, repo_tags: list[str]) -> Iterator[bytes]:
    """A one-layer docker-save archive of `rootfs/` with the env and user of `metadata.json`.

    The layer's size and digest must be known before its bytes: the tar is produced
    twice (deterministically), once to measure, once to send. Nothing is written to disk.
    """
    size, diff_id = _measure(_rootfs_tar(rootfs))
    config = json.dumps(rootfs_config(metadata, diff_id, architecture)).encode()
    config_name = "blobs/sha256/" + hashlib.sha256(config).hexdigest()
    layer_name = "blobs/sha256/" + diff_id.split(":", 1)[1]
    yield from bytes_entry("manifest.json", docker_save_manifest(config_name, [layer_name], repo_tags))
    yield from bytes_entry(config_name, config)
    yield _header(layer_name, size)
    digest = hashlib.sha256()
    sent = 0
    for chunk in _rootfs_tar(rootfs):
        digest.update(chunk)
        sent += len(chunk)
        yield chunk
    if sent != size or "sha256:" + digest.hexdigest() != diff_id:
        raise ArchiveError(f"{rootfs} changed while it was being loaded")
    yield _padding(size)
    yield end_of_archive()
