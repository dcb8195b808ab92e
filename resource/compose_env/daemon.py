"""The Docker engine a put runs against: an inner dockerd we start (and stop), or a remote one.

Start order, chosen for speed: containerd first, then dockerd pointed at it with
`--containerd` (dockerd's own managed containerd costs about a second of waiting),
readiness by polling `/_ping` on the unix socket every few milliseconds while
checking that both processes are still alive.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker

from . import cgroups, storage
from .config import RegistryLogin, Source
from .console import Console
from .errors import RuntimeFailure
from .mounts import MountError, MountTracker, is_mount_point, read_mountinfo, remount_read_write

RUN_DIR = "/run/compose-env"
DOCKER_SOCKET = "/var/run/docker.sock"
CONTAINERD_SOCKET = f"{RUN_DIR}/containerd/containerd.sock"
CAP_SYS_ADMIN = 21
PR_SET_PDEATHSIG = 1
API_TIMEOUT = 30
STOP_GRACE_SECONDS = 2.0

_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL if we die, even by SIGKILL."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class DaemonHandle:
    """The engine in use, and everything the later steps need to talk to it."""

    docker_host: str
    env: dict[str, str]
    client: docker.APIClient
    load_client: docker.APIClient
    description: str
    stop: Callable[[], list[str]] = field(default=lambda: [])


# ---------------------------------------------------------------- pre-flight


def effective_capabilities(status: str = "/proc/self/status") -> int:
    with open(status) as handle:
        for line in handle:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def check_privileged(scratch: str) -> None:
    not_privileged = RuntimeFailure(
        "this container is not privileged: the inner Docker daemon cannot start",
        "the resource type must be declared `privileged: true` in resource_types\n"
        "(for `fly execute` or a task: `privileged: true` on the task step; locally: docker run --privileged)",
    )
    if not effective_capabilities() & (1 << CAP_SYS_ADMIN):
        raise not_privileged
    probe = tempfile.mkdtemp(prefix=".mount-probe-", dir=scratch if os.path.isdir(scratch) else None)
    try:
        from .mounts import mount, umount

        mount("compose-env-probe", probe, "tmpfs", 0, "size=4k")
        umount(probe)
    except MountError:
        raise not_privileged from None
    finally:
        os.rmdir(probe)


def prepare_kernel_interfaces(tracker: MountTracker) -> list[str]:
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


# ---------------------------------------------------------------- network


def default_route_mtu(proc_route: str = "/proc/net/route", sys_net: str = "/sys/class/net") -> tuple[int | None, str]:
    """MTU of the interface that carries the default route (black holes come from guessing 1500)."""
    try:
        with open(proc_route) as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                if len(fields) > 1 and fields[1] == "00000000":
                    interface = fields[0]
                    return int(Path(sys_net, interface, "mtu").read_text()), interface
    except (OSError, ValueError, StopIteration):
        pass
    return None, ""


def _iptables_works(binary: str) -> tuple[bool, bool]:
    """(usable, has rules) for an iptables variant in this network namespace."""
    if shutil.which(binary) is None:
        return False, False
    try:
        listed = subprocess.run([binary, "-nL"], capture_output=True, timeout=5)
        if listed.returncode != 0:
            return False, False
        saved = subprocess.run([f"{binary}-save"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False, False
    rules = [line for line in saved.stdout.splitlines() if line.startswith("-")]
    return True, bool(rules)


def choose_iptables(requested: str) -> tuple[str, str]:
    """nft or legacy, like docker:dind: prefer nft unless only legacy works or only legacy has rules."""
    if requested in ("nft", "legacy", "off"):
        return requested, f"source.dockerd.iptables is {requested}"
    nft_ok, nft_rules = _iptables_works("iptables-nft")
    legacy_ok, legacy_rules = _iptables_works("iptables-legacy")
    if nft_ok and (nft_rules or not legacy_rules):
        return "nft", "iptables-nft works" + (" and holds the rules" if nft_rules else "")
    if legacy_ok:
        return "legacy", "iptables-legacy holds the rules" if legacy_rules else "iptables-nft does not work here"
    return "off", "neither iptables-nft nor iptables-legacy works: containers get no NAT (their network still works between them)"


def iptables_path_dir(variant: str) -> str:
    """A PATH directory whose `iptables`/`ip6tables` are the chosen variant, without touching /usr/sbin."""
    directory = f"{RUN_DIR}/bin"
    os.makedirs(directory, exist_ok=True)
    for name in ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"):
        base, _, suffix = name.partition("-")
        target = shutil.which(f"{base}-{variant}" + (f"-{suffix}" if suffix else ""))
        link = os.path.join(directory, name)
        if os.path.lexists(link):
            os.unlink(link)
        if target:
            os.symlink(target, link)
    return directory


# ---------------------------------------------------------------- registries and TLS


def write_docker_config(registries: tuple[RegistryLogin, ...], directory: str) -> str:
    """A DOCKER_CONFIG with the logins, so compose can pull without `docker login` (no password printed)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    auths = {}
    for registry in registries:
        token = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
        auths[registry.host] = {"auth": token}
        if registry.host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
            auths["https://index.docker.io/v1/"] = {"auth": token}
    path = os.path.join(directory, "config.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"auths": auths}, handle)
    return directory


def make_clients(base_url: str, tls: docker.tls.TLSConfig | bool = False) -> tuple[docker.APIClient, docker.APIClient]:
    """A client for short calls, and one without a read timeout for image loads."""
    client = docker.APIClient(base_url=base_url, version="auto", timeout=API_TIMEOUT, tls=tls)
    load_client = docker.APIClient(base_url=base_url, version=client.api_version, timeout=None, tls=tls)
    return client, load_client


def connect_remote(source: Source, console: Console, config_dir: str) -> DaemonHandle:
    """`source.docker_host`: use that engine, start nothing, stop nothing."""
    assert source.docker_host
    env = {"DOCKER_HOST": source.docker_host, "DOCKER_CONFIG": write_docker_config(source.registries, config_dir)}
    tls: docker.tls.TLSConfig | bool = False
    if source.tls:
        cert_dir = tempfile.mkdtemp(prefix="compose-env-tls-")
        for name, value in (("ca.pem", source.tls.ca), ("cert.pem", source.tls.cert), ("key.pem", source.tls.key)):
            if value:
                Path(cert_dir, name).write_text(value)
                os.chmod(Path(cert_dir, name), 0o600)
        client_cert = (f"{cert_dir}/cert.pem", f"{cert_dir}/key.pem") if source.tls.cert and source.tls.key else None
        tls = docker.tls.TLSConfig(client_cert=client_cert, ca_cert=f"{cert_dir}/ca.pem" if source.tls.ca else None, verify=bool(source.tls.ca))
        env.update({"DOCKER_TLS_VERIFY": "1" if source.tls.ca else "", "DOCKER_CERT_PATH": cert_dir})
    base_url = source.docker_host.replace("tcp://", "https://", 1) if source.tls else source.docker_host
    deadline = time.monotonic() + source.startup_timeout
    while True:
        try:
            client, load_client = make_clients(base_url, tls)
            info = client.info()
            break
        except Exception as error:
            if time.monotonic() > deadline:
                raise RuntimeFailure(
                    f"source.docker_host: cannot reach the engine at {source.docker_host}",
                    f"{error}\ncheck the address, that the engine listens there, and the tls settings",
                ) from None
            time.sleep(0.5)
    description = f"remote {info.get('ServerVersion', '?')} {info.get('Driver', '?')}"
    console.info(f"using the engine at {source.docker_host}: Docker {info.get('ServerVersion')}, storage driver {info.get('Driver')}")
    return DaemonHandle(source.docker_host, env, client, load_client, description)


# ---------------------------------------------------------------- the inner daemon


def _ping(socket_path: str, timeout: float = 0.5) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(socket_path)
            conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status_line = conn.recv(64).split(b"\r\n", 1)[0]
            return status_line.startswith(b"HTTP/1.") and b" 200" in status_line
    except OSError:
        return False


def tail_file(path: str, lines: int = 25) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - 16384, 0))
            text = handle.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def diagnose(log_text: str) -> str:
    """Known dockerd/containerd start failures → what to change."""
    checks = [
        (("operation not permitted", "permission denied"), "a permission was refused: is the resource type declared `privileged: true`?"),
        (("cgroup", "cgroups"), "cgroups: the container's cgroup tree is not usable; check the worker's cgroup setup (v1/v2) or set source.dockerd.args"),
        (("iptables", "nat", "nf_tables"), "iptables: try source.dockerd.iptables: legacy (or nft); `off` disables NAT"),
        (
            ("overlay", "storage-driver", "graphdriver", "driver not supported"),
            "storage: set source.dockerd.storage_driver (fuse-overlayfs or vfs) or move data_root",
        ),
        (("no space left",), "the data root is out of space: free space on the worker or set source.dockerd.data_root_medium: disk"),
        (("address already in use", "pid file found"), "another dockerd is running in this container"),
        (("unknown flag", "flag provided but not defined", "invalid argument"), "dockerd rejected a flag: check source.dockerd.args"),
    ]
    lowered = log_text.lower()
    hints = [hint for words, hint in checks if any(word in lowered for word in words)]
    return "\n".join(hints) or "see the daemon log above"


class InnerDaemon:
    """containerd + dockerd in this container, with everything needed to undo them."""

    def __init__(self, source: Source, console: Console, scratch: str = "/scratch") -> None:
        self.source = source
        self.options = source.dockerd
        self.console = console
        self.scratch = scratch
        self.mounts = MountTracker()
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.log_dir = f"{RUN_DIR}/logs"
        self.data_root = self.options.data_root
        self._stopped = False
        self._lock = threading.Lock()

    # -- start

    def prepare(self, images_bytes: int) -> tuple[storage.Placement, storage.DriverChoice]:
        """Everything before spawning: privileges, cgroups, storage. Pure setup, no daemon yet."""
        check_privileged(self.scratch)
        for directory in (RUN_DIR, self.log_dir):
            os.makedirs(directory, exist_ok=True)
        report = cgroups.prepare(self.mounts)
        self.console.info(f"cgroup v{report.version}: " + ("; ".join(report.actions) or "ready as they are"))
        for action in prepare_kernel_interfaces(self.mounts):
            self.console.info(action)
        placement = storage.choose_placement(self.options.data_root_medium, self.data_root, images_bytes, None)
        storage.mount_placement(placement, self.mounts)
        self.console.info(f"data root {placement.data_root} on {placement.medium}: {placement.reason}")
        try:
            driver = storage.choose_driver(self.options.storage_driver, placement.data_root)
        except OSError as error:
            raise RuntimeFailure(f"cannot use the data root {placement.data_root}: {error}") from None
        (self.console.warn if driver.driver == "vfs" else self.console.info)(f"storage driver {driver.driver}: {driver.reason}")
        return placement, driver

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(f"{self.log_dir}/{name}.log", "ab")  # noqa: SIM115 - the child owns it
        with log:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, preexec_fn=die_with_parent, start_new_session=True)
        self.processes.append((name, process))
        return process

    def dockerd_argv(self, driver: str, iptables: str, mtu: int | None) -> list[str]:
        argv = [
            "dockerd",
            f"--containerd={CONTAINERD_SOCKET}",
            f"--data-root={self.data_root}",
            f"--exec-root={RUN_DIR}/docker",
            f"--pidfile={RUN_DIR}/dockerd.pid",
            f"--host=unix://{DOCKER_SOCKET}",
            f"--storage-driver={driver}",
            "--shutdown-timeout=1",
        ]
        if mtu:
            argv += [f"--mtu={mtu}", f"--default-network-opt=bridge=com.docker.network.driver.mtu={mtu}"]
        if iptables == "off":
            argv += ["--iptables=false", "--ip6tables=false"]
        argv += [f"--registry-mirror={m}" for m in self.options.registry_mirrors]
        argv += [f"--insecure-registry={r}" for r in self.options.insecure_registries]
        if self.options.debug:
            argv.append("--debug")
        return argv + list(self.options.args)

    def _remove_stale_files(self) -> None:
        for path in (DOCKER_SOCKET, f"{RUN_DIR}/dockerd.pid", CONTAINERD_SOCKET, f"{self.data_root}/docker.pid"):
            if os.path.lexists(path):
                os.unlink(path)

    def start(self, placement: storage.Placement, driver: storage.DriverChoice, config_dir: str) -> DaemonHandle:
        iptables, why = choose_iptables(self.options.iptables)
        self.console.info(f"iptables: {iptables} ({why})")
        if self.options.mtu:
            mtu, mtu_why = self.options.mtu, "source.dockerd.mtu"
        else:
            mtu, interface = default_route_mtu()
            mtu_why = f"from {interface}, the default-route interface" if mtu else "no default route: dockerd's default"
        self.console.info(f"mtu: {mtu or 1500} ({mtu_why})")

        self._remove_stale_files()
        env = dict(os.environ)
        env.pop("DOCKER_HOST", None)
        if iptables != "off":
            env["PATH"] = iptables_path_dir(iptables) + ":" + env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        containerd_root = os.path.join(self.data_root, "containerd")
        os.makedirs(os.path.dirname(CONTAINERD_SOCKET), exist_ok=True)
        config_path = f"{RUN_DIR}/containerd.toml"
        Path(config_path).write_text(
            'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'root = "{containerd_root}"\nstate = "{RUN_DIR}/containerd/state"\n'
            f'[grpc]\n  address = "{CONTAINERD_SOCKET}"\n'
        )
        containerd = self._spawn("containerd", ["containerd", "--config", config_path] + (["--log-level", "debug"] if self.options.debug else []), env)
        # dockerd retries its containerd connection, so it can start alongside.
        dockerd = self._spawn("dockerd", self.dockerd_argv(driver.driver, iptables, mtu), env)
        self._wait_ready(containerd, dockerd)

        client, load_client = make_clients(f"unix://{DOCKER_SOCKET}")
        info = client.info()
        if info.get("Driver") != driver.driver:
            raise RuntimeFailure(
                f"dockerd started with storage driver {info.get('Driver')}, not {driver.driver}",
                "set source.dockerd.storage_driver explicitly",
            )
        description = f"{info.get('ServerVersion', '?')} {driver.driver} {placement.medium}"
        env_out = {"DOCKER_HOST": f"unix://{DOCKER_SOCKET}", "DOCKER_CONFIG": write_docker_config(self.source.registries, config_dir)}
        return DaemonHandle(f"unix://{DOCKER_SOCKET}", env_out, client, load_client, description, self.stop)

    def _wait_ready(self, containerd: subprocess.Popen[bytes], dockerd: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.source.startup_timeout
        delay = 0.005
        while True:
            for name, process in (("containerd", containerd), ("dockerd", dockerd)):
                if process.poll() is not None:
                    self._fail_start(f"{name} exited with code {process.returncode} while starting", name)
            if os.path.exists(DOCKER_SOCKET) and _ping(DOCKER_SOCKET):
                return
            if time.monotonic() > deadline:
                self._fail_start(f"dockerd did not answer within source.startup_timeout ({self.source.startup_timeout:g}s)", "dockerd")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)

    def _fail_start(self, message: str, name: str) -> None:
        logs = {n: tail_file(f"{self.log_dir}/{n}.log") for n in ("containerd", "dockerd")}
        shown = f"last lines of the {name} log:\n{logs[name]}"
        raise RuntimeFailure(f"the inner Docker daemon did not start: {message}", f"{shown}\n\ndiagnosis: {diagnose(logs['dockerd'] + logs['containerd'])}")

    # -- stop

    def stop(self) -> list[str]:
        """Idempotent, bounded teardown: kill containers, stop dockerd and containerd, unmount."""
        with self._lock:
            if self._stopped:
                return []
            self._stopped = True
        problems: list[str] = []
        self._kill_containers(problems)
        for name in ("dockerd", "containerd"):
            for process_name, process in self.processes:
                if process_name == name:
                    self._terminate(process, STOP_GRACE_SECONDS)
        self._kill_shims()
        problems += self.mounts.undo(also_below=(self.data_root, RUN_DIR))
        for path in (DOCKER_SOCKET,):
            if os.path.lexists(path):
                os.unlink(path)
        return problems

    def _kill_containers(self, problems: list[str]) -> None:
        if not any(p.poll() is None for n, p in self.processes if n == "dockerd") or not os.path.exists(DOCKER_SOCKET):
            return
        try:
            client = docker.APIClient(base_url=f"unix://{DOCKER_SOCKET}", version="auto", timeout=3)
            running = client.containers(quiet=True)
            threads = [threading.Thread(target=_quietly, args=(client.kill, c["Id"])) for c in running]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(3)
        except Exception as error:
            problems.append(f"listing containers: {error}")

    @staticmethod
    def _terminate(process: subprocess.Popen[bytes], grace: float) -> None:
        if process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(2)

    def _kill_shims(self) -> None:
        """containerd shims outlive containerd by design: kill the ones that belong to ours."""
        marker = CONTAINERD_SOCKET.encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and marker in cmdline:
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _quietly(function: Callable[..., object], *args: object) -> None:
    try:
        function(*args)
    except Exception:
        pass
