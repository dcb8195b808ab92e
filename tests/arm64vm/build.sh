#!/usr/bin/env bash
# build.sh: build (once) the arm64 Debian trixie guest that run.sh boots under qemu-system-aarch64:
# systemd as PID 1 on a pure cgroup v2 hierarchy, Debian's docker.io (cgroup driver systemd, as on
# an arm64 Concourse worker's host), runc, python3, and a boot-time unit that runs the host's
# command from a 9p share and powers off.
#
# Patterned on ../shared/vm/build.sh (the amd64 cgroup v2 guest); what differs is the architecture:
# debootstrap for arm64 runs its second stage and apt through Debian's qemu-user-static
# (scripts/binfmt.sh), the kernel is linux-image-arm64, the console is the virt machine's PL011
# (ttyAMA0).
#
# Usage: build.sh [--force]
# Output (cached; rebuilt only when this script changes or with --force):
#   $ARM64VM_CACHE (default /var/tmp/compose-env-arm64vm)/{base.img,vmlinuz,initrd.img,stamp}
# Env: ARM64VM_CACHE, ARM64VM_MIRROR (default: the host's apt Debian mirror), ARM64VM_DISK_SIZE (32G, sparse).
set -euo pipefail

SUITE=trixie
CACHE=${ARM64VM_CACHE:-/var/tmp/compose-env-arm64vm}
DISK_SIZE=${ARM64VM_DISK_SIZE:-32G}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
FORCE=0
[ "${1:-}" = --force ] && FORCE=1

die() { echo "arm64vm build: $*" >&2; exit 1; }
say() { echo "arm64vm build: $*" >&2; }
[ "$(id -u)" = 0 ] || die "must run as root"

# One build at a time: .ci/run starts one in the background while the rest of the suite runs, and
# the arm64 test's own call waits here for it, then finds it up to date.
mkdir -p "$CACHE"
exec 9>"$CACHE/build.lock"
flock -w 3600 9 || die "another build has held $CACHE/build.lock for an hour"
STAMP=$( { cat "$HERE/build.sh"; echo "$SUITE $DISK_SIZE"; } | sha256sum | cut -c1-16)
if [ $FORCE = 0 ] && [ "$(cat "$CACHE/stamp" 2>/dev/null)" = "$STAMP" ] &&
   [ -f "$CACHE/base.img" ] && [ -f "$CACHE/vmlinuz" ] && [ -f "$CACHE/initrd.img" ]; then
    say "up to date"
    echo "$CACHE"
    exit 0
fi

# --- host tools ---------------------------------------------------------------------------------
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
    say "installing host packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
"$REPO/scripts/binfmt.sh" linux/arm64

MIRROR=${ARM64VM_MIRROR:-$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
    /etc/apt/sources.list.d 2>/dev/null | grep -oE 'https?://[^ ]+' | head -n 1 || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

# --- rootfs ---------------------------------------------------------------------------------------
WORK=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 143' TERM
ROOT=$WORK/rootfs
T0=$(date +%s)

# Every mount (debootstrap's /proc, ours) lives in a private mount namespace: nothing leaks onto the host.
say "debootstrap --arch=arm64 (minbase, through qemu-user-static) ..."
unshare --mount --propagation private \
    debootstrap --arch=arm64 --variant=minbase --components=main \
        --include=ca-certificates,systemd-sysv,kmod,udev \
        "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
say "debootstrap done in $(( $(date +%s) - T0 )) s"

# The modules the guest needs before its root is mounted (virtio over PCI or MMIO, ext4), in a
# small initramfs; 9p for the shares later.
mkdir -p "$ROOT/etc/initramfs-tools/conf.d" "$ROOT/etc/modules-load.d" "$ROOT/etc/modprobe.d"
printf '%s\n' virtio_pci virtio_mmio virtio_blk ext4 crc32c_generic >>"$ROOT/etc/initramfs-tools/modules"
printf 'MODULES=list\n' >"$ROOT/etc/initramfs-tools/conf.d/arm64vm.conf"
printf '%s\n' 9pnet_virtio 9p overlay br_netfilter >"$ROOT/etc/modules-load.d/arm64vm.conf"
for m in drm virtio_gpu efi_pstore; do echo "blacklist $m"; done >"$ROOT/etc/modprobe.d/arm64vm-blacklist.conf"
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"; chmod +x "$ROOT/usr/sbin/policy-rc.d"

PKGS="linux-image-arm64 initramfs-tools dbus docker.io docker-cli iptables iproute2 procps e2fsprogs python3"
say "apt-get install in the arm64 chroot: $PKGS"
T1=$(date +%s)
# shellcheck disable=SC2086 # word splitting of PKGS is intended
unshare --mount --propagation private bash -euo pipefail -c '
    ROOT=$1; shift
    mount -t proc proc "$ROOT/proc"
    mount -t tmpfs tmpfs "$ROOT/tmp"
    export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
    chroot "$ROOT" apt-get update -qq
    chroot "$ROOT" apt-get install -y -qq --no-install-recommends "$@"
    chroot "$ROOT" apt-get clean
' _ "$ROOT" $PKGS >"$WORK/apt.log" 2>&1 || { tail -n 40 "$WORK/apt.log" >&2; die "apt-get in chroot failed"; }
say "packages done in $(( $(date +%s) - T1 )) s"

# --- guest configuration ----------------------------------------------------------------------------
rm -f "$ROOT/usr/sbin/policy-rc.d" "$ROOT/etc/apt/sources.list" "$ROOT"/etc/apt/sources.list.d/*
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/log/*.log
echo arm64vm >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 arm64vm\n::1 localhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
printf '/dev/vda / ext4 rw,relatime,discard 0 0\n' >"$ROOT/etc/fstab"
od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$ROOT/etc/machine-id"; echo >>"$ROOT/etc/machine-id"
: >"$ROOT/etc/resolv.conf"
mkdir -p "$ROOT/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\nForwardToConsole=no\n' >"$ROOT/etc/systemd/journald.conf.d/arm64vm.conf"
for u in serial-getty@ttyAMA0.service getty@tty1.service systemd-firstboot.service ldconfig.service \
         systemd-journal-catalog-update.service systemd-update-done.service systemd-logind.service \
         modprobe@drm.service modprobe@efi_pstore.service apt-daily.timer apt-daily-upgrade.timer \
         dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer \
         systemd-tmpfiles-clean.timer systemd-networkd-wait-online.service; do
    ln -sf /dev/null "$ROOT/etc/systemd/system/$u"
done
ln -sf /lib/systemd/system/multi-user.target "$ROOT/etc/systemd/system/default.target"

cat >"$ROOT/usr/local/sbin/arm64vm-run" <<'EOF'
#!/bin/bash
# Boot-time runner (arm64vm-run.service): mounts the host's shares, runs /run/arm64vm/cmd.sh with
# /mnt/host as its working directory, keeps stdout, stderr and the exit code in the control share,
# and powers the guest off.
set -u
CTL=/run/arm64vm WORK=/mnt/host
msg() { echo "arm64vm: $*" >/dev/ttyAMA0; }
off() { sync; systemctl poweroff --force --force; sleep 30; echo o >/proc/sysrq-trigger; }
mkdir -p "$CTL" "$WORK"
modprobe -a 9pnet_virtio 9p 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=none arm64vmctl "$CTL" ||
    { msg "cannot mount the control share"; off; }
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=mmap host "$WORK" ||
    msg "cannot mount the host directory share"
date +%s.%N >"$CTL/started"
cd "$WORK" || cd /
bash "$CTL/cmd.sh" </dev/null >>"$CTL/stdout" 2>>"$CTL/stderr"
rc=$?
echo "$rc" >"$CTL/rc.tmp" && mv "$CTL/rc.tmp" "$CTL/rc"
msg "command exited $rc"
off
EOF
chmod 755 "$ROOT/usr/local/sbin/arm64vm-run"
cat >"$ROOT/etc/systemd/system/arm64vm-run.service" <<'EOF'
[Unit]
Description=arm64vm: run the host's command, then power off
Wants=docker.service
After=docker.service containerd.service systemd-modules-load.service local-fs.target

[Service]
Type=oneshot
Environment=HOME=/root LANG=C.UTF-8
ExecStart=/usr/local/sbin/arm64vm-run
TimeoutStartSec=infinity
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/arm64vm-run.service "$ROOT/etc/systemd/system/multi-user.target.wants/arm64vm-run.service"

# --- kernel, initrd, disk image ---------------------------------------------------------------------
KVER=$(ls "$ROOT/lib/modules" | sort -V | tail -n1)
[ -n "$KVER" ] && [ -f "$ROOT/boot/vmlinuz-$KVER" ] && [ -f "$ROOT/boot/initrd.img-$KVER" ] ||
    die "kernel or initrd missing in the rootfs"
cp "$ROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$WORK/initrd.img"
truncate -s "$DISK_SIZE" "$WORK/base.img"
mkfs.ext4 -q -F -L arm64vm-root -E lazy_itable_init=1,lazy_journal_init=1 -d "$ROOT" "$WORK/base.img"
rm -rf "$ROOT"
chmod 444 "$WORK/base.img"
for f in base.img vmlinuz initrd.img; do mv -f "$WORK/$f" "$CACHE/$f"; done
echo "$KVER" >"$CACHE/kernel-version"
echo "$STAMP" >"$CACHE/stamp"
say "built in $(( $(date +%s) - T0 )) s: kernel $KVER, image $(du -h "$CACHE/base.img" | cut -f1) used of $DISK_SIZE"
echo "$CACHE"
