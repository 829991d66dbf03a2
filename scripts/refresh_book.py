#!/usr/bin/env python
"""Re-execute the book's chapters and keep each MyST/notebook pair in sync, or check that they are.

Every chapter is ``book/NN_name.md`` (MyST markdown, the source of truth) paired by jupytext with
``book/NN_name.ipynb``, which is committed *executed* so that the rendered book shows real results and
``pytest --nbval`` has reference outputs to compare against.

Usage (from anywhere; paths are relative to the current directory or absolute)::

    python scripts/refresh_book.py                       # every chapter in book/
    python scripts/refresh_book.py book/04_rpn_loss.md   # one chapter (.md or .ipynb, either half)
    python scripts/refresh_book.py --check               # verify, execute nothing (exit 1 on any problem)

For each chapter, refreshing does exactly what an author would do by hand:

1. ``jupytext --sync``: the most recently edited half updates the other (outputs are kept);
2. execute the notebook in place with nbclient, in a fresh kernel of *this* Python interpreter (the same
   kernel as ``pytest --nbval --nbval-current-env``), with the working directory ``book/`` (nbval starts its
   kernel in the notebook's directory, so relative paths behave identically), CI mode (``WSBUS_FULL``,
   ``WSBUS_DATA``, ``WSBUS_BACKBONE`` and ``WSBUS_DEVICE`` removed from the kernel's environment) and two
   threads (``OMP_NUM_THREADS=2``; the chapters' ``setup()`` also calls ``torch.set_num_threads(2)``);
3. ``jupytext --sync`` again, so the markdown half records the same inputs as the executed notebook.

``--check`` verifies, for every chapter: both halves exist; they hold the same cells (jupytext's own
comparison, ``jupytext.compare.compare_notebooks``); every code cell was executed, in order, in one run
(execution counts 1, 2, 3, ...); no cell stored an error. It is what ``tests/test_book.py`` runs.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
#: environment variables that switch a chapter away from its CI mode; never inherited by a refresh.
MODE_VARIABLES = ("WSBUS_FULL", "WSBUS_DATA", "WSBUS_BACKBONE", "WSBUS_DEVICE")
THREADS = 2
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


class ChapterError(RuntimeError):
    """A chapter failed to refresh or is not in the committed state (message names the file)."""


# ----------------------------------------------------------------------------------------------- paths
def chapter_sources(book: Path = BOOK) -> List[Path]:
    """The chapters' markdown halves, ``book/NN_*.md``, sorted by name."""
    return sorted(p for p in Path(book).glob("[0-9][0-9]_*.md"))


def pair_of(path: os.PathLike) -> tuple[Path, Path]:
    """``(markdown, notebook)`` paths of the chapter that ``path`` (either half) belongs to."""
    path = Path(path)
    if path.suffix not in (".md", ".ipynb"):
        raise ChapterError(f"{path}: a chapter is a .md or .ipynb file")
    return path.with_suffix(".md"), path.with_suffix(".ipynb")


# ----------------------------------------------------------------------------------------------- refresh
def _jupytext_sync(path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "jupytext", "--sync", "--quiet", str(path)],
                            cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise ChapterError(f"{path}: jupytext --sync failed:\n{result.stdout}{result.stderr}")


def kernel_environment() -> dict:
    """The environment a chapter executes in: this process's, in CI mode (no WSBUS_* switches), two threads."""
    env = {k: v for k, v in os.environ.items() if k not in MODE_VARIABLES}
    env["OMP_NUM_THREADS"] = str(THREADS)
    env["MKL_NUM_THREADS"] = str(THREADS)
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # silence debugpy's frozen-modules note on stderr
    return env


def execute_notebook(ipynb: Path, timeout: int = 1200) -> float:
    """Execute ``ipynb`` in place in a fresh kernel of the current interpreter; return the wall time (s)."""
    import ipykernel.kernelspec
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    class _CurrentPython(KernelSpecManager):
        # The kernel of the interpreter running this script, whatever kernelspecs are installed
        # (what nbval's --nbval-current-env does).
        def get_kernel_spec(self, kernel_name):
            return self.kernel_spec_class(resource_dir=ipykernel.kernelspec.RESOURCES,
                                          **ipykernel.kernelspec.get_kernel_dict())

    nb = nbformat.read(ipynb, as_version=4)
    nb.metadata.setdefault("kernelspec", dict(KERNELSPEC))
    km = KernelManager(kernel_name=KERNELSPEC["name"], kernel_spec_manager=_CurrentPython())
    client = NotebookClient(nb, km=km, timeout=timeout, record_timing=False, allow_errors=False,
                            resources={"metadata": {"path": str(ipynb.parent)}})
    start = time.perf_counter()
    try:
        client.execute(env=kernel_environment(), cwd=str(ipynb.parent))
    except CellExecutionError as exc:
        raise ChapterError(f"{ipynb}: a cell raised while executing:\n{exc}") from exc
    elapsed = time.perf_counter() - start
    nbformat.write(nb, ipynb)
    return elapsed


def refresh(path: os.PathLike, timeout: int = 1200) -> float:
    """Sync, execute and re-sync one chapter; return its execution time in seconds."""
    md, ipynb = pair_of(path)
    source = md if md.exists() else ipynb
    if not source.exists():
        raise ChapterError(f"{path}: neither {md.name} nor {ipynb.name} exists")
    _jupytext_sync(source)
    if not (md.exists() and ipynb.exists()):
        raise ChapterError(f"{source}: jupytext --sync did not create its pair; is it paired (jupytext.toml at the "
                           "repository root, or `formats: ipynb,md:myst` in its metadata)?")
    elapsed = execute_notebook(ipynb, timeout=timeout)
    _jupytext_sync(ipynb)
    return elapsed


# ----------------------------------------------------------------------------------------------- check
def check_chapter(path: os.PathLike) -> List[str]:
    """Problems that keep one chapter from its committed state (an empty list when it is fine)."""
    import jupytext
    import nbformat
    from jupytext.compare import NotebookDifference, compare_notebooks

    md, ipynb = pair_of(path)
    problems = []
    for half in (md, ipynb):
        if not half.exists():
            problems.append(f"{half}: missing (every chapter is a .md/.ipynb pair; run jupytext --sync)")
    if problems:
        return problems

    text_nb = jupytext.read(md)
    stored = jupytext.read(ipynb)
    try:
        compare_notebooks(stored, text_nb, fmt="md:myst")
    except NotebookDifference as exc:
        problems.append(f"{md} and {ipynb.name} differ (run `jupytext --sync {md}` then refresh): {exc}")

    raw = nbformat.read(ipynb, as_version=4)
    expected = 1
    for index, cell in enumerate(raw.cells):
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        count = cell.get("execution_count")
        if count is None:
            problems.append(f"{ipynb}: code cell {index} was never executed (run scripts/refresh_book.py {md})")
            break
        if count != expected:
            problems.append(f"{ipynb}: code cell {index} has execution count {count}, expected {expected}: "
                            "the notebook was not executed top to bottom in one fresh kernel")
            break
        expected += 1
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                problems.append(f"{ipynb}: code cell {index} stored an error "
                                f"({output.get('ename')}: {output.get('evalue')})")
    return problems


def check(paths: Iterable[os.PathLike]) -> List[str]:
    """Problems over several chapters, each message naming its file."""
    problems: List[str] = []
    for path in paths:
        problems.extend(check_chapter(path))
    return problems


# ----------------------------------------------------------------------------------------------- CLI
def _chapters(files: Sequence[str]) -> List[Path]:
    if not files:
        chapters = chapter_sources()
        orphans = sorted(p for p in BOOK.glob("[0-9][0-9]_*.ipynb") if not p.with_suffix(".md").exists())
        return chapters + orphans
    seen, out = set(), []
    for name in files:
        md, _ = pair_of(Path(name).resolve())
        if md not in seen:
            seen.add(md)
            out.append(md)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="chapters (.md or .ipynb); default: every book/NN_*.md")
    parser.add_argument("--check", action="store_true",
                        help="only verify pairing, sync and execution state; exit 1 on any problem")
    parser.add_argument("--timeout", type=int, default=1200, help="per-cell timeout in seconds (default 1200)")
    args = parser.parse_args(argv)
    chapters = _chapters(args.files)
    if not chapters:
        print("no chapters found", file=sys.stderr)
        return 1
    if args.check:
        problems = check(chapters)
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{len(chapters)} chapter(s) checked, {len(problems)} problem(s)")
        return 1 if problems else 0
    status = 0
    for chapter in chapters:
        try:
            elapsed = refresh(chapter, timeout=args.timeout)
        except ChapterError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        print(f"{chapter.relative_to(REPO) if chapter.is_relative_to(REPO) else chapter}: "
              f"executed in {elapsed:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
