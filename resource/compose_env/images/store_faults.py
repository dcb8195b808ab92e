"""Test-only: the store damaged between the direct write and dockerd's start, to force each fallback; or the write held.

`COMPOSE_ENV_TEST_STORE_FAULT` is set by tests/integration/test_direct_fallbacks.py and
test_task_cache.py and by nothing else; unset, this module does nothing. Each of the first four
values damages the top layer of every image that was written:
- `remove-layer`: its overlay2 directory is removed: dockerd cannot inspect the image;
- `corrupt-layer`: its `diff` directory becomes an empty file: dockerd lists the image, but
  creating a container from it (which mounts the layers) fails;
- `drop-layer-entry`: its layer store entry loses its `cache-id`: dockerd skips the image and
  leaves the entry's directory, on which `docker load`'s final rename would fail;
- `break-dockerd`: the image store's `repositories.json` is not JSON: dockerd refuses to start;
- `fail-registering`: registering any layer above an image's first fails (layerstore asks
  `registering_fails`): the store holds half-registered entries before dockerd starts;
- `hold-extracting`: each layer's extraction stops after its first chunk, says so on stderr
  and waits for the SIGTERM (or SIGKILL) the test sends (layerstore wraps its input in
  `held_after_first_chunk`): the write is interrupted half-way, at a moment the test knows.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compose_env.images.layerstore import StoreWrite

FAULT_ENV = "COMPOSE_ENV_TEST_STORE_FAULT"
#: The faults `inject` applies once the write is done (the others act during it).
AFTER_WRITE = ("remove-layer", "corrupt-layer", "drop-layer-entry", "break-dockerd")
#: What `hold-extracting` prints once a layer's extraction is held.
HELD_LINE = f"{FAULT_ENV}: a layer's extraction is held half-way"


def registering_fails(parent_chain: str) -> bool:
    """Whether registering a layer on `parent_chain` is to fail (only under `fail-registering`)."""
    return bool(parent_chain) and os.environ.get(FAULT_ENV) == "fail-registering"


def held_after_first_chunk(chunks: Iterator[bytes], cancelled: threading.Event) -> Iterator[bytes]:
    """A layer's tar bytes, held after the first chunk until `cancelled` (only under `hold-extracting`)."""
    if os.environ.get(FAULT_ENV) != "hold-extracting":
        return chunks
    return _held(chunks, cancelled)


def _held(chunks: Iterator[bytes], cancelled: threading.Event) -> Iterator[bytes]:
    try:
        for index, chunk in enumerate(chunks):
            yield chunk
            if index == 0:
                print(HELD_LINE, file=sys.stderr, flush=True)
                if cancelled.wait(timeout=600):
                    return
    finally:
        if isinstance(chunks, Generator):  # its inflater, if any, stops now
            chunks.close()


def inject(data_root: str, write: StoreWrite) -> str:
    """Apply the fault the environment asks for; returns its name ("" when none)."""
    from compose_env.images.layerstore import chain_ids  # layerstore imports this module

    fault = os.environ.get(FAULT_ENV, "")
    if fault not in AFTER_WRITE:
        return ""
    image_home = Path(data_root) / "image" / "overlay2"
    if fault == "break-dockerd":
        (image_home / "repositories.json").write_text("{not json")
        return fault
    for result in write.images.values():
        if result.problem is not None:
            continue
        entry = image_home / "layerdb" / "sha256" / chain_ids(result.diff_ids)[-1].removeprefix("sha256:")
        layer_home = Path(data_root) / "overlay2" / (entry / "cache-id").read_text().strip()
        if fault == "remove-layer":
            shutil.rmtree(layer_home)
        elif fault == "corrupt-layer":
            shutil.rmtree(layer_home / "diff")
            (layer_home / "diff").touch()
        else:
            (entry / "cache-id").unlink()
    return fault
