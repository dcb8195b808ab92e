#!/usr/bin/env bash
# Make sure the base image (default debian:trixie-slim) exists in the engine, for the engine's own
# platform or for another (`make image PLATFORM=linux/arm64`), and print the local name to build FROM.
#
# Usage: scripts/base-image.sh [IMAGE [PLATFORM]]
#
# Normal machines just pull it. Where no registry is reachable, build it from Debian's package
# mirror with debootstrap and `docker import` it. Cached: when the image is already present this
# costs one `docker image inspect`.
#
# Another platform's base gets a name of its own (compose-env-base/arm64:debian-trixie-slim): an
# engine with the classic image store keeps one image per name, so pulling debian:trixie-slim for
# arm64 would take the name from the amd64 image every other build uses.
set -euo pipefail

image=${1:-${BASE_IMAGE:-debian:trixie-slim}}
platform=${2:-}
suite=${BASE_SUITE:-trixie}
here=$(cd "$(dirname "$0")" && pwd)

log() { echo "base-image: $*" >&2; }

own=$(docker version -f '{{.Server.Os}}/{{.Server.Arch}}')
if [ -z "$platform" ] || [ "$platform" = "$own" ]; then
  platform=$own name=$image
else
  name="compose-env-base/${platform#linux/}:$(printf '%s' "$image" | tr -c 'A-Za-z0-9_.-' '-')"
fi
architecture=${platform#linux/}

if [ "$(docker image inspect -f '{{.Os}}/{{.Architecture}}' "$name" 2>/dev/null)" = "$platform" ]; then
  echo "$name"
  exit 0
fi

log "pulling $image for $platform"
if [ "$name" = "$image" ]; then
  if timeout 120 docker pull -q "$image" >/dev/null 2>&1; then echo "$name"; exit 0; fi
else
  # The pull takes the upstream name for a moment: one such swap at a time, and the name given back
  # however this script ends.
  exec 8>/var/tmp/compose-env-base-image.lock
  flock 8
  previous=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
  give_back() {
    if [ -n "$previous" ]; then docker tag "$previous" "$image"; else docker rmi -f "$image" >/dev/null 2>&1 || true; fi
  }
  trap give_back EXIT
  if timeout 120 docker pull -q --platform "$platform" "$image" >/dev/null 2>&1; then
    docker tag "$image" "$name"
    echo "$name"
    exit 0
  fi
  give_back
  trap - EXIT
fi
log "pull impossible; building $name ($platform) from the Debian mirror with debootstrap"

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d 2>/dev/null \
    | grep -oE 'https?://[^ ]+' | head -n 1 || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

if ! command -v debootstrap >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { log "debootstrap missing and I am not root"; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends debootstrap >&2
fi
# debootstrap's second stage runs the platform's own binaries: through qemu where they are foreign.
if [ "$platform" != "$own" ]; then "$here/binfmt.sh" "$platform"; fi

work=$(mktemp -d /var/tmp/base-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
# In a private mount namespace: debootstrap's /proc and /sys mounts end with it, even on an abort,
# so that the cleanup never walks into them.
unshare --mount --propagation private \
  debootstrap --arch="$architecture" --variant=minbase "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
  { tail -n 30 "$work/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }
# Point apt at the same mirror the bootstrap used, as the official image does.
printf 'deb %s %s main\n' "$mirror" "$suite" >"$root/etc/apt/sources.list"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
# Loaded, not `docker import`ed: see rootfs_image.py.
python3 "$here/rootfs_image.py" "$root" "$name" "$platform" | docker load -q >/dev/null
log "created $name ($platform)"
echo "$name"
