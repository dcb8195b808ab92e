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

The states are objects of their own, so that nothing runs out of order: `InnerDaemon.prepare`
(checks, containerd, cgroups, data root, driver, network) gives a `PreparedDaemon`, whose data root
is ours until `launch` gives the `RunningDaemon`, which alone stops. A start that fails before
that is undone by `InnerDaemon.abandon`. Both end in one idempotent release, bounded in time
(engine/budget.py), for every way a put ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from compose_env import lazy_imports
from compose_env.config.model import DEFAULT_DATA_ROOT, Source
from compose_env.console import Console
from compose_env.engine import cgroups, storage, store_guard, tested_engines
from compose_env.engine.budget import BUDGET
from compose_env.engine.daemon_argv import (
    CONTAINERD_SOCKET,
    DOCKER_SOCKET,
    DOCKERD_PIDFILE,
    cgroup_parent,
    containerd_argv,
    dockerd_argv,
)
from compose_env.engine.daemon_stop import clear_left_behind, kill_strays, stop_containers, terminate
from compose_env.engine.handle import RUN_DIR, DaemonHandle, make_clients, write_docker_config
from compose_env.engine.mounts import MountError, MountTracker, read_mountinfo, umount
from compose_env.engine.network import choose_iptables, default_route_mtu, iptables_path_dir
from compose_env.engine.preflight import check_privileged, prepare_kernel_interfaces
from compose_env.engine.readiness import Readiness
from compose_env.errors import RuntimeFailure
from compose_env.process import dying_with_parent


@dataclass(frozen=True)
class PreparedStore:
    """The data root and driver dockerd will get; `writable`: layerstore may write images into it first.

    `note`: why not, when that is worth a line in the log (an untested engine, a reshaped store).
    """

    data_root: str
    driver: str
    writable: bool
    note: str = ""


@dataclass(frozen=True)
class LaunchPlan:
    """What `prepare` chose and started, for `launch`: containerd, the placement, the driver, the network."""

    containerd: subprocess.Popen[bytes]
    base_env: dict[str, str]
    placement: storage.Placement
    driver: str
    iptables: str
    mtu: int | None
    #: When preparing began and ended (launch's log line tells the time between).
    started: float
    prepared: float


class InnerDaemon:
    """containerd + dockerd in this container: what starting them did, so that it can all be undone."""

    def __init__(self, source: Source, console: Console) -> None:
        self.source = source
        self.options = source.dockerd
        self.console = console
        self.mounts = MountTracker()
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.log_dir = f"{RUN_DIR}/logs"
        self.data_root = self.options.data_root
        #: Where the inner containers' cgroups go, and how to sweep them out (set by prepare).
        self.cgroups: cgroups.CgroupPlacement | None = None
        #: The API version dockerd answered with: set while it serves, so that its stop may call it.
        self.api_version = ""
        self._released = False
        self._lock = threading.Lock()

    @property
    def keeps_data_root(self) -> bool:
        """A data root of the user's (or a task cache) may outlive the put; the default one goes with the container."""
        return self.data_root != DEFAULT_DATA_ROOT

    def prepare(self, images_bytes: int, loads_images: bool) -> PreparedDaemon:
        """Everything before dockerd: checks, containerd (starting meanwhile), cgroups, data root, driver, network.

        `images_bytes`: what the images to load take; `loads_images`: whether there are any (if
        not, none is written directly, and dockerd's version is not asked).
        """
        started = time.monotonic()
        check_privileged()
        version_probe = self._refuse_snapshotter(loads_images)
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
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        containerd = self._spawn("containerd", containerd_argv(self.options.debug), base_env)
        for action in prepare_kernel_interfaces(self.mounts):
            self.console.info(action)
        placement, driver = self._prepare_data_root(images_bytes)
        iptables, iptables_why = choose_iptables(self.options.iptables)
        (self.console.warn if iptables == "off" else self.console.info)(f"iptables: {iptables} ({iptables_why})")
        mtu, mtu_why = self._mtu()
        self.console.info(f"mtu: {mtu or 1500} ({mtu_why})")
        writable, note = self._store_writable(driver, version_probe) if loads_images else (False, "")
        plan = LaunchPlan(containerd, base_env, placement, driver, iptables, mtu, started, time.monotonic())
        return PreparedDaemon(self, PreparedStore(placement.data_root, driver, writable, note), plan)

    def abandon(self) -> list[str]:
        """Undo a start that did not end running (a failure or an abort while preparing or launching)."""
        return self.release(0)

    def release(self, grace: float, *, down_done: bool = False) -> list[str]:
        """Idempotent, bounded teardown: containers, dockerd, containerd, shims, cgroups, mounts.

        `grace` is what containers get to stop (params.stop_grace; 0 on abort). With none to give
        and a data root that goes with the container, everything is killed at once. `down_done`:
        `compose down` removed the project (else, on a kept data root, this removes what it would
        have). Every step has a deadline (engine/budget.py).
        """
        with self._lock:
            if self._released:
                return []
            self._released = True
        if not self.processes and not self.mounts.made and self.cgroups is None:
            return []  # refused before it started anything (another dockerd runs here, say): nothing of ours to undo
        problems: list[str] = []
        steps: list[str] = []
        clock = time.monotonic()

        def lap(what: str) -> None:
            nonlocal clock
            now = time.monotonic()
            steps.append(f"{what} {now - clock:.2f}s")
            clock = now

        dockerd_grace = 0.0  # nothing to stop gracefully and nothing to keep: the daemons are killed at once
        if grace > 0 or self.keeps_data_root:
            stopped = self._stop_containers(grace, problems, prune=not down_done)
            lap(f"{stopped} container{'s' if stopped != 1 else ''}")
            # dockerd gets SIGTERM (it unmounts and removes its network namespaces itself);
            # containerd's graceful stop only tidies state in the data root we throw away.
            dockerd_grace = BUDGET.dockerd_grace(grace)
        for name, wait in (("dockerd", dockerd_grace), ("containerd", 0.0)):
            for process_name, process in self.processes:
                if process_name == name and process.poll() is None:
                    terminate(process, wait)
                    lap(name)
        problems += self._sweep(lap)
        if self.processes:
            self.console.info("inner daemon stopped: " + ", ".join(steps))
        return problems

    def _stop_containers(self, grace: float, problems: list[str], *, prune: bool) -> int:
        if not self.api_version or not any(p.poll() is None for n, p in self.processes if n == "dockerd"):
            return 0  # no API, so no containers
        return stop_containers(self.api_version, grace, problems, remove=self.keeps_data_root, prune=prune)

    def _sweep(self, lap: Callable[[str], None]) -> list[str]:
        """What the daemons leave: stray shims, our cgroups, our mounts, the socket and pid file."""
        problems: list[str] = []
        killed = kill_strays(self.data_root)
        if killed:
            lap(f"{killed} stray process{'es' if killed > 1 else ''}")
        if self.cgroups is not None:
            swept, cgroup_problems = self.cgroups.sweep()
            problems += cgroup_problems
            lap(f"cgroups ({swept} process{'es' if swept != 1 else ''} left in them)" if swept else "cgroups")
        undone = len(self.mounts.made)
        problems += self.mounts.undo(also_below=(self.data_root, RUN_DIR))
        lap(f"{undone} mount{'s' if undone != 1 else ''}")
        _unlink(DOCKER_SOCKET, DOCKERD_PIDFILE)
        return problems

    # -- preparing

    def _refuse_snapshotter(self, loads_images: bool) -> subprocess.Popen[str] | None:
        """Direct writes need the graphdriver store; with images to write, dockerd's version is probed meanwhile."""
        if not self.options.direct_load:
            return None
        store_guard.refuse_snapshotter(self.options.args, store_guard.read_daemon_json()[0])
        return tested_engines.start_version_probe() if loads_images else None

    def _prepare_data_root(self, images_bytes: int) -> tuple[storage.Placement, str]:
        placement = storage.choose_placement(self.options.data_root_medium, self.data_root, images_bytes)
        (self.console.warn if placement.short_of_memory else self.console.info)(
            f"data root {placement.data_root} on {placement.medium}: {placement.reason}"
        )
        try:
            storage.mount_placement(placement, self.mounts)
        except MountError as error:
            raise RuntimeFailure(
                f"cannot mount a tmpfs for the data root: {error}", "set source.dockerd.data_root_medium: disk"
            ) from None
        try:
            driver = storage.choose_driver(self.options.storage_driver, placement.data_root)
        except OSError as error:
            raise RuntimeFailure(f"cannot use the data root {placement.data_root}: {error}") from None
        (self.console.warn if driver.driver == "vfs" else self.console.info)(
            f"storage driver {driver.driver}: {driver.reason}"
        )
        return placement, driver.driver

    def _store_writable(self, driver: str, probe: subprocess.Popen[str] | None) -> tuple[bool, str]:
        """Whether layerstore may write images into the data root before dockerd starts, and if not, a note on why (""
        if obvious)."""
        version = tested_engines.probed_version(probe) if probe is not None else ""
        if not self.options.direct_load or driver != "overlay2":
            return False, ""
        daemon_json, unreadable = store_guard.read_daemon_json()
        changed = unreadable or store_guard.store_changed_by(self.options.args, daemon_json)
        if changed:
            return False, f"{changed}: every image goes through docker load"
        note = tested_engines.untested_note(version)
        return not note, note

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
            raise RuntimeFailure(
                f"a dockerd (pid {pid}) is already running in this container", f"stop it, or remove {DOCKERD_PIDFILE}"
            )
        _unlink(
            DOCKER_SOCKET,
            DOCKERD_PIDFILE,
            CONTAINERD_SOCKET,
            f"{CONTAINERD_SOCKET}.ttrpc",
            f"{self.data_root}/docker.pid",
        )

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

    # -- the processes

    def spawn_dockerd(self, plan: LaunchPlan) -> subprocess.Popen[bytes]:
        env = dict(plan.base_env)
        if plan.iptables != "off":
            env["PATH"] = (
                iptables_path_dir(plan.iptables, f"{RUN_DIR}/bin")
                + ":"
                + plan.base_env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            )
        return self._spawn("dockerd", dockerd_argv(self.options, plan.driver, plan.iptables, plan.mtu), env)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """A child with its log in a file (never fd 1), its own session, and PDEATHSIG."""
        log = open(f"{self.log_dir}/{name}.log", "ab")  # noqa: SIM115 - the child owns it
        with log:
            process = subprocess.Popen(
                dying_with_parent(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        self.processes.append((name, process))
        return process

    def stop_dockerd(self) -> None:
        """dockerd alone (a restart on an emptied data root): its socket and pid file go with it."""
        for name, process in self.processes:
            if name == "dockerd" and process.poll() is None:
                terminate(process, BUDGET.dockerd)
        self.api_version = ""
        _unlink(DOCKER_SOCKET, DOCKERD_PIDFILE)


def _unlink(*paths: str) -> None:
    """Sockets and pid files of a daemon that is gone (or never was)."""
    for path in paths:
        if os.path.lexists(path):
            os.unlink(path)


class PreparedDaemon:
    """An inner daemon ready to launch: containerd running, the data root ours (layerstore may write into it)."""

    def __init__(self, daemon: InnerDaemon, store: PreparedStore, plan: LaunchPlan) -> None:
        self.daemon = daemon
        self.store = store
        self._plan = plan

    @property
    def keeps_data_root(self) -> bool:
        return self.daemon.keeps_data_root

    def empty_data_root(self) -> None:
        self.daemon.empty_data_root()

    def launch(self, config_dir: str) -> RunningDaemon:
        """dockerd on the prepared data root, then readiness: the running engine everything else uses."""
        daemon, plan = self.daemon, self._plan
        probed = time.monotonic()
        readiness = Readiness(daemon.log_dir, daemon.source.startup_timeout)
        readiness.wait_for(lambda: os.path.exists(CONTAINERD_SOCKET), "containerd did not listen", plan.containerd)
        spawned = time.monotonic()
        dockerd = daemon.spawn_dockerd(plan)
        lazy_imports.load()  # while dockerd starts: docker-py is needed once it answers
        daemon.api_version = readiness.wait_ready(plan.containerd, dockerd)
        ready = time.monotonic()
        client, load_client = make_clients(f"unix://{DOCKER_SOCKET}", version=daemon.api_version)
        info = client.info()
        problem = store_guard.info_problem(info, plan.driver)
        if problem:
            raise RuntimeFailure(
                problem,
                "set source.dockerd.storage_driver explicitly, and leave the containerd-snapshotter feature off",
            )
        if daemon.keeps_data_root:
            clear_left_behind(client, daemon.data_root, daemon.console)
        between = (
            f", {probed - plan.prepared:.2f}s writing images into its store" if probed - plan.prepared > 0.05 else ""
        )
        daemon.console.info(
            f"dockerd {info.get('ServerVersion', '?')} answered {ready - spawned:.2f}s after it was spawned;"
            f" before it: {plan.prepared - plan.started:.2f}s of checks and probes{between}, {spawned - probed:.2f}s "
            "more for containerd to listen"
        )
        description = f"{info.get('ServerVersion', '?')} {plan.driver}, data root on {plan.placement.summary()}"
        description += f", iptables {plan.iptables}, mtu {plan.mtu or 1500}"
        env = {
            "DOCKER_HOST": f"unix://{DOCKER_SOCKET}",
            "DOCKER_CONFIG": write_docker_config(daemon.source.registries, config_dir),
        }
        return RunningDaemon(self, DaemonHandle(f"unix://{DOCKER_SOCKET}", env, client, load_client, description))

    def restart_clean(self, config_dir: str) -> RunningDaemon:
        """dockerd stopped (if it runs), the data root emptied, dockerd launched again (containerd keeps running).

        Direct writes' complete fallback: only before anything but directly written images is in the
        store, which are all thrown away. The log line of the launch counts from now.
        """
        self.daemon.stop_dockerd()
        self.daemon.empty_data_root()
        now = time.monotonic()
        return PreparedDaemon(self.daemon, self.store, replace(self._plan, started=now, prepared=now)).launch(
            config_dir
        )


class RunningDaemon:
    """The inner daemon serving: what the put talks to, and the one state that stops."""

    remote = False

    def __init__(self, prepared: PreparedDaemon, handle: DaemonHandle) -> None:
        self._prepared = prepared
        self.handle = handle

    def compose_down_matters(self, grace: float, aborted: bool) -> bool:
        """Whether `compose down` does anything this daemon's stop does not.

        A data root thrown away with the container takes the containers, networks and volumes
        with it: with no grace to give, killing the containers at once is the whole job. `compose
        down` stays for graceful stops (stop_grace > 0) and for a data root that outlives the put (a
        task cache, a data_root of the user's), but not after SIGTERM: the stop then removes the
        containers, volumes and networks of a kept data root through the API, faster than compose.
        """
        return not aborted and (self._prepared.keeps_data_root or grace > 0)

    def stop(self, grace: float, *, down_done: bool = False) -> list[str]:
        return self._prepared.daemon.release(grace, down_done=down_done)
