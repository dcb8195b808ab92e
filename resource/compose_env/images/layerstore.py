"""Images written straight into the inner dockerd's overlay2 store, before dockerd starts.

Why: dockerd 26 unpacks each layer of a `docker load` in a goroutine locked to its own
thread (chrootarchive), fed through a pipe in 512-byte and 32 KiB steps, and every step
wakes another thread. On this project's 2-vCPU test VM the seed scenario's 317 MiB
docker-save tarball took 5.6-6.2 s to load that way, while GNU tar extracts its layers in
0.45 s. So here each layer is inflated, hashed against the diff_id its image config
declares, and extracted by GNU tar, several layers at once; then the few files dockerd's
layer store, overlay2 driver and image store keep for it are written, and dockerd finds the
images when it starts (`put.py` checks that it did, and tags them through the API).

Each layer is extracted under `<data_root>/overlay2/compose-env-partial/<cache_id>`, a directory
only this module writes (dockerd's overlay2 driver names its directories by random IDs, and neither
it nor BuildKit removes one it does not know), and moved to `overlay2/<cache_id>` only once it is
complete, just before its layer store entry gets its cache-id. So whatever a killed write leaves
half-extracted is in that directory: `remove_partial_layers` clears it at the start of a run on a
data root that outlives the run (a task cache, a data_root of the user's), without guessing which
overlay2 directories dockerd or BuildKit might still use. (Only a kill in the instant between a
layer's move and its cache-id leaves one directory the sweep does not see.)

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
import functools
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
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from compose_env.concurrency import Workers
from compose_env.console import Console
from compose_env.images import store_faults
from compose_env.images.compression import compression_of, inflater_argv
from compose_env.images.rootfs import rootfs_tar_argv
from compose_env.images.tar import CHUNK, Blob, file_chunks

#: dockerd refuses deeper images at load (overlay's lowerdir limit): such an image gets docker load's error.
MAX_LAYERS = 125
#: How many layers are extracted at once: each runs a tar (and an inflater) beside us.
MAX_PARALLEL = 4
#: dockerd's umask: directories a layer implies but does not list get 0755.
DOCKERD_UMASK = 0o022
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
#: Under the overlay2 home, where layers are extracted until registered: a name dockerd never gives a directory there.
PARTIAL_DIR = "compose-env-partial"
#: What dockerd's overlay2 driver names a layer's link (26 characters of base32).
LINK_LENGTH = 26
#: A rootfs is scheduled first: it is usually the biggest layer of a put, and its size is not known up front.
ROOTFS_SIZE_HINT = 1 << 40
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
        return chain_ids(self.diff_ids)


def chain_ids(diff_ids: tuple[str, ...]) -> list[str]:
    """The layer store's keys: each layer's identity includes everything below it."""
    chain: list[str] = []
    for diff_id in diff_ids:
        chain.append(diff_id if not chain else "sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
    return chain


def image_from_config(config: bytes, blobs: list[Blob], repo_tags: tuple[str, ...] = ()) -> DirectImage | None:
    """A DirectImage when the config names one sha256 diff_id per layer blob; else None (docker load decides)."""
    try:
        document = json.loads(config)
        diff_ids = document["rootfs"]["diff_ids"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(blobs) or not blobs or len(blobs) > MAX_LAYERS:
        return None
    if not all(isinstance(d, str) and d.startswith("sha256:") and len(d) == 71 for d in diff_ids):
        return None
    return DirectImage(config, tuple(diff_ids), tuple(blobs), repo_tags)


@dataclass(frozen=True)
class RootfsImage:
    """registry-image's rootfs/ directory: one layer, archived by GNU tar while it is extracted.

    Its diff_id is known only once the layer is written, so its config is made then.
    """

    rootfs: Path
    config_for: Callable[[str], bytes]
    repo_tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Job:
    """One layer to extract: `run(target)` writes it into `target` and returns (size, diff_id)."""

    key: str
    #: The layer store key when known up front ("" for a rootfs: its diff_id, once written).
    chain_id: str
    size: int
    run: Callable[[Path], tuple[int, str]]


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
    image_id: str = ""
    #: The layers dockerd must list for it once it starts (RootFS.Layers).
    diff_ids: tuple[str, ...] = ()
    #: Its registering failed part way: the store may hold some of its entries.
    left_entries: bool = False


@dataclass(frozen=True)
class StoreWrite:
    """The whole write: each image's fate, and `damaged` (why) when the store may hold half-registered entries.

    A damaged store must be emptied before dockerd reads it: docker load trips over half-written
    layer directories. An image that failed before registering left nothing behind.
    """

    images: dict[str, ImageWrite]
    seconds: float
    damaged: str = ""


class StoreWriter:
    """Writes images into `<data_root>/overlay2` and `<data_root>/image/overlay2` while no dockerd runs."""

    def __init__(self, data_root: str) -> None:
        self.root = Path(data_root)
        self.driver_home = self.root / "overlay2"
        self.staging = self.driver_home / PARTIAL_DIR
        self.image_home = self.root / "image" / "overlay2"
        self._children: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        #: Set when registering an image failed part way: its entries may be in the store.
        self.damaged = ""

    # -- the whole job

    def write(self, images: dict[str, DirectImage | RootfsImage]) -> dict[str, ImageWrite]:
        """Write every image; returns, per key, how it went (written, or why not)."""
        self._make_homes()
        layers: dict[str, tuple[str, Blob, str]] = {}
        jobs: list[Job] = []
        for key, image in images.items():
            if isinstance(image, RootfsImage):
                jobs.append(Job(f"rootfs:{key}", "", ROOTFS_SIZE_HINT, functools.partial(self._extract_rootfs, image.rootfs)))
                continue
            for chain_id, diff_id, blob in zip(image.chain_ids, image.diff_ids, image.blobs, strict=True):
                if self._layer_known(chain_id):
                    continue
                # A layer two images share may come compressed in one and not in the other: no inflating then.
                if chain_id not in layers or layers[chain_id][2]:
                    compression = compression_of(blob.path, blob.offset)
                    if chain_id not in layers or not compression:
                        layers[chain_id] = (diff_id, blob, compression)
        for chain_id, (diff_id, blob, compression) in layers.items():
            jobs.append(Job(chain_id, chain_id, blob.size, functools.partial(self._extract_layer, blob, diff_id, compression)))
        written, failed = self._extract_all(jobs)
        outcome = {key: self._finish(key, image, written, failed) for key, image in images.items()}
        # What is still staged was not registered (its image failed, or the same content was there): room for docker load.
        # A SIGTERM does not get here: its seconds are the teardown's, and a kept data root's next run removes what is staged.
        shutil.rmtree(self.staging, ignore_errors=True)
        return outcome

    def _finish(self, key: str, image: DirectImage | RootfsImage, written: dict[str, WrittenLayer], failed: dict[str, str]) -> ImageWrite:
        """Register one image's layers and config once they are all extracted; any failure sends it to docker load."""
        try:
            return self._register_image(key, image, written, failed)
        except Exception as error:
            self.damaged = self.damaged or f"registering an image failed part way ({error})"
            return ImageWrite(f"registering it: {error}", left_entries=True)

    def _register_image(self, key: str, image: DirectImage | RootfsImage, written: dict[str, WrittenLayer], failed: dict[str, str]) -> ImageWrite:
        if isinstance(image, RootfsImage):
            diff_ids: tuple[str, ...]
            rootfs_layer = written.get(f"rootfs:{key}")
            if rootfs_layer is None:
                return ImageWrite(failed.get(f"rootfs:{key}", "its layer was not written"))
            config = image.config_for(rootfs_layer.diff_id)
            chain_ids, mine, diff_ids = [rootfs_layer.chain_id], [rootfs_layer], (rootfs_layer.diff_id,)
        else:
            missing = [chain for chain in image.chain_ids if chain not in written and not self._layer_known(chain)]
            if missing:
                return ImageWrite(failed.get(missing[0], f"layer {missing[0][7:19]} was not written"))
            config, chain_ids, diff_ids = image.config, image.chain_ids, image.diff_ids
            mine = [written[chain] for chain in chain_ids if chain in written]
        self._register(chain_ids, config, {layer.chain_id: layer for layer in mine})
        seconds = max((layer.finished for layer in mine), default=0.0) - min((layer.started for layer in mine), default=0.0)
        image_id = "sha256:" + hashlib.sha256(config).hexdigest()
        return ImageWrite(None, len(chain_ids), sum(layer.size for layer in mine), seconds, image_id, diff_ids)

    def cancel(self) -> None:
        """Stop every extraction now (SIGTERM): the children are killed, the workers see it."""
        self._cancelled.set()
        with self._lock:
            for child in self._children:
                child.kill()

    # -- extraction

    def _extract_all(self, jobs: list[Job]) -> tuple[dict[str, WrittenLayer], dict[str, str]]:
        """Run the jobs, biggest first, MAX_PARALLEL at a time; the main thread waits interruptibly."""
        queue = sorted(jobs, key=lambda job: job.size, reverse=True)
        written: dict[str, WrittenLayer] = {}
        failed: dict[str, str] = {}
        lock = threading.Lock()

        def extract(job: Job) -> None:
            cache_id = secrets.token_hex(32)
            started = time.monotonic()
            try:
                size, diff_id = job.run(self.staging / cache_id / "diff")
            except Exception as error:  # whatever it is, docker load gets the image instead
                if not self._cancelled.is_set():  # after SIGTERM no time is spent: it stays staged
                    shutil.rmtree(self.staging / cache_id, ignore_errors=True)
                with lock:
                    failed[job.key] = f"layer {job.chain_id[7:19]}: {error}" if job.chain_id else str(error)
                return
            with lock:
                written[job.key] = WrittenLayer(job.chain_id or diff_id, diff_id, cache_id, size, started, time.monotonic())

        workers: Workers[Job] | None = None
        try:
            workers = Workers(extract, queue, min(MAX_PARALLEL, os.cpu_count() or 1), "layer", stop=self._cancelled)
            workers.wait()
        except BaseException:
            # SIGTERM: children killed, workers given one shared second; what they wrote stays staged.
            self.cancel()
            if workers is not None:
                workers.finish(1)
            raise
        return written, failed

    def _extract_layer(self, blob: Blob, diff_id: str, compression: str, target: Path) -> tuple[int, str]:
        return self._extract(blob, diff_id, compression, target), diff_id

    def _extract(self, blob: Blob, diff_id: str, compression: str, target: Path) -> int:
        """Inflate, hash and untar one layer blob into `target`; returns the layer's size as dockerd counts it."""
        target.mkdir(parents=True)
        target.parent.chmod(0o710)
        target.chmod(0o755)
        if blob.size == 0:  # an empty layer as some tools write it; GNU tar refuses an empty stream
            if diff_id != "sha256:" + hashlib.sha256(b"").hexdigest():
                raise LayerFailure(f"it is empty, which does not match the diff_id {diff_id} in the image config")
            return 0
        inflater = inflater_argv(compression)
        digest = self._untar(self._inflated(blob, inflater), target)
        if digest != diff_id:
            raise LayerFailure(f"its content does not match the diff_id {diff_id} in the image config")
        return _finish_layer(target)

    def _extract_rootfs(self, rootfs: Path, target: Path) -> tuple[int, str]:
        """A rootfs directory archived by GNU tar straight into `target`; returns (size, diff_id)."""
        target.mkdir(parents=True)
        target.parent.chmod(0o710)
        diff_id = self._untar(self._archived(rootfs), target)
        return _finish_layer(target), diff_id

    def _untar(self, chunks: Iterator[bytes], target: Path) -> str:
        """Feed a layer tar to GNU tar extracting into `target`; returns the tar's `sha256:` digest."""
        digest = hashlib.sha256()
        chunks = store_faults.held_after_first_chunk(chunks, self._cancelled)
        with tempfile.TemporaryFile() as tar_errors:
            # umask 022 as dockerd has: directories the layer implies but does not list get 0755.
            tar = self._spawn([*TAR_ARGS, f"--directory={target}"], stdin=subprocess.PIPE, stderr=tar_errors, umask=DOCKERD_UMASK)
            try:
                assert tar.stdin is not None
                sink: IO[bytes] | None = tar.stdin
                for chunk in chunks:
                    digest.update(chunk)
                    if sink is not None:
                        try:
                            sink.write(chunk)
                        except BrokenPipeError:  # tar stops at the end-of-archive blocks: the rest is still hashed
                            sink = None
                            if tar.wait() != 0:  # unless tar failed: then reading on is wasted
                                break
                with contextlib.suppress(BrokenPipeError):
                    tar.stdin.close()
                tar.wait()
            finally:
                if isinstance(chunks, Generator):
                    chunks.close()
                self._reap(tar)
            if self._cancelled.is_set():
                raise LayerFailure("cancelled")
            if tar.returncode != 0:
                raise LayerFailure(f"tar failed ({_last_line(tar_errors, f'exit {tar.returncode}')})")
        return "sha256:" + digest.hexdigest()

    def _archived(self, rootfs: Path) -> Iterator[bytes]:
        """The tar GNU tar makes of `rootfs`, as for docker load (rootfs.ROOTFS_TAR_ARGS), under this writer's cancellation."""
        with tempfile.TemporaryFile() as errors:
            process = self._spawn(rootfs_tar_argv(rootfs), stdout=subprocess.PIPE, stderr=errors)
            try:
                yield from _output(process)
            finally:
                self._reap(process)
            if process.returncode != 0 and not self._cancelled.is_set():
                raise LayerFailure(f"cannot archive {rootfs} ({_last_line(errors, f'exit {process.returncode}')})")

    def _inflated(self, blob: Blob, inflater: list[str] | None) -> Iterator[bytes]:
        """The layer's tar bytes: the blob itself, or what the inflater makes of it."""
        if inflater is None:
            for chunk in file_chunks(blob.path, blob.offset, blob.size):
                if self._cancelled.is_set():
                    return
                yield chunk
            return
        process = self._spawn(inflater, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        feed_errors: list[BaseException] = []
        feeder = threading.Thread(target=self._feed, args=(process, blob, feed_errors), daemon=True)
        feeder.start()
        try:
            yield from _output(process)
        finally:
            self._reap(process)
            feeder.join(5)
        if self._cancelled.is_set():
            return
        # Reading the input failed (a truncated file): that, not the inflater's view of it, is the reason.
        if feed_errors:
            raise LayerFailure(f"reading it: {feed_errors[0]}")
        if process.returncode != 0:
            raise LayerFailure(f"{inflater[0]} could not inflate it (exit {process.returncode})")

    def _feed(self, process: subprocess.Popen[bytes], blob: Blob, errors: list[BaseException]) -> None:
        """The blob into the inflater; any failure is handed back in `errors`, never left to the thread."""
        assert process.stdin is not None
        try:
            for chunk in file_chunks(blob.path, blob.offset, blob.size):
                if self._cancelled.is_set():
                    break
                process.stdin.write(chunk)
        except BrokenPipeError:
            pass  # the inflater stopped reading: its exit status tells why
        except Exception as error:
            errors.append(error)
        finally:
            with contextlib.suppress(OSError):
                process.stdin.close()

    def _spawn(
        self, argv: list[str], *, stdin: int | None = None, stdout: int | None = None, stderr: int | IO[bytes] | None = None, umask: int = -1
    ) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._cancelled.is_set():
                raise LayerFailure("cancelled")
            child = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, umask=umask)
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
        for directory, mode in ((self.driver_home, 0o710), (self.driver_home / "l", 0o700), (self.staging, 0o700)):
            directory.mkdir(mode=mode, parents=True, exist_ok=True)
        for directory in (self.image_home / "layerdb" / "sha256", self.image_home / "imagedb" / "content" / "sha256"):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _layer_dir(self, chain_id: str) -> Path:
        return self.image_home / "layerdb" / "sha256" / chain_id.removeprefix("sha256:")

    def _layer_known(self, chain_id: str) -> bool:
        return (self._layer_dir(chain_id) / "cache-id").is_file()

    def _register(self, chain_ids: list[str], config: bytes, written: dict[str, WrittenLayer]) -> None:
        """The overlay2 and layer-store files of each new layer, bottom up, then the image config."""
        parent = ""
        for chain_id in chain_ids:
            layer = written.get(chain_id)
            if layer is not None and not self._layer_known(chain_id):
                self._register_layer(layer, parent)
            parent = chain_id
        content = self.image_home / "imagedb" / "content" / "sha256" / hashlib.sha256(config).hexdigest()
        _write(content, config, 0o600)

    def _register_layer(self, layer: WrittenLayer, parent_chain: str) -> None:
        """The layer's overlay2 files while it is staged; then it moves into the overlay2 home, and its entry gets its cache-id."""
        if store_faults.registering_fails(parent_chain):
            raise OSError(f"injected by {store_faults.FAULT_ENV}")
        staged = self.staging / layer.cache_id
        link = _new_link_id()
        _write(staged / "link", link.encode(), 0o644)
        if parent_chain:
            parent_home = self.driver_home / (self._layer_dir(parent_chain) / "cache-id").read_text().strip()
            lowers = [f"l/{(parent_home / 'link').read_text().strip()}"]
            if (parent_home / "lower").is_file():
                lowers += (parent_home / "lower").read_text().strip().split(":")
            (staged / "work").mkdir(mode=0o700, exist_ok=True)
            _write(parent_home / "committed", b"", 0o600)
            _write(staged / "lower", ":".join(lowers).encode(), 0o644)
        entry = self._layer_dir(layer.chain_id)
        entry.mkdir(mode=0o700, exist_ok=True)  # a reused data root may hold an entry without cache-id
        _write(entry / "diff", layer.diff_id.encode(), 0o644)
        _write(entry / "size", str(layer.size).encode(), 0o644)
        if parent_chain:
            _write(entry / "parent", parent_chain.encode(), 0o644)
        # Complete: into the overlay2 home, then (last) the cache-id that makes the layer store load it.
        staged.rename(self.driver_home / layer.cache_id)
        (self.driver_home / "l" / link).symlink_to(f"../{layer.cache_id}/diff")
        _write(entry / "cache-id", layer.cache_id.encode(), 0o644)


def _output(process: subprocess.Popen[bytes]) -> Iterator[bytes]:
    """A child's stdout in chunks as they come, then its exit."""
    assert process.stdout is not None
    while chunk := os.read(process.stdout.fileno(), CHUNK):
        yield chunk
    process.wait()


def _finish_layer(target: Path) -> int:
    """dockerd leaves a layer's root as it made it, whatever a `./` member says; whiteouts to overlay form."""
    os.chown(target, 0, 0)
    target.chmod(0o755)
    return convert_whiteouts(target)


def _last_line(errors: BinaryIO, default: str) -> str:
    errors.seek(0)
    lines = errors.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else default


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


def write_images(images: dict[str, DirectImage | RootfsImage], data_root: str) -> StoreWrite:
    """StoreWriter.write with its duration; every error comes back in the result, a SIGTERM (Aborted) stops it cleanly."""
    started = time.monotonic()
    writer = StoreWriter(data_root)
    try:
        outcome = writer.write(images)
    except Exception as error:  # outside any one layer (the store's directories): nothing written can be trusted
        problem = f"writing into {data_root}: {error}"
        return StoreWrite({key: ImageWrite(problem) for key in images}, time.monotonic() - started, problem)
    return StoreWrite(outcome, time.monotonic() - started, writer.damaged)


def holds(data_root: str, driver: str, image: DirectImage) -> bool:
    """Whether a kept data root (a task cache) has this image already: its config and every layer (by chain ID)."""
    image_home = Path(data_root) / "image" / driver
    if not (image_home / "imagedb" / "content" / "sha256" / image.image_id.removeprefix("sha256:")).is_file():
        return False
    return all((image_home / "layerdb" / "sha256" / chain.removeprefix("sha256:") / "cache-id").is_file() for chain in image.chain_ids)


def has_images(data_root: str, driver: str) -> bool:
    """Whether the data root already holds image configs (a kept task cache; a put's is always empty)."""
    content = Path(data_root) / "image" / driver / "imagedb" / "content" / "sha256"
    return content.is_dir() and any(content.iterdir())


def remove_partial_layers(data_root: str, console: Console) -> None:
    """On a data root that outlives the run, before anything is written into it and before dockerd starts:
    the layers an interrupted write left staged (a SIGTERM or SIGKILL while extracting), removed with one line.

    Only PARTIAL_DIR is touched: every other overlay2 directory may be dockerd's or BuildKit's.
    """
    staging = Path(data_root) / "overlay2" / PARTIAL_DIR
    try:
        if not staging.is_dir():
            return
        layers = len(os.listdir(staging))
        size = _disk_usage(staging)
        shutil.rmtree(staging)
    except OSError as error:
        console.warn(f"data root {data_root}: could not remove the half-written layers an interrupted run left in {staging}: {error}")
        return
    if layers:
        s = "s" if layers > 1 else ""
        console.warn(f"data root {data_root}: removed {layers} half-written layer{s} an interrupted run left ({size / 2**20:.1f} MiB)")


def _disk_usage(root: Path) -> int:
    """The bytes `root` takes on disk (hardlinks once): what removing it frees."""
    size = 0
    seen: set[int] = set()
    for directory, subdirectories, files in os.walk(root):
        for name in [*subdirectories, *files]:
            try:
                info = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                if info.st_ino in seen:
                    continue
                seen.add(info.st_ino)
            size += info.st_blocks * 512
    return size
