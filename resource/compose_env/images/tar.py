"""Tar archives as streams: reading files in chunks, listing and checking a tar, writing tar entries.

Everything here yields chunks: a 1 GB tarball never sits in memory, and nothing is copied to
disk. A tar is checked before it is trusted (Python's tarfile stops quietly at a bad header or
at the end of a file): `list_tar` for one on disk, `TarStreamChecker` for one being inflated.
The writing side makes the docker-save archives that `oci` and `rootfs` stream into `docker
load`, which unpacks the whole archive before it reads `manifest.json`, so the order of their
entries does not matter.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compose_env.images.errors import ArchiveError

CHUNK = 1024 * 1024
BLOCK = tarfile.BLOCKSIZE
#: JSON blobs (index, manifest, config) are read into memory; nothing bigger is.
MAX_JSON_BLOB = 4 * 1024 * 1024


# ---------------------------------------------------------------- reading files


@dataclass(frozen=True)
class Blob:
    """Where a blob's bytes are: a file, or a slice of a tar."""

    path: Path
    offset: int
    size: int


def file_chunks(path: Path, offset: int = 0, size: int | None = None) -> Iterator[bytes]:
    """The bytes of a file (or of `size` bytes from `offset`), CHUNK at a time."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        left = size
        while left is None or left > 0:
            chunk = handle.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                break
            if left is not None:
                left -= len(chunk)
            yield chunk
        if left:
            raise ArchiveError(f"{path.name} ended {left} bytes early")


class FileBody:
    """A file as an HTTP request body: its length known (Content-Length, no chunk framing), read CHUNK at a time.

    urllib3 reads a plain file in 16 KiB blocks: measured on 1 GiB, that costs 0.8-0.9 s of CPU
    against 0.3 s in 1 MiB reads (and 0.9-1.1 s for `docker load -i`).
    """

    def __init__(self, path: Path) -> None:
        self.size = path.stat().st_size
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close() / the with block

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self._file.read(CHUNK), b"")

    def read(self, _size: int = -1) -> bytes:
        return self._file.read(CHUNK)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FileBody:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- tar structure


@dataclass(frozen=True)
class TarListing:
    """Where each member of an uncompressed tar is: name → (data offset, size)."""

    path: Path
    members: dict[str, tuple[int, int]] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.members

    def read(self, name: str) -> bytes:
        offset, size = self.members[name]
        if size > MAX_JSON_BLOB:
            raise ArchiveError(f"{name} in {self.path.name} is {size} bytes: too big for a JSON document")
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ArchiveError(f"{name} in {self.path.name} is not valid JSON ({error})") from None


def _member_name(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def list_tar(path: Path) -> TarListing:
    """Every member of an uncompressed tar, checked for truncation and corrupt headers.

    Cheap: it seeks over the data. Python's tarfile silently stops at a bad header or at
    the end of the file, so the end is checked here: the last member must be complete
    and be followed by end-of-archive zeros or nothing.
    """
    size = path.stat().st_size
    listing = TarListing(path)
    last = "the start of the archive"
    try:
        with tarfile.open(path, mode="r:") as archive:
            for member in archive:
                end = member.offset_data + (member.size if member.isreg() else 0)
                if end > size:
                    raise ArchiveError(
                        f"{path.name} is truncated inside {member.name} ({size - member.offset_data} of {member.size} "
                        "bytes present)"
                    )
                if member.isreg():
                    listing.members[_member_name(member.name)] = (member.offset_data, member.size)
                last = member.name
            stop = archive.offset
    except tarfile.ReadError as error:
        raise ArchiveError(f"{path.name} is not a readable tar ({error})") from None
    with open(path, "rb") as handle:
        handle.seek(stop)
        tail = handle.read(2 * BLOCK)
    if tail.strip(b"\0"):
        if len(tail) < BLOCK:
            raise ArchiveError(f"{path.name} is truncated inside the tar header after {last}")
        raise ArchiveError(f"{path.name} is corrupt: the tar header after {last} is damaged")
    return listing


def is_tar(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(257)
        return handle.read(5) == b"ustar"


class TarStreamChecker:
    """Follows the tar structure of a stream as it passes, to name the member where it breaks.

    Used on compressed inputs, whose structure cannot be checked before loading: the
    stream stops with an ArchiveError instead of handing the daemon a broken archive.
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.pending = b""  # bytes of a header not yet complete
        self.skip = 0  # data and padding of the current member still to pass
        self.current = ""
        self.current_size = 0
        self.ended = False
        self.long_name: str | None = None
        self.meta_kind = b""
        self.meta_left = 0
        self.meta = b""

    def feed(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        try:
            for chunk in chunks:
                self._parse(chunk)
                yield chunk
        except ArchiveError as error:  # the decompressor gave up: say where in the archive
            raise ArchiveError(f"{error}, {self._position()}" if not self.ended else str(error)) from None
        if not self.ended and (self.skip or self.pending):
            raise ArchiveError(f"{self.label} is truncated {self._position()}")

    def _position(self) -> str:
        if not self.skip:
            return "inside a tar header" if self.pending else f"after {self.current or 'the start of the archive'}"
        got = self.current_size - max(self.skip - (-self.current_size % BLOCK), 0)
        return f"inside {self.current} ({got} of {self.current_size} bytes present)"

    def _parse(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view and not self.ended:
            if self.skip:
                taken = min(self.skip, len(view))
                if self.meta_left:
                    keep = min(self.meta_left, taken)
                    self.meta += bytes(view[:keep])
                    self.meta_left -= keep
                self.skip -= taken
                view = view[taken:]
                if not self.skip and self.meta:
                    self._read_meta()
                continue
            need = BLOCK - len(self.pending)
            self.pending += bytes(view[:need])
            view = view[need:]
            if len(self.pending) == BLOCK:
                self._header(self.pending)
                self.pending = b""

    def _header(self, block: bytes) -> None:
        if not block.strip(b"\0"):
            self.ended = True
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as error:
            after = f"after {self.current}" if self.current else "at the start"
            raise ArchiveError(f"{self.label} is corrupt: the tar header {after} is damaged ({error})") from None
        self.meta_kind = info.type
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME):
            self.meta_left = min(info.size, 65536)
        else:
            self.current = self.long_name or info.name
            self.long_name = None
        self.current_size = info.size if info.type not in (tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.DIRTYPE) else 0
        self.skip = self.current_size + (-self.current_size % BLOCK)

    def _read_meta(self) -> None:
        text = self.meta.decode("utf-8", "replace")
        self.meta = b""
        if self.meta_kind == tarfile.GNUTYPE_LONGNAME:
            self.long_name = text.rstrip("\0")
            return
        for record in text.split("\n"):
            _, _, keyword_value = record.partition(" ")
            if keyword_value.startswith("path="):
                self.long_name = keyword_value[5:]


# ---------------------------------------------------------------- writing archives


def entry_header(name: str, size: int, mode: int = 0o644) -> bytes:
    """A PAX header for a regular file, timestamped 0 so that the same entry gives the same bytes."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = 0
    return info.tobuf(format=tarfile.PAX_FORMAT)


def entry_padding(size: int) -> bytes:
    """The zeros that fill an entry's data up to the next block."""
    return b"\0" * (-size % BLOCK)


def bytes_entry(name: str, data: bytes) -> Iterator[bytes]:
    yield entry_header(name, len(data))
    yield data
    yield entry_padding(len(data))


def file_entry(name: str, path: Path, offset: int = 0, size: int | None = None) -> Iterator[bytes]:
    """A tar entry whose data is a file (or a slice of one, e.g. a member of another tar)."""
    size = path.stat().st_size if size is None else size
    yield entry_header(name, size)
    yield from file_chunks(path, offset, size)
    yield entry_padding(size)


def end_of_archive() -> bytes:
    return b"\0" * (BLOCK * 2)


def docker_save_manifest(config: str, layers: list[str], repo_tags: list[str]) -> bytes:
    return json.dumps([{"Config": config, "RepoTags": repo_tags, "Layers": layers}]).encode()
