#!/usr/bin/env bash
# The dcind way, inside the same resource image, on the same inputs: what meAmidos/dcind
# and docker-image-resource's docker-lib.sh do. start_docker: sanitize cgroups, dockerd with
# its managed containerd on /scratch, `sleep 1` then `docker info` every second until it
# answers; stop_docker: `kill -TERM` dockerd without waiting. In between:
# - seed: `docker load` each tarball, `docker compose run --rm tests`, `down -v`;
# - ps: `docker compose ps` alone (the fixed cost of the way: start_docker, ps, stop_docker).
#
#   bench/dcind.sh PUT_DIR [seed|ps]   (run in the resource container; prints one JSON line of phase times)
set -euo pipefail
cd "${1:-/tmp/build/put}"
mode=${2:-seed}
now() { date +%s%N; }
since() { local ns=$(($(now) - $1)); printf '%d.%09d' $((ns / 1000000000)) $((ns % 1000000000)); }

# docker-lib.sh's sanitize_cgroups, except that an existing hierarchy is remounted
# read-write in place (a bind remount) instead of being replaced by a fresh mount of
# the host's whole hierarchy: same effect for dockerd, nothing written outside.
sanitize_cgroups() {
  mount -o remount,rw /sys/fs/cgroup 2>/dev/null || mount -o remount,bind,rw /sys/fs/cgroup
  sed -e 1d /proc/cgroups | while read -r sys _hierarchy _num enabled; do
    [ "$enabled" = 1 ] || continue
    grouping="$(cut -d: -f2 </proc/self/cgroup | grep "\\<$sys\\>" || true)"
    grouping=${grouping:-$sys}
    mountpoint="/sys/fs/cgroup/$grouping"
    mkdir -p "$mountpoint"
    if mountpoint -q "$mountpoint"; then mount -o remount,bind,rw "$mountpoint"
    else mount -n -t cgroup -o "$grouping" cgroup "$mountpoint"; fi
  done
  if ! test -e /sys/fs/cgroup/systemd; then
    mkdir /sys/fs/cgroup/systemd
    mount -t cgroup -o none,name=systemd none /sys/fs/cgroup/systemd
  fi
}

t0=$(now)
sanitize_cgroups
if grep -q '/proc/sys\s\+\w\+\s\+ro,' /proc/mounts; then mount -o remount,rw /proc/sys; fi
mtu=$(cat "/sys/class/net/$(awk '$2 == "00000000" {print $1; exit}' /proc/net/route)/mtu")
dockerd --data-root /scratch/docker --mtu "$mtu" >/tmp/docker.log 2>&1 &
pid=$!
sleep 1
until docker info >/dev/null 2>&1; do
  echo "waiting for docker to come up..." >&2
  sleep 1
done
daemon=$(since "$t0")

load_server=0 load_client=0
if [ "$mode" = seed ]; then
  t=$(now)
  docker load -i redis-image/image.tar >&2
  load_server=$(since "$t")
  t=$(now)
  docker load -i tests-image/image >&2
  docker tag "$(cat tests-image/image-id)" "$(cat tests-image/repository):$(cat tests-image/tag)"
  load_client=$(since "$t")
fi

t=$(now)
status=0
if [ "$mode" = seed ]; then
  docker compose -f src/docker-compose.yml run --rm tests >&2 || status=$?
else
  docker compose -f src/docker-compose.yml ps >&2 || status=$?
fi
run=$(since "$t")

t=$(now)
if [ "$mode" = seed ]; then docker compose -f src/docker-compose.yml down -v >&2; fi
kill -TERM "$pid"
teardown=$(since "$t")
total=$(since "$t0")
printf '{"daemon": %s, "load_server": %s, "load_client": %s, "run": %s, "teardown": %s, "total": %s, "exit_code": %s}\n' \
  "$daemon" "$load_server" "$load_client" "$run" "$teardown" "$total" "$status"
