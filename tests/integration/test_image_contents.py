"""The image keeps every tool a put runs and drops what it never runs (the Dockerfile says why each is safe).

The puts elsewhere in the suite prove the tools work together; this proves each is present
and runs on its own, so that a removal that only some configuration needs (iptables-legacy,
fuse-overlayfs, zstd, a published port's docker-proxy, `init: true`'s docker-init) fails here.
"""

from __future__ import annotations

import subprocess

#: Each command must exit 0 in the image: the tools a put, a task or dockerd itself calls.
NEEDED = {
    "docker compose": "docker compose version",
    "docker CLI": "docker --version",
    "dockerd": "dockerd --version",
    "containerd": "containerd --version",
    "the runc v2 shim": "containerd-shim-runc-v2 -v",
    "runc": "runc --version",
    "setpriv (children die with the put)": "setpriv --version",
    "docker-proxy (published ports)": "test -x /usr/sbin/docker-proxy",
    "docker-init (init: true)": "docker-init --version",
    "iptables (nft)": "iptables-nft --version && ip6tables-nft --version && iptables-nft-restore --version",
    "iptables (legacy)": "iptables-legacy --version && ip6tables-legacy --version && iptables-legacy-restore --version",
    "fuse-overlayfs": "fuse-overlayfs --version",
    "igzip": "igzip --version",
    "unpigz": "unpigz --version",
    "zstd": "zstd --version",
    "tar, mount, umount": "tar --version && mount --version && umount --version",
    "the CA bundle": "test -s /etc/ssl/certs/ca-certificates.crt",
    "the Python libraries": (
        "python3 -c 'import compose_env.protocol, compose_env.run.put, compose_env.run.task,"
        " docker, jsonschema, requests, defusedxml'"
    ),
}
#: What the image leaves out.
DROPPED = [
    "/usr/bin/ctr",
    "/usr/bin/containerd-shim",
    "/usr/bin/containerd-shim-runc-v1",
    "/usr/share/man/man1/docker.1.gz",
    "/usr/share/doc/docker.io/README.Debian",
    "/var/cache/apt/pkgcache.bin",
]


def _in_image(image: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "sh", image, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_tool_a_put_runs_is_in_the_image_and_runs(image: str) -> None:
    # One container for all: each check prints its name when it fails.
    script = " ; ".join(f"( {command} ) >/dev/null 2>&1 || echo 'MISSING {name}'" for name, command in NEEDED.items())

    result = _in_image(image, script)

    assert result.returncode == 0, result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("MISSING")] == []


def test_what_a_put_never_runs_is_not_in_the_image(image: str) -> None:
    result = _in_image(image, " ; ".join(f"test -e {path} && echo 'PRESENT {path}'" for path in DROPPED) + " ; true")

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == []
