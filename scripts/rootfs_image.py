"""Write a root filesystem as a one-layer `docker load` tarball for a given platform, on stdout.

scripts/base-image.sh builds the base image from a debootstrapped directory with this rather than
`docker import --platform`: Debian's engine (20.10) labels an imported image with its own
architecture whatever the platform asked for, so an arm64 base would claim to be amd64.

Usage: python3 scripts/rootfs_image.py ROOT NAME PLATFORM | docker load
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from typing import BinaryIO


def _add(out: tarfile.TarFile, name: str, body: BinaryIO, size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    out.addfile(info, body)


def write_image(root: str, name: str, platform: str, sink: BinaryIO) -> None:
    """ROOT as the one layer of an image NAME for PLATFORM (os/architecture[/variant]), as `docker save` writes it."""
    os_name, architecture, *variant = platform.split("/")
    with tempfile.TemporaryFile(dir="/var/tmp") as layer:
        subprocess.run(["tar", "-C", root, "--numeric-owner", "-c", "."], stdout=layer, check=True)
        size = layer.tell()
        layer.seek(0)
        diff_id = "sha256:" + hashlib.file_digest(layer, "sha256").hexdigest()
        layer.seek(0)
        config = json.dumps(
            {
                "architecture": architecture,
                "os": os_name,
                **({"variant": variant[0]} if variant else {}),
                "config": {"Cmd": ["bash"]},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            }
        ).encode()
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        manifest = json.dumps([{"Config": config_name, "RepoTags": [name], "Layers": ["layer.tar"]}]).encode()
        with tarfile.open(fileobj=sink, mode="w|") as out:
            _add(out, config_name, io.BytesIO(config), len(config))
            _add(out, "manifest.json", io.BytesIO(manifest), len(manifest))
            _add(out, "layer.tar", layer, size)


if __name__ == "__main__":
    root_dir, image_name, image_platform = sys.argv[1:4]
    write_image(root_dir, image_name, image_platform, sys.stdout.buffer)
