"""Test-only: the store damaged between the direct write and dockerd's start, to force each fallback; or the write held.

`COMPOSE_ENV_TEST_STORE_FAULT` is set by tests/integration/test_direct_fallbacks.py and
test_task_cache.py and by nothing else. The entry points (`assets/out`, `assets/task`) read it and
hand the writer these hooks (layerstore.StoreHooks); unset, nothing here is even imported. Each of
the first four values damages the top layer of every image that was written:
- `remove-layer`: its overlay2 directory is removed: dockerd cannot inspect the image;
- `corrupt-layer`: its `diff` directory becomes an empty file: dockerd lists the image, but
  creating a container from it (which mounts the layers) fails;
- `drop-layer-entry`: its layer store entry loses its `cache-id`: dockerd skips the image and
  leaves the entry's directory, on which `docker load`'s final rename would fail;
- `break-dockerd`: the image store's `repositories.json` is not JSON: dockerd refuses to start;
- `fail-registering`: registering any layer above an image's first fails: the store holds
  half-registered entries before dockerd starts;
- `hold-extracting`: each layer's extraction stops after its first chunk, says so on stderr
  and waits for the SIGTERM (or SIGKILL) the test sends: the write is interrupted half-way, at a
  moment the test knows.
"""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Generator, Iterator, Mapping

from compose_env.images.layerstore import NO_HOOKS, StoreHooks, StoreWrite
from compose_env.images.store_format import StoreLayout, chain_ids

FAULT_ENV = "COMPOSE_ENV_TEST_STORE_FAULT"
#: The faults applied once the write is done (the others act during it).
AFTER_WRITE = ("remove-layer", "corrupt-layer", "drop-layer-entry", "break-dockerd")
#: What `hold-extracting` prints once a layer's extraction is held.
HELD_LINE = f"{FAULT_ENV}: a layer's extraction is held half-way"


def hooks_from_env(env: Mapping[str, str]) -> StoreHooks:
    """The hooks the environment asks for (NO_HOOKS without it)."""
    fault = env.get(FAULT_ENV, "")
    if fault == "fail-registering":
        return StoreHooks(before_register=_fail_above_the_first)
    if fault == "hold-extracting":
        return StoreHooks(layer_chunks=_held)
    if fault in AFTER_WRITE:
        return StoreHooks(after_write=lambda layout, write: damage(fault, layout, write))
    return NO_HOOKS


def _fail_above_the_first(parent_chain: str) -> None:
    if parent_chain:
        raise OSError(f"injected by {FAULT_ENV}")


def _held(chunks: Iterator[bytes], cancelled: threading.Event) -> Iterator[bytes]:
    """A layer's tar bytes, held after the first chunk until `cancelled`."""
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


def damage(fault: str, layout: StoreLayout, write: StoreWrite) -> None:
    """Damage the store as `fault` says (one of AFTER_WRITE)."""
    if fault == "break-dockerd":
        layout.names_file.write_text("{not json")
        return
    for result in write.images.values():
        if result.problem is not None:
            continue
        top = chain_ids(result.diff_ids)[-1]
        if fault == "remove-layer":
            shutil.rmtree(layout.layer_home(top))
        elif fault == "corrupt-layer":
            shutil.rmtree(layout.layer_home(top) / "diff")
            (layout.layer_home(top) / "diff").touch()
        else:
            (layout.layer_entry(top) / "cache-id").unlink()
