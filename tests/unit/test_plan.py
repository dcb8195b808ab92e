"""Planning each image shape without a daemon: the shape recognised, the names, and the errors that name the entry."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
from compose_env.config.model import ImageEntry
from compose_env.errors import RuntimeFailure, UserError
from compose_env.images import plan as planning
from compose_env.images.errors import ArchiveError
from compose_env.images.plan import LOAD_HINT, ROOTFS_NOT_INSTEAD, ImagePlan, check_free_space, plan_image
from compose_env.images.tar import FileBody
from image_fixtures import (
    ImageParts,
    compress,
    docker_save_tarball,
    loadable_members,
    oci_archive_tarball,
    synthetic_image,
    truncated_copy,
)
from producers import (
    docker_image_resource_dir,
    oci_build_task_dir,
    oci_layout_dir,
    registry_image_oci_dir,
    registry_image_rootfs_dir,
)

AMD64 = ("linux", "amd64", "")


@pytest.fixture
def parts(tmp_path: Path) -> ImageParts:
    return synthetic_image(tmp_path / "parts", {"shape": b"synthetic\n", "bin/sh": b"\x7fELF"})


@pytest.fixture(autouse=True)
def amd64_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planning.host, "machine", lambda: "x86_64")


def entry(path: Path, tags: tuple[str, ...] = (), index: int = 0) -> ImageEntry:
    return ImageEntry(index=index, path=path, given=path.name, tags=tags)


def _streamed(plan: ImagePlan) -> bytes:
    body = plan.stream(AMD64)
    if isinstance(body, FileBody):
        with body:
            return b"".join(body)
    return b"".join(body)


def _stream_config(plan: ImagePlan) -> dict[str, Any]:
    """The `config` of the image as docker load would get it."""
    manifest, members = loadable_members(_streamed(plan))
    config: dict[str, Any] = json.loads(members[manifest["Config"]])["config"]
    return config


#: An image config a service depends on, as `docker image inspect` shows it.
SERVICE_CONFIG: dict[str, Any] = {
    "Cmd": ["--marker", "m"],
    "Entrypoint": ["/bin/sh", "/usr/local/serve.sh"],
    "Env": ["PATH=/bin", "GREETING=hi"],
    "User": "app",
    "WorkingDir": "/srv",
    "Healthcheck": {"Test": ["CMD", "/bin/sh", "-c", "test -f /tmp/ready"], "Interval": 1000000000},
    "ExposedPorts": {"6379/tcp": {}},
    "Volumes": {"/data": {}},
    "StopSignal": "SIGINT",
    "Labels": {"org.example.shape": "m"},
}


def _tree_size(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def _is_docker_save(data: bytes) -> bool:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return "manifest.json" in tar.getnames()


@pytest.mark.parametrize(
    "bad", ["Bad Name!", "UPPER/app:1", "app@sha256:" + "a" * 64, "app:", "-app", "app:" + "x" * 200]
)
def test_an_invalid_tag_names_the_parameter(tmp_path: Path, parts: ImageParts, bad: str) -> None:
    tarball = docker_save_tarball(parts, tmp_path / "app.tar", [])

    with pytest.raises(UserError) as raised:
        plan_image(entry(tarball, (bad,), index=3))

    assert raised.value.path == "params.images[3].tag"
    assert "is not a valid image reference" in raised.value.message


def test_the_tag_at_fault_in_a_list_is_pointed_at(tmp_path: Path, parts: ImageParts) -> None:
    tarball = docker_save_tarball(parts, tmp_path / "app.tar", [])

    with pytest.raises(UserError) as raised:
        plan_image(entry(tarball, ("good/app:1", "Bad!"), index=1))

    assert raised.value.path == "params.images[1].tag[1]"


def test_registry_image_oci_dir_is_named_from_repo_tags_and_files(tmp_path: Path, parts: ImageParts) -> None:
    directory = registry_image_oci_dir(parts, tmp_path / "redis-image", "redis", "7", "index.docker.io/library/redis:7")

    plan = plan_image(entry(directory, ("example/redis:pinned",)))

    assert plan.shape == "docker-save tarball (RepoTags: redis:7)"
    assert plan.source_path == directory / "image.tar"
    assert plan.names == ("redis:7", "example/redis:pinned")
    assert _streamed(plan) == (directory / "image.tar").read_bytes()


def test_a_missing_tag_file_adds_no_guessed_latest_to_a_tarball_that_carries_repo_tags(
    tmp_path: Path, parts: ImageParts
) -> None:
    directory = registry_image_oci_dir(parts, tmp_path / "redis-image", "redis", "7", "index.docker.io/library/redis:7")
    (directory / "tag").unlink()

    assert plan_image(entry(directory)).names == ()
    assert plan_image(entry(directory, ("redis:latest",))).names == ("redis:latest",)


def test_a_missing_tag_file_means_latest_for_a_tarball_without_repo_tags(tmp_path: Path, parts: ImageParts) -> None:
    directory = docker_image_resource_dir(parts, tmp_path / "saved", "example/saved", "ci")
    (directory / "tag").write_text("\n")

    assert plan_image(entry(directory)).names == ("example/saved:latest",)


def test_docker_image_save_dir_is_named_from_its_repository_and_tag_files(tmp_path: Path, parts: ImageParts) -> None:
    directory = docker_image_resource_dir(parts, tmp_path / "saved", "example/saved", "ci")

    plan = plan_image(entry(directory))

    assert plan.source_path == directory / "image"
    assert plan.shape.startswith(
        "docker-save tarball (no RepoTags); image used, not the rootfs/, metadata.json beside it"
    )
    assert plan.names == ("example/saved:ci",)


def test_oci_build_task_output_needs_a_tag_and_says_how(tmp_path: Path, parts: ImageParts) -> None:
    oci_build_task_dir(parts, tmp_path / "task-output" / "image")

    with pytest.raises(UserError) as raised:
        plan_image(entry(tmp_path / "task-output"))

    assert raised.value.path == "params.images[0]"
    assert "task-output/image/image.tar carries no image name" in raised.value.message
    assert "tag: myorg/app:latest" in raised.value.hint
    plan = plan_image(entry(tmp_path / "task-output", ("example/built:ci",)))
    assert plan.names == ("example/built:ci",)
    assert plan.shape == "docker-save tarball (no RepoTags)"


def test_oci_layout_dir_is_converted_for_the_platform_and_named_from_files(tmp_path: Path, parts: ImageParts) -> None:
    directory = oci_layout_dir(parts, tmp_path / "layout", "example/layout", "ci")

    plan = plan_image(entry(directory))

    assert plan.shape.startswith("directory with an OCI layout (the linux/amd64 image")
    assert plan.names == ("example/layout:ci",)
    assert plan.size < _tree_size(directory / "oci" / "blobs")  # the chosen image only, not arm64 and the attestation
    assert _is_docker_save(_streamed(plan))


def test_on_an_arm64_worker_the_arm64_image_of_a_multi_platform_layout_is_loaded(
    tmp_path: Path, parts: ImageParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """registry-image's oci-layout of a multi-platform image holds every platform's image: arm64 picks its own."""
    arm64 = synthetic_image(tmp_path / "arm64-parts", {"shape": b"arm64\n"}, architecture="arm64")
    directory = oci_layout_dir(parts, tmp_path / "layout", "example/layout", "ci", arm64=arm64)
    monkeypatch.setattr(planning.host, "machine", lambda: "aarch64")

    plan = plan_image(entry(directory))

    assert plan.shape.startswith("directory with an OCI layout (the linux/arm64 image")
    body = plan.stream(("linux", "arm64", ""))
    manifest, members = loadable_members(b"".join(body))
    assert json.loads(members[manifest["Config"]])["architecture"] == "arm64"
    assert members[manifest["Config"]] == arm64.config


def test_oci_layout_without_a_match_for_this_platform_is_a_user_error(tmp_path: Path, parts: ImageParts) -> None:
    directory = oci_layout_dir(parts, tmp_path / "layout", "example/layout", "ci", platform=("linux", "ppc64le"))

    with pytest.raises(
        UserError,
        match=(
            r"params.images\[0\]: layout: oci/ has no image for the daemon's platform linux/amd64;"
            r" it offers: linux/arm64/v8, linux/ppc64le"
        ),
    ):
        plan_image(entry(directory))


def test_oci_layout_without_name_files_needs_a_tag(tmp_path: Path, parts: ImageParts) -> None:
    directory = oci_layout_dir(parts, tmp_path / "layout", None, None)

    with pytest.raises(UserError, match="an OCI layout without a name"):
        plan_image(entry(directory))
    assert plan_image(entry(directory, ("x/y:1",))).names == ("x/y:1",)


def test_an_oci_only_archive_is_converted_while_streaming(tmp_path: Path, parts: ImageParts) -> None:
    tarball = oci_archive_tarball(parts, tmp_path / "oci.tar", with_docker_manifest=False)

    plan = plan_image(entry(tarball, ("example/oci:1",)))

    assert plan.shape.startswith("tarball with an OCI layout")
    assert _is_docker_save(_streamed(plan))


def test_a_registry_image_rootfs_keeps_env_user_and_labels_and_warns_of_the_rest(tmp_path: Path) -> None:
    parts = synthetic_image(tmp_path / "parts", {"f": b"x"}, SERVICE_CONFIG)
    directory = registry_image_rootfs_dir(parts, tmp_path / "rootfs-image", "example/rootfs", "ci", release="v1.14.0")

    plan = plan_image(entry(directory))

    assert plan.shape == "rootfs directory (archived while streaming, with metadata.json and labels.json)"
    assert plan.names == ("example/rootfs:ci",)
    assert _stream_config(plan) == {key: SERVICE_CONFIG[key] for key in ("Env", "User", "Labels")}
    assert plan.warning == (
        "params.images[0] (rootfs-image): loaded from rootfs/, with ENV, USER, LABEL from metadata.json and "
        "labels.json: "
        "the image's CMD, ENTRYPOINT, WORKDIR, HEALTHCHECK, EXPOSE, VOLUME, STOPSIGNAL are lost; "
        "for the whole config, give the get `params: {format: oci}` (registry-image) or `params: {save: true}` "
        "(docker-image)"
    )


def test_a_registry_image_rootfs_from_v1_15_keeps_the_command_too(tmp_path: Path) -> None:
    parts = synthetic_image(tmp_path / "parts", {"f": b"x"}, SERVICE_CONFIG)
    directory = registry_image_rootfs_dir(parts, tmp_path / "rootfs-image", "example/rootfs", "ci", release="v1.18.0")

    plan = plan_image(entry(directory))

    assert _stream_config(plan) == {key: SERVICE_CONFIG[key] for key in ("Cmd", "Entrypoint", "Env", "User", "Labels")}
    assert "the image's WORKDIR, HEALTHCHECK, EXPOSE, VOLUME, STOPSIGNAL are lost" in plan.warning


def test_a_null_command_in_metadata_means_none_not_lost(tmp_path: Path) -> None:
    parts = synthetic_image(tmp_path / "parts", {"f": b"x"}, {"Env": ["A=1"]})
    directory = registry_image_rootfs_dir(parts, tmp_path / "rootfs-image", "example/rootfs", "ci", release="v1.18.0")
    assert json.loads((directory / "metadata.json").read_text()) == {
        "cmd": None,
        "entrypoint": None,
        "env": ["A=1"],
        "user": "",
    }

    plan = plan_image(entry(directory))

    assert _stream_config(plan) == {"Env": ["A=1"]}
    assert "CMD" not in plan.warning and "ENTRYPOINT" not in plan.warning


def test_oci_build_task_unpacked_rootfs_keeps_env_and_user_only(tmp_path: Path) -> None:
    parts = synthetic_image(tmp_path / "parts", {"f": b"x"}, SERVICE_CONFIG)
    directory = oci_build_task_dir(parts, tmp_path / "built" / "image", unpack_rootfs=True)
    (directory / "image.tar").unlink()  # as if only the rootfs had been kept

    plan = plan_image(entry(directory, ("example/built:ci",)))

    assert _stream_config(plan) == {key: SERVICE_CONFIG[key] for key in ("Env", "User")}
    assert (
        "the image's CMD, ENTRYPOINT, WORKDIR, HEALTHCHECK, EXPOSE, VOLUME, STOPSIGNAL, LABEL are lost" in plan.warning
    )


def test_a_docker_image_get_without_save_keeps_the_whole_config_from_docker_inspect_json(tmp_path: Path) -> None:
    parts = synthetic_image(tmp_path / "parts", {"f": b"x"}, SERVICE_CONFIG)
    directory = docker_image_resource_dir(parts, tmp_path / "redis", "example/redis", "7", save=False)

    plan = plan_image(entry(directory))

    assert plan.shape == "rootfs directory (archived while streaming, with docker_inspect.json's whole image config)"
    assert _stream_config(plan) == SERVICE_CONFIG
    assert plan.warning == ""


@pytest.mark.parametrize("rootfs_tar", [False, True])
def test_a_docker_image_get_with_save_loads_the_saved_image_not_the_rootfs_beside_it(
    tmp_path: Path, rootfs_tar: bool
) -> None:
    parts = synthetic_image(tmp_path / "parts", {"f": b"x"}, SERVICE_CONFIG)
    directory = docker_image_resource_dir(parts, tmp_path / "redis", "example/redis", "7", rootfs_tar=rootfs_tar)

    plan = plan_image(entry(directory))

    assert plan.source_path == directory / "image"
    ignored = "rootfs/, rootfs.tar, metadata.json" if rootfs_tar else "rootfs/, metadata.json"
    assert plan.shape == (
        f"docker-save tarball (no RepoTags); image used, not the {ignored} beside it: it keeps the whole image config "
        "(CMD, ENTRYPOINT, HEALTHCHECK, …)"
    )
    assert plan.names == ("example/redis:7",)
    assert plan.warning == ""


@pytest.mark.parametrize("given", ["built", "built/image"])
def test_oci_build_task_with_unpack_rootfs_loads_image_tar_given_as_the_output_or_its_parent(
    tmp_path: Path, parts: ImageParts, given: str
) -> None:
    oci_build_task_dir(parts, tmp_path / "built" / "image", unpack_rootfs=True)

    plan = plan_image(ImageEntry(index=0, path=tmp_path / given, given=given, tags=("example/built:ci",)))

    assert plan.source_path == tmp_path / "built" / "image" / "image.tar"
    assert plan.warning == ""
    if given == "built/image":
        assert plan.shape.endswith(
            "image.tar used, not the rootfs/, metadata.json beside it: it keeps the whole image config (CMD, "
            "ENTRYPOINT, HEALTHCHECK, …)"
        )


@pytest.mark.parametrize("given", ["built", "built/image", "built/image/image"])
def test_oci_build_task_oci_output_loads_as_an_oci_archive_or_layout(
    tmp_path: Path, parts: ImageParts, given: str
) -> None:
    oci_build_task_dir(parts, tmp_path / "built" / "image", output_oci=True)

    plan = plan_image(ImageEntry(index=0, path=tmp_path / given, given=given, tags=("example/built:ci",)))

    assert "OCI layout" in plan.shape
    assert _stream_config(plan) == json.loads(parts.config)["config"]


def test_oci_build_task_multi_platform_output_picks_this_platform(tmp_path: Path, parts: ImageParts) -> None:
    oci_build_task_dir(parts, tmp_path / "built" / "image", platforms=[("linux", "arm64"), ("linux", "amd64")])

    plan = plan_image(ImageEntry(index=0, path=tmp_path / "built", given="built", tags=("example/built:ci",)))

    assert plan.shape.startswith("tarball with an OCI layout (the linux/amd64 image")
    assert _stream_config(plan) == json.loads(parts.config)["config"]


def test_rootfs_metadata_of_the_wrong_shape_is_a_user_error(tmp_path: Path, parts: ImageParts) -> None:
    directory = registry_image_rootfs_dir(parts, tmp_path / "rootfs-image", "example/rootfs", "ci")
    (directory / "metadata.json").write_text('{"env": "A=1"}')

    with pytest.raises(
        UserError, match=r"params.images\[0\]: rootfs-image/metadata.json: env should be a list of strings, got \"A=1\""
    ):
        plan_image(entry(directory))
    (directory / "metadata.json").write_text("{not json")
    with pytest.raises(UserError, match=r"rootfs-image/metadata.json is not valid JSON"):
        plan_image(entry(directory))


def test_a_docker_inspect_json_without_a_config_is_a_user_error(tmp_path: Path, parts: ImageParts) -> None:
    directory = docker_image_resource_dir(parts, tmp_path / "redis", "example/redis", "7", save=False)
    (directory / "docker_inspect.json").write_text("[]")

    with pytest.raises(UserError, match=r"redis/docker_inspect.json should be `docker inspect` output"):
        plan_image(entry(directory))


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar.zst"])
def test_compressed_tarballs_are_decompressed_while_streaming(tmp_path: Path, parts: ImageParts, suffix: str) -> None:
    plain = docker_save_tarball(parts, tmp_path / "app.tar", ["example/app:1"])
    expected = plain.read_bytes()
    compressed = compress(plain, suffix)

    plan = plan_image(entry(compressed))

    assert plan.compressed
    assert plan.estimated_bytes == 3 * compressed.stat().st_size
    assert _streamed(plan) == expected


def test_a_truncated_tarball_fails_at_planning_naming_the_entry(tmp_path: Path, parts: ImageParts) -> None:
    tarball = docker_save_tarball(parts, tmp_path / "app.tar", ["example/app:1"])
    cut = truncated_copy(tarball, tmp_path / "cut.tar")

    with pytest.raises(
        RuntimeFailure,
        match=r"params.images\[2\] \(cut.tar\): cut.tar is truncated inside \S+ \(\d+ of \d+ bytes present\)",
    ):
        plan_image(entry(cut, index=2))


def test_a_damaged_tarball_beside_a_rootfs_fails_and_says_why_the_rootfs_is_not_used_instead(
    tmp_path: Path, parts: ImageParts
) -> None:
    directory = docker_image_resource_dir(parts, tmp_path / "redis", "example/redis", "7")
    truncated_copy(directory / "image", tmp_path / "cut")
    os.replace(tmp_path / "cut", directory / "image")

    with pytest.raises(RuntimeFailure, match=r"params.images\[0\] \(redis\): image is truncated inside") as failure:
        plan_image(entry(directory))

    assert failure.value.diagnosis.splitlines() == [LOAD_HINT, ROOTFS_NOT_INSTEAD]


def test_a_truncated_compressed_tarball_fails_while_streaming(tmp_path: Path, parts: ImageParts) -> None:
    compressed = compress(docker_save_tarball(parts, tmp_path / "app.tar", ["example/app:1"]), ".tar.gz")
    cut = truncated_copy(compressed, tmp_path / "cut.tar.gz", keep_fraction=0.9)

    plan = plan_image(entry(cut))

    with pytest.raises(ArchiveError, match=r"cut.tar.gz is truncated: its gzip stream ends early, (inside|after) \S+"):
        _streamed(plan)


def test_files_and_directories_that_are_not_images_are_named(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello" * 200)
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "readme").write_text("x")
    with tarfile.open(tmp_path / "plain.tar", "w") as tar:
        tar.add(tmp_path / "notes.txt", "notes.txt")

    with pytest.raises(UserError, match=r"notes.txt is not an image: not a tar archive"):
        plan_image(entry(tmp_path / "notes.txt"))
    with pytest.raises(UserError, match=r"stuff is not an image: .* \(it holds: readme\)"):
        plan_image(entry(tmp_path / "stuff"))
    with pytest.raises(UserError, match=r"plain.tar is not an image: a tar without manifest.json or index.json"):
        plan_image(entry(tmp_path / "plain.tar", ("x:1",)))


def test_free_space_check_wants_about_twice_the_tarballs(tmp_path: Path, parts: ImageParts) -> None:
    plan = plan_image(entry(docker_save_tarball(parts, tmp_path / "app.tar", ["a:1"])))
    huge = ImagePlan(plan.entry, plan.shape, plan.source_path, 2**62, plan.names, plan.stream)

    check_free_space([plan], str(tmp_path))
    with pytest.raises(RuntimeFailure, match="is out of space"):
        check_free_space([huge], str(tmp_path))
