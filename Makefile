# compose-env developer entry points. Every target works on a fresh Debian machine as root:
# it installs and starts what it needs (a private dockerd, the base image) by itself.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
IMAGE ?= compose-env:dev
# The image's platform: empty for the engine's own, else linux/amd64 or linux/arm64. Another
# architecture than the machine's is built through Debian's qemu-user-static (scripts/binfmt.sh).
# A platform's image is tagged IMAGE-ARCH (compose-env:dev-arm64): it never replaces the native one.
PLATFORM ?=
BUILT_IMAGE := $(if $(PLATFORM),$(IMAGE)-$(lastword $(subst /, ,$(PLATFORM))),$(IMAGE))
BASE_IMAGE ?= debian:trixie-slim
PYTHON ?= python3
# Who makes the resource container for `make try`: docker, concourse or guardian (see tests/harness.py).
HARNESS_RUNTIME ?= docker
# What the image says it is (OCI labels, the first line of every put's log): VERSION on the release
# commit, VERSION-dev+REVISION on any other (scripts/version.sh); see CHANGELOG.md.
VERSION := $(shell scripts/version.sh)
REVISION ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
SOURCE ?= $(shell git config --get remote.origin.url 2>/dev/null || echo unknown)
export IMAGE BASE_IMAGE
# Each recipe that needs Docker asks the dev engine script (idempotent) for its address.
WITH_ENGINE = export DOCKER_HOST="$$(scripts/dev-engine.sh)";

.PHONY: try test unit integration lint format image example engine dev-deps bench clean

## try: build the image and the example, run the example put as Concourse would, print the response
try: example
	@$(WITH_ENGINE) $(PYTHON) tests/harness.py out --image $(IMAGE) --put-dir example/put --request example/request.json --runtime $(HARNESS_RUNTIME)

## test: lint, unit tests, then integration tests against the real image
test: dev-deps lint image
	@$(WITH_ENGINE) $(PYTHON) -m pytest tests/unit tests/integration

unit: dev-deps
	$(PYTHON) -m pytest tests/unit

integration: dev-deps image
	@$(WITH_ENGINE) $(PYTHON) -m pytest tests/integration

lint: dev-deps
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy
	$(PYTHON) scripts/check_structure.py

format: dev-deps
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

engine:
	@scripts/dev-engine.sh

## image: the resource image, labelled with its version (scripts/version.sh), the git revision and the repository's URL
image:
	@$(WITH_ENGINE) $(if $(PLATFORM),scripts/binfmt.sh $(PLATFORM) &&) base=$$(scripts/base-image.sh $(BASE_IMAGE) $(PLATFORM)) && \
	  docker build -q $(if $(PLATFORM),--platform $(PLATFORM)) --build-arg BASE_IMAGE=$$base --build-arg VERSION=$(VERSION) \
	    --build-arg REVISION=$(REVISION) --build-arg SOURCE=$(SOURCE) -t $(BUILT_IMAGE) . >/dev/null && \
	  echo "built $(BUILT_IMAGE) ($$(docker image inspect -f '{{.Os}}/{{.Architecture}}' $(BUILT_IMAGE))): compose-env $(VERSION) ($(REVISION))" >&2

example: image
	@$(WITH_ENGINE) example/build.sh

## bench: the side-by-side benchmarks (not tests); prints ratios
bench: image
	@$(WITH_ENGINE) $(PYTHON) bench/run.py --image $(IMAGE) && $(PYTHON) bench/bench_images.py --image $(IMAGE) && \
	  $(PYTHON) bench/bench_cache.py --image $(IMAGE)

dev-deps:
	@$(PYTHON) -c 'import importlib.util as u, sys; sys.exit(not all(u.find_spec(n) for n in "pytest ruff mypy yaml docker jsonschema requests defusedxml jsonschema-stubs requests-stubs defusedxml-stubs".split()))' 2>/dev/null || \
	  $(PYTHON) -m pip install -q -r requirements-dev.txt

clean:
	rm -rf example/put/redis-image example/put/tests-image .pytest_cache .ruff_cache .mypy_cache
