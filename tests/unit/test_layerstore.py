"""layerstore: images written into an overlay2 store directory, checked file by file (root needed: devices, trusted
xattrs)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import secrets
import signal
import stat
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from compose_env.console import Console
from compose_env.errors import Aborted
from compose_env.images import layerstore, store_format
from compose_env.images.extraction import Extraction
from compose_env.images.layerstore import DirectImage, RootfsImage, StoreHooks, StoreWriter, image_from_config
from compose_env.images.store_format import PARTIAL_DIR, StoreLayout, chain_ids
from compose_env.images.tar import Blob
from compose_env.images.whiteouts import convert_whiteouts
from compose_env.signals import AbortOnSignal

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="writes devices and trusted.* xattrs: root only")


def layer_tar(files: dict[str, bytes | None]) -> bytes:
    """A layer: name → content, None for a directory."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.mtime = 1_000_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode, info.uid, info.gid = (
                    len(data),
                    0o4755 if name.endswith("suid") else 0o644,
                    1234,
                    5678,
                )
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def diff_id(layer: bytes) -> str:
    return "sha256:" + hashlib.sha256(layer).hexdigest()


def image(tmp_path: Path, name: str, layers: list[bytes], stored: list[bytes] | None = None) -> DirectImage:
    """An image whose blobs are files in tmp_path (`stored`: what the files hold, e.g. gzip of the layer)."""
    blobs = []
    for number, content in enumerate(stored or layers):
        path = tmp_path / f"{name}-{number}.blob"
        path.write_bytes(content)
        blobs.append(Blob(path, 0, len(content)))
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id(layer) for layer in layers]},
        }
    )
    made = image_from_config(config.encode(), blobs)
    assert made is not None
    return made


BASE = layer_tar(
    {
        "etc/": None,
        "etc/keep": b"keep",
        "etc/gone": b"gone",
        "dir/": None,
        "dir/old": b"old",
        "bin/suid": b"#!/bin/sh\n",
    }
)
TOP = layer_tar({"etc/.wh.gone": b"", "dir/": None, "dir/.wh..wh..opq": b"", "dir/new": b"new"})


def test_chain_ids_follow_the_layer_store_rule() -> None:
    made = image_from_config(
        json.dumps({"rootfs": {"diff_ids": ["sha256:" + "a" * 64, "sha256:" + "b" * 64]}}).encode(),
        [Blob(Path("x"), 0, 1)] * 2,
    )
    assert made is not None
    expected = "sha256:" + hashlib.sha256(f"sha256:{'a' * 64} sha256:{'b' * 64}".encode()).hexdigest()
    assert made.chain_ids == ["sha256:" + "a" * 64, expected]


@pytest.mark.parametrize(
    "rootfs",
    [{"diff_ids": ["sha256:" + "a" * 64]}, {"diff_ids": ["md5:abc", "sha256:" + "b" * 64]}, {"diff_ids": "nope"}, {}],
    ids=["count differs", "bad digest", "not a list", "no diff_ids"],
)
def test_configs_that_do_not_describe_the_blobs_are_left_to_docker_load(rootfs: dict[str, object]) -> None:
    assert image_from_config(json.dumps({"rootfs": rootfs}).encode(), [Blob(Path("x"), 0, 1)] * 2) is None
    assert image_from_config(b"not json", [Blob(Path("x"), 0, 1)]) is None


def test_images_deeper_than_dockerd_takes_are_left_to_docker_load() -> None:
    diff_ids = [f"sha256:{n:064x}" for n in range(126)]
    assert (
        image_from_config(json.dumps({"rootfs": {"diff_ids": diff_ids}}).encode(), [Blob(Path("x"), 0, 1)] * 126)
        is None
    )
    assert (
        image_from_config(json.dumps({"rootfs": {"diff_ids": diff_ids[:125]}}).encode(), [Blob(Path("x"), 0, 1)] * 125)
        is not None
    )


def test_an_image_is_written_as_dockerd_keeps_it(tmp_path: Path) -> None:
    root = tmp_path / "docker"
    made = image(tmp_path, "app", [BASE, TOP], stored=[BASE, gzip.compress(TOP)])
    outcome = StoreWriter(str(root)).write({"app": made})["app"]
    assert outcome.problem is None and outcome.layers == 2 and outcome.size == 21 + 3

    layerdb = root / "image/overlay2/layerdb/sha256"
    base_chain, top_chain = (chain.removeprefix("sha256:") for chain in made.chain_ids)
    assert (layerdb / base_chain / "diff").read_text() == diff_id(BASE)
    assert not (layerdb / base_chain / "parent").exists()
    assert (layerdb / top_chain / "parent").read_text() == made.chain_ids[0]
    base_home = root / "overlay2" / (layerdb / base_chain / "cache-id").read_text()
    top_home = root / "overlay2" / (layerdb / top_chain / "cache-id").read_text()
    assert (layerdb / base_chain / "size").read_text() == str(4 + 4 + 3 + 10)
    # overlay2: links, lower chain, work dir, committed parent
    base_link = (base_home / "link").read_text()
    assert len(base_link) == 26 and os.readlink(root / "overlay2/l" / base_link) == f"../{base_home.name}/diff"
    assert (top_home / "lower").read_text() == f"l/{base_link}"
    assert (top_home / "work").is_dir() and (base_home / "committed").exists() and not (base_home / "lower").exists()
    # content, owners, modes
    diff = base_home / "diff"
    assert (diff / "etc/keep").read_bytes() == b"keep"
    suid = (diff / "bin/suid").stat()
    assert stat.S_IMODE(suid.st_mode) == 0o4755 and (suid.st_uid, suid.st_gid) == (1234, 5678)
    # whiteouts in overlay form
    gone = (top_home / "diff/etc/gone").lstat()
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert not (top_home / "diff/etc/.wh.gone").exists()
    assert os.getxattr(top_home / "diff/dir", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(top_home / "diff/dir")) == ["new"]
    assert (
        root / "image/overlay2/imagedb/content/sha256" / made.image_id.removeprefix("sha256:")
    ).read_bytes() == made.config


def test_a_layer_two_images_share_is_extracted_once_from_its_plain_copy(tmp_path: Path) -> None:
    root = tmp_path / "docker"
    first = image(tmp_path, "first", [BASE], stored=[gzip.compress(BASE)])
    second = image(tmp_path, "second", [BASE, TOP])
    assert [w.problem for w in StoreWriter(str(root)).write({"first": first, "second": second}).values()] == [
        None,
        None,
    ]
    assert len(list((root / "overlay2").glob("*/diff"))) == 2
    # Written again into the same store: nothing new is extracted.
    assert StoreWriter(str(root)).write({"second": second})["second"].problem is None
    assert len(list((root / "overlay2").glob("*/diff"))) == 2


def test_a_layer_that_does_not_match_its_diff_id_is_not_registered(tmp_path: Path) -> None:
    root = tmp_path / "docker"
    made = image(tmp_path, "bad", [BASE, TOP], stored=[BASE, layer_tar({"other": b"content"})])
    outcome = StoreWriter(str(root)).write({"bad": made})["bad"]
    assert "does not match the diff_id" in (outcome.problem or "")
    assert not (root / "image/overlay2/layerdb/sha256" / made.chain_ids[1].removeprefix("sha256:")).exists()
    assert not (root / "image/overlay2/imagedb/content/sha256" / made.image_id.removeprefix("sha256:")).exists()
    # Nothing is left: the good base layer of the failed image is removed too (docker load needs the room).
    assert os.listdir(root / "overlay2") == ["l"]


def test_a_blob_that_is_not_a_tar_fails_with_tar_s_reason(tmp_path: Path) -> None:
    made = image(tmp_path, "garbage", [BASE], stored=[b"\x00garbage" * 100])
    outcome = StoreWriter(str(tmp_path / "docker")).write({"garbage": made})["garbage"]
    assert outcome.problem and "layer" in outcome.problem
    assert list((tmp_path / "docker/overlay2").glob("*/diff")) == []


def test_whiteouts_and_size_of_an_extracted_tree(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a/.wh.b").write_bytes(b"")
    (tmp_path / "a/.wh..wh..opq").write_bytes(b"")
    (tmp_path / "a/.wh..wh.plnk").mkdir()
    (tmp_path / "c").write_bytes(b"12345")
    os.link(tmp_path / "c", tmp_path / "c-again")
    os.symlink("c", tmp_path / "link")
    os.utime(tmp_path / "a", ns=(1_000_000_000 * 10**9, 1_000_000_000 * 10**9))
    assert convert_whiteouts(tmp_path) == 5 + len("c")
    assert (tmp_path / "a").stat().st_mtime_ns == 1_000_000_000 * 10**9, (
        "tar restored the directory's mtime: converting keeps it"
    )
    assert stat.S_ISCHR((tmp_path / "a/b").lstat().st_mode)
    assert sorted(os.listdir(tmp_path / "a")) == ["b"]
    assert os.getxattr(tmp_path / "a", "trusted.overlay.opaque") == b"y"


def test_an_empty_blob_is_an_empty_layer(tmp_path: Path) -> None:
    made = image(tmp_path, "empty", [BASE, b""])
    outcome = StoreWriter(str(tmp_path / "docker")).write({"empty": made})["empty"]
    assert outcome.problem is None and outcome.layers == 2


def test_a_blob_shorter_than_its_listing_fails_only_its_image(tmp_path: Path) -> None:
    good = image(tmp_path, "good", [BASE])
    short = image(tmp_path, "short", [TOP])
    short = DirectImage(short.config, short.diff_ids, (Blob(short.blobs[0].path, 0, short.blobs[0].size + 4096),))
    outcome = StoreWriter(str(tmp_path / "docker")).write({"good": good, "short": short})
    assert outcome["good"].problem is None and outcome["short"].problem


def test_a_compressed_blob_that_cannot_be_read_to_its_end_is_reported_by_the_put_not_by_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    thread_errors: list[object] = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    short = image(tmp_path, "short", [TOP], stored=[gzip.compress(TOP)])
    short = DirectImage(short.config, short.diff_ids, (Blob(short.blobs[0].path, 0, short.blobs[0].size + 4096),))

    outcome = layerstore.write_images({"short": short}, str(tmp_path / "docker"))

    assert thread_errors == []
    assert "reading it: " in (outcome.images["short"].problem or "") and "ended 4096 bytes early" in (
        outcome.images["short"].problem or ""
    )
    assert outcome.damaged == ""
    assert list((tmp_path / "docker/overlay2").glob("*/diff")) == []


def test_an_image_that_fails_part_way_through_registering_marks_the_store_damaged(tmp_path: Path) -> None:
    calls: list[str] = []

    def fail_second(parent: str) -> None:
        calls.append(parent)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    made = image(tmp_path, "app", [BASE, TOP])
    outcome = layerstore.write_images({"app": made}, str(tmp_path / "docker"), StoreHooks(before_register=fail_second))

    assert "registering it: " in (outcome.images["app"].problem or "")
    assert outcome.damaged.startswith("registering an image failed part way") and outcome.images["app"].left_entries
    # The layer not registered is not left behind, staged or otherwise.
    base_cache_id = (tmp_path / "docker/image/overlay2/layerdb/sha256" / made.chain_ids[0][7:] / "cache-id").read_text()
    assert sorted(os.listdir(tmp_path / "docker/overlay2")) == sorted(["l", base_cache_id])


def test_a_store_that_cannot_be_made_fails_every_image_and_is_damaged(tmp_path: Path) -> None:
    (tmp_path / "docker").write_text("a file where the data root should be")

    outcome = layerstore.write_images(
        {"a": image(tmp_path, "a", [BASE]), "b": image(tmp_path, "b", [TOP])}, str(tmp_path / "docker")
    )

    assert all(
        result.problem and result.problem.startswith(f"writing into {tmp_path / 'docker'}: ")
        for result in outcome.images.values()
    )
    assert outcome.damaged


def test_a_written_image_reports_the_layers_dockerd_must_list(tmp_path: Path) -> None:
    made = image(tmp_path, "app", [BASE, TOP])
    outcome = layerstore.write_images({"app": made}, str(tmp_path / "docker"))
    assert outcome.images["app"].diff_ids == made.diff_ids and outcome.images["app"].image_id == made.image_id
    assert chain_ids(made.diff_ids) == made.chain_ids


def test_directories_a_layer_implies_get_0755_whatever_our_umask(tmp_path: Path) -> None:
    layer = layer_tar({"deep/down/file": b"x"})
    previous = os.umask(0o077)
    try:
        assert (
            StoreWriter(str(tmp_path / "docker"))
            .write({"implied": image(tmp_path, "implied", [layer])})["implied"]
            .problem
            is None
        )
    finally:
        os.umask(previous)
    (diff,) = (tmp_path / "docker/overlay2").glob("*/diff")
    assert [stat.S_IMODE(path.stat().st_mode) for path in (diff, diff / "deep", diff / "deep/down")] == [0o755] * 3


def test_a_rootfs_directory_is_written_as_one_layer_with_its_config(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin/tool").write_bytes(b"#!/bin/sh\n")
    os.chown(rootfs / "bin/tool", 1234, 5678)
    os.chmod(rootfs / "bin/tool", 0o4755)  # after the chown, which clears setuid
    os.link(rootfs / "bin/tool", rootfs / "bin/tool-again")
    os.symlink("tool", rootfs / "bin/alias")
    os.setxattr(rootfs / "bin/tool", "user.note", b"kept")
    os.utime(rootfs / "bin", (1_000_000_000, 1_000_000_000))
    configs: list[str] = []

    def config_for(diff_id: str) -> bytes:
        configs.append(diff_id)
        return json.dumps({"rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()

    root = tmp_path / "docker"
    outcome = StoreWriter(str(root)).write({"rootfs": RootfsImage(rootfs, config_for)})["rootfs"]

    assert outcome.problem is None and outcome.layers == 1 and outcome.size == len(b"#!/bin/sh\n") + len("tool")
    (diff_id,) = configs
    layer = root / "image/overlay2/layerdb/sha256" / diff_id.removeprefix("sha256:")
    assert (layer / "diff").read_text() == diff_id and not (layer / "parent").exists()
    diff = root / "overlay2" / (layer / "cache-id").read_text() / "diff"
    tool = (diff / "bin/tool").stat()
    assert (stat.S_IMODE(tool.st_mode), tool.st_uid, tool.st_gid, tool.st_nlink) == (0o4755, 1234, 5678, 2)
    assert os.readlink(diff / "bin/alias") == "tool" and os.getxattr(diff / "bin/tool", "user.note") == b"kept"
    assert (diff / "bin").stat().st_mtime == 1_000_000_000
    assert outcome.image_id == "sha256:" + hashlib.sha256(config_for(diff_id)).hexdigest()
    assert (root / "image/overlay2/imagedb/content/sha256" / outcome.image_id.removeprefix("sha256:")).is_file()


def test_the_same_rootfs_twice_is_one_layer(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc/os-release").write_bytes(b"ID=test\n")

    def config_for(diff_id: str) -> bytes:
        return json.dumps({"rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()

    root = tmp_path / "docker"
    outcome = StoreWriter(str(root)).write(
        {"one": RootfsImage(rootfs, config_for), "two": RootfsImage(rootfs, config_for)}
    )

    assert outcome["one"].problem is None and outcome["two"].problem is None
    assert outcome["one"].image_id == outcome["two"].image_id, "GNU tar's archive of the same tree is the same"
    assert len(list((root / "overlay2").glob("*/diff"))) == 1


# ---------------------------------------------------------------- cancel: a SIGTERM while layers are extracted


def test_a_sigterm_while_layers_are_extracted_kills_every_tar_starts_no_other_and_registers_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The put's SIGTERM handler raises Aborted in the main thread while the workers' tars are mid-layer.

    Each layer's input stalls half-way (a slow disk) until its tar is gone; more layers than workers,
    so some are still queued. The half-written layer directories stay staged (no time is spent on them):
    a kept data root's next run removes them, a default one goes with the container.
    """
    layers = [
        layer_tar({"a": bytes([n]) * (64 << 10), "b": bytes([n]) * (64 << 10)})
        for n in range(layerstore.MAX_PARALLEL + 2)
    ]
    made = image(tmp_path, "big", layers)
    workers = min(layerstore.MAX_PARALLEL, os.cpu_count() or 1, len(layers))
    root = tmp_path / "docker"
    tars: list[subprocess.Popen[bytes]] = []
    tar_of_thread: dict[str, subprocess.Popen[bytes]] = {}
    stalled = threading.Semaphore(0)
    extracting: list[Path] = []
    extract, spawn = Extraction.layer, Extraction._spawn

    def recording_extract(self: Extraction, blob: Blob, diff_id: str, compression: str, target: Path) -> int:
        extracting.append(target)
        try:
            return extract(self, blob, diff_id, compression, target)
        finally:
            extracting.remove(target)

    def recording_spawn(self: Extraction, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        child = spawn(self, argv, **kwargs)
        tars.append(child)
        tar_of_thread[threading.current_thread().name] = child
        return child

    def stalling_chunks(layer_chunks: Iterator[bytes], _cancelled: threading.Event) -> Iterator[bytes]:
        data = b"".join(layer_chunks)
        yield data[: 512 + (64 << 10)]  # tar reads whole 10 KiB records: it is inside file `a` now
        stalled.release()
        tar_of_thread[threading.current_thread().name].wait(timeout=30)
        yield data[512 + (64 << 10) :]

    monkeypatch.setattr(Extraction, "layer", recording_extract)
    monkeypatch.setattr(Extraction, "_spawn", recording_spawn)
    problems: list[str] = []

    def signal_once_every_worker_is_mid_layer() -> None:
        try:
            for _ in range(workers):
                if not stalled.acquire(timeout=30):
                    problems.append("the workers' tars never all got their input")
                    return
            deadline = time.monotonic() + 30
            while (
                len(list(root.glob(f"overlay2/{PARTIAL_DIR}/*/diff/a"))) < workers
            ):  # tar has started writing each layer
                if time.monotonic() > deadline:
                    problems.append("the tars never started writing")
                    return
                time.sleep(0.01)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    AbortOnSignal().install()
    signaller = threading.Thread(target=signal_once_every_worker_is_mid_layer)
    try:
        signaller.start()
        with pytest.raises(Aborted):
            layerstore.write_images({"big": made}, str(root), StoreHooks(layer_chunks=stalling_chunks))
    finally:
        signaller.join()
        for number, handler in previous.items():
            signal.signal(number, handler)

    assert problems == []
    assert extracting == [], "workers were still extracting when the abort went on to the teardown"
    assert len(tars) == workers, "a queued layer was started after the signal"
    assert [tar.returncode for tar in tars] == [-signal.SIGKILL] * workers
    assert list((root / "image/overlay2/layerdb/sha256").iterdir()) == []
    assert list((root / "image/overlay2/imagedb/content/sha256").iterdir()) == []
    assert len(list(root.glob(f"overlay2/{PARTIAL_DIR}/*/diff"))) == workers
    assert list(root.glob("overlay2/*/diff")) == [], "nothing half-written is outside the staging directory"

    # The next run on this data root (were it kept) removes them, then writes the image afresh.
    log = io.StringIO()
    StoreLayout(root).remove_partial_layers(Console(log))
    assert f"removed {workers} half-written layers an interrupted run left" in log.getvalue()
    assert os.listdir(root / "overlay2") == ["l"]
    monkeypatch.undo()
    assert StoreWriter(str(root)).write({"big": made})["big"].problem is None
    assert sorted(os.listdir(root / "overlay2")) == sorted(
        ["l", *(p.parent.name for p in root.glob("overlay2/*/diff"))]
    )


# ---------------------------------------------------------------- the sweep of a kept data root


def test_only_the_half_written_layers_of_a_kept_data_root_are_removed(tmp_path: Path) -> None:
    """Registered layers, BuildKit's snapshots (in no layer store entry) and containers' layers all stay."""
    root = tmp_path / "docker"
    made = image(tmp_path, "app", [BASE])
    assert StoreWriter(str(root)).write({"app": made})["app"].problem is None
    registered = (root / "image/overlay2/layerdb/sha256" / made.chain_ids[0][7:] / "cache-id").read_text()
    half_written = root / "overlay2" / PARTIAL_DIR / secrets.token_hex(32)
    (half_written / "diff/usr").mkdir(parents=True)
    (half_written / "diff/usr/big").write_bytes(b"x" * (3 << 20))
    os.link(half_written / "diff/usr/big", half_written / "diff/usr/big-again")
    buildkit_snapshot = (
        root / "overlay2" / "k3v9x2m1q8w7e6r5t4y3u2i1o"
    )  # BuildKit's: in buildkit/snapshots.db, not in the layer store
    (buildkit_snapshot / "diff").mkdir(parents=True)
    (root / "buildkit").mkdir()
    (root / "buildkit/snapshots.db").write_bytes(b"bolt")
    container = secrets.token_hex(32)
    mount = root / "image/overlay2/layerdb/mounts" / container
    mount.mkdir(parents=True)
    for name, layer in (("mount-id", container), ("init-id", f"{container}-init")):
        (root / "overlay2" / layer / "diff").mkdir(parents=True)
        (mount / name).write_text(layer)
    log = io.StringIO()

    StoreLayout(root).remove_partial_layers(Console(log))

    assert sorted(os.listdir(root / "overlay2")) == sorted(
        ["l", registered, buildkit_snapshot.name, container, f"{container}-init"]
    )
    assert (
        f"warning: data root {root}: removed 1 half-written layer an interrupted run left (3.0 MiB)" in log.getvalue()
    )
    assert log.getvalue().count("\n") == 1


def test_a_data_root_without_half_written_layers_is_left_as_it_is_and_says_nothing(tmp_path: Path) -> None:
    root = tmp_path / "docker"
    assert StoreWriter(str(root)).write({"app": image(tmp_path, "app", [BASE, TOP])})["app"].problem is None
    before = sorted(os.listdir(root / "overlay2"))
    log = io.StringIO()
    StoreLayout(root).remove_partial_layers(Console(log))
    StoreLayout(tmp_path / "nothing-here").remove_partial_layers(Console(log))
    assert sorted(os.listdir(root / "overlay2")) == before and PARTIAL_DIR not in before
    assert log.getvalue() == ""


def test_half_written_layers_that_cannot_be_removed_are_named_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = tmp_path / "docker/overlay2" / PARTIAL_DIR
    (staging / "abc/diff").mkdir(parents=True)

    def refuse(path: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(store_format.shutil, "rmtree", refuse)
    log = io.StringIO()
    StoreLayout(tmp_path / "docker").remove_partial_layers(Console(log))
    assert (
        f"could not remove the half-written layers an interrupted run left in {staging}: [Errno 13] Permission denied"
        in log.getvalue()
    )
