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
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from interpddpm import book

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
