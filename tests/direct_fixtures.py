"""An image with tricky layer contents, for comparing layerstore's direct write with `docker load`.

`build_tricky_image` builds (outer engine, local base, no registry) an image whose RUN layers
hold what real builds leave: whiteouts of files and of whole directories, an opaque directory
(removed and made again), type changes, hardlinks (also one made by copy-up), symlinks
(relative, absolute, dangling, to a directory), setuid/setgid files, a sticky directory,
owners without a passwd entry, a file capability, a FIFO, an empty directory, a name with a
space and unicode, modes 0600/0700/0000, a 20 MiB random file, old mtimes and a long path.

`crafted_layer` adds a layer no builder makes but a tar may hold: user xattrs (Docker's own
export keeps only security.capability), a hardlink to an xattr'd file, explicit AUFS
whiteouts and an opaque marker written after the directory's new file, a directory missing
its own entry, a character device, a fractional PAX mtime, a uid beyond the ustar range.

`LISTING` is the shell a compose service runs to print the image's filesystem (find, sha256sum,
getcap, getfattr), and `listing_of` picks one service's listing out of a put's log.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

from image_fixtures import FIXTURE_REPOSITORY, ImageParts, docker, write_name_files

TRICKY_TAG = f"{FIXTURE_REPOSITORY}/tricky:latest"
#: 2001-01-01T00:00:00Z, the mtime `touch -d 2001-01-01` gives in a UTC build container.
OLD_MTIME = 978307200
LONG_DIR = "tricky/long-" + "d" * 70
LONG_FILE = LONG_DIR + "/" + "f" * 90 + ".txt"
UNICODE_NAME = "with space ünïcødé ☃.txt"

TRICKY_DOCKERFILE = rf"""
FROM debian:trixie-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libcap2-bin attr \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
RUN set -e; mkdir /tricky; cd /tricky \
 && echo gone > gone.txt \
 && mkdir keep && echo stays > keep/stays && echo gone > keep/gone \
 && mkdir -p opaque/sub && echo old1 > opaque/old1 && echo old2 > opaque/old2 && echo old3 > opaque/sub/old3 \
 && mkdir -p deleted-dir/a/b && echo c > deleted-dir/a/b/c \
 && mkdir was-dir && echo x > was-dir/x && echo was-file > was-file \
 && echo modified > modified.txt && echo lower > lower-file \
 && mkdir -p crafted-opaque/sub && echo old > crafted-opaque/old && echo old > crafted-opaque/sub/old \
 && echo crafted-gone > crafted-gone && mkdir -p deep/sub && echo f > deep/sub/file && echo keep > deep/keep \
 && mkdir hl && echo shared > hl/a && ln hl/a hl/b && ln hl/a hl/c \
 && echo target > target && ln -s target rel-link && ln -s ../tricky/target rel-up-link \
 && ln -s /etc/passwd abs-link && ln -s /nonexistent/nowhere dangling-link && ln -s /usr/share dir-link \
 && cp /bin/true suid && chmod 4755 suid && cp /bin/true sgid && chmod 2755 sgid \
 && mkdir sticky && chmod 1777 sticky && mkdir setgid-dir && chmod 2775 setgid-dir \
 && echo owned > owned && chown 1234:5678 owned && mkdir owned-dir && chown 1234:5678 owned-dir && chmod 0750 owned-dir \
 && ln -s target owned-link && chown -h 1234:5678 owned-link \
 && cp /bin/true capbin && setcap cap_net_raw+ep capbin \
 && mkfifo fifo && mkdir empty && echo spaced > '{UNICODE_NAME}' \
 && echo secret > private && chmod 0600 private && mkdir private-dir && echo x > private-dir/x && chmod 0700 private-dir \
 && echo none > nomode && chmod 0000 nomode \
 && head -c 20971520 /dev/urandom > big.bin \
 && mkdir -p /{LONG_DIR} && echo long > /{LONG_FILE} && ln -s /{LONG_FILE} long-link \
 && echo old > old.txt && touch -d 2001-01-01 old.txt && ln -s target old-link && touch -h -d 2001-01-01 old-link \
 && mkdir old-dir && echo x > old-dir/x && touch -d 2001-01-01 old-dir \
 && touch -d 2002-02-02 keep deep /tricky
RUN set -e; cd /tricky \
 && rm gone.txt keep/gone && rm -rf deleted-dir \
 && rm -rf opaque && mkdir opaque && echo new > opaque/new \
 && rm -rf was-dir && echo now-a-file > was-dir && rm was-file && mkdir was-file && echo inner > was-file/inner \
 && echo more >> modified.txt && ln lower-file lower-hardlink && chown 1234:5678 target && chmod 0640 owned \
 && touch -d 2003-03-03 keep /tricky
"""


def build_tricky_image() -> str:
    """The tricky image in the outer engine (cached after the first build: the random file stays the same)."""
    docker("build", "-q", "-t", TRICKY_TAG, "-", input=TRICKY_DOCKERFILE.encode())
    return TRICKY_TAG


def _entry(
    name: str, kind: bytes = tarfile.REGTYPE, *, mode: int = 0o644, mtime: float = 1262304000, **extra: object
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, mtime
    for key, value in extra.items():
        setattr(info, key, value)
    return info


def crafted_layer(target: Path) -> Path:
    """A PAX layer tar for the top of the tricky image (see the module's docstring)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    entries: list[tuple[tarfile.TarInfo, bytes]] = [
        (_entry("tricky", tarfile.DIRTYPE, mode=0o755, mtime=1262304000), b""),
        (
            _entry(
                "tricky/xattr.txt",
                pax_headers={"SCHILY.xattr.user.greeting": "hello", "SCHILY.xattr.user.spaced": "a b c"},
            ),
            b"xattr\n",
        ),
        (_entry("tricky/xattr-dir", tarfile.DIRTYPE, mode=0o755, pax_headers={"SCHILY.xattr.user.dir": "yes"}), b""),
        (_entry("tricky/crafted-link", tarfile.LNKTYPE, linkname="tricky/xattr.txt"), b""),
        (_entry("tricky/.wh.crafted-gone"), b""),
        (_entry("tricky/crafted-opaque", tarfile.DIRTYPE, mode=0o750, mtime=1262304000), b""),
        (_entry("tricky/crafted-opaque/new"), b"new\n"),
        (_entry("tricky/crafted-opaque/.wh..wh..opq"), b""),
        (_entry("tricky/deep", tarfile.DIRTYPE, mode=0o755, mtime=1262304000), b""),
        (_entry("tricky/deep/.wh.sub"), b""),
        (_entry("tricky/implicit/child.txt"), b"child\n"),
        (_entry("tricky/devnull", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3), b""),
        (_entry("tricky/fraction.txt", mtime=1000000000.5), b"fraction\n"),
        (_entry("tricky/big-uid", uid=3000000, gid=3000001), b"big uid\n"),
    ]
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if info.isreg():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _with_diff_ids(parts: ImageParts, layers: list[Path], history_extra: list[dict] | None = None) -> ImageParts:
    config = json.loads(parts.config)
    config["rootfs"]["diff_ids"] = [_sha256(layer) for layer in layers]
    if history_extra:
        config["history"] = [*config.get("history", []), *history_extra]
    return ImageParts(json.dumps(config).encode(), tuple(layers))


def with_top_layer(parts: ImageParts, layer: Path) -> ImageParts:
    """`parts` with one more layer on top (config diff_ids and history follow)."""
    return _with_diff_ids(
        parts,
        [*parts.layers, layer],
        [{"created": "2010-01-01T00:00:00Z", "created_by": "crafted layer (tests/direct_fixtures.py)"}],
    )


def _tar_end(layer: Path) -> int:
    """Where a layer tar's last member ends (its end-of-archive blocks start)."""
    end = 0
    with tarfile.open(layer) as tar:
        for member in tar:
            end = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    return end


def with_marker(parts: ImageParts, marker: str, workdir: Path) -> ImageParts:
    """`parts` whose FIRST layer also holds /shape-marker (bytes of the original kept): every chain id differs.

    Three shapes of one image would otherwise share every layer, and layerstore writes a
    shared layer once (from the uncompressed blob), so the gzip shapes would write nothing.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    first = workdir / "layer0-marked.tar"
    data = f"{marker:<16}\n".encode()
    with open(parts.layers[0], "rb") as source, open(first, "wb") as sink:
        sink.write(source.read(_tar_end(parts.layers[0])))
        info = _entry("shape-marker", mtime=1262304000)
        info.size = len(data)
        sink.write(
            info.tobuf(format=tarfile.PAX_FORMAT)
            + data
            + b"\0" * (-len(data) % tarfile.BLOCKSIZE)
            + b"\0" * 2 * tarfile.BLOCKSIZE
        )
    return _with_diff_ids(parts, [first, *parts.layers[1:]])


def with_mismatched_top_layer(parts: ImageParts, workdir: Path) -> ImageParts:
    """`parts` whose top layer is a valid tar but not the one its config's diff_id names."""
    workdir.mkdir(parents=True, exist_ok=True)
    other = workdir / "mismatched.tar"
    with tarfile.open(other, "w") as tar:
        info = _entry("not-the-declared-layer.txt")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"wrong\n"))
    return ImageParts(parts.config, (*parts.layers[:-1], other))


def rootfs_from_image(reference: str, directory: Path, repository: str, tag: str, metadata: dict) -> Path:
    """registry-image's default format made from an image: its filesystem (`docker export`) in `rootfs/`, plus
    metadata.json.

    docker export keeps only security.capability of the xattrs: user xattrs are added to two
    entries afterwards, so that the rootfs carries some for both paths to keep.
    """
    rootfs = directory / "rootfs"
    rootfs.mkdir(parents=True)
    container = docker("create", reference, "true").strip()  # no CMD in a debootstrapped base
    try:
        exported = subprocess.run(["docker", "export", container], check=True, capture_output=True).stdout
    finally:
        docker("rm", container)
    extract = [
        "tar",
        "--extract",
        "--numeric-owner",
        "--same-owner",
        "--preserve-permissions",
        "--xattrs",
        "--xattrs-include=*",
        f"--directory={rootfs}",
    ]
    subprocess.run(extract, input=exported, check=True)
    os.setxattr(rootfs / "tricky" / "owned", "user.greeting", b"hello")
    os.setxattr(rootfs / "tricky" / "empty", "user.dir", b"yes")
    (directory / "metadata.json").write_text(json.dumps(metadata))
    write_name_files(directory, repository, tag)
    return directory


# ---------------------------------------------------------------- inspecting and listing inside a service

#: Perl (debian's perl-base: every image made from the tricky one has it) asking the inner dockerd,
#: through its socket mounted into the service, for each named image: `INSPECT <name> <JSON>`.
#: `$$` is compose's escape for `$`.
INSPECT = (
    r"for my $$n (@ARGV) { my $$s = IO::Socket::UNIX->new(Peer => '/var/run/docker.sock') or die qq(connect: $$!);"
    r" print $$s qq(GET /images/$$n/json HTTP/1.0\r\nHost: docker\r\n\r\n); local $$/; my $$r = <$$s>;"
    r" my (undef, $$b) = split /\r\n\r\n/, $$r, 2; $$b =~ s/\s+$$//; print qq(INSPECT $$n $$b\n); }"
)


def inspect_service(image: str, names: list[str]) -> dict:
    """A compose service that prints, for each of `names`, what the inner dockerd's image inspect says."""
    return {
        "image": image,
        "command": ["perl", "-MIO::Socket::UNIX", "-e", INSPECT, *names],
        "volumes": ["/var/run/docker.sock:/var/run/docker.sock"],
    }


def inspected(log: str, service: str = "inspect") -> dict[str, dict]:
    """name → (image ID, RootFS.Layers) from the INSPECT lines `service` printed."""
    found = {}
    for match in re.finditer(rf"^{re.escape(service)}-1\s+\| INSPECT (\S+) (.*)$", log, re.MULTILINE):
        document = json.loads(match.group(2))
        found[match.group(1)] = {"Id": document["Id"], "Layers": document["RootFS"]["Layers"]}
    return found


#: The whole root filesystem (minus what the engine mounts or makes per container), then
#: hashes, capabilities and xattrs under /tricky. No `$` in it: compose would interpolate.
LISTING = " ; ".join(
    [
        "echo LISTING-BEGIN",
        "find / -xdev -mindepth 1 \\( -path /proc -o -path /sys -o -path /dev -o -path /etc/hostname -o -path "
        "/etc/hosts"
        " -o -path /etc/resolv.conf -o -path /.dockerenv -o -path /etc/mtab \\) -prune"
        " -o -printf 'F %p|%y|%m|%U|%G|%s|%n|%l|%T@\\n' | LC_ALL=C sort",
        "find /tricky -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sed 's/^/S /'",
        "getcap -r /tricky 2>&1 | LC_ALL=C sort | sed 's/^/C /'",
        "find /tricky -print0 | LC_ALL=C sort -z | xargs -0 getfattr -h --absolute-names -d -m - 2>&1 | sed 's/^/X /'",
        "echo LISTING-END",
    ]
)


def listing_of(log: str, service: str) -> list[str]:
    """The LISTING lines service `service` printed, in order, from a put's log (compose prefixes them)."""
    lines = [m.group(1) for m in re.finditer(rf"^{re.escape(service)}-1\s+\| ?(.*)$", log, re.MULTILINE)]
    assert "LISTING-BEGIN" in lines and "LISTING-END" in lines, f"no complete listing from {service}:\n" + "\n".join(
        lines[-20:]
    )
    return [line.rstrip() for line in lines[lines.index("LISTING-BEGIN") + 1 : lines.index("LISTING-END")]]


#: Paths whose mtime is the container's or the extraction's, not the image's: /etc comes from
#: the container's init layer, and /tricky/implicit has no entry of its own in its layer.
RUNTIME_MTIMES = ("/etc", "/tricky/implicit")


def comparable(listing: list[str]) -> list[str]:
    """The listing with the mtimes of RUNTIME_MTIMES blanked (they differ between any two containers)."""
    blanked = []
    for line in listing:
        if line.startswith("F ") and line[2:].split("|")[0] in RUNTIME_MTIMES:
            line = line.rsplit("|", 1)[0] + "|(runtime)"
        blanked.append(line)
    return blanked


def entries(listing: list[str]) -> dict[str, list[str]]:
    """find's lines by path: path → [type, mode, uid, gid, size, links, link target, mtime]."""
    return {fields[0]: fields[1:] for fields in (line[2:].split("|") for line in listing if line.startswith("F "))}


def xattrs(listing: list[str]) -> dict[str, dict[str, str]]:
    """getfattr's dump by path: path → {name: value}."""
    found: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in listing:
        if not line.startswith("X"):
            continue
        text = line[2:]
        if text.startswith("# file: "):
            current = found.setdefault(text[len("# file: ") :], {})
        elif current is not None and "=" in text:
            name, value = text.split("=", 1)
            current[name] = value
    return found
