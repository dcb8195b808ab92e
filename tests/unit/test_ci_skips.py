"""tests/ci_skips.py: under CI=true a skip fails unless it is `not_applicable`.

Run on a small suite in a child pytest.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
SUITE = """
import os
import pytest
from ci_skips import not_applicable

@pytest.mark.skipif(True, reason="writes devices: root only")
def test_needs_root():
    pass

def test_needs_a_tool():
    pytest.skip("no qemu here")

@pytest.fixture
def cgroup_v1_host():
    not_applicable("cgroup v2 has no devices cgroup")

def test_devices_cgroup(cgroup_v1_host):
    pass

@pytest.mark.xfail(reason="known")
def test_known_bug():
    assert False

def test_runs():
    pass
"""
SKIPPED_AT_COLLECTION = (
    "import pytest\npytest.importorskip('no_such_module_anywhere')\n\ndef test_never_collected():\n    pass\n"
)


def outcomes(tmp_path: Path, ci: str | None) -> dict[str, str]:
    """Each test's outcome in a child pytest (junit XML's words: passed, skipped, failure, error)."""
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "test_collection.py").write_text(SKIPPED_AT_COLLECTION)
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "PYTEST_ADDOPTS")}
    # No installed plugins (hypothesis and the like take seconds to load): the policy alone.
    env |= {"PYTHONPATH": str(TESTS), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **({"CI": ci} if ci is not None else {})}
    report = tmp_path / "report.xml"
    # --continue-on-collection-errors: under CI the module skipped at collection is an error, which would stop the run.
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "ci_skips",
        "-p",
        "no:cacheprovider",
        "--continue-on-collection-errors",
        f"--junitxml={report}",
    ]
    subprocess.run([*argv, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, check=False)
    found = {}
    for case in ElementTree.parse(report).iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("skipped", "failure", "error")]
        found[case.get("name", "")] = kinds[0] if kinds else "passed"
    return found


def test_under_ci_a_skip_fails_unless_the_test_is_not_applicable(tmp_path: Path) -> None:
    assert outcomes(tmp_path, "true") == {
        "test_needs_root": "error",  # a skipif is decided at setup
        "test_needs_a_tool": "failure",
        "test_devices_cgroup": "skipped",
        "test_known_bug": "skipped",
        "test_runs": "passed",
        "test_collection": "error",
    }


def test_outside_ci_every_skip_stays_a_skip(tmp_path: Path) -> None:
    assert outcomes(tmp_path, None) == {
        "test_needs_root": "skipped",
        "test_needs_a_tool": "skipped",
        "test_devices_cgroup": "skipped",
        "test_known_bug": "skipped",
        "test_runs": "passed",
        "test_collection": "skipped",
    }
