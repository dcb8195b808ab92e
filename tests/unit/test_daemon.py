"""Inner daemon decisions that need no daemon: iptables, MTU, argv, diagnosis, readiness, logins."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import docker
import pytest
import requests
from compose_env.config.model import DockerdOptions, RegistryLogin, Source, TlsFiles
from compose_env.console import Console
from compose_env.engine import daemon, daemon_argv, daemon_stop, diagnosis, network, preflight, remote
from compose_env.engine import handle as engine
from compose_env.engine.budget import BUDGET
from compose_env.errors import RuntimeFailure
from compose_env.process import descendants


def fake_proc_net(tmp_path: Path, **tables: str) -> str:
    for name, text in tables.items():
        (tmp_path / name).write_text(text)
    return str(tmp_path)


def works_for(*binaries: str):
    calls: list[str] = []

    def works(binary: str) -> tuple[bool, str]:
        calls.append(binary)
        return (
            (True, "") if binary in binaries else (False, f"{binary}: Failed to initialize nft: Protocol not supported")
        )

    return works, calls


# ---------------------------------------------------------------- iptables


def test_iptables_override_is_taken_without_probing(tmp_path: Path) -> None:
    works, calls = works_for()

    assert network.choose_iptables("legacy", str(tmp_path), works) == ("legacy", "source.dockerd.iptables is legacy")
    assert calls == []


def test_iptables_prefers_nft_when_it_works_and_no_legacy_tables_exist(tmp_path: Path) -> None:
    works, calls = works_for("iptables-nft", "iptables-legacy")

    variant, why = network.choose_iptables("auto", fake_proc_net(tmp_path, ip_tables_names=""), works)

    assert variant == "nft"
    assert calls == ["iptables-nft"]  # never probe legacy: listing creates legacy tables
    assert "no legacy tables" in why


def test_iptables_existing_legacy_tables_win_like_docker_dind(tmp_path: Path) -> None:
    works, calls = works_for("iptables-nft", "iptables-legacy")

    variant, why = network.choose_iptables("auto", fake_proc_net(tmp_path, ip_tables_names="nat\nfilter\n"), works)

    assert variant == "legacy"
    assert "ip_tables_names: nat filter" in why
    assert calls == []


def test_iptables_falls_back_to_legacy_when_nft_fails(tmp_path: Path) -> None:
    works, _ = works_for("iptables-legacy")

    variant, why = network.choose_iptables("auto", str(tmp_path), works)

    assert variant == "legacy"
    assert "Protocol not supported" in why


def test_iptables_off_when_nothing_works(tmp_path: Path) -> None:
    works, _ = works_for()

    assert network.choose_iptables("auto", str(tmp_path), works)[0] == "off"


# ---------------------------------------------------------------- MTU


def test_mtu_comes_from_the_default_route_interface(tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "eth1\t0011A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        "eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    )
    (tmp_path / "net" / "eth0").mkdir(parents=True)
    (tmp_path / "net" / "eth0" / "mtu").write_text("1450\n")

    assert network.default_route_mtu(str(route), str(tmp_path / "net")) == (1450, "eth0")


def test_mtu_unknown_without_a_default_route(tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text("Iface\tDestination\n")

    assert network.default_route_mtu(str(route), str(tmp_path)) == (None, "")


# ---------------------------------------------------------------- dockerd argv


def test_dockerd_argv_passes_every_choice_explicitly_and_user_args_last() -> None:
    options = DockerdOptions(
        data_root="/scratch/d",
        registry_mirrors=("https://mirror.example",),
        insecure_registries=("reg.local:5000",),
        debug=True,
        args=("--log-level=warn",),
    )
    argv = daemon_argv.dockerd_argv(options, "overlay2", "nft", 1450)

    assert argv[0] == "dockerd"
    assert f"--containerd={daemon_argv.CONTAINERD_SOCKET}" in argv
    assert "--storage-driver=overlay2" in argv
    assert "--data-root=/scratch/d" in argv
    assert "--mtu=1450" in argv
    assert "--default-network-opt=bridge=com.docker.network.driver.mtu=1450" in argv
    assert "--registry-mirror=https://mirror.example" in argv
    assert "--insecure-registry=reg.local:5000" in argv
    assert "--debug" in argv
    assert "--iptables=false" not in argv
    assert argv[-1] == "--log-level=warn"


def test_dockerd_argv_without_iptables() -> None:
    argv = daemon_argv.dockerd_argv(DockerdOptions(), "vfs", "off", None)

    assert "--iptables=false" in argv
    assert not any(a.startswith("--mtu") for a in argv)


# ---------------------------------------------------------------- pre-flight and diagnosis


def test_not_privileged_is_reported_with_the_fix(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython3\nCapEff:\t00000000a80425fb\n")  # Docker's default set: no CAP_SYS_ADMIN

    with pytest.raises(RuntimeFailure) as raised:
        preflight.check_privileged(str(status))

    assert "the resource type must be declared `privileged: true`" in raised.value.message
    assert "CAP_SYS_ADMIN" in raised.value.message


@pytest.mark.parametrize(
    ("log", "hint"),
    [
        (
            'level=fatal msg="failed to start daemon: error initializing graphdriver: driver not supported: overlay2"',
            "storage",
        ),
        ("unknown flag: --no-such-flag", "check source.dockerd.args"),
        (
            'level=error msg="failed to create NAT chain DOCKER: iptables failed: iptables -t nat -N DOCKER: iptables v1.8.9 (nf_tables)"',
            "iptables",
        ),
        ('level=fatal msg="mkdir /sys/fs/cgroup/cpuset/docker: read-only file system"', "privileged: true"),
    ],
)
def test_diagnosis_names_the_cause(log: str, hint: str) -> None:
    assert hint in diagnosis.diagnose(log)


def test_diagnosis_ignores_info_lines_that_mention_cgroups_or_iptables() -> None:
    log = 'level=info msg="cgroup driver cgroupfs"\nlevel=debug msg="/usr/sbin/iptables, [--wait -t nat -L]"\nlevel=fatal msg="something new"'

    assert diagnosis.diagnose(log).startswith("no known cause")


# ---------------------------------------------------------------- readiness


def serve_once(path: str, delay: float, response: bytes) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def answer() -> None:
        time.sleep(delay)
        conn, _ = server.accept()
        conn.recv(1024)
        conn.sendall(response)
        conn.close()
        server.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


def test_ping_waits_in_the_backlog_and_returns_the_api_version(tmp_path: Path) -> None:
    path = str(tmp_path / "d.sock")
    serve_once(path, 0.1, b"HTTP/1.1 200 OK\r\nApi-Version: 1.45\r\nContent-Length: 2\r\n\r\nOK")

    started = time.monotonic()
    assert engine.ping(path, 2) == "1.45"
    assert 0.09 < time.monotonic() - started < 1


def test_ping_is_none_without_an_answer_or_on_errors(tmp_path: Path) -> None:
    assert engine.ping(str(tmp_path / "missing.sock"), 0.1) is None
    path = str(tmp_path / "d.sock")
    serve_once(path, 0, b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
    assert engine.ping(path, 1) is None


# ---------------------------------------------------------------- logins, TLS, process tree


def test_registry_logins_go_to_a_private_docker_config(tmp_path: Path) -> None:
    registries = (RegistryLogin("docker.io", "me", "s3cret"), RegistryLogin("ghcr.io", "bot", "t0ken"))

    directory = engine.write_docker_config(registries, str(tmp_path / "cfg"))

    config_file = Path(directory) / "config.json"
    assert config_file.stat().st_mode & 0o777 == 0o600
    auths = json.loads(config_file.read_text())["auths"]
    assert base64.b64decode(auths["ghcr.io"]["auth"]).decode() == "bot:t0ken"
    assert "https://index.docker.io/v1/" in auths


def test_remote_tls_sets_the_cli_variables(tmp_path: Path) -> None:
    source = Source(docker_host="tcp://engine:2376", tls=TlsFiles(ca="CA", cert="CERT", key="KEY"))

    _, env = remote.remote_tls(source, str(tmp_path / "tls"))

    assert env == {"DOCKER_CERT_PATH": str(tmp_path / "tls"), "DOCKER_TLS_VERIFY": "1"}
    assert (tmp_path / "tls" / "key.pem").read_text() == "KEY"
    assert (tmp_path / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600


def test_remote_tls_without_a_ca_encrypts_without_verifying(tmp_path: Path) -> None:
    source = Source(docker_host="tcp://engine:2376", tls=TlsFiles(cert="CERT", key="KEY"))

    _, env = remote.remote_tls(source, str(tmp_path / "tls"))

    assert env["DOCKER_TLS"] == "1"
    assert "DOCKER_TLS_VERIFY" not in env


def test_descendants_lists_children_before_parents() -> None:
    table = {10: (1, b"containerd-shim"), 11: (10, b"redis-server"), 12: (11, b"worker"), 20: (1, b"other")}

    doomed = descendants(table, [10])

    assert set(doomed) == {10, 11, 12}
    assert doomed.index(12) < doomed.index(11) < doomed.index(10)


class LeftBehind:
    """A docker client over a kept data root: what an earlier, killed run left, and one container that will not go."""

    def __init__(self) -> None:
        self.removed: list[str] = []

    def containers(self, all: bool) -> list[dict[str, object]]:
        return [{"Id": "a" * 64, "Names": ["/app-sticky-1"]}, {"Id": "b" * 64, "Names": ["/app-stuck-1"]}]

    def remove_container(self, container_id: str, force: bool, v: bool) -> None:
        if container_id.startswith("b"):
            raise docker.errors.APIError("removal of container is already in progress")
        self.removed.append(container_id[:1])

    def prune_volumes(self, filters: dict[str, str]) -> dict[str, list[str]]:
        assert filters == {"all": "true"}  # named volumes too, as `compose down --volumes` would
        return {"VolumesDeleted": ["app_sticky-data"]}

    def prune_networks(self) -> dict[str, list[str]]:
        raise requests.ConnectionError("engine went away")


def test_what_a_kept_data_root_holds_is_removed_by_name_and_each_failure_said_without_stopping_the_rest() -> None:
    out = io.StringIO()
    client = LeftBehind()

    daemon_stop.clear_left_behind(client, "/cache/docker", Console(out))  # type: ignore[arg-type]

    log = out.getvalue()
    assert client.removed == ["a"]
    assert "held what an earlier run left: removed container app-sticky-1, volume app_sticky-data" in log
    assert "could not remove what an earlier run left: container app-stuck-1: " in log
    assert "could not remove what an earlier run left: networks: engine went away" in log


class StopRecorder:
    """A docker client at teardown: the containers it lists, and every call recorded."""

    def __init__(self, left: int = 1) -> None:
        self.ids = ["a" * 64, "b" * 64][:left]
        self.calls: list[tuple[object, ...]] = []
        self.timeout: float | None = None
        self.prune_failure: Exception | None = None

    def containers(self, quiet: bool, all: bool) -> list[dict[str, object]]:
        self.calls.append(("list", "all" if all else "running"))
        return [{"Id": container_id} for container_id in self.ids]

    def stop(self, container_id: str, timeout: int) -> None:
        self.calls.append(("stop", container_id[:1], timeout))

    def remove_container(self, container_id: str, force: bool, v: bool) -> None:
        self.calls.append(("remove", container_id[:1], force, v))

    def prune_volumes(self, filters: dict[str, str]) -> dict[str, list[str]]:
        self.calls.append(("prune volumes", filters["all"]))
        if self.prune_failure is not None:
            raise self.prune_failure
        return {"VolumesDeleted": ["app_data"]}

    def prune_networks(self) -> dict[str, list[str]]:
        self.calls.append(("prune networks",))
        return {"NetworksDeleted": ["app_default"]}


def stopping_inner(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, client: StopRecorder, data_root: str
) -> tuple[daemon.InnerDaemon, list[float]]:
    """An inner daemon whose dockerd answers through `client`, and the graces its daemons get (recorded, not given).

    Its socket and pid file are in tmp_path: the stop removes them, and a host's must stay.
    """
    monkeypatch.setattr(daemon_stop.docker, "APIClient", lambda **_: client)
    monkeypatch.setattr(daemon, "DOCKER_SOCKET", str(tmp_path / "docker.sock"))
    monkeypatch.setattr(daemon, "DOCKERD_PIDFILE", str(tmp_path / "dockerd.pid"))
    inner = daemon.InnerDaemon(Source(dockerd=DockerdOptions(data_root=data_root)), Console(io.StringIO()))
    inner.api_version = "1.45"  # dockerd answered
    dockerd = SimpleNamespace(poll=lambda: None)
    inner.processes = [("dockerd", dockerd)]  # type: ignore[list-item]
    terminated: list[float] = []
    monkeypatch.setattr(daemon, "terminate", lambda _process, grace: terminated.append(grace))
    monkeypatch.setattr(daemon, "kill_strays", lambda _data_root: 0)
    monkeypatch.setattr(inner, "mounts", SimpleNamespace(made=[], undo=lambda also_below: []))
    return inner, terminated


PRUNES = [("prune volumes", "true"), ("prune networks",)]


@pytest.mark.parametrize(
    ("data_root", "grace", "down_done", "left", "expected"),
    [
        # an abort on a kept data root: what compose down --volumes would remove, through the API
        ("/cache/docker", 0, False, 1, [("list", "all"), ("remove", "a", True, True), *PRUNES]),
        # compose down removed the project: a container it did not know of goes too, with the volumes
        ("/cache/docker", 0, True, 1, [("list", "all"), ("remove", "a", True, True), *PRUNES]),
        ("/cache/docker", 0, True, 0, [("list", "all")]),
        # compose down failed with a grace to give: the containers get it, then go
        ("/cache/docker", 5, False, 1, [("list", "all"), ("stop", "a", 5), ("remove", "a", True, True), *PRUNES]),
        # a data root that goes with the container: stopped with their grace, nothing removed
        (daemon.DEFAULT_DATA_ROOT, 5, False, 1, [("list", "running"), ("stop", "a", 5)]),
        # ... and with none to give, killed with the daemons: no call at all
        (daemon.DEFAULT_DATA_ROOT, 0, False, 1, []),
    ],
)
def test_the_daemon_stop_leaves_a_kept_data_root_as_compose_down_would_and_kills_the_rest(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    data_root: str,
    grace: int,
    down_done: bool,
    left: int,
    expected: list[tuple[object, ...]],
) -> None:
    client = StopRecorder(left)
    inner, terminated = stopping_inner(monkeypatch, tmp_path, client, data_root)

    assert inner.release(grace, down_done=down_done) == []

    assert client.calls == expected
    assert len(terminated) == 1  # dockerd, whatever happened to the containers


def test_the_containers_of_an_abort_are_removed_at_once_and_the_prunes_come_after_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    client = StopRecorder(left=2)
    inner, _ = stopping_inner(monkeypatch, tmp_path, client, "/cache/docker")

    inner.release(0)

    assert client.calls[0] == ("list", "all")
    assert sorted(client.calls[1:3], key=str) == [("remove", "a", True, True), ("remove", "b", True, True)]
    assert client.calls[3:] == PRUNES  # once no container holds them


def test_a_prune_that_fails_in_any_way_still_lets_the_daemons_stop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    client = StopRecorder()
    client.prune_failure = ValueError("unexpected answer")
    inner, terminated = stopping_inner(monkeypatch, tmp_path, client, "/cache/docker")

    problems = inner.release(0)

    assert problems == ["volumes and networks: unexpected answer"]
    assert terminated == [BUDGET.dockerd_after_abort]


def test_the_prunes_get_only_the_time_left_before_the_teardown_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    client = StopRecorder()
    clock = iter([100.0, 102.5])  # before each prune: 2 s left, then none
    monkeypatch.setattr(daemon_stop, "time", SimpleNamespace(monotonic=lambda: next(clock)))

    removed, problems = daemon_stop.prune_volumes_and_networks(client, deadline=102.0)  # type: ignore[arg-type]

    assert client.calls == [("prune volumes", "true")]
    assert client.timeout == 2.0
    assert removed == ["volume app_data"]
    assert problems == ["networks: no time left to remove them (the next run does)"]


def test_a_start_refused_before_it_started_anything_undoes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Another dockerd runs here, say: its socket, pid file and mounts are not ours to remove."""
    socket_file = tmp_path / "docker.sock"
    socket_file.write_text("")
    monkeypatch.setattr(daemon, "DOCKER_SOCKET", str(socket_file))
    monkeypatch.setattr(daemon, "kill_strays", lambda _data_root: pytest.fail("nothing to kill"))
    inner = daemon.InnerDaemon(Source(), Console(io.StringIO()))

    assert inner.abandon() == []
    assert socket_file.exists()
