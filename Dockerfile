# compose-env: a Concourse resource type that runs docker compose inside its own Docker daemon.
ARG BASE_IMAGE=debian:trixie-slim
FROM ${BASE_IMAGE}

# Debian's engine, compose v2 plugin and Python libraries: one layer, cached until this line changes.
# pigz: dockerd inflates gzip layers with unpigz when it is on PATH (docker.io recommends it);
# measured here, it cut the seed scenario's load phase from 8.2-10.4 s to 6.2-7.5 s.
# isal (igzip), where Debian builds it: layerstore.py inflates gzip layers with it, about twice
# as fast as unpigz here (a 110 MB layer with its hash: 0.8-1.2 s against 1.5-1.7 s).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      docker.io docker-cli docker-compose containerd runc iptables fuse-overlayfs \
      python3 python3-docker python3-requests python3-jsonschema python3-defusedxml \
      zstd pigz ca-certificates \
 && if apt-cache show isal >/dev/null 2>&1; then apt-get install -y --no-install-recommends isal; fi \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb

# Our package: small, changes often, so it comes last.
COPY resource/compose_env /usr/lib/python3/dist-packages/compose_env
COPY assets/ /opt/resource/

# Which compose-env this is. `make image` and ci/pipeline.yml pass the VERSION file, the git
# revision and the repository's URL; a plain `docker build .` is a dev build. Declared here, after the slow layers,
# so that a new revision rebuilds only what follows. build.json is the one place the running
# resource reads them from (compose_env/version.py); the labels show them to registries and
# `docker inspect`.
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=unknown
# The build fails here if dockerd is not a version direct writes were tested with (see tested_engines.py).
RUN python3 -c 'import json, sys; print(json.dumps({"version": sys.argv[1], "revision": sys.argv[2]}))' "$VERSION" "$REVISION" \
      >/usr/lib/python3/dist-packages/compose_env/build.json \
 && python3 -m compileall -q /usr/lib/python3/dist-packages/compose_env \
 && python3 -c "import compose_env.protocol" \
 && python3 -m compose_env.tested_engines
LABEL org.opencontainers.image.title="compose-env" \
      org.opencontainers.image.description="Concourse resource type and task: docker compose against loaded image tarballs in an inner Docker daemon" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

ENV PYTHONUNBUFFERED=1
WORKDIR /tmp/build/put
