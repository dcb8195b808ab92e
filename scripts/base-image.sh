#!/usr/bin/env bash
# Make sure the base image (default debian:trixie-slim) exists in the engine.
#
# Normal machines just pull it. Where no registry is reachable, build it from
# Debian's package mirror with debootstrap and `docker import` it. Cached: when
# the image is already present this costs one `docker image inspect`.
set -euo pipefail

image=${1:-${BASE_IMAGE:-debian:trixie-slim}}
suite=${BASE_SUITE:-trixie}

log() { echo "base-image: $*" >&2; }

if docker image inspect "$image" >/dev/null 2>&1; then exit 0; fi
log "pulling $image"
if timeout 120 docker pull -q "$image" >/dev/null 2>&1; then exit 0; fi
log "pull impossible; building $image from the Debian mirror with debootstrap"

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

root=$(mktemp -d /var/tmp/base-image.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase "$suite" "$root" "$mirror" >&2
# Point apt at the same mirror the bootstrap used, as the official image does.
printf 'deb %s %s main\n' "$mirror" "$suite" >"$root/etc/apt/sources.list"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import - "$image" >/dev/null
log "created $image"
