"""Claims that follow their outputs (interpddpm.claims).

- every ``claims.expect("name", ...)`` of a chapter has its sentence marked ``% claim: name`` in
  the prose, every marker has its ``expect``, and every ``claims.say("name", ...)`` is glued
  into the prose;
- the checker reports a false ``expect`` claim of an executed notebook, naming it and its
  evidence;
- an executed book (``_build/staged``, left by ``make book``, any profile but smoke) has no
  false claim: a sentence whose condition the run contradicts fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from interpddpm import book, claims

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = book.toc_notebooks(ROOT)
DOCUMENTS = book.toc_documents(ROOT)
STAGED = book.staging_dir(ROOT)  # the executed copy `make book` leaves behind


def _sources(notebook: Path, kind: str) -> list[str]:
    cells = nbformat.read(ROOT / notebook, as_version=4).cells
    return [c.source for c in cells if c.cell_type == kind]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_claims_are_tied_to_their_sentences(notebook: Path) -> None:
    markdown = _sources(notebook, "markdown")
    made = claims.calls(_sources(notebook, "code"))
    marked = claims.markers(markdown)
    expected = {n for n, kind in made.items() if kind == "expect"}
    assert expected <= marked, (
        f"{notebook}: mark the sentence of each expect() claim with '% claim: NAME' in the "
        f"prose: {sorted(expected - marked)}"
    )
    assert marked <= expected, (
        f"{notebook}: '% claim:' markers without a claims.expect(NAME, ...) that checks them: "
        f"{sorted(marked - expected)}"
    )
    glued = {m for s in markdown for m in re.findall(r"\{glue:text\}`([A-Za-z0-9_]+)", s)}
    said = {n for n, kind in made.items() if kind == "say"}
    assert said <= glued, f"{notebook}: claims.say() text never shown: {sorted(said - glued)}"


def _executed(cells: list[tuple[str, bool]], profile: str = "cpu") -> nbformat.NotebookNode:
    """A notebook whose one code cell recorded the claims ``(name, holds)`` like a kernel
    would (the outputs that myst_nb.glue displays, captured)."""
    outputs = []

    def capture(data, raw=False, metadata=None):
        outputs.append(nbformat.v4.new_output("display_data", data=data, metadata=metadata or {}))

    import myst_nb.ext.glue as glue_module

    saved = glue_module.ipy_display
    glue_module.ipy_display = capture
    try:
        for name, holds in cells:
            claims.expect(name, holds, f"{name} says so", evidence="3 vs 4", profile=profile)
        claims.say("both", False, "it is local", "it is not local", profile=profile)
    finally:
        glue_module.ipy_display = saved
    cell = nbformat.v4.new_code_cell("...")
    cell.outputs = outputs
    return nbformat.v4.new_notebook(cells=[cell])


def test_a_false_claim_is_reported() -> None:
    nb = _executed([("less_local", False), ("finer", True)])
    found = claims.records(nb)
    assert set(found) == {"less_local", "finer", "both"}
    assert found["both"]["holds"] is False and found["both"]["kind"] == "say"
    failed = claims.failed_claims(nb)
    assert len(failed) == 1, failed
    assert "'less_local'" in failed[0] and "3 vs 4" in failed[0]
    assert claims.failed_claims(_executed([("x", True)])) == []


def test_smoke_runs_are_not_held_to_their_claims() -> None:
    assert claims.failed_claims(_executed([("less_local", False)], profile="smoke")) == []


def test_claim_names_are_checked() -> None:
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        claims.expect("bad:name", True, "x")


def test_compare_is_honest_about_zeros_and_ties() -> None:
    assert claims.compare(0.0, 0.0) == "neither"  # not "comparably": nothing changed
    assert claims.compare(1e-9, 0.0, zero=1e-6) == "neither"
    assert claims.compare(3.0, 0.0) == "only_a" and claims.compare(0.0, 3.0) == "only_b"
    assert claims.compare(73.0, 287.0) == "less" and claims.compare(287.0, 73.0) == "more"
    assert claims.compare(5.0, 5.0) == "comparable" == claims.compare(100.0, 199.0)
    with pytest.raises(ValueError, match="NaN"):
        claims.compare(float("nan"), 1.0)


def test_say_case_glues_the_case_that_holds() -> None:
    outputs = []

    def capture(data, raw=False, metadata=None):
        outputs.append((data, metadata))

    import myst_nb.ext.glue as glue_module

    saved = glue_module.ipy_display
    glue_module.ipy_display = capture
    try:
        texts = {"neither": "neither changes it", "comparable": "both change it alike"}
        assert claims.say_case("edit", claims.compare(0, 0), texts) == "neither changes it"
        with pytest.raises(KeyError, match="'less'.*have"):
            claims.say_case("edit", "less", texts)
    finally:
        glue_module.ipy_display = saved
    shown = [v for d, _ in outputs for k, v in d.items() if k.endswith("text/plain")]
    assert "'neither changes it'" in shown


def test_markers_and_calls_are_parsed() -> None:
    assert claims.markers(["Text.\n% claim: less_local\nMore."]) == {"less_local"}
    code = 'claims.expect("a", x < y, "...")\nsay(\n    "b", True, "p", "q")'
    code += '\nclaims.say_case("c", case, texts)'
    assert claims.calls([code]) == {"a": "expect", "b": "say", "c": "say"}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_executed_book_has_no_false_claim(notebook: Path) -> None:
    """The chapters this checkout's `make book` staged keep their claims. Where none are staged
    (CI, whose smoke book goes to a temporary folder) it skips, and loses nothing: `make book`
    itself stops on a false claim (book.FalseClaimError, every profile but smoke; tested by
    tests/test_book.py::test_a_false_claim_stops_the_book)."""
    executed = STAGED / notebook
    if not executed.is_file():
        pytest.skip(
            f"{executed.relative_to(ROOT)} is not staged: no `make book` executed it in this "
            "checkout (make book stops on a false claim itself: book.FalseClaimError)"
        )
    failed = claims.failed_claims(executed)
    assert not failed, f"{notebook}:\n  " + "\n  ".join(failed)
