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
half-extracted is in that directory: `StoreLayout.remove_partial_layers` clears it at the start of a run on a
data root that outlives the run (a task cache, a data_root of the user's), without guessing which
overlay2 directories dockerd or BuildKit might still use. (Only a kill in the instant between a
layer's move and its cache-id leaves one directory the sweep does not see.)

The parts: `extraction.py` (a layer's bytes into a directory, GNU tar), `whiteouts.py`,
`store_format.py` (dockerd's files: the only place their paths are spelled), and here the
scheduling of the layers and the registering of each image once its layers are there.
`StoreHooks` are where a test faults the write (`compose_env/testing/store_faults.py`, wired
in at the entry point); by default they do nothing.

Limits, by design: the overlay2 driver only; no tar-split metadata is written, so inside
the environment `docker save` and `docker push` of an image written this way fail
(`source.dockerd.direct_load: false` sends every image through `docker load`). An image
this module cannot write (a layer it cannot read, inflate, extract or verify) is left to
`docker load`, which gives the canonical error for a damaged input.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from compose_env.concurrency import Workers
from compose_env.images.compression import compression_of
from compose_env.images.extraction import Extraction, LayerChunks, unchanged
from compose_env.images.store_format import NewLayer, StoreLayout, chain_ids
from compose_env.images.tar import Blob

#: dockerd refuses deeper images at load (overlay's lowerdir limit): such an image gets docker load's error.
MAX_LAYERS = 125
#: How many layers are extracted at once: each runs a tar (and an inflater) beside us.
MAX_PARALLEL = 4
#: A rootfs is scheduled first: it is usually the biggest layer of a put, and its size is not known up front.
ROOTFS_SIZE_HINT = 1 << 40


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
    """A rootfs/ directory: one layer, archived by GNU tar while it is extracted.

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
class WrittenLayer(NewLayer):
    """A layer extracted and staged: when it ran, for the image's timing."""

    started: float = 0.0
    finished: float = 0.0


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


def _no_fault(_parent_chain: str) -> None:
    return None


def _nothing_after(_layout: StoreLayout, _write: StoreWrite) -> None:
    return None


@dataclass(frozen=True)
class StoreHooks:
    """Where a test faults the write; each does nothing by default.

    `layer_chunks` sees each layer's tar bytes on their way to tar (it may hold them);
    `before_register` may raise before a layer on `parent_chain` is registered ("" for a bottom
    layer); `after_write` may damage the finished store before dockerd starts on it.
    """

    layer_chunks: LayerChunks = unchanged
    before_register: Callable[[str], None] = _no_fault
    after_write: Callable[[StoreLayout, StoreWrite], None] = _nothing_after


NO_HOOKS = StoreHooks()


class StoreWriter:
    """Writes images into the data root's overlay2 store while no dockerd runs."""

    def __init__(self, data_root: str, hooks: StoreHooks = NO_HOOKS) -> None:
        self.layout = StoreLayout(data_root)
        self.hooks = hooks
        self.extraction = Extraction(hooks.layer_chunks)
        #: Set when registering an image failed part way: its entries may be in the store.
        self.damaged = ""

    def write(self, images: dict[str, DirectImage | RootfsImage]) -> dict[str, ImageWrite]:
        """Write every image; returns, per key, how it went (written, or why not)."""
        self.layout.make_homes()
        written, failed = self._extract_all(self._jobs(images))
        outcome = {key: self._finish(key, image, written, failed) for key, image in images.items()}
        # Room for docker load. A SIGTERM does not get here: its seconds are the teardown's, and a
        # kept data root's next run removes what is staged.
        self.layout.drop_staging()
        return outcome

    def cancel(self) -> None:
        self.extraction.cancel()

    def _jobs(self, images: dict[str, DirectImage | RootfsImage]) -> list[Job]:
        """One job per layer the store lacks (a layer two images share, once) and per rootfs."""
        layers: dict[str, tuple[str, Blob, str]] = {}
        jobs: list[Job] = []
        for key, image in images.items():
            if isinstance(image, RootfsImage):
                jobs.append(
                    Job(f"rootfs:{key}", "", ROOTFS_SIZE_HINT, functools.partial(self.extraction.rootfs, image.rootfs))
                )
                continue
            for chain_id, diff_id, blob in zip(image.chain_ids, image.diff_ids, image.blobs, strict=True):
                if self.layout.layer_known(chain_id):
                    continue
                # A layer two images share may come compressed in one and not in the other: no inflating then.
                if chain_id not in layers or layers[chain_id][2]:
                    compression = compression_of(blob.path, blob.offset)
                    if chain_id not in layers or not compression:
                        layers[chain_id] = (diff_id, blob, compression)
        for chain_id, (diff_id, blob, compression) in layers.items():
            jobs.append(
                Job(chain_id, chain_id, blob.size, functools.partial(self._extract_layer, blob, diff_id, compression))
            )
        return jobs

    def _extract_layer(self, blob: Blob, diff_id: str, compression: str, target: Path) -> tuple[int, str]:
        return self.extraction.layer(blob, diff_id, compression, target), diff_id

    def _extract_all(self, jobs: list[Job]) -> tuple[dict[str, WrittenLayer], dict[str, str]]:
        """Run the jobs, biggest first, MAX_PARALLEL at a time; the main thread waits interruptibly."""
        queue = sorted(jobs, key=lambda job: job.size, reverse=True)
        written: dict[str, WrittenLayer] = {}
        failed: dict[str, str] = {}
        staging = self.layout.staging
        lock = threading.Lock()

        def extract(job: Job) -> None:
            cache_id = secrets.token_hex(32)
            started = time.monotonic()
            try:
                size, diff_id = job.run(staging / cache_id / "diff")
            except Exception as error:  # whatever it is, docker load gets the image instead
                if not self.extraction.cancelled.is_set():  # after SIGTERM no time is spent: it stays staged
                    shutil.rmtree(staging / cache_id, ignore_errors=True)
                with lock:
                    failed[job.key] = f"layer {job.chain_id[7:19]}: {error}" if job.chain_id else str(error)
                return
            with lock:
                written[job.key] = WrittenLayer(
                    job.chain_id or diff_id, diff_id, cache_id, size, started, time.monotonic()
                )

        workers: Workers[Job] | None = None
        try:
            workers = Workers(
                extract, queue, min(MAX_PARALLEL, os.cpu_count() or 1), "layer", stop=self.extraction.cancelled
            )
            workers.wait()
        except BaseException:
            # SIGTERM: children killed, workers given one shared second; what they wrote stays staged.
            self.cancel()
            if workers is not None:
                workers.finish(1)
            raise
        return written, failed

    def _finish(
        self, key: str, image: DirectImage | RootfsImage, written: dict[str, WrittenLayer], failed: dict[str, str]
    ) -> ImageWrite:
        """Register one image's layers and config once they are all extracted; any failure sends it to docker load."""
        try:
            return self._register_image(key, image, written, failed)
        except Exception as error:
            self.damaged = self.damaged or f"registering an image failed part way ({error})"
            return ImageWrite(f"registering it: {error}", left_entries=True)

    def _register_image(
        self, key: str, image: DirectImage | RootfsImage, written: dict[str, WrittenLayer], failed: dict[str, str]
    ) -> ImageWrite:
        diff_ids: tuple[str, ...]
        if isinstance(image, RootfsImage):
            rootfs_layer = written.get(f"rootfs:{key}")
            if rootfs_layer is None:
                return ImageWrite(failed.get(f"rootfs:{key}", "its layer was not written"))
            config = image.config_for(rootfs_layer.diff_id)
            chain, mine, diff_ids = [rootfs_layer.chain_id], [rootfs_layer], (rootfs_layer.diff_id,)
        else:
            missing = [link for link in image.chain_ids if link not in written and not self.layout.layer_known(link)]
            if missing:
                return ImageWrite(failed.get(missing[0], f"layer {missing[0][7:19]} was not written"))
            config, chain, diff_ids = image.config, image.chain_ids, image.diff_ids
            mine = [written[link] for link in chain if link in written]
        self._register(chain, config, {layer.chain_id: layer for layer in mine})
        seconds = max((layer.finished for layer in mine), default=0.0) - min(
            (layer.started for layer in mine), default=0.0
        )
        image_id = "sha256:" + hashlib.sha256(config).hexdigest()
        return ImageWrite(None, len(chain), sum(layer.size for layer in mine), seconds, image_id, diff_ids)

    def _register(self, chain: list[str], config: bytes, written: dict[str, WrittenLayer]) -> None:
        """Each new layer, bottom up, then the image config."""
        parent = ""
        for chain_id in chain:
            layer = written.get(chain_id)
            if layer is not None and not self.layout.layer_known(chain_id):
                self.hooks.before_register(parent)
                self.layout.register_layer(layer, parent)
            parent = chain_id
        self.layout.register_config(config)


def write_images(
    images: dict[str, DirectImage | RootfsImage], data_root: str, hooks: StoreHooks = NO_HOOKS
) -> StoreWrite:
    """StoreWriter.write with its duration.

    Every error comes back in the result; a SIGTERM (Aborted) stops it cleanly.
    """
    started = time.monotonic()
    writer = StoreWriter(data_root, hooks)
    try:
        outcome = writer.write(images)
    except Exception as error:  # outside any one layer (the store's directories): nothing written can be trusted
        problem = f"writing into {data_root}: {error}"
        return StoreWrite({key: ImageWrite(problem) for key in images}, time.monotonic() - started, problem)
    write = StoreWrite(outcome, time.monotonic() - started, writer.damaged)
    hooks.after_write(writer.layout, write)
    return write
