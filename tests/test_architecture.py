"""The package's shape (docs/architecture.md): no module imports another module's private names, there is no import
cycle, the command line is imported by nothing in the library, and long functions stay rare."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "wsbus"


def _modules():
    mods = {}
    for p in ROOT.rglob("*.py"):
        name = ".".join(("wsbus",) + p.relative_to(ROOT).with_suffix("").parts)
        is_pkg = name.endswith(".__init__")
        mods[name[: -len(".__init__")] if is_pkg else name] = (ast.parse(p.read_text()), is_pkg)
    return mods


def _imports(mods):
    """(importer, imported module, imported name or None) for every wsbus import, at any depth of the code."""
    out = []
    for mod, (tree, is_pkg) in mods.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    src = ".".join(base + ([node.module] if node.module else []))
                else:
                    src = node.module or ""
                if not src.startswith("wsbus"):
                    continue
                for alias in node.names:
                    full = f"{src}.{alias.name}"
                    out.append((mod, full if full in mods else src, alias.name))
            elif isinstance(node, ast.Import):
                out += [(mod, a.name, None) for a in node.names if a.name.startswith("wsbus")]
    return out


def test_no_private_name_crosses_a_module_boundary():
    mods = _modules()
    bad = [f"{m} imports {src}.{name}" for m, src, name in _imports(mods)
           if name and name.startswith("_") and not name.startswith("__") and src != m]
    assert not bad, bad


def test_no_import_cycle():
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, src, _ in _imports(mods):
        related = src.startswith(m + ".") or m.startswith(src + ".")   # a package and its own submodules
        if src in mods and src != m and not related:
            graph[m].add(src)
    state, stack = {}, []

    def visit(v):
        state[v] = "open"
        stack.append(v)
        for w in graph[v]:
            if state.get(w) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(w):] + [w]))
            if w not in state:
                visit(w)
        stack.pop()
        state[v] = "done"

    for v in sorted(graph):
        if v not in state:
            visit(v)


def test_the_command_line_is_imported_by_nothing_in_the_library():
    users = {m for m, src, _ in _imports(_modules()) if src == "wsbus.cli" and m != "wsbus.__main__"}
    assert not users, users


def test_at_most_three_functions_over_80_lines():
    long = []
    for mod, (tree, _) in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body
                has_doc = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
                start = body[0].end_lineno + 1 if has_doc else node.lineno
                if node.end_lineno - start + 1 > 80:
                    long.append(f"{mod}.{node.name}")
    assert len(long) <= 3, long
