"""Why an inner container did not start, when the cause is the worker's container: a `diagnosis:` line.

The engine says it in one long line (`Error response from daemon: failed to create task for
container: … runc create failed: … failed to write "c 5:1 rwm": …/devices.allow: operation
not permitted`). These are the causes a CI engineer can only fix on the worker: name the
cause and the worker setting.
"""

from __future__ import annotations

import re

from compose_env.engine.cgroups import DEVICES_HINT, WORKER_HINT

#: A line that reports a container the runtime could not create or start.
RUNTIME_FAILURE = re.compile(
    r"oci runtime|runc create failed|failed to create (task|shim)|error response from daemon|cannot start service",
    re.IGNORECASE,
)
DEVICE_RULE = re.compile(r'failed to write "(?P<rule>[cb] [0-9*]+:[0-9*]+ [rwm]+)"')
#: (pattern, diagnosis); the first that matches wins.
CAUSES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"devices\.(allow|deny)"), "the worker's devices cgroup refused {rule}: " + DEVICES_HINT),
    (
        re.compile(r"error gathering device information|no such device|lstat /dev/\S+: no such file"),
        "a service asks for a device this container does not have: the worker gives only runc's defaults and /dev/fuse;"
        " remove the `devices:` entry, or allow the device on the worker (--containerd-allowed-device)",
    ),
    (
        re.compile(r"cgroup", re.IGNORECASE),
        "the inner container's cgroup could not be made below this container's own: " + WORKER_HINT,
    ),
    (
        re.compile(r"apply caps|capabilit|cap_[a-z_]+", re.IGNORECASE),
        "a service asks for a capability the worker does not give (a privileged Concourse container has 38:"
        " no CAP_PERFMON, CAP_BPF or CAP_CHECKPOINT_RESTORE): remove it from the service's cap_add",
    ),
)


def diagnose_start_failure(line: str) -> str | None:
    """The diagnosis for one line of compose's output, or None when it is not a start failure we know."""
    if not RUNTIME_FAILURE.search(line):
        return None
    for pattern, diagnosis in CAUSES:
        if pattern.search(line):
            rule = DEVICE_RULE.search(line)
            return diagnosis.format(rule=f"`{rule.group('rule')}`" if rule else "a device")
    return None
