#!/usr/bin/env bash
# Build the example's images and lay them out as earlier pipeline steps would:
#   put/redis-image/  like registry-image `get` with format: oci (image.tar, repository, tag, digest)
#   put/tests-image/  like oci-build-task's output (image.tar without a name; the put tags it)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
base=${BASE_IMAGE:-debian:trixie-slim}
put="$here/put"

docker build -q --build-arg BASE_IMAGE="$base" --target redis -t example/redis:ci "$here/images" >/dev/null
docker build -q --build-arg BASE_IMAGE="$base" --target tests -t example/tests:ci "$here/images" >/dev/null

mkdir -p "$put/redis-image" "$put/tests-image"
docker save example/redis:ci -o "$put/redis-image/image.tar"
echo example/redis >"$put/redis-image/repository"
echo ci >"$put/redis-image/tag"
docker image inspect -f '{{.Id}}' example/redis:ci >"$put/redis-image/digest"

# oci-build-task leaves no name in its tarball: save by id so that RepoTags is empty.
docker save "$(docker image inspect -f '{{.Id}}' example/tests:ci)" -o "$put/tests-image/image.tar"
docker image inspect -f '{{.Id}}' example/tests:ci >"$put/tests-image/digest"
echo "example images ready in $put" >&2
