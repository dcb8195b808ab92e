"""Every image shape Concourse steps leave, loaded by real puts and used by compose under the expected names.

Puts are expensive, so one put loads all the good shapes and runs one compose service per
expected name; each service prints its /shape marker, uid and environment. The failure
cases each stop early (most before the daemon starts).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from harness import run_script
from image_fixtures import (
    ImageParts,
    build_marked_image,
    compress,
    corrupt_gzip_layer_copy,
    docker_save_tarball,
    oci_archive_tarball,
    parts_from_docker,
    random_image,
    truncated_copy,
)
from producers import (
    docker_image_resource_dir,
    oci_build_task_dir,
    oci_layout_dir,
    registry_image_oci_dir,
    registry_image_rootfs_dir,
)

PRINT = "echo shape=$$(cat /shape) uid=$$(id -u) greeting=$${GREETING:-none} pwd=$$(pwd)"
#: service → (image name the compose file uses, /shape marker, uid, greeting)
EXPECTED = {
    "redis": ("redis:7", "registry-oci", "0", "none"),
    "redis-pinned": ("example/redis:pinned", "registry-oci", "0", "none"),
    "redis-extra": ("example/redis:extra", "registry-oci", "0", "none"),
    "layout": ("example/layout:ci", "oci-layout", "0", "none"),
    "rootfs": ("example/rootfs:ci", "rootfs", "1234", "hello from metadata"),
    "saved": ("example/saved:ci", "docker-image-save", "0", "none"),
    "built": ("example/built:ci", "oci-build-task", "0", "none"),
    "gz": ("example/gz:ci", "plain-gz", "0", "none"),
    "tgz": ("example/tgz:ci", "plain-tgz", "0", "none"),
    "zst": ("example/zst:ci", "plain-zst", "0", "none"),
    "oci-archive": ("example/oci:ci", "oci-archive", "0", "none"),
    "oci-archive-gz": ("example/oci-gz:ci", "oci-archive-gz", "0", "none"),
}


def _parts(name: str, work: Path) -> ImageParts:
    return parts_from_docker(build_marked_image(name, name), work / name)


def _compose_file(put: Path, services: dict[str, str], command: str | None = PRINT) -> None:
    """A compose file (JSON is YAML) with one service per image name."""
    document = {
        "services": {
            name: {"image": image, **({"command": ["sh", "-c", command]} if command else {})}
            for name, image in services.items()
        }
    }
    (put / "src").mkdir(exist_ok=True)
    (put / "src" / "docker-compose.yml").write_text(json.dumps(document, indent=2))


def _put(put: Path, images: list, command: list[str] | None = None) -> dict:
    return {
        "source": {},
        "params": {"compose_files": ["src/docker-compose.yml"], "images": images, "command": command or ["up"]},
    }


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, image: str) -> Path:
    return tmp_path_factory.mktemp("image-shapes")


@pytest.fixture(scope="module")
def shapes_put(work: Path) -> tuple[Path, list]:
    """A put directory with every good shape, and the `params.images` that loads them."""
    put = work / "put"
    registry_image_oci_dir(
        _parts("registry-oci", work), put / "redis-image", "redis", "7", "index.docker.io/library/redis:7"
    )
    oci_layout_dir(_parts("oci-layout", work), put / "layout-image", "example/layout", "ci")
    rootfs = parts_from_docker(
        build_marked_image("rootfs", "rootfs", 'ENV GREETING="hello from metadata"\nUSER app'), work / "rootfs"
    )
    registry_image_rootfs_dir(rootfs, put / "rootfs-image", "example/rootfs", "ci", release="v1.14.0")
    docker_image_resource_dir(_parts("docker-image-save", work), put / "saved-image", "example/saved", "ci")
    oci_build_task_dir(_parts("oci-build-task", work), put / "built" / "image")
    files = put / "files"
    compress(docker_save_tarball(_parts("plain-gz", work), files / "gz.tar", ["example/gz:ci"]), ".tar.gz")
    compress(docker_save_tarball(_parts("plain-tgz", work), files / "tgz.tar", []), ".tgz")
    compress(docker_save_tarball(_parts("plain-zst", work), files / "zst.tar", ["example/zst:ci"]), ".tar.zst")
    oci_archive_tarball(_parts("oci-archive", work), files / "oci.tar", with_docker_manifest=False)
    # a compressed OCI-only archive: the classic store refuses it, so it is inflated and converted
    compress(
        oci_archive_tarball(_parts("oci-archive-gz", work), files / "oci-gz.tar", with_docker_manifest=False), ".tar.gz"
    )
    _compose_file(put, {service: expected[0] for service, expected in EXPECTED.items()})
    images = [
        {"path": "redis-image", "tag": ["example/redis:pinned", "example/redis:extra"]},
        "layout-image",
        "rootfs-image",
        "saved-image",
        {"path": "built", "tag": "example/built:ci"},
        "files/gz.tar.gz",
        {"path": "files/tgz.tgz", "tag": "example/tgz:ci"},
        "files/zst.tar.zst",
        {"path": "files/oci.tar", "tag": "example/oci:ci"},
        {"path": "files/oci-gz.tar.gz", "tag": "example/oci-gz:ci"},
    ]
    return put, images


def test_every_shape_loads_and_runs_under_the_names_compose_uses(
    image: str, shapes_put: tuple[Path, list], runtime: str
) -> None:
    put, images = shapes_put

    outcome = run_script(image, "out", _put(put, images), put_dir=str(put), runtime=runtime)

    assert outcome.exit_code == 0, outcome.stderr
    for service, (name, marker, uid, greeting) in EXPECTED.items():
        line = re.search(rf"^{re.escape(service)}-1\s+\| (shape=.*)$", outcome.stderr, re.MULTILINE)
        assert line, f"no output from {service} ({name})\n{outcome.stderr}"
        assert line.group(1).startswith(f"shape={marker} uid={uid} greeting={greeting} "), (service, line.group(1))
    loaded = outcome.metadata()["images"]
    for name, *_ in EXPECTED.values():
        assert name in loaded
    assert "example/saved:ci" in loaded and "redis:7" in loaded
    # the build log shows how each image got in, and its names: written into the store directly
    # (docker save with one image, OCI layouts and archives) or streamed into docker load (the rest)
    for number, given in (
        (0, "redis-image"),
        (1, "layout-image"),
        (2, "rootfs-image"),
        (3, "saved-image"),
        (4, "built"),
        (8, "files/oci.tar"),
    ):
        written = (
            rf"params\.images\[{number}\] \({re.escape(given)}\): \d+ layers?, [0-9.]+ MiB,"
            r" written into the overlay2 store in [0-9.]+s"
        )
        assert re.search(written, outcome.stderr), given
    assert re.search(r"params\.images\[1\] \(layout-image\): .* → example/layout:ci", outcome.stderr)
    for number, given in ((5, "files/gz.tar.gz"), (7, "files/zst.tar.zst"), (9, "files/oci-gz.tar.gz")):
        assert re.search(
            rf"params\.images\[{number}\] \({re.escape(given)}\): [0-9.]+ MiB streamed in [0-9.]+s", outcome.stderr
        ), given
    assert outcome.leftovers == []


def test_a_truncated_tarball_fails_before_anything_is_loaded(image: str, work: Path) -> None:
    put = work / "truncated-put"
    good = docker_save_tarball(_parts("plain-gz", work), put / "good.tar", ["example/good:ci"])
    truncated_copy(good, put / "bad.tar")
    _compose_file(put, {"good": "example/good:ci"})

    outcome = run_script(
        image, "out", _put(put, ["good.tar", {"path": "bad.tar", "tag": "example/bad:ci"}]), put_dir=str(put)
    )

    assert outcome.exit_code == 1
    assert "params.images[1] (bad.tar): bad.tar is truncated inside" in outcome.stderr
    assert "Starting the Docker daemon" not in outcome.stderr
    assert outcome.stdout == ""
    assert outcome.leftovers == []


def test_a_truncated_compressed_tarball_fails_the_load_and_leaves_nothing_running(image: str, work: Path) -> None:
    put = work / "truncated-gz-put"
    good = docker_save_tarball(_parts("plain-gz", work), put / "good.tar", ["example/good:ci"])
    truncated_copy(
        compress(docker_save_tarball(_parts("plain-tgz", work), put / "bad.tar", ["example/bad:ci"]), ".tar.gz"),
        put / "bad-cut.tar.gz",
    )
    _compose_file(put, {"good": "example/good:ci", "bad": "example/bad:ci"})

    outcome = run_script(image, "out", _put(put, [good.name, "bad-cut.tar.gz"]), put_dir=str(put))

    assert outcome.exit_code == 1
    assert re.search(
        r"error: params\.images\[1\] \(bad-cut\.tar\.gz\): bad-cut\.tar\.gz is truncated", outcome.stderr
    ), outcome.stderr
    assert "Running docker compose" not in outcome.stderr
    assert outcome.stdout == ""
    assert outcome.leftovers == []


def test_a_layer_the_daemon_rejects_fails_the_put_with_the_daemons_reason(image: str, work: Path) -> None:
    put = work / "corrupt-layer-put"
    registry_image_oci_dir(
        _parts("registry-oci", work), work / "intact", "redis", "7", "index.docker.io/library/redis:7"
    )
    (put / "redis-image").mkdir(parents=True)
    corrupt_gzip_layer_copy(work / "intact" / "image.tar", put / "redis-image" / "image.tar")
    _compose_file(put, {"redis": "redis:7"})

    outcome = run_script(image, "out", _put(put, ["redis-image"]), put_dir=str(put))

    assert outcome.exit_code == 1
    assert "error: params.images[0] (redis-image): docker load failed: " in outcome.stderr, outcome.stderr
    assert "Running docker compose" not in outcome.stderr
    assert outcome.leftovers == []


def test_an_index_without_the_daemons_platform_names_the_platforms_it_offers(image: str, work: Path) -> None:
    put = work / "platform-put"
    oci_layout_dir(_parts("oci-layout", work), put / "s390x-image", "example/s390x", "ci", platform=("linux", "s390x"))
    _compose_file(put, {"app": "example/s390x:ci"})

    outcome = run_script(image, "out", _put(put, ["s390x-image"]), put_dir=str(put))

    assert outcome.exit_code == 2
    assert (
        "params.images[0]: s390x-image: oci/ has no image for the daemon's platform linux/amd64; it offers: "
        "linux/arm64/v8, linux/s390x" in outcome.stderr
    )
    assert outcome.leftovers == []


def test_an_unnamed_oci_build_task_output_asks_for_a_tag(image: str, work: Path) -> None:
    put = work / "unnamed-put"
    oci_build_task_dir(_parts("oci-build-task", work), put / "image")
    _compose_file(put, {"app": "example/built:ci"})

    outcome = run_script(image, "out", _put(put, ["image"]), put_dir=str(put))

    assert outcome.exit_code == 2
    assert "params.images[0]: image/image.tar carries no image name" in outcome.stderr
    assert (
        "hint: say which name the compose file uses, e.g. images: [{path: image, tag: myorg/app:latest}]"
        in outcome.stderr
    )


def test_an_invalid_tag_names_the_parameter(image: str, work: Path) -> None:
    put = work / "bad-tag-put"
    docker_save_tarball(_parts("plain-gz", work), put / "app.tar", [])
    _compose_file(put, {"app": "example/app:ci"})

    outcome = run_script(
        image, "out", _put(put, [{"path": "app.tar", "tag": ["example/app:ci", "Bad Name!"]}]), put_dir=str(put)
    )

    assert outcome.exit_code == 2
    assert "params.images[0].tag[1]: 'Bad Name!' is not a valid image reference" in outcome.stderr


def test_an_abort_during_loading_stops_in_flight_uploads_within_the_grace(image: str, work: Path, runtime: str) -> None:
    put = work / f"abort-put-{runtime}"
    for name in ("one", "two", "three"):
        docker_save_tarball(
            random_image(work / f"random-{name}", [256 << 20] * 2), put / f"{name}.tar", [f"example/{name}:ci"]
        )
    _compose_file(put, {"one": "example/one:ci"})
    request = _put(put, ["one.tar", "two.tar", "three.tar"])
    request["source"] = {"dockerd": {"direct_load": False}}  # the uploads into docker load are what is aborted

    outcome = run_script(image, "out", request, put_dir=str(put), sigterm_when="==> Loading 3 images", runtime=runtime)

    assert outcome.exit_code == 143, outcome.stderr
    assert "Loading 3 images" in outcome.stderr and "Running docker compose" not in outcome.stderr, outcome.stderr
    assert "streamed in" not in outcome.stderr, "the signal should come while the images are being uploaded"
    assert outcome.signal_to_exit is not None and outcome.signal_to_exit < 10
    assert outcome.leftovers == []
