"""Teardown: `compose down` runs where it does something the engine's stop does not, and the budget fits Concourse's
grace."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from compose_env.engine.budget import BUDGET, TeardownBudget
from compose_env.engine.daemon import RunningDaemon
from compose_env.engine.remote import RemoteEngine


@pytest.mark.parametrize("aborted", [False, True])
@pytest.mark.parametrize("grace", [0, 5])
def test_a_remote_engine_keeps_everything_so_compose_down_is_always_the_cleanup(grace: int, aborted: bool) -> None:
    assert RemoteEngine(handle=None).compose_down_matters(grace, aborted) is True  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("keeps_data_root", "grace", "aborted", "down"),
    [
        (False, 0, False, False),  # thrown away: kill the containers at once
        (False, 0, True, False),
        (False, 5, False, True),  # graceful stops asked for
        (False, 5, True, False),  # but not after SIGTERM
        (True, 0, False, True),  # a task cache outlives the put: no stale containers or volumes
        (True, 0, True, False),  # after SIGTERM: the daemon's stop removes them through the API
        (True, 5, True, False),
    ],
)
def test_on_an_inner_daemon_compose_down_runs_when_it_matters(
    keeps_data_root: bool, grace: int, aborted: bool, down: bool
) -> None:
    engine = RunningDaemon(SimpleNamespace(keeps_data_root=keeps_data_root), handle=None)  # type: ignore[arg-type]

    assert engine.compose_down_matters(grace, aborted) is down


def test_every_bound_of_an_aborted_teardown_fits_in_concourses_grace_with_room_to_spare() -> None:
    assert BUDGET.after_abort_worst_case <= BUDGET.concourse_grace - 2
    assert TeardownBudget(down_after_abort_inner=8.0).after_abort_worst_case > BUDGET.concourse_grace


def test_compose_down_gets_the_users_grace_on_a_normal_ending_and_a_fixed_bound_after_an_abort() -> None:
    assert BUDGET.compose_down(remote=False, aborted=False, grace=7) == 7 + BUDGET.down_normal
    assert BUDGET.compose_down(remote=False, aborted=True, grace=7) == BUDGET.down_after_abort_inner
    assert BUDGET.compose_down(remote=True, aborted=True, grace=7) == BUDGET.down_after_abort_remote
