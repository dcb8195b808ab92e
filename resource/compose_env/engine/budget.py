"""The teardown's time: Concourse's 10 s between an abort's SIGTERM and its SIGKILL, shared out between the steps.

One object holds every bound, so that the sum is code, not a comment: `after_abort_worst_case` is
what a teardown can take when every step runs to its bound after a SIGTERM, and a unit test
keeps it within Concourse's grace.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TeardownBudget:
    """Seconds each step of a teardown may take (stop_grace comes on top where the user gives one)."""

    #: Concourse's SIGTERM-to-SIGKILL grace (atc/worker/runtime `killer.go`, Guardian's stopper).
    concourse_grace: float = 10.0
    #: `compose down` after a SIGTERM: an inner daemon kills what is left itself; a remote engine only has compose.
    down_after_abort_inner: float = 3.0
    down_after_abort_remote: float = 7.0
    #: `compose down` on a normal ending, on top of stop_grace.
    down_normal: float = 20.0
    #: The container calls of the daemon's stop (list, stop, remove, prune), on top of stop_grace.
    containers: float = 2.0
    #: What dockerd gets after SIGTERM before SIGKILL: on a normal ending, and after an abort (containers already
    #: killed).
    dockerd: float = 1.5
    dockerd_after_abort: float = 1.0
    #: What a SIGKILLed daemon (dockerd, then containerd) gets to disappear before the sweep goes on without it.
    reap: float = 1.0

    def compose_down(self, *, remote: bool, aborted: bool, grace: float) -> float:
        """The bound of `compose down`; after a SIGTERM, the one that leaves room for the rest."""
        return self.down_after_abort(remote=remote) if aborted else grace + self.down_normal

    def down_after_abort(self, *, remote: bool) -> float:
        return self.down_after_abort_remote if remote else self.down_after_abort_inner

    def dockerd_grace(self, grace: float) -> float:
        return self.dockerd if grace > 0 else self.dockerd_after_abort

    @property
    def after_abort_worst_case(self) -> float:
        """A SIGTERM during a normal teardown of an inner daemon, every step to its bound:
        compose down, the container calls, dockerd's grace and reap, containerd's reap."""
        return self.down_after_abort_inner + self.containers + self.dockerd_after_abort + self.reap + self.reap


BUDGET = TeardownBudget()
