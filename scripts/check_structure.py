#!/usr/bin/env python3
"""The package's shape, checked in `make lint`: no module over 450 lines, no function over 60, no import cycle.

Small modules with one job each, functions a reader takes in at once, and layers that do not
need each other both ways (the import rules themselves: tests/unit/test_import_rules.py).

    python3 scripts/check_structure.py [PACKAGE_DIR]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
PACKAGE = Path(__file__).resolve().parents[1] / "resource" / "compose_env"


def too_long(package: Path) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            problems.append(f"{path.relative_to(package.parent)}: {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    where = f"{path.relative_to(package.parent)}:{node.lineno}"
                    problems.append(f"{where}: {node.name} has {length} lines (at most {MAX_FUNCTION_LINES})")
    return problems


def module_name(package: Path, path: Path) -> str:
    relative = path.relative_to(package.parent).with_suffix("")
    return ".".join(relative.parts[:-1] if relative.name == "__init__" else relative.parts)


def runtime_imports(path: Path) -> set[str]:
    """The package's modules `path` imports when it runs (at the top or in a function; not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    type_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("compose_env"):
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("compose_env")}
    return names


def import_cycles(package: Path) -> list[str]:
    """Modules that import each other, directly or around a loop (a package importing its own submodules excepted)."""
    modules = {module_name(package, path): path for path in package.rglob("*.py")}
    graph = {name: {m for m in runtime_imports(path) if m in modules and m != name} for name, path in modules.items()}
    cycles: list[str] = []
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            loop = [*trail[trail.index(name) :], name]
            if not all(part.startswith(loop[0]) for part in loop):
                cycles.append(" -> ".join(loop))
            return
        for imported in sorted(graph[name] - done):
            visit(imported, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    return cycles


def main() -> int:
    package = Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE
    problems = too_long(package) + [f"import cycle: {cycle}" for cycle in import_cycles(package)]
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
