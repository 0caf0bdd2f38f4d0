"""The library's layering: no module of adamjax imports, even lazily, one that imports it.

An import inside a function closes a circle as surely as one at the top of a module (it
only delays the failure, or hides it behind an import order), so both are read here, from
the source with :mod:`ast`, without importing anything.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "adamjax"


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The adamjax modules ``name`` imports anywhere in its source, with a line of each."""

    def resolve(dotted: str) -> str | None:  # the longest prefix that is a module
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    deps: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            mod = ".".join([*base, *([node.module] if node.module else [])])
            # ``from X import y``: the module X.y where there is one, else X itself.
            targets = [
                f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names
            ]
        else:
            continue
        for target in targets:
            dep = resolve(target) if target.split(".")[0] == "adamjax" else None
            if dep is not None and dep != name:
                deps.setdefault(dep, node.lineno)
    return deps


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest import cycle through each module that lies on one (deduplicated)."""
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    for start in sorted(graph):
        prev: dict[str, str] = {}
        queue = deque([start])
        cycle = None
        while queue and cycle is None:
            a = queue.popleft()
            for b in sorted(graph[a]):
                if b == start:
                    cycle = [a]
                    while cycle[-1] != start:
                        cycle.append(prev[cycle[-1]])
                    cycle = [*cycle[::-1], start]
                    break
                if b not in prev:
                    prev[b] = a
                    queue.append(b)
        if cycle is not None and frozenset(cycle) not in seen:
            seen.add(frozenset(cycle))
            found.append(cycle)
    return found


def test_no_import_cycles_in_adamjax():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert len(graph) > 20 and "adamjax.aliases" in graph["adamjax"]  # the scan sees imports
    cycles = _cycles(graph)
    lines = [
        " -> ".join(cycle)
        + "  ["
        + ", ".join(
            f"{modules[a].relative_to(PACKAGE.parent)}:{graph[a][b]}"
            for a, b in zip(cycle, cycle[1:], strict=False)
        )
        + "]"
        for cycle in cycles
    ]
    assert not cycles, "import cycles among adamjax modules:\n" + "\n".join(lines)


def test_native_imports_nothing_of_the_rest_of_adamjax():
    modules = _modules()
    outside = {
        f"{name} imports {dep} (line {line})"
        for name, path in modules.items()
        if name.startswith("adamjax.native")
        for dep, line in _imports(name, path, modules).items()
        if not dep.startswith("adamjax.native")
    }
    assert not outside, sorted(outside)
