"""A `rootfs/` directory as an image: its layer made by GNU tar, its config from the files beside it
(rootfs_metadata.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compose_env.images.errors import ArchiveError
from compose_env.images.tar import CHUNK, bytes_entry, docker_save_manifest, end_of_archive, entry_header, entry_padding

#: GNU tar making a layer of a rootfs directory, for docker load and for the direct write alike
#: (one archiver: the same rootfs/ gives the same diff_id, so the same image ID, either way).
#: PAX, so that xattrs and long names fit; sorted and without atime/ctime records, so the same
#: tree gives the same bytes; numeric owners (the image's /etc/passwd decides names); sockets
#: are skipped. trusted.* and security.selinux belong to the filesystem the rootfs lies on, not
#: to the image; every other xattr (file capabilities above all) is kept, as dockerd applies them.
ROOTFS_TAR_ARGS = [
    "tar",
    "--create",
    "--file=-",
    "--format=posix",
    "--pax-option=delete=atime,delete=ctime",
    "--sort=name",
    "--numeric-owner",
    "--xattrs",
    "--xattrs-include=*",
    "--xattrs-exclude=trusted.*",
    "--xattrs-exclude=security.selinux",
]


def rootfs_tar_argv(rootfs: Path) -> list[str]:
    return [*ROOTFS_TAR_ARGS, f"--directory={rootfs}", "."]


def _rootfs_tar(rootfs: Path) -> Iterator[bytes]:
    """The layer tar of `rootfs` as GNU tar makes it, in chunks as they come (nothing on disk, bounded memory)."""
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            rootfs_tar_argv(rootfs), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
        )
        assert process.stdout is not None
        try:
            while chunk := os.read(process.stdout.fileno(), CHUNK):
                yield chunk
            process.wait()
        finally:
            if process.poll() is None:  # the reader stopped early
                process.kill()
                process.wait()
            process.stdout.close()
        if process.returncode != 0:
            errors.seek(0)
            lines = errors.read().decode(errors="replace").strip().splitlines()
            raise ArchiveError(f"tar failed on {rootfs} ({lines[-1] if lines else f'exit {process.returncode}'})")


class RootfsLayer:
    """The tar of a `rootfs/` directory, measured once in the background, then streamed.

    docker load needs the layer's size and digest before its bytes, so the tar is made
    twice (deterministically). The first pass starts once the put knows the rootfs goes
    through docker load (while the daemon starts); the load waits for it only if it is not
    done yet. Nothing goes to disk.
    """

    def __init__(self, rootfs: Path) -> None:
        self.rootfs = rootfs
        self._done = threading.Event()
        self._result: tuple[int, str] | None = None
        self._error: Exception | None = None
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> RootfsLayer:
        with self._lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._measure, name="rootfs-measure", daemon=True).start()
        return self

    def _measure(self) -> None:
        try:
            digest = hashlib.sha256()
            size = 0
            for chunk in _rootfs_tar(self.rootfs):
                digest.update(chunk)
                size += len(chunk)
            self._result = (size, "sha256:" + digest.hexdigest())
        except Exception as error:
            self._error = error
        finally:
            self._done.set()

    def measured(self) -> tuple[int, str]:
        """(size, `sha256:` digest) of the layer tar."""
        self.start()
        self._done.wait()
        if self._error is not None:
            raise ArchiveError(f"cannot archive {self.rootfs}: {self._error}")
        assert self._result is not None
        return self._result

    def chunks(self) -> Iterator[bytes]:
        return _rootfs_tar(self.rootfs)


def rootfs_config(config: dict[str, Any], diff_id: str, architecture: str) -> dict[str, Any]:
    """The image config of a rootfs: `config` (what the files beside it say, rootfs_metadata.py) over its one layer."""
    return {
        "architecture": architecture,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "compose-env: imported from a rootfs directory"}],
    }


def rootfs_stream(
    layer: RootfsLayer, image_config: dict[str, Any], architecture: str, repo_tags: list[str]
) -> Iterator[bytes]:
    """A one-layer docker-save archive of `rootfs/` with `image_config` (Env, User, Cmd, … as docker inspect names
    them)."""
    size, diff_id = layer.measured()
    config = json.dumps(rootfs_config(image_config, diff_id, architecture)).encode()
    config_name = "blobs/sha256/" + hashlib.sha256(config).hexdigest()
    layer_name = "blobs/sha256/" + diff_id.split(":", 1)[1]
    yield from bytes_entry("manifest.json", docker_save_manifest(config_name, [layer_name], repo_tags))
    yield from bytes_entry(config_name, config)
    yield entry_header(layer_name, size)
    digest = hashlib.sha256()
    sent = 0
    for chunk in layer.chunks():
        digest.update(chunk)
        sent += len(chunk)
        yield chunk
    if sent != size or "sha256:" + digest.hexdigest() != diff_id:
        raise ArchiveError(f"{layer.rootfs} changed while it was being loaded")
    yield entry_padding(size)
    yield end_of_archive()
