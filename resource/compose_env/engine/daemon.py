"""The inner containerd + dockerd: started in this container, waited for, and stopped again.

Start order, chosen for speed. dockerd with its own managed containerd spends about a
second waiting: it dials containerd before containerd listens, and gRPC's first retry
comes after a 1 s backoff. So containerd starts first, right after the privilege check
(its state lives under /run, not in the data root); the cgroup, storage and iptables work
overlaps its boot; dockerd starts the moment containerd's socket exists, pointed at it
with `--containerd` and every choice passed explicitly (`engine.daemon_argv`). Readiness:
one `/_ping` request waits in the socket's backlog and is answered the moment the API
serves; the processes are checked for life between attempts; a failed start ends in
`engine.diagnosis`' hints.

Stop: one idempotent function, bounded in time, for every way a put ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import requests

from compose_env import lazy_imports
from compose_env.concurrency import Workers
from compose_env.config.model import DEFAULT_DATA_ROOT, Source
from compose_env.console import Console
from compose_env.engine import cgroups, storage, store_guard, tested_engines
from compose_env.engine.daemon_argv import CONTAINERD_SOCKET, DOCKER_SOCKET, DOCKERD_PIDFILE, cgroup_parent, containerd_argv, dockerd_argv
from compose_env.engine.diagnosis import diagnose, error_lines
from compose_env.engine.handle import RUN_DIR, DaemonHandle, make_clients, ping, write_docker_config
from compose_env.engine.mounts import MountError, MountTracker, read_mountinfo, umount
from compose_env.engine.network import choose_iptables, default_route_mtu, iptables_path_dir
from compose_env.engine.preflight import check_privileged, prepare_kernel_interfaces
from compose_env.errors import DaemonStartFailure, RuntimeFailure
from compose_env.logtail import last_lines
from compose_env.process import descendants, dying_with_parent, process_table

#: Seconds dockerd and containerd get after SIGTERM before SIGKILL.
DAEMON_GRACE_SECONDS = 1.5
#: The same after an abort (containers are already killed): the whole teardown must fit in
#: Concourse's 10 s before SIGKILL even when every step runs to its bound (a SIGTERM during a
#: normal teardown: compose down 3 s + containers 2 s + dockerd 1 + 1 s + containerd 1 s).
ABORT_DAEMON_GRACE_SECONDS = 1.0
#: How long a SIGKILLed daemon gets to disappear before the sweep goes on without it.
REAP_SECONDS = 1.0
#: One deadline for the container calls at teardown, on top of stop_grace: listing, stopping and
#: removing them, and pruning volumes and networks.
CONTAINER_STOP_SECONDS = 2.0


@dataclass(frozen=True)
class PreparedStore:
    """The data root and driver dockerd will get; `writable`: layerstore may write images into it first.

    `note`: why not, when that is worth a line in the log (an untested engine, a reshaped store).
    """

    data_root: str
    driver: str
    writable: bool
    note: str = ""


class InnerDaemon:
    """containerd + dockerd in this container, with everything needed to undo them."""

    def __init__(self, source: Source, console: Console) -> None:
        self.source = source
        self.options = source.dockerd
        self.console = console
        self.mounts = MountTracker()
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.log_dir = f"{RUN_DIR}/logs"
        self.data_root = self.options.data_root
        self._ready = False
        self._api_version = ""
        self._stopped = False
        self._lock = threading.Lock()
        #: Set by launch(): the teardown finds it even if the put failed before it got it.
        self.handle: DaemonHandle | None = None
        # Set by prepare(), used by launch().
        self._started = self._prepared = 0.0
        self._base_env: dict[str, str] = {}
        self._containerd: subprocess.Popen[bytes] | None = None
        self._placement: storage.Placement | None = None
        self._driver = self._iptables = ""
        self._mtu_value: int | None = None
        #: Set by prepare(): where the inner containers' cgroups go, and how to sweep them out.
        self.cgroups: cgroups.CgroupPlacement | None = None
        self._version_probe: subprocess.Popen[str] | None = None

    # -- start

    def start(self, images_bytes: int, config_dir: str) -> DaemonHandle:
        """Pre-flight, containerd, cgroups, data root, probes, dockerd, readiness; all decisions logged."""
        self.prepare(images_bytes, loads_images=images_bytes > 0)
        return self.launch(config_dir)

    def prepare(self, images_bytes: int, loads_images: bool) -> PreparedStore:
        """Everything before dockerd: checks, containerd (starting meanwhile), cgroups, data root, driver, network.

        Between this and `launch`, the data root is ours: layerstore writes images into it.
        `images_bytes`: what the images to load take; `loads_images`: whether there are any (if not,
        none is written directly, and dockerd's version is not asked).
        """
        self._started = time.monotonic()
        check_privileged()
        if self.options.direct_load:
            store_guard.refuse_snapshotter(self.options.args, store_guard.read_daemon_json()[0])
            if loads_images:  # with no image to write, nobody waits for dockerd's version
                self._version_probe = tested_engines.start_version_probe()
        for directory in (RUN_DIR, self.log_dir, os.path.dirname(CONTAINERD_SOCKET)):
            os.makedirs(directory, exist_ok=True)
        self._remove_stale_files()
        # Before any child: the cgroup namespace entered here is the one they all inherit.
        try:
            self.cgroups = cgroups.place(self.mounts, parent=cgroup_parent(self.options.args))
        except cgroups.PlacementError as error:
            raise RuntimeFailure(str(error), cgroups.WORKER_HINT) from None
        self.console.info(self.cgroups.summary())
        # containerd boots in 0.1-0.3 s and needs none of what follows: start it now.
        self._base_env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        self._containerd = self._spawn("containerd", containerd_argv(self.options.debug), self._base_env)

        for action in prepare_kernel_interfaces(self.mounts):
            self.console.info(action)
        placement = storage.choose_placement(self.options.data_root_medium, self.data_root, images_bytes)
        (self.console.warn if placement.short_of_memory else self.console.info)(f"data root {placement.data_root} on {placement.medium}: {placement.reason}")
        try:
            storage.mount_placement(placement, self.mounts)
        except MountError as error:
            raise RuntimeFailure(f"cannot mount a tmpfs for the data root: {error}", "set source.dockerd.data_root_medium: disk") from None
        try:
            driver = storage.choose_driver(self.options.storage_driver, placement.data_root)
        except OSError as error:
            raise RuntimeFailure(f"cannot use the data root {placement.data_root}: {error}") from None
        (self.console.warn if driver.driver == "vfs" else self.console.info)(f"storage driver {driver.driver}: {driver.reason}")
        iptables, iptables_why = choose_iptables(self.options.iptables)
        (self.console.warn if iptables == "off" else self.console.info)(f"iptables: {iptables} ({iptables_why})")
        mtu, mtu_why = self._mtu()
        self.console.info(f"mtu: {mtu or 1500} ({mtu_why})")
        self._placement, self._driver, self._iptables, self._mtu_value = placement, driver.driver, iptables, mtu
        self._prepared = time.monotonic()
        writable, note = self.store_writable(driver.driver) if loads_images else (False, "")
        return PreparedStore(placement.data_root, driver.driver, writable, note)

    @property
    def keeps_data_root(self) -> bool:
        """A data root of the user's (or a task cache) may outlive the put; the default one goes with the container."""
        return self.data_root != DEFAULT_DATA_ROOT

    def store_writable(self, driver: str) -> tuple[bool, str]:
        """Whether layerstore may write images into the data root before dockerd starts, and if not, a note on why ("" if obvious)."""
        probe, self._version_probe = self._version_probe, None
        version = tested_engines.probed_version(probe) if probe is not None else ""
        if not self.options.direct_load or driver != "overlay2":
            return False, ""
        daemon_json, unreadable = store_guard.read_daemon_json()
        changed = unreadable or store_guard.store_changed_by(self.options.args, daemon_json)
        if changed:
            return False, f"{changed}: every image goes through docker load"
        note = tested_engines.untested_note(version)
        return not note, note

    def launch(self, config_dir: str) -> DaemonHandle:
        """dockerd on the prepared data root, then readiness: returns the handle everything else uses."""
        dockerd_env = dict(self._base_env)
        if self._iptables != "off":
            dockerd_env["PATH"] = iptables_path_dir(self._iptables, f"{RUN_DIR}/bin") + ":" + self._base_env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        probed = time.monotonic()
        containerd = self._containerd
        assert containerd is not None and self._placement is not None, "prepare() first"
        self._wait_for(lambda: os.path.exists(CONTAINERD_SOCKET), "containerd did not listen", containerd)
        spawned = time.monotonic()
        dockerd = self._spawn("dockerd", dockerd_argv(self.options, self._driver, self._iptables, self._mtu_value), dockerd_env)
        lazy_imports.load()  # while dockerd starts: docker-py is needed once it answers
        api_version = self._wait_ready(containerd, dockerd)
        self._ready = True
        self._api_version = api_version
        ready = time.monotonic()

        client, load_client = make_clients(f"unix://{DOCKER_SOCKET}", version=api_version)
        info = client.info()
        problem = store_guard.info_problem(info, self._driver)
        if problem:
            raise RuntimeFailure(problem, "set source.dockerd.storage_driver explicitly, and leave the containerd-snapshotter feature off")
        if self.keeps_data_root:
            self._clear_left_behind(client)
        between = f", {probed - self._prepared:.2f}s writing images into its store" if probed - self._prepared > 0.05 else ""
        self.console.info(
            f"dockerd {info.get('ServerVersion', '?')} answered {ready - spawned:.2f}s after it was spawned;"
            f" before it: {self._prepared - self._started:.2f}s of checks and probes{between}, {spawned - probed:.2f}s more for containerd to listen"
        )
        description = f"{info.get('ServerVersion', '?')} {self._driver}, data root on {self._placement.summary()}"
        description += f", iptables {self._iptables}, mtu {self._mtu_value or 1500}"
        env = {"DOCKER_HOST": f"unix://{DOCKER_SOCKET}", "DOCKER_CONFIG": write_docker_config(self.source.registries, config_dir)}
        self.handle = DaemonHandle(f"unix://{DOCKER_SOCKET}", env, client, load_client, description, self.stop)
        return self.handle

    def _clear_left_behind(self, client: docker.APIClient) -> None:
        """Containers, volumes and networks a kept data root still holds, removed before anything runs.

        A run killed before its teardown finished leaves them in a task cache (or a data root of
        the user's); a `restart: always` service of it would even start again with dockerd. Every
        run starts from the images (and build cache) alone, as with a fresh data root.
        """
        removed: list[str] = []
        problems: list[str] = []
        try:
            containers = client.containers(all=True)
        except (docker.errors.DockerException, requests.RequestException) as error:
            self.console.warn(f"data root {self.data_root}: could not list what an earlier run left ({error})")
            return
        for container in containers:
            name = (container.get("Names") or [container["Id"][:12]])[0].lstrip("/")
            try:
                client.remove_container(container["Id"], force=True, v=True)
                removed.append(f"container {name}")
            except (docker.errors.DockerException, requests.RequestException) as error:
                problems.append(f"container {name}: {error}")
        pruned, prune_problems = prune_volumes_and_networks(client)
        removed += pruned
        problems += prune_problems
        if removed:
            self.console.warn(f"data root {self.data_root} held what an earlier run left: removed {', '.join(removed)}")
        for problem in problems:
            self.console.warn(f"data root {self.data_root}: could not remove what an earlier run left: {problem}")

    def relaunch_clean(self, config_dir: str) -> DaemonHandle:
        """dockerd stopped, the data root emptied, dockerd started again (containerd keeps running): direct writes' fallback.

        Only before anything but directly written images is in the store: they are all thrown away.
        """
        for name, process in self.processes:
            if name == "dockerd" and process.poll() is None:
                self._terminate(process, DAEMON_GRACE_SECONDS)
        self._ready = False
        self.handle = None
        self.empty_data_root()
        for path in (DOCKER_SOCKET, DOCKERD_PIDFILE):
            if os.path.lexists(path):
                os.unlink(path)
        self._started = self._prepared = time.monotonic()  # launch's log line then counts from here
        return self.launch(config_dir)

    def empty_data_root(self) -> None:
        """Everything in the data root removed (what dockerd left mounted below it first), the directory itself kept."""
        below = [m.mount_point for m in read_mountinfo() if m.mount_point.startswith(self.data_root.rstrip("/") + "/")]
        for point in sorted(set(below), key=len, reverse=True):
            try:
                umount(point, lazy=True)
            except MountError:
                pass  # gone already, or the removal below reports it
        for entry in os.scandir(self.data_root):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)

    def _mtu(self) -> tuple[int | None, str]:
        if self.options.mtu:
            return self.options.mtu, "source.dockerd.mtu"
        mtu, interface = default_route_mtu()
        return mtu, f"from {interface}, the default-route interface" if mtu else "no default route: dockerd's default"

    def _remove_stale_files(self) -> None:
        """Leftovers of an earlier daemon in this container; a live one is an error, not a leftover."""
        try:
            pid = int(Path(DOCKERD_PIDFILE).read_text().strip())
            alive = Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd"
        except (OSError, ValueError):
            alive = False
        if alive:
            raise RuntimeFailure(f"a dockerd (pid {pid}) is already running in this container", f"stop it, or remove {DOCKERD_PIDFILE}")
        for path in (DOCKER_SOCKET, DOCKERD_PIDFILE, CONTAINERD_SOCKET, f"{CONTAINERD_SOCKET}.ttrpc", f"{self.data_root}/docker.pid"):
            if os.path.lexists(path):
                os.unlink(path)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """A child with its log in a file (never fd 1), its own session, and PDEATHSIG."""
        log = open(f"{self.log_dir}/{name}.log", "ab")  # noqa: SIM115 - the child owns it
        with log:
            process = subprocess.Popen(dying_with_parent(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True)
        self.processes.append((name, process))
        return process

    def _wait_for(self, condition: Callable[[], bool], what: str, process: subprocess.Popen[bytes]) -> None:
        """Poll `condition` every 2 ms while `process` lives, within source.startup_timeout."""
        deadline = time.monotonic() + self.source.startup_timeout
        while not condition():
            if process.poll() is not None:
                self._fail_start(f"containerd exited with code {process.returncode} while starting", "containerd")
            if time.monotonic() > deadline:
                self._fail_start(f"{what} within source.startup_timeout ({self.source.startup_timeout:g}s)", "containerd")
            time.sleep(0.002)

    def _wait_ready(self, containerd: subprocess.Popen[bytes], dockerd: subprocess.Popen[bytes]) -> str:
        deadline = time.monotonic() + self.source.startup_timeout
        while True:
            for name, process in (("containerd", containerd), ("dockerd", dockerd)):
                if process.poll() is not None:
                    self._fail_start(f"{name} exited with code {process.returncode} while starting", name)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail_start(f"dockerd did not answer within source.startup_timeout ({self.source.startup_timeout:g}s)", "dockerd")
            attempt = time.monotonic()
            version = ping(DOCKER_SOCKET, min(0.25, remaining)) if os.path.exists(DOCKER_SOCKET) else None
            if version:
                return version
            if time.monotonic() - attempt < 0.004:
                time.sleep(0.004)

    def _fail_start(self, message: str, name: str) -> None:
        logs = {n: "\n".join(last_lines(f"{self.log_dir}/{n}.log", 25, window=16 * 1024)) for n in ("containerd", "dockerd")}
        other = "containerd" if name == "dockerd" else "dockerd"
        shown = f"last lines of the {name} log ({self.log_dir}/{name}.log):\n{logs[name]}"
        if error_lines(logs[other]):
            shown += f"\n\nerrors in the {other} log:\n" + "\n".join(error_lines(logs[other])[-5:])
        raise DaemonStartFailure(f"the inner Docker daemon did not start: {message}", f"{shown}\n\ndiagnosis: {diagnose(logs['dockerd'] + logs['containerd'])}")

    # -- stop

    def stop(self, grace: float = 0, *, down_done: bool = False) -> list[str]:
        """Idempotent, bounded teardown: containers, dockerd, containerd, shims, cgroups, mounts.

        `grace` is what containers get to stop (params.stop_grace; 0 on abort). With none to give
        and a data root that goes with the container, everything is killed at once. `down_done`:
        `compose down` removed the project (else, on a kept data root, this removes what it would
        have). Every step has a deadline: after a SIGTERM (no grace) the whole stop fits in
        Concourse's 10 s before SIGKILL.
        """
        with self._lock:
            if self._stopped:
                return []
            self._stopped = True
        problems: list[str] = []
        steps: list[str] = []
        clock = time.monotonic()

        def lap(what: str) -> None:
            nonlocal clock
            now = time.monotonic()
            steps.append(f"{what} {now - clock:.2f}s")
            clock = now

        if grace == 0 and not self.keeps_data_root:
            # Nothing to stop gracefully and nothing to keep: the daemons are killed at once (no
            # restart policy can bring a container back), the containers with our cgroups below.
            dockerd_grace = 0.0
        else:
            stopped = self._stop_containers(grace, problems, prune=not down_done)
            lap(f"{stopped} container{'s' if stopped != 1 else ''}")
            # dockerd gets SIGTERM (it unmounts and removes its network namespaces itself);
            # containerd's graceful stop only tidies state in the data root we throw away.
            dockerd_grace = DAEMON_GRACE_SECONDS if grace > 0 else ABORT_DAEMON_GRACE_SECONDS
        for name, wait in (("dockerd", dockerd_grace), ("containerd", 0.0)):
            for process_name, process in self.processes:
                if process_name == name and process.poll() is None:
                    self._terminate(process, wait)
                    lap(name)
        killed = self._kill_strays()
        if killed:
            lap(f"{killed} stray process{'es' if killed > 1 else ''}")
        if self.cgroups is not None:
            swept, cgroup_problems = self.cgroups.sweep()
            problems += cgroup_problems
            lap(f"cgroups ({swept} process{'es' if swept != 1 else ''} left in them)" if swept else "cgroups")
        undone = len(self.mounts.made)
        problems += self.mounts.undo(also_below=(self.data_root, RUN_DIR))
        lap(f"{undone} mount{'s' if undone != 1 else ''}")
        for path in (DOCKER_SOCKET, DOCKERD_PIDFILE):
            if os.path.lexists(path):
                os.unlink(path)
        if self.processes:
            self.console.info("inner daemon stopped: " + ", ".join(steps))
        return problems

    def _stop_containers(self, grace: float, problems: list[str], *, prune: bool) -> int:
        """Every running container given `grace` to stop, all at once through the API.

        A kept data root is left as `compose down --volumes` would leave it, faster: every
        container removed (a `restart: always` one would start again with the next dockerd), then
        the volumes and networks, unless compose down removed the project (`prune` false) and no
        container was left. All of it within one deadline: what is left after it, the next run
        removes before it starts.
        """
        if not self._ready or not any(p.poll() is None for n, p in self.processes if n == "dockerd"):
            return 0  # no API, so no containers
        deadline = time.monotonic() + CONTAINER_STOP_SECONDS + grace
        remove = self.keeps_data_root
        try:
            client = docker.APIClient(base_url=f"unix://{DOCKER_SOCKET}", version=self._api_version or "auto", timeout=CONTAINER_STOP_SECONDS + grace)
            running = client.containers(quiet=True, all=remove)
        except Exception as error:
            problems.append(f"listing containers: {error}")
            return 0

        def stop_one(container_id: str) -> None:
            try:
                if grace > 0:
                    client.stop(container_id, timeout=int(grace))
                if remove:
                    client.remove_container(container_id, force=True, v=True)
            except Exception:
                pass  # the shim sweep after the daemons are down catches what survives

        Workers(stop_one, [container["Id"] for container in running], len(running), "stop").wait(max(0.0, deadline - time.monotonic()))
        if remove and (prune or running):
            try:
                problems += prune_volumes_and_networks(client, deadline)[1]
            except Exception as error:  # whatever it is, the daemons must still be stopped
                problems.append(f"volumes and networks: {error}")
        return len(running)

    @staticmethod
    def _terminate(process: subprocess.Popen[bytes], grace: float) -> None:
        """SIGTERM and `grace` seconds, then SIGKILL (at once when `grace` is 0)."""
        if grace > 0:
            process.terminate()
            try:
                process.wait(grace)
                return
            except subprocess.TimeoutExpired:
                pass
        process.kill()
        try:
            process.wait(REAP_SECONDS)
        except subprocess.TimeoutExpired:
            pass  # stuck in the kernel (D state): the stray sweep and the unmounts go on regardless

    def _kill_strays(self) -> int:
        """What outlives containerd and dockerd by design: our shims with their containers, fuse-overlayfs helpers."""
        table = process_table()
        roots = [
            pid
            for pid, (_, cmdline) in table.items()
            if (b"containerd-shim" in cmdline and CONTAINERD_SOCKET.encode() in cmdline)
            or (cmdline.startswith(b"fuse-overlayfs") and self.data_root.encode() in cmdline)
        ]
        doomed = descendants(table, roots)
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(doomed)


def prune_volumes_and_networks(client: docker.APIClient, deadline: float | None = None) -> tuple[list[str], list[str]]:
    """Every volume (named ones too) and every network no container uses, removed: (what went, problems).

    With a `deadline` (time.monotonic()), each call gets only the time left before it.
    """
    removed: list[str] = []
    problems: list[str] = []
    for what, prune, key in (
        ("volume", lambda: client.prune_volumes(filters={"all": "true"}), "VolumesDeleted"),
        ("network", client.prune_networks, "NetworksDeleted"),
    ):
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                problems.append(f"{what}s: no time left to remove them (the next run does)")
                continue
            client.timeout = left
        try:
            removed += [f"{what} {name}" for name in prune().get(key) or []]
        except (docker.errors.DockerException, requests.RequestException) as error:
            problems.append(f"{what}s: {error}")
    return removed, problems
