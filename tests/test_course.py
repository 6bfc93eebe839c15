"""The book as a course: every chapter states what it assumes, ends with a takeaway box and
with exercises at three levels whose solutions are collapsed, and whose runnable solutions
check their answer (they run, like the chapter, under nbval in the smoke profile).

The conventions, for a chapter N:

- the first cell holds ``**What you will learn**`` and ``**Assumes:**`` (what the reader needs,
  which chapters' trained models it loads);
- the ``What we measured`` section holds a ``:::{admonition} Takeaway`` box;
- the last section is ``## Exercises``, made of ``### Exercise N.k (level)`` cells, k = 1, 2, ...,
  level one of ``warm-up``, ``hands-on``, ``open-ended`` (each at least once);
- every exercise has a ``:::{admonition} Solution`` with ``:class: dropdown``, or code cells
  tagged ``solution`` and ``hide-cell`` (collapsed on the page) that ``assert`` their answer;
  a hands-on exercise has such a code cell.

The student edition (``make book EDITION=student``) is the book with no solution in it: the
tests below check :func:`interpddpm.book.strip_solutions` on a synthetic notebook and on every
chapter (no solution left, the exercise statements kept, every other cell unchanged), and that
``EDITION=student`` reaches it through ``make`` and the CLI.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from interpddpm import book, cli

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = book.toc_notebooks(ROOT)
LEVELS = ("warm-up", "hands-on", "open-ended")
HEADING = re.compile(r"^### Exercise (\d+)\.(\d+) \(([a-z-]+)\)\s*$", re.M)
#: Characters of code a 1200 px page shows in a code cell without cutting it off.
CODE_WIDTH = 72


def _cells(notebook: Path) -> list:
    return nbformat.read(ROOT / notebook, as_version=4).cells


def _exercises(cells: list) -> list[tuple[re.Match, list]]:
    """Each exercise heading with the cells up to the next heading."""
    starts = [
        i for i, c in enumerate(cells) if c.cell_type == "markdown" and HEADING.search(c.source)
    ]
    ends = starts[1:] + [len(cells)]
    return [
        (HEADING.search(cells[i].source), cells[i:j]) for i, j in zip(starts, ends, strict=True)
    ]


def _is_solution_code(cell) -> bool:
    tags = set(cell.metadata.get("tags", []))
    return cell.cell_type == "code" and {"solution", "hide-cell"} <= tags


def _has_dropdown_solution(cells: list) -> bool:
    return any(
        c.cell_type == "markdown"
        and re.search(r"^:{3,}\{admonition\}\s*Solution", c.source, re.M)
        and ":class: dropdown" in c.source
        for c in cells
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_states_what_it_teaches_and_assumes(notebook: Path) -> None:
    first = _cells(notebook)[0].source
    assert "**What you will learn**" in first, f"{notebook}: list what the reader will learn"
    assert "**Assumes:**" in first, f"{notebook}: say what the chapter assumes (**Assumes:** ...)"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_has_a_takeaway_box(notebook: Path) -> None:
    cells = _cells(notebook)
    heads = [
        i
        for i, c in enumerate(cells)
        if c.cell_type == "markdown" and re.search(r"^## What (we|was) measured", c.source, re.M)
    ]
    assert heads, f"{notebook}: no '## What we measured' section"
    boxes = [
        c
        for c in cells[heads[-1] :]
        if c.cell_type == "markdown" and re.search(r"^:{3,}\{admonition\} Takeaway", c.source, re.M)
    ]
    assert len(boxes) == 1, f"{notebook}: one ':::{{admonition}} Takeaway' box in What we measured"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_ends_with_exercises(notebook: Path) -> None:
    cells = _cells(notebook)
    chapter = int(notebook.stem[:2])
    sections = [
        (i, c.source)
        for i, c in enumerate(cells)
        if c.cell_type == "markdown" and re.search(r"^## ", c.source, re.M)
    ]
    assert sections and sections[-1][1].lstrip().startswith("## Exercises"), (
        f"{notebook}: the last section must be '## Exercises'"
    )
    exercises = _exercises(cells)
    assert len(exercises) >= 3, f"{notebook}: {len(exercises)} exercises, at least 3 wanted"
    first_exercise = next(i for i, c in enumerate(cells) if c is exercises[0][1][0])
    assert first_exercise >= sections[-1][0], f"{notebook}: exercises before '## Exercises'"
    numbers = [(int(m.group(1)), int(m.group(2))) for m, _ in exercises]
    assert numbers == [(chapter, k) for k in range(1, len(numbers) + 1)], (
        f"{notebook}: number the exercises {chapter}.1, {chapter}.2, ... (found {numbers})"
    )
    levels = [m.group(3) for m, _ in exercises]
    assert set(levels) <= set(LEVELS), f"{notebook}: levels {levels}, allowed {LEVELS}"
    assert set(levels) == set(LEVELS), f"{notebook}: one exercise of each level {LEVELS}"
    for match, group in exercises:
        name = f"{notebook}: exercise {match.group(1)}.{match.group(2)}"
        code = [c for c in group if c.cell_type == "code"]
        assert all(_is_solution_code(c) for c in code), (
            f"{name}: tag its code cells 'solution' and 'hide-cell' (collapsed solutions)"
        )
        assert _has_dropdown_solution(group) or code, f"{name}: no solution"
        for cell in code:
            assert re.search(r"^\s*assert\b", cell.source, re.M), (
                f"{name}: a solution cell must assert its answer, so that nbval checks it"
            )
        if match.group(3) == "hands-on":
            assert code, f"{name}: a hands-on exercise has a runnable solution (a code cell)"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_fits_the_page(notebook: Path) -> None:
    """Code cells wrap to the width a 1200 px page shows (notebooks/ruff.toml formats them)."""
    long = [
        line.strip()[:60]
        for cell in _cells(notebook)
        if cell.cell_type == "code"
        for line in cell.source.splitlines()
        if len(line) > CODE_WIDTH
    ]
    assert not long, f"{notebook}: code lines over {CODE_WIDTH} characters: {long}"


# --------------------------------------------------------------------------- the student edition


#: An answer: a Solution admonition, or the Explanation that follows a solution's output.
ANSWER = re.compile(r"^:{3,}\{admonition\}\s*(Solution|Explanation)\b", re.M)


def _solution_free(cells: list) -> bool:
    return not any(
        (c.cell_type == "markdown" and ANSWER.search(c.source))
        or "solution" in c.metadata.get("tags", [])
        for c in cells
    )


def _toy_notebook(*cells) -> nbformat.NotebookNode:
    made = []
    for kind, source, tags in cells:
        cell = (nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell)(
            source
        )
        if tags:
            cell.metadata["tags"] = list(tags)
        made.append(cell)
    return nbformat.v4.new_notebook(cells=made)


def test_strip_solutions_on_a_synthetic_notebook() -> None:
    nb = _toy_notebook(
        ("md", "# Title", ()),
        ("code", "x = 1", ()),
        ("md", "## Exercises", ()),
        (
            "md",
            "### Exercise 1.1 (warm-up)\n\nWhat is x?\n\n:::{admonition} Solution\n"
            ":class: dropdown\nOne.\n:::\n",
            (),
        ),
        ("md", "### Exercise 1.2 (hands-on)\n\nCompute y.", ()),
        ("md", "::::{admonition} Solution\n:::{note}\nnested\n:::\nstill the solution\n::::", ()),
        ("code", "y = x + 1\nassert y == 2", ("solution", "hide-cell")),
        ("code", "assert y > 1", ("solution", "hide-cell")),
        ("md", ":::{admonition} Explanation\n:class: dropdown\nWhy.\n:::", ()),
        ("md", "### Exercise 1.3 (open-ended)\n\nThink.\n\n:::{admonition} Solution\n:::", ()),
    )
    student = book.strip_solutions(nb, "toy")
    sources = [c.source for c in student.cells]
    assert sources == [
        "# Title",
        "x = 1",
        "## Exercises",
        "### Exercise 1.1 (warm-up)\n\nWhat is x?",
        "### Exercise 1.2 (hands-on)\n\nCompute y.",
        "# Exercise 1.2: your code here",  # one stub for the exercise's two solution cells
        "### Exercise 1.3 (open-ended)\n\nThink.",
    ]
    assert student.cells[5].metadata["tags"] == [book.STUB_TAG]
    assert len(nb.cells) == 10, "the original is left as it was"
    # an unclosed solution is an error that names the cell, not a silently eaten chapter
    broken = _toy_notebook(("md", "### Exercise 1.1 (warm-up)\n:::{admonition} Solution\nA", ()))
    with pytest.raises(ValueError, match="toy, cell 0.*never closed"):
        book.strip_solutions(broken, "toy")


def test_a_kept_cell_that_needs_a_solution_fails_clearly() -> None:
    nb = _toy_notebook(
        ("md", "### Exercise 1.1 (hands-on)", ()),
        ("code", "answer = 42\nassert answer", ("solution", "hide-cell")),
        ("code", "print(answer)", ()),
    )
    with pytest.raises(book.SolutionDependencyError, match="toy, cell 2 uses answer.*cell 1"):
        book.strip_solutions(nb, "toy")
    # a name the kept cells bind again is not a dependency on the solution
    nb.cells[2].source = "answer = 0\nprint(answer)"
    assert book.strip_solutions(nb, "toy").cells[-1].source == "answer = 0\nprint(answer)"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_edition_of_each_chapter(notebook: Path) -> None:
    """No solution left; each exercise statement kept (up to its solution); every cell that is
    not a solution kept unchanged, in order; one stub per exercise that had solution code."""
    cells = _cells(notebook)
    student = book.strip_solutions(nbformat.read(ROOT / notebook, as_version=4), str(notebook))
    assert _solution_free(student.cells), f"{notebook}: a solution survived"
    kept = [c for c in student.cells if book.STUB_TAG not in c.metadata.get("tags", [])]
    solution_md = [c for c in cells if c.cell_type == "markdown" and ANSWER.search(c.source)]
    others = [
        c for c in cells if c not in solution_md and "solution" not in c.metadata.get("tags", [])
    ]
    statements = [c for c in solution_md if not c.source.lstrip().startswith(":")]
    assert len(kept) == len(others) + len(statements), f"{notebook}: cells lost or added"
    rest = iter(kept)
    for cell in cells:
        if cell in others:
            assert next(rest) == cell, f"{notebook}: a cell changed: {cell.source[:60]!r}"
        elif cell in statements:
            text = next(rest).source
            before = cell.source[: ANSWER.search(cell.source).start()].rstrip()
            assert text == before, f"{notebook}: exercise statement changed: {text[:60]!r}"
    stubs = [c.source for c in student.cells if book.STUB_TAG in c.metadata.get("tags", [])]
    with_code = [
        m.group(1) + "." + m.group(2)
        for m, g in _exercises(cells)
        if any(_is_solution_code(c) for c in g)
    ]
    assert stubs == [f"# Exercise {n}: your code here" for n in with_code], notebook
    nbformat.validate(student)


def test_solutions_in_html_are_found(tmp_path: Path) -> None:
    (tmp_path / "a.html").write_text('<div class="admonition admonition-solution dropdown">')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.html").write_text('<div class="cell tag_hide-cell tag_solution">')
    (tmp_path / "c.html").write_text('<div class="cell tag_exercise-stub">Solution</div>')
    (tmp_path / "d.html").write_text('<div class="admonition-explanation dropdown admonition">')
    (tmp_path / "e.html").write_text('<div class="admonition admonition-solutions-elsewhere">')
    # a dropdown admonition has no admonition-<title> class: its title says what it is
    (tmp_path / "f.html").write_text('<p class="admonition-title">Solution</p>')
    (tmp_path / "g.html").write_text('<p class="collapsed admonition-title">Show code</p>')
    assert book.solutions_in_html(tmp_path) == [
        "a.html: admonition-solution",
        "d.html: admonition-explanation",
        "f.html: an admonition titled 'Solution'",
        "sub/b.html: tag_solution",
    ]


def test_student_config_has_no_launch_button() -> None:
    import yaml

    config = yaml.safe_load(book._student_config((ROOT / "_config.yml").read_text()))
    assert "launch_buttons" not in config and config["title"].endswith("(student edition)")
    assert config["execute"] == {"execute_notebooks": "off"}


def test_edition_reaches_the_build(monkeypatch, tmp_path: Path) -> None:
    """``make book EDITION=student`` passes ``--edition student`` to the CLI, which passes it to
    :func:`interpddpm.book.build`; the default is the teacher edition."""
    make = shutil.which("make")
    if make is not None:
        for edition, args in (("student", ["EDITION=student"]), ("teacher", [])):
            dry = subprocess.run(
                [make, "-n", "book", "PY=python", "STAMP=", *args],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            assert f"--edition {edition}" in dry, dry
    with pytest.raises(ValueError, match="edition 'pupil'"):
        book.build(root=ROOT, out=tmp_path, edition="pupil")
    calls = []
    monkeypatch.setattr(book, "execute", lambda *a, **k: calls.append(("execute", k)))
    monkeypatch.setattr(book, "build", lambda **k: calls.append(("build", k["edition"])))
    for extra, edition in (([], "teacher"), (["--edition", "student"], "student")):
        calls.clear()
        argv = ["book", "--profile", "smoke", "--root", str(ROOT), "--out", str(tmp_path)]
        assert cli.main(argv + extra) == 0
        assert calls[-1] == ("build", edition)
    assert cli.main(["book", "--edition", "pupil"]) == 2  # a usage error, one line
