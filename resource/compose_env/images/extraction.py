"""One layer's bytes into a directory: read where they lie, inflated, hashed and extracted by GNU tar.

What GNU tar is asked to do matches dockerd's unpacking: numeric owners, permissions (setuid
included), every xattr (file capabilities), hardlinks, devices, umask 022; `..` member names are
refused and absolute ones made relative, symlinks that leave the layer are placed last. AUFS-style
whiteouts are then turned into overlay ones (whiteouts.py).

Every child (tar, an inflater) is tracked, so that `cancel` (a SIGTERM) kills them all at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import tempfile
import threading
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import IO, BinaryIO

from compose_env.images.compression import inflater_argv
from compose_env.images.rootfs import rootfs_tar_argv
from compose_env.images.tar import CHUNK, Blob, file_chunks
from compose_env.images.whiteouts import convert_whiteouts

#: dockerd's umask: directories a layer implies but does not list get 0755.
DOCKERD_UMASK = 0o022
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
#: A layer's tar bytes as they reach tar, and the cancellation: the seam a test holds a write at.
LayerChunks = Callable[[Iterator[bytes], threading.Event], Iterator[bytes]]


def unchanged(chunks: Iterator[bytes], _cancelled: threading.Event) -> Iterator[bytes]:
    return chunks


class LayerFailure(Exception):
    """A layer that could not be written; its image goes through docker load instead."""


class Extraction:
    """The extractions of one store write: their children, and their cancellation."""

    def __init__(self, layer_chunks: LayerChunks = unchanged) -> None:
        self._children: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self.cancelled = threading.Event()
        self._layer_chunks = layer_chunks

    def cancel(self) -> None:
        """Stop every extraction now (SIGTERM): the children are killed, the workers see it."""
        self.cancelled.set()
        with self._lock:
            for child in self._children:
                child.kill()

    def layer(self, blob: Blob, diff_id: str, compression: str, target: Path) -> int:
        """Inflate, hash and untar one layer blob into `target`; returns the layer's size as dockerd counts it."""
        target.mkdir(parents=True)
        target.parent.chmod(0o710)
        target.chmod(0o755)
        if blob.size == 0:  # an empty layer as some tools write it; GNU tar refuses an empty stream
            if diff_id != "sha256:" + hashlib.sha256(b"").hexdigest():
                raise LayerFailure(f"it is empty, which does not match the diff_id {diff_id} in the image config")
            return 0
        digest = self._untar(self._inflated(blob, inflater_argv(compression)), target)
        if digest != diff_id:
            raise LayerFailure(f"its content does not match the diff_id {diff_id} in the image config")
        return finish_layer(target)

    def rootfs(self, rootfs: Path, target: Path) -> tuple[int, str]:
        """A rootfs directory archived by GNU tar straight into `target`; returns (size, diff_id)."""
        target.mkdir(parents=True)
        target.parent.chmod(0o710)
        diff_id = self._untar(self._archived(rootfs), target)
        return finish_layer(target), diff_id

    def _untar(self, chunks: Iterator[bytes], target: Path) -> str:
        """Feed a layer tar to GNU tar extracting into `target`; returns the tar's `sha256:` digest."""
        digest = hashlib.sha256()
        chunks = self._layer_chunks(chunks, self.cancelled)
        with tempfile.TemporaryFile() as tar_errors:
            # umask 022 as dockerd has: directories the layer implies but does not list get 0755.
            tar = self._spawn(
                [*TAR_ARGS, f"--directory={target}"], stdin=subprocess.PIPE, stderr=tar_errors, umask=DOCKERD_UMASK
            )
            try:
                assert tar.stdin is not None
                _feed_tar(tar, chunks, digest)
            finally:
                if isinstance(chunks, Generator):
                    chunks.close()
                self._reap(tar)
            if self.cancelled.is_set():
                raise LayerFailure("cancelled")
            if tar.returncode != 0:
                raise LayerFailure(f"tar failed ({_last_line(tar_errors, f'exit {tar.returncode}')})")
        return "sha256:" + digest.hexdigest()

    def _archived(self, rootfs: Path) -> Iterator[bytes]:
        """The tar GNU tar makes of `rootfs`, as for docker load (rootfs.ROOTFS_TAR_ARGS), under this extraction's
        cancellation."""
        with tempfile.TemporaryFile() as errors:
            process = self._spawn(rootfs_tar_argv(rootfs), stdout=subprocess.PIPE, stderr=errors)
            try:
                yield from _output(process)
            finally:
                self._reap(process)
            if process.returncode != 0 and not self.cancelled.is_set():
                raise LayerFailure(f"cannot archive {rootfs} ({_last_line(errors, f'exit {process.returncode}')})")

    def _inflated(self, blob: Blob, inflater: list[str] | None) -> Iterator[bytes]:
        """The layer's tar bytes: the blob itself, or what the inflater makes of it."""
        if inflater is None:
            for chunk in file_chunks(blob.path, blob.offset, blob.size):
                if self.cancelled.is_set():
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
        if self.cancelled.is_set():
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
                if self.cancelled.is_set():
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
        self,
        argv: list[str],
        *,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | IO[bytes] | None = None,
        umask: int = -1,
    ) -> subprocess.Popen[bytes]:
        with self._lock:
            if self.cancelled.is_set():
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


def _feed_tar(tar: subprocess.Popen[bytes], chunks: Iterator[bytes], digest: hashlib._Hash) -> None:
    """Every chunk hashed; each written to tar until it has read the end of the archive (or failed)."""
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


def finish_layer(target: Path) -> int:
    """dockerd leaves a layer's root as it made it, whatever a `./` member says; whiteouts to overlay form."""
    os.chown(target, 0, 0)
    target.chmod(0o755)
    return convert_whiteouts(target)


def _output(process: subprocess.Popen[bytes]) -> Iterator[bytes]:
    """A child's stdout in chunks as they come, then its exit."""
    assert process.stdout is not None
    while chunk := os.read(process.stdout.fileno(), CHUNK):
        yield chunk
    process.wait()


def _last_line(errors: BinaryIO, default: str) -> str:
    errors.seek(0)
    lines = errors.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else default
