"""The book as a reader sees it: builds the HTML once and reads every chapter's page.

``tests/test_book.py`` checks the chapters' sources; this module checks what the rendered pages show. It builds the
book with ``jupyter-book`` into a temporary folder (the committed, executed notebooks are rendered, nothing is
executed: about ten seconds on two cores) and fails, naming the chapter and the offending text, on

- a Markdown pipe table left as text: its separator row (``|---|---:|``, or ``|—|—:|`` once the typographer has
  turned the hyphens into dashes) in a paragraph or an output;
- a line of code, of output or of a literal block wider than the text column (:data:`MAX_COLUMNS` characters);
- a figure so wide that, shrunk to the column, its smallest text falls under a legibility floor
  (:data:`MAX_FIGURE_PX`);
- the machinery of the repository in the page: test markers and words about testing or issues, local paths;
- a level-1 heading after the chapter's title (each page has one title);
- a chapter whose number in the sidebar and title is not the number of its file;
- math that needs a CDN (MathJax must be served with the pages).

Taught in ``docs/book.md``.
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

bs4 = pytest.importorskip("bs4")
pytest.importorskip("jupyter_book")
Image = pytest.importorskip("PIL.Image")

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
CHAPTERS = sorted(p.stem for p in BOOK.glob("[0-9][0-9]_*.ipynb"))

#: Width of the page's text column, in CSS pixels, with sphinx-book-theme at a 1,280-px wide window (both sidebars
#: shown); measured in Chromium. A code cell's block is 4 px narrower (684 px, the cell's left border), and every
#: code or output block has 16 px of padding on each side.
COLUMN_PX, CODE_BLOCK_PX, BLOCK_PADDING_PX = 688, 684, 16
#: Advance of one character of the code font at 14 px (DejaVu Sans Mono, Menlo, Source Code Pro; Consolas is
#: narrower), measured.
CHAR_PX = 8.43
#: Characters of a code, output or literal line that fit in a block without a horizontal scroll bar:
#: (684 - 2 * 16) / 8.43 = 77.3.
MAX_COLUMNS = int((CODE_BLOCK_PX - 2 * BLOCK_PADDING_PX) / CHAR_PX)
#: Matplotlib's inline backend stores figures at 100 dpi; the smallest text in the book's figures is 8 pt (legends,
#: box captions), i.e. 8 / 72 * 100 = 11.1 px in the stored image. A figure wider than the column is shrunk to it;
#: below about 7 CSS px, text is no longer legible on a standard display. So a figure may be at most
#: 688 * 11.1 / 7 = 1,092 px wide. (The book's figures aim at 7 in, i.e. about 700 px: shown at full size.)
FIGURE_DPI, SMALLEST_TEXT_PT, LEGIBLE_PX = 100, 8, 7.0
MAX_FIGURE_PX = int(COLUMN_PX * (SMALLEST_TEXT_PT / 72 * FIGURE_DPI) / LEGIBLE_PX)
#: The separator row of a Markdown pipe table: ``|---|:--:|`` (Sphinx's typographer makes ``---`` an em dash).
TABLE_SEPARATOR = re.compile(r"^\s*\|(\s*:?[-–—]+:?\s*\|)+\s*$")
#: Words that belong to the repository's machinery, not to the reader's page (case-insensitive regexes).
MACHINERY = {
    "a test marker": r"nbval",
    "words about testing the book": r"when the book is (tested|built|refreshed)|the book'?s tests?\b",
    "words about issues": r"\bthe issue\b|\bissue \d+|\bissue #\d+",
    "a local path": r"\.\./shared|/work/|/home/\w|/tmp/|/Users/\w|[A-Z]:\\Users",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The book's HTML, built from the committed notebooks into a temporary folder."""
    out = tmp_path_factory.mktemp("book")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    result = subprocess.run([sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build",
                             str(REPO), "--path-output", str(out), "--quiet"], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    html = out / "_build" / "html"
    assert result.returncode == 0 and (html / "index.html").is_file(), \
        f"jupyter-book build failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return html


@functools.lru_cache(maxsize=None)
def _page(site: Path, chapter: str):
    path = site / "book" / f"{chapter}.html"
    assert path.is_file(), f"{chapter}: no page {path.relative_to(site)} in the build"
    return bs4.BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def _article(site: Path, chapter: str):
    article = _page(site, chapter).find("article")  # shared by the tests: never modify it
    assert article is not None, f"{chapter}: the page has no <article>"
    return article


def _report(chapter: str, what: str, items, limit: int = 12) -> str:
    items = list(items)
    lines = [f"{chapter}: {len(items)} {what}:"] + [f"  {item}" for item in items[:limit]]
    if len(items) > limit:
        lines.append(f"  ... and {len(items) - limit} more")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- checks
def pipe_tables_left_as_text(article) -> list:
    """Lines of the page (code cells' inputs aside) that are rows of a Markdown table shown as text."""
    article = bs4.BeautifulSoup(str(article), "html.parser")
    for cell_input in article.select("div.cell_input"):
        cell_input.decompose()
    return [line.strip() for line in article.get_text("\n").splitlines() if TABLE_SEPARATOR.match(line)]


def wide_lines(article) -> list:
    """``(kind, width, line)`` for every line of a code, output or literal block wider than the column."""
    found = []
    for pre in article.find_all("pre"):
        kind = ("code" if pre.find_parent("div", class_="cell_input") else
                "output" if pre.find_parent("div", class_="cell_output") else "literal block")
        for line in pre.get_text().splitlines():
            width = len(line.expandtabs(4))
            if width > MAX_COLUMNS:
                found.append((kind, width, line))
    return found


def wide_figures(article, page_dir: Path) -> list:
    """``(file, width)`` of every raster image in the page wider than :data:`MAX_FIGURE_PX`."""
    found = []
    for img in article.find_all("img"):
        src = img.get("src", "")
        if src.startswith("data:") or src.endswith(".svg"):
            continue
        path = (page_dir / src).resolve()
        assert path.is_file(), f"image {src} is missing from the build"
        with Image.open(path) as image:
            width = image.size[0]
        if width > MAX_FIGURE_PX:
            found.append((path.name, width))
    return found


def machinery(article) -> list:
    """``(what, line)`` for every line of the page that shows the repository's machinery."""
    text = article.get_text("\n")
    return [(what, line.strip()[:100]) for line in text.splitlines() for what, pattern in MACHINERY.items()
            if re.search(pattern, line, re.I)]


# ------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_tables_render(site, chapter):
    rows = pipe_tables_left_as_text(_article(site, chapter))
    assert not rows, _report(chapter, "Markdown table rows shown as text (display tables so that they render)",
                             rows)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_lines_fit_the_column(site, chapter):
    lines = wide_lines(_article(site, chapter))
    assert not lines, _report(chapter, f"lines wider than the column ({MAX_COLUMNS} characters)",
                              (f"{kind}, {width} chars: {line}" for kind, width, line in lines))


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_figures_are_legible_at_column_width(site, chapter):
    figures = wide_figures(_article(site, chapter), site / "book")
    assert not figures, _report(chapter, f"figures wider than {MAX_FIGURE_PX} px (their text would be shrunk under "
                                         f"{LEGIBLE_PX:g} px in the {COLUMN_PX}-px column)",
                                (f"{name}: {width} px" for name, width in figures))


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_no_machinery_in_the_page(site, chapter):
    found = machinery(_article(site, chapter))
    assert not found, _report(chapter, "lines showing the repository's machinery",
                              (f"{what}: {line}" for what, line in found))


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_one_title_per_page(site, chapter):
    headings = [h.get_text(" ", strip=True) for h in _article(site, chapter).find_all("h1")]
    assert len(headings) == 1, _report(chapter, "level-1 headings (only the chapter's title may be one)", headings)


def _number(text: str):
    match = re.match(r"\s*(\d+)\.?\s", text)
    return int(match.group(1)) if match else None


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_numbers_are_the_files_numbers(site, chapter):
    """The title and the sidebar entry of ``NN_name`` both start with the number NN, and with nothing else."""
    expected = int(chapter[:2])
    title = _article(site, chapter).find("h1").get_text(" ", strip=True)
    assert _number(title) == expected, f"{chapter}: the title reads {title!r}; it should start with '{expected}.'"
    nav = _page(site, "01_introduction").select_one("nav.bd-docs-nav")
    assert nav is not None, "the sidebar (nav.bd-docs-nav) is missing"
    links = {Path(a["href"]).stem: a.get_text(" ", strip=True) for a in nav.find_all("a", href=True)}
    if chapter != "01_introduction":  # the landing page is the book's title in the sidebar
        assert chapter in links, f"{chapter}: not in the sidebar"
        assert _number(links[chapter]) == expected, \
            f"{chapter}: the sidebar shows {links[chapter]!r}; it should start with '{expected}.'"


def test_math_is_served_with_the_pages(site):
    """MathJax comes from the build's own ``_static`` folder, so math renders offline too."""
    page = _page(site, "04_rpn_loss")
    sources = [s["src"] for s in page.find_all("script", src=True) if "mathjax" in s["src"].lower()]
    assert sources, "no MathJax script on the page"
    assert all(not re.match(r"(https?:)?//", src) for src in sources), f"MathJax from the network: {sources}"
    for src in sources:
        assert (site / "book" / src.split("?")[0]).resolve().is_file(), f"{src} is not in the build"


# ------------------------------------------------------------------------------------------------- the checks fail
def test_checks_find_what_they_look_for(tmp_path):
    """Each check flags a page made to break it, so a green run means something."""
    html = f"""<article>
      <h1>3. Title</h1><p>| a | b |\n|---|---|\n| 1 | 2 |</p><p>|—|—:|</p><p>| a | b |</p>
      <div class="cell"><div class="cell_input"><pre>x = 1  # NBVAL_IGNORE_OUTPUT{"#" * MAX_COLUMNS}</pre></div>
      <div class="cell_output"><pre>short\n{"9" * (MAX_COLUMNS + 1)}</pre></div></div>
      <p>Data in ../shared/data/BUSBRA; when the book is tested we check it.</p><h1>Table V</h1>
      <img src="wide.png"><img src="narrow.png"></article>"""
    article = bs4.BeautifulSoup(html, "html.parser").find("article")
    Image.new("RGB", (MAX_FIGURE_PX + 1, 10)).save(tmp_path / "wide.png")
    Image.new("RGB", (MAX_FIGURE_PX, 10)).save(tmp_path / "narrow.png")
    assert pipe_tables_left_as_text(article) == ["|---|---|", "|—|—:|"]
    assert [(kind, width) for kind, width, _ in wide_lines(article)] == [("code", 28 + MAX_COLUMNS),
                                                                    ("output", MAX_COLUMNS + 1)]
    assert wide_figures(article, tmp_path) == [("wide.png", MAX_FIGURE_PX + 1)]
    assert {what for what, _ in machinery(article)} == {"a test marker", "a local path",
                                                        "words about testing the book"}
    assert len(article.find_all("h1")) == 2 and _number("3. Title") == 3 and _number("Title") is None
