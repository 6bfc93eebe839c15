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


# --------------------------------------------------------------------------- the book as a text

MARKDOWN_DOCS = [doc for doc in book.toc_documents(ROOT)]
#: Chapters whose prose must not state a number of their own run (they show trained models).
RESULT_CHAPTERS = [nb for nb in book.toc_notebooks(ROOT) if int(nb.stem[:2]) >= 4]
#: Chapters that must show at least one captioned (numbered) figure.
CAPTIONED_CHAPTERS = ("02_theorem1", "05_training", "07_locality", "12_tradeoffs")
#: Keys the bibliography must list (cited in the text): works the method and the book rest on.
REQUIRED_CITATIONS = ("paper2025", "yu2018bisenet", "littlechild1973", "kim2022diffusionclip")

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.S)
_ROLE = re.compile(r"\{[a-z:-]+\}`[^`]*`")
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_INLINE_MATH = re.compile(r"\$[^$\n]+\$")
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_ABBREVIATIONS = re.compile(r"\b(eqs?|e\.g|i\.e|Fig|et al|cf|vs)\.")
_EXERCISE = re.compile(r"\b[Ee]xercises?\s+\d+\.\d+")
_DECIMAL = re.compile(r"(?<![\w.])(\d+\.\d+)(?![\w])")
_PERCENT = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?%")


def _markdown_sources(doc: Path) -> list[str]:
    """The Markdown of a document: a .md file, or the markdown cells of a notebook."""
    if doc.suffix == ".md":
        return [(ROOT / doc).read_text(encoding="utf-8")]
    cells = nbformat.read(ROOT / doc, as_version=4).cells
    return [cell.source for cell in cells if cell.cell_type == "markdown"]


def _prose(markdown: str) -> str:
    """Markdown without code, maths, roles (glue, cite, doc) and link targets."""
    for pattern in (_FENCE, _DISPLAY, _ROLE, _INLINE_CODE, _INLINE_MATH, _LINK_TARGET):
        markdown = pattern.sub(" ", markdown)
    return markdown


def _paper_numbers() -> list[float]:
    """The paper's published numbers (Tables 1 and 2) and what the book derives from them: FID
    ratios and locality cuts (as fractions and as percentages), with their ranges and means."""
    from interpddpm.metrics import PAPER_TABLE1, PAPER_TABLE2

    values = [v for row in PAPER_TABLE1.values() for v in row.values()]
    values += list(PAPER_TABLE2.values())
    ratios = [v / PAPER_TABLE2["DDPM"] for k, v in PAPER_TABLE2.items() if k != "DDPM"]
    cuts = [
        1 - PAPER_TABLE1[f"Interpretable {m}"][c] / PAPER_TABLE1[m][c]
        for m in ("DDPM", "LDM")
        for c in PAPER_TABLE1[m]
    ]
    for group in (ratios, cuts):
        values += [*group, sum(group) / len(group)]
    return values + [100 * c for c in cuts + [sum(cuts[:3]) / 3]]


def _is_paper_number(token: str) -> bool:
    """Whether ``token`` (``12.86``, ``58``) is one of the paper's numbers, rounded as written."""
    decimals = len(token.split(".")[1]) if "." in token else 0
    return any(round(v, decimals) == float(token) for v in _paper_numbers())


def hard_coded_results(markdown: str) -> list[str]:
    """Numbers of a run written into prose: decimals with two or more significant digits
    (``0.42``, ``2.5``) and percentages (``90%``), outside code, maths and roles
    ({glue:text} is how a chapter states its results). The paper's own numbers pass in a
    sentence that names the paper (``the paper's FID rises from 12.86``). Integers (equation and
    chapter numbers, years, sizes such as 32x32) and one-digit decimals (``0.5``) pass."""
    text = _ABBREVIATIONS.sub(lambda m: m.group(1), _prose(markdown))
    text = _EXERCISE.sub(" ", text)  # "Exercise 4.2" numbers an exercise, not a result
    found = []
    for sentence in re.split(r"(?<=[.!?])\s+|\n\s*\n|\n\s*[-*]\s+", text):
        about_paper = "paper" in sentence.lower()
        hits = [
            m.group(1)
            for m in _DECIMAL.finditer(sentence)
            if len(m.group(1).replace(".", "").lstrip("0")) >= 2
        ]
        hits += [m.group(0) for m in _PERCENT.finditer(sentence)]
        for hit in hits:
            if not (about_paper and _is_paper_number(hit.rstrip("% "))):
                found.append(f"{hit!r} in: {' '.join(sentence.split())[:160]}")
    return found


def test_hard_coded_results_are_detected() -> None:
    assert hard_coded_results("The cut reaches 97.5% at 8.5 times the FID.")
    assert hard_coded_results("The ratio is 0.42 here.")
    assert [h.split()[0] for h in hard_coded_results("Exercise 4.2 measures 0.42.")] == ["'0.42'"]
    assert hard_coded_results("The front runs from the paper's locality to 90% cuts.")
    ok = (
        "Eq. (10) of chapter 9 (2022), 32x32 faces, 0.5 of the pixels, $0.25$, `1.5`. "
        "The paper's FID rises from 12.86 to 18.4-19.4 (1.43-1.51), its cuts are 58-66%. "
        "A cut of {glue:text}`cut:.1%`."
    )
    assert hard_coded_results(ok) == []


@pytest.mark.parametrize("notebook", RESULT_CHAPTERS, ids=lambda p: p.stem)
def test_prose_states_no_hard_coded_results(notebook: Path) -> None:
    """A number of this run in a sentence must be glued (myst_nb.glue + {glue:text}), so the
    text is true on every profile; the paper's numbers are named as the paper's."""
    found = [hit for source in _markdown_sources(notebook) for hit in hard_coded_results(source)]
    assert not found, f"{notebook}: hard-coded results (glue them):\n  " + "\n  ".join(found)


_ZERO_WIDTH = {
    "left",
    "right",
    "bigl",
    "bigr",
    "Bigl",
    "Bigr",
    "biggl",
    "biggr",
    "big",
    "Big",
    "bigg",
    "displaystyle",
    "textstyle",
    "limits",
    "nolimits",
    ",",
    ";",
    ":",
    "!",
    " ",
    "begin",
    "end",
    "nonumber",
    "notag",
}
_GROUPED = {
    "text",
    "mathrm",
    "operatorname",
    "mathbb",
    "mathcal",
    "mathbf",
    "boldsymbol",
    "hat",
    "bar",
    "tilde",
    "overline",
    "widehat",
    "vec",
    "mathit",
    "textbf",
}


def _tex_group(tex: str, i: int) -> tuple[str, int]:
    """The argument starting at ``tex[i]`` (a braced group or one token) and the index after."""
    while i < len(tex) and tex[i] == " ":
        i += 1
    if i >= len(tex):
        return "", i
    if tex[i] == "{":
        depth, j = 0, i
        while j < len(tex):
            depth += {"{": 1, "}": -1}.get(tex[j], 0)
            if depth == 0:
                return tex[i + 1 : j], j + 1
            j += 1
        return tex[i + 1 :], len(tex)
    if tex[i] == "\\":
        m = re.match(r"\\([A-Za-z]+|.)", tex[i:])
        return m.group(0), i + len(m.group(0))
    return tex[i], i + 1


def tex_width(tex: str) -> float:
    """A rough width of typeset TeX in glyphs: sizing commands count nothing, a fraction the
    wider of its parts, sub- and superscripts 0.6 per glyph, other commands one glyph."""
    width, i = 0.0, 0
    while i < len(tex):
        ch = tex[i]
        if ch == "\\":
            m = re.match(r"\\([A-Za-z]+|.)", tex[i:])
            name, i = m.group(1), i + len(m.group(0))
            if name in ("begin", "end"):
                _, i = _tex_group(tex, i)
            elif name in _ZERO_WIDTH:
                pass
            elif name in ("quad", "qquad"):
                width += 2 if name == "quad" else 4
            elif name in ("frac", "dfrac", "tfrac"):
                top, i = _tex_group(tex, i)
                bottom, i = _tex_group(tex, i)
                width += max(tex_width(top), tex_width(bottom)) + 0.5
            elif name == "sqrt":
                arg, i = _tex_group(tex, i)
                width += 1 + tex_width(arg)
            elif name in _GROUPED:
                arg, i = _tex_group(tex, i)
                width += len(arg) if name in ("text", "textbf") else tex_width(arg)
            else:
                width += 1
        elif ch in "_^":
            arg, i = _tex_group(tex, i + 1)
            width += 0.6 * tex_width(arg)
        elif ch == "{":
            arg, i = _tex_group(tex, i)
            width += tex_width(arg)
        elif ch in " \n\t&}":
            i += 1
        else:
            width += 1.4 if ch in "=+-<>" else 1  # binary operators carry spacing
            i += 1
    return width


#: The widest display row (in tex_width glyphs) that fits the book's text column.
MAX_DISPLAY_WIDTH = 62


def wide_display_math(markdown: str) -> list[str]:
    """Display equations ($$...$$) with a row too wide for the page (split with aligned)."""
    wide = []
    for block in _DISPLAY.findall(_FENCE.sub(" ", markdown)):
        for row in re.split(r"\\\\", block):
            w = tex_width(row)
            if w > MAX_DISPLAY_WIDTH:
                wide.append(f"width {w:.0f} > {MAX_DISPLAY_WIDTH}: {' '.join(row.split())[:140]}")
    return wide


def test_wide_display_math_is_detected() -> None:
    long_row = r"""$$
\mathrm{MSE}(\mathrm{in}_k)
= \frac{\lVert M_k \odot (x_0 - x_0') \rVert^2}{\lVert M_k \rVert_1}, \qquad
\mathrm{MSE}(\mathrm{out}_k)
= \frac{\lVert M'_k \odot (x_0 - x_0') \rVert^2}{\lVert M_k \rVert_1}, \qquad
\mathrm{locality} = \frac{\mathrm{MSE}(\mathrm{out}_k)}{\mathrm{MSE}(\mathrm{in}_k)},
$$"""
    assert wide_display_math(long_row)
    split = long_row.replace(r", \qquad", r", \\")
    assert wide_display_math(split) == []


@pytest.mark.parametrize("doc", MARKDOWN_DOCS, ids=lambda p: p.stem)
def test_display_math_fits_the_page(doc: Path) -> None:
    found = [hit for source in _markdown_sources(doc) for hit in wide_display_math(source)]
    assert not found, f"{doc}: display maths wider than the page:\n  " + "\n  ".join(found)


@pytest.mark.parametrize("doc", MARKDOWN_DOCS, ids=lambda p: p.stem)
def test_chapter_mentions_are_links(doc: Path) -> None:
    """'chapter N' in the text is a {doc} link to that chapter."""
    found = [
        " ".join(m.group(0).split())
        for source in _markdown_sources(doc)
        for m in re.finditer(r"\bchapters?\s+\d+", _prose(source), re.I)
    ]
    assert not found, f"{doc}: unlinked mentions {found}: write {{doc}}`chapter 5 <05_training>`"
    numbers = {int(nb.stem[:2]): nb.stem for nb in book.toc_notebooks(ROOT)}
    for source in _markdown_sources(doc):
        for text, target in re.findall(r"\{doc\}`([^`<]*?)<([^>]+)>`", source):
            m = re.match(r"\s*[Cc]hapters?\s+(\d+)\s*$", text)
            if m:
                assert Path(target).name == numbers[int(m.group(1))], f"{doc}: {text} -> {target}"


@pytest.mark.parametrize("notebook", book.toc_notebooks(ROOT), ids=lambda p: p.stem)
def test_chapter_links_the_notation_page(notebook: Path) -> None:
    text = "\n".join(_markdown_sources(notebook))
    assert re.search(r"\{doc\}`[^`]*notation>?`", text), f"{notebook}: link the notation page"


def test_toc_numbers_the_chapters_in_order() -> None:
    """Numbered parts hold exactly the notebooks, so 'chapter N' is notebooks/NN_*."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    numbered = [
        entry["file"] for part in toc["parts"] if part.get("numbered") for entry in part["chapters"]
    ]
    notebooks = [nb.with_suffix("").as_posix() for nb in book.toc_notebooks(ROOT)]
    assert numbered == notebooks
    assert [int(Path(nb).name[:2]) for nb in notebooks] == list(range(1, len(notebooks) + 1))


def test_bibliography_lists_what_the_text_cites() -> None:
    bib = (ROOT / "book" / "references.bib").read_text(encoding="utf-8")
    keys = set(re.findall(r"@\w+\{([^,\s]+),", bib))
    page = (ROOT / "book" / "bibliography.md").read_text(encoding="utf-8")
    # sphinxcontrib-bibtex: `:filter: cited` lists what any page cites (`:all:` lists the whole
    # .bib; `docname in docnames` only what the bibliography page itself cites)
    assert ":all:" not in page and ":filter: cited" in page, "list the cited works only"
    cited = set()
    for doc in MARKDOWN_DOCS:
        for source in _markdown_sources(doc):
            for group in re.findall(r"\{cite(?::[a-z]+)?\}`([^`]+)`", source):
                cited.update(k.strip() for k in group.split(","))
    assert cited <= keys, f"cited but not in references.bib: {sorted(cited - keys)}"
    missing = [k for k in REQUIRED_CITATIONS if k not in cited]
    assert not missing, f"never cited (so not in the bibliography): {missing}"


def _figure_cells(notebook: Path) -> list:
    cells = nbformat.read(notebook, as_version=4).cells
    return [
        c for c in cells if c.cell_type == "code" and c.metadata.get("mystnb", {}).get("figure")
    ]


@pytest.mark.parametrize("notebook", book.toc_notebooks(ROOT), ids=lambda p: p.stem)
def test_numbered_figures_have_captions(notebook: Path) -> None:
    """A figure cell (cell metadata mystnb.figure) has a name and a caption; the key chapters
    have at least one."""
    figures = _figure_cells(ROOT / notebook)
    for cell in figures:
        options = cell.metadata["mystnb"]["figure"]
        assert str(options.get("caption", "")).strip(), f"{notebook}: a figure without caption"
        assert re.fullmatch(r"fig-[a-z0-9-]+", str(options.get("name", ""))), options
        # myst-nb wraps EVERY rich output of the cell in the figure: one image, nothing else
        assert cell.source.count("plt.show()") == 1, f"{notebook}: one figure per figure cell"
        for call in ("glue(", "markdown_table(", "display("):
            assert call not in cell.source, f"{notebook}: {call} in a figure cell: move it out"
    if notebook.stem in CAPTIONED_CHAPTERS:
        assert figures, f"{notebook}: give its key figure a caption (mystnb.figure metadata)"


@pytest.mark.parametrize("notebook", book.toc_notebooks(ROOT), ids=lambda p: p.stem)
def test_numbered_figures_are_referenced(notebook: Path) -> None:
    """The prose points at each numbered figure ({numref}`fig-...`, "Fig. 5.2")."""
    names = [c.metadata["mystnb"]["figure"]["name"] for c in _figure_cells(ROOT / notebook)]
    text = "\n".join(_markdown_sources(notebook))
    unreferenced = [n for n in names if f"{{numref}}`{n}`" not in text]
    assert not unreferenced, f"{notebook}: refer to {unreferenced} with {{numref}}`name`"


def test_figure_names_are_unique() -> None:
    names = [
        cell.metadata["mystnb"]["figure"]["name"]
        for nb in book.toc_notebooks(ROOT)
        for cell in _figure_cells(ROOT / nb)
    ]
    assert len(names) == len(set(names)), names


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


def _synthetic_repo(root: Path, toc: str, notebooks: dict[str, tuple[str, str]]) -> Path:
    """A repository with a one-line library, ``toc`` and notebooks ``name -> (title, code)``."""
    (root / "interpddpm").mkdir(parents=True)
    (root / "interpddpm" / "lib.py").write_text("X = 1\n")
    (root / "_toc.yml").write_text(toc)
    (root / "intro.md").write_text("# Intro\n")
    for name, (title, code) in notebooks.items():
        _notebook(root / "notebooks" / f"{name}.ipynb", title, code)
    return root


@pytest.fixture
def tiny_book(tmp_path: Path) -> Path:
    return _synthetic_repo(
        tmp_path / "repo",
        TOC,
        {
            "good": (
                "Good",
                "import os\nfrom interpddpm import threads\nprint(profile, os.getcwd())\n"
                "threads.choose_threads('a long job');",
            ),
            "bad": ("Bad", "ok = 1\nraise ValueError('boom')"),
        },
    )


def test_execute_stages_caches_and_reports_failures(
    tiny_book: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch
) -> None:
    monkeypatch.delenv("INTERPDDPM_THREADS", raising=False)  # the kernel's job chooses
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # from the load (xdist sets it)
    root, out = tiny_book, tmp_path / "out"
    source_bytes = (root / "notebooks" / "good.ipynb").read_bytes()

    report = book.execute("smoke", ["good"], root=root, out=out, cache=tmp_path / "cache")
    # one line per chapter, with its time and the threads its long jobs chose; the kernel
    # (local IPC sockets, not TCP) has no transport warning to print
    stdout, stderr = capfd.readouterr()
    assert "without encryption" not in stdout + stderr
    lines = [x for x in stdout.splitlines() if x.startswith("[1/1] notebooks/good.ipynb")]
    assert len(lines) == 1, stdout
    assert re.fullmatch(
        r"\[1/1\] notebooks/good.ipynb \(profile smoke\): \d+\.\d s, threads "
        r"\d+ x1 \(other jobs kept .* cores busy\)",
        lines[0],
    ), lines[0]
    assert list(report) == ["notebooks/good.ipynb"]
    assert report["notebooks/good.ipynb"]["cached"] is False
    staged = book.staging_dir(out) / "notebooks" / "good.ipynb"
    nb = nbformat.read(staged, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and book.REMOVE_TAG in injected[0].metadata["tags"]
    assert 'profile = "smoke"' in injected[0].source
    streams = [o["text"] for o in nb.cells[-1].outputs if o["output_type"] == "stream"]
    printed = "".join(streams).splitlines()
    assert printed[0].startswith("smoke ") and printed[0].endswith(str(staged.parent))
    assert printed[-1].startswith("threads: ") and "for a long job" in printed[-1]
    assert (root / "notebooks" / "good.ipynb").read_bytes() == source_bytes, "source modified"
    timings = json.loads((book.staging_dir(out) / book.TIMINGS_FILE).read_text())
    assert timings["notebooks/good.ipynb"]["profile"] == "smoke"
    assert timings["notebooks/good.ipynb"]["threads"] in lines[0]

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


CHAIN_TOC = """format: jb-book
root: intro
chapters:
  - file: notebooks/first
  - file: notebooks/second
"""


def test_a_false_claim_stops_the_book(tmp_path: Path) -> None:
    """A chapter whose outputs contradict a claims.expect sentence fails the build in one line
    naming the chapter, the claim and its evidence, and is not staged (the next build reruns
    it). The smoke profile's exemption is tested in tests/test_claims.py."""
    toc = "format: jb-book\nroot: intro\nchapters:\n  - file: notebooks/claim\n"
    code = (
        "from interpddpm import claims\n"
        "claims.expect('less_local', 3 > 4, 'it is less local', evidence='3 vs 4',"
        " profile='cpu')"
    )
    root = _synthetic_repo(tmp_path / "repo", toc, {"claim": ("Claim", code)})
    out = tmp_path / "out"
    with pytest.raises(book.FalseClaimError) as caught:
        book.execute("smoke", root=root, out=out, cache=tmp_path / "cache")
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith("notebooks/claim.ipynb: claim 'less_local' is false"), message
    assert "3 vs 4" in message
    assert not (book.staging_dir(out) / "notebooks" / "claim.ipynb").exists()


def test_a_changed_chapter_re_executes_the_chapters_after_it(tmp_path: Path) -> None:
    """Cache keys chain in _toc.yml order: later chapters read the runs earlier ones make."""
    out = tmp_path / "out"
    root = _synthetic_repo(
        tmp_path / "repo", CHAIN_TOC, {"first": ("First", "x = 1"), "second": ("Second", "y = 2")}
    )
    run = lambda names=None: {  # noqa: E731
        Path(k).stem: v["cached"]
        for k, v in book.execute("smoke", names, root=root, out=out, cache=tmp_path / "c").items()
    }
    assert run() == {"first": False, "second": False}
    _notebook(root / "notebooks" / "second.ipynb", "Second", "y = 3")  # a later chapter changes
    assert run() == {"first": True, "second": False}  # the one before it stays cached
    _notebook(root / "notebooks" / "first.ipynb", "First", "x = 2")  # an earlier one changes
    assert run(["second"]) == {"second": False}  # re-executed although its own source did not
    keys = book.chained_keys(root, book.toc_notebooks(root), {"p": 1}, [])
    own = book.cache_key(root / "notebooks" / "second.ipynb", {"p": 1}, [])
    assert keys[Path("notebooks/second.ipynb")] != own  # it includes the first chapter's key


def test_the_cache_key_covers_the_library_subpackages(tmp_path: Path) -> None:
    """A change in a nested library file (interpddpm/training/losses.py) changes every chapter's
    key; files count by their path, so two __init__.py files are two files."""
    root = _synthetic_repo(
        tmp_path / "repo", CHAIN_TOC, {"first": ("First", "x = 1"), "second": ("Second", "y = 2")}
    )
    lib = root / "interpddpm"
    (lib / "training").mkdir(parents=True)
    for rel in ("__init__.py", "games.py", "training/__init__.py", "training/losses.py"):
        (lib / rel).write_text(f"# {rel}\n")
    library = book.library_sources(root)
    assert lib / "training" / "losses.py" in library
    before = book.chained_keys(root, book.toc_notebooks(root), {"p": 1}, library)
    (lib / "training" / "losses.py").write_text("LAMBDA = 2\n")  # eq. (9) changes
    after = book.chained_keys(root, book.toc_notebooks(root), {"p": 1}, library)
    assert all(before[k] != after[k] for k in before)
    # the same bytes under another path (a module moved into the package) is another library
    moved = [lib / "__init__.py", lib / "games.py", lib / "training" / "games.py"]
    (lib / "training" / "games.py").write_text((lib / "games.py").read_text())
    first = root / "notebooks" / "first.ipynb"
    assert book.cache_key(first, {}, moved[:2]) != book.cache_key(first, {}, moved[::2])


EXECUTE = """
import sys
from pathlib import Path
from interpddpm import book
root, out, cache = map(Path, sys.argv[1:4])
report = book.execute("smoke", ["good"], root=root, out=out, cache=cache)
print("cached:", report["notebooks/good.ipynb"]["cached"], flush=True)
"""


def test_a_second_book_build_waits_for_the_first(tiny_book: Path, tmp_path: Path) -> None:
    """Two executions on one staging folder: the second says it waits, then reuses the work."""
    import subprocess
    import sys

    from interpddpm.locks import locked

    root, out, cache = tiny_book, tmp_path / "out", tmp_path / "cache"
    book.execute("smoke", ["good"], root=root, out=out, cache=cache)
    stage = book.staging_dir(out)
    with locked(stage, wait=False, what="book execution (profile smoke)"):
        second = subprocess.Popen(
            [sys.executable, "-c", EXECUTE, str(root), str(out), str(cache)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        line = ""
        while not line.startswith("waiting for"):  # (skips any import warnings)
            line = second.stdout.readline()
            assert line, "the second build ended without waiting"
        assert line.startswith(f"waiting for {stage} (held by pid {os.getpid()} ")
        assert "book execution (profile smoke)" in line
    rest, _ = second.communicate(timeout=600)
    assert second.returncode == 0, rest
    assert "unchanged, skipped" in rest and "cached: True" in rest


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


#: TeX commands that only appear in the page text when maths was not typeset.
RAW_TEX = re.compile(
    r"\\(frac|sum|prod|mathbb|mathcal|mathrm|setminus|emptyset|subseteq|phi|lambda|alpha|"
    r"epsilon|lVert|rVert|odot|bigl|Bigl|left|right|text|sqrt|cup|cap|ne|le|ge)\b"
)


def _around(text: str, match: re.Match) -> str:
    return " ".join(text[max(0, match.start() - 50) : match.end() + 50].split())


#: Run after MathJax typesets the page: list the display equations wider than their column.
_WIDTH_PROBE = """<script>
window.addEventListener("load", () => {
  const done = () => {
    const wide = [];
    document.querySelectorAll('mjx-container[display="true"]').forEach((box) => {
      const math = box.querySelector("mjx-math");
      const room = box.parentElement.getBoundingClientRect().width;
      const need = math ? math.getBoundingClientRect().width : 0;
      if (need > room + 1) wide.push(Math.round(need) + ">" + Math.round(room) + ": " +
        (box.getAttribute("aria-label") || box.textContent).slice(0, 80));
    });
    // code cells (their input) wider than their box: cut off, or a scroll bar to find
    document.querySelectorAll("div.cell_input pre").forEach((pre) => {
      if (pre.scrollWidth > pre.clientWidth + 1) wide.push("code " + pre.scrollWidth + ">" +
        pre.clientWidth + ": " + pre.textContent.split("\\n").find((l) => l.length > 72));
    });
    document.body.setAttribute("data-wide-math", JSON.stringify(wide));
  };
  const ready = window.MathJax && MathJax.startup && MathJax.startup.promise;
  (ready ? MathJax.startup.promise : Promise.resolve()).then(done, done);
});
</script>"""


def _wide_typeset_math(page: Path, profile_dir: Path) -> list[str]:
    """Display equations and code cells wider than the text column at the screenshot's window
    size, measured in Chromium on a copy of the page (same folder, so its assets load)."""
    text = page.read_text(encoding="utf-8")
    if 'class="math' not in text and "cell_input" not in text:
        return []
    probe = page.with_name(page.stem + ".__width_probe.html")
    probe.write_text(text.replace("</body>", _WIDTH_PROBE + "</body>"), encoding="utf-8")
    try:
        dom = run_chromium(probe.as_uri(), profile_dir, "--dump-dom", "--window-size=1200,2400")
    finally:
        probe.unlink(missing_ok=True)
    found = re.search(r'data-wide-math="([^"]*)"', dom)
    assert found, f"{page.name}: the width probe did not run"
    return json.loads(html.unescape(found.group(1)))


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
def test_student_edition_stages_no_solution(built_book: Path) -> None:
    """The teacher pages show solutions (so the detector sees real markup); the student
    edition's staged chapters, made from the same executed notebooks, have none, and its
    hand-out notebooks have no outputs. Rendering them again (a second jupyter-book build,
    which checks its pages with the same detector) is left to `make book EDITION=student`."""
    shown = book.solutions_in_html(built_book)
    assert any("titled 'Solution'" in s for s in shown), shown
    assert any("titled 'Explanation'" in s for s in shown), shown
    assert any("tag_solution" in s for s in shown), shown
    out = built_book.parent.parent
    staged = book.stage_student(ROOT, out)
    for notebook in book.toc_notebooks(ROOT):
        cells = nbformat.read(staged / notebook, as_version=4).cells
        assert not any(
            "solution" in c.metadata.get("tags", [])
            or (c.cell_type == "markdown" and "{admonition} Solution" in c.source)
            for c in cells
        ), notebook
        assert any(c.get("outputs") for c in cells if c.cell_type == "code"), notebook
        handout = nbformat.read(book.student_dir(out) / "notebooks" / notebook.name, 4)
        assert not any(c.get("outputs") for c in handout.cells if c.cell_type == "code")
        assert not any("solution" in c.metadata.get("tags", []) for c in handout.cells)
    assert "launch_buttons" not in (staged / "_config.yml").read_text()


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
@pytest.mark.parametrize("notebook", book.toc_notebooks(ROOT), ids=lambda p: p.stem)
def test_glued_text_carries_no_markdown(built_book: Path, notebook: Path) -> None:
    """Glued text is pasted as it is, not parsed as markdown: a backtick or a double asterisk
    in it would show on the page as a character."""
    page = (built_book / notebook.with_suffix(".html")).read_text(encoding="utf-8")
    for span in re.findall(r'<span class="pasted-text">(.*?)</span>', page, re.S):
        text = html.unescape(span)
        assert "`" not in text and "**" not in text, f"{notebook}: {text[:160]}"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", book.toc_notebooks(ROOT), ids=lambda p: p.stem)
def test_figure_cells_show_one_image(built_book: Path, notebook: Path) -> None:
    """Executed, a figure cell (mystnb.figure) has exactly one rich output, an image."""
    staged = built_book.parent / book.STAGED / notebook
    for cell in _figure_cells(staged):
        rich = [o for o in cell.get("outputs", []) if "data" in o]
        kinds = [sorted(o["data"]) for o in rich]
        assert len(rich) == 1, f"{notebook}: a figure cell shows {len(rich)} outputs: {kinds}"
        assert any(m.startswith("image/") for m in rich[0]["data"]), f"{notebook}: {kinds}"


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
    raw_tex = RAW_TEX.search(prose)
    assert raw_tex is None, f"{doc}: raw TeX left in the page text: ...{_around(prose, raw_tex)}..."
    dollars = re.search(r"\$[^$\s]|[^$\s]\$", prose)
    assert dollars is None, f"{doc}: a '$' left in the page text: ...{_around(prose, dollars)}..."
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

    # Numbered figures: every <figure> of the article has a caption with text.
    for figure in re.findall(r"<figure\b.*?</figure>", _article(static), re.S):
        caption = re.search(r"<figcaption\b.*?</figcaption>", figure, re.S)
        text = html.unescape(re.sub(r"<[^>]+>", "", caption.group(0))).strip() if caption else ""
        assert text, f"{doc}: a figure without a caption"

    # Display maths that the column would cut off, measured on the typeset page.
    wide = _wide_typeset_math(page, tmp_path / "profile-math")
    assert not wide, f"{doc}: display maths or code wider than the text column: {wide}"

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


def _key_figures(notebook: Path) -> list[str]:
    """The base64 PNG of every figure an executed chapter captions above its ending: a code
    cell's ``mystnb.figure`` output and each ``{glue:figure}``, read independently of
    interpddpm.slides."""
    cells = nbformat.read(notebook, as_version=4).cells
    ending = re.compile(r"^## What (we|was) measured", re.M)
    end = next(i for i, c in enumerate(cells) if ending.search(c.source))
    glued = {
        o["metadata"]["scrapbook"]["name"]: o["data"]
        for c in cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "scrapbook" in o.get("metadata", {})
    }
    found = []
    for cell in cells[:end]:
        if cell.cell_type == "markdown":
            for name in re.findall(r"^:::\{glue:figure\}\s*(\S+)", cell.source, re.M):
                found.append(glued[name]["application/papermill.record/image/png"])
        elif "figure" in cell.metadata.get("mystnb", {}):
            found += [
                o["data"]["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})
            ]
    return found


@pytest.mark.slow
def test_every_chapter_has_an_offline_deck(built_book: Path) -> None:
    """`make book` writes one slide deck per chapter (interpddpm.slides) that embeds each of
    the chapter's captioned figures, loads nothing from the network (its reveal.js and MathJax
    are files beside it), and the syllabus links the decks' index."""
    from interpddpm import slides

    folder = built_book / slides.SLIDES
    index = (folder / "index.html").read_text(encoding="utf-8")
    for notebook in book.toc_notebooks(ROOT):
        deck = folder / (notebook.stem + slides.SUFFIX)
        assert deck.is_file(), f"no deck for {notebook}"
        assert f'href="{deck.name}"' in index, deck.name
        page = deck.read_text(encoding="utf-8")
        assert slides.remote_references(page) == [], f"{deck.name} loads from the network"
        local = re.findall(r'<(?:script|link)\b[^>]*(?:src|href)="([^"]+)"', page)
        missing = [url for url in local if not (folder / url).is_file()]
        assert local and not missing, f"{deck.name}: missing assets {missing}"
        embedded = set(re.findall(r'<img\b[^>]*src="data:image/png;base64,([^"]+)"', page))
        figures = _key_figures(built_book.parent / book.STAGED / notebook)
        absent = sum(figure not in embedded for figure in figures)
        assert not absent, f"{deck.name}: {absent} of {len(figures)} figures not in the deck"
    syllabus = (built_book / "book" / "syllabus.html").read_text(encoding="utf-8")
    assert 'href="../slides/index.html"' in syllabus


@pytest.mark.slow
def test_a_deck_shows_in_the_browser_offline(built_book: Path, tmp_path: Path) -> None:
    """A deck renders with no network: reveal.js starts, MathJax typesets the maths, and a
    figure slide's screenshot is not blank (kept in _build/screenshots/ for people to look
    at)."""
    from PIL import Image

    from interpddpm import slides

    deck = built_book / slides.SLIDES / ("05_training" + slides.SUFFIX)
    dom = run_chromium(deck.as_uri(), tmp_path / "profile", "--dump-dom")
    assert re.search(r'class="reveal\b[^"]*\bready\b', dom), "reveal.js did not start"
    assert "<mjx-container" in dom and "<mjx-merror" not in dom, "maths not typeset"
    assert dom.count("<section") >= 5, "a deck of fewer than five slides"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "slides__05_training.png"
    shot.unlink(missing_ok=True)
    size = "--window-size=1280,760"
    run_chromium(deck.as_uri() + "#/2", tmp_path / "profile", f"--screenshot={shot}", size)
    image = Image.open(shot).convert("L")
    low, high = image.getextrema()
    assert high - low > 50, "the deck's screenshot is blank"
    # the figure's slide shows the figure: many grey levels, not only text on white
    assert len(set(image.getdata())) > 64, "the figure slide shows no figure"


# --------------------------------------------------------------------------- installing on Colab


@pytest.mark.parametrize("notebook", book.toc_notebooks(ROOT), ids=lambda p: p.stem)
def test_install_cell_follows_the_config(notebook: Path) -> None:
    """One place says where the code comes from: _config.yml's repository.url (the Colab
    button's too); each chapter's install cell is generated from it."""
    cells = nbformat.read(ROOT / notebook, as_version=4).cells
    install = [c for c in cells if c.cell_type == "code" and book._is_install_cell(c.source)]
    assert len(install) == 1, f"{notebook}: one install cell"
    assert install[0].source == book.install_cell(ROOT), (
        f"{notebook}: the install cell differs from _config.yml: run "
        "`.venv/bin/python -c 'from interpddpm import book; book.sync_install_cells()'`"
    )
    assert "hide-input" in install[0].metadata.get("tags", [])


def _run_install_cell(monkeypatch, returncode: int) -> list[list[str]]:
    """Execute the install cell as in a kernel without interpddpm; pip is a stand-in."""
    import sys

    calls: list[list[str]] = []

    def fake_run(command, *args, **kwargs):
        calls.append(command)
        if returncode == 0:  # "installed": the import after pip finds the package
            monkeypatch.delitem(sys.modules, "interpddpm")
        return subprocess.CompletedProcess(command, returncode)

    monkeypatch.setitem(sys.modules, "interpddpm", None)  # import interpddpm -> ImportError
    monkeypatch.setattr(subprocess, "run", fake_run)
    exec(book.install_cell(ROOT), {})
    return calls


def test_install_cell_installs_from_the_chosen_source(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(book.SOURCE_VARIABLE, raising=False)
    (command,) = _run_install_cell(monkeypatch, 0)
    from interpddpm import __version__

    # the book's own version (its tag), with the colab extra: no jupyterlab, no jupyter-book
    url = book.repository_url(ROOT)
    assert command[-1] == f"interpddpm[colab] @ git+{url}@v{__version__}"
    wheel = tmp_path / "interpddpm-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    monkeypatch.setenv(book.SOURCE_VARIABLE, str(wheel))
    (command,) = _run_install_cell(monkeypatch, 0)
    assert command[-1] == f"interpddpm[colab] @ file://{wheel}"
    # where torchvision is installed already (Colab), Inception FID's extra comes along
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "torchvision" else real_find_spec(name, *a),
    )
    (command,) = _run_install_cell(monkeypatch, 0)
    assert command[-1] == f"interpddpm[colab,gpu] @ file://{wheel}"


def test_install_cell_failure_names_the_options(monkeypatch) -> None:
    monkeypatch.setenv(book.SOURCE_VARIABLE, "git+https://example.invalid/nothing")
    with pytest.raises(RuntimeError, match=r"could not install .*example\.invalid.*make dist"):
        _run_install_cell(monkeypatch, 1)
