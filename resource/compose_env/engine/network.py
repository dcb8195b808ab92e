"""The inner daemon's network settings: the MTU of the default route, and iptables nft or legacy.

Both are classic Docker-in-Docker failures: a 1500 MTU inside a 1450 overlay network
makes TLS connections hang (black holes), and an iptables variant other than the one
the host kernel uses breaks NAT (concourse#8558, docker-image-resource#388).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path


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


def iptables_lists(binary: str) -> tuple[bool, str]:
    """(works, first error line) for `<binary> -nL` in this network namespace."""
    if shutil.which(binary) is None:
        return False, f"{binary} is not installed"
    try:
        listed = subprocess.run([binary, "-nL"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, str(error)
    return listed.returncode == 0, (listed.stderr.strip().splitlines() or [""])[0]


def legacy_tables_in_use(proc_net: str = "/proc/net") -> str:
    """The legacy (x_tables) tables already present here, as docker:dind's entrypoint checks them."""
    for name in ("ip_tables_names", "ip6_tables_names", "arp_tables_names"):
        try:
            tables = Path(proc_net, name).read_text().split()
        except OSError:
            continue
        if tables:
            return f"{name}: {' '.join(tables)}"
    return ""


def choose_iptables(
    requested: str, proc_net: str = "/proc/net", works: Callable[[str], tuple[bool, str]] = iptables_lists
) -> tuple[str, str]:
    """nft or legacy, decided like docker:dind's entrypoint, or what source.dockerd.iptables says.

    Legacy when legacy tables already exist in this network namespace (mixing both breaks
    NAT), or when iptables-nft cannot list and iptables-legacy can; nft otherwise.
    """
    if requested != "auto":
        return requested, f"source.dockerd.iptables is {requested}"
    in_use = legacy_tables_in_use(proc_net)
    if in_use:
        return "legacy", f"legacy tables are already in use ({in_use})"
    nft_ok, nft_error = works("iptables-nft")
    if nft_ok:
        return "nft", "iptables-nft works and no legacy tables are in use"
    legacy_ok, legacy_error = works("iptables-legacy")
    if legacy_ok:
        return "legacy", f"iptables-nft fails here ({nft_error or 'no message'}); iptables-legacy works"
    return (
        "off",
        f"neither iptables-nft ({nft_error}) nor iptables-legacy ({legacy_error}) works: containers get no NAT",
    )


def iptables_path_dir(variant: str, directory: str) -> str:
    """`directory`, made a PATH entry whose `iptables`/`ip6tables` are the chosen variant, without touching
    /usr/sbin."""
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
