"""The slides (interpddpm.slides): a deck per chapter from its executed notebook, offline.

A synthetic executed chapter (figures, a glued figure and values, an ending, exercises) checks
what a deck holds; the real decks of the smoke book are checked in tests/test_book.py (every
chapter, in headless Chromium with no network).
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import nbformat
import pytest

from interpddpm import slides

RECORD = "application/papermill.record/"


def _png(colour: str) -> str:
    """A tiny PNG of one colour, base64 (as a notebook stores it)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (4, 3), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


FIGURE, GLUED, SOLUTION, REMOVED = _png("red"), _png("green"), _png("blue"), _png("yellow")


def _code(outputs: list, **metadata) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell("pass", outputs=outputs)
    cell.metadata.update(metadata)
    return cell


def _image(data: str, mime: str = "image/png", **metadata) -> nbformat.NotebookNode:
    return nbformat.v4.new_output("display_data", data={mime: data}, metadata=metadata)


def _glue(name: str, data: dict) -> nbformat.NotebookNode:
    wrapped = {RECORD + mime: value for mime, value in data.items()}
    metadata = {"scrapbook": {"name": name, "mime_prefix": RECORD}}
    return nbformat.v4.new_output("display_data", data=wrapped, metadata=metadata)


def executed_chapter() -> nbformat.NotebookNode:
    """A chapter as ``make book`` stages it: outputs, glue, an ending and exercises."""
    md = nbformat.v4.new_markdown_cell
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        md(
            "# Editing one concept\n\nIntro with $x_T$.\n\n**What you will learn**\n"
            "- resampling a region's noise, {doc}`chapter 5 <05_training>`;\n"
            "- the Lab MSE $d$.\n\n**Assumes:** nothing."
        ),
        _code([], tags=["injected-parameters"]),
        md("## Resampling one region's noise"),
        _code(
            [
                nbformat.v4.new_output("stream", name="stdout", text="a log line\n"),
                _image(FIGURE),
                _glue("ratio", {"text/plain": "0.123456"}),
                _glue("fig_glued", {"image/png": GLUED, "text/plain": "<Figure>"}),
            ],
            mystnb={"figure": {"caption": "Samples at $K = 2$.", "name": "fig-samples"}},
        ),
        _code([_image(REMOVED)], tags=["remove-cell"]),
        md(
            ":::{glue:figure} fig_glued\n:name: fig-glued\n\n"
            "The glued one: ratio {glue:text}`ratio:.2f`, see {numref}`fig-samples`.\n:::"
        ),
        md("The body's last words.\n\n## What we measured"),
        _code(
            [
                nbformat.v4.new_output(
                    "execute_result",
                    data={"text/markdown": "| a | b |\n|---|---|\n| 1 | 2 |", "text/plain": "x"},
                    execution_count=1,
                )
            ]
        ),
        md(
            "Measured {glue:text}`ratio:.3f` {cite}`paper2025`.\n\n"
            ":::{admonition} Takeaway\n:class: tip\nOnly the nose moves.\n:::"
        ),
        md("## Exercises\n\n### Exercise 6.1 (warm-up)"),
        _code([_image(SOLUTION)], tags=["solution"]),
    ]
    return nb


def _deck() -> tuple[nbformat.NotebookNode, slides.Chapter]:
    chapter = slides.Chapter(number=6, page="notebooks/06_editing")
    deck = slides.deck_notebook(executed_chapter(), chapter, book_title="B", name="06")
    return deck, chapter


def test_myst_becomes_markdown_that_nbconvert_renders() -> None:
    chapter = slides.Chapter(6, "notebooks/06_editing", {"v": {"text/plain": "0.98765"}})
    chapter.figures["fig-a"] = "6.2"
    text = (
        "See {doc}`chapter 5 <05_training>`, {doc}`/book/notation`, {numref}`fig-a`, "
        "{cite:p}`a,b`: {glue:text}`v:.2f`.\n\n```{note}\nA note.\n```"
    )
    assert slides.myst_to_markdown(text, chapter) == (
        "See [chapter 5](../notebooks/05_training.html), [notation](../book/notation.html), "
        "Fig. 6.2, [a, b]: 0.99.\n\n> **Note.** A note."
    )
    with pytest.raises(slides.SlidesError, match="names no glued value"):
        slides.myst_to_markdown("{glue:text}`missing`", chapter)


def test_a_deck_holds_title_goals_figures_and_ending_in_order() -> None:
    """Title, what you will learn, one slide per shown figure (captioned and numbered as the
    book numbers them, glued ones too), the ending's table and takeaway; never a log line, a
    removed cell, the parameters or an exercise's solution; no code."""
    deck, chapter = _deck()
    slide_types = [c.metadata["slideshow"]["slide_type"] for c in deck.cells]
    sources = [c.source for c in deck.cells]
    assert sources[0].startswith("# 6. Editing one concept")
    assert "../notebooks/06_editing.html" in sources[0]
    assert sources[1].startswith("## What you will learn")
    assert "[chapter 5](../notebooks/05_training.html)" in sources[1]
    assert "Assumes" not in sources[1]
    images = [
        o["data"]["image/png"]
        for c in deck.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "image/png" in o.get("data", {})
    ]
    assert images == [FIGURE, GLUED]  # each shown figure once, in order
    assert all(c.source == "" for c in deck.cells if c.cell_type == "code")
    assert "**Fig. 6.1.** Samples at $K = 2$." in sources
    assert "**Fig. 6.2.** The glued one: ratio 0.12, see Fig. 6.1." in sources
    assert chapter.figures == {"fig-samples": "6.1", "fig-glued": "6.2"}
    ending = sources.index("## What we measured")
    assert slide_types[ending] == "slide"
    table = deck.cells[ending + 1]
    assert list(table.outputs[0]["data"]) == ["text/markdown"]
    assert "Measured 0.123 [paper2025]" in sources[ending + 2]
    assert "> **Takeaway.** Only the nose moves." in sources[ending + 2]
    text = "\n".join(sources)
    assert "Exercise" not in text and "log line" not in str(deck.cells)
    assert "last words" not in text  # the body's prose before the ending's heading
    assert slide_types.count("slide") == 2 + 2 + 1  # title, goals, 2 figures, the ending


def test_a_chapter_without_its_ending_is_refused() -> None:
    nb = executed_chapter()
    nb.cells = [c for c in nb.cells if "What we measured" not in c.source]
    with pytest.raises(slides.SlidesError, match="What we measured"):
        slides.deck_notebook(nb, slides.Chapter(6, "notebooks/x"), book_title="B", name="x")


def test_remote_references_finds_what_a_browser_would_fetch() -> None:
    page = (
        '<script src="https://cdn.x/a.js"></script><link rel="stylesheet" href="//cdn.x/b.css">'
        '<img src="http://x/c.png"><a href="https://example.org">a link</a>'
        '<script src="_assets/reveal.js/dist/reveal.js"></script>'
        "<style>@import url(https://fonts.x/d.css); .a { background: url(data:image/png;a) }"
        "</style>"
    )
    assert slides.remote_references(page) == [
        "https://cdn.x/a.js",
        "//cdn.x/b.css",
        "http://x/c.png",
        "https://fonts.x/d.css",
    ]


def test_write_decks_makes_an_offline_deck_per_chapter(tmp_path: Path) -> None:
    """A staged book of one chapter: its deck, the index, and reveal.js and MathJax beside
    them; nothing the deck or its stylesheets load comes from the network, and every figure
    is embedded in the page."""
    staged = tmp_path / "staged"
    (staged / "notebooks").mkdir(parents=True)
    (staged / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nchapters:\n  - file: notebooks/06_editing\n"
    )
    (staged / "_config.yml").write_text("title: A book\n")
    (staged / "intro.md").write_text("# Intro\n")
    nbformat.write(executed_chapter(), staged / "notebooks" / "06_editing.ipynb")
    html = tmp_path / "html"
    decks = slides.write_decks(staged, html)
    folder = html / slides.SLIDES
    assert decks == [folder / "06_editing.slides.html"]
    page = decks[0].read_text(encoding="utf-8")
    assert slides.remote_references(page) == []
    embedded = re.findall(r'<img\b[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert embedded == [FIGURE, GLUED]
    local = re.findall(r'<(?:script|link)\b[^>]*(?:src|href)="([^"]+)"', page)
    assert local and all((folder / url).is_file() for url in local), local
    assert "_assets/reveal.js/dist/reveal.js" in local
    assert "_assets/mathjax/tex-svg.js" in local
    assert "Reveal.initialize" in page and "require(" not in page
    for sheet in (folder / slides.ASSETS).rglob("*.css"):  # fonts and @imports: local
        text = sheet.read_text(encoding="utf-8")
        assert slides.remote_references(text) == [], sheet
        for url in re.findall(r"url\(['\"]?([^'\")?#]+)", text):
            assert url.startswith("data:") or (sheet.parent / url).is_file(), (sheet, url)
    index = (folder / "index.html").read_text(encoding="utf-8")
    # the book numbers its chapters in _toc.yml's order: this one is chapter 1
    assert '<a href="06_editing.slides.html">1. Editing one concept</a>' in index
    assert 'alt="Fig. 1.1: Samples at K = 2."' in page
