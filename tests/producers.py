"""The directories Concourse steps leave, laid out file for file as each producer's source writes them.

Every writer cites the code it reproduces (read in the producers' repositories at the release named):

- docker-image-resource v1.13.0 `assets/in` (its layout unchanged since v1.0.0, but for `dev/`, v1.3.3);
- registry-image-resource v1.18.0 `commands/in.go` (`metadata.json` gained `cmd` and `entrypoint` in
  v1.15.0, `labels.json` came in v1.8.0, `format: oci-layout` in v1.11.0) with go-containerregistry
  v0.21.9 (`pkg/v1/tarball/write.go`, `pkg/v1/layout/write.go`);
- oci-build-task v0.14.4 `task.go`, `types.go` (BuildKit's docker and oci exporters, containerd
  `core/images/archive/exporter.go`).

The image itself comes in as `ImageParts` (its config and uncompressed layers): from `docker save`
of an image built here, or made up for unit tests. Where a producer runs docker (`docker inspect`,
`docker export`), the caller may pass the real output (`inspect`), else it is made from the config.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from image_fixtures import (
    ARM64_PLATFORM,
    OCI_CONFIG,
    OCI_INDEX,
    BlobStore,
    ImageParts,
    add_bytes,
    add_file,
    attestation_manifest,
    docker_manifest,
    docker_save_tarball,
    gzip_layer,
    other_platform_manifest,
)

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
#: ggcr v0.21.9 `pkg/v1/layout/write.go` L38-40: `oci-layout` as registry-image writes it (no newline).
GGCR_LAYOUT_FILE = '{\n    "imageLayoutVersion": "1.0.0"\n}'
#: containerd's archive exporter: `oci-layout` in BuildKit's tarballs.
CONTAINERD_LAYOUT_FILE = '{"imageLayoutVersion":"1.0.0"}'


def _image_config(parts: ImageParts) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(parts.config).get("config") or {}
    return config


def _unpack_layers(parts: ImageParts, rootfs: Path) -> None:
    """The layers applied in order as registry-image's `commands/rootfs.go` (v1.18.0) and oci-build-task's
    `unpack.go` do: `.wh.` whiteouts remove their path, `.wh..wh..opq` empties its directory, a path that is
    there already is replaced unless both are directories, devices are skipped."""
    rootfs.mkdir(parents=True, exist_ok=True)
    for layer in parts.layers:
        with tarfile.open(layer) as tar:
            for member in tar:
                path = rootfs / member.name.removeprefix("./")
                directory, _, name = member.name.removeprefix("./").rpartition("/")
                if name == ".wh..wh..opq":
                    _remove(rootfs / directory, keep_directory=True)
                    continue
                if name.startswith(".wh."):
                    _remove(rootfs / directory / name.removeprefix(".wh."))
                    continue
                if member.isdev():
                    continue
                if (path.exists() or path.is_symlink()) and not (
                    member.isdir() and path.is_dir() and not path.is_symlink()
                ):
                    _remove(path)
                tar.extract(member, rootfs, filter="fully_trusted")


def _remove(path: Path, *, keep_directory: bool = False) -> None:
    if path.is_dir() and not path.is_symlink():
        for child in path.iterdir():
            _remove(child)
        if not keep_directory:
            path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()


# ---------------------------------------------------------------- docker-image-resource


def docker_inspect_output(parts: ImageParts, image_id: str) -> str:
    """What `docker inspect IMAGE` prints (a list, 4-space indent, a newline), reduced to what a reader of it uses."""
    document = json.loads(parts.config)
    inspected = [
        {
            "Id": image_id,
            "RepoTags": [],
            "Architecture": document.get("architecture"),
            "Os": document.get("os"),
            "Config": _image_config(parts),
        }
    ]
    return json.dumps(inspected, indent=4) + "\n"


def docker_image_resource_dir(
    parts: ImageParts,
    directory: Path,
    repository: str,
    tag: str,
    *,
    save: bool = True,
    rootfs_tar: bool = False,
    inspect: str | None = None,
) -> Path:
    """docker-image-resource's `in` (v1.13.0 `assets/in` l.57-98), get params `save` and `rootfs`.

    - `image` (l.74, `save: true` only): `docker save` of `repository@digest`, so manifest.json's
      RepoTags is null (moby `image/tarexport/save.go` skips the tag of a canonical reference);
    - `image-id` (l.79, `echo`): `sha256:<hex>` and a newline (`common.sh` `image_from_digest`);
    - `docker_inspect.json` (l.80): `docker inspect` of the image: its whole config;
    - `metadata.json` (l.82-86, `cmd/print-metadata/main.go`): `{"user":…,"env":[…]}` and a newline,
      env as the container sees it (HOSTNAME dropped, HOME added);
    - `rootfs/` (l.88-89): `docker export` of the print-metadata container, untarred without the
      top-level `dev` (v1.3.3+): the image's files plus the ones docker adds to a container;
    - `rootfs.tar` (l.91-93, `rootfs: true` only): the raw export, `dev/` included;
    - `repository`, `tag`, `digest` (l.96-98, `echo`): each with a newline.
    """
    directory.mkdir(parents=True, exist_ok=True)
    digest = "sha256:" + "d1" * 32  # the registry's manifest digest: never read by a consumer of the files
    if save:
        docker_save_tarball(parts, directory / "image", repo_tags=None)
    (directory / "image-id").write_text(parts.image_id + "\n")
    (directory / "docker_inspect.json").write_text(inspect or docker_inspect_output(parts, parts.image_id))
    config = _image_config(parts)
    user = config.get("User") or "root"
    home = "/root" if user in ("", "root", "0") else f"/home/{user}"
    env = [item for item in config.get("Env") or [] if not item.startswith("HOSTNAME=")] + [f"HOME={home}"]
    (directory / "metadata.json").write_text(json.dumps({"user": user, "env": env}, separators=(",", ":")) + "\n")
    rootfs = directory / "rootfs"
    _unpack_layers(parts, rootfs)
    (rootfs / ".dockerenv").write_bytes(b"")
    (rootfs / "etc").mkdir(exist_ok=True)
    for name in ("hostname", "hosts", "resolv.conf"):
        (rootfs / "etc" / name).write_bytes(b"")
    (rootfs / "tmp" / "print-metadata").parent.mkdir(exist_ok=True)
    (rootfs / "tmp" / "print-metadata").write_bytes(b"")
    if rootfs_tar:
        with tarfile.open(directory / "rootfs.tar", "w") as tar:
            tar.add(rootfs, arcname=".")
            info = tarfile.TarInfo("dev")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
    for name, value in (("repository", repository), ("tag", tag), ("digest", digest)):
        (directory / name).write_text(value + "\n")
    return directory


# ---------------------------------------------------------------- registry-image-resource


def _registry_image_version_files(directory: Path, repository: str, tag: str, digest: str) -> None:
    """`saveVersionInfo` (in.go L256-273, v1.0.0+; `repository` v1.1.0+): the values as given, no newline."""
    for name, value in (("tag", tag), ("digest", digest), ("repository", repository)):
        (directory / name).write_text(value)


def _labels_json(directory: Path, parts: ImageParts) -> None:
    """`writeLabels` (in.go L333-354, v1.8.0+): the config's labels, `{}` when none, sorted, a newline."""
    labels = _image_config(parts).get("Labels") or {}
    (directory / "labels.json").write_text(json.dumps(labels, sort_keys=True, separators=(",", ":")) + "\n")


def registry_image_rootfs_dir(
    parts: ImageParts, directory: Path, repository: str, tag: str, *, release: str = "v1.18.0"
) -> Path:
    """registry-image `in`, the default `format: rootfs` (`rootfsFormat`, in.go L294-331).

    `metadata.json` is `json.Encoder` output of `ImageMetadata`: `{"env":…,"user":…}` up to v1.14.0,
    `{"cmd":…,"entrypoint":…,"env":…,"user":…}` from v1.15.0 (d63ab98), nulls for missing lists.
    """
    config = _image_config(parts)
    _unpack_layers(parts, directory / "rootfs")
    fields: dict[str, Any] = {}
    if release >= "v1.15.0":
        fields = {"cmd": config.get("Cmd"), "entrypoint": config.get("Entrypoint")}
    fields |= {"env": config.get("Env"), "user": config.get("User") or ""}
    (directory / "metadata.json").write_text(json.dumps(fields, separators=(",", ":")) + "\n")
    _labels_json(directory, parts)
    _registry_image_version_files(directory, repository, tag, "sha256:" + "e1" * 32)
    return directory


def registry_image_oci_dir(parts: ImageParts, directory: Path, repository: str, tag: str, repo_tag: str) -> Path:
    """registry-image `format: oci` (`ociFormat`, in.go L275-292): ggcr's `tarball.WriteToFile` with the tag.

    ggcr v0.21.9 `writeImagesToTar`: the config as `sha256:<hex>`, each layer as `<compressed hex>.tar.gz`,
    manifest.json last (compact); RepoTags fully qualified (`index.docker.io/library/redis:7`); every
    header mode 0644, owner 0, mtime 0. Then `labels.json` and the version files.
    """
    directory.mkdir(parents=True, exist_ok=True)
    scratch = directory / ".layers"
    scratch.mkdir()
    with tarfile.open(directory / "image.tar", "w") as tar:
        add_bytes(tar, parts.config_digest, parts.config)
        layer_names = []
        for layer in parts.layers:
            compressed, digest = gzip_layer(layer, scratch)
            layer_names.append(digest.split(":")[1] + ".tar.gz")
            add_file(tar, layer_names[-1], compressed)
        add_bytes(tar, "manifest.json", docker_manifest(parts.config_digest, layer_names, [repo_tag]))
    for path in scratch.iterdir():
        path.unlink()
    scratch.rmdir()
    _labels_json(directory, parts)
    _registry_image_version_files(directory, repository, tag, "sha256:" + "f1" * 32)
    return directory


def oci_layout_dir(
    parts: ImageParts,
    directory: Path,
    repository: str | None,
    tag: str | None,
    *,
    platform: tuple[str, str] = ("linux", "amd64"),
    multi_platform: bool = True,
    arm64: ImageParts | None = None,
) -> Path:
    """registry-image `format: oci-layout` (v1.11.0+, `commands/oci_layout.go`): `oci/` and the version files.

    A multi-platform image: `oci/index.json` is the registry's index verbatim (here arm64, the image
    for `platform`, and a buildx attestation, as for `redis:7` on Docker Hub), not kept under blobs/.
    The arm64 entry is a small placeholder unless `arm64` gives a real image for it.
    A single image: a one-entry index with no platform and (ggcr ≥ v0.21.6) its `artifactType`,
    and `oci/single-image-digest`. `oci-layout` as ggcr's `layout.Write` makes it.
    """
    store = BlobStore(directory / "oci")
    image = store.image_manifest(parts, gzip_layers=True)
    if multi_platform:
        image = {**image, "platform": {"os": platform[0], "architecture": platform[1]}}
        attestation = attestation_manifest(store, image["digest"])
        if arm64:  # amd64 first (Docker Hub's order): an arm64 worker must look past it
            real = {**store.image_manifest(arm64, gzip_layers=True), "platform": {**ARM64_PLATFORM}}
            manifests = [image, real, attestation]
        else:  # the placeholder first: an amd64 worker must look past it
            manifests = [other_platform_manifest(store, "arm64"), image, attestation]
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    else:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{**image, "artifactType": OCI_CONFIG}]}
        (directory / "oci" / "single-image-digest").write_text(image["digest"])
    (directory / "oci" / "index.json").write_text(json.dumps(index, separators=(",", ":")))
    (directory / "oci" / "oci-layout").write_text(GGCR_LAYOUT_FILE)
    if repository:
        digest = "sha256:" + "a1" * 32 if multi_platform else image["digest"]
        _registry_image_version_files(directory, repository, tag or "latest", digest)
    return directory


# ---------------------------------------------------------------- oci-build-task


def _buildkit_layout(
    parts: ImageParts, root: Path, *, docker_types: bool, platforms: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """BuildKit's exporter output as a layout at `root`; returns the top descriptor (index.json's one entry).

    One platform: the image manifest, with its platform and a `created` annotation. Several (the
    oci exporter only): an image index of one manifest per platform, in the order asked for.
    """
    store = BlobStore(root)
    created = {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}
    image = store.image_manifest(parts, gzip_layers=True)
    if docker_types:  # BuildKit ≤ 0.30's docker exporter: Docker media types (oci-build-task ≤ v0.14.4 ships ≤ 0.24)
        manifest = json.loads((root / "blobs" / "sha256" / image["digest"].split(":")[1]).read_text())
        manifest["mediaType"] = DOCKER_MANIFEST
        manifest["config"]["mediaType"] = DOCKER_CONFIG
        for layer in manifest["layers"]:
            layer["mediaType"] = DOCKER_LAYER_GZIP
        image = store.put_json(manifest, DOCKER_MANIFEST)
    own = json.loads(parts.config)
    if len(platforms) <= 1:
        descriptor = {
            **image,
            "platform": {"architecture": own.get("architecture", "amd64"), "os": "linux"},
            "annotations": created,
        }
    else:
        manifests = []
        for os_name, architecture in platforms:
            if architecture == own.get("architecture", "amd64"):
                manifests.append({**image, "platform": {"architecture": architecture, "os": os_name}})
            else:
                manifests.append(other_platform_manifest(store, architecture))
        nested = store.put_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}, OCI_INDEX)
        descriptor = {**nested, "annotations": created}
    (root / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]}, separators=(",", ":"))
    )
    (root / "oci-layout").write_text(CONTAINERD_LAYOUT_FILE)
    if docker_types:
        manifest = json.loads((root / "blobs" / "sha256" / image["digest"].split(":")[1]).read_text())
        names = ["blobs/sha256/" + layer["digest"].split(":")[1] for layer in manifest["layers"]]
        config_name = "blobs/sha256/" + manifest["config"]["digest"].split(":")[1]
        (root / "manifest.json").write_text(
            json.dumps([{"Config": config_name, "RepoTags": None, "Layers": names}], separators=(",", ":"))
        )
    return descriptor


def _tar_tree(root: Path, target: Path) -> None:
    """The exporter's tar: entries sorted by name (containerd's archive writer)."""
    with tarfile.open(target, "w") as tar:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                add_file(tar, path.relative_to(root).as_posix(), path)


def oci_build_task_dir(
    parts: ImageParts,
    directory: Path,
    *,
    unpack_rootfs: bool = False,
    output_oci: bool = False,
    platforms: Sequence[tuple[str, str]] = (),
) -> Path:
    """An oci-build-task output directory (`image/`, or an additional target's `<target>/`), v0.14.4 `task.go`.

    - default (l.121-156): `--output type=docker,dest=image/image.tar`, no `name=`: a tar with
      `oci-layout`, `index.json` and `manifest.json` (RepoTags null) and blobs; `digest` (l.241,
      l.300) the config digest, no newline;
    - `UNPACK_ROOTFS` (l.246-247, 309-341): also `rootfs/` and `metadata.json`, `ImageMetadata`
      (types.go l.90-93) `{"env":…,"user":…}` and a newline;
    - `OUTPUT_OCI` (v0.11.0+, l.256-295): `type=oci`: `image.tar` without manifest.json, kept, and
      also untarred into `image/` (a layout directory); `digest` is index.json's first entry;
      `UNPACK_ROOTFS` is ignored;
    - several `platforms` (IMAGE_PLATFORM with a comma turns OUTPUT_OCI on, v0.14.1+, l.418-420):
      index.json's one entry is an image index of one manifest per platform.
    Additional targets (v0.6.0+, l.126-147) write the same files into a directory named after the target.
    """
    directory.mkdir(parents=True, exist_ok=True)
    output_oci = output_oci or len(platforms) > 1
    layout = directory / ".layout"
    descriptor = _buildkit_layout(parts, layout, docker_types=not output_oci, platforms=platforms)
    _tar_tree(layout, directory / "image.tar")
    if output_oci:
        layout.rename(directory / "image")
        (directory / "digest").write_text(descriptor["digest"])
    else:
        for path in sorted(layout.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        layout.rmdir()
        (directory / "digest").write_text(parts.config_digest)
        if unpack_rootfs:
            config = _image_config(parts)
            _unpack_layers(parts, directory / "rootfs")
            metadata = {"env": config.get("Env"), "user": config.get("User") or ""}
            (directory / "metadata.json").write_text(json.dumps(metadata, separators=(",", ":")) + "\n")
    return directory
