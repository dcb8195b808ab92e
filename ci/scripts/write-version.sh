#!/bin/sh
# For ci/pipeline.yml: the version the image is built with (scripts/version.sh: VERSION on the release
# commit, VERSION-dev+REVISION on any other) into version/version, for load_var and check-release.
set -eu
git config --global --add safe.directory '*' # the clone belongs to another user than the task's
sh code/scripts/version.sh code > version/version
echo "version: $(cat version/version)"
