"""The book pipeline: papermill execution into a staging copy, the Jupyter Book build with -W,
and the rendered pages as a reader sees them in headless Chromium with the network blocked.

The fast tests use a tiny synthetic book; the slow ones build the real book (smoke profile)
into a temporary folder and save a screenshot of every page to ``_build/screenshots/``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

from interpddpm import book, cli

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "_build" / "screenshots"
ALLOW_NO_BROWSER = "INTERPDDPM_ALLOW_NO_BROWSER"


# --------------------------------------------------------------------------- the repository


def test_toc_lists_existing_documents() -> None:
    docs = book.toc_documents(ROOT)
    assert docs[0] == Path("book/intro.md")
    assert len(set(docs)) == len(docs), "a document is listed twice in _toc.yml"
    assert Path("book/bibliography.md") in docs


@pytest.mark.parametrize("notebook", book.toc_notebooks(ROOT), ids=lambda p: p.stem)
def test_notebook_conventions(notebook: Path) -> None:
    """A '# Title' first (else -W fails), a `parameters` cell, and no stored outputs."""
    nb = nbformat.read(ROOT / notebook, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("# "), (
        f"{notebook}: the first cell must be a markdown '# Title'"
    )
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), f"{notebook}: tag the first code cell"
    assert code[0].source.lstrip().startswith('profile = "auto"'), notebook
    assert not any(cell.get("outputs") for cell in code), f"{notebook} is stored with outputs"


def test_cli_has_book_subcommand() -> None:
    args = cli.make_parser().parse_args(["book", "--profile", "smoke", "--no-build"])
    assert args.func is cli._book and args.profile == "smoke" and args.no_build


# --------------------------------------------------------------------------- a synthetic book

TOC = """format: jb-book
root: intro
chapters:
  - file: notebooks/good
  - file: notebooks/bad
"""


def _notebook(path: Path, title: str, code: str) -> None:
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell('profile = "auto"')
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# {title}"),
        parameters,
        nbformat.v4.new_code_cell(code),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


@pytest.fixture
def tiny_book(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "interpddpm").mkdir(parents=True)
    (root / "interpddpm" / "lib.py").write_text("X = 1\n")
    (root / "_toc.yml").write_text(TOC)
    (root / "intro.md").write_text("# Intro\n")
    _notebook(root / "notebooks" / "good.ipynb", "Good", "import os\nprint(profile, os.getcwd())")
    _notebook(root / "notebooks" / "bad.ipynb", "Bad", "ok = 1\nraise ValueError('boom')")
    return root


def test_execute_stages_caches_and_reports_failures(tiny_book: Path, tmp_path: Path) -> None:
    root, out = tiny_book, tmp_path / "out"
    source_bytes = (root / "notebooks" / "good.ipynb").read_bytes()

    report = book.execute("smoke", ["good"], root=root, out=out, cache=tmp_path / "cache")
    assert list(report) == ["notebooks/good.ipynb"]
    assert report["notebooks/good.ipynb"]["cached"] is False
    staged = book.staging_dir(out) / "notebooks" / "good.ipynb"
    nb = nbformat.read(staged, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and book.REMOVE_TAG in injected[0].metadata["tags"]
    assert 'profile = "smoke"' in injected[0].source
    printed = nb.cells[-1].outputs[0]["text"]
    assert printed.startswith("smoke ") and printed.strip().endswith(str(staged.parent))
    assert (root / "notebooks" / "good.ipynb").read_bytes() == source_bytes, "source modified"
    timings = json.loads((book.staging_dir(out) / book.TIMINGS_FILE).read_text())
    assert timings["notebooks/good.ipynb"]["profile"] == "smoke"

    # Unchanged: skipped. Library changed: executed again.
    again = book.execute("smoke", ["good"], root=root, out=out, cache=tmp_path / "cache")
    assert again["notebooks/good.ipynb"]["cached"] is True
    (root / "interpddpm" / "lib.py").write_text("X = 2\n")
    third = book.execute("smoke", ["good"], root=root, out=out, cache=tmp_path / "cache")
    assert third["notebooks/good.ipynb"]["cached"] is False

    with pytest.raises(book.NotebookExecutionError) as failure:
        book.execute("smoke", ["bad"], root=root, out=out, cache=tmp_path / "cache")
    message = str(failure.value)
    partial = book.build_dir(out) / book.PARTIAL / "notebooks" / "bad.ipynb"
    assert "notebooks/bad.ipynb" in message and "ValueError: boom" in message
    assert "raise ValueError('boom')" in message and "cell" in message
    assert str(partial) in message and partial.is_file()
    assert not (book.staging_dir(out) / "notebooks" / "bad.ipynb").exists()

    with pytest.raises(ValueError, match="Valid: good, bad"):
        book.execute("smoke", ["nope"], root=root, out=out)
    with pytest.raises(ValueError, match="Unknown profile"):
        book.execute("tiny", root=root, out=out)


# --------------------------------------------------------------------------- the real book


def chromium() -> str:
    """The headless browser: $INTERPDDPM_CHROMIUM, /usr/bin/chromium or one on PATH."""
    candidates = [os.environ.get("INTERPDDPM_CHROMIUM"), "/usr/bin/chromium"]
    candidates += [shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    message = (
        "Chromium not found: the book test renders the pages in headless Chromium. "
        "`make test` installs it (apt-get install chromium); set "
        f"{ALLOW_NO_BROWSER}=1 to skip the browser checks instead."
    )
    if os.environ.get(ALLOW_NO_BROWSER) == "1":
        pytest.skip(message)
    pytest.fail(message)


def run_chromium(url: str, profile_dir: Path, *extra: str) -> str:
    """Run headless Chromium on ``url`` with every host unresolvable (no network)."""
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile_dir}",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--hide-scrollbars",
        "--virtual-time-budget=10000",
        *extra,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"chromium failed on {url}:\n{done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def built_book(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real book, smoke profile, built with -W into a temporary folder; returns html/."""
    out = tmp_path_factory.mktemp("book")
    status = cli.main(["book", "--profile", "smoke", "--root", str(ROOT), "--out", str(out)])
    assert status == 0, "the book failed to execute or to build with -W (see the output)"
    return book.build_dir(out) / "html"


DOCUMENTS = book.toc_documents(ROOT)


class _Text(HTMLParser):
    """The visible prose of a page: text outside code, scripts and typeset math."""

    SKIP = {"script", "style", "pre", "code", "textarea", "mjx-container", "noscript"}

    def __init__(self) -> None:
        super().__init__()
        self.depth, self.parts = 0, []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.SKIP:
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth == 0:
            self.parts.append(data)


def _article(page: str) -> str:
    """The main content of a page (the theme's navigation and header left out)."""
    start = page.find("<article")
    return page[start : page.find("</article>", start)] if start >= 0 else page


def _image_outputs(notebook: Path) -> int:
    """The number of figures a staged notebook shows (cells that Jupyter Book keeps)."""
    nb = nbformat.read(notebook, as_version=4)
    hidden = {"remove-cell", "remove-output"}
    return sum(
        any(mime.startswith("image/") for mime in output.get("data", {}))
        for cell in nb.cells
        if cell.cell_type == "code" and not hidden & set(cell.metadata.get("tags", []))
        for output in cell.get("outputs", [])
    )


@pytest.mark.slow
def test_book_builds_every_page(built_book: Path) -> None:
    assert (built_book / "index.html").is_file()
    for doc in DOCUMENTS:
        assert (built_book / doc.with_suffix(".html")).is_file(), doc
    external = re.compile(r'<(?:script|link)\b[^>]*(?:src|href)="(https?:)?//[^"]*\.(?:js|css)')
    for page in built_book.rglob("*.html"):
        found = external.search(page.read_text(encoding="utf-8"))
        assert found is None, f"{page.name} loads {found.group(0)}: the book must work offline"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", book.toc_notebooks(ROOT), ids=lambda p: p.stem)
def test_injected_parameters_are_hidden(built_book: Path, notebook: Path) -> None:
    staged = built_book.parent / book.STAGED / notebook
    cells = nbformat.read(staged, as_version=4).cells
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in cells)
    page = (built_book / notebook.with_suffix(".html")).read_text(encoding="utf-8")
    assert "injected-parameters" not in page
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert not re.search(r'profile\s*=\s*"smoke"', text), "the injected cell is visible"


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda p: p.stem)
def test_page_in_browser(built_book: Path, doc: Path, tmp_path: Path) -> None:
    """Typeset math, figures that load, and a screenshot, with no network."""
    page = built_book / doc.with_suffix(".html")
    url = page.as_uri()
    dom = run_chromium(url, tmp_path / "profile", "--dump-dom")
    static = page.read_text(encoding="utf-8")

    # Math: every page whose source has math shows MathJax output, without TeX errors.
    if 'class="math' in static:
        typeset = "<mjx-container" in dom
        assert typeset, f"{doc}: math is not typeset (MathJax did not run)"
    tex_error = "<mjx-merror" in dom
    assert not tex_error, f"{doc}: MathJax reports a TeX error"
    parser = _Text()
    parser.feed(_article(dom))
    prose = "".join(parser.parts)
    for raw in ("\\(", "\\[", "$$", "\\begin{"):
        assert raw not in prose, f"{doc}: raw TeX {raw!r} left in the page text"
    # A displayed Markdown table printed as raw pipes (CommonMark output rendering).
    raw_table = re.search(r"\|\s*:?-{3,}:?\s*\|", prose)
    assert raw_table is None, f"{doc}: a table is shown as raw Markdown"

    # Figures: every image of the article loads, and a notebook shows each of its figures.
    from PIL import Image

    sources = re.findall(r'<img\b[^>]*\bsrc="([^"]+)"', _article(dom))
    for src in sources:
        if src.startswith("data:"):
            payload = base64.b64decode(src.split(",", 1)[1])
        else:
            assert not src.startswith(("http:", "https:")), f"{doc}: remote image {src}"
            target = (page.parent / src.split("?")[0]).resolve()
            assert target.is_file(), f"{doc}: missing image {src}"
            payload = target.read_bytes()
        assert payload, f"{doc}: empty image {src[:80]}"
        if not src.split("?")[0].endswith(".svg") and not src.startswith("data:image/svg"):
            width, height = Image.open(io.BytesIO(payload)).size
            assert width > 0 and height > 0, f"{doc}: zero-size image {src[:80]}"
    if doc.suffix == ".ipynb":
        expected = _image_outputs(built_book.parent / book.STAGED / doc)
        assert len(sources) >= expected, f"{doc}: {expected} figures, {len(sources)} shown"

    # Screenshot, kept for people to look at.
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / (doc.with_suffix("").as_posix().replace("/", "__") + ".png")
    shot.unlink(missing_ok=True)
    run_chromium(url, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,2400")
    assert shot.is_file() and shot.stat().st_size > 0, f"no screenshot of {doc}"
    image = Image.open(shot).convert("L")
    assert image.size == (1200, 2400)
    low, high = image.getextrema()
    assert high - low > 50, f"{doc}: the screenshot is blank"
