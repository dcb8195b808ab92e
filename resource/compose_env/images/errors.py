"""What can be wrong with an input's bytes: the two exceptions the archive readers raise.

The planner turns them into the put's own errors: `NoMatchingPlatform` is the user's choice
of image (a UserError), any other `ArchiveError` is damage (a RuntimeFailure with the
advice to re-run the step that made the file).
"""

from __future__ import annotations


class ArchiveError(Exception):
    """The input is not what its shape promised: truncated, corrupt, a blob missing, no platform."""


class NoMatchingPlatform(ArchiveError):
    """An index offers no image for the daemon's platform (a user mistake, not damage)."""
