"""The harness's worker container spec: Concourse's table, within what this host can give."""

from __future__ import annotations

from worker_spec import CONCOURSE_CAPABILITIES, WorkerContainerSpec, capabilities_within

ALL = (1 << 41) - 1
WITHOUT_SYS_RESOURCE = ALL & ~(1 << 24)


def spec(flavour: str) -> WorkerContainerSpec:
    return WorkerContainerSpec(
        flavour, "/b/rootfs", ["PATH=/usr/bin"], "/run/netns/x", "/init", "/b/etc", [("/b/scratch", "/scratch", False)]
    )


def test_concourse_gives_38_capabilities_and_never_perfmon_bpf_or_checkpoint_restore() -> None:
    kept, dropped = capabilities_within(ALL)

    assert len(CONCOURSE_CAPABILITIES) == 38 and len(kept) == 38 and dropped == []
    assert not {"CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"} & set(kept)


def test_a_capability_the_host_lacks_is_dropped_and_named() -> None:
    kept, dropped = capabilities_within(WITHOUT_SYS_RESOURCE)

    assert dropped == ["CAP_SYS_RESOURCE"] and "CAP_SYS_RESOURCE" not in kept
    assert spec("concourse").render(WITHOUT_SYS_RESOURCE)["process"]["capabilities"]["bounding"] == kept


def test_concourse_has_no_cgroup_namespace_a_64_mib_dev_writable_sys_and_only_fuse_beyond_runcs_devices() -> None:
    rendered = spec("concourse").render(ALL)
    mounts = {m["destination"]: m for m in rendered["mounts"]}

    assert [n["type"] for n in rendered["linux"]["namespaces"]] == ["pid", "ipc", "uts", "mount", "network"]
    assert "size=65536k" in mounts["/dev"]["options"]
    assert "ro" not in mounts["/sys"]["options"] and mounts["/sys/fs/cgroup"]["type"] == "cgroup"
    fuse = {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rwm"}
    assert rendered["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}, fuse]
    assert rendered["process"]["args"] == ["/tmp/gdn-init"] and rendered["linux"]["cgroupsPath"] == ""


def test_guardian_has_a_read_only_sys_and_no_cgroup_mount() -> None:
    rendered = spec("guardian").render(ALL)
    mounts = {m["destination"]: m for m in rendered["mounts"]}

    assert "ro" in mounts["/sys"]["options"] and "/sys/fs/cgroup" not in mounts
    assert "USER=root" in rendered["process"]["env"]
    assert rendered["linux"]["rootfsPropagation"] == "private"
