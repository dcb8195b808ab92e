# compose-env: a Concourse resource type that runs docker compose inside its own Docker daemon.
ARG BASE_IMAGE=debian:trixie-slim
FROM ${BASE_IMAGE}

# Debian's engine, compose v2 plugin and Python libraries: one layer, cached until this line changes.
# pigz: dockerd inflates gzip layers with unpigz when it is on PATH (docker.io recommends it);
# measured here, it cut the seed scenario's load phase from 8.2-10.4 s to 6.2-7.5 s.
# isal (igzip), where Debian builds it (trixie: amd64 and arm64 both): layerstore.py inflates gzip
# layers with it, about twice as fast as unpigz here (a 110 MB layer with its hash: 0.8-1.2 s
# against 1.5-1.7 s); without it the put falls back to unpigz.
# The same lines build linux/amd64 and linux/arm64 (`make image PLATFORM=linux/arm64`, the pipeline's index).
# What a put never runs goes in this same layer, so that it never takes space in the image
# (tests/integration/test_image_contents.py runs every tool a put does):
# - docs, man and info pages, translations and shell completions: dpkg skips them (the rules of
#   the official slim images; a put's messages are in English and nobody reads a man page in it);
# - ctr: containerd's debugging client; we talk to containerd only through dockerd;
# - containerd-shim and containerd-shim-runc-v1: the v1 runtimes, which dockerd no longer offers
#   (since 23.0); every container of ours runs under io.containerd.runc.v2 (containerd-shim-runc-v2);
# - apt's package caches (pkgcache.bin, srcpkgcache.bin): 90 MB that apt rebuilds when it needs them.
RUN printf '%s\n' 'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' \
      'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*' 'path-exclude=/usr/share/lintian/*' \
      'path-exclude=/usr/share/locale/*' 'path-include=/usr/share/locale/locale.alias' \
      'path-exclude=/usr/share/bash-completion/*' 'path-exclude=/usr/share/zsh/*' 'path-exclude=/usr/share/fish/*' \
      >/etc/dpkg/dpkg.cfg.d/compose-env-slim \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      docker.io docker-cli docker-compose containerd runc iptables fuse-overlayfs \
      python3 python3-docker python3-requests python3-jsonschema python3-defusedxml \
      zstd pigz ca-certificates \
 && if apt-cache show isal >/dev/null 2>&1; then apt-get install -y --no-install-recommends isal; fi \
 && rm -f /usr/bin/ctr /usr/bin/containerd-shim /usr/bin/containerd-shim-runc-v1 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/cache/apt/*.bin

# Our package: small, changes often, so it comes last.
COPY resource/compose_env /usr/lib/python3/dist-packages/compose_env
COPY assets/ /opt/resource/

# Which compose-env this is. `make image` and ci/pipeline.yml pass scripts/version.sh's answer (VERSION
# on the release commit, VERSION-dev+REVISION on any other), the git revision and the repository's URL;
# a plain `docker build .` is a dev build. Declared here, after the slow layers,
# so that a new revision rebuilds only what follows. build.json is the one place the running
# resource reads them from (compose_env/version.py); the labels show them to registries and
# `docker inspect`.
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE=unknown
# The build fails here if dockerd is not a version direct writes were tested with (see engine/tested_engines.py),
# or if setpriv (util-linux), through which every daemon and compose process is started, is missing.
RUN python3 -c 'import json, sys; print(json.dumps({"version": sys.argv[1], "revision": sys.argv[2]}))' "$VERSION" "$REVISION" \
      >/usr/lib/python3/dist-packages/compose_env/build.json \
 && python3 -m compileall -q /usr/lib/python3/dist-packages/compose_env \
 && python3 -c "import compose_env.protocol, compose_env.run.put, compose_env.run.task" \
 && python3 -m compose_env.engine.tested_engines \
 && setpriv --version >/dev/null
LABEL org.opencontainers.image.title="compose-env" \
      org.opencontainers.image.description="Concourse resource type and task: docker compose against loaded image tarballs in an inner Docker daemon" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

ENV PYTHONUNBUFFERED=1
WORKDIR /tmp/build/put
