"""OCI layouts: the manifest for a platform through nested indexes, and the docker-save stream made of it.

No Docker.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from compose_env.images.errors import ArchiveError, NoMatchingPlatform
from compose_env.images.oci import LayoutReader, oci_stream, select_manifest
from compose_env.images.tar import list_tar
from image_fixtures import ImageParts, loadable_members, oci_archive_tarball, synthetic_image
from producers import oci_build_task_dir, oci_layout_dir

AMD64 = ("linux", "amd64", "")


@pytest.fixture
def parts(tmp_path: Path) -> ImageParts:
    return synthetic_image(tmp_path / "parts", {"shape": b"synthetic\n", "big.bin": bytes(range(256)) * 4096})


def test_select_manifest_skips_attestations_in_a_registry_index(tmp_path: Path, parts: ImageParts) -> None:
    layout = oci_layout_dir(parts, tmp_path / "image", "example/app", "1") / "oci"

    manifest = select_manifest(LayoutReader.directory(layout), AMD64)

    assert manifest["config"]["digest"] == parts.config_digest


def test_select_manifest_walks_a_nested_index(tmp_path: Path, parts: ImageParts) -> None:
    """oci-build-task's multi-platform output: index.json's one entry is an index of the platforms' manifests."""
    layout = oci_build_task_dir(parts, tmp_path / "image", platforms=[("linux", "arm64"), ("linux", "amd64")]) / "image"

    manifest = select_manifest(LayoutReader.directory(layout), AMD64)

    assert manifest["config"]["digest"] == parts.config_digest


def test_select_manifest_names_the_platforms_offered_when_none_matches(tmp_path: Path, parts: ImageParts) -> None:
    layout = oci_layout_dir(parts, tmp_path / "image", "example/app", "1", platform=("linux", "s390x")) / "oci"

    with pytest.raises(
        NoMatchingPlatform,
        match=r"no image for the daemon's platform linux/amd64; it offers: linux/arm64/v8, linux/s390x$",
    ):
        select_manifest(LayoutReader.directory(layout), AMD64)


def test_a_single_manifest_without_platform_is_checked_against_its_config(tmp_path: Path) -> None:
    arm = synthetic_image(tmp_path / "parts", {"f": b"x"}, architecture="arm64")
    layout = oci_layout_dir(arm, tmp_path / "image", "example/app", "1", multi_platform=False) / "oci"

    with pytest.raises(NoMatchingPlatform, match="it offers: linux/arm64"):
        select_manifest(LayoutReader.directory(layout), AMD64)
    assert select_manifest(LayoutReader.directory(layout), ("linux", "arm64", ""))


def test_oci_layout_becomes_a_docker_save_archive_with_only_the_chosen_platform(
    tmp_path: Path, parts: ImageParts
) -> None:
    layout = oci_layout_dir(parts, tmp_path / "image", "example/app", "1") / "oci"

    data = b"".join(oci_stream(LayoutReader.directory(layout), AMD64, ["example/app:1"]))

    manifest, members = loadable_members(data)
    assert manifest["RepoTags"] == ["example/app:1"]
    assert json.loads(members[manifest["Config"]])["architecture"] == "amd64"
    assert gzip.decompress(members[manifest["Layers"][0]]) == parts.layers[0].read_bytes()
    assert len(members) == 3  # manifest.json, config, one layer: nothing from arm64 or the attestation


def test_a_missing_blob_is_named(tmp_path: Path, parts: ImageParts) -> None:
    layout = oci_layout_dir(parts, tmp_path / "image", "example/app", "1") / "oci"
    layer = select_manifest(LayoutReader.directory(layout), AMD64)["layers"][0]["digest"]
    (layout / "blobs" / "sha256" / layer.split(":")[1]).unlink()

    with pytest.raises(ArchiveError, match=f"blob {layer} is missing from oci/"):
        b"".join(oci_stream(LayoutReader.directory(layout), AMD64, ["example/app:1"]))


def test_an_oci_archive_is_converted_from_its_members_in_place(tmp_path: Path, parts: ImageParts) -> None:
    tarball = oci_archive_tarball(parts, tmp_path / "oci.tar", with_docker_manifest=False)

    data = b"".join(oci_stream(LayoutReader.tar(list_tar(tarball)), AMD64, ["example/oci:1"]))

    manifest, members = loadable_members(data)
    assert manifest["RepoTags"] == ["example/oci:1"]
    assert gzip.decompress(members[manifest["Layers"][0]]) == parts.layers[0].read_bytes()
