"""The package's import graph is a DAG: no module imports, directly or through others,
a module that imports it back.

Every module of `semievol_jax` is parsed (never imported), and every import statement
counts, at module level or inside a function: a function-local import that closes a
cycle still makes the two modules one unit that cannot be read, tested or replaced
apart. An edge goes to the module a statement names: `import a.b` and `from a.b import c`
to `a.b`, except where `c` is itself a submodule (`from a import b` with `a/b.py`), then
to `a.b.c`. A package's `__init__` is a module like any other, so a cycle through a
re-export counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import semievol_jax

PACKAGE = "semievol_jax"
ROOT = Path(semievol_jax.__file__).resolve().parent

def module_files() -> dict[str, Path]:
    """Dotted module name -> its file, for every module of the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of a (possibly relative) `from` target."""
    if level == 0:
        return name or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `module` imports anywhere in its file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m in known and m != module}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {m: imports_of(m, p, known) for m, p in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_import_graph_has_no_cycle():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """The parser finds module-level, function-local, relative and submodule imports."""
    pkg = tmp_path / "p"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from p.a import x\n")
    (pkg / "a.py").write_text("x = 1\ndef f():\n    from . import b\n")
    (pkg / "b.py").write_text("import p.a\n")
    known = {"p", "p.a", "p.b"}
    assert imports_of("p", pkg / "__init__.py", known) == {"p.a"}
    assert imports_of("p.a", pkg / "a.py", known) == {"p.b"}
    assert imports_of("p.b", pkg / "b.py", known) == {"p.a"}
    graph = {m: imports_of(m, pkg / (("__init__" if m == "p" else m[2:]) + ".py"), known)
             for m in known}
    assert find_cycles(graph) == [["p.a", "p.b"]]

