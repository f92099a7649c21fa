"""The package's import graph has no cycles (module-level and function-level imports alike).

A cycle hidden in a function body still couples two modules both ways; it only moves the failure
from import time to call time. ``if TYPE_CHECKING:`` blocks are ignored: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path, package_root: Path) -> str:
    parts = list(path.relative_to(package_root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """Package modules imported anywhere in ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def resolve(name: str) -> str | None:
        """The longest package module that ``name`` is or lies in."""
        while name:
            if name in modules:
                return name
            name = name.rpartition(".")[0]
        return None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = resolve(alias.name)
                if target:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            for alias in node.names:  # "from . import x" names a module; "from .m import f" a name in m
                target = resolve(f"{prefix}.{alias.name}") if f"{prefix}.{alias.name}" in modules else resolve(prefix)
                if target:
                    found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """module -> the package modules it imports, for every ``.py`` file under ``package_dir``.

    A package's ``__init__`` is not an edge target for ``from pkg import x`` when ``x`` is a module.
    """
    files = sorted(package_dir.rglob("*.py"))
    names = {_module_name(p, package_dir): p for p in files}
    modules = set(names)
    return {name: _imports(ast.parse(path.read_text(), str(path)), name, path.name == "__init__.py", modules)
            for name, path in names.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle's strongly connected component, as sorted module lists (Tarjan 1972).

    Each returned list is one group of modules that import each other, directly or through a longer
    loop; a module importing itself is not reported.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(components)


def _describe(graph: dict[str, set[str]], component: list[str]) -> str:
    edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a]) if b in component]
    return f"{' <-> '.join(component)} ({', '.join(edges)})"


def test_cxr_utils_has_no_import_cycles():
    graph = import_graph(ROOT / "cxr_utils")
    assert "cxr_utils.stats" in graph and "cxr_utils.classify" in graph["cxr_utils.study"]
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(_describe(graph, c) for c in cycles)


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_detector_finds_function_level_relative_and_absolute_cycles(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from . import b\n",
        "pkg/b.py": "def f():\n    from .a import thing\n",  # a <-> b, one side inside a function
        "pkg/c.py": "import pkg.d\n",
        "pkg/d.py": "from pkg.sub import e\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/e.py": "from ..c import x\n",  # c -> d -> sub.e -> c
        "pkg/f.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .g import G\nimport os\n",
        "pkg/g.py": "from .f import F\n",  # f -> g only for type checking: no cycle
    })
    graph = import_graph(pkg)
    assert graph["pkg.b"] == {"pkg.a"} and graph["pkg.sub.e"] == {"pkg.c"} and graph["pkg.f"] == set()
    assert find_cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.d", "pkg.sub.e"]]
    assert "pkg.a -> pkg.b" in _describe(graph, ["pkg.a", "pkg.b"])


def test_detector_passes_an_acyclic_package(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "from .a import A\n",
        "pkg/a.py": "from .b import B\nimport pkg.c\n",
        "pkg/b.py": "from . import c\n",
        "pkg/c.py": "import json\n",
    })
    graph = import_graph(pkg)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b", "pkg.c"}, "pkg.b": {"pkg.c"}, "pkg.c": set()}
    assert find_cycles(graph) == []
