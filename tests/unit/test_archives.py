"""Archive streams: tar checks, decompression, OCI layout conversion, rootfs synthesis (no Docker)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import requests
from compose_env.images import archives
from compose_env.images.archives import ArchiveError, LayoutReader, NoMatchingPlatform
from image_fixtures import (
    ImageParts,
    corrupt_copy,
    docker_save_tarball,
    oci_archive_tarball,
    oci_layout_dir,
    synthetic_image,
    truncated_copy,
)

AMD64 = ("linux", "amd64", "")


@pytest.fixture
def parts(tmp_path: Path) -> ImageParts:
    return synthetic_image(tmp_path / "parts", {"shape": b"synthetic\n", "big.bin": bytes(range(256)) * 4096})


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}  # type: ignore[union-attr]


def _loadable(data: bytes) -> tuple[dict, dict[str, bytes]]:
    """What `docker load` would read: manifest.json and the files it names, all present."""
    members = _members(data)
    manifest = json.loads(members["manifest.json"])[0]
    assert manifest["Config"] in members
    assert all(layer in members for layer in manifest["Layers"])
    return manifest, members


# ---------------------------------------------------------------- tar structure


def test_list_tar_finds_members_and_their_offsets(tmp_path: Path, parts: ImageParts) -> None:
    tarball = docker_save_tarball(parts, tmp_path / "app.tar", ["example/app:1"])

    listing = archives.list_tar(tarball)

    assert json.loads(listing.read("manifest.json"))[0]["RepoTags"] == ["example/app:1"]
    assert any(name.endswith("/layer.tar") for name in listing.members)


def test_list_tar_names_the_member_a_truncated_tarball_ends_in(tmp_path: Path, parts: ImageParts) -> None:
    tarball = docker_save_tarball(parts, tmp_path / "app.tar")
    truncated_copy(tarball, tmp_path / "cut.tar", keep_fraction=0.5)

    with pytest.raises(ArchiveError, match=r"cut\.tar is truncated inside [0-9a-f]{64}/layer\.tar \(\d+ of \d+ bytes present\)"):
        archives.list_tar(tmp_path / "cut.tar")


def test_list_tar_reports_a_damaged_header_instead_of_stopping_quietly(tmp_path: Path, parts: ImageParts) -> None:
    tarball = docker_save_tarball(parts, tmp_path / "app.tar")
    corrupt_copy(tarball, tmp_path / "bad.tar", member_suffix=".json")

    with pytest.raises(ArchiveError, match=r"bad\.tar is corrupt: the tar header after .*layer\.tar is damaged"):
        archives.list_tar(tmp_path / "bad.tar")


def test_list_tar_notices_a_cut_inside_a_header(tmp_path: Path, parts: ImageParts) -> None:
    tarball = docker_save_tarball(parts, tmp_path / "app.tar")
    with tarfile.open(tarball) as tar:
        offset = tar.getmember("manifest.json").offset
    (tmp_path / "cut.tar").write_bytes(tarball.read_bytes()[: offset + 100])

    with pytest.raises(ArchiveError, match="truncated inside the tar header after"):
        archives.list_tar(tmp_path / "cut.tar")


def test_stream_checker_passes_a_sound_archive_through_unchanged(tmp_path: Path, parts: ImageParts) -> None:
    data = docker_save_tarball(parts, tmp_path / "app.tar").read_bytes()
    chunks = [data[i : i + 777] for i in range(0, len(data), 777)]

    assert b"".join(archives.TarStreamChecker("app.tar").feed(iter(chunks))) == data


def test_stream_checker_names_the_member_a_stream_ends_in(tmp_path: Path, parts: ImageParts) -> None:
    data = docker_save_tarball(parts, tmp_path / "app.tar").read_bytes()

    with pytest.raises(ArchiveError, match=r"app\.tar\.gz is truncated inside [0-9a-f]{64}/layer\.tar \(\d+ of \d+ bytes present\)"):
        b"".join(archives.TarStreamChecker("app.tar.gz").feed(iter([data[:600_000]])))


def test_stream_checker_reports_a_damaged_header(tmp_path: Path, parts: ImageParts) -> None:
    corrupt = corrupt_copy(docker_save_tarball(parts, tmp_path / "app.tar"), tmp_path / "bad.tar", member_suffix=".json")

    with pytest.raises(ArchiveError, match=r"is corrupt: the tar header after .*layer\.tar is damaged"):
        b"".join(archives.TarStreamChecker("bad.tar").feed(archives.file_chunks(corrupt)))


def test_stream_checker_follows_pax_long_names(tmp_path: Path) -> None:
    long_name = "a/" * 80 + "file.bin"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(long_name)
        info.size = 5000
        tar.addfile(info, io.BytesIO(b"x" * 5000))

    with pytest.raises(ArchiveError, match=f"truncated inside {long_name} "):
        b"".join(archives.TarStreamChecker("long.tar").feed(iter([buffer.getvalue()[:3000]])))


# ---------------------------------------------------------------- decompression


def test_gunzip_streams_multi_member_files(tmp_path: Path) -> None:
    path = tmp_path / "x.tar.gz"
    path.write_bytes(gzip.compress(b"first ") + gzip.compress(b"second"))

    assert b"".join(archives.decompressed_chunks(path)) == b"first second"


def test_gunzip_output_stays_bounded_for_highly_compressed_data(tmp_path: Path) -> None:
    path = tmp_path / "zeros.tar.gz"
    with gzip.open(path, "wb", compresslevel=1) as sink:
        for _ in range(64):
            sink.write(bytes(archives.CHUNK))

    sizes = [len(chunk) for chunk in archives.decompressed_chunks(path)]

    assert sum(sizes) == 64 * archives.CHUNK
    assert max(sizes) <= archives.CHUNK


def test_gunzip_reports_a_truncated_stream(tmp_path: Path) -> None:
    path = tmp_path / "x.tar.gz"
    path.write_bytes(gzip.compress(bytes(range(256)) * 1000)[:300])

    with pytest.raises(ArchiveError, match=r"x\.tar\.gz is truncated: its gzip stream ends early"):
        b"".join(archives.decompressed_chunks(path))


def test_zstd_streams_and_reports_truncation(tmp_path: Path) -> None:
    source = tmp_path / "x.tar"
    source.write_bytes(bytes(range(256)) * 10000)
    subprocess.run(["zstd", "-q", str(source), "-o", str(tmp_path / "x.tar.zst")], check=True)
    (tmp_path / "cut.tar.zst").write_bytes((tmp_path / "x.tar.zst").read_bytes()[:-20])

    assert archives.compression_of(tmp_path / "x.tar.zst") == "zstd"
    assert b"".join(archives.decompressed_chunks(tmp_path / "x.tar.zst")) == source.read_bytes()
    with pytest.raises(ArchiveError, match=r"cut\.tar\.zst is not valid zstd or is truncated"):
        b"".join(archives.decompressed_chunks(tmp_path / "cut.tar.zst"))


# ---------------------------------------------------------------- OCI layouts


def test_select_manifest_walks_nested_indexes_and_skips_attestations(tmp_path: Path, parts: ImageParts) -> None:
    layout = oci_layout_dir(parts, tmp_path / "image", "example/app", "1") / "oci"

    manifest = archives.select_manifest(LayoutReader.directory(layout), AMD64)

    assert manifest["config"]["digest"] == parts.config_digest


def test_select_manifest_names_the_platforms_offered_when_none_matches(tmp_path: Path, parts: ImageParts) -> None:
    layout = oci_layout_dir(parts, tmp_path / "image", "example/app", "1", platform=("linux", "s390x")) / "oci"

    with pytest.raises(NoMatchingPlatform, match=r"no image for the daemon's platform linux/amd64; it offers: linux/arm64/v8, linux/s390x$"):
        archives.select_manifest(LayoutReader.directory(layout), AMD64)


def test_a_single_manifest_without_platform_is_checked_against_its_config(tmp_path: Path) -> None:
    arm = synthetic_image(tmp_path / "parts", {"f": b"x"}, architecture="arm64")
    layout = oci_layout_dir(arm, tmp_path / "image", "example/app", "1", multi_platform=False) / "oci"

    with pytest.raises(NoMatchingPlatform, match="it offers: linux/arm64"):
        archives.select_manifest(LayoutReader.directory(layout), AMD64)
    assert archives.select_manifest(LayoutReader.directory(layout), ("linux", "arm64", ""))


def test_oci_layout_becomes_a_docker_save_archive_with_only_the_chosen_platform(tmp_path: Path, parts: ImageParts) -> None:
    layout = oci_layout_dir(parts, tmp_path / "image", "example/app", "1") / "oci"

    data = b"".join(archives.oci_stream(LayoutReader.directory(layout), AMD64, ["example/app:1"]))

    manifest, members = _loadable(data)
    assert manifest["RepoTags"] == ["example/app:1"]
    assert json.loads(members[manifest["Config"]])["architecture"] == "amd64"
    assert gzip.decompress(members[manifest["Layers"][0]]) == parts.layers[0].read_bytes()
    assert len(members) == 3  # manifest.json, config, one layer: nothing from arm64 or the attestation


def test_a_missing_blob_is_named(tmp_path: Path, parts: ImageParts) -> None:
    layout = oci_layout_dir(parts, tmp_path / "image", "example/app", "1") / "oci"
    layer = archives.select_manifest(LayoutReader.directory(layout), AMD64)["layers"][0]["digest"]
    (layout / "blobs" / "sha256" / layer.split(":")[1]).unlink()

    with pytest.raises(ArchiveError, match=f"blob {layer} is missing from oci/"):
        b"".join(archives.oci_stream(LayoutReader.directory(layout), AMD64, ["example/app:1"]))


def test_an_oci_archive_is_converted_from_its_members_in_place(tmp_path: Path, parts: ImageParts) -> None:
    tarball = oci_archive_tarball(parts, tmp_path / "oci.tar", with_docker_manifest=False)

    data = b"".join(archives.oci_stream(LayoutReader.tar(archives.list_tar(tarball)), AMD64, ["example/oci:1"]))

    manifest, members = _loadable(data)
    assert manifest["RepoTags"] == ["example/oci:1"]
    assert gzip.decompress(members[manifest["Layers"][0]]) == parts.layers[0].read_bytes()


# ---------------------------------------------------------------- rootfs


def _rootfs(tmp_path: Path) -> Path:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (rootfs / "bin" / "tool").chmod(0o755)
    (rootfs / "data.bin").write_bytes(b"\1" * (3 * archives.CHUNK + 5))
    (rootfs / "link").symlink_to("bin/tool")
    (rootfs / "hard").hardlink_to(rootfs / "bin" / "tool")
    return rootfs


def test_rootfs_becomes_a_one_layer_image_with_env_and_user(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    metadata = {"env": ["GREETING=hi", "PATH=/bin"], "user": "app"}

    data = b"".join(archives.rootfs_stream(archives.RootfsLayer(rootfs).start(), metadata, "amd64", ["example/rootfs:ci"]))

    manifest, members = _loadable(data)
    config = json.loads(members[manifest["Config"]])
    layer = members[manifest["Layers"][0]]
    assert config["config"] == {"Env": ["GREETING=hi", "PATH=/bin"], "User": "app"}
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    assert manifest["Config"] == "blobs/sha256/" + hashlib.sha256(members[manifest["Config"]]).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        entries = {m.name.removeprefix("./"): m for m in tar.getmembers()}
    assert entries["bin/tool"].mode & 0o777 == 0o755
    assert entries["link"].issym() and entries["link"].linkname == "bin/tool"
    assert entries["hard"].islnk() or entries["bin/tool"].islnk()
    assert entries["data.bin"].size == 3 * archives.CHUNK + 5


def test_rootfs_layer_carries_the_files_xattrs_as_dockerd_applies_them(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    os.setxattr(rootfs / "bin" / "tool", "user.note", b"kept")
    capability = b"\x01\x00\x00\x02\x00\x20\x00\x00" + b"\x00" * 12  # cap_net_raw+ep: not UTF-8
    os.setxattr(rootfs / "data.bin", "security.capability", capability)

    layer = b"".join(archives.RootfsLayer(rootfs).chunks())

    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        entries = {m.name.removeprefix("./"): m for m in tar.getmembers()}
    assert entries["bin/tool"].pax_headers["SCHILY.xattr.user.note"] == "kept"
    raw = entries["data.bin"].pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape")
    assert raw == capability


def test_rootfs_layer_is_streamed_in_bounded_chunks(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)

    sizes = [len(chunk) for chunk in archives.rootfs_stream(archives.RootfsLayer(rootfs).start(), {}, "amd64", ["x:1"])]

    assert max(sizes) <= archives.CHUNK


def test_a_rootfs_that_cannot_be_read_is_reported_when_loading(tmp_path: Path) -> None:
    layer = archives.RootfsLayer(tmp_path / "missing").start()

    with pytest.raises(ArchiveError, match=r"cannot archive .*missing"):
        layer.measured()


def test_rootfs_config_keeps_workdir_and_command_when_the_metadata_has_them() -> None:
    config = archives.rootfs_config({"env": [], "user": "1000:1000", "workdir": "/app", "cmd": ["run"]}, "sha256:x", "arm64")

    assert config["architecture"] == "arm64"
    assert config["config"] == {"Env": [], "User": "1000:1000", "WorkingDir": "/app", "Cmd": ["run"]}


def test_the_rootfs_layer_is_the_same_bytes_each_time_and_as_the_direct_write_archives_it(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    os.setxattr(rootfs / "bin" / "tool", "user.note", b"kept")
    os.utime(rootfs / "data.bin", ns=(1, 1_000_000_000_123_456_789))

    first, second = (b"".join(archives.RootfsLayer(rootfs).chunks()) for _ in range(2))
    direct = subprocess.run(archives.rootfs_tar_argv(rootfs), capture_output=True, check=True).stdout

    assert first == second == direct
    assert archives.RootfsLayer(rootfs).start().measured() == (len(first), "sha256:" + hashlib.sha256(first).hexdigest())


def test_a_rootfs_that_changes_while_loading_fails(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    stream = archives.rootfs_stream(archives.RootfsLayer(rootfs).start(), {}, "amd64", ["x:1"])
    next(stream)  # measured by now
    (rootfs / "bin" / "tool").write_bytes(b"changed!!\n" * 3)

    with pytest.raises(ArchiveError, match="changed while it was being loaded"):
        b"".join(stream)


def test_a_file_body_goes_with_its_length_in_large_reads(tmp_path: Path) -> None:
    path = tmp_path / "app.tar"
    path.write_bytes(b"x" * (2 * archives.CHUNK + 7))

    with archives.FileBody(path) as body:
        prepared = requests.Request("POST", "http://docker/images/load", data=body).prepare()
        assert prepared.headers["Content-Length"] == str(2 * archives.CHUNK + 7)
        assert "Transfer-Encoding" not in prepared.headers
        assert [len(body.read(16384)) for _ in range(3)] == [archives.CHUNK, archives.CHUNK, 7]
