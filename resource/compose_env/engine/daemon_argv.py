"""The command lines (and containerd's config file) the inner daemons start with, and the paths they share.

Every choice is passed explicitly, so dockerd never falls back on a default of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from compose_env.config.model import DockerdOptions
from compose_env.engine.cgroups import CGROUP_PARENT
from compose_env.engine.handle import RUN_DIR

DOCKER_SOCKET = "/var/run/docker.sock"
DOCKERD_PIDFILE = f"{RUN_DIR}/dockerd.pid"
CONTAINERD_SOCKET = f"{RUN_DIR}/containerd/containerd.sock"


def containerd_argv(debug: bool) -> list[str]:
    """containerd with a config of its own under RUN_DIR (written here), listening on CONTAINERD_SOCKET."""
    config_path = f"{RUN_DIR}/containerd.toml"
    Path(config_path).write_text(
        "version = 2\n"
        # dockerd (graphdriver mode) uses containerd for tasks only: skip what it never calls.
        'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",'
        ' "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",'
        ' "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.blockfile",'
        ' "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]\n'
        f'root = "{RUN_DIR}/containerd/root"\nstate = "{RUN_DIR}/containerd/state"\n'
        f'[grpc]\n  address = "{CONTAINERD_SOCKET}"\n'
    )
    return ["containerd", "--config", config_path] + (["--log-level", "debug"] if debug else [])


def dockerd_argv(options: DockerdOptions, driver: str, iptables: str, mtu: int | None) -> list[str]:
    """dockerd on CONTAINERD_SOCKET with every choice explicit; source.dockerd.args last, so they win."""
    argv = [
        "dockerd",
        f"--containerd={CONTAINERD_SOCKET}",
        f"--data-root={options.data_root}",
        f"--exec-root={RUN_DIR}/docker",
        f"--pidfile={DOCKERD_PIDFILE}",
        f"--host=unix://{DOCKER_SOCKET}",
        f"--storage-driver={driver}",
        "--shutdown-timeout=1",
    ]
    if not any(arg.split("=", 1)[0] == "--cgroup-parent" for arg in options.args):
        argv.append(f"--cgroup-parent={cgroup_parent(options.args)}")
    if mtu:
        argv += [f"--mtu={mtu}", f"--default-network-opt=bridge=com.docker.network.driver.mtu={mtu}"]
    if iptables == "off":
        argv += ["--iptables=false", "--ip6tables=false"]
    argv += [f"--registry-mirror={m}" for m in options.registry_mirrors]
    argv += [f"--insecure-registry={r}" for r in options.insecure_registries]
    if options.debug:
        argv.append("--debug")
    return argv + list(options.args)


def cgroup_parent(args: Sequence[str]) -> str:
    """Where dockerd puts its containers: source.dockerd.args' --cgroup-parent, else ours (absolute either way)."""
    for number, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if name == "--cgroup-parent":
            given = value or (args[number + 1] if number + 1 < len(args) else "")
            return "/" + given.strip("/")
    return CGROUP_PARENT
