"""Data root placement (memory or disk) from fake meminfo and cgroup files, on both sides of the threshold."""

from __future__ import annotations

from pathlib import Path

import pytest
from compose_env.engine import storage
from compose_env.engine.storage import GIB, MemoryBudget, choose_placement, memory_available
from compose_env.errors import UserError

MIB = 1024**2


def fake_proc(tmp_path: Path, mem_available: int, self_cgroup: str) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(
        f"MemTotal:       {64 * GIB // 1024} kB\nMemFree:        {GIB // 1024} kB\nMemAvailable:   "
        f"{mem_available // 1024} kB\n"
    )
    (proc / "self" / "cgroup").write_text(self_cgroup)
    return proc


def fake_v2(tmp_path: Path, limit: str, current: int, inactive_file: int = 0) -> Path:
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "memory.max").write_text(limit + "\n")
    (root / "memory.current").write_text(f"{current}\n")
    (root / "memory.stat").write_text(f"anon 1000\nfile {inactive_file}\ninactive_file {inactive_file}\n")
    return root


def fake_v1(tmp_path: Path, limit: int, usage: int, hierarchical: int | None = None, inactive_file: int = 0) -> Path:
    root = tmp_path / "cgroup"
    memory = root / "memory"
    memory.mkdir(parents=True)
    (memory / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (memory / "memory.usage_in_bytes").write_text(f"{usage}\n")
    (memory / "memory.stat").write_text(
        "cache 0\nhierarchical_memory_limit "
        f"{hierarchical if hierarchical is not None else limit}\ntotal_inactive_file {inactive_file}\n"
    )
    return root


# ---------------------------------------------------------------- what is available


def test_without_a_cgroup_limit_memavailable_decides(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 20 * GIB, "0::/\n")
    cgroup = fake_v2(tmp_path, "max", 3 * GIB)

    assert memory_available(proc, cgroup) == MemoryBudget(20 * GIB, "MemAvailable")


def test_a_cgroup_v2_limit_below_memavailable_decides_and_reclaimable_cache_is_not_counted(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 20 * GIB, "0::/\n")
    cgroup = fake_v2(tmp_path, str(8 * GIB), current=3 * GIB, inactive_file=1 * GIB)

    budget = memory_available(proc, cgroup)

    assert budget.available == 6 * GIB  # 8 - (3 - 1)
    assert budget.source.startswith("cgroup v2 memory.max")


def test_cgroup_v2_limit_of_an_ancestor_counts_when_our_path_is_visible(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 20 * GIB, "0::/job/init\n")
    cgroup = fake_v2(tmp_path, "max", 0)
    (cgroup / "job" / "init").mkdir(parents=True)
    (cgroup / "job" / "memory.max").write_text(f"{4 * GIB}\n")
    (cgroup / "job" / "memory.current").write_text(f"{1 * GIB}\n")
    (cgroup / "job" / "init" / "memory.max").write_text("max\n")

    assert memory_available(proc, cgroup).available == 3 * GIB


def test_a_cgroup_v1_limit_decides_through_the_hierarchical_limit(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 20 * GIB, "12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n")
    unlimited = 9223372036854771712
    cgroup = fake_v1(tmp_path, limit=unlimited, usage=2 * GIB, hierarchical=6 * GIB, inactive_file=512 * MIB)

    budget = memory_available(proc, cgroup)

    assert budget.available == 6 * GIB - (2 * GIB - 512 * MIB)
    assert budget.source.startswith("cgroup v1 memory limit")


def test_an_unlimited_cgroup_v1_leaves_memavailable(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 5 * GIB, "12:memory:/\n")
    cgroup = fake_v1(tmp_path, limit=9223372036854771712, usage=GIB)

    assert memory_available(proc, cgroup) == MemoryBudget(5 * GIB, "MemAvailable")


# ---------------------------------------------------------------- the decision


IMAGES = 460 * MIB  # the seed scenario: 3 × 0.45 GiB + 1 GiB = 2.35 GiB needed


@pytest.mark.parametrize(
    ("available", "medium"),
    [(int(3.4 * GIB), "memory"), (int(3.3 * GIB), "disk")],
    ids=["just-enough-memory", "just-short-of-memory"],
)
def test_auto_picks_memory_only_when_images_and_headroom_fit(tmp_path: Path, available: int, medium: str) -> None:
    placement = choose_placement("auto", str(tmp_path / "docker"), IMAGES, MemoryBudget(available, "MemAvailable"))

    assert placement.medium == medium
    assert "need 2.3 GiB" in placement.reason
    assert placement.reason.startswith("auto:")
    assert placement.summary().startswith(f"{medium} (need 2.3 GiB, ")


def test_auto_from_real_style_files_on_both_sides_of_the_threshold(tmp_path: Path) -> None:
    low = tmp_path / "low"
    high = tmp_path / "high"
    for base, limit in ((low, 3 * GIB), (high, 8 * GIB)):
        base.mkdir()
        proc = fake_proc(base, 30 * GIB, "0::/\n")
        cgroup = fake_v2(base, str(limit), current=256 * MIB)
        budget = memory_available(proc, cgroup)
        placement = choose_placement("auto", str(base / "docker"), IMAGES, budget)
        assert placement.medium == ("disk" if base is low else "memory"), placement.reason


def test_disk_is_disk_without_reading_memory(tmp_path: Path) -> None:
    placement = choose_placement("disk", str(tmp_path / "docker"), IMAGES, None)

    assert placement.medium == "disk"
    assert placement.summary() == "disk"


def test_forced_memory_warns_when_short(tmp_path: Path) -> None:
    placement = choose_placement("memory", str(tmp_path / "docker"), IMAGES, MemoryBudget(2 * GIB, "MemAvailable"))

    assert placement.medium == "memory"
    assert placement.short_of_memory
    assert "memory is short" in placement.reason
    assert placement.tmpfs_size >= placement.need


def test_a_tmpfs_never_hides_existing_files(tmp_path: Path) -> None:
    data_root = tmp_path / "inputs"
    data_root.mkdir()
    (data_root / "build").mkdir()

    assert choose_placement("auto", str(data_root), IMAGES, MemoryBudget(64 * GIB, "MemAvailable")).medium == "disk"
    with pytest.raises(UserError) as raised:
        choose_placement("memory", str(data_root), IMAGES, MemoryBudget(64 * GIB, "MemAvailable"))
    assert raised.value.path == "source.dockerd.data_root"


def test_never_a_tmpfs_over_tmp() -> None:
    placement = choose_placement("auto", "/tmp", IMAGES, MemoryBudget(64 * GIB, "MemAvailable"))

    assert placement.medium == "disk"


# ---------------------------------------------------------------- the driver


def test_explicit_driver_is_taken_as_given(tmp_path: Path) -> None:
    choice = storage.choose_driver("vfs", str(tmp_path))

    assert choice.driver == "vfs"
    assert "source.dockerd.storage_driver is vfs" in choice.reason


def test_auto_driver_falls_back_to_vfs_with_a_warning_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "overlay_works", lambda directory: False)
    monkeypatch.setattr(storage, "ensure_fuse_device", lambda: "")

    choice = storage.choose_driver("auto", str(tmp_path))

    assert choice.driver == "vfs"
    assert "slow" in choice.reason


def test_auto_driver_prefers_fuse_overlayfs_when_its_test_mount_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage, "overlay_works", lambda directory: False)
    monkeypatch.setattr(storage, "ensure_fuse_device", lambda: "/dev/fuse is there")
    monkeypatch.setattr(storage, "fuse_overlay_works", lambda directory: True)

    assert storage.choose_driver("auto", str(tmp_path)).driver == "fuse-overlayfs"
