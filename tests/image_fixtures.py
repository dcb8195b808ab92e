"""Image artifacts in every shape that Concourse steps leave (docs/image-loading.md), made locally.

An `ImageParts` is an image taken apart: its config and its uncompressed layer tars. It
comes from `docker save` of a locally built image (integration tests, bench) or from
`synthetic_image` (unit tests, no Docker). The writers below lay the parts out as each
producer does:

- the directories Concourse steps leave: `producers.py`, as each producer's source writes them;
- `docker_save_tarball`, `oci_archive_tarball` and `compress`: plain `.tar`, `.tar.gz`, `.tgz`, `.tar.zst`;
- `truncated_copy`, `corrupt_copy`, `corrupt_gzip_layer_copy`: broken tarballs;
- `random_image`: incompressible layers of any size, for the benchmark and big-load tests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURE_REPOSITORY = "compose-env-fixture"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"

#: A few megabytes: dash, cat, env, id, sleep and their libraries, plus a user `app` (uid 1234).
BASE_DOCKERFILE = r"""
FROM debian:trixie-slim AS full
RUN mkdir -p /out/bin /out/etc /out/tmp /out/home/app \
 && for b in /bin/dash /usr/bin/env /usr/bin/id /bin/cat /bin/sleep /bin/pwd; do \
      cp "$b" /out/bin/; \
      for lib in $(ldd "$b" | grep -o '/[^ ]*'); do cp --parents -L "$lib" /out; done; \
    done \
 && ln -s dash /out/bin/sh \
 && printf 'root:x:0:0::/root:/bin/sh\napp:x:1234:1234::/home/app:/bin/sh\n' > /out/etc/passwd \
 && printf 'root:x:0:\napp:x:1234:\n' > /out/etc/group \
 && chown 1234:1234 /out/home/app && chmod 1777 /out/tmp
FROM scratch
COPY --from=full /out/ /
ENV PATH=/bin
"""


@dataclass(frozen=True)
class ImageParts:
    """One image taken apart: config JSON and uncompressed layer tars (files on disk)."""

    config: bytes
    layers: tuple[Path, ...]

    @property
    def config_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.config).hexdigest()

    @property
    def image_id(self) -> str:
        return self.config_digest


# ---------------------------------------------------------------- sources


def docker(*args: str, input: bytes | None = None) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, input=input).stdout.decode().strip()


def build_base_image() -> str:
    """The small base every fixture image starts from (cached after the first build)."""
    tag = f"{FIXTURE_REPOSITORY}/base:latest"
    docker("build", "-q", "-t", tag, "-", input=BASE_DOCKERFILE.encode())
    return tag


def build_marked_image(name: str, marker: str, extra: str = "") -> str:
    """A distinct image `compose-env-fixture/<name>:latest` whose /shape file holds `marker`."""
    base = build_base_image()
    tag = f"{FIXTURE_REPOSITORY}/{name}:latest"
    docker("build", "-q", "-t", tag, "-", input=f"FROM {base}\nRUN echo {marker} > /shape\n{extra}\n".encode())
    return tag


def parts_from_docker(reference: str, workdir: Path) -> ImageParts:
    """`docker save` an image and take it apart (works with legacy and OCI-style saves)."""
    workdir.mkdir(parents=True, exist_ok=True)
    archive = workdir / "saved.tar"
    docker("save", "-o", str(archive), reference)
    parts = parts_from_docker_save(archive, workdir / "parts")
    archive.unlink()
    return parts


def parts_from_docker_save(archive: Path, workdir: Path) -> ImageParts:
    workdir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        manifest = json.load(_member(tar, "manifest.json"))[0]
        config = _member(tar, manifest["Config"]).read()
        layers = []
        for index, name in enumerate(manifest["Layers"]):
            target = workdir / f"layer{index}.tar"
            with _member(tar, name) as source, open(target, "wb") as sink:
                raw = source.read(2)
                sink.write(gzip.decompress(raw + source.read()) if raw == b"\x1f\x8b" else raw + source.read())
            layers.append(target)
    return ImageParts(config, tuple(layers))


def _member(tar: tarfile.TarFile, name: str) -> io.BufferedReader:
    handle = tar.extractfile(name)
    assert handle is not None, name
    return handle  # type: ignore[return-value]


def synthetic_image(
    workdir: Path, files: dict[str, bytes], config: dict[str, Any] | None = None, architecture: str = "amd64"
) -> ImageParts:
    """A one-layer image without Docker, for unit tests."""
    workdir.mkdir(parents=True, exist_ok=True)
    layer = workdir / "layer.tar"
    with tarfile.open(layer, "w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    diff_id = "sha256:" + _file_sha256(layer)
    document = {
        "architecture": architecture,
        "os": "linux",
        "config": config or {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    return ImageParts(json.dumps(document).encode(), (layer,))


def random_image(workdir: Path, layer_sizes: Sequence[int]) -> ImageParts:
    """An image of incompressible layers (one random file each), written in chunks: for benchmarks."""
    workdir.mkdir(parents=True, exist_ok=True)
    layers = []
    for index, size in enumerate(layer_sizes):
        layer = workdir / f"layer{index}.tar"
        with open(layer, "wb") as sink:
            info = tarfile.TarInfo(f"data/blob{index}.bin")
            info.size = size
            sink.write(info.tobuf(format=tarfile.PAX_FORMAT))
            for offset in range(0, size, 1 << 20):
                sink.write(os.urandom(min(1 << 20, size - offset)))
            sink.write(b"\0" * (-size % tarfile.BLOCKSIZE) + b"\0" * 2 * tarfile.BLOCKSIZE)
        layers.append(layer)
    diff_ids = ["sha256:" + _file_sha256(layer) for layer in layers]
    document = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    return ImageParts(json.dumps(document).encode(), tuple(layers))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- tar writing


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def add_file(tar: tarfile.TarFile, name: str, path: Path) -> None:
    info = tarfile.TarInfo(name)
    info.size = path.stat().st_size
    info.mode = 0o644
    with open(path, "rb") as handle:
        tar.addfile(info, handle)


def gzip_layer(layer: Path, workdir: Path) -> tuple[Path, str]:
    """The gzip of a layer on disk and its digest (`sha256:…` of the compressed bytes)."""
    target = workdir / (layer.name + ".gz")
    with (
        open(layer, "rb") as source,
        open(target, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=1) as sink,
    ):
        shutil.copyfileobj(source, sink, 1 << 20)
    return target, "sha256:" + _file_sha256(target)


def docker_manifest(config_name: str, layer_names: Sequence[str], repo_tags: Sequence[str] | None) -> bytes:
    return json.dumps(
        [
            {
                "Config": config_name,
                "RepoTags": list(repo_tags) if repo_tags is not None else None,
                "Layers": list(layer_names),
            }
        ]
    ).encode()


def write_name_files(directory: Path, repository: str, tag: str) -> None:
    (directory / "repository").write_text(repository + "\n")
    (directory / "tag").write_text(tag + "\n")


# ---------------------------------------------------------------- shapes


def docker_save_tarball(parts: ImageParts, target: Path, repo_tags: Sequence[str] | None = ()) -> Path:
    """A classic `docker save` archive as moby's `image/tarexport/save.go` (v26.1) lays it out, reduced to what its
    `load.go` reads: `<hex>/layer.tar`, `<config hex>.json`, `manifest.json` (the per-layer `json` and `VERSION`
    files, which load ignores, are left out). Where a real save matters, tests run `docker save` itself
    (test_producers.py, parts_from_docker)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    config_name = parts.config_digest.split(":")[1] + ".json"
    layer_names = [f"{_file_sha256(layer)}/layer.tar" for layer in parts.layers]
    with tarfile.open(target, "w") as tar:
        for name, layer in zip(layer_names, parts.layers, strict=True):
            add_file(tar, name, layer)
        add_bytes(tar, config_name, parts.config)
        add_bytes(tar, "manifest.json", docker_manifest(config_name, layer_names, repo_tags))
    return target


#: How a registry's index describes an arm64 image (Docker Hub's official images: with the variant).
ARM64_PLATFORM = {"os": "linux", "architecture": "arm64", "variant": "v8"}


class BlobStore:
    """Blobs of an OCI layout (a directory or inside a tar), written once each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)

    def put_bytes(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data), **extra}

    def put_file(self, path: Path, digest: str, media_type: str) -> dict[str, Any]:
        target = self.root / "blobs" / "sha256" / digest.split(":")[1]
        shutil.copyfile(path, target)
        return {"mediaType": media_type, "digest": digest, "size": target.stat().st_size}

    def put_json(self, document: dict[str, Any], media_type: str, **extra: Any) -> dict[str, Any]:
        return self.put_bytes(json.dumps(document).encode(), media_type, **extra)

    def image_manifest(self, parts: ImageParts, *, gzip_layers: bool) -> dict[str, Any]:
        """Config and layers as blobs; returns the manifest's descriptor (without platform)."""
        layers = []
        with tempfile.TemporaryDirectory() as scratch:
            for layer in parts.layers:
                if gzip_layers:
                    compressed, digest = gzip_layer(layer, Path(scratch))
                    layers.append(self.put_file(compressed, digest, OCI_LAYER_GZIP))
                else:
                    layers.append(self.put_file(layer, "sha256:" + _file_sha256(layer), OCI_LAYER))
        config = self.put_bytes(parts.config, OCI_CONFIG)
        return self.put_json(
            {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers}, OCI_MANIFEST
        )

    def write_index(self, manifests: list[dict[str, Any]]) -> None:
        (self.root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        (self.root / "index.json").write_text(
            json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
        )


def other_platform_manifest(store: BlobStore, architecture: str) -> dict[str, Any]:
    """A small but complete image for another architecture (never chosen on amd64)."""
    config = {"architecture": architecture, "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": []}}
    return store.put_json(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": store.put_json(config, OCI_CONFIG), "layers": []},
        OCI_MANIFEST,
        platform={**ARM64_PLATFORM} if architecture == "arm64" else {"os": "linux", "architecture": architecture},
    )


def attestation_manifest(store: BlobStore, subject: str) -> dict[str, Any]:
    statement = store.put_bytes(b'{"_type":"https://in-toto.io/Statement/v0.1"}', "application/vnd.in-toto+json")
    config = store.put_bytes(b"{}", OCI_CONFIG)
    return store.put_json(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [statement]},
        OCI_MANIFEST,
        platform={"os": "unknown", "architecture": "unknown"},
        annotations={"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": subject},
    )


def oci_layout_tree(parts: ImageParts, root: Path, *, gzip_layers: bool) -> dict[str, Any]:
    """A bare single-image OCI layout at `root` (no `oci/` parent); returns the manifest descriptor."""
    store = BlobStore(root)
    descriptor = store.image_manifest(parts, gzip_layers=gzip_layers)
    store.write_index([descriptor])
    return descriptor


def _tar_directory(root: Path, target: Path, extra: dict[str, bytes] | None = None) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target, "w") as tar:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                add_file(tar, path.relative_to(root).as_posix(), path)
        for name, data in (extra or {}).items():
            add_bytes(tar, name, data)
    return target


def oci_archive_tarball(
    parts: ImageParts, target: Path, *, with_docker_manifest: bool, repo_tags: Sequence[str] | None = None
) -> Path:
    """An OCI layout as one tar; with `with_docker_manifest` also a manifest.json (Docker 25+ save, buildkit docker
    exporter)."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "layout"
        descriptor = oci_layout_tree(parts, root, gzip_layers=True)
        extra = {}
        if with_docker_manifest:
            manifest = json.loads((root / "blobs" / "sha256" / descriptor["digest"].split(":")[1]).read_text())
            names = ["blobs/sha256/" + layer["digest"].split(":")[1] for layer in manifest["layers"]]
            extra["manifest.json"] = docker_manifest(
                "blobs/sha256/" + manifest["config"]["digest"].split(":")[1], names, repo_tags
            )
        return _tar_directory(root, target, extra)


def compress(tarball: Path, suffix: str) -> Path:
    """`x.tar` → `x<suffix>` (.tar.gz, .tgz or .tar.zst), removing the original."""
    target = tarball.with_name(tarball.name.removesuffix(".tar") + suffix)
    if suffix == ".tar.zst":
        subprocess.run(["zstd", "-q", "-1", "--rm", "-o", str(target), str(tarball)], check=True)
        return target
    with (
        open(tarball, "rb") as source,
        open(target, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=1) as sink,
    ):
        shutil.copyfileobj(source, sink, 1 << 20)
    tarball.unlink()
    return target


# ---------------------------------------------------------------- broken inputs


def truncated_copy(tarball: Path, target: Path, keep_fraction: float = 0.6) -> Path:
    """The first part of a tarball, cut inside a member, as an interrupted download leaves it."""
    size = int(tarball.stat().st_size * keep_fraction)
    with open(tarball, "rb") as source, open(target, "wb") as sink:
        sink.write(source.read(size))
    return target


def corrupt_copy(tarball: Path, target: Path, member_suffix: str = "layer.tar") -> Path:
    """A tarball whose first header of a member ending in `member_suffix` is overwritten with garbage."""
    shutil.copyfile(tarball, target)
    with tarfile.open(tarball) as tar:
        offset = next(m.offset for m in tar.getmembers() if m.name.endswith(member_suffix))
    with open(target, "r+b") as handle:
        handle.seek(offset)
        handle.write(os.urandom(512))
    return target


def corrupt_gzip_layer_copy(tarball: Path, target: Path) -> Path:
    """A tarball whose tar structure is sound but whose first layer's bytes are garbage (docker load must reject it)."""
    shutil.copyfile(tarball, target)
    with tarfile.open(tarball) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(("layer.tar", ".tar.gz")) and m.size > 4096)
    with open(target, "r+b") as handle:
        handle.seek(member.offset_data + 1024)
        handle.write(os.urandom(2048))
    return target


# ---------------------------------------------------------------- reading a made-up archive


def loadable_members(data: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """What `docker load` would read of a docker-save archive: manifest.json's image and every member, the ones it names
    present."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}  # type: ignore[union-attr]
    manifest = json.loads(members["manifest.json"])[0]
    assert manifest["Config"] in members
    assert all(layer in members for layer in manifest["Layers"])
    return manifest, members
