"""The package's shape (docs/architecture.md): each layer imports only the layers below it, no module imports another
module's private names, there is no import cycle, the command line is imported by nothing in the library, and long
functions stay rare."""
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


#: The layers of docs/architecture.md, lowest first: a unit (a top-level module or sub-package of wsbus) may import
#: the package root and units of lower layers only.
LAYERS = (
    ("checkpoint", "distributed", "seeding", "interrupts", "provenance"),   # foundations
    ("data", "losses", "schedules"),                                         # data and the paper's formulas
    ("mil", "metrics", "companion"),                                         # MoI rules, measures, chapters 10-13
    ("evaluate", "models"),                                                  # the evaluation API, the detector
    ("viz", "engine"),                                                       # figures, the training loop
    ("inference", "teachers", "pretrain", "widgets"),                        # using a detector, teaching one
    ("self_training", "export"),                                             # Table IV, deployment
    ("experiments",),                                                        # recipes and the protocol
    ("notebook", "cli"),                                                     # the book's set-up, the command
    ("__main__",),                                                           # python -m wsbus
)


def _unit(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_each_layer_imports_only_the_layers_below():
    mods = _modules()
    layer = {u: i for i, units in enumerate(LAYERS) for u in units}
    units = {_unit(m) for m in mods} - {None}
    assert units <= set(layer), f"units missing from LAYERS (and docs/architecture.md): {sorted(units - set(layer))}"
    bad = sorted({f"{m} -> {src}" for m, src, _ in _imports(mods)
                  if _unit(src) is not None and _unit(m) != _unit(src) and layer[_unit(src)] >= layer[_unit(m)]})
    assert not bad, bad


def test_architecture_doc_names_every_unit_in_its_layer():
    doc = (ROOT.parent / "docs" / "architecture.md").read_text()
    for units in LAYERS:
        line = next((ln for ln in doc.splitlines() if ln.startswith("| " + " ".join(f"`{u}`" for u in units[:1]))),
                    None)
        assert line is not None, f"docs/architecture.md has no layer row starting with `{units[0]}`"
        assert all(f"`{u}`" in line for u in units), (units, line)


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
