"""Slides per chapter: a short reveal.js deck made from each executed chapter, offline.

:func:`write_decks` turns each executed chapter of the staged book (``book.staging_dir``) into
``<html>/slides/<chapter>.slides.html``, a deck a teacher can show in class:

- a title slide (the chapter's title, a link to its page);
- "What you will learn" (the chapter's own list);
- one slide per figure of the chapter's body, under its section's heading, with the figure's
  caption (``mystnb.figure`` metadata of a code cell, or the body of a ``{glue:figure}``);
- the chapter's ending, "What we measured": its tables and takeaways.

The deck is a derived notebook (only these cells, no code shown) with ``slideshow.slide_type``
metadata, exported by nbconvert's :class:`~nbconvert.SlidesExporter`. Its reveal template
loads reveal.js, require.js and MathJax from CDNs; the template here
(:data:`_TEMPLATE`) loads them from ``slides/_assets/`` instead: reveal.js from the
``sphinx-revealjs`` package (which ships its dist files), MathJax 3 (SVG output, which needs no
font files) from ``sphinx-mathjax-offline``, as the book's own pages do. A deck therefore works
from a folder with no network; figures are embedded in it as ``data:`` images.

MyST that nbconvert's Markdown does not know is resolved first (:func:`myst_to_markdown`):
``{glue:text}`` roles take the chapter's glued values, ``{doc}`` roles become links to the
book's pages, ``{numref}`` the figure's number, admonitions a quoted paragraph.

Serves the teachers' material of every chapter (issue 27): ``make book`` writes the decks.
"""

from __future__ import annotations

import html
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

SLIDES = "slides"  # the decks' folder, under the book's html/
ASSETS = "_assets"  # reveal.js and MathJax, under slides/
SUFFIX = ".slides.html"
#: Where each package keeps its files, and their folder under slides/_assets/.
PACKAGE_FOLDERS = {
    "sphinx-revealjs": ("sphinx_revealjs/_static/revealjs", "reveal.js"),
    "sphinx-mathjax-offline": ("sphinx-mathjax-offline/static/mathjax", "mathjax"),
}
#: (distribution, file or folder under its folder) copied to slides/_assets/, same layout
REVEAL_ASSETS = (
    ("sphinx-revealjs", "LICENSE"),
    ("sphinx-revealjs", "dist/reveal.js"),
    ("sphinx-revealjs", "dist/reveal.css"),
    ("sphinx-revealjs", "dist/theme/white.css"),
    # white.css imports ./fonts/source-sans-pro/source-sans-pro.css
    ("sphinx-revealjs", "dist/theme/fonts/source-sans-pro"),
    ("sphinx-mathjax-offline", "tex-svg.js"),
)
#: Tags of cells whose output the book's page does not show (nor does a deck).
HIDDEN_TAGS = frozenset({"remove-cell", "remove-output", "solution", "injected-parameters"})
#: The heading of a chapter's ending, and of its exercises (where a deck stops).
_ENDING = re.compile(r"^##\s+What (?:we measured|was measured)\b", re.M)
_EXERCISES = re.compile(r"^##\s+Exercises\b", re.M)
_LEARN = "**What you will learn**"


class SlidesError(RuntimeError):
    """A deck could not be made: a missing package file, or a chapter without the parts a deck
    takes (its title, its "What you will learn" list, its "What we measured" ending)."""


# --------------------------------------------------------------------------- MyST to Markdown


@dataclass
class Chapter:
    """What the MyST of one executed chapter refers to: its number, its glued values (name ->
    the ``text/plain`` a cell glued), its figure numbers (name -> ``5.2``) and where its page
    is, relative to the book's root (``notebooks/05_training``)."""

    number: int
    page: str
    glued: dict[str, dict[str, Any]] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)


_ROLE = re.compile(r"\{([a-z][\w:-]*)\}`([^`]*)`")
_TARGET = re.compile(r"^(.*?)\s*<([^<>]+)>$", re.S)
#: A MyST directive's fence: group 1 the fence, 2 the directive, 3 its argument.
_DIRECTIVE = re.compile(r"^(:{3,}|`{3,})\{([\w:-]+)\}\s*(.*)$")
_OPTION = re.compile(r"^:([\w-]+):(.*)$")


def _page_link(target: str, chapter: Chapter) -> str:
    """The deck's relative URL of a ``{doc}`` target (decks live in ``html/slides/``)."""
    folder = Path(chapter.page).parent
    path = Path(target.lstrip("/")) if target.startswith("/") else folder / target
    parts: list[str] = []
    for part in path.as_posix().split("/"):
        if part == "..":
            parts = parts[:-1]
        elif part not in ("", "."):
            parts.append(part)
    return "../" + "/".join(parts) + ".html"


def _role(name: str, content: str, chapter: Chapter) -> str:
    """The Markdown for one MyST role (``{doc}``, ``{numref}``, ``{cite}``, ``{glue:text}``)."""
    from myst_nb.core.variables import format_plain_text  # myst-nb formats glue the same way

    explicit = _TARGET.match(content)
    text, target = (explicit.group(1), explicit.group(2)) if explicit else (None, content)
    if name in ("glue", "glue:", "glue:text", "glue:md"):
        key, _, spec = content.rpartition(":") if ":" in content else (content, "", "")
        data = chapter.glued.get(key)
        if name == "glue:md" and data and "text/markdown" in data:
            return data["text/markdown"]
        if data is None or "text/plain" not in data:
            raise SlidesError(f"{chapter.page}: {{{name}}}`{content}` names no glued value")
        return format_plain_text(data["text/plain"], spec)
    if name == "doc":
        return f"[{text or Path(target).name}]({_page_link(target, chapter)})"
    if name == "numref":
        number = chapter.figures.get(target, "?")
        return (text or "Fig. %s").replace("%s", number).replace("{number}", number)
    if name in ("ref", "term", "math"):
        return f"${content}$" if name == "math" else text or target
    if name.startswith("cite"):
        return "[" + ", ".join(key.strip() for key in content.split(",")) + "]"
    return text or target


def resolve_roles(markdown: str, chapter: Chapter) -> str:
    """``markdown`` with every MyST role replaced by plain Markdown (:func:`_role`)."""
    return _ROLE.sub(lambda m: _role(m.group(1), m.group(2), chapter), markdown)


@dataclass
class Block:
    """A piece of a markdown cell: plain Markdown (``kind == "text"``) or one MyST directive
    (``kind`` its name, ``argument``, ``options`` such as ``name``, and its ``body``)."""

    kind: str
    body: str
    argument: str = ""
    options: dict[str, str] = field(default_factory=dict)


def myst_blocks(markdown: str) -> Iterator[Block]:
    """The MyST of a markdown cell as :class:`Block` pieces, in order: plain Markdown, and each
    directive block (``:::{glue:figure} name`` ... ``:::``) with its option lines parsed."""
    lines, plain = markdown.split("\n"), []
    index = 0
    while index < len(lines):
        opening = _DIRECTIVE.match(lines[index])
        if opening is None:
            plain.append(lines[index])
            index += 1
            continue
        fence = opening.group(1)
        closing = re.compile(rf"^{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = next((j for j in range(index + 1, len(lines)) if closing.match(lines[j])), None)
        end = len(lines) if end is None else end
        body, options = lines[index + 1 : end], {}
        while body and (option := _OPTION.match(body[0])):
            options[option.group(1)] = option.group(2).strip()
            body = body[1:]
        if plain:
            yield Block("text", "\n".join(plain))
            plain = []
        yield Block(opening.group(2), "\n".join(body).strip(), opening.group(3).strip(), options)
        index = end + 1
    if plain:
        yield Block("text", "\n".join(plain))


def myst_to_markdown(markdown: str, chapter: Chapter) -> str:
    """The cell's MyST as Markdown that nbconvert renders: roles resolved, an admonition (or a
    note, a tip) as a quoted paragraph led by its title in bold; ``{glue:figure}`` blocks are
    left out (a deck shows them as figures of their own)."""
    parts = []
    for block in myst_blocks(markdown):
        if block.kind == "text":
            parts.append(block.body)
        elif not block.kind.startswith("glue"):
            title = block.argument or block.kind.capitalize()
            quoted = "\n".join("> " + line for line in f"**{title}.** {block.body}".split("\n"))
            parts.append(quoted)
    return resolve_roles("\n\n".join(p.strip("\n") for p in parts if p.strip()), chapter)


# --------------------------------------------------------------------------- the derived notebook


@dataclass
class Figure:
    """One figure of a chapter: the section it is in, its image output and its caption."""

    section: str
    output: Any
    caption: str = ""
    number: str = ""


def _image_output(output: Any) -> Any | None:
    """A copy of a notebook output with only its image, or None when it shows none. A glued
    figure's image carries papermill's record prefix (``application/papermill.record/``)."""
    import nbformat

    data = output.get("data", {})
    for mime, value in data.items():
        bare = mime.removeprefix("application/papermill.record/")
        if bare.startswith("image/"):
            return nbformat.v4.new_output("display_data", data={bare: value})
    return None


def _tags(cell: Any) -> set[str]:
    return set(cell.metadata.get("tags", []))


def _glued(nb: Any) -> dict[str, dict[str, Any]]:
    """Every value the notebook glued: name -> its data, without papermill's record prefix."""
    found = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                found[name] = {
                    mime.removeprefix("application/papermill.record/"): value
                    for mime, value in output.get("data", {}).items()
                }
    return found


def _split(cell: Any, at: re.Match) -> tuple[Any, Any]:
    """A markdown cell cut in two at a heading: (the text before it, the rest)."""
    import copy

    before, after = copy.deepcopy(cell), copy.deepcopy(cell)
    before.source, after.source = cell.source[: at.start()], cell.source[at.start() :]
    return before, after


def _body_and_ending(nb: Any, name: str) -> tuple[list[Any], list[Any]]:
    """The chapter's cells before its "What we measured" heading, and from the heading up to
    "Exercises" (a cell that holds a heading is cut there)."""
    cells = list(nb.cells)
    found = [
        (i, m)
        for i, c in enumerate(cells)
        if c.cell_type == "markdown" and (m := _ENDING.search(c.source))
    ]
    if not found:
        raise SlidesError(f"{name}: no '## What we measured' section for the deck's last slide")
    index, match = found[0]
    before, heading = _split(cells[index], match)
    body, ending = [*cells[:index], before], [heading, *cells[index + 1 :]]
    for i, cell in enumerate(ending):
        stop = _EXERCISES.search(cell.source) if cell.cell_type == "markdown" else None
        if stop is not None:
            ending = [*ending[:i], _split(cell, stop)[0]]
            break
    return body, ending


def chapter_figures(cells: list[Any], chapter: Chapter, name: str) -> list[Figure]:
    """The figures of the chapter's body, in order: every image a shown code cell outputs
    (captioned by its ``mystnb.figure`` metadata when it has one) and every ``{glue:figure}``.
    A captioned figure is numbered like the book's (``5.2``), which fills ``chapter.figures``."""
    figures, section = [], ""
    for cell in cells:
        if cell.cell_type == "markdown":
            headings = re.findall(r"^#{2,3}\s+(.+)$", cell.source, re.M)
            section = headings[-1].strip() if headings else section
            for block in myst_blocks(cell.source):
                if block.kind != "glue:figure":
                    continue
                image = _image_output({"data": chapter.glued.get(block.argument, {})})
                if image is None:
                    raise SlidesError(f"{name}: {{glue:figure}} {block.argument} glued no image")
                label = block.options.get("name", "")
                figures.append(Figure(section, image, block.body, label))
            continue
        if cell.cell_type != "code" or _tags(cell) & HIDDEN_TAGS:
            continue
        caption = cell.metadata.get("mystnb", {}).get("figure", {}).get("caption", "")
        label = cell.metadata.get("mystnb", {}).get("figure", {}).get("name", "")
        for output in cell.get("outputs", []):
            if "scrapbook" in output.get("metadata", {}):
                continue  # glued: the page shows it where a {glue:figure} places it
            image = _image_output(output)
            if image is not None:
                figures.append(Figure(section, image, caption, label))
    count = 0
    for figure in figures:  # the book numbers captioned figures in order, per chapter
        if figure.caption:
            count += 1
            if figure.number:
                chapter.figures[figure.number] = f"{chapter.number}.{count}"
            figure.number = f"{chapter.number}.{count}"
    return figures


def _learn_list(first: str, name: str) -> str:
    """The bullets under **What you will learn** in the chapter's first cell."""
    lines = first.split("\n")
    start = next((i for i, line in enumerate(lines) if _LEARN in line), None)
    if start is None:
        raise SlidesError(f"{name}: no {_LEARN} list in the chapter's first cell")
    kept = []
    for line in lines[start + 1 :]:
        if not line.strip() or line.startswith("**"):
            break
        kept.append(line)
    return "\n".join(kept)


def _cell(kind: str, source: str, slide: str, outputs: list[Any] | None = None) -> Any:
    import nbformat

    if kind == "markdown":
        cell = nbformat.v4.new_markdown_cell(source)
    else:
        cell = nbformat.v4.new_code_cell(source, outputs=outputs or [])
    cell.metadata["slideshow"] = {"slide_type": slide}
    return cell


def _shown_outputs(cell: Any) -> list[Any]:
    """The outputs of an ending's code cell that a deck shows: tables, HTML, images (not the
    printed log, not a bare repr)."""
    shown = []
    for output in cell.get("outputs", []):
        data = output.get("data", {})
        if "scrapbook" in output.get("metadata", {}):
            continue  # a glued value: the prose quotes it
        if output.get("output_type") in ("display_data", "execute_result") and any(
            mime in data for mime in ("text/markdown", "text/html")
        ):
            kept = {m: v for m, v in data.items() if m in ("text/markdown", "text/html")}
            shown.append(_output(kept))
        elif (image := _image_output(output)) is not None:
            shown.append(image)
    return shown


def _output(data: dict[str, Any]) -> Any:
    import nbformat

    return nbformat.v4.new_output("display_data", data=data)


def deck_notebook(nb: Any, chapter: Chapter, *, book_title: str, name: str) -> Any:
    """The derived notebook of one executed chapter ``nb``: title, what you will learn, one
    slide per figure of its body, its "What we measured" ending (see the module's docstring)."""
    import nbformat

    chapter.glued = _glued(nb)
    body, ending = _body_and_ending(nb, name)
    first = body[0].source if body and body[0].cell_type == "markdown" else ""
    title = re.match(r"#\s+(.+)", first)
    if title is None:
        raise SlidesError(f"{name}: the first cell is not a '# Title'")
    page = Path(chapter.page).name + ".html"
    cells = [
        _cell(
            "markdown",
            f"# {chapter.number}. {title.group(1).strip()}\n\n"
            f"*{book_title}*, chapter {chapter.number}: slides of the chapter's figures and "
            f"findings. [Read the chapter](../{chapter.page}.html) ({page}).",
            "slide",
        ),
    ]
    figures = chapter_figures(body, chapter, name)
    learn = myst_to_markdown(_learn_list(first, name), chapter)
    cells.append(_cell("markdown", f"## What you will learn\n\n{learn}", "slide"))
    for figure in figures:
        cells.append(_cell("markdown", f"### {figure.section}", "slide"))
        caption = myst_to_markdown(figure.caption, chapter) if figure.caption else ""
        # the image's alternative text: its caption as plain text, else its section
        alt = re.sub(r"[$*\\`]|\]\([^)]*\)|\[", "", caption) or figure.section
        figure.output.metadata["alt"] = f"Fig. {figure.number}: {alt}" if caption else alt
        cells.append(_cell("code", "", "-", [figure.output]))
        if caption:
            cells.append(_cell("markdown", f"**Fig. {figure.number}.** {caption}", "-"))
    for index, cell in enumerate(ending):
        if cell.cell_type == "markdown":
            text = myst_to_markdown(cell.source, chapter)
            if text.strip():
                cells.append(_cell("markdown", text, "slide" if index == 0 else "subslide"))
        elif cell.cell_type == "code" and not _tags(cell) & HIDDEN_TAGS:
            shown = _shown_outputs(cell)
            if shown:
                cells.append(_cell("code", "", "-", shown))
    deck = nbformat.v4.new_notebook(cells=cells)
    deck.metadata["title"] = f"{chapter.number}. {title.group(1).strip()}"
    for key in ("kernelspec", "language_info"):  # the code's language, for nbconvert
        if key in nb.metadata:
            deck.metadata[key] = nb.metadata[key]
    return deck


# --------------------------------------------------------------------------- exporting


#: nbconvert's reveal template without its CDN scripts: reveal.js, its theme and MathJax come
#: from slides/_assets/ (:data:`REVEAL_ASSETS`); jQuery, require.js and mermaid are not loaded.
_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mathjax -%}
<script>
window.MathJax = {
  tex: {
    inlineMath: [["$", "$"], ["\\(", "\\)"]],
    displayMath: [["$$", "$$"], ["\\[", "\\]"]],
    processEscapes: true
  },
  options: {enableMenu: false},
  svg: {fontCache: "global"}
};
</script>
<script src="ASSETS/mathjax/tex-svg.js"></script>
{%- endblock html_head_js_mathjax -%}
{% block data_png scoped %}
<div class="jp-RenderedImage jp-OutputArea-output">
<img src="data:image/png;base64,{{ output.data['image/png'] | escape_html }}"
alt="{{ output.metadata.get('alt', 'a figure of the chapter') | escape_html }}">
</div>
{% endblock data_png %}
{%- block html_head_css -%}
<style type="text/css">
.reveal .slides { text-align: left; }
.reveal .slides section { height: 100%; overflow-y: auto; box-sizing: border-box; }
.reveal .jp-RenderedMarkdown, .reveal .jp-OutputArea-output { overflow: visible; }
.reveal h1 { font-size: 1.9em; }
.reveal h2 { font-size: 1.4em; }
.reveal h3 { font-size: 1.1em; }
.reveal .jp-OutputArea-output img { max-height: 520px; max-width: 100%; margin: 0 auto;
  display: block; border: 0; box-shadow: none; }
.reveal .jp-CodeCell + .jp-MarkdownCell { font-size: 0.6em; line-height: 1.3; }
.reveal table { font-size: 0.62em; margin: 0; }
.reveal blockquote { width: 95%; font-style: normal; font-size: 0.8em; }
.reveal ul { display: block; }
</style>
{%- endblock html_head_css -%}
{% block footer_js %}
<script src="ASSETS/reveal.js/dist/reveal.js"></script>
<script>
Reveal.initialize({
  hash: true,
  center: false,
  controls: true,
  progress: true,
  slideNumber: "c/t",
  transition: "none",
  width: 1280,
  height: 760,
  margin: 0.03
});
</script>
{% endblock footer_js %}
""".replace("ASSETS", ASSETS)


def _exporter() -> Any:
    """nbconvert's SlidesExporter with :data:`_TEMPLATE` and the local reveal.js."""
    import jinja2
    from nbconvert import SlidesExporter

    return SlidesExporter(
        extra_loaders=[jinja2.DictLoader({"interpddpm_slides.html.j2": _TEMPLATE})],
        template_file="interpddpm_slides.html.j2",
        reveal_url_prefix=f"{ASSETS}/reveal.js",
        reveal_theme="white",
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )


def asset_source(distribution: str, relative: str) -> Path:
    """A file or folder that an installed package ships (``pip install -e '.[book]'``)."""
    try:
        path = Path(str(metadata.distribution(distribution).locate_file(relative)))
    except metadata.PackageNotFoundError:
        raise SlidesError(
            f"{distribution} is not installed; the slides take their offline assets from it: "
            "pip install -e '.[book]'"
        ) from None
    if not path.exists():
        raise SlidesError(f"{distribution} has no {relative}: install the version pyproject names")
    return path


def copy_assets(folder: Path) -> Path:
    """Copy reveal.js and MathJax into ``folder/_assets``; returns that folder."""
    target = folder / ASSETS
    for distribution, relative in REVEAL_ASSETS:
        inside, name = PACKAGE_FOLDERS[distribution]
        source = asset_source(distribution, f"{inside}/{relative}")
        destination = target / name / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination, dirs_exist_ok=True)
        else:
            shutil.copy2(source, destination)
    return target


#: An element that makes a browser fetch its ``src``/``href`` (a script, a stylesheet, an
#: image, a frame, a font), and a stylesheet's ``@import`` or ``url(...)``.
_FETCHED = re.compile(
    r"""<(?:script|link|img|iframe|source|video|audio|embed|object)\b[^>]*?"""
    r"""\b(?:src|href|data)\s*=\s*["']?([^"'\s>]+)""",
    re.I,
)
_CSS_URL = re.compile(r"""(?:@import\s+(?!url\()|url\()\s*["']?([^"')\s;]+)""", re.I)
_NETWORK = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.I)  # http://, https://, //host


def remote_references(text: str) -> list[str]:
    """The network URLs that an HTML page or a stylesheet makes a browser fetch (a script, a
    stylesheet, an image, ``@import``, ``url(...)``); empty for a deck that works offline. A
    link (``<a href>``) fetches nothing until followed, and is not one."""
    found = [m.group(1) for m in (*_FETCHED.finditer(text), *_CSS_URL.finditer(text))]
    return [url for url in found if _NETWORK.match(url)]


def _index(decks: list[tuple[str, Path]], book_title: str) -> str:
    """The slides' index page: one link per deck."""
    items = "\n".join(
        f'<li><a href="{html.escape(path.name)}">{html.escape(title)}</a></li>'
        for title, path in decks
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8" />\n'
        f"<title>Slides: {html.escape(book_title)}</title>\n"
        "<style>body { font-family: sans-serif; max-width: 40em; margin: 2em auto; }</style>\n"
        f"</head>\n<body>\n<h1>Slides: {html.escape(book_title)}</h1>\n"
        "<p>One deck per chapter (reveal.js, works offline): arrow keys to move, "
        '<kbd>Esc</kbd> for the overview. <a href="../index.html">Back to the book</a>.</p>\n'
        f"<ol>\n{items}\n</ol>\n</body>\n</html>\n"
    )


def write_decks(staged: Path, html_dir: Path) -> list[Path]:
    """Write one deck per chapter of the staged book ``staged`` (executed notebooks, its
    ``_toc.yml`` and ``_config.yml``) into ``html_dir/slides``, with reveal.js and MathJax
    beside them and an ``index.html``; returns the decks' paths.

    Raises :class:`SlidesError` when a chapter lacks a part of the deck or a deck would load
    anything from the network.
    """
    import nbformat
    import yaml

    from .book import toc_notebooks

    folder = html_dir / SLIDES
    folder.mkdir(parents=True, exist_ok=True)
    copy_assets(folder)
    config = yaml.safe_load((staged / "_config.yml").read_text(encoding="utf-8"))
    book_title = str(config.get("title", "The book"))
    exporter, decks = _exporter(), []
    for number, rel in enumerate(toc_notebooks(staged), start=1):
        nb = nbformat.read(staged / rel, as_version=4)
        chapter = Chapter(number=number, page=rel.with_suffix("").as_posix())
        deck = deck_notebook(nb, chapter, book_title=book_title, name=rel.as_posix())
        body, _ = exporter.from_notebook_node(deck, resources={"metadata": {"name": rel.stem}})
        remote = remote_references(body)
        if remote:
            raise SlidesError(f"{rel.as_posix()}: the deck loads {remote[0]}: decks work offline")
        path = folder / (rel.stem + SUFFIX)
        path.write_text(body, encoding="utf-8")
        decks.append((deck.metadata["title"], path))
    (folder / "index.html").write_text(_index(decks, book_title), encoding="utf-8")
    print(f"Slides: {len(decks)} decks in {folder}", flush=True)
    return [path for _, path in decks]
