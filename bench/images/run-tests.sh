#!/bin/sh
# The seed scenario's test client: wait for the server, then a few round trips.
set -eu
host=${REDIS_HOST:-redis}
tries=0
until [ "$(redis-cli -h "$host" ping 2>/dev/null)" = PONG ]; do
  tries=$((tries + 1))
  [ "$tries" -lt 200 ] || { echo "test: $host never answered"; exit 2; }
  sleep 0.05
done
echo "test: PING $host"
redis-cli -h "$host" set greeting "hello from the bench" >/dev/null
[ "$(redis-cli -h "$host" get greeting)" = "hello from the bench" ]
[ "$(redis-cli -h "$host" incr counter)" = 1 ]
echo "test: all passed"
