"""dockerd's private on-disk image store (overlay2 driver, classic graphdriver store), as dockerd 26 keeps it.

The one place its paths are spelled:

- `<data_root>/overlay2/<cache_id>/{diff,link,lower,work,committed}` and `overlay2/l/<link>`: the
  overlay2 driver's layer directories and their short links;
- `<data_root>/image/overlay2/layerdb/sha256/<chain_id>/{diff,size,parent,cache-id}`: the layer
  store's entries (an entry without `cache-id` is not loaded);
- `<data_root>/image/overlay2/imagedb/content/sha256/<image_id>`: image configs;
- `<data_root>/image/overlay2/repositories.json`: the names (written through the API, not here);
- `<data_root>/overlay2/compose-env-partial/<cache_id>`: ours, layers being extracted, moved into
  the overlay2 home only once complete (a name dockerd never gives a directory there).

Only the dockerd versions in `engine/tested_engines.py` are written to; the image build checks it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from compose_env.console import Console

#: Under the overlay2 home, where layers are extracted until registered: a name dockerd never gives a directory there.
PARTIAL_DIR = "compose-env-partial"
#: What dockerd's overlay2 driver names a layer's link (26 characters of base32).
LINK_LENGTH = 26


@dataclass(frozen=True)
class NewLayer:
    """A layer extracted under `StoreLayout.staging / cache_id`, ready to be registered."""

    chain_id: str
    diff_id: str
    cache_id: str
    size: int


def chain_ids(diff_ids: tuple[str, ...]) -> list[str]:
    """The layer store's keys: each layer's identity includes everything below it."""
    chain: list[str] = []
    for diff_id in diff_ids:
        chain.append(
            diff_id if not chain else "sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest()
        )
    return chain


class StoreLayout:
    """The store of one data root: where each file is, and how a layer and an image config are registered."""

    def __init__(self, data_root: str | Path, driver: str = "overlay2") -> None:
        self.root = Path(data_root)
        self.driver_home = self.root / driver
        self.staging = self.driver_home / PARTIAL_DIR
        self.image_home = self.root / "image" / driver

    # -- where things are

    def layer_entry(self, chain_id: str) -> Path:
        return self.image_home / "layerdb" / "sha256" / chain_id.removeprefix("sha256:")

    def layer_home(self, chain_id: str) -> Path:
        """The overlay2 directory of a registered layer (its entry's cache-id names it)."""
        return self.driver_home / (self.layer_entry(chain_id) / "cache-id").read_text().strip()

    def config_file(self, image_id: str) -> Path:
        return self.image_home / "imagedb" / "content" / "sha256" / image_id.removeprefix("sha256:")

    @property
    def names_file(self) -> Path:
        return self.image_home / "repositories.json"

    # -- questions

    def layer_known(self, chain_id: str) -> bool:
        return (self.layer_entry(chain_id) / "cache-id").is_file()

    def holds(self, image_id: str, layer_chain: list[str]) -> bool:
        """Whether the store has this image already: its config and every layer (by chain ID)."""
        return self.config_file(image_id).is_file() and all(self.layer_known(chain) for chain in layer_chain)

    def has_images(self) -> bool:
        """Whether it holds image configs at all (a kept task cache; a put's is always empty)."""
        content = self.image_home / "imagedb" / "content" / "sha256"
        return content.is_dir() and any(content.iterdir())

    # -- writing

    def make_homes(self) -> None:
        for directory, mode in ((self.driver_home, 0o710), (self.driver_home / "l", 0o700), (self.staging, 0o700)):
            directory.mkdir(mode=mode, parents=True, exist_ok=True)
        for directory in (self.image_home / "layerdb" / "sha256", self.image_home / "imagedb" / "content" / "sha256"):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def register_layer(self, layer: NewLayer, parent_chain: str) -> None:
        """The layer's overlay2 files while it is staged; then it moves into the overlay2 home, and its entry gets its
        cache-id."""
        staged = self.staging / layer.cache_id
        link = _new_link_id()
        write_file(staged / "link", link.encode(), 0o644)
        if parent_chain:
            parent_home = self.layer_home(parent_chain)
            lowers = [f"l/{(parent_home / 'link').read_text().strip()}"]
            if (parent_home / "lower").is_file():
                lowers += (parent_home / "lower").read_text().strip().split(":")
            (staged / "work").mkdir(mode=0o700, exist_ok=True)
            write_file(parent_home / "committed", b"", 0o600)
            write_file(staged / "lower", ":".join(lowers).encode(), 0o644)
        entry = self.layer_entry(layer.chain_id)
        entry.mkdir(mode=0o700, exist_ok=True)  # a reused data root may hold an entry without cache-id
        write_file(entry / "diff", layer.diff_id.encode(), 0o644)
        write_file(entry / "size", str(layer.size).encode(), 0o644)
        if parent_chain:
            write_file(entry / "parent", parent_chain.encode(), 0o644)
        # Complete: into the overlay2 home, then (last) the cache-id that makes the layer store load it.
        staged.rename(self.driver_home / layer.cache_id)
        (self.driver_home / "l" / link).symlink_to(f"../{layer.cache_id}/diff")
        write_file(entry / "cache-id", layer.cache_id.encode(), 0o644)

    def register_config(self, config: bytes) -> None:
        write_file(self.config_file("sha256:" + hashlib.sha256(config).hexdigest()), config, 0o600)

    def drop_staging(self) -> None:
        """What is still staged was not registered (its image failed, or the same content was there)."""
        shutil.rmtree(self.staging, ignore_errors=True)

    def remove_partial_layers(self, console: Console) -> None:
        """On a data root that outlives the run, before anything is written into it and before dockerd starts:
        the layers an interrupted write left staged (a SIGTERM or SIGKILL while extracting), removed with one line.

        Only the staging directory is touched: every other overlay2 directory may be dockerd's or BuildKit's.
        """
        try:
            if not self.staging.is_dir():
                return
            layers = len(os.listdir(self.staging))
            size = _disk_usage(self.staging)
            shutil.rmtree(self.staging)
        except OSError as error:
            console.warn(
                f"data root {self.root}: could not remove the half-written layers an interrupted run left in "
                f"{self.staging}: {error}"
            )
            return
        if layers:
            s = "s" if layers > 1 else ""
            console.warn(
                f"data root {self.root}: removed {layers} half-written layer{s} an interrupted run left "
                f"({size / 2**20:.1f} MiB)"
            )


def write_file(path: Path, data: bytes, mode: int) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as handle:
        handle.write(data)


def _new_link_id() -> str:
    """Like the overlay2 driver's: random base32, 26 characters (short lowerdir= options)."""
    return base64.b32encode(secrets.token_bytes(20)).decode()[:LINK_LENGTH]


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
