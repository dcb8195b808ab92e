# A test runner for Testcontainers' Node binding: Debian's nodejs, and the testcontainers package from
# the npm registry, installed by the test setup on the host (node_modules/): no network needed here.
ARG BASE_IMAGE=debian:trixie-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs \
 && rm -rf /var/lib/apt/lists/*
COPY node_modules/ /tests/node_modules/
COPY start_redis.mjs /tests/start_redis.mjs
CMD ["node", "/tests/start_redis.mjs"]
