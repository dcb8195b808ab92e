"""The dockerd versions layerstore's direct writes were tested with: the one list, checked at build and at run time.

`images.layerstore` writes private files of dockerd's layer store, overlay2 driver and image store.
Their layout is not an API: a new dockerd may read them differently. So:
- the image build runs `python3 -m compose_env.engine.tested_engines` and fails if the installed
  dockerd is not listed here (a rebuild cannot change the engine under the writer unnoticed);
- at run time, direct writes are used only when `dockerd --version` is listed; any other engine
  gets every image through `docker load`, with a one-line note.

To add a version: build the image with it, run `tests/integration/test_direct_load.py` and
`test_direct_fallbacks.py` (the equivalence and fallback tests) against that image, and add
the version exactly as `dockerd --version` prints it once they pass.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

#: `dockerd --version`'s version field, for each engine the equivalence tests passed on.
TESTED_DOCKERD_VERSIONS = ("26.1.5+dfsg1",)
#: Test-only (tests/integration/test_direct_fallbacks.py): the version to report instead of the installed one.
TEST_VERSION_ENV = "COMPOSE_ENV_TEST_DOCKERD_VERSION"

_VERSION = re.compile(r"^Docker version (\S+?),")


def parse_version(output: str) -> str:
    """`Docker version 26.1.5+dfsg1, build 411e817` → `26.1.5+dfsg1`; "" when it is not that."""
    match = _VERSION.match(output.strip())
    return match.group(1) if match else ""


def start_version_probe() -> subprocess.Popen[str]:
    """`dockerd --version`, started now and read later (it takes tens of milliseconds)."""
    return subprocess.Popen(
        ["dockerd", "--version"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def probed_version(probe: subprocess.Popen[str]) -> str:
    output, _ = probe.communicate(timeout=30)
    return os.environ.get(TEST_VERSION_ENV) or parse_version(output)


def untested_note(version: str) -> str:
    """ "" for a tested version; else the log line that says why every image goes through docker load."""
    if version in TESTED_DOCKERD_VERSIONS:
        return ""
    shown = f"dockerd {version}" if version else "this dockerd (its version is unreadable)"
    tested = ", ".join(TESTED_DOCKERD_VERSIONS)
    return (
        f"{shown} is not among the versions direct writes were tested with ({tested}):"
        " every image goes through docker load"
    )


def main() -> int:
    """The image build's check: exit 1, loudly, for an engine the writer was not tested with."""
    version = parse_version(subprocess.run(["dockerd", "--version"], capture_output=True, text=True).stdout)
    if version in TESTED_DOCKERD_VERSIONS:
        print(f"dockerd {version}: tested with layerstore's direct writes", file=sys.stderr)
        return 0
    print(
        f"ERROR: dockerd {version or '(unreadable version)'} is not among the versions layerstore's direct writes "
        "were tested with"
        f" ({', '.join(TESTED_DOCKERD_VERSIONS)}).\n"
        "Run tests/integration/test_direct_load.py against an image with this engine, then add the version to"
        " TESTED_DOCKERD_VERSIONS in resource/compose_env/engine/tested_engines.py.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
