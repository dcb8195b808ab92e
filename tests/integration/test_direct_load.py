"""Images written straight into the overlay2 store (images/layerstore.py) look, from inside a container,
exactly as `docker load` makes them, whatever tricky thing their layers hold.

One image (tests/direct_fixtures.py: whiteouts, opaque dirs, hardlinks, symlinks, setuid,
capabilities, xattrs, FIFOs, devices, odd owners, modes and mtimes) is laid out in every
shape that takes the direct path: docker-image `save: true`, registry-image `format: oci`
(gzip layers), `format: oci-layout`, and the default format (its filesystem in `rootfs/`).
Each shape's first layer carries its own marker, so no layer is shared between shapes and
every shape really is extracted. One put loads them directly, another with
`source.dockerd.direct_load: false`; in both, one service per shape prints a listing of its
filesystem, and one more asks dockerd for each image's ID and RootFS.Layers. Listings, IDs
and layers must be identical between the two puts.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path

import pytest
from direct_fixtures import (
    LISTING,
    LONG_FILE,
    OLD_MTIME,
    UNICODE_NAME,
    build_tricky_image,
    comparable,
    crafted_layer,
    entries,
    inspect_service,
    inspected,
    listing_of,
    rootfs_from_image,
    with_marker,
    with_mismatched_top_layer,
    with_top_layer,
    xattrs,
)
from harness import RunOutcome, run_script
from image_fixtures import (
    ImageParts,
    build_marked_image,
    corrupt_gzip_layer_copy,
    docker_save_tarball,
    parts_from_docker,
)
from producers import docker_image_resource_dir, oci_layout_dir, registry_image_oci_dir

WRITTEN = "written into the overlay2 store"
NOT_DIRECT = {"dockerd": {"direct_load": False}}
#: service → (image path in the put, image name)
SHAPES = {
    "saved": ("saved-image", "example/direct-saved:ci"),
    "registry": ("registry-image", "example/direct-registry:ci"),
    "layout": ("layout-image", "example/direct-layout:ci"),
}
#: Every shape the direct path takes: the three above, and a rootfs/ of the tricky image (one layer).
ALL_SHAPES = {**SHAPES, "rootfs": ("rootfs-image", "example/direct-rootfs:ci")}
MODES = {"direct": {}, "docker-load": NOT_DIRECT}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: 2003-03-03 and 2010-01-01 (UTC): the mtimes the tricky image's directories get from their last layer.
T2003, T2010 = 1046649600, 1262304000


def _compose_file(put: Path, services: dict[str, dict]) -> None:
    (put / "src").mkdir(parents=True, exist_ok=True)
    (put / "src" / "docker-compose.yml").write_text(json.dumps({"services": services}, indent=2))


def _request(source: dict, images: list, command: list[str] | None = None) -> dict:
    return {
        "source": source,
        "params": {"compose_files": ["src/docker-compose.yml"], "images": images, "command": command or ["up"]},
    }


def _written(index: int, path: str, layers: int) -> str:
    """The log line that says params.images[index] was written into the store (a regex)."""
    return rf"params\.images\[{index}\] \({re.escape(path)}\): {layers} layers?\b[^\n]*{WRITTEN}"


def _error_line(log: str) -> str:
    """The put's `error:` line, without colours (the lines around it may differ between modes)."""
    line = next((line for line in ANSI.sub("", log).splitlines() if line.startswith("error: ")), "")
    assert line, f"no error line in:\n{log}"
    return line


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, image: str) -> Path:
    return tmp_path_factory.mktemp("direct-load")


@pytest.fixture(scope="module")
def tricky(work: Path) -> ImageParts:
    """The tricky image: its built layers plus the crafted one on top."""
    parts = parts_from_docker(build_tricky_image(), work / "tricky")
    return with_top_layer(parts, crafted_layer(work / "tricky" / "crafted.tar"))


@pytest.fixture(scope="module")
def shapes_put(work: Path, tricky: ImageParts) -> Path:
    put = work / "shapes-put"
    repository, tag = SHAPES["saved"][1].split(":")
    docker_image_resource_dir(with_marker(tricky, "saved", work / "m-saved"), put / "saved-image", repository, tag)
    repository, tag = SHAPES["registry"][1].split(":")
    registry_image_oci_dir(
        with_marker(tricky, "registry", work / "m-registry"),
        put / "registry-image",
        repository,
        tag,
        f"index.docker.io/{repository}:{tag}",
    )
    repository, tag = SHAPES["layout"][1].split(":")
    oci_layout_dir(with_marker(tricky, "layout", work / "m-layout"), put / "layout-image", repository, tag)
    repository, tag = ALL_SHAPES["rootfs"][1].split(":")
    rootfs_from_image(
        build_tricky_image(),
        put / "rootfs-image",
        repository,
        tag,
        {"env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "user": "0"},
    )
    services = {
        service: {"image": name, "command": ["sh", "-c", LISTING]} for service, (_path, name) in ALL_SHAPES.items()
    }
    services["inspect"] = inspect_service(SHAPES["saved"][1], [name for _path, name in ALL_SHAPES.values()])
    _compose_file(put, services)
    return put


@pytest.fixture(scope="module")
def runs(image: str, shapes_put: Path) -> dict[str, RunOutcome]:
    """The same put twice: images written directly, then every image through docker load."""
    images = [path for path, _name in ALL_SHAPES.values()]
    return {
        mode: run_script(image, "out", _request(source, images), put_dir=str(shapes_put))
        for mode, source in MODES.items()
    }


def test_the_direct_put_writes_every_shape_and_the_other_loads_them(runs: dict[str, RunOutcome]) -> None:
    for mode, outcome in runs.items():
        assert outcome.exit_code == 0, f"{mode}:\n{outcome.stderr[-5000:]}"
        assert outcome.leftovers == [], mode
        loaded = outcome.metadata()["images"]
        assert all(name in loaded for _path, name in ALL_SHAPES.values()), loaded
    for index, (path, _name) in enumerate(ALL_SHAPES.values()):
        assert re.search(_written(index, path, 1 if path == "rootfs-image" else 5), runs["direct"].stderr), runs[
            "direct"
        ].stderr[-5000:]
        assert re.search(
            rf"params\.images\[{index}\] \({re.escape(path)}\): [0-9.]+ MiB streamed in", runs["docker-load"].stderr
        )
    assert (
        "not written into the store directly" not in runs["direct"].stderr
        and "direct writes given up" not in runs["direct"].stderr
    )
    assert WRITTEN not in runs["docker-load"].stderr


@pytest.mark.parametrize("service", ALL_SHAPES)
def test_the_direct_write_gives_the_image_id_and_layers_docker_load_gives(
    runs: dict[str, RunOutcome], service: str
) -> None:
    name = ALL_SHAPES[service][1]
    direct, loaded = (inspected(runs[mode].stderr).get(name) for mode in MODES)
    assert loaded is not None and loaded["Layers"], runs["docker-load"].stderr[-5000:]
    assert direct == loaded


@pytest.mark.parametrize("service", ALL_SHAPES)
def test_the_direct_write_gives_the_filesystem_docker_load_gives(runs: dict[str, RunOutcome], service: str) -> None:
    direct, loaded = (comparable(listing_of(runs[mode].stderr, service)) for mode in MODES)
    differences = [
        line for line in difflib.unified_diff(loaded, direct, "docker load", "direct write", n=0, lineterm="")
    ]
    assert direct == loaded, "\n".join(differences)


def test_the_three_shapes_give_the_same_filesystem(runs: dict[str, RunOutcome]) -> None:
    listings = {service: comparable(listing_of(runs["direct"].stderr, service)) for service in SHAPES}
    listings = {
        service: [line for line in listing if not line.startswith("F /shape-marker|")]
        for service, listing in listings.items()
    }
    assert listings["registry"] == listings["saved"], "\n".join(
        difflib.unified_diff(listings["saved"], listings["registry"], n=0, lineterm="")
    )
    assert listings["layout"] == listings["saved"], "\n".join(
        difflib.unified_diff(listings["saved"], listings["layout"], n=0, lineterm="")
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("service", SHAPES)
def test_the_tricky_contents_come_out_as_built(runs: dict[str, RunOutcome], mode: str, service: str) -> None:
    listing = listing_of(runs[mode].stderr, service)
    found = entries(listing)
    attrs = xattrs(listing)

    def field(path: str, name: str) -> str:
        assert path in found, f"{path} is missing ({mode}, {service})"
        return found[path][["type", "mode", "uid", "gid", "size", "links", "target", "mtime"].index(name)]

    def children(directory: str) -> list[str]:
        return sorted(path for path in found if path.startswith(directory + "/"))

    assert field("/shape-marker", "type") == "f"
    # whiteouts: a file, a file in a kept dir, whole directories, a crafted `.wh.` file and dir
    for gone in (
        "/tricky/gone.txt",
        "/tricky/keep/gone",
        "/tricky/deleted-dir",
        "/tricky/crafted-gone",
        "/tricky/deep/sub",
    ):
        assert gone not in found and not children(gone), gone
    assert children("/tricky/keep") == ["/tricky/keep/stays"]
    assert children("/tricky/deep") == ["/tricky/deep/keep"]
    assert not [path for path in found if "/.wh." in path]
    # opaque directories (made by overlay on rm -rf + mkdir, and by a crafted marker)
    assert children("/tricky/opaque") == ["/tricky/opaque/new"]
    assert children("/tricky/crafted-opaque") == ["/tricky/crafted-opaque/new"]
    assert field("/tricky/crafted-opaque", "mode") == "750"
    # type changes
    assert field("/tricky/was-dir", "type") == "f" and not children("/tricky/was-dir")
    assert field("/tricky/was-file", "type") == "d" and children("/tricky/was-file") == ["/tricky/was-file/inner"]
    # hardlinks: within a layer, by copy-up, to an xattr'd file
    for path in ("/tricky/hl/a", "/tricky/hl/b", "/tricky/hl/c"):
        assert field(path, "links") == "3", path
    for path in ("/tricky/lower-file", "/tricky/lower-hardlink", "/tricky/xattr.txt", "/tricky/crafted-link"):
        assert field(path, "links") == "2", path
    # symlinks
    assert (field("/tricky/rel-link", "type"), field("/tricky/rel-link", "target")) == ("l", "target")
    assert field("/tricky/rel-up-link", "target") == "../tricky/target"
    assert field("/tricky/abs-link", "target") == "/etc/passwd"
    assert field("/tricky/dangling-link", "target") == "/nonexistent/nowhere"
    assert field("/tricky/dir-link", "target") == "/usr/share"
    assert field("/tricky/long-link", "target") == "/" + LONG_FILE and field("/" + LONG_FILE, "type") == "f"
    # special bits and modes
    expected_modes = {
        "suid": "4755",
        "sgid": "2755",
        "sticky": "1777",
        "setgid-dir": "2775",
        "private": "600",
        "private-dir": "700",
        "nomode": "0",
    }
    for name, mode_bits in expected_modes.items():
        assert field(f"/tricky/{name}", "mode") == mode_bits, name
    # owners without a passwd entry, and beyond the ustar range
    for path in ("/tricky/owned", "/tricky/owned-dir", "/tricky/owned-link", "/tricky/target"):
        assert (field(path, "uid"), field(path, "gid")) == ("1234", "5678"), path
    assert field("/tricky/owned", "mode") == "640" and field("/tricky/owned-dir", "mode") == "750"
    assert (field("/tricky/big-uid", "uid"), field("/tricky/big-uid", "gid")) == ("3000000", "3000001")
    # file capability and user xattrs
    assert "C /tricky/capbin cap_net_raw=ep" in listing, [line for line in listing if line.startswith("C ")]
    assert "security.capability" in attrs.get("/tricky/capbin", {})
    assert attrs.get("/tricky/xattr.txt", {}).get("user.greeting") == '"hello"', attrs
    assert attrs.get("/tricky/xattr.txt", {}).get("user.spaced") == '"a b c"', attrs
    assert attrs.get("/tricky/xattr-dir", {}).get("user.dir") == '"yes"', attrs
    # other file types
    assert field("/tricky/fifo", "type") == "p"
    assert field("/tricky/devnull", "type") == "c" and field("/tricky/devnull", "mode") == "666"
    assert field("/tricky/empty", "type") == "d" and not children("/tricky/empty")
    assert field(f"/tricky/{UNICODE_NAME}", "type") == "f"
    assert field("/tricky/implicit", "type") == "d" and children("/tricky/implicit") == ["/tricky/implicit/child.txt"]
    # sizes and contents
    assert field("/tricky/big.bin", "size") == str(20 * 2**20)
    assert "S " + hashlib.sha256(b"new\n").hexdigest() + "  /tricky/opaque/new" in listing
    assert any(line.endswith("  /tricky/modified.txt") for line in listing if line.startswith("S "))
    # mtimes: files, symlinks, and directories whose layer also holds whiteouts
    for path in ("/tricky/old.txt", "/tricky/old-link", "/tricky/old-dir"):
        assert float(field(path, "mtime")) == OLD_MTIME, path
    assert float(field("/tricky/fraction.txt", "mtime")) == 1000000000.5
    expected_dir_mtimes = {
        "/tricky/keep": T2003,
        "/tricky": T2010,
        "/tricky/deep": T2010,
        "/tricky/crafted-opaque": T2010,
    }
    wrong = {
        path: field(path, "mtime") for path, when in expected_dir_mtimes.items() if float(field(path, "mtime")) != when
    }
    assert not wrong, f"directory mtimes not kept ({mode}, {service}): {wrong}"


def test_a_layer_that_does_not_match_its_diff_id_fails_the_put_as_docker_load_does(image: str, work: Path) -> None:
    put = work / "mismatch-put"
    good = parts_from_docker(build_marked_image("direct-good", "direct-good"), work / "direct-good")
    bad = parts_from_docker(build_marked_image("direct-bad", "direct-bad"), work / "direct-bad")
    docker_save_tarball(good, put / "good.tar", ["example/good:ci"])
    docker_save_tarball(with_mismatched_top_layer(bad, work / "mismatch"), put / "bad.tar", ["example/bad:ci"])
    _compose_file(
        put,
        {
            "good": {"image": "example/good:ci", "command": ["cat", "/shape"]},
            "bad": {"image": "example/bad:ci", "command": ["cat", "/shape"]},
        },
    )
    images = ["good.tar", "bad.tar"]

    outcomes = {
        mode: run_script(image, "out", _request(source, images), put_dir=str(put)) for mode, source in MODES.items()
    }

    direct = outcomes["direct"]
    assert direct.exit_code == 1, direct.stderr
    assert re.search(_written(0, "good.tar", 2), direct.stderr), direct.stderr
    not_direct = (
        r"params\.images\[1\] \(bad\.tar\): not written into the store directly "
        r"\(layer [0-9a-f]{12}: its content does not match the diff_id"
    )
    assert re.search(not_direct, direct.stderr), direct.stderr
    assert _error_line(direct.stderr).startswith(
        "error: params.images[1] (bad.tar): docker load failed: invalid diffID for layer 1: expected "
    ), direct.stderr
    assert _error_line(direct.stderr) == _error_line(outcomes["docker-load"].stderr), (
        _error_line(direct.stderr),
        _error_line(outcomes["docker-load"].stderr),
    )
    for outcome in outcomes.values():
        assert outcome.exit_code == 1 and outcome.stdout == ""
        assert "Running docker compose" not in outcome.stderr
        assert outcome.leftovers == []


def test_a_corrupt_gzip_layer_fails_the_put_as_docker_load_does(image: str, work: Path) -> None:
    put = work / "corrupt-put"
    parts = parts_from_docker(build_marked_image("direct-corrupt", "direct-corrupt"), work / "direct-corrupt")
    registry_image_oci_dir(parts, work / "intact", "example/corrupt", "ci", "index.docker.io/example/corrupt:ci")
    (put / "corrupt-image").mkdir(parents=True)
    corrupt_gzip_layer_copy(work / "intact" / "image.tar", put / "corrupt-image" / "image.tar")
    for name in ("repository", "tag"):
        (put / "corrupt-image" / name).write_text((work / "intact" / name).read_text())
    _compose_file(put, {"app": {"image": "example/corrupt:ci", "command": ["cat", "/shape"]}})

    outcomes = {
        mode: run_script(image, "out", _request(source, ["corrupt-image"]), put_dir=str(put))
        for mode, source in MODES.items()
    }

    direct = outcomes["direct"]
    assert "params.images[0] (corrupt-image): not written into the store directly (layer " in direct.stderr, (
        direct.stderr
    )
    assert WRITTEN not in direct.stderr
    assert _error_line(direct.stderr).startswith("error: params.images[0] (corrupt-image): docker load failed: "), (
        direct.stderr
    )
    assert _error_line(direct.stderr) == _error_line(outcomes["docker-load"].stderr), (
        _error_line(direct.stderr),
        _error_line(outcomes["docker-load"].stderr),
    )
    for outcome in outcomes.values():
        assert outcome.exit_code == 1 and outcome.stdout == ""
        assert "Running docker compose" not in outcome.stderr
        assert outcome.leftovers == []


BUILD_DOCKERFILE = """\
FROM example/direct-saved:ci
RUN cat /tricky/target /tricky/opaque/new && echo built-on-top > /tricky/built && rm /tricky/target /tricky/keep/stays
CMD ["sh", "-c", "echo from-build $(cat /tricky/built) opaque=$(ls /tricky/opaque) keep=$(ls -A /tricky/keep)! \
links=$(stat -c %h /tricky/hl/a) $(getcap /tricky/capbin)"]
"""


def test_a_directly_written_image_serves_as_a_build_base(image: str, work: Path, tricky: ImageParts) -> None:
    put = work / "build-put"
    repository, tag = SHAPES["saved"][1].split(":")
    docker_image_resource_dir(with_marker(tricky, "build", work / "m-build"), put / "saved-image", repository, tag)
    (put / "src" / "app").mkdir(parents=True)
    (put / "src" / "app" / "Dockerfile").write_text(BUILD_DOCKERFILE)
    _compose_file(put, {"app": {"build": {"context": "app"}, "image": "example/built-on-direct:ci"}})

    outcome = run_script(image, "out", _request({}, ["saved-image"], ["run", "--rm", "app"]), put_dir=str(put))

    assert re.search(_written(0, "saved-image", 5), outcome.stderr), outcome.stderr[-5000:]
    assert outcome.exit_code == 0, outcome.stderr[-5000:]
    assert "from-build built-on-top opaque=new keep=! links=3 /tricky/capbin cap_net_raw=ep" in outcome.stderr, (
        outcome.stderr[-5000:]
    )
    assert outcome.leftovers == []
