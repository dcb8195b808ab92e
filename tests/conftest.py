"""Shared test settings: `resource/` and `tests/` are on sys.path (see pyproject.toml).

Under CI=true a skipped test fails unless it is `not_applicable` (tests/ci_skips.py).
"""

from ci_skips import pytest_make_collect_report, pytest_runtest_makereport

__all__ = ["pytest_make_collect_report", "pytest_runtest_makereport"]
