"""cgroup preparation on fake cgroupfs trees: the v2 nesting dance (this VM is v1) and v1 grouping."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from compose_env import cgroups


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
    return fake_file(tmp_path, "mountinfo", f"35 30 0:30 / {root} {options},nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw\n")


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


def test_v2_outside_our_own_namespace_never_writes_to_the_cgroup_tree(tmp_path: Path) -> None:
    root = fake_v2_root(tmp_path)
    before = {p.name: p.read_text() for p in root.iterdir()}
    self_cgroup = fake_file(tmp_path, "self-cgroup", "0::/system.slice/docker-0123.scope\n")

    actions = cgroups.prepare_v2(str(root), self_cgroup, fake_mountinfo(tmp_path, root, "rw"))

    assert not (root / "init").exists()
    assert {p.name: p.read_text() for p in root.iterdir()} == before
    assert "left the (host's) cgroup tree as it is" in actions[0]


def test_v2_at_the_root_of_our_namespace_does_the_dance(tmp_path: Path) -> None:
    root = fake_v2_root(tmp_path)
    self_cgroup = fake_file(tmp_path, "self-cgroup", "0::/\n")

    actions = cgroups.prepare_v2(str(root), self_cgroup, fake_mountinfo(tmp_path, root, "rw"))

    assert (root / "init" / "cgroup.procs").exists()
    assert (root / "cgroup.subtree_control").read_text() == "+cpuset +cpu +io +memory +pids"
    assert any(a.startswith("enabled controllers") for a in actions)


@pytest.mark.parametrize(
    ("content", "own"),
    [("0::/\n", True), ("0::/init\n", False), ("0::/system.slice/x.scope\n", False), ("12:memory:/\n0::/\n", False)],
)
def test_own_namespace_means_exactly_0_colon_colon_slash(tmp_path: Path, content: str, own: bool) -> None:
    assert cgroups.in_own_cgroup_namespace(fake_file(tmp_path, "c", content)) is own


def test_version_is_2_when_the_root_has_cgroup_controllers(tmp_path: Path) -> None:
    assert cgroups.cgroup_version(str(fake_v2_root(tmp_path))) == 2
    assert cgroups.cgroup_version(str(tmp_path)) == 1


def test_v1_groupings_keep_co_mounted_controllers_together(tmp_path: Path) -> None:
    proc_cgroups = fake_file(
        tmp_path,
        "cgroups",
        "#subsys_name\thierarchy\tnum_cgroups\tenabled\n"
        "cpuset\t3\t1\t1\ncpu\t4\t1\t1\ncpuacct\t4\t1\t1\nmemory\t5\t1\t1\nnet_cls\t6\t1\t1\nnet_prio\t6\t1\t1\nrdma\t0\t1\t0\n",
    )
    self_cgroup = fake_file(tmp_path, "self", "6:net_cls,net_prio:/\n5:memory:/\n4:cpu,cpuacct:/\n3:cpuset:/\n1:name=systemd:/\n")

    assert cgroups._v1_groupings(proc_cgroups, self_cgroup) == ["cpuset", "cpu,cpuacct", "memory", "net_cls,net_prio"]


def test_unified_only_host_is_recognised(tmp_path: Path) -> None:
    assert cgroups.unified_only(fake_file(tmp_path, "a", "0::/\n"))
    assert not cgroups.unified_only(fake_file(tmp_path, "b", "1:name=systemd:/\n0::/\n"))
