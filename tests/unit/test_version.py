"""compose_env.version: what the image's build.json says, and what a source tree says without one."""

from __future__ import annotations

import json
from pathlib import Path

from compose_env.version import ResourceVersion, read_resource_version


def test_the_image_build_info_gives_version_and_revision(tmp_path: Path) -> None:
    info = tmp_path / "build.json"
    info.write_text(json.dumps({"version": "0.1.0", "revision": "3f2c1ab"}))

    version = read_resource_version(info)

    assert version == ResourceVersion("0.1.0", "3f2c1ab")
    assert version.describe() == "compose-env 0.1.0 (3f2c1ab)"


def test_a_source_tree_without_build_info_is_a_dev_build(tmp_path: Path) -> None:
    assert read_resource_version(tmp_path / "build.json").describe() == "compose-env dev (unknown)"


def test_empty_or_broken_build_info_falls_back_field_by_field(tmp_path: Path) -> None:
    info = tmp_path / "build.json"
    info.write_text(json.dumps({"version": "0.2.0", "revision": ""}))
    assert read_resource_version(info) == ResourceVersion("0.2.0", "unknown")
    info.write_text("not json")
    assert read_resource_version(info) == ResourceVersion()
    info.write_text("[]")
    assert read_resource_version(info) == ResourceVersion()
