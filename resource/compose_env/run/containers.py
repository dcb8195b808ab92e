"""Reading files out of a project's containers: which container, and its archive as a stream."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Iterator
from typing import Any

import docker


def service_container(client: docker.APIClient, project: str, service: str) -> str | None:
    """The newest container of the service: the `run` container when there is one."""
    labels = [f"com.docker.compose.project={project}", f"com.docker.compose.service={service}"]
    containers = client.containers(all=True, filters={"label": labels})
    if not containers:
        return None
    newest: dict[str, Any] = max(containers, key=lambda c: c.get("Created", 0))
    return str(newest["Id"])


class ChunkReader(io.RawIOBase):
    """A read-only file over docker-py's chunk iterator, so that tarfile reads the archive as it arrives."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def streamed_archive(chunks: Iterable[bytes]) -> tarfile.TarFile:
    """docker-py's `get_archive` chunks as a tar stream read as it arrives: constant memory whatever the size."""
    return tarfile.open(fileobj=io.BufferedReader(ChunkReader(chunks), 1 << 20), mode="r|")
