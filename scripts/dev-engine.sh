#!/usr/bin/env bash
# Make a Docker engine available for development and CI, then print its DOCKER_HOST.
#
# Uses the engine at $DOCKER_HOST (or the default socket) when one answers.
# Otherwise, as root on Debian, installs docker.io and starts a private dockerd
# with its own data root, socket, pidfile and log under $COMPOSE_ENV_ENGINE_DIR.
# Idempotent: a second call finds the running engine and only prints its host.
# `status`: exit 0 and print the host if an engine answers, without starting one.
# `stop`: stop the private engine by its pid file (nothing else is touched).
set -euo pipefail

engine_dir=${COMPOSE_ENV_ENGINE_DIR:-/var/lib/compose-env-dev}
socket="$engine_dir/docker.sock"
pidfile="$engine_dir/dockerd.pid"
logfile="$engine_dir/dockerd.log"
private_host="unix://$socket"

log() { echo "dev-engine: $*" >&2; }

answers() { # $1: DOCKER_HOST value ("" for the client default)
  DOCKER_HOST="$1" timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

stop_private() {
  [ -f "$pidfile" ] || { log "no private engine running"; return 0; }
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$pidfile"
  log "stopped private engine (pid $pid)"
}

if [ "${1:-}" = stop ]; then stop_private; exit 0; fi

if [ -n "${DOCKER_HOST:-}" ] && answers "$DOCKER_HOST"; then echo "$DOCKER_HOST"; exit 0; fi
if [ -S "$socket" ] && answers "$private_host"; then echo "$private_host"; exit 0; fi
if [ -z "${DOCKER_HOST:-}" ] && [ -S /var/run/docker.sock ] && answers ""; then
  echo "unix:///var/run/docker.sock"; exit 0
fi
if [ "${1:-}" = status ]; then log "no engine answers"; exit 1; fi

[ "$(id -u)" = 0 ] || { log "no engine answers and I am not root: start one and set DOCKER_HOST"; exit 1; }

if ! command -v dockerd >/dev/null 2>&1; then
  log "installing docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends docker.io >&2
fi
command -v docker >/dev/null 2>&1 || { log "no docker client found"; exit 1; }

mkdir -p "$engine_dir"
if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  rm -f "$pidfile"   # stale
fi
if [ ! -f "$pidfile" ]; then
  rm -f "$socket"
  log "starting private dockerd (data root $engine_dir/data, log $logfile)"
  setsid dockerd \
    --data-root "$engine_dir/data" \
    --exec-root "$engine_dir/exec" \
    --pidfile "$pidfile" \
    --host "$private_host" \
    </dev/null >>"$logfile" 2>&1 &
fi
for _ in $(seq 1 300); do
  if answers "$private_host"; then echo "$private_host"; exit 0; fi
  sleep 0.2
done
log "dockerd did not answer within 60 s; last log lines:"
tail -n 30 "$logfile" >&2
exit 1
