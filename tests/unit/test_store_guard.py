"""store_guard and tested_engines: dockerd stays on the graphdriver store, direct writes only on a tested engine."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from compose_env.config.model import DockerdOptions, Source
from compose_env.console import Console
from compose_env.engine import daemon, daemon_argv, store_guard, tested_engines
from compose_env.errors import UserError


@pytest.mark.parametrize("driver", ["overlay2", "fuse-overlayfs", "vfs"])
def test_the_storage_driver_is_always_passed(driver: str) -> None:
    for options in (DockerdOptions(), DockerdOptions(direct_load=False), DockerdOptions(args=("--log-level=warn",))):
        argv = daemon_argv.dockerd_argv(options, driver, "nft", None)
        assert f"--storage-driver={driver}" in argv


@pytest.mark.parametrize(
    "args",
    [
        ["--feature", "containerd-snapshotter"],
        ["--feature=containerd-snapshotter"],
        ["--feature=containerd-snapshotter=true"],
        ["--log-level=warn", "--feature", "containerd-snapshotter=1"],
    ],
)
def test_a_flag_that_turns_the_containerd_snapshotter_on_is_refused(args: list[str]) -> None:
    with pytest.raises(UserError) as refused:
        store_guard.refuse_snapshotter(args, None)

    assert refused.value.path == "source.dockerd.args"
    assert "containerd-snapshotter" in refused.value.message and "direct_load: false" in refused.value.hint


@pytest.mark.parametrize(
    "args", [[], ["--feature=containerd-snapshotter=false"], ["--feature", "other"], ["--log-level=warn"]]
)
def test_flags_that_leave_the_graphdriver_store_are_not_refused(args: list[str]) -> None:
    store_guard.refuse_snapshotter(args, {"features": {"containerd-snapshotter": False}, "log-level": "warn"})


def test_a_daemon_json_that_turns_the_containerd_snapshotter_on_is_refused(tmp_path: Path) -> None:
    daemon_json = tmp_path / "daemon.json"
    daemon_json.write_text(json.dumps({"features": {"containerd-snapshotter": True}}))
    settings, problem = store_guard.read_daemon_json(str(daemon_json))

    with pytest.raises(UserError) as refused:
        store_guard.refuse_snapshotter([], settings, str(daemon_json))

    assert problem == ""
    assert refused.value.path == "source.dockerd.direct_load"
    assert f"{daemon_json} in the image turns on the containerd snapshotter" in refused.value.message


def test_daemon_json_is_read_when_present_and_valid(tmp_path: Path) -> None:
    assert store_guard.read_daemon_json(str(tmp_path / "missing.json")) == (None, "")
    (tmp_path / "broken.json").write_text("{nope")
    settings, problem = store_guard.read_daemon_json(str(tmp_path / "broken.json"))
    assert settings is None and "is not valid JSON" in problem
    (tmp_path / "list.json").write_text("[]")
    assert store_guard.read_daemon_json(str(tmp_path / "list.json"))[1].endswith("is not a JSON object")


@pytest.mark.parametrize(
    ("args", "daemon_json", "changed"),
    [
        (["--userns-remap=default"], None, "source.dockerd.args sets --userns-remap"),
        (["--storage-opt", "overlay2.size=1G"], None, "source.dockerd.args sets --storage-opt"),
        (["--feature=other"], None, "source.dockerd.args sets --feature"),
        ([], {"userns-remap": "default"}, "/etc/docker/daemon.json sets userns-remap"),
        ([], {"storage-opts": ["x"], "log-level": "warn"}, "/etc/docker/daemon.json sets storage-opts"),
        (["--log-level=warn"], {"log-level": "warn"}, ""),
    ],
)
def test_what_moves_or_reshapes_the_store_turns_direct_writes_off(
    args: list[str], daemon_json: dict | None, changed: str
) -> None:
    assert store_guard.store_changed_by(args, daemon_json) == changed


@pytest.mark.parametrize(
    ("info", "problem"),
    [
        ({"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "tmpfs"], ["Supports d_type", "true"]]}, ""),
        ({"Driver": "vfs", "DriverStatus": []}, "dockerd runs with storage driver vfs, not the overlay2 it was given"),
        (
            {"Driver": "overlayfs", "DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]]},
            "dockerd runs on the containerd image store (overlayfs, io.containerd.snapshotter.v1), not the overlay2 "
            "graphdriver",
        ),
        (
            {"Driver": "overlay2", "DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]]},
            "dockerd runs on the containerd image store (overlay2, io.containerd.snapshotter.v1), not the overlay2 "
            "graphdriver",
        ),
    ],
    ids=["graphdriver", "other driver", "snapshotter", "snapshotter named like the driver"],
)
def test_info_after_start_must_show_the_chosen_graphdriver(info: dict, problem: str) -> None:
    assert store_guard.info_problem(info, "overlay2") == problem


# ---------------------------------------------------------------- tested engines


def test_the_version_is_read_from_dockerd_version_output() -> None:
    assert tested_engines.parse_version("Docker version 26.1.5+dfsg1, build 411e817\n") == "26.1.5+dfsg1"
    assert tested_engines.parse_version("Docker version 29.0.0, build abc") == "29.0.0"
    assert tested_engines.parse_version("command not found") == ""


def test_a_tested_version_needs_no_note_and_any_other_gets_one() -> None:
    assert tested_engines.untested_note(tested_engines.TESTED_DOCKERD_VERSIONS[0]) == ""
    note = tested_engines.untested_note("29.0.0")
    assert note.startswith("dockerd 29.0.0 is not among the versions direct writes were tested with (")
    assert note.endswith("): every image goes through docker load")
    assert "version is unreadable" in tested_engines.untested_note("")


def test_the_test_hook_stands_in_for_the_installed_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(tested_engines.TEST_VERSION_ENV, "99.0.0-test")
    probe = subprocess.Popen(["echo", "Docker version 26.1.5+dfsg1, build x"], stdout=subprocess.PIPE, text=True)

    assert tested_engines.probed_version(probe) == "99.0.0-test"


@pytest.mark.parametrize(("installed", "code"), [("26.1.5+dfsg1", 0), ("29.0.0", 1)])
def test_the_image_build_check_fails_loudly_for_an_untested_engine(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], installed: str, code: int
) -> None:
    output = subprocess.CompletedProcess(["dockerd", "--version"], 0, f"Docker version {installed}, build x\n", "")
    monkeypatch.setattr(tested_engines.subprocess, "run", lambda *_args, **_kwargs: output)

    assert tested_engines.main() == code
    if code:
        assert f"ERROR: dockerd {installed} is not among the versions" in capsys.readouterr().err


# ---------------------------------------------------------------- store_writable: may layerstore write before dockerd
# starts

TESTED = tested_engines.TESTED_DOCKERD_VERSIONS[0]
READ_DAEMON_JSON = store_guard.read_daemon_json


def prepared_daemon(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    *,
    version_output: str | None = f"Docker version {TESTED}, build 411e817\n",
    daemon_json: str | None = None,
    direct_load: bool = True,
    args: tuple[str, ...] = (),
) -> Callable[[str], tuple[bool, str]]:
    """What an InnerDaemon's prepare asks of the store: with its `dockerd --version` probe running (a real process
    that prints `version_output`; None: no probe) and the image's /etc/docker/daemon.json holding `daemon_json`."""
    monkeypatch.delenv(tested_engines.TEST_VERSION_ENV, raising=False)
    path = tmp_path / "daemon.json"
    if daemon_json is not None:
        path.write_text(daemon_json)
    monkeypatch.setattr(store_guard, "read_daemon_json", lambda: READ_DAEMON_JSON(str(path)))
    inner = daemon.InnerDaemon(Source(dockerd=DockerdOptions(direct_load=direct_load, args=args)), Console())
    probe = (
        subprocess.Popen(["printf", "%s", version_output], stdout=subprocess.PIPE, text=True)
        if version_output is not None
        else None
    )
    return lambda driver: inner._store_writable(driver, probe)


def test_a_tested_engine_on_overlay2_with_an_untouched_store_is_written_directly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for daemon_json in (None, '{"log-level": "warn"}'):
        store_writable = prepared_daemon(monkeypatch, tmp_path, daemon_json=daemon_json, args=("--log-level=warn",))

        assert store_writable("overlay2") == (True, "")


@pytest.mark.parametrize("driver", ["vfs", "fuse-overlayfs"])
def test_a_driver_other_than_overlay2_is_never_written_and_needs_no_note(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, driver: str
) -> None:
    assert prepared_daemon(monkeypatch, tmp_path)(driver) == (False, "")


def test_direct_load_false_writes_nothing_and_needs_no_note(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    store_writable = prepared_daemon(monkeypatch, tmp_path, version_output=None, direct_load=False, daemon_json="{nope")

    assert store_writable("overlay2") == (False, "")


def test_an_unreadable_daemon_json_sends_every_image_through_docker_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    writable, note = prepared_daemon(monkeypatch, tmp_path, daemon_json="{nope")("overlay2")

    assert not writable
    assert note.startswith(f"{tmp_path / 'daemon.json'} is not valid JSON (")
    assert note.endswith(": every image goes through docker load")


@pytest.mark.parametrize(
    ("args", "daemon_json", "changed"),
    [
        (("--userns-remap=default",), None, "source.dockerd.args sets --userns-remap"),
        ((), '{"data-root": "/elsewhere"}', "/etc/docker/daemon.json sets data-root"),
    ],
)
def test_a_moved_or_reshaped_store_sends_every_image_through_docker_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: tuple[str, ...], daemon_json: str | None, changed: str
) -> None:
    store_writable = prepared_daemon(monkeypatch, tmp_path, args=args, daemon_json=daemon_json)

    assert store_writable("overlay2") == (False, f"{changed}: every image goes through docker load")


@pytest.mark.parametrize(
    ("version_output", "shown"),
    [
        ("Docker version 29.0.0, build abc\n", "dockerd 29.0.0"),
        ("dockerd: command not found\n", "this dockerd (its version is unreadable)"),
        (None, "this dockerd (its version is unreadable)"),
    ],
    ids=["untested", "unreadable", "no probe"],
)
def test_an_engine_direct_writes_were_not_tested_with_sends_every_image_through_docker_load(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, version_output: str | None, shown: str
) -> None:
    writable, note = prepared_daemon(monkeypatch, tmp_path, version_output=version_output)("overlay2")

    assert not writable
    assert note.startswith(f"{shown} is not among the versions direct writes were tested with (")
    assert note.endswith("): every image goes through docker load")
