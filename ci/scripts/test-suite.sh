#!/usr/bin/env bash
# ci/tasks/test-suite.yml: the project's test suite against the image under test, in a Debian task container.
# Inputs: code/ (the repository), image/image (oci-build-task's OCI layout of both architectures). Privileged.
set -euo pipefail
work=$PWD

# Everything the tests write goes on /scratch, a plain Concourse volume: the Docker engine's data
# root (overlay2 works there), overlay whiteouts the layerstore tests make (an overlay refuses
# them), and the example's image tarballs, hard-linked into each test's put directory (so the
# repository and the temporary files must share one file system).
cp -a code /scratch/code
cd /scratch/code
export COMPOSE_ENV_ENGINE_DIR=/scratch/compose-env-ci-engine
export TMPDIR=/scratch/tmp
mkdir -p "$TMPDIR"
if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]; then
  # cgroup v1 hierarchies may be mounted read-only in a task container; dockerd writes to them.
  # (A bind remount clears the mount's own read-only flag; a plain remount may be refused as busy.)
  for point in /sys/fs/cgroup $(awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup") print $5; break } }' /proc/self/mountinfo); do
    mount -o remount,bind,rw "$point" 2>/dev/null || mount -o remount,rw "$point" 2>/dev/null || true
  done
fi

# What .ci/run installs on a fresh machine, and skopeo, which reads the OCI layout.
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends docker.io docker-cli docker-compose containerd runc iptables \
  git make python3-pip iproute2 gcc libc6-dev npm skopeo ca-certificates >/dev/null
python3 -m pip install -q --root-user-action=ignore --break-system-packages -r requirements-dev.txt
DOCKER_HOST=$(scripts/dev-engine.sh)
export DOCKER_HOST
trap 'scripts/dev-engine.sh stop' EXIT

# The image under test, by the name the tests use: the index's image for this worker's platform
# (skopeo chooses it through BuildKit's nested index), as `docker save` would write it.
skopeo copy -q "oci:$work/image/image" "docker-archive:/scratch/image.tar:compose-env:ci"
docker load -q -i /scratch/image.tar
rm /scratch/image.tar
scripts/base-image.sh >/dev/null # the base image some tests build from (make image would fetch it)
docker image inspect -f 'testing {{index .Config.Labels "org.opencontainers.image.version"}} ({{index .Config.Labels "org.opencontainers.image.revision"}})' compose-env:ci

python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy
# CI is left unset: a worker has no cgroup v2 guest tool, and registering an arm64 emulator is not a task's
# to do (binfmt_misc is the worker's kernel's), so those tests skip here (.ci/run sets CI=true and runs them).
# shellcheck disable=SC2086 # TESTS is a list of paths
IMAGE=compose-env:ci IMAGE_PREBUILT=1 python3 -m pytest $TESTS
