"""scripts/version.sh: only the release commit is labelled VERSION; every other build says it is unreleased."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def _version(repo: Path) -> str:
    return subprocess.run(
        ["sh", str(ROOT / "scripts/version.sh"), str(repo)], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_the_release_commit_is_the_version_and_every_later_one_a_dev_build(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "VERSION").write_text("0.2.0\n")
    (repo / "code.py").write_text("a = 1\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "release 0.2.0")
    assert _version(repo) == "0.2.0"

    (repo / "code.py").write_text("a = 2\n")
    assert _version(repo) == f"0.2.0-dev+{_git(repo, 'rev-parse', '--short', 'HEAD')}.dirty"

    _git(repo, "commit", "-qam", "a fix")
    assert _version(repo) == f"0.2.0-dev+{_git(repo, 'rev-parse', '--short', 'HEAD')}"


def test_outside_a_git_checkout_it_is_a_dev_build(tmp_path: Path) -> None:
    shutil.copy(ROOT / "VERSION", tmp_path / "VERSION")

    assert _version(tmp_path) == (ROOT / "VERSION").read_text().strip() + "-dev+unknown"


def test_a_shallow_clone_is_a_dev_build_even_at_the_release_commit(tmp_path: Path) -> None:
    """A shallow history ends at HEAD: `git log -- VERSION` would name HEAD whatever it is."""
    origin = tmp_path / "origin"
    origin.mkdir()
    _git(origin, "init", "-q")
    (origin / "VERSION").write_text("0.2.0\n")
    _git(origin, "add", ".")
    _git(origin, "commit", "-qm", "release 0.2.0")
    (origin / "code.py").write_text("a = 1\n")
    _git(origin, "add", ".")
    _git(origin, "commit", "-qm", "after the release")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{origin}", str(clone)], check=True)

    assert _version(clone) == f"0.2.0-dev+{_git(clone, 'rev-parse', '--short', 'HEAD')}"
