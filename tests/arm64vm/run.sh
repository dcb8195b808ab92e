#!/usr/bin/env bash
# run.sh: boot a throwaway copy of the arm64 guest (build.sh) under qemu-system-aarch64, run COMMAND
# in it as root with host directory DIR shared at /mnt/host (its working directory), stream its
# stdout and stderr, and exit with its exit code. Patterned on ../shared/vm/run.sh.
#
# Usage: run.sh [options] DIR -- COMMAND [ARG...]
# Options:
#   -t, --timeout SEC   kill the guest after SEC seconds, exit 124 (default 2400)
#   -m, --mem MIB       guest memory (default 4096)
#   -c, --cpus N        guest vCPUs (default 2)
#   -e NAME=VALUE       export a variable to COMMAND (repeatable)
#   -v, --verbose       stream the guest's serial console to stderr, print timings
# Exit: COMMAND's code; 124 timeout; 125 the guest failed before reporting a code.
#
# The CPU is emulated (TCG, one host thread per vCPU), so everything in the guest is 20-40 times
# slower than on the host. The CPU model is cortex-a72 (ARMv8.0): `-cpu max` adds pointer
# authentication, whose emulation slows every function call.
set -euo pipefail

CACHE=${ARM64VM_CACHE:-/var/tmp/compose-env-arm64vm}
TIMEOUT=2400 MEM=4096 CPUS=2 VERBOSE=0
ENVS=()
die() { echo "arm64vm run: $*" >&2; exit 125; }
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 125; }

while [ $# -gt 0 ]; do
    case $1 in
        -t|--timeout) TIMEOUT=$2; shift 2 ;;
        -m|--mem) MEM=$2; shift 2 ;;
        -c|--cpus) CPUS=$2; shift 2 ;;
        -e) [[ $2 == [A-Za-z_]*=* ]] || die "-e wants NAME=VALUE"; ENVS+=("$2"); shift 2 ;;
        -v|--verbose) VERBOSE=1; shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        -*) die "unknown option $1" ;;
        *) if [ -z "${DIR:-}" ]; then DIR=$1; shift; else break; fi ;;
    esac
done
[ -n "${DIR:-}" ] && [ $# -gt 0 ] || usage
[ -d "$DIR" ] || die "not a directory: $DIR"
DIR=$(readlink -f "$DIR")
[ "$(id -u)" = 0 ] || die "must run as root"
for f in base.img vmlinuz initrd.img; do
    [ -f "$CACHE/$f" ] || die "no $CACHE/$f: run build.sh first"
done

mkdir -p "$CACHE/runs"
RUN=$(mktemp -d "$CACHE/runs/run.XXXXXX")
CTL=$RUN/ctl
mkdir "$CTL"
QPID= TPIDS=()
cleanup() {
    local p
    if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then
        kill "$QPID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$QPID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$QPID" 2>/dev/null || true
    fi
    for p in "${TPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

{
    echo '#!/bin/bash'
    for e in "${ENVS[@]}"; do printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"; done
    echo 'cd /mnt/host || exit 125'
    printf 'exec'; printf ' %q' "$@"; echo
} >"$CTL/cmd.sh"
: >"$CTL/stdout"; : >"$CTL/stderr"
qemu-img create -q -f qcow2 -F raw -b "$CACHE/base.img" "$RUN/disk.qcow2"

qesc() { printf '%s' "${1//,/,,}"; }   # qemu option values double their commas
APPEND="root=/dev/vda rw rootfstype=ext4 console=ttyAMA0 quiet loglevel=4 panic=-1 systemd.show_status=0"
ARGS=(
    -name arm64vm -machine virt -accel tcg,thread=multi,tb-size=1024 -cpu "${ARM64VM_CPU:-cortex-a72}"
    -smp "$CPUS" -m "$MEM" -nodefaults -no-user-config -display none -no-reboot
    -kernel "$CACHE/vmlinuz" -initrd "$CACHE/initrd.img" -append "$APPEND"
    -drive "file=$(qesc "$RUN/disk.qcow2"),if=none,id=root,format=qcow2,cache=unsafe,discard=unmap"
    -device virtio-blk-pci,drive=root
    -virtfs "local,path=$(qesc "$CTL"),mount_tag=arm64vmctl,security_model=passthrough,id=ctl"
    -virtfs "local,path=$(qesc "$DIR"),mount_tag=host,security_model=passthrough,multidevs=remap,id=host"
    -device virtio-rng-pci -nic none
    -chardev "file,id=con,path=$(qesc "$RUN/console.log")" -serial chardev:con
)

# qemu runs under timeout(1): on expiry it gets SIGTERM (SIGKILL 10 s later) and timeout exits 124.
START=$(date +%s.%N)
timeout --foreground -k 10 "$TIMEOUT" qemu-system-aarch64 "${ARGS[@]}" </dev/null >"$RUN/qemu.log" 2>&1 &
QPID=$!
tail -q -n +1 -s 0.2 -F --pid="$QPID" "$CTL/stdout" 2>/dev/null &
TPIDS+=($!)
tail -q -n +1 -s 0.2 -F --pid="$QPID" "$CTL/stderr" >&2 2>/dev/null &
TPIDS+=($!)
if [ $VERBOSE = 1 ]; then
    tail -q -n +1 -s 0.2 -F --pid="$QPID" "$RUN/console.log" 2>/dev/null | sed -u 's/^/[console] /' >&2 &
    TPIDS+=($!)
fi
wait "$QPID" && QRC=0 || QRC=$?
QPID=
for p in "${TPIDS[@]}"; do wait "$p" 2>/dev/null || true; done
TPIDS=()

if [ -f "$CTL/started" ]; then
    echo "arm64vm run: boot-to-command $(awk -v a="$START" -v b="$(stat -c %.Y "$CTL/started")" \
        'BEGIN{printf "%.0f", b-a}') s, total $(awk -v a="$START" -v b="$(date +%s.%N)" 'BEGIN{printf "%.0f", b-a}') s" >&2
fi
if [ $QRC = 124 ] || [ $QRC = 137 ]; then
    echo "arm64vm run: timed out after $TIMEOUT s" >&2
    exit 124
fi
if [ -f "$CTL/rc" ]; then
    exit "$(cat "$CTL/rc")"
fi
echo "arm64vm run: the guest reported no exit code (qemu exit $QRC); console tail:" >&2
tail -n 40 "$RUN/console.log" >&2 || true
tail -n 20 "$RUN/qemu.log" >&2 || true
exit 125
