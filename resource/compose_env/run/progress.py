"""Compose's progress lines (` Container p-db-1  Creating`): which container it could not create or start, and why.

With `--progress plain`, compose prints a line per step of each container on stderr and, when the
engine refuses one, the engine's error right after it (`Error response from daemon: no command
specified`). A container whose last step is one begun and never finished (`Creating`, `Starting`),
or `Error`, failed there; the error line that follows is its reason. Without this, a dependency that
was never created leaves no container behind and the failure is blamed on the service `run` started.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PROGRESS_LINE = re.compile(r"^\s*Container (?P<container>\S+)\s+(?P<step>[A-Z][A-Za-z]*)\s*$")
#: Steps begun and not yet finished: a container left at one of them did not get past it.
UNFINISHED = {
    "Creating": "could not be created",
    "Recreate": "could not be created",
    "Starting": "could not start",
    "Waiting": "never became ready",
}
FAILED_STEP = "Error"


@dataclass(frozen=True)
class ContainerFailure:
    """A container compose could not create or start: its name, what failed, and the engine's words."""

    container: str
    what: str
    reason: str = ""

    def service(self, project: str, services: Mapping[str, Any]) -> str:
        """The service the container is of: by its `container_name`, else by compose v2's naming,
        `<project>-<service>-<n>` (or `-run-<id>` for a one-off), the longest service name that fits."""
        for name, service in services.items():
            if (service or {}).get("container_name") == self.container:
                return name
        rest = self.container.removeprefix(f"{project}-")
        fitting = [name for name in services if rest == name or rest.startswith(f"{name}-")]
        return max(fitting, key=len) if fitting else rest.rpartition("-")[0] or self.container

    @property
    def note(self) -> str:
        return f"{self.what}: {self.reason}" if self.reason else self.what


@dataclass
class ContainerProgress:
    """The last step of each container compose reported, and the error that followed a step left unfinished."""

    steps: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def see(self, line: str) -> bool:
        """Take one of compose's stderr lines; True if it was a progress line."""
        if match := PROGRESS_LINE.match(line):
            self.steps[match["container"]] = match["step"]
            return True
        if line.strip():
            for container in self._stuck():
                self.reasons.setdefault(container, line.strip())
        return False

    def _stuck(self) -> list[str]:
        return [container for container, step in self.steps.items() if step in UNFINISHED or step == FAILED_STEP]

    def failures(self) -> list[ContainerFailure]:
        """The containers compose left unfinished or in error, in the order it first reported them."""
        return [
            ContainerFailure(
                container, UNFINISHED.get(self.steps[container], "failed"), self.reasons.get(container, "")
            )
            for container in self._stuck()
        ]
