"""Images written straight into the inner dockerd's overlay2 store, before dockerd starts.

Why: dockerd 26 unpacks each layer of a `docker load` in a goroutine locked to its own
thread (chrootarchive), fed through a pipe in 512-byte and 32 KiB steps, and every step
wakes another thread. On this project's 2-vCPU test VM the seed scenario's 317 MiB
docker-save tarball took 5.6-6.2 s to load that way, while GNU tar extracts its layers in
0.45 s. So here each layer is inflated, hashed against the diff_id its image config
declares, and extracted by GNU tar, several layers at once; then the few files dockerd's
layer store, overlay2 driver and image store keep for it are written, and dockerd finds the
images when it starts (`put.py` checks that it did, and tags them through the API).

What GNU tar is asked to do matches dockerd's unpacking: numeric owners, permissions
(setuid included), every xattr (file capabilities), hardlinks, devices, umask 022; `..` member
names are refused and absolute ones made relative, symlinks that leave the layer are placed last. AUFS-style
whiteouts are then turned into overlay ones, as dockerd's overlay2 driver does.

Limits, by design: the overlay2 driver only; no tar-split metadata is written, so inside
the environment `docker save` and `docker push` of an image written this way fail
(`source.dockerd.direct_load: false` sends every image through `docker load`). An image
this module cannot write (a layer it cannot read, inflate, extract or verify) is left to
`docker load`, which gives the canonical error for a damaged input.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import archives
from .archives import Blob

#: How many layers are extracted at once: each runs a tar (and an inflater) beside us.
MAX_PARALLEL = 4
CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
#: What dockerd's overlay2 driver names a layer's link (26 characters of base32).
LINK_LENGTH = 26
TAR_ARGS = [
    "tar",
    "--extract",
    "--file=-",
    "--numeric-owner",
    "--same-owner",
    "--preserve-permissions",
    "--xattrs",
    "--xattrs-include=*",
    "--warning=no-timestamp",
    "--warning=no-unknown-keyword",
]


class LayerFailure(Exception):
    """A layer that could not be written; its image goes through docker load instead."""


@dataclass(frozen=True)
class DirectImage:
    """One image as its config and layer blobs, read where they lie (no copy)."""

    config: bytes
    diff_ids: tuple[str, ...]
    blobs: tuple[Blob, ...]
    #: Names the archive itself carries (docker save's RepoTags), in familiar form.
    repo_tags: tuple[str, ...] = ()

    @property
    def image_id(self) -> str:
        return "sha256:" + hashlib.sha256(self.config).hexdigest()

    @property
    def chain_ids(self) -> list[str]:
        """The layer store's keys: each layer's identity includes everything below it."""
        chain: list[str] = []
        for diff_id in self.diff_ids:
            chain.append(diff_id if not chain else "sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
        return chain


def image_from_config(config: bytes, blobs: list[Blob], repo_tags: tuple[str, ...] = ()) -> DirectImage | None:
    """A DirectImage when the config names one sha256 diff_id per layer blob; else None (docker load decides)."""
    try:
        document = json.loads(config)
        diff_ids = document["rootfs"]["diff_ids"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(blobs) or not blobs:
        return None
    if not all(isinstance(d, str) and d.startswith("sha256:") and len(d) == 71 for d in diff_ids):
        return None
    return DirectImage(config, tuple(diff_ids), tuple(blobs), repo_tags)


@dataclass(frozen=True)
class WrittenLayer:
    chain_id: str
    diff_id: str
    cache_id: str
    size: int
    started: float
    finished: float


@dataclass(frozen=True)
class ImageWrite:
    """How one image fared: `problem` is None when it was written."""

    problem: str | None
    layers: int = 0
    size: int = 0
    #: From its first layer's start to its last layer's end (layers of several images run at once).
    seconds: float = 0.0


class StoreWriter:
    """Writes images into `<data_root>/overlay2` and `<data_root>/image/overlay2` while no dockerd runs."""

    def __init__(self, data_root: str) -> None:
        self.root = Path(data_root)
        self.driver_home = self.root / "overlay2"
        self.image_home = self.root / "image" / "overlay2"
        self._children: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._cancelled = threading.Event()

    # -- the whole job

    def write(self, images: dict[str, DirectImage]) -> dict[str, ImageWrite]:
        """Write every image; returns, per key, how it went (written, or why not)."""
        self._make_homes()
        layers: dict[str, tuple[str, Blob]] = {}
        for image in images.values():
            for chain_id, diff_id, blob in zip(image.chain_ids, image.diff_ids, image.blobs, strict=True):
                if self._layer_known(chain_id):
                    continue
                # A layer two images share may come compressed in one and not in the other: no inflating then.
                if chain_id not in layers or (_compression(layers[chain_id][1]) and not _compression(blob)):
                    layers[chain_id] = (diff_id, blob)
        written, failed = self._extract_all(layers)
        outcome: dict[str, ImageWrite] = {}
        for key, image in images.items():
            missing = [chain for chain in image.chain_ids if chain not in written and not self._layer_known(chain)]
            if missing:
                outcome[key] = ImageWrite(failed.get(missing[0], f"layer {missing[0][7:19]} was not written"))
                continue
            try:
                self._register(image, written)
            except OSError as error:
                outcome[key] = ImageWrite(f"registering it: {error}")
                continue
            mine = [written[chain] for chain in image.chain_ids if chain in written]
            seconds = max((layer.finished for layer in mine), default=0.0) - min((layer.started for layer in mine), default=0.0)
            outcome[key] = ImageWrite(None, len(image.diff_ids), sum(layer.size for layer in mine), seconds)
        # Layers extracted for images that failed: docker load will need the room.
        for layer in written.values():
            self._discard(layer)
        return outcome

    def cancel(self) -> None:
        """Stop every extraction now (SIGTERM): the children are killed, the workers see it."""
        self._cancelled.set()
        with self._lock:
            for child in self._children:
                child.kill()

    # -- extraction

    def _extract_all(self, layers: dict[str, tuple[str, Blob]]) -> tuple[dict[str, WrittenLayer], dict[str, str]]:
        """Extract the layers, biggest first, MAX_PARALLEL at a time; the main thread waits interruptibly."""
        queue = sorted(layers.items(), key=lambda item: item[1][1].size, reverse=True)
        written: dict[str, WrittenLayer] = {}
        failed: dict[str, str] = {}
        lock = threading.Lock()

        def worker() -> None:
            while not self._cancelled.is_set():
                with lock:
                    if not queue:
                        return
                    chain_id, (diff_id, blob) = queue.pop(0)
                cache_id = secrets.token_hex(32)
                started = time.monotonic()
                try:
                    size = self._extract(blob, diff_id, self.driver_home / cache_id / "diff")
                except Exception as error:  # whatever it is, docker load gets the image instead
                    if not self._cancelled.is_set():  # after SIGTERM the data root is thrown away: no time spent
                        shutil.rmtree(self.driver_home / cache_id, ignore_errors=True)
                    with lock:
                        failed[chain_id] = f"layer {diff_id[7:19]}: {error}"
                    continue
                with lock:
                    written[chain_id] = WrittenLayer(chain_id, diff_id, cache_id, size, started, time.monotonic())

        threads = [threading.Thread(target=worker, name=f"layer-{n}", daemon=True) for n in range(min(MAX_PARALLEL, os.cpu_count() or 1, len(queue)))]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.1)
        except BaseException:
            # SIGTERM: children killed, workers given one shared second; the teardown discards the data root.
            self.cancel()
            deadline = time.monotonic() + 1
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            raise
        return written, failed

    def _extract(self, blob: Blob, diff_id: str, target: Path) -> int:
        """Inflate, hash and untar one layer blob into `target`; returns the layer's size as dockerd counts it."""
        target.mkdir(parents=True)
        target.parent.chmod(0o710)
        target.chmod(0o755)
        if blob.size == 0:  # an empty layer as some tools write it; GNU tar refuses an empty stream
            if diff_id != "sha256:" + hashlib.sha256(b"").hexdigest():
                raise LayerFailure(f"it is empty, which does not match the diff_id {diff_id} in the image config")
            return 0
        compression = _compression(blob)
        inflater = {"gzip": [_gzip_inflater(), "-dc"], "zstd": ["zstd", "-dcq"]}.get(compression)
        digest = hashlib.sha256()
        with tempfile.TemporaryFile() as tar_errors:
            # umask 022 as dockerd has: directories the layer implies but does not list get 0755.
            tar = self._spawn([*TAR_ARGS, f"--directory={target}"], stdin=subprocess.PIPE, stderr=tar_errors, preexec_fn=_dockerd_umask)
            chunks = self._inflated(blob, inflater)
            try:
                assert tar.stdin is not None
                sink: BinaryIO | None = tar.stdin
                for chunk in chunks:
                    digest.update(chunk)
                    if sink is not None:
                        try:
                            sink.write(chunk)
                        except BrokenPipeError:  # tar stops at the end-of-archive blocks: the rest is still hashed
                            sink = None
                with contextlib.suppress(BrokenPipeError):
                    tar.stdin.close()
                tar.wait()
            finally:
                chunks.close()
                self._reap(tar)
            if self._cancelled.is_set():
                raise LayerFailure("cancelled")
            if tar.returncode != 0:
                tar_errors.seek(0)
                detail = tar_errors.read().decode(errors="replace").strip().splitlines()
                raise LayerFailure(f"tar failed ({detail[-1] if detail else f'exit {tar.returncode}'})")
        if "sha256:" + digest.hexdigest() != diff_id:
            raise LayerFailure(f"its content does not match the diff_id {diff_id} in the image config")
        # dockerd leaves the layer's root as it made it, whatever a `./` member says.
        os.chown(target, 0, 0)
        target.chmod(0o755)
        return convert_whiteouts(target)

    def _inflated(self, blob: Blob, inflater: list[str] | None) -> Iterator[bytes]:
        """The layer's tar bytes: the blob itself, or what the inflater makes of it."""
        if inflater is None:
            for chunk in archives.file_chunks(blob.path, blob.offset, blob.size):
                if self._cancelled.is_set():
                    return
                yield chunk
            return
        process = self._spawn(inflater, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        feeder = threading.Thread(target=self._feed, args=(process, blob), daemon=True)
        feeder.start()
        try:
            assert process.stdout is not None
            while chunk := os.read(process.stdout.fileno(), CHUNK):
                yield chunk
            process.wait()
        finally:
            self._reap(process)
            feeder.join(5)
        if process.returncode != 0 and not self._cancelled.is_set():
            raise LayerFailure(f"{inflater[0]} could not inflate it (exit {process.returncode})")

    def _feed(self, process: subprocess.Popen[bytes], blob: Blob) -> None:
        assert process.stdin is not None
        try:
            for chunk in archives.file_chunks(blob.path, blob.offset, blob.size):
                if self._cancelled.is_set():
                    break
                process.stdin.write(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                process.stdin.close()

    def _spawn(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._cancelled.is_set():
                raise LayerFailure("cancelled")
            child = subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]
            self._children.add(child)
            return child

    def _reap(self, child: subprocess.Popen[bytes]) -> None:
        if child.poll() is None:
            child.kill()
            child.wait()
        with self._lock:
            self._children.discard(child)

    # -- the stores' files

    def _make_homes(self) -> None:
        for directory, mode in ((self.driver_home, 0o710), (self.driver_home / "l", 0o700)):
            directory.mkdir(mode=mode, parents=True, exist_ok=True)
        for directory in (self.image_home / "layerdb" / "sha256", self.image_home / "imagedb" / "content" / "sha256"):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _layer_dir(self, chain_id: str) -> Path:
        return self.image_home / "layerdb" / "sha256" / chain_id.removeprefix("sha256:")

    def _layer_known(self, chain_id: str) -> bool:
        return (self._layer_dir(chain_id) / "cache-id").is_file()

    def _register(self, image: DirectImage, written: dict[str, WrittenLayer]) -> None:
        """The overlay2 and layer-store files of each new layer, bottom up, then the image config."""
        parent = ""
        for chain_id in image.chain_ids:
            layer = written.get(chain_id)
            if layer is not None and not self._layer_known(chain_id):
                self._register_layer(layer, parent)
            parent = chain_id
        content = self.image_home / "imagedb" / "content" / "sha256" / image.image_id.removeprefix("sha256:")
        _write(content, image.config, 0o600)

    def _register_layer(self, layer: WrittenLayer, parent_chain: str) -> None:
        layer_home = self.driver_home / layer.cache_id
        link = _new_link_id()
        (self.driver_home / "l" / link).symlink_to(f"../{layer.cache_id}/diff")
        _write(layer_home / "link", link.encode(), 0o644)
        if parent_chain:
            parent_home = self.driver_home / (self._layer_dir(parent_chain) / "cache-id").read_text().strip()
            lowers = [f"l/{(parent_home / 'link').read_text().strip()}"]
            if (parent_home / "lower").is_file():
                lowers += (parent_home / "lower").read_text().strip().split(":")
            (layer_home / "work").mkdir(mode=0o700, exist_ok=True)
            _write(parent_home / "committed", b"", 0o600)
            _write(layer_home / "lower", ":".join(lowers).encode(), 0o644)
        entry = self._layer_dir(layer.chain_id)
        entry.mkdir(mode=0o700, exist_ok=True)  # a reused data root may hold an entry without cache-id
        _write(entry / "diff", layer.diff_id.encode(), 0o644)
        _write(entry / "size", str(layer.size).encode(), 0o644)
        if parent_chain:
            _write(entry / "parent", parent_chain.encode(), 0o644)
        # Last: a layer directory with its cache-id is what the layer store loads.
        _write(entry / "cache-id", layer.cache_id.encode(), 0o644)

    def _discard(self, layer: WrittenLayer | None) -> None:
        if layer is not None and not self._layer_known(layer.chain_id):
            shutil.rmtree(self.driver_home / layer.cache_id, ignore_errors=True)


def _dockerd_umask() -> None:
    os.umask(0o022)


def _gzip_inflater() -> str:
    """igzip (ISA-L) inflates about twice as fast as unpigz, which beats gzip."""
    return next((tool for tool in ("igzip", "unpigz") if shutil.which(tool)), "gzip")


def _compression(blob: Blob) -> str:
    """gzip, zstd or "" (a plain tar), from the blob's first bytes."""
    with open(blob.path, "rb") as handle:
        handle.seek(blob.offset)
        magic = handle.read(4)
    return "gzip" if magic.startswith(GZIP_MAGIC) else "zstd" if magic == ZSTD_MAGIC else ""


def _write(path: Path, data: bytes, mode: int) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as handle:
        handle.write(data)


def _new_link_id() -> str:
    """Like the overlay2 driver's: random base32, 26 characters (short lowerdir= options)."""
    return base64.b32encode(secrets.token_bytes(20)).decode()[:LINK_LENGTH]


def convert_whiteouts(root: Path) -> int:
    """AUFS whiteouts to overlay ones, as dockerd's overlay2 driver unpacks them; returns the layer size.

    `.wh.NAME` becomes a 0/0 character device NAME (owned like the whiteout), `.wh..wh..opq`
    marks its directory opaque, other `.wh..wh.` entries (AUFS metadata) are dropped. The
    size is dockerd's: every non-directory's apparent size, hardlinks counted once.
    """
    size = 0
    seen: set[int] = set()
    for directory, subdirectories, files in os.walk(root):
        whiteouts = [name for name in files + subdirectories if name.startswith(WHITEOUT_PREFIX)]
        # Converting changes the directory's mtime, which tar has already restored from the layer.
        times = os.lstat(directory) if whiteouts else None
        for name in whiteouts:
            _convert_whiteout(directory, name)
            if name in subdirectories:
                subdirectories.remove(name)
        if times is not None:
            os.utime(directory, ns=(times.st_atime_ns, times.st_mtime_ns), follow_symlinks=False)
        for name in files + [d for d in subdirectories if os.path.islink(os.path.join(directory, d))]:
            if name.startswith(WHITEOUT_PREFIX):
                continue
            info = os.lstat(os.path.join(directory, name))
            if info.st_nlink > 1:
                if info.st_ino in seen:
                    continue
                seen.add(info.st_ino)
            size += info.st_size
    return size


def _convert_whiteout(directory: str, name: str) -> None:
    path = os.path.join(directory, name)
    info = os.lstat(path)
    if stat.S_ISDIR(info.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)
    if name == OPAQUE_MARKER:
        os.setxattr(directory, "trusted.overlay.opaque", b"y")
    elif not name.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
        hidden = os.path.join(directory, name[len(WHITEOUT_PREFIX) :])
        os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        os.lchown(hidden, info.st_uid, info.st_gid)


def write_images(images: dict[str, DirectImage], data_root: str) -> tuple[dict[str, ImageWrite], float]:
    """StoreWriter.write with its duration; a SIGTERM (an exception in this thread) stops it cleanly."""
    started = time.monotonic()
    return StoreWriter(data_root).write(images), time.monotonic() - started
