#!/bin/sh
# Refuse to publish unless the repository at $1 is a release: VERSION is MAJOR.MINOR.PATCH,
# CHANGELOG.md's first released section is `## [VERSION] - YYYY-MM-DD`, its `## [Unreleased]`
# section lists nothing (that would be published under an old number), and the commit is the release
# commit: the version its image carries (scripts/version.sh; from the file $2 where given, as
# ci/tasks/version.yml writes it) is VERSION itself, not VERSION-dev+REVISION.
#
#   sh ci/scripts/check-release.sh [REPOSITORY] [IMAGE_VERSION_FILE]
set -eu
repo=${1:-.}
version=$(cat "$repo/VERSION")
changelog="$repo/CHANGELOG.md"

fail() { echo "error: $*" >&2; exit 1; }

[ -f "$changelog" ] || fail "CHANGELOG.md is missing"

echo "$version" | grep -Eq '^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$' ||
  fail "VERSION: '$version' is not MAJOR.MINOR.PATCH"
released=$(grep -E '^## \[[0-9]' "$changelog" | head -n 1)
[ -n "$released" ] || fail "CHANGELOG.md: no released section (## [X.Y.Z] - YYYY-MM-DD)"
echo "$released" | grep -Eq "^## \[$(echo "$version" | sed 's/\./\\./g')\] - [0-9]{4}-[0-9]{2}-[0-9]{2}\$" ||
  fail "CHANGELOG.md: the newest release is '$released', not '## [$version] - YYYY-MM-DD': add it, or bump VERSION"
pending=$(awk '/^## \[Unreleased\]/ { inside = 1; next } /^## / { inside = 0 } inside && /^[-*] / { n++ } END { print n + 0 }' "$changelog")
[ "$pending" -eq 0 ] ||
  fail "CHANGELOG.md: $pending entries under [Unreleased]: move them into a new release and bump VERSION"
if [ -n "${2:-}" ]; then
  built=$(cat "$2")
elif command -v git >/dev/null 2>&1 && git -C "$repo" rev-parse --verify -q HEAD >/dev/null 2>&1; then
  built=$(sh "$(dirname "$0")/../../scripts/version.sh" "$repo")
else
  built=$version
fi
[ "$built" = "$version" ] ||
  fail "this commit's image is $built, not a release: publish the commit that changed VERSION (with nothing changed since)"
echo "release $version: VERSION and CHANGELOG.md agree, and this is the release commit"
