"""The package's layering, checked on the source with ``ast`` (docs/architecture.md).

Each layer imports only itself and the layers below it; the library never imports the run
layer or ``topologies``; no two modules import each other, directly or around a circle.
Imports under ``if TYPE_CHECKING:`` are annotations only and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: lowest first; a module belongs to the layer of its longest matching prefix
LAYERS: list[tuple[str, ...]] = [
    ("choco.errors",),
    ("choco.wire", "choco.sim"),
    ("choco.compress", "choco.comm", "choco.flat", "choco.data", "choco.models"),
    ("choco.neighbourhood", "choco.peerround"),
    ("choco.gossip", "choco.baselines", "choco.timevarying", "choco.outer", "choco.qgm"),
    ("choco.optim", "choco.tuning", "choco.tracking"),
    ("choco",),  # the package's own __init__ (lazy re-exports)
    ("topologies",),
    ("choco.run",),
]
#: entry points kept for ``python -m choco.X`` and the console scripts: they import the run layer
ENTRY_SHIMS = {"choco.train", "choco.consensus", "choco.bench", "choco.bench.__main__",
               "choco.compress.__main__", "choco.tuning.__main__", "topologies.__main__"}
RUN_LAYER = len(LAYERS) - 1


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    files = [*ROOT.joinpath("choco").rglob("*.py"), *ROOT.joinpath("topologies").rglob("*.py")]
    return {module_name(p): p for p in files}


MODULES = all_modules()


def layer(module: str) -> int:
    if module in ENTRY_SHIMS:
        return RUN_LAYER
    best, found = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), i
    if found is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")
    return found


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    return skipped


def imports_of(module: str) -> set[str]:
    """The choco/topologies modules ``module`` imports (anywhere in its body)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_nodes(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            for alias in node.names:  # a submodule by name, else a name in ``target``
                sub = f"{target}.{alias.name}"
                targets.append(sub if sub in MODULES else target)
        for t in targets:
            while t and t not in MODULES:  # a name inside a module: the module itself
                t = t.rpartition(".")[0]
            if t and t != module and t.split(".")[0] in ("choco", "topologies"):
                found.add(t)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Edges that point to a higher layer."""
    return [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
            for m, targets in sorted(graph.items()) for t in sorted(targets)
            if layer(t) > layer(m)]


def library_violations(graph: dict[str, set[str]]) -> list[str]:
    """Library modules that import the run layer, an entry shim or ``topologies``."""
    return [f"{m} imports {t}" for m, targets in sorted(graph.items())
            if m.startswith("choco") and layer(m) < RUN_LAYER
            for t in sorted(targets)
            if t.startswith(("choco.run", "topologies")) or t in ENTRY_SHIMS]


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_every_module_is_in_a_layer_and_imports_only_downward():
    bad = upward_imports(GRAPH)
    assert not bad, "\n".join(bad)


def test_library_never_imports_the_run_layer_or_topologies():
    bad = library_violations(GRAPH)
    assert not bad, "\n".join(bad)


def topologies_violations(graph: dict[str, set[str]]) -> list[str]:
    """``topologies`` modules (its ``python -m`` entry point aside) importing anything of
    choco but the error base."""
    return [f"{m} imports {t}" for m, targets in sorted(graph.items())
            if m.startswith("topologies") and m not in ENTRY_SHIMS
            for t in sorted(targets) if t.startswith("choco") and t != "choco.errors"]


def test_topologies_needs_only_the_error_base():
    """``topologies`` is graphs, mixing and specs: of choco it imports the error base only
    (not the version string, not the run layer's guards), so it stays free of torch."""
    bad = topologies_violations(GRAPH)
    assert not bad, "\n".join(bad)


def test_entry_shims_are_thin():
    """``python -m`` entry points only hand over to the run layer: no logic of their own."""
    for name in sorted(ENTRY_SHIMS):
        tree = ast.parse(MODULES[name].read_text())
        defs = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
        assert len(defs) <= 1 and len(MODULES[name].read_text().splitlines()) <= 30, name
        assert all(t.startswith("choco.run") for t in GRAPH[name]), (name, GRAPH[name])


def test_no_import_cycles():
    assert not import_cycles(GRAPH), f"modules importing each other: {import_cycles(GRAPH)}"


@pytest.mark.parametrize("source,expected", [
    ("from .errors import UsageError", {"choco.errors"}),
    ("from .compress.base import Compressor, HEADER", {"choco.compress.base"}),
    ("from . import gossip", {"choco.gossip"}),
    ("import topologies", {"topologies"}),
    ("if TYPE_CHECKING:\n    from .optim import ChocoSGD\n", set()),
    ("def f():\n    from .run.cli import run\n", {"choco.run.cli"}),
])
def test_the_checker_sees_imports(tmp_path, monkeypatch, source, expected):
    """The checker itself: relative, package, lazy and annotation-only imports."""
    monkeypatch.setitem(MODULES, "choco.fake", tmp_path / "fake.py")
    (tmp_path / "fake.py").write_text(source)
    assert imports_of("choco.fake") == expected


def test_planted_violations_are_caught():
    """A library module importing the run layer, and a two-module circle, are reported."""
    graph = {m: set(t) for m, t in GRAPH.items()}
    graph["choco.gossip"].add("choco.run.cli")
    assert library_violations(graph) == ["choco.gossip imports choco.run.cli"]
    assert "choco.gossip (layer 4) imports choco.run.cli (layer 8)" in upward_imports(graph)
    graph = {m: set(t) for m, t in GRAPH.items()}
    graph["choco.errors"].add("choco.neighbourhood")
    assert any({"choco.errors", "choco.neighbourhood"} <= set(c) for c in import_cycles(graph))
    graph = {m: set(t) for m, t in GRAPH.items()}
    graph["topologies.spec"] |= {"choco", "choco.run.files"}
    assert topologies_violations(graph) == ["topologies.spec imports choco",
                                            "topologies.spec imports choco.run.files"]
