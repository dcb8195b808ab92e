#!/bin/sh
# A tiny integration test: talk to the redis service and check what comes back.
set -eu
host=${REDIS_HOST:-redis}
echo "test: PING $host"
[ "$(redis-cli -h "$host" ping)" = PONG ]
echo "test: SET/GET round trip"
redis-cli -h "$host" set greeting "hello from compose-env" >/dev/null
[ "$(redis-cli -h "$host" get greeting)" = "hello from compose-env" ]
if [ -n "${EXPECT_FAILURE:-}" ]; then
  echo "test: failing on purpose (EXPECT_FAILURE=$EXPECT_FAILURE)"
  exit 3
fi
echo "test: all passed"
