"""Compression: recognised by its magic bytes, inflated as a bounded stream, truncation reported (no Docker)."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import pytest
from compose_env.images.compression import compression_of, decompressed_chunks
from compose_env.images.errors import ArchiveError
from compose_env.images.tar import CHUNK


def test_gunzip_streams_multi_member_files(tmp_path: Path) -> None:
    path = tmp_path / "x.tar.gz"
    path.write_bytes(gzip.compress(b"first ") + gzip.compress(b"second"))

    assert b"".join(decompressed_chunks(path)) == b"first second"


def test_gunzip_output_stays_bounded_for_highly_compressed_data(tmp_path: Path) -> None:
    path = tmp_path / "zeros.tar.gz"
    with gzip.open(path, "wb", compresslevel=1) as sink:
        for _ in range(64):
            sink.write(bytes(CHUNK))

    sizes = [len(chunk) for chunk in decompressed_chunks(path)]

    assert sum(sizes) == 64 * CHUNK
    assert max(sizes) <= CHUNK


def test_gunzip_reports_a_truncated_stream(tmp_path: Path) -> None:
    path = tmp_path / "x.tar.gz"
    path.write_bytes(gzip.compress(bytes(range(256)) * 1000)[:300])

    with pytest.raises(ArchiveError, match=r"x\.tar\.gz is truncated: its gzip stream ends early"):
        b"".join(decompressed_chunks(path))


def test_zstd_streams_and_reports_truncation(tmp_path: Path) -> None:
    source = tmp_path / "x.tar"
    source.write_bytes(bytes(range(256)) * 10000)
    subprocess.run(["zstd", "-q", str(source), "-o", str(tmp_path / "x.tar.zst")], check=True)
    (tmp_path / "cut.tar.zst").write_bytes((tmp_path / "x.tar.zst").read_bytes()[:-20])

    assert compression_of(tmp_path / "x.tar.zst") == "zstd"
    assert b"".join(decompressed_chunks(tmp_path / "x.tar.zst")) == source.read_bytes()
    with pytest.raises(ArchiveError, match=r"cut\.tar\.zst is not valid zstd or is truncated"):
        b"".join(decompressed_chunks(tmp_path / "cut.tar.zst"))


def test_compression_is_read_where_a_blob_starts(tmp_path: Path) -> None:
    path = tmp_path / "blobs"
    path.write_bytes(b"plain tar bytes." + gzip.compress(b"layer"))

    assert compression_of(path) == ""
    assert compression_of(path, offset=16) == "gzip"
