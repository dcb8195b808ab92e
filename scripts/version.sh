#!/bin/sh
# The version an image built from this checkout carries (OCI label, first log line, metadata `resource`).
# The release commit, the one that last changed VERSION, with nothing changed since: VERSION itself
# (`0.2.0`). Any other commit: `VERSION-dev+REVISION` (`0.2.0-dev+3f2c1ab`, `.dirty` with local
# changes), so an unreleased image never passes for a release. Outside a git checkout: `VERSION-dev+unknown`.
#
#   scripts/version.sh [REPOSITORY]
set -eu
repo=${1:-.}
version=$(tr -d ' \n' < "$repo/VERSION")
git() { command git -C "$repo" "$@"; }
if ! head=$(git rev-parse --verify -q HEAD 2>/dev/null); then
  echo "$version-dev+unknown"
  exit 0
fi
# A shallow clone's history ends at HEAD: every commit would look like the one that changed VERSION.
if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
  echo "$version-dev+$(git rev-parse --short HEAD)"
  exit 0
fi
released=$(git log -1 --format=%H -- VERSION)
changed=$(git status --porcelain --untracked-files=no)
if [ "$head" = "$released" ] && [ -z "$changed" ]; then
  echo "$version"
else
  echo "$version-dev+$(git rev-parse --short HEAD)${changed:+.dirty}"
fi
