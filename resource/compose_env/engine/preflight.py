"""Pre-flight: whether this container can run a daemon at all, and the kernel interfaces dockerd needs.

The privilege check runs before anything is started, so an unprivileged container fails at
once with the fix instead of with a dockerd log full of refused mounts; the kernel interfaces
are prepared while containerd boots.
"""

from __future__ import annotations

import os
import tempfile

from compose_env.engine.handle import RUN_DIR
from compose_env.engine.mounts import (
    MountError,
    MountTracker,
    is_mount_point,
    mount,
    read_mountinfo,
    remount_read_write,
    umount,
)
from compose_env.errors import RuntimeFailure

CAP_SYS_ADMIN = 21
NOT_PRIVILEGED_HINT = (
    "the resource type must be declared `privileged: true`"
    " (in resource_types; for a task, `privileged: true` on the task step)"
)


def effective_capabilities(status: str = "/proc/self/status") -> int:
    with open(status) as handle:
        for line in handle:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def check_privileged(status: str = "/proc/self/status") -> None:
    """Fail at once, with the fix, when the container cannot run a daemon: no CAP_SYS_ADMIN or no mounts."""
    missing = "CAP_SYS_ADMIN is missing" if not effective_capabilities(status) & (1 << CAP_SYS_ADMIN) else ""
    if not missing:
        os.makedirs(RUN_DIR, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=".mount-probe-", dir=RUN_DIR)
        try:
            mount("compose-env-probe", probe, "tmpfs", 0, "size=4k")
            umount(probe)
        except MountError as error:
            missing = f"a test mount failed ({error.strerror})"
        finally:
            os.rmdir(probe)
    if missing:
        raise RuntimeFailure(
            f"this container is not privileged ({missing}): the resource type must be declared `privileged: true`",
            f"{NOT_PRIVILEGED_HINT}\nor set source.docker_host to use an existing engine instead of an inner one",
        )


def prepare_kernel_interfaces(tracker: MountTracker) -> list[str]:
    """securityfs (AppArmor/seccomp checks in runc) and a writable /proc/sys (dockerd sets sysctls)."""
    actions = []
    if os.path.isdir("/sys/kernel/security") and not is_mount_point("/sys/kernel/security"):
        try:
            tracker.mount("securityfs", "/sys/kernel/security", "securityfs")
            actions.append("mounted securityfs")
        except MountError as error:
            actions.append(f"could not mount securityfs ({error.strerror}); AppArmor profiles stay off")
    proc_sys = next((m for m in read_mountinfo() if m.mount_point == "/proc/sys"), None)
    if proc_sys is not None and "ro" in proc_sys.options:
        try:
            remount_read_write("/proc/sys")
            actions.append("remounted /proc/sys read-write")
        except MountError as error:
            actions.append(f"/proc/sys stays read-only ({error.strerror})")
    return actions
