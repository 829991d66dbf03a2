"""The book's infrastructure: chapter pairs in sync and executed, chapter skeleton, table of contents, config.

Fast: nothing is executed and nothing is built (``pytest --nbval`` re-executes the chapters; CI builds the
book with ``jupyter-book build . -W``). Taught in ``docs/book.md``.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"

#: the book's fixed chapter names (the contract shared by every chapter author), in reading order.
CHAPTER_NAMES = [
    "01_introduction", "02_data", "03_faster_rcnn", "04_rpn_loss", "05_mil_moi", "06_joint_training",
    "07_self_training", "08_evaluation", "09_real_data", "10_autoencoder_pretraining", "11_cnn_diagnosis",
    "12_metric_learning", "13_transfer_domain_shift", "14_your_own_scans",
]
COLAB_LINE = '!pip install "wsbus[book] @ git+https://github.com/wsbus/wsbus"'


def _load_refresh_book():
    spec = importlib.util.spec_from_file_location("refresh_book", REPO / "scripts" / "refresh_book.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["refresh_book"] = module
    spec.loader.exec_module(module)
    return module


refresh_book = _load_refresh_book()

MARKDOWN = sorted(BOOK.glob("[0-9][0-9]_*.md"))
NOTEBOOKS = sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))
CHAPTERS = sorted({p.stem for p in MARKDOWN} | {p.stem for p in NOTEBOOKS})


def _ids(paths):
    return [Path(p).stem for p in paths]


def _sanitize_patterns():
    from nbval.plugin import get_sanitize_patterns

    return get_sanitize_patterns((BOOK / "nbval_sanitize.cfg").read_text())


def _sanitize(text: str) -> str:
    for regex, replace in _sanitize_patterns():
        text = re.sub(regex, replace, text)
    return text


def _text_outputs(nb):
    """(cell index, text) of every stream / text/plain output of a notebook."""
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "stream":
                yield index, output.get("text", "")
            elif "data" in output:
                yield index, output["data"].get("text/plain", "")


# ------------------------------------------------------------------------------------------- chapters
def test_book_has_chapters_with_the_fixed_names():
    assert CHAPTERS, "no chapter found in book/"
    unknown = sorted(set(CHAPTERS) - set(CHAPTER_NAMES))
    assert not unknown, f"chapters with names outside the book's fixed list: {unknown}"


def test_every_chapter_is_a_pair():
    md = {p.stem for p in MARKDOWN}
    ipynb = {p.stem for p in NOTEBOOKS}
    assert not md - ipynb, f"markdown without its notebook (run jupytext --sync): {sorted(md - ipynb)}"
    assert not ipynb - md, f"notebook without its markdown (run jupytext --sync): {sorted(ipynb - md)}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_in_sync_and_executed(chapter):
    problems = refresh_book.check_chapter(BOOK / f"{chapter}.md")
    assert not problems, "\n".join(problems)


def _markdown_text(chapter: str) -> str:
    return (BOOK / f"{chapter}.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("chapter", [p.stem for p in MARKDOWN])
def test_chapter_skeleton(chapter):
    text = _markdown_text(chapter)
    body = text.split("\n---\n", 1)[1] if text.startswith("---\n") else text
    first_heading = next(line for line in body.splitlines() if line.startswith("#"))
    assert first_heading.startswith("# "), f"{chapter}: the chapter must open with a '# Title', got {first_heading!r}"
    number = int(chapter[:2])
    assert first_heading.startswith(f"# {number}. "), \
        f"{chapter}: the title carries the file's number, '# {number}. Title', got {first_heading!r}"
    assert re.search(r"^(:::|```)\{admonition\} Audience & objectives\s*$", text, re.M), \
        f"{chapter}: missing the '{{admonition}} Audience & objectives' box"
    # `{tip}` takes no title: ":::{tip} Running this notebook" plus an options block makes MyST warn
    # ("Splitting content across first line and body") and `jupyter-book build -W` fail. A titled tip is an
    # admonition with the tip class.
    assert not re.search(r"^(:::|```)\{tip\} Running this notebook", text, re.M), (
        f"{chapter}: write the tip as ':::{{admonition}} Running this notebook' with ':class: tip dropdown' "
        "({tip} takes no title; the book build fails with a warning)")
    tip = re.search(r"^(:::|```)\{admonition\} Running this notebook\s*\n(.*?)^\1\s*$", text, re.M | re.S)
    assert tip, f"{chapter}: missing the ':::{{admonition}} Running this notebook' box (':class: tip dropdown')"
    assert re.search(r"^:class: (?=.*\btip\b)(?=.*\bdropdown\b)", tip.group(2), re.M), \
        f"{chapter}: the 'Running this notebook' box needs ':class: tip dropdown' (a collapsed tip)"
    assert COLAB_LINE in tip.group(2), f"{chapter}: the tip must give the Colab line {COLAB_LINE}"
    assert "WSBUS_FULL" in tip.group(2), f"{chapter}: the tip must say how to switch to FULL (WSBUS_FULL=1)"
    assert re.search(r"^## Summary\s*$", text, re.M), f"{chapter}: missing '## Summary'"
    assert re.search(r"^## Exercises\s*$", text, re.M), f"{chapter}: missing '## Exercises'"
    assert text.index("## Summary") < text.index("## Exercises"), f"{chapter}: Summary comes before Exercises"


@pytest.mark.parametrize("chapter", [p.stem for p in MARKDOWN])
def test_first_code_cell_calls_setup(chapter):
    nb = jupytext.read(BOOK / f"{chapter}.md")
    code = [c.source for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert code, f"{chapter}: no code cell"
    assert "from wsbus.notebook import setup" in code[0] and re.search(r"\bcfg\s*=\s*setup\(", code[0]), \
        f"{chapter}: the first code cell must be `from wsbus.notebook import setup; cfg = setup(seed=...)`"
    for source in code:
        assert not re.search(r"^\s*[!%]\s*pip install", source, re.M), \
            f"{chapter}: installs belong in the 'Running this notebook' tip, not in an executed cell"


@pytest.mark.parametrize("chapter", [p.stem for p in NOTEBOOKS])
def test_stored_outputs_are_clean(chapter):
    """No progress bars, addresses or temporary paths in stored outputs; ignored outputs are followed by asserts."""
    nb = nbformat.read(BOOK / f"{chapter}.ipynb", as_version=4)
    for index, text in _text_outputs(nb):
        text = "".join(text) if isinstance(text, list) else text
        assert not re.search(r"\d+(\.\d+)?(it/s|s/it)|\|[█▏▎▍▌▋▊▉ ]+\|", text), \
            f"{chapter} cell {index}: a progress bar in the output (pass progress=False)"
        assert not re.search(r"\b0x[0-9a-fA-F]{6,}\b", text), f"{chapter} cell {index}: a memory address in the output"
        assert not re.search(r"/tmp/|/var/folders/|\\AppData\\Local\\Temp", text), \
            f"{chapter} cell {index}: a temporary path in the output"
    code = [c for c in nb.cells if c.cell_type == "code"]
    for position, cell in enumerate(code):
        assert not re.search(r"#\s*NBVAL_", cell.source), \
            f"{chapter} code cell {position}: an nbval marker comment shows on the page; use the cell tag instead " \
            "(':tags: [nbval-ignore-output]' under the code-cell line)"
        if "nbval-ignore-output" in cell.metadata.get("tags", []):
            following = code[position + 1].source if position + 1 < len(code) else ""
            assert re.search(r"^\s*assert\b", following, re.M), \
                f"{chapter}: a cell tagged nbval-ignore-output must be followed by a cell of assert statements"
    size = (BOOK / f"{chapter}.ipynb").stat().st_size
    assert size < 4_000_000, f"{chapter}.ipynb is {size / 1e6:.1f} MB; keep figures small (dpi, fewer panels)"


# ------------------------------------------------------------------------------------------- toc and config
def _toc_files(toc) -> list:
    files = [toc["root"]]
    for part in toc.get("parts", []):
        for chapter in part.get("chapters", []):
            files.append(chapter["file"])
            files.extend(section["file"] for section in chapter.get("sections", []))
    return files


def test_toc_lists_exactly_the_chapters_present():
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    assert toc["format"] == "jb-book"
    listed = _toc_files(toc)
    missing_method = [name for name in CHAPTER_NAMES[:9] if name not in CHAPTERS]
    assert not missing_method, f"the method's chapters must all be in book/: missing {missing_method}"
    expected = [f"book/{name}" for name in CHAPTER_NAMES if name in CHAPTERS]
    assert listed == expected, "the toc must list the chapters in reading order"
    present = {f"book/{name}" for name in CHAPTERS}
    assert set(listed) == present, (f"in _toc.yml but missing from book/: {sorted(set(listed) - present)}; "
                                    f"in book/ but not in _toc.yml: {sorted(present - set(listed))}")


def test_toc_parts():
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    assert toc["root"] == "book/01_introduction"
    parts = {part["caption"]: [c["file"] for c in part["chapters"]] for part in toc["parts"]}
    assert parts["The method"] == [f"book/{n}" for n in CHAPTER_NAMES[1:9]]
    companions = [f"book/{n}" for n in CHAPTER_NAMES[9:13] if n in CHAPTERS]
    assert parts.get("Companion chapters", []) == companions
    practice = [f"book/{n}" for n in CHAPTER_NAMES[13:] if n in CHAPTERS]
    assert parts.get("In practice", []) == practice
    # The titles carry the files' numbers ("# 6. Joint training"); automatic numbers would start at 02_data.
    assert not any(part.get("numbered") for part in toc["parts"]), "no automatic chapter numbers"


def test_config():
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off", "the book renders the committed outputs"
    assert config["only_build_toc_files"] is True
    excluded = set(config["exclude_patterns"])
    for pattern in ("book/*.md", "_build", "README.md", "docs/*", "tests", "benchmarks", ".ci", "wsbus", "data",
                    "scripts"):
        assert pattern in excluded, f"_config.yml exclude_patterns lacks {pattern!r}"
    assert {"dollarmath", "amsmath", "colon_fence", "deflist"} <= set(config["parse"]["myst_enable_extensions"])
    assert config["repository"]["url"] == "https://github.com/wsbus/wsbus"
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    for name in config.get("bibtex_bibfiles", []):
        assert (REPO / name).is_file(), f"bibliography {name} is missing"
    if "logo" in config:
        assert (REPO / config["logo"]).is_file(), f"logo {config['logo']} is missing"


def test_citations_resolve():
    """Every {cite} key used in a chapter is defined in the bibliography (the build fails otherwise)."""
    bib = (BOOK / "references.bib").read_text(encoding="utf-8")
    defined = set(re.findall(r"^@\w+\{([^,\s]+),", bib, re.M))
    for md in MARKDOWN:
        for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", md.read_text(encoding="utf-8")):
            for key in (k.strip() for k in group.split(",")):
                assert key in defined, f"{md.name}: citation key {key!r} is not in book/references.bib"


# ------------------------------------------------------------------------------------------- nbval sanitizing
@pytest.mark.parametrize("raw, expected", [
    ("<wsbus.models.X object at 0x7f3a5c2d1e80>", "<wsbus.models.X object at 0xADDRESS>"),
    ("wrote /tmp/tmpa1b2c3d4/voc/Annotations/x.xml", "wrote TMPPATH"),
    ("'/var/folders/ab/cd_12/T/tmpq9/x.png'", "'TMPPATH'"),
    ("epoch took 12.5 s (3.2it/s)", "epoch took TIME (RATE)"),
    ("done in 850ms", "done in TIME"),
    ("100%|##| 5/5 [00:01<00:00, 4.10it/s]", "100%|##| 5/5 [ELAPSED<REMAINING, RATE]"),
    ("saved at 2026-11-23 14:38:48.123", "saved at DATETIME"),
])
def test_sanitize_patterns_replace_volatile_text(raw, expected):
    assert _sanitize(raw) == expected


@pytest.mark.parametrize("text", [
    "loss_objectness 0.693, loss_rpn_box_reg 0.125",
    "CorLoc 0.845 [0.810, 0.880] over 600 images, 3 scales x 3 ratios, 128 px, 60000 steps",
    "torch.Size([2, 3, 128, 128]) tensor([0.1000, 2.0000])",
    "strong 800 (400 benign / 400 malignant), weak 4224, test 600",
])
def test_sanitize_patterns_keep_ordinary_output(text):
    assert _sanitize(text) == text


# ------------------------------------------------------------------------------------------- refresh --check
def _write_chapter(folder: Path, cells_md: str) -> Path:
    md = folder / "01_example.md"
    md.write_text("---\njupytext:\n  formats: ipynb,md:myst\n  text_representation:\n    extension: .md\n"
                  "    format_name: myst\n    format_version: 0.13\nkernelspec:\n  display_name: Python 3\n"
                  "  language: python\n  name: python3\n---\n\n# Example\n\n" + cells_md, encoding="utf-8")
    return md


def _mark_executed(ipynb: Path, counts) -> None:
    nb = nbformat.read(ipynb, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell, count in zip(code, counts):
        cell.execution_count = count
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{count}\n")] if count else []
    nbformat.write(nb, ipynb)


def test_check_accepts_an_executed_pair(tmp_path):
    md = _write_chapter(tmp_path, "```{code-cell} ipython3\nx = 1\n```\n\ntext\n\n```{code-cell} ipython3\nx\n```\n")
    ipynb = md.with_suffix(".ipynb")
    jupytext.write(jupytext.read(md), ipynb)
    _mark_executed(ipynb, [1, 2])
    assert refresh_book.check_chapter(md) == []
    assert refresh_book.main(["--check", str(md)]) == 0


def test_check_reports_each_problem(tmp_path):
    md = _write_chapter(tmp_path, "```{code-cell} ipython3\nx = 1\n```\n\n```{code-cell} ipython3\nx\n```\n")
    ipynb = md.with_suffix(".ipynb")
    assert any("missing" in p for p in refresh_book.check_chapter(md))

    jupytext.write(jupytext.read(md), ipynb)
    problems = refresh_book.check_chapter(md)
    assert len(problems) == 1 and "never executed" in problems[0] and str(ipynb) in problems[0]

    _mark_executed(ipynb, [1, 3])  # a cell re-run by hand: not one top-to-bottom run
    assert any("execution count 3, expected 2" in p for p in refresh_book.check_chapter(md))

    _mark_executed(ipynb, [1, 2])
    md.write_text(md.read_text() + "\n```{code-cell} ipython3\ny = 2\n```\n")  # edited, not synced
    assert any("differ" in p for p in refresh_book.check_chapter(md))
    assert refresh_book.main(["--check", str(md)]) == 1

    jupytext.write(jupytext.read(md), ipynb)
    nb = nbformat.read(ipynb, as_version=4)
    for count, cell in enumerate(nb.cells[1:], 1):  # cells[0] is the title
        cell.execution_count = count
    nb.cells[-1].outputs = [nbformat.v4.new_output("error", ename="ValueError", evalue="bad", traceback=[])]
    nbformat.write(nb, ipynb)
    assert any("stored an error (ValueError: bad)" in p for p in refresh_book.check_chapter(md))


def test_refresh_environment_is_ci_mode(monkeypatch):
    monkeypatch.setenv("WSBUS_FULL", "1")
    monkeypatch.setenv("WSBUS_DATA", "busi:/somewhere")
    env = refresh_book.kernel_environment()
    assert "WSBUS_FULL" not in env and "WSBUS_DATA" not in env
    assert env["OMP_NUM_THREADS"] == "2"


# ------------------------------------------------------------------------------------------- figures under CI
def test_setup_makes_figures_display_under_agg(tmp_path, monkeypatch):
    """A chapter's figures must be stored even when the kernel inherits ``MPLBACKEND=Agg`` (as in ``.ci/run``).

    Without the inline backend, ``plt.show()`` only warns on stderr and a ``Figure`` returned by ``wsbus.viz`` is
    displayed as text, so nbval fails every figure cell. ``setup()`` (the first cell of every chapter) must
    therefore select matplotlib's inline backend when it runs in a Jupyter kernel.
    """
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from wsbus.notebook import setup\ncfg = setup(seed=0)"),
        nbformat.v4.new_code_cell("from matplotlib.figure import Figure\nfig = Figure(figsize=(1, 1))\n"
                                  "fig.subplots().plot([0, 1])\nfig"),
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.figure(figsize=(1, 1))\nplt.plot([0, 1])\n"
                                  "plt.show()"),
    ])
    path = tmp_path / "agg.ipynb"
    nbformat.write(nb, path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    refresh_book.execute_notebook(path, timeout=120)
    executed = nbformat.read(path, as_version=4)
    for index, cell in enumerate(executed.cells[1:], 1):
        kinds = [o.get("output_type") for o in cell.outputs]
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), \
            f"cell {index}: no figure stored under MPLBACKEND=Agg (outputs: {kinds})"
        assert not any(o.get("name") == "stderr" for o in cell.outputs), f"cell {index} wrote to stderr"


# ------------------------------------------------------------------------------------------- Markdown on a page
def test_page_markdown_keeps_one_title_and_no_local_paths():
    from wsbus.notebook import page_markdown

    text = ("# Table V (busbra:../shared/data/BUSBRA)\n\n| a | b |\n|---|---:|\n| x | 1 |\n\n"
            "## Per class\nRead from /work/shared/data/BUSBRA/ and ../data/BUSI, spec `busi:/content/Dataset_BUSI`; "
            "see https://zenodo.org/records/8231412/files/BUSBRA.zip and docs/results/busbra.\n"
            "```text\n# a comment in /home/me/x\n```\n")
    out = page_markdown(text)
    assert out.splitlines()[0] == "**Table V (busbra)**"
    assert "| a | b |\n|---|---:|\n| x | 1 |" in out, "tables are kept as they are"
    assert "## Per class" in out, "only level-1 headings become captions"
    assert "Read from BUSBRA and BUSI, spec `busi`;" in out
    assert "https://zenodo.org/records/8231412/files/BUSBRA.zip" in out and "docs/results/busbra" in out
    assert "# a comment in /home/me/x" in out, "fenced code is left alone"
    assert not re.search(r"^# ", out.split("```")[0], re.M)


def test_show_markdown_reads_a_file_and_refuses_a_missing_one(tmp_path, monkeypatch):
    import IPython.display

    from wsbus.notebook import show_markdown

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    summary = tmp_path / "summary.md"
    summary.write_text("# Summary (busbra:/data/BUSBRA)\n\n| a |\n|---|\n| 1 |\n", encoding="utf-8")
    show_markdown(summary)
    assert shown[0].data.startswith("**Summary (busbra)**\n\n| a |")
    with pytest.raises(FileNotFoundError, match="missing.md: no such Markdown file"):
        show_markdown(tmp_path / "missing.md")
    with pytest.raises(TypeError, match="Markdown text or a path"):
        show_markdown(3)
