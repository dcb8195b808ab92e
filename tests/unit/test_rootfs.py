"""rootfs directories: one deterministic layer made by GNU tar, with the config the files beside it give (no Docker)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from compose_env.images.errors import ArchiveError
from compose_env.images.rootfs import RootfsLayer, rootfs_config, rootfs_stream, rootfs_tar_argv
from compose_env.images.tar import CHUNK
from image_fixtures import loadable_members


def _rootfs(tmp_path: Path) -> Path:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (rootfs / "bin" / "tool").chmod(0o755)
    (rootfs / "data.bin").write_bytes(b"\1" * (3 * CHUNK + 5))
    (rootfs / "link").symlink_to("bin/tool")
    (rootfs / "hard").hardlink_to(rootfs / "bin" / "tool")
    return rootfs


def test_rootfs_becomes_a_one_layer_image_with_env_and_user(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    image_config = {"Env": ["GREETING=hi", "PATH=/bin"], "User": "app"}

    data = b"".join(rootfs_stream(RootfsLayer(rootfs).start(), image_config, "amd64", ["example/rootfs:ci"]))

    manifest, members = loadable_members(data)
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
    assert entries["data.bin"].size == 3 * CHUNK + 5


def test_rootfs_layer_carries_the_files_xattrs_as_dockerd_applies_them(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    os.setxattr(rootfs / "bin" / "tool", "user.note", b"kept")
    capability = b"\x01\x00\x00\x02\x00\x20\x00\x00" + b"\x00" * 12  # cap_net_raw+ep: not UTF-8
    os.setxattr(rootfs / "data.bin", "security.capability", capability)

    layer = b"".join(RootfsLayer(rootfs).chunks())

    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        entries = {m.name.removeprefix("./"): m for m in tar.getmembers()}
    assert entries["bin/tool"].pax_headers["SCHILY.xattr.user.note"] == "kept"
    raw = entries["data.bin"].pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape")
    assert raw == capability


def test_rootfs_layer_is_streamed_in_bounded_chunks(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)

    sizes = [len(chunk) for chunk in rootfs_stream(RootfsLayer(rootfs).start(), {}, "amd64", ["x:1"])]

    assert max(sizes) <= CHUNK


def test_a_rootfs_that_cannot_be_read_is_reported_when_loading(tmp_path: Path) -> None:
    layer = RootfsLayer(tmp_path / "missing").start()

    with pytest.raises(ArchiveError, match=r"cannot archive .*missing"):
        layer.measured()


def test_rootfs_config_is_the_given_config_over_the_one_layer() -> None:
    config = rootfs_config({"User": "1000:1000", "WorkingDir": "/app", "Cmd": ["run"]}, "sha256:x", "arm64")

    assert config["architecture"] == "arm64"
    assert config["config"] == {"User": "1000:1000", "WorkingDir": "/app", "Cmd": ["run"]}
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:x"]}


def test_the_rootfs_layer_is_the_same_bytes_each_time_and_as_the_direct_write_archives_it(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    os.setxattr(rootfs / "bin" / "tool", "user.note", b"kept")
    os.utime(rootfs / "data.bin", ns=(1, 1_000_000_000_123_456_789))

    first, second = (b"".join(RootfsLayer(rootfs).chunks()) for _ in range(2))
    direct = subprocess.run(rootfs_tar_argv(rootfs), capture_output=True, check=True).stdout

    assert first == second == direct
    assert RootfsLayer(rootfs).start().measured() == (len(first), "sha256:" + hashlib.sha256(first).hexdigest())


def test_a_rootfs_that_changes_while_loading_fails(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    stream = rootfs_stream(RootfsLayer(rootfs).start(), {}, "amd64", ["x:1"])
    next(stream)  # measured by now
    (rootfs / "bin" / "tool").write_bytes(b"changed!!\n" * 3)

    with pytest.raises(ArchiveError, match="changed while it was being loaded"):
        b"".join(stream)
