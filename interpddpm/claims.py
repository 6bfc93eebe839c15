"""Claims a chapter's prose makes about its own run, tied to the numbers that decide them.

A sentence such as "the interpretable model is less local" is true or false depending on the
run. The book writes such sentences in one of two ways:

- :func:`say` states both outcomes: the chapter glues the sentence its run makes true
  (``{glue:text}`name``` in the prose), so the page follows its outputs on every profile;
  :func:`say_case` does the same for more than two outcomes, such as the ones
  :func:`compare` tells apart (less, comparable, more, and the honest cases of zeros: neither
  changed, only one did);
- :func:`expect` records a claim that the prose makes whatever the run (a model answer, a
  caption): the Markdown marks the sentence with a MyST comment line ``% claim: name`` and the
  executed notebook carries the condition.

Both record the claim in the executed notebook as a hidden glue output named
``claim__<name>`` (a JSON string: the claim, whether it held, the evidence and the profile).
:func:`failed_claims` reads an executed notebook and lists the claims whose condition was false;
:func:`interpddpm.book.execute` stops the book on the first chapter that has one (a
``FalseClaimError`` of one line naming the chapter, the claim and its evidence),
``tests/test_claims.py`` fails on them (and checks that every ``expect`` has its marker in the
prose and every marker its ``expect``), and ``python -m interpddpm.claims NOTEBOOK ...`` prints
them.

Serves every chapter whose prose states a result of its own run (chapters 5, 8, 9, 10, 11, 12).
"""

from __future__ import annotations

import ast
import json
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["RECORD_PREFIX", "compare", "expect", "failed_claims", "records", "say", "say_case"]

#: Glue name prefix of a claim's record (a colon would clash with glue's format syntax).
RECORD_PREFIX = "claim__"
#: Where an ``expect`` claim is marked in the prose: a MyST comment line.
MARKER = re.compile(r"^\s*%\s*claim:\s*([A-Za-z0-9_]+)\s*$", re.M)
#: ``say("name"``, ``say_case("name"`` or ``expect("name"`` in a code cell.
CALL = re.compile(r"\b(say|say_case|expect)\(\s*[\"']([A-Za-z0-9_]+)[\"']")
#: What :func:`compare` answers.
OUTCOMES = ("neither", "only_a", "only_b", "less", "comparable", "more")
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
#: Profiles whose models are too small to carry a qualitative claim: the smoke profile trains
#: tiny models for a few steps so that every chapter runs in seconds (`make test`); which of
#: two such models is "more local" is noise, and its book proves that the code runs, not what
#: the method does. Its claims are still recorded; the cpu, gpu and paper books are held to them.
UNCHECKED_PROFILES = ("smoke",)


def _record(name: str, holds: bool, claim: str, evidence: str, kind: str, profile: str) -> None:
    from myst_nb import glue

    if not _NAME.match(name):
        raise ValueError(f"claim name {name!r}: use letters, digits and underscores only")
    record = {
        "claim": claim,
        "holds": bool(holds),
        "evidence": evidence,
        "kind": kind,
        "profile": profile,
    }
    glue(RECORD_PREFIX + name, json.dumps(record), display=False)


def say(
    name: str,
    holds: bool,
    if_true: str,
    if_false: str,
    *,
    evidence: str = "",
    profile: str = "",
) -> str:
    """Glue under ``name`` the sentence (or phrase) that the run makes true, and record it.

    Args:
        name: the glue name the prose uses (``{glue:text}`name```).
        holds: the condition, computed from the chapter's outputs.
        if_true: the text when it holds; ``if_false``: the text when it does not.
        evidence: the numbers that decide it (``"outside 500 vs 487"``), kept in the record.
        profile: the profile the chapter ran with (kept in the record).
    Returns:
        The text glued.
    """
    from myst_nb import glue

    text = if_true if holds else if_false
    glue(name, text, display=False)
    _record(name, holds, if_true, evidence, "say", profile)
    return text


def compare(a: float, b: float, *, factor: float = 2.0, zero: float = 0.0) -> str:
    """How a non-negative quantity ``a`` compares with ``b`` (say the change one model's edit
    makes against another's), one of :data:`OUTCOMES`:

    - ``"neither"``: both are at most ``zero`` (a ratio of two zeros says nothing, so no
      "comparably");
    - ``"only_a"`` / ``"only_b"``: one of them is at most ``zero``, the other is not;
    - ``"less"``: ``a < b / factor``; ``"more"``: ``a > factor * b``;
    - ``"comparable"``: within a factor ``factor`` of each other.
    """
    import math

    if math.isnan(a) or math.isnan(b):
        raise ValueError(f"compare({a}, {b}): a value is NaN; compare measured numbers")
    if factor < 1:
        raise ValueError(f"factor must be at least 1, got {factor}")
    if a <= zero and b <= zero:
        return "neither"
    if b <= zero:
        return "only_a"
    if a <= zero:
        return "only_b"
    if a < b / factor:
        return "less"
    if a > factor * b:
        return "more"
    return "comparable"


def say_case(
    name: str, case: str, texts: dict[str, str], *, evidence: str = "", profile: str = ""
) -> str:
    """Glue under ``name`` the text of the outcome ``case`` (one key of ``texts``, for example
    an outcome of :func:`compare`), and record it like :func:`say`; returns the text.

    Every outcome the run can reach needs its text: a ``case`` missing from ``texts`` raises
    :class:`KeyError` naming the cases that have one.
    """
    from myst_nb import glue

    if case not in texts:
        raise KeyError(f"claim {name!r}: no text for the case {case!r} (have: {sorted(texts)})")
    glue(name, texts[case], display=False)
    _record(name, True, texts[case], evidence, "say", profile)
    return texts[case]


def expect(name: str, holds: bool, claim: str, *, evidence: str = "", profile: str = "") -> bool:
    """Record a claim the prose makes whatever the run; returns ``holds``.

    The Markdown marks the sentence with ``% claim: name``; ``tests/test_claims.py`` fails when
    an executed chapter (on a profile other than ``smoke``) recorded ``holds`` false.
    """
    _record(name, holds, claim, evidence, "expect", profile)
    return bool(holds)


def _glue_value(output: dict[str, Any]) -> str | None:
    data = output.get("data", {})
    for key, value in data.items():
        if key.endswith("text/plain"):
            text = "".join(value) if isinstance(value, list) else value
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return None
    return None


def records(notebook: Path | str | Any) -> dict[str, dict[str, Any]]:
    """Every claim recorded in an executed notebook (a path or an ``nbformat`` node): name ->
    record (``claim``, ``holds``, ``evidence``, ``kind``, ``profile``)."""
    import nbformat

    nb = notebook if hasattr(notebook, "cells") else nbformat.read(notebook, as_version=4)
    found = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            name = output.get("metadata", {}).get("scrapbook", {}).get("name", "")
            if name.startswith(RECORD_PREFIX):
                value = _glue_value(output)
                if value is not None:
                    found[name[len(RECORD_PREFIX) :]] = json.loads(value)
    return found


def failed_claims(notebook: Path | str | Any) -> list[str]:
    """The claims of an executed notebook that its outputs contradict, one line each (empty
    when every claim holds). ``say`` claims never fail (their text follows the condition);
    ``expect`` claims fail when their condition was false, except on the profiles listed in
    :data:`UNCHECKED_PROFILES`."""
    failed = []
    for name, rec in records(notebook).items():
        if rec["kind"] == "expect" and not rec["holds"]:
            if rec.get("profile") in UNCHECKED_PROFILES:
                continue
            evidence = f" (evidence: {rec['evidence']})" if rec.get("evidence") else ""
            failed.append(
                f"claim {name!r} is false in this run: the prose says {rec['claim']!r}"
                f"{evidence}; rewrite the sentence with claims.say or fix the cause"
            )
    return failed


def markers(markdown: Iterable[str]) -> set[str]:
    """The ``% claim: name`` markers of some Markdown sources."""
    return {m.group(1) for source in markdown for m in MARKER.finditer(source)}


def calls(code: Iterable[str]) -> dict[str, str]:
    """The claims that code cells make: name -> ``"say"`` (``say`` and ``say_case``) or
    ``"expect"``."""
    return {
        m.group(2): "expect" if m.group(1) == "expect" else "say"
        for source in code
        for m in CALL.finditer(source)
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m interpddpm.claims NOTEBOOK ...``: print the false claims of executed
    notebooks; exit status 1 when there is one."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m interpddpm.claims EXECUTED_NOTEBOOK ...", file=sys.stderr)
        return 2
    status = 0
    for path in paths:
        for line in failed_claims(path):
            print(f"{path}: {line}")
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
