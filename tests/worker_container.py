"""A resource container made as a Concourse worker makes it: plain runc and worker_spec's OCI spec.

The image's filesystem (the engine's own layer directories, else exported once per image ID) is
the read-only lower layer of an overlay per container (as containerd's snapshotter does);
`/scratch` is a plain directory on the host's disk; the network is a fresh namespace, with a veth
and a default route (`concourse`) or with loopback only (`guardian`). Scripts run as `runc exec`
with the worker's working directory (`/` or `/root`). An abort signals as the runtime does: only
the exec'd process (`concourse`), or every process in the container's cgroup but its init, each
second (`guardian`).

What a put leaves behind is looked for twice: inside the container (processes, mounts) right
after the script, and on the host after the container is deleted (cgroups, mounts, network
namespaces, links), against a snapshot taken before the container was made.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from worker_spec import WorkerContainerSpec, bounding_set

STATE_DIR = Path(os.environ.get("COMPOSE_ENV_HARNESS_DIR", "/var/tmp/compose-env-harness"))
RUNC_ROOT = "/run/compose-env-harness-runc"
INIT_SOURCE = Path(__file__).resolve().parent / "runtime" / "gdn-init.c"
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: Where this machine's process API puts the commands it starts (see someone_elses).
SANDBOX_COMMANDS_CGROUP = "process_api"
#: The C library, for mount(2) (see _overlay).
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
#: The "worker" cgroup the harness's containers go below on cgroup v2 (controllers enabled in it).
V2_PARENT = "compose-env-harness"
#: A v1 devices cgroup as strict as the container's own: the container cannot widen its devices.
STRICT_DEVICES_PARENT = "compose-env-harness-strict"
RUNC_DEFAULT_DEVICE_RULES = (
    "c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
    "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm", "c 10:200 rwm", "c 10:229 rwm",
)  # fmt: skip
WORKDIR = {"concourse": "/", "guardian": "/root"}


def cgroup_v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


#: Debian's cross compilers, for another architecture's guest (gcc-aarch64-linux-gnu and libc6-dev-arm64-cross).
CROSS_COMPILERS = {"aarch64": "aarch64-linux-gnu-gcc"}


def gdn_init(machine: str = "") -> str:
    """The init binary: static, built once from tests/runtime/gdn-init.c (COMPOSE_ENV_GDN_INIT: one built elsewhere).

    `machine` (`uname -m` of where it runs) builds it for another architecture with a cross compiler.
    """
    if (prebuilt := os.environ.get("COMPOSE_ENV_GDN_INIT")) and not machine:
        return prebuilt
    machine = machine or os.uname().machine
    compiler = "gcc" if machine == os.uname().machine else CROSS_COMPILERS[machine]
    source = INIT_SOURCE.read_bytes()
    target = STATE_DIR / f"gdn-init-{machine}-{hashlib.sha256(source).hexdigest()[:12]}"
    if not target.exists():
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        if shutil.which(compiler) is None:
            raise RuntimeError(f"no {compiler} to build {INIT_SOURCE} for {machine}, and no prebuilt {target}")
        subprocess.run([compiler, "-static", "-O2", "-o", f"{target}.tmp", str(INIT_SOURCE)], check=True)
        os.replace(f"{target}.tmp", target)
    return str(target)


def image_rootfs(image: str, docker: str = "docker") -> tuple[str, list[str], str]:
    """The image's filesystem as overlay lower directories, its environment, and its short ID.

    The engine's own overlay2 layer directories where they are on this machine (nothing to
    copy: the emulated cgroup v2 guest would spend minutes exporting), else the exported
    filesystem, cached by image ID.
    """
    inspected = json.loads(
        subprocess.run([docker, "image", "inspect", image], check=True, capture_output=True, text=True).stdout
    )[0]
    env = inspected["Config"].get("Env") or []
    driver = inspected.get("GraphDriver") or {}
    layers = [driver.get("Data", {}).get(key) for key in ("UpperDir", "LowerDir")]
    lower = ":".join(part for layer in layers if layer for part in layer.split(":"))
    image_id = inspected["Id"].split(":")[-1][:16]
    if driver.get("Name") == "overlay2" and lower and all(os.path.isdir(part) for part in lower.split(":")):
        return lower, env, image_id
    return str(_exported_rootfs(image, image_id, docker)), env, image_id


def _overlay(lower: str, bundle: Path) -> bool:
    """The container's root: `lower` read-only, its changes in the bundle. False (and why, on stderr) if the kernel
    refuses.

    Mounted with mount(2), as containerd mounts a snapshot (containerd v2.4.0-beta `core/mount/mount_linux.go`:
    mountAt → unix.Mount; compactLowerdirOption when optionsSize >= pagesize-512):
    util-linux 2.39 and later (Debian trixie: the guests) pass the options through fsconfig(2), which refuses a
    value over 256 bytes, and the engine's layer paths are longer. mount(2) reads at most a page of options and
    cuts the rest silently; containerd then shortens the paths, the harness falls back to the exported filesystem.
    """
    options = f"lowerdir={lower},upperdir={bundle}/upper,workdir={bundle}/work"
    if len(options) >= os.sysconf("SC_PAGE_SIZE") - 512:  # containerd's margin
        print(f"harness: overlay over {lower[:80]}… too long for mount(2): {len(options)} bytes", file=sys.stderr)
        return False
    target = str(bundle / "rootfs")
    if _LIBC.mount(b"overlay", target.encode(), b"overlay", 0, options.encode()) != 0:
        reason = os.strerror(ctypes.get_errno())
        print(f"harness: overlay over {lower[:80]}… refused: {reason} (see dmesg)", file=sys.stderr)
        return False
    return True


def _exported_rootfs(image: str, image_id: str, docker: str) -> Path:
    target = STATE_DIR / "rootfs" / image_id
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "rootfs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            for stale in target.parent.iterdir():
                shutil.rmtree(stale, ignore_errors=True)  # one image at a time: the dev image changes often
            partial = target.with_suffix(".partial")
            partial.mkdir()
            created = subprocess.run(
                [docker, "create", "--entrypoint", "true", image], check=True, capture_output=True, text=True
            ).stdout.strip()
            try:
                export = subprocess.Popen([docker, "export", created], stdout=subprocess.PIPE)
                subprocess.run(["tar", "-x", "--numeric-owner", "-C", str(partial)], stdin=export.stdout, check=True)
                if export.wait() != 0:
                    raise RuntimeError(f"docker export of {image} failed")
            finally:
                subprocess.run([docker, "rm", "-f", created], capture_output=True)
            partial.rename(target)
    return target


# ---------------------------------------------------------------- the host's view, before and after


def host_state() -> dict[str, set[str]]:
    cgroups = set()
    for top, dirs, _files in os.walk(CGROUP_ROOT, followlinks=False):
        cgroups.update(os.path.join(top, d) for d in dirs)
    with open("/proc/self/mountinfo") as handle:
        mounts = {line.split()[4] for line in handle}
    netns = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    return {"cgroup": cgroups, "mount": mounts, "netns": netns, "link": set(os.listdir("/sys/class/net"))}


def outer_container_ids(docker: str) -> set[str]:
    listed = subprocess.run([docker, "ps", "-aq", "--no-trunc"], capture_output=True, text=True)
    return set(listed.stdout.split())


def live_harness_ids() -> set[str]:
    """The harness's runc containers that exist now (another test run's, on a shared machine), without `ce-`."""
    listed = subprocess.run(["runc", "--root", RUNC_ROOT, "list", "-q"], capture_output=True, text=True)
    return {name.removeprefix("ce-") for name in listed.stdout.split()}


def someone_elses(kind: str, item: str, other_ids: set[str]) -> bool:
    """Whether a new cgroup, mount, netns or link is another container's: the outer engine's (other tests, image builds)
    or another harness run's.

    Nothing a put does inside a worker container reaches the host's mounts or links but through
    the harness's own: mounts count below the harness's state, /run/netns and /sys/fs/cgroup
    only, links only when not enslaved to a bridge (the outer engine's veths all are).
    """
    if any(container_id in item for container_id in other_ids):
        return True
    if kind == "cgroup":
        # This workplace's process API puts each command it starts (a developer's shell beside the
        # suite) in a cgroup of its own below `process_api`: never the put's.
        return f"/{SANDBOX_COMMANDS_CGROUP}/" in item
    if kind == "mount":  # /run/netns itself is iproute2's, made on its first use and kept
        return item == "/run/netns" or not item.startswith((str(STATE_DIR), "/run/netns", str(CGROUP_ROOT)))
    if kind == "link":
        return os.path.exists(f"/sys/class/net/{item}/master")
    return False


def new_on_host(before: dict[str, set[str]], docker: str) -> list[str]:
    """What appeared on the host since `before`, less the outer engine's own; confirmed once after a second."""

    def fresh() -> set[str]:
        after = host_state()
        others = outer_container_ids(docker) | live_harness_ids()
        return {
            f"{kind} {item}"
            for kind, items in after.items()
            for item in items - before[kind]
            if not someone_elses(kind, item, others)
        }

    found = fresh()
    if found:
        time.sleep(1)
        found &= fresh()
    return sorted(found)


# ---------------------------------------------------------------- the container


class WorkerContainer:
    """A resource container as a Concourse worker makes it (flavour `concourse` or `guardian`)."""

    def __init__(
        self,
        image: str,
        mounts: Sequence[tuple[str, str, bool]] = (),
        *,
        flavour: str = "concourse",
        docker: str = "docker",
        strict_devices: bool = False,
    ) -> None:
        self.flavour = flavour
        self.docker = docker
        self.id = f"ce-{uuid.uuid4().hex[:10]}"
        self.bundle = STATE_DIR / "containers" / self.id
        self.host_leftovers: list[str] = []
        self._strict_parent = ""
        lower, env, image_id = image_rootfs(image, docker)
        init = gdn_init()
        cgroups_path = self._cgroups_path(strict_devices)  # the "worker's" cgroups exist before the snapshot
        self._before = host_state()
        try:
            self._start(image, image_id, lower, env, init, mounts, cgroups_path)
        except BaseException:
            self.remove()
            raise

    def _start(
        self,
        image: str,
        image_id: str,
        lower: str,
        env: list[str],
        init: str,
        mounts: Sequence[tuple[str, str, bool]],
        cgroups_path: str,
    ) -> None:
        """The bundle (root filesystem, files, network, spec), then `runc run`: the container's init runs."""
        for name in ("rootfs", "upper", "work", "etc", "scratch"):
            (self.bundle / name).mkdir(parents=True)
        if not _overlay(lower, self.bundle) and not _overlay(
            str(_exported_rootfs(image, image_id, self.docker)), self.bundle
        ):
            raise RuntimeError(f"cannot mount the image's filesystem for {image}")
        (self.bundle / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
        (self.bundle / "etc" / "hostname").write_text("worker-container\n")
        (self.bundle / "etc" / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        self._make_network()
        binds = [(str(self.bundle / "scratch"), "/scratch", False)] + [
            (os.path.abspath(h), t, ro) for h, t, ro in mounts
        ]
        spec = WorkerContainerSpec(
            self.flavour,
            str(self.bundle / "rootfs"),
            env,
            f"/run/netns/{self.id}",
            init,
            str(self.bundle / "etc"),
            binds,
            cgroups_path,
        )
        (self.bundle / "config.json").write_text(json.dumps(spec.render(bounding_set()), indent=1))
        # runc's stderr goes to a file: a pipe would be held open by the container's init.
        with open(self.bundle / "runc.log", "w+") as log:
            started = subprocess.run(
                [
                    "runc",
                    "--root",
                    RUNC_ROOT,
                    "run",
                    "-d",
                    "--bundle",
                    str(self.bundle),
                    "--pid-file",
                    str(self.bundle / "init.pid"),
                    self.id,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
            log.seek(0)
            problem = log.read().strip()
        if started.returncode != 0:
            raise RuntimeError(f"runc run of the resource container failed: {problem}")
        self.init_pid = int((self.bundle / "init.pid").read_text())

    def _make_network(self) -> None:
        """A network namespace: a veth with a default route (concourse), or loopback only (guardian)."""
        name = self.id
        subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        if self.flavour != "concourse":
            return
        subnet = int(hashlib.sha256(name.encode()).hexdigest()[:4], 16) % 250 + 1
        host_side = f"ve{self.id[3:]}"
        subprocess.run(
            ["ip", "link", "add", host_side, "type", "veth", "peer", "name", "eth0", "netns", name], check=True
        )
        subprocess.run(["ip", "addr", "add", f"10.80.{subnet}.1/30", "dev", host_side], check=True)
        subprocess.run(["ip", "link", "set", host_side, "up"], check=True)
        subprocess.run(["ip", "-n", name, "addr", "add", f"10.80.{subnet}.2/30", "dev", "eth0"], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", "eth0", "up"], check=True)
        subprocess.run(["ip", "-n", name, "route", "add", "default", "via", f"10.80.{subnet}.1"], check=True)

    def _cgroups_path(self, strict_devices: bool) -> str:
        """Empty (runc's choice: a cgroup named after the container, below runc's own) on v1, as Concourse does.

        On v2 the container goes below a "worker" cgroup with the controllers enabled, as on a
        worker; `strict_devices` (v1) puts it below a devices cgroup that allows no more than
        the container gets, so that the container cannot widen its own.
        """
        if cgroup_v2():
            parent = CGROUP_ROOT / V2_PARENT
            parent.mkdir(exist_ok=True)
            wanted = (CGROUP_ROOT / "cgroup.subtree_control").read_text().split()
            with contextlib.suppress(OSError):
                (parent / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in wanted))
            return f"/{V2_PARENT}/{self.id}"
        if strict_devices:
            self._strict_parent = STRICT_DEVICES_PARENT
            devices = CGROUP_ROOT / "devices" / STRICT_DEVICES_PARENT
            devices.mkdir(exist_ok=True)
            (devices / "devices.deny").write_text("a")
            for rule in RUNC_DEFAULT_DEVICE_RULES:
                (devices / "devices.allow").write_text(rule)
            return f"/{STRICT_DEVICES_PARENT}/{self.id}"
        return ""

    # -- scripts

    def exec_argv(self, argv: Sequence[str], env: Mapping[str, str], workdir: str | None, pid_file: str) -> list[str]:
        command = [
            "runc",
            "--root",
            RUNC_ROOT,
            "exec",
            "--cwd",
            workdir or WORKDIR[self.flavour],
            "--pid-file",
            pid_file,
        ]
        for key, value in env.items():
            command += ["--env", f"{key}={value}"]
        return [*command, self.id, *argv]

    def abort(self, pid_file: str, process: subprocess.Popen[str]) -> None:
        """SIGTERM as the worker's runtime sends it on abort."""
        pid = _read_pid(pid_file)
        if self.flavour == "concourse":
            if pid:
                os.kill(pid, signal.SIGTERM)
            return
        threading.Thread(target=self._guardian_abort, args=(process,), daemon=True).start()

    def _guardian_abort(self, process: subprocess.Popen[str]) -> None:
        """Every process in the container's cgroup but init, each second, ten times; then SIGKILL."""
        for _ in range(10):
            for pid in self.cgroup_pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            try:
                process.wait(1)
                return
            except subprocess.TimeoutExpired:
                pass
        for pid in self.cgroup_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def cgroup_dir(self) -> Path:
        """The container's cgroup (v2), or its pids cgroup (v1), as the host sees it."""
        return cgroup_dir_of(self.init_pid)

    def cgroup_pids(self) -> list[int]:
        """Every process in the container's cgroup and below it, but its init."""
        pids = []
        for top, _dirs, _files in os.walk(self.cgroup_dir()):
            with contextlib.suppress(OSError):
                pids += [int(p) for p in Path(top, "cgroup.procs").read_text().split()]
        return [pid for pid in pids if pid != self.init_pid]

    def probe(self, code: str) -> list[str]:
        result = subprocess.run(
            ["runc", "--root", RUNC_ROOT, "exec", self.id, "python3", "-c", code], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise RuntimeError(f"probing the container failed: {result.stderr.strip()}")
        return [line for line in result.stdout.splitlines() if line.strip()]

    # -- removal

    def remove(self) -> None:
        """Delete the container as the worker does (kill, delete), then note what it left on the host."""
        subprocess.run(["runc", "--root", RUNC_ROOT, "kill", self.id, "KILL"], capture_output=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            state = subprocess.run(["runc", "--root", RUNC_ROOT, "state", self.id], capture_output=True, text=True)
            if state.returncode != 0 or '"stopped"' in state.stdout:
                break
            time.sleep(0.05)
        subprocess.run(["runc", "--root", RUNC_ROOT, "delete", "-f", self.id], capture_output=True)
        subprocess.run(["umount", str(self.bundle / "rootfs")], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.id], capture_output=True)
        if self._strict_parent:
            for hierarchy in CGROUP_ROOT.iterdir():
                with contextlib.suppress(OSError):
                    (hierarchy / self._strict_parent).rmdir()
        shutil.rmtree(self.bundle, ignore_errors=True)
        self.host_leftovers = new_on_host(self._before, self.docker)


def cgroup_dir_of(pid: int) -> Path:
    """A process's cgroup (v2), or its pids cgroup (v1), as the host sees it."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if cgroup_v2() and number == "0":
            return CGROUP_ROOT / path.lstrip("/")
        if "pids" in controllers.split(","):
            return CGROUP_ROOT / "pids" / path.lstrip("/")
    raise RuntimeError(f"no cgroup found for process {pid}")


def processes_below(cgroup: Path, cmdline: str) -> dict[int, Path]:
    """The host's processes running exactly `cmdline` whose cgroup is `cgroup` or below it, with their cgroups."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, RuntimeError):
            if Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip() == cmdline:
                where = cgroup_dir_of(int(entry))
                if where == cgroup or cgroup in where.parents:
                    found[int(entry)] = where
    return found


def wait_for_processes_below(cgroup: Path, cmdline: str, seconds: float = 5) -> dict[int, Path]:
    """processes_below, asked again until one shows (a service prints before it execs) or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while not (found := processes_below(cgroup, cmdline)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def _read_pid(pid_file: str) -> int | None:
    try:
        return int(Path(pid_file).read_text().strip())
    except (OSError, ValueError):
        return None
