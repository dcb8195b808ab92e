"""Test-only: the store damaged between the direct write and dockerd's start, to force each fallback.

`COMPOSE_ENV_TEST_STORE_FAULT` is set by tests/integration/test_direct_load.py and by nothing
else; unset, this module does nothing. Each value damages the top layer of every image that
was written:
- `remove-layer`: its overlay2 directory is removed: dockerd cannot inspect the image;
- `corrupt-layer`: its `diff` directory becomes an empty file: dockerd lists the image, but
  creating a container from it (which mounts the layers) fails;
- `drop-layer-entry`: its layer store entry loses its `cache-id`: dockerd skips the image and
  leaves the entry's directory, on which `docker load`'s final rename would fail;
- `break-dockerd`: the image store's `repositories.json` is not JSON: dockerd refuses to start;
- `fail-registering`: registering any layer above an image's first fails (layerstore asks
  `registering_fails`): the store holds half-registered entries before dockerd starts.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compose_env.images.layerstore import StoreWrite

FAULT_ENV = "COMPOSE_ENV_TEST_STORE_FAULT"
FAULTS = ("remove-layer", "corrupt-layer", "drop-layer-entry", "break-dockerd", "fail-registering")


def registering_fails(parent_chain: str) -> bool:
    """Whether registering a layer on `parent_chain` is to fail (only under `fail-registering`)."""
    return bool(parent_chain) and os.environ.get(FAULT_ENV) == "fail-registering"


def inject(data_root: str, write: StoreWrite) -> str:
    """Apply the fault the environment asks for; returns its name ("" when none)."""
    from compose_env.images.layerstore import chain_ids  # layerstore imports this module

    fault = os.environ.get(FAULT_ENV, "")
    if fault not in FAULTS or fault == "fail-registering":
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
