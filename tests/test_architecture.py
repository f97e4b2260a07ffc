"""The import rules of docs/architecture.md, read from the source: families import the core, never
each other and never the command line; the core imports no family; and no modules import each
other in a circle (at load time or inside a function)."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
FRONT = ("distill.cli", "distill.api")  # the front doors: they may import families (the registry names them as strings)


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m == "distill" or m.startswith("distill.")}


def _graph(top_level_only: bool = False) -> dict[str, set[str]]:
    files = {_module(p): p for p in (SRC / "distill").rglob("*.py")}
    return {m: {i for i in _imports(p, top_level_only=top_level_only) if i in files and i != m}
            for m, p in files.items()}


def _family(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "families" else None


def _is_front(mod: str) -> bool:
    return any(mod == f or mod.startswith(f + ".") for f in FRONT)


def test_families_import_the_core_never_each_other_nor_the_cli():
    graph = _graph(top_level_only=False)
    assert len(graph) > 100 and any(_family(m) == "encoder" for m in graph)  # the reader sees the tree
    bad = sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps
                 if _family(a) and ((_family(b) and _family(b) != _family(a)) or b.startswith("distill.cli")))
    assert not bad, "\n".join(bad)


def test_the_core_imports_no_family():
    graph = _graph(top_level_only=False)
    bad = sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps
                 if not _family(a) and not _is_front(a) and a != "distill.families" and _family(b))
    assert not bad, "\n".join(bad)


def test_no_import_circles():
    graph = _graph(top_level_only=False)  # imports inside functions too: a circle is one, wherever it hides
    # Tarjan's strongly connected components; a component of more than one module is a circle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, circles


def test_the_checks_see_a_planted_violation(tmp_path, monkeypatch):
    """The reader is not blind: a family file importing another family is found."""
    import shutil

    fake = tmp_path / "src"
    shutil.copytree(SRC / "distill", fake / "distill", ignore=shutil.ignore_patterns("__pycache__"))
    (fake / "distill" / "families" / "graph" / "planted.py").write_text("from distill.families.llm import data\n")
    monkeypatch.setattr(__import__(__name__), "SRC", fake)
    graph = _graph(top_level_only=False)
    assert "distill.families.llm.data" in graph["distill.families.graph.planted"]
