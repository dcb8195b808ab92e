"""scripts/rootfs_image.py: a root filesystem as a one-layer `docker load` tarball that says its platform."""

from __future__ import annotations

import hashlib
import io
import json
import runpy
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
write_image = runpy.run_path(str(ROOT / "scripts" / "rootfs_image.py"))["write_image"]


def test_the_image_carries_the_platform_asked_for_and_its_layer_is_the_tree(tmp_path: Path) -> None:
    tree = tmp_path / "root"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text("ID=debian\n")
    sink = io.BytesIO()

    write_image(str(tree), "compose-env-base/arm64:debian-trixie-slim", "linux/arm64/v8", sink)

    with tarfile.open(fileobj=io.BytesIO(sink.getvalue())) as saved:
        manifest = json.load(saved.extractfile("manifest.json"))  # type: ignore[arg-type]
        (entry,) = manifest
        config = json.load(saved.extractfile(entry["Config"]))  # type: ignore[arg-type]
        layer = saved.extractfile("layer.tar").read()  # type: ignore[union-attr]
    assert entry["RepoTags"] == ["compose-env-base/arm64:debian-trixie-slim"]
    assert (config["os"], config["architecture"], config["variant"]) == ("linux", "arm64", "v8")
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tree_tar:
        assert "./etc/os-release" in tree_tar.getnames()
