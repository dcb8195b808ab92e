"""The package's import rules (docs/architecture.md), checked on the source: the sub-packages stay apart."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import check_structure

PACKAGE = Path(__file__).resolve().parents[2] / "resource" / "compose_env"
#: What each sub-package may not import (besides itself, everything else is allowed).
FORBIDDEN = {
    "config": {"engine", "images", "run", "protocol"},
    "engine": {"images", "run", "protocol"},
    "images": {"engine", "run", "protocol"},
    "run": {"protocol"},
    "testing": {"engine", "run", "protocol"},
}
#: Test-only code (the store faults): imported by the entry points (assets/) and tests, never by a production module.
TEST_ONLY = "testing"
#: Every top-level module but the entry point: the leaves any sub-package may import.
LEAVES = sorted(path.stem for path in PACKAGE.glob("*.py") if path.stem not in {"__init__", "protocol"})


def imported_parts(path: Path) -> set[str]:
    """The first component below compose_env of every absolute compose_env import in `path`."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = (
                [node.module] if node.module != "compose_env" else [f"compose_env.{alias.name}" for alias in node.names]
            )
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        parts |= {name.split(".")[1] for name in names if name.startswith("compose_env.")}
    return parts


@pytest.mark.parametrize("sub_package", sorted(FORBIDDEN))
def test_a_sub_package_imports_only_what_its_rules_allow(sub_package: str) -> None:
    broken = {
        f"{path.relative_to(PACKAGE)} imports compose_env.{part}"
        for path in (PACKAGE / sub_package).rglob("*.py")
        for part in imported_parts(path) & FORBIDDEN[sub_package]
    }
    assert not broken


def test_the_top_level_leaves_import_no_sub_package() -> None:
    broken = {
        f"{leaf}.py imports compose_env.{part}"
        for leaf in LEAVES
        for part in imported_parts(PACKAGE / f"{leaf}.py") & set(FORBIDDEN)
    }
    assert not broken


def test_there_are_no_relative_imports() -> None:
    relative = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(ast.parse(path.read_text())))
    ]
    assert not relative


def test_the_deferred_libraries_are_imported_whole() -> None:
    """`import docker` and `import requests` only: a submodule imported while they are deferred would run twice
    (lazy_imports)."""
    deferred = ("docker", "requests")
    broken = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in deferred:
                broken.append(f"{path.relative_to(PACKAGE)}: from {node.module} import ...")
            elif isinstance(node, ast.Import):
                broken += [
                    f"{path.relative_to(PACKAGE)}: import {a.name}"
                    for a in node.names
                    if "." in a.name and a.name.split(".")[0] in deferred
                ]
    assert not broken


def test_no_production_module_imports_the_test_faults() -> None:
    broken = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if TEST_ONLY not in path.relative_to(PACKAGE).parts and TEST_ONLY in imported_parts(path)
    ]
    assert not broken


def test_there_is_no_import_cycle() -> None:
    """scripts/check_structure.py checks it in `make lint` too; here it is proved able to see one."""
    assert check_structure.import_cycles(PACKAGE) == []


def test_the_cycle_check_sees_a_cycle(tmp_path: Path) -> None:
    package = tmp_path / "compose_env"
    package.mkdir()
    (package / "a.py").write_text("from compose_env import b\n")
    (package / "b.py").write_text("def f():\n    from compose_env.a import x\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from compose_env.a import y\n"
    )

    assert check_structure.import_cycles(package) == ["compose_env.a -> compose_env.b -> compose_env.a"]
