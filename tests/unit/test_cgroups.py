"""cgroup preparation on fake cgroupfs trees: the v2 nesting dance (this VM is v1) and v1 grouping."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from compose_env.engine import cgroups


def fake_v2_root(tmp_path: Path, procs: str = "1\n23\n45\n") -> Path:
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.procs").write_text(procs)
    (root / "cgroup.subtree_control").write_text("")
    return root


def fake_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def fake_mountinfo(tmp_path: Path, root: Path, options: str) -> str:
    return fake_file(
        tmp_path, "mountinfo", f"35 30 0:30 / {root} {options},nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw\n"
    )


def test_v2_in_our_own_namespace_moves_processes_to_init_and_enables_every_controller(tmp_path: Path) -> None:
    root = fake_v2_root(tmp_path)
    writes: list[tuple[str, str]] = []

    def write(path: Path, text: str) -> None:
        writes.append((str(path.relative_to(root)), text))

    actions = cgroups.enable_v2_controllers(str(root), write=write)

    assert (root / "init").is_dir()
    assert writes == [
        ("init/cgroup.procs", "1"),
        ("init/cgroup.procs", "23"),
        ("init/cgroup.procs", "45"),
        ("cgroup.subtree_control", "+cpuset +cpu +io +memory +pids"),
    ]
    assert actions == [f"moved 3 processes to {root}/init", "enabled controllers: cpuset cpu io memory pids"]


def test_v2_retries_while_subtree_control_is_busy(tmp_path: Path) -> None:
    root = fake_v2_root(tmp_path, procs="1\n")
    busy = [2]

    def write(path: Path, text: str) -> None:
        if path.name == "cgroup.subtree_control" and busy[0]:
            busy[0] -= 1
            raise OSError(errno.EBUSY, "Device or resource busy")
        path.write_text(text)

    cgroups.enable_v2_controllers(str(root), write=write)

    assert (root / "cgroup.subtree_control").read_text() == "+cpuset +cpu +io +memory +pids"
    assert busy == [0]


def test_v2_gives_up_when_always_busy(tmp_path: Path) -> None:
    root = fake_v2_root(tmp_path)

    def write(path: Path, text: str) -> None:
        if path.name == "cgroup.subtree_control":
            raise OSError(errno.EBUSY, "Device or resource busy")

    with pytest.raises(OSError, match="stayed busy"):
        cgroups.enable_v2_controllers(str(root), attempts=3, write=write)


@pytest.mark.parametrize(
    ("content", "own"),
    [
        ("0::/\n", True),
        ("12:memory:/\n1:name=systemd:/\n0::/\n", True),
        ("0::/init\n", False),
        ("0::/system.slice/x.scope\n", False),
        ("12:memory:/process_api/7\n5:devices:/\n0::/\n", False),
    ],
)
def test_own_namespace_root_means_every_path_is_slash(tmp_path: Path, content: str, own: bool) -> None:
    assert cgroups.at_namespace_root(cgroups.read_own_cgroups(fake_file(tmp_path, "c", content))) is own


def test_version_is_2_when_the_root_has_cgroup_controllers_or_the_host_has_only_the_unified_hierarchy(
    tmp_path: Path,
) -> None:
    assert cgroups.cgroup_version(str(fake_v2_root(tmp_path)), {}) == 2
    assert cgroups.cgroup_version(str(tmp_path / "none"), {"": "/"}) == 2
    assert cgroups.cgroup_version(str(tmp_path / "none"), {"memory": "/", "": "/"}) == 1


def test_own_cgroup_is_described_once_with_the_hierarchies_that_differ() -> None:
    own = {"cpu": "/ce-1", "devices": "/ce-1", "memory": "/process_api/7/ce-1", "": "/"}
    assert cgroups.describe_own(own) == "/ce-1 (memory /process_api/7/ce-1)"
    assert cgroups.describe_own({"": "/system.slice/x"}) == "/system.slice/x"


def test_v1_groupings_keep_co_mounted_controllers_together_and_skip_unmounted_ones(tmp_path: Path) -> None:
    proc_cgroups = fake_file(
        tmp_path,
        "cgroups",
        "#subsys_name\thierarchy\tnum_cgroups\tenabled\n"
        "cpuset\t3\t1\t1\ncpu\t4\t1\t1\ncpuacct\t4\t1\t1\nmemory\t5\t1\t1\nnet_cls\t6\t1\t1\nnet_prio\t6\t1\t1\nrdma\t0\t1\t0\nmisc\t0\t1\t1\n",
    )
    self_cgroup = fake_file(
        tmp_path, "self", "6:net_cls,net_prio:/\n5:memory:/\n4:cpu,cpuacct:/\n3:cpuset:/\n1:name=systemd:/\n0::/\n"
    )

    assert cgroups.v1_groupings(proc_cgroups, self_cgroup) == [
        "cpuset",
        "cpu,cpuacct",
        "memory",
        "net_cls,net_prio",
        "name=systemd",
    ]


def fake_devices(tmp_path: Path, listed: str) -> Path:
    devices = tmp_path / "devices"
    devices.mkdir()
    (devices / "devices.list").write_text(listed)
    return devices


def test_devices_are_widened_with_a_when_the_parent_allows_it(tmp_path: Path) -> None:
    devices = fake_devices(tmp_path, "c 1:3 rwm\nc 10:229 rwm\n")
    writes: list[str] = []

    action = cgroups.widen_devices(str(devices), write=lambda _path, rule: writes.append(rule))

    assert writes == ["a"]
    assert action == "devices: widened to every device (the worker allowed 2 rules; its parent allows all)"


def test_devices_fall_back_to_wildcard_rules_then_say_what_stays(tmp_path: Path) -> None:
    devices = fake_devices(tmp_path, "c 1:3 rwm\n")
    writes: list[str] = []

    def refuse_a(_path: Path, rule: str) -> None:
        if rule == "a":
            raise OSError(errno.EINVAL, "Invalid argument")
        writes.append(rule)

    assert cgroups.widen_devices(str(devices), write=refuse_a).startswith("devices: widened")
    assert writes == ["c *:* rwm", "b *:* rwm"]

    def refuse(_path: Path, _rule: str) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    assert "could not be widened, the worker's 1 rule stay" in cgroups.widen_devices(str(devices), write=refuse)


def test_devices_that_allow_everything_are_left_alone(tmp_path: Path) -> None:
    devices = fake_devices(tmp_path, "a *:* rwm\n")
    assert (
        cgroups.widen_devices(str(devices), write=lambda *_: pytest.fail("wrote"))
        == "devices: every device allowed already"
    )


def test_sweep_removes_the_parents_subtree_in_every_hierarchy_deepest_first_and_nothing_else(tmp_path: Path) -> None:
    roots = [tmp_path / "memory", tmp_path / "pids"]
    for root in roots:
        for name in ("someone-else", "compose-env/abc/sub", "compose-env/def"):
            (root / name).mkdir(parents=True)
    placement = cgroups.CgroupPlacement(1, "/ce-1", [], roots=[str(r) for r in roots])

    ours = placement.ours()
    killed, problems = placement.sweep(seconds=0.1)

    names = [str(p.relative_to(roots[0])) for p in ours if roots[0] in p.parents]
    assert sorted(names) == ["compose-env", "compose-env/abc", "compose-env/abc/sub", "compose-env/def"]
    assert all(names.index(name) < names.index(os.path.dirname(name)) for name in names if "/" in name)
    assert (killed, problems) == (0, [])
    assert all(sorted(p.name for p in root.iterdir()) == ["someone-else"] for root in roots)


@pytest.mark.parametrize("parent", ["/", "", "/init"])
def test_sweep_never_touches_our_own_cgroup_or_the_v2_leaf(tmp_path: Path, parent: str) -> None:
    assert cgroups.CgroupPlacement(2, "/ce-1", [], roots=[str(tmp_path)], parent=parent).ours() == []


def test_hierarchies_the_runtime_left_at_the_host_root_are_left_out_unless_all_are() -> None:
    own = {"cpu": "/ce-1", "memory": "/process_api/7/ce-1", "net_cls": "/", "hugetlb": "/", "": "/"}
    assert cgroups.not_placed_in(own) == {"net_cls", "hugetlb"}
    assert cgroups.not_placed_in({"cpu": "/", "memory": "/", "": "/"}) == set()


def test_a_second_placement_in_the_same_process_leaves_out_what_the_first_did(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task retries on a fresh cache in the same process: by then every path reads "/"."""
    own = {"cpu": "/ce-1", "devices": "/ce-1", "net_cls": "/", "": "/ce-1"}
    mounted_without: list[frozenset[str]] = []
    monkeypatch.setattr(cgroups, "read_own_cgroups", lambda: own)
    monkeypatch.setattr(cgroups, "cgroup_version", lambda root, own: 1)
    monkeypatch.setattr(cgroups, "in_initial_namespace", lambda: False)
    monkeypatch.setattr(cgroups, "read_mountinfo", lambda: [])
    monkeypatch.setattr(cgroups, "widen_devices", lambda path: "devices left alone")
    monkeypatch.setattr(cgroups, "_v1_hierarchy_dirs", lambda root: [])
    monkeypatch.setattr(cgroups, "_mount_v1", lambda root, tracker, actions, left_out: mounted_without.append(left_out))

    def enter_namespace() -> None:
        own.update({controllers: "/" for controllers in own})

    monkeypatch.setattr(cgroups, "unshare_cgroup_namespace", enter_namespace)
    monkeypatch.setattr(cgroups, "_left_out_on_entry", frozenset())

    cgroups.place(tracker=None, root="/fake")  # type: ignore[arg-type]
    cgroups.place(tracker=None, root="/fake")  # type: ignore[arg-type]

    assert mounted_without == [frozenset({"net_cls"}), frozenset({"net_cls"})]
