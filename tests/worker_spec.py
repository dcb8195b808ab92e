"""The OCI runtime spec a Concourse worker gives a privileged resource container, for plain runc.

Two flavours, from the table in shared/CONCOURSE-RUNTIME.md (read from Concourse v8's
`worker/runtime/spec/*.go` and Guardian's `rundmc/`):

- `concourse` (the containerd runtime): pid, ipc, uts, mount and network namespaces and no
  cgroup namespace; only `/dev/fuse` added to runc's default devices, so no `/dev/console`;
  38 capabilities (not PERFMON, BPF, CHECKPOINT_RESTORE); `/dev` a 64 MiB tmpfs; `/sys` and
  `/sys/fs/cgroup` read-write (runc shows the container's own cgroups on v1, the host's whole
  tree on v2); gdn-init as PID 1.
- `guardian` (garden-runc): the same, but `/sys` read-only and no `/sys/fs/cgroup` at all.

The capabilities are intersected with the harness's own bounding set (a capability the host
lacks cannot be given); `dropped_capabilities` says which went.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Concourse's privileged capability set: every capability up to CAP_AUDIT_READ (0-37).
CONCOURSE_CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ",
)  # fmt: skip
FLAVOURS = ("concourse", "guardian")
FUSE = {"type": "c", "major": 10, "minor": 229}
TUN = {"type": "c", "major": 10, "minor": 200}


def bounding_set(status: str = "/proc/self/status") -> int:
    with open(status) as handle:
        for line in handle:
            if line.startswith("CapBnd:"):
                return int(line.split()[1], 16)
    return 0


def capabilities_within(bounding: int) -> tuple[list[str], list[str]]:
    """(the capabilities this host can give, the ones of Concourse's set it cannot)."""
    kept = [f"CAP_{name}" for number, name in enumerate(CONCOURSE_CAPABILITIES) if bounding & (1 << number)]
    dropped = [f"CAP_{name}" for number, name in enumerate(CONCOURSE_CAPABILITIES) if not bounding & (1 << number)]
    return kept, dropped


@dataclass(frozen=True)
class WorkerContainerSpec:
    flavour: str
    rootfs: str
    env: Sequence[str]
    netns_path: str
    init_path: str
    etc_dir: str
    binds: Sequence[tuple[str, str, bool]]
    cgroups_path: str = ""

    def render(self, bounding: int) -> dict[str, Any]:
        if self.flavour not in FLAVOURS:
            raise ValueError(f"unknown worker flavour {self.flavour!r}")
        capabilities, _ = capabilities_within(bounding)
        env = list(self.env)
        if not any(item.startswith("PATH=") for item in env):
            env.append("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        if self.flavour == "guardian":
            env.append("USER=root")
        devices: list[Mapping[str, Any]] = [{"allow": False, "access": "rwm"}, {"allow": True, **FUSE, "access": "rwm"}]
        if self.flavour == "guardian":
            devices.append({"allow": True, **TUN, "access": "rwm"})
        return {
            "ociVersion": "1.0.2",
            "process": {
                "terminal": False,
                "user": {"uid": 0, "gid": 0},
                "args": ["/tmp/gdn-init"],
                "env": env,
                "cwd": "/",
                "capabilities": {
                    kind: capabilities for kind in ("bounding", "effective", "inheritable", "permitted", "ambient")
                },
                "noNewPrivileges": False,
            },
            "root": {"path": self.rootfs, "readonly": False},
            "hostname": "worker-container",
            "mounts": self._mounts(),
            "linux": {
                "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
                + [{"type": "network", "path": self.netns_path}],
                "cgroupsPath": self.cgroups_path,
                "devices": [{"path": "/dev/fuse", **FUSE, "fileMode": 0o666, "uid": 0, "gid": 0}],
                "resources": {"devices": devices},
                **({"rootfsPropagation": "private"} if self.flavour == "guardian" else {}),
            },
        }

    def _mounts(self) -> list[dict[str, Any]]:
        sys_options = ["nosuid", "noexec", "nodev"] + (["ro"] if self.flavour == "guardian" else [])
        mounts: list[dict[str, Any]] = [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_options},
        ]
        if self.flavour == "concourse":
            mounts.append(
                {
                    "destination": "/sys/fs/cgroup",
                    "type": "cgroup",
                    "source": "cgroup",
                    "options": ["nosuid", "noexec", "nodev", "relatime"],
                }
            )
        mounts.append(
            {"destination": "/tmp/gdn-init", "type": "bind", "source": self.init_path, "options": ["bind", "ro"]}
        )
        for name in ("hosts", "hostname", "resolv.conf"):
            mounts.append(
                {"destination": f"/etc/{name}", "type": "bind", "source": f"{self.etc_dir}/{name}", "options": ["bind"]}
            )
        for source, target, read_only in self.binds:
            mounts.append(
                {
                    "destination": target,
                    "type": "bind",
                    "source": source,
                    "options": ["rbind", "ro" if read_only else "rw"],
                }
            )
        return mounts
