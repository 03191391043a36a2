"""The layout's rules, read from the source: no import circle in the core, and each room imports only what it
may (the core never Prefect, tasks never flows, nobody the CLI but itself).

Every import counts, at the top of a module or inside a function or ``if TYPE_CHECKING:``: a lazy import
hides a circle from Python, not from the reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("backtest", "tasks", "flows", "cli", "benchmarks")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


MODULES = all_modules()


def imports_of(path: Path) -> set[str]:
    """The modules ``path`` imports: ``from a import b`` is ``a.b`` when that is a module, else ``a``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


def graph(prefix: str) -> dict[str, set[str]]:
    inside = {m for m in MODULES if m == prefix or m.startswith(prefix + ".")}
    return {m: {d for d in imports_of(MODULES[m]) if d in inside and d != m} for m in inside}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walker_sees_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_walker_reads_lazy_and_type_checking_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from backtest.engine.study import StudyPlan\n"
        "def f():\n    from backtest.db import engine\n"
    )
    assert {"backtest.engine.study", "backtest.db.engine"} <= imports_of(source)


def test_no_import_circle_in_the_core():
    assert "backtest.engine.study" in MODULES and "backtest.db.engine" in MODULES  # the walker sees the tree
    cycle = find_cycle(graph("backtest"))
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("room", "forbidden"),
    [
        ("backtest", ("prefect", "prefect_dask", "tasks", "flows", "cli", "benchmarks", "tests")),
        ("tasks", ("flows", "cli", "benchmarks", "tests")),
        ("flows", ("cli", "benchmarks", "tests")),
        ("cli", ("tests",)),
        ("benchmarks", ("tests",)),
    ],
)
def test_each_room_imports_only_what_it_may(room, forbidden):
    wrong = sorted(
        f"{m} imports {d}"
        for m, path in MODULES.items()
        if m == room or m.startswith(room + ".")
        for d in imports_of(path)
        if d.split(".")[0] in forbidden
    )
    assert not wrong, wrong


def test_no_module_imports_another_modules_private_names():
    wrong = []
    for m, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                wrong += [
                    f"{m}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not wrong, wrong
