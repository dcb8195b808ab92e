"""Teardown: `compose down` runs where it does something the inner daemon's stop does not."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from compose_env.run.put import _down_matters


@pytest.mark.parametrize(
    ("inner", "grace", "aborted", "down"),
    [
        (None, 0, False, True),  # a remote engine keeps everything: down is the cleanup
        (None, 0, True, True),
        (SimpleNamespace(keeps_data_root=False), 0, False, False),  # thrown away: kill the containers at once
        (SimpleNamespace(keeps_data_root=False), 0, True, False),
        (SimpleNamespace(keeps_data_root=False), 5, False, True),  # graceful stops asked for
        (SimpleNamespace(keeps_data_root=False), 5, True, False),  # but not after SIGTERM
        (SimpleNamespace(keeps_data_root=True), 0, False, True),  # a task cache outlives the put: no stale containers or volumes
        (SimpleNamespace(keeps_data_root=True), 0, True, False),  # after SIGTERM: the daemon's stop removes them through the API
        (SimpleNamespace(keeps_data_root=True), 5, True, False),
    ],
)
def test_compose_down_runs_when_it_matters(inner: Any, grace: int, aborted: bool, down: bool) -> None:
    assert _down_matters(inner, grace, aborted) is down
