"""Why containerd or dockerd did not start: their logs' error lines, matched against known causes.

Each known cause maps to what to change (a source setting, or the worker), so a failed start
ends in a `diagnosis:` line a CI engineer can act on.
"""

from __future__ import annotations

from compose_env.engine.cgroups import WORKER_HINT
from compose_env.engine.preflight import NOT_PRIVILEGED_HINT

#: (words in an error line, what to change). Checked against error/fatal lines only, so
#: that the usual info lines mentioning cgroups or iptables do not produce false hints.
DIAGNOSES = (
    (
        ("operation not permitted", "permission denied", "read-only file system"),
        f"a permission was refused: {NOT_PRIVILEGED_HINT}",
    ),
    (("cgroup",), f"cgroups: the container's cgroup tree is not usable: {WORKER_HINT}"),
    (
        ("iptables", "nf_tables", "xtables", "ip_tables"),
        "iptables: set source.dockerd.iptables to legacy (or nft); `off` runs without NAT",
    ),
    (
        ("overlay", "storage-driver", "storage driver", "graphdriver", "driver not supported", "fuse"),
        "storage: set source.dockerd.storage_driver (fuse-overlayfs or vfs) or move source.dockerd.data_root",
    ),
    (
        ("no space left",),
        "the data root is out of space: set source.dockerd.data_root_medium: disk, or free space on the worker",
    ),
    (("address already in use", "pid file found", "is still running"), "another dockerd is running in this container"),
    (
        ("unknown flag", "flag provided but not defined", "invalid argument", "unknown shorthand flag"),
        "dockerd rejected a flag: check source.dockerd.args",
    ),
    (("containerd",), "dockerd could not reach containerd: see the containerd log above"),
)


def error_lines(log_text: str) -> list[str]:
    markers = (
        "level=fatal",
        "level=error",
        "failed to start daemon",
        "error starting daemon",
        "unknown flag",
        "flag provided but not defined",
        "invalid argument",
    )
    return [line for line in log_text.splitlines() if any(marker in line.lower() for marker in markers)]


def diagnose(log_text: str) -> str:
    """Known dockerd/containerd start failures → what to change."""
    lowered = "\n".join(error_lines(log_text)).lower()
    hints = [hint for words, hint in DIAGNOSES if any(word in lowered for word in words)]
    return (
        "\n".join(dict.fromkeys(hints))
        or "no known cause in the logs: see the log lines above (source.dockerd.debug: true shows more)"
    )
