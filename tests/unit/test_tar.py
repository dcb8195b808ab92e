"""Tar streams: listing and checking a tar on disk or in passing, and a file sent in large reads (no Docker)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import requests
from compose_env.images.errors import ArchiveError
from compose_env.images.tar import CHUNK, FileBody, TarStreamChecker, file_chunks, list_tar
from image_fixtures import ImageParts, corrupt_copy, docker_save_tarball, synthetic_image, truncated_copy


@pytest.fixture
def parts(tmp_path: Path) -> ImageParts:
    return synthetic_image(tmp_path / "parts", {"shape": b"synthetic\n", "big.bin": bytes(range(256)) * 4096})


def test_list_tar_finds_members_and_their_offsets(tmp_path: Path, parts: ImageParts) -> None:
    tarball = docker_save_tarball(parts, tmp_path / "app.tar", ["example/app:1"])

    listing = list_tar(tarball)

    assert json.loads(listing.read("manifest.json"))[0]["RepoTags"] == ["example/app:1"]
    assert any(name.endswith("/layer.tar") for name in listing.members)


def test_list_tar_names_the_member_a_truncated_tarball_ends_in(tmp_path: Path, parts: ImageParts) -> None:
    tarball = docker_save_tarball(parts, tmp_path / "app.tar")
    truncated_copy(tarball, tmp_path / "cut.tar", keep_fraction=0.5)

    with pytest.raises(
        ArchiveError, match=r"cut\.tar is truncated inside [0-9a-f]{64}/layer\.tar \(\d+ of \d+ bytes present\)"
    ):
        list_tar(tmp_path / "cut.tar")


def test_list_tar_reports_a_damaged_header_instead_of_stopping_quietly(tmp_path: Path, parts: ImageParts) -> None:
    tarball = docker_save_tarball(parts, tmp_path / "app.tar")
    corrupt_copy(tarball, tmp_path / "bad.tar", member_suffix=".json")

    with pytest.raises(ArchiveError, match=r"bad\.tar is corrupt: the tar header after .*layer\.tar is damaged"):
        list_tar(tmp_path / "bad.tar")


def test_list_tar_notices_a_cut_inside_a_header(tmp_path: Path, parts: ImageParts) -> None:
    tarball = docker_save_tarball(parts, tmp_path / "app.tar")
    with tarfile.open(tarball) as tar:
        offset = tar.getmember("manifest.json").offset
    (tmp_path / "cut.tar").write_bytes(tarball.read_bytes()[: offset + 100])

    with pytest.raises(ArchiveError, match="truncated inside the tar header after"):
        list_tar(tmp_path / "cut.tar")


def test_stream_checker_passes_a_sound_archive_through_unchanged(tmp_path: Path, parts: ImageParts) -> None:
    data = docker_save_tarball(parts, tmp_path / "app.tar").read_bytes()
    chunks = [data[i : i + 777] for i in range(0, len(data), 777)]

    assert b"".join(TarStreamChecker("app.tar").feed(iter(chunks))) == data


def test_stream_checker_names_the_member_a_stream_ends_in(tmp_path: Path, parts: ImageParts) -> None:
    data = docker_save_tarball(parts, tmp_path / "app.tar").read_bytes()

    with pytest.raises(
        ArchiveError, match=r"app\.tar\.gz is truncated inside [0-9a-f]{64}/layer\.tar \(\d+ of \d+ bytes present\)"
    ):
        b"".join(TarStreamChecker("app.tar.gz").feed(iter([data[:600_000]])))


def test_stream_checker_reports_a_damaged_header(tmp_path: Path, parts: ImageParts) -> None:
    corrupt = corrupt_copy(
        docker_save_tarball(parts, tmp_path / "app.tar"), tmp_path / "bad.tar", member_suffix=".json"
    )

    with pytest.raises(ArchiveError, match=r"is corrupt: the tar header after .*layer\.tar is damaged"):
        b"".join(TarStreamChecker("bad.tar").feed(file_chunks(corrupt)))


def test_stream_checker_follows_pax_long_names(tmp_path: Path) -> None:
    long_name = "a/" * 80 + "file.bin"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(long_name)
        info.size = 5000
        tar.addfile(info, io.BytesIO(b"x" * 5000))

    with pytest.raises(ArchiveError, match=f"truncated inside {long_name} "):
        b"".join(TarStreamChecker("long.tar").feed(iter([buffer.getvalue()[:3000]])))


def test_a_file_body_goes_with_its_length_in_large_reads(tmp_path: Path) -> None:
    path = tmp_path / "app.tar"
    path.write_bytes(b"x" * (2 * CHUNK + 7))

    with FileBody(path) as body:
        prepared = requests.Request("POST", "http://docker/images/load", data=body).prepare()
        assert prepared.headers["Content-Length"] == str(2 * CHUNK + 7)
        assert "Transfer-Encoding" not in prepared.headers
        assert [len(body.read(16384)) for _ in range(3)] == [CHUNK, CHUNK, 7]
