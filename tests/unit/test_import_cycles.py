"""No import cycles among ftl's modules (trainer, cluster, launcher).

The graph counts every import a module makes: at module level, under `if TYPE_CHECKING:` and inside
functions. A deferred import keeps Python from failing on a cycle but not the two modules from
needing each other; the fix is to move the shared piece down to where it belongs.
(Which package may import which is a separate test: the layering contract.)
"""

from __future__ import annotations

import ast
from itertools import pairwise
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("trainer", "cluster", "launcher")
Graph = dict[str, dict[str, int]]  # module -> {imported module: line of the first such import}


def _modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: resolve against the importing module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    # `from pkg import name` imports the module pkg.name when there is one, else pkg itself.
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> Graph:
    modules = _modules(root, packages)
    graph: Graph = {}
    for module, path in modules.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = _imported_names(node, module, path.name == "__init__.py")
            if isinstance(node, ast.ImportFrom):
                # The module part of `from X import a, b`: X.a / X.b where those are modules, else X.
                submodules = [name for name in names[:-1] if name in modules]
                names = submodules if len(submodules) == len(names) - 1 else [*submodules, names[-1]]
            for name in names:
                while name and name not in modules:  # an attribute of a module, or outside the packages
                    name = name.rpartition(".")[0]
                if name and name != module:
                    edges.setdefault(name, node.lineno)
        graph[module] = edges
    return graph


def _strongly_connected(graph: Graph) -> list[list[str]]:
    """Components of more than one module (Tarjan, iterative: the graph may be deep)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _one_cycle(graph: Graph, component: list[str]) -> str:
    """A shortest cycle through the component's first module, with the line of each import."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph[node]):
            if child == start:
                path = [*paths[node], start]
                return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in pairwise(path)) + f" -> {start}"
            if child in members and child not in paths:
                paths[child] = [*paths[node], child]
                queue.append(child)
    raise AssertionError(f"no cycle through {start}")  # cannot happen in a strongly connected component


def import_cycles(graph: Graph) -> list[str]:
    return [_one_cycle(graph, component) for component in _strongly_connected(graph)]


def test_no_import_cycles() -> None:
    graph = import_graph(REPO)
    assert {"trainer.config", "cluster.config", "launcher.cli"} <= set(graph)  # it looked at the packages
    cycles = import_cycles(graph)
    assert not cycles, "import cycles (move the shared piece to a module both can import):\n" + "\n".join(cycles)


def test_deferred_and_type_checking_imports_count(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.b import g\n    return g\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    (package / "sub" / "c.py").write_text("from .. import d\n")
    (package / "d.py").write_text("import pkg.sub.c as c\n")
    (package / "e.py").write_text("from pkg.a import f\n")  # imports into the cycle, is not part of it

    graph = import_graph(tmp_path, ("pkg",))

    assert graph["pkg.a"] == {"pkg.b": 2}
    assert graph["pkg.b"] == {"pkg.a": 3}
    assert graph["pkg.sub.c"] == {"pkg.d": 1}
    assert sorted(import_cycles(graph)) == [
        "pkg.a (line 2) -> pkg.b (line 3) -> pkg.a",
        "pkg.d (line 1) -> pkg.sub.c (line 1) -> pkg.d",
    ]
