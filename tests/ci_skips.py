"""Under `CI=true` a skip fails: a test that did not run proves nothing, and a green CI run must
mean every test ran.

A skip usually means something was missing here: root (tests/unit/test_layerstore.py), a tool,
the cgroup v2 guest. Locally that is a skip; in CI it is a failure naming what was missing. The
one exception is a test with nothing to prove under the condition it finds (a cgroup v1 check on
a cgroup v2 host): it says so with `not_applicable(reason)` and stays a skip everywhere. That is
for tests and fixtures; a module skipped at collection (`importorskip`, a module-level skip)
always counts as missing something. xfail is left alone.

tests/conftest.py registers the hooks.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import NoReturn

import pytest


class NotApplicable(pytest.skip.Exception):
    """A skip that is right in CI too: the condition found leaves the test nothing to prove."""

    __module__ = "builtins"  # as pytest's Skipped: the summary reads "NotApplicable: <reason>"


def not_applicable(reason: str) -> NoReturn:
    """Skip the test everywhere, CI included (never for a missing privilege or tool)."""
    __tracebackhide__ = True  # the skip is reported where the test called this
    raise NotApplicable(reason)


def fail_if_skipped_in_ci(
    report: pytest.TestReport | pytest.CollectReport, excinfo: pytest.ExceptionInfo[BaseException] | None
) -> None:
    """Turn a skip into a failure when CI=true, unless it is `not_applicable` (or an xfail)."""
    if os.environ.get("CI") != "true" or not report.skipped or hasattr(report, "wasxfail"):
        return
    if excinfo is not None and isinstance(excinfo.value, NotApplicable):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"{reason.removeprefix('Skipped: ')}: under CI=true a test that could not run fails (see tests/ci_skips.py)"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    fail_if_skipped_in_ci(report, call.excinfo)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    fail_if_skipped_in_ci(report, None)
    return report
