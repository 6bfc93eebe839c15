"""The times the book and the README state follow the recorded cold build.

``book/data/book-time-cpu.json`` records one cold ``make book`` on the ``cpu`` profile (a fresh
clone on an idle 2-core machine): the install, each chapter's seconds and threads, the render.
The "Running this book" page and the README state these times in prose and tables; a number
typed there that the record does not support fails here (re-measure, record, then edit the
page: the table rows are the record's numbers, rounded by :func:`shown`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "book" / "data" / "book-time-cpu.json"
PAGE = ROOT / "book" / "running.md"
BASELINE_METRICS = next((ROOT / "book" / "data" / "runs-cpu" / "runs").glob("baseline-*"))


def shown(seconds: float) -> str:
    """How the page writes a duration: whole seconds under a minute, else minutes to 0.1."""
    return f"{seconds:.0f} s" if seconds < 59.5 else f"{seconds / 60:.1f} min"


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(RECORD.read_text())


def _rows() -> list[tuple[str, str]]:
    rows = []
    for line in PAGE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 2 and not set(cells[1]) <= set("-: "):
            rows.append((cells[0], cells[1]))
    return rows


def test_record_is_one_whole_cold_build(record: dict) -> None:
    chapters = record["chapters"]
    assert record["profile"] == "cpu" and record["cold"] is True
    assert len(chapters) == 12, sorted(chapters)
    executed = sum(c["seconds"] for c in chapters.values())
    assert record["execute_s"] == pytest.approx(executed, abs=0.5)
    total = record["install_s"] + record["execute_s"] + record["render_s"]
    assert record["total_s"] == pytest.approx(total, abs=1.0)
    assert all(c["threads"] for c in chapters.values()), "each chapter's thread choice"


def test_page_states_each_chapter_as_recorded(record: dict) -> None:
    stated = {}
    for what, time in _rows():
        numbers = re.findall(r"notebooks/(\d\d)_", what)
        if len(numbers) == 1:
            stated[numbers[0]] = time
    recorded = {Path(nb).name[:2]: c["seconds"] for nb, c in record["chapters"].items()}
    assert set(stated) == set(recorded), "one row per chapter on the page"
    for number, seconds in recorded.items():
        assert stated[number] == shown(seconds), (
            f"chapter {number}: the page says {stated[number]!r}, the record "
            f"{seconds:.1f} s ({shown(seconds)!r})"
        )


def test_page_and_readme_state_the_totals_as_recorded(record: dict) -> None:
    rows = dict(_rows())
    install = next(t for w, t in rows.items() if w.startswith("installing"))
    assert install == shown(record["install_s"])
    render = next(t for w, t in rows.items() if w.startswith("rendering"))
    assert render == shown(record["render_s"])
    whole = next(t for w, t in rows.items() if w.startswith("the whole book"))
    assert whole == shown(record["total_s"])
    minutes = round(record["total_s"] / 60)
    readme = (ROOT / "README.md").read_text()
    said = re.search(r"a cold `make book`.{0,120}?took (\d+)\s+minutes", readme, re.S)
    assert said, "the README states the cold build's time"
    assert int(said.group(1)) == minutes, f"README: {said.group(1)} min, record {minutes} min"


def test_retraining_time_is_the_recorded_runs(record: dict) -> None:
    last = json.loads((BASELINE_METRICS / "metrics.jsonl").read_text().splitlines()[-1])
    minutes = last["seconds"] / 60
    rows = dict(_rows())
    retrain = next(t for w, t in rows.items() if "RETRAIN=1" in w)
    assert retrain.startswith(f"{minutes:.0f} min more"), (retrain, minutes)


def test_what_was_recorded_since_is_stated_as_measured(record: dict) -> None:
    """Runs recorded after the timed build: the page states the minutes they took in it (a
    record timed after them has none, and the page then states none)."""
    if "recorded_since" not in record:
        assert "of the build above" not in PAGE.read_text()
        return
    since = record["recorded_since"]["seconds"]
    runs_dir = ROOT / "book" / "data" / "runs-cpu"
    for name in since:  # each is in the record now
        assert (runs_dir / "runs" / name).is_dir() or (runs_dir / f"{name}.safetensors").is_file()
    said = re.search(r"training took ([\d.]+ min) of the build above", PAGE.read_text())
    assert said and said.group(1) == shown(sum(since.values())), said


def test_readme_states_the_chapters_it_names_as_recorded(record: dict) -> None:
    """The README's cold-build sentence names the install and its longest chapters in minutes:
    each as the record has it (one decimal)."""
    readme = (ROOT / "README.md").read_text()
    sentence = re.search(r"a cold `make book`.*?\(\[Running this book\]", readme, re.S)
    assert sentence, "the README's cold-build sentence"
    text = " ".join(sentence.group(0).split())
    install = re.search(r"([\d.]+) minutes to install", text)
    assert install and install.group(1) == f"{record['install_s'] / 60:.1f}"
    minutes = {
        Path(nb).name[:2].lstrip("0"): c["seconds"] / 60 for nb, c in record["chapters"].items()
    }
    named = re.findall(r"([\d.]+) for chapter (\d+)", text)
    assert len(named) >= 2, text
    for value, chapter in named:
        assert value == f"{minutes[chapter]:.1f}", (chapter, value, minutes[chapter])
    span = re.search(r"([\d.]+)-([\d.]+) for chapters ([\d, and]+)", text)
    assert span, text
    lo, hi = float(span.group(1)), float(span.group(2))
    for chapter in re.findall(r"\d+", span.group(3)):
        assert lo <= round(minutes[chapter], 1) <= hi, (chapter, minutes[chapter], lo, hi)
