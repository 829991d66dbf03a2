"""Every library name can be traced to the chapter that teaches it: a "Taught in ``book/X.md``" pointer sits only on
a module or on a public top-level name, names a chapter that exists, and that chapter uses the name."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POINTER = re.compile(r"Taught in\b(.{0,200}?)(?:\.\s|\.$|$)", re.S)
CHAPTER = re.compile(r"``book/([0-9a-z_]+\.md)``")
MODULES = sorted(p for p in (ROOT / "wsbus").rglob("*.py") if p.name != "cli.py")


def _pointers(doc: str):
    for m in POINTER.finditer(doc or ""):
        yield from CHAPTER.findall(m.group(1))


def _public(tree: ast.Module):
    names = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            if isinstance(node.value, (ast.List, ast.Tuple)):  # a literal list; a re-export module builds its own
                names = {e.value for e in node.value.elts}
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pointers_name_existing_chapters_that_use_the_name(path):
    tree = ast.parse(path.read_text())
    public = _public(tree)
    problems = []
    for chapter in _pointers(ast.get_docstring(tree)):
        if not (ROOT / "book" / chapter).is_file():
            problems.append(f"module docstring: book/{chapter} does not exist")
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        chapters = list(_pointers(ast.get_docstring(node)))
        if not chapters:
            continue
        top = node in tree.body
        if not top or node.name.startswith("_") or (public is not None and node.name not in public):
            problems.append(f"{node.name}: a pointer on a name that is not public API (methods and private names "
                            f"carry none)")
            continue
        for chapter in chapters:
            text_path = ROOT / "book" / chapter
            if not text_path.is_file():
                problems.append(f"{node.name}: book/{chapter} does not exist")
            elif not re.search(rf"\b{re.escape(node.name)}\b", text_path.read_text()):
                problems.append(f"{node.name}: book/{chapter} never uses the name")
    assert not problems, "\n".join(problems)


def test_the_public_api_is_mostly_taught():
    """Most public functions and classes point to their chapter (a floor, so the pointers do not silently go)."""
    total = taught = 0
    for path in MODULES:
        tree = ast.parse(path.read_text())
        public = _public(tree)
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_") \
                    and (public is None or node.name in public):
                total += 1
                taught += bool(list(_pointers(ast.get_docstring(node))))
    assert total > 100 and taught / total > 0.4, (taught, total)
