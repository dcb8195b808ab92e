"""Which compose-env this is: its release version and the git revision it was built from.

The image build writes both into `build.json` next to this module, from the Dockerfile's
VERSION and REVISION build args (the same values become the image's OCI labels), so the
image itself is the one place a running resource learns them from. Run from a source
tree (the unit tests) there is no such file: `dev (unknown)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

BUILD_INFO = Path(__file__).with_name("build.json")


@dataclass(frozen=True)
class ResourceVersion:
    version: str = "dev"
    revision: str = "unknown"

    def describe(self) -> str:
        """`compose-env 0.1.0 (3f2c1ab)`: the first line of every put's and task's log, and metadata `resource`."""
        return f"compose-env {self.version} ({self.revision})"


def read_resource_version(path: Path = BUILD_INFO) -> ResourceVersion:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return ResourceVersion()
    if not isinstance(info, dict):
        return ResourceVersion()
    default = ResourceVersion()
    return ResourceVersion(str(info.get("version") or default.version), str(info.get("revision") or default.revision))


RESOURCE_VERSION = read_resource_version()
