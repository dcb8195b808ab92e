"""Container start failures the worker's container causes get a diagnosis naming the worker setting."""

from __future__ import annotations

import pytest
from compose_env.engine.start_failures import diagnose_start_failure

DEVICES = (
    "Error response from daemon: failed to create task for container: failed to create shim task: OCI runtime create "
    "failed:"
    " runc create failed: unable to start container process: error during container init: error setting cgroup config "
    "for procHooks process:"
    ' failed to write "c 5:1 rwm": write /sys/fs/cgroup/devices/docker/f14/devices.allow: operation not permitted: unknown'
)


def test_a_refused_device_rule_is_named_with_the_worker_setting() -> None:
    diagnosis = diagnose_start_failure(DEVICES)

    assert diagnosis is not None
    assert diagnosis.startswith("the worker's devices cgroup refused `c 5:1 rwm`")
    assert "--containerd-allowed-device" in diagnosis and "cgroup v2" in diagnosis


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (
            'Error response from daemon: OCI runtime create failed: runc create failed: cannot enter cgroupv2 "/sys/fs/cgroup/docker" with domain'
            " controllers -- it is in threaded mode: unknown",
            "cgroup could not be made below this container's own",
        ),
        (
            'Error response from daemon: error gathering device information while adding custom device "/dev/kvm": no such file or directory',
            "device",
        ),
        (
            "Error response from daemon: OCI runtime create failed: unable to apply caps: operation not permitted: "
            "unknown",
            "CAP_PERFMON",
        ),
    ],
)
def test_placement_device_and_capability_failures_are_recognised(line: str, words: str) -> None:
    assert words in (diagnose_start_failure(line) or "")


@pytest.mark.parametrize(
    "line",
    [
        "test: all passed",
        "Error response from daemon: No such image: example/app:ci",
        "tests-1  | write /sys/fs/cgroup/devices/devices.allow: operation not permitted",  # a service's own output
    ],
)
def test_other_lines_get_no_diagnosis(line: str) -> None:
    assert diagnose_start_failure(line) is None
