#!/usr/bin/env bash
# Let this machine run another architecture's Linux binaries: the kernel's binfmt_misc hands them
# to Debian's qemu-user-static. Used to build images for a platform this machine is not (`make
# image PLATFORM=linux/arm64` on amd64) and to debootstrap a root filesystem for it.
#
# Usage: scripts/binfmt.sh PLATFORM   (linux/arm64, linux/amd64, ...; the machine's own: nothing to do)
#
# The entry is registered with the F (fix binary) flag, as Debian's binfmt.d files say: the kernel
# opens the emulator when the entry is registered, so it also runs inside containers and chroots,
# where /usr/libexec/qemu-binfmt does not exist. Idempotent; as root on a Debian machine.
set -euo pipefail

platform=${1:?usage: binfmt.sh PLATFORM}
log() { echo "binfmt: $*" >&2; }

architecture=${platform#linux/}
architecture=${architecture%%/*}
case $architecture in
  amd64) machine=x86_64 ;;
  arm64) machine=aarch64 ;;
  *) machine=$architecture ;;
esac
[ "$(uname -m)" = "$machine" ] && exit 0
case $machine in
  x86_64 | aarch64) ;;
  *) log "no emulator known for $platform (linux/amd64 and linux/arm64 are)"; exit 1 ;;
esac

entry=/proc/sys/fs/binfmt_misc/qemu-$machine
rules=/usr/lib/binfmt.d/qemu-$machine.conf
if [ ! -f "$rules" ]; then
  [ "$(id -u)" = 0 ] || { log "qemu-user-static is missing and I am not root"; exit 1; }
  log "installing qemu-user-static (Debian's user-mode emulators)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends qemu-user-static >&2
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e "$entry" ]; then
  # The rule as Debian ships it (":qemu-aarch64:M::<magic>:<mask>:<interpreter>:OPF"), registered as is.
  # The entry is the kernel's, for the whole machine, and stays until reboot (or `echo -1 >$entry`).
  # (Another run may register it at the same moment: the kernel then refuses this one, which is fine.)
  if grep -v '^#' "$rules" | head -n 1 >/proc/sys/fs/binfmt_misc/register 2>/dev/null || [ -e "$entry" ]; then
    log "registered $(basename "$entry") ($(sed -n 's/^interpreter //p' "$entry"))"
  else
    log "the kernel refused the rule in $rules"; exit 1
  fi
fi
grep -q '^enabled' "$entry" || { log "$entry is registered but disabled"; exit 1; }
grep -q '^flags:.*F' "$entry" || log "warning: $entry lacks the F flag: builds in containers will not find the emulator"
