"""A training run that times itself (interpddpm.pace), on a fake clock: the pace line's
numbers follow from the recorded step times, and the over-budget options appear once and
only when the run would outlast the session."""

from __future__ import annotations

import re

import pytest

from interpddpm import pace


class FakeClock:
    """Monotonic seconds that advance only when told; ``wall`` is the epoch time."""

    def __init__(self, wall0: float = 1_700_000_000.0) -> None:
        self.t, self.wall0 = 0.0, wall0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.wall0 + self.t


@pytest.fixture
def session(monkeypatch):
    """A session that started at the fake clock's epoch, options not yet printed."""
    clock = FakeClock()
    monkeypatch.setenv(pace.ENV_SESSION_START, str(clock.wall0))
    monkeypatch.delenv(pace.ENV_SESSION_HOURS, raising=False)
    pace.reset_warning()
    yield clock
    pace.reset_warning()


def run_steps(timer: pace.Pace, clock: FakeClock, start: int, durations: list[float]) -> None:
    for i, d in enumerate(durations):
        clock.t += d
        timer.tick(start + i + 1)


def make(clock: FakeClock, start: int, end: int, lines: list[str], per_step: float = 0.4):
    e = pace.Expectation(per_step, "T4", "baseline_steps (now 7500)")
    return pace.Pace("runs/x", start, end, e, clock=clock, wall=clock.wall, out=lines.append)


def test_the_line_follows_from_the_recorded_times(session) -> None:
    """A warm-up step (slow: kernels chosen) is left out; the next five set the rate; the
    finish time is the steps left at that rate."""
    lines: list[str] = []
    timer = make(session, 100, 1000, lines)
    run_steps(timer, session, 100, [9.0, 0.5, 0.5, 0.6, 0.4, 0.5, 0.5, 0.5])
    assert len(lines) == 1  # once, whatever the steps after
    line = lines[0]
    measured = (0.5 + 0.5 + 0.6 + 0.4 + 0.5) / 5  # steps 102-106
    assert f"{measured:.3g} s/step measured (steps 102-106)" in line
    assert "assumed 0.4 on a T4" in line
    left = (1000 - 106) * measured  # 447 s
    assert f"ends in about {round(left / 60)} min" in line
    at = session.wall0 + 9.0 + 5 * measured + left
    assert re.search(r"\((\d\d:\d\d) UTC\)", line)[1] == pace.time.strftime(
        "%H:%M", pace.time.gmtime(at)
    )
    elapsed = 9.0 + 5 * measured
    assert f"{round((elapsed + left) / 60)} min into a 4 h session" in line


def test_options_once_and_only_over_budget(session, monkeypatch) -> None:
    monkeypatch.setenv(pace.ENV_SESSION_HOURS, "1")
    lines: list[str] = []
    # 0.5 s/step over 5000 steps: 42 min, inside 1 h: no options
    run_steps(make(session, 0, 5000, lines), session, 0, [1.0] + [0.5] * 5)
    assert len(lines) == 1 and "outlast" not in lines[0]
    # 20,000 steps at 0.5 s: 2.8 h, past the 1 h session: the options, naming the field
    lines.clear()
    run_steps(make(session, 0, 20_000, lines), session, 0, [1.0] + [0.5] * 5)
    assert len(lines) == 2 and "outlast the session (1 h" in lines[1]
    for option in ("Google Drive", "baseline_steps (now 7500)", "INTERPDDPM_RUNS_FROM"):
        assert option in lines[1]
    # a second long run in the same process: its pace line, not the options again
    lines.clear()
    run_steps(make(session, 0, 20_000, lines), session, 0, [1.0] + [0.5] * 5)
    assert len(lines) == 1 and "outlast" not in lines[0]


def test_only_registered_runs_long_enough_are_timed(tmp_path, session) -> None:
    run = tmp_path / "runs" / "baseline-1"
    assert pace.watch(run, 0, 100) is None  # no expectation: the cpu book times nothing
    pace.expect(run, pace.Expectation(0.1, "T4", "baseline_steps (now 100)"))
    try:
        assert pace.watch(run, 0, pace.WARMUP_STEPS + pace.MEASURED_STEPS - 1) is None
        assert isinstance(pace.watch(str(run), 10, 100), pace.Pace)  # str or Path
    finally:
        pace.expect(run, None)
    assert pace.watch(run, 0, 100) is None


def test_a_bad_session_length_is_one_clear_error(monkeypatch) -> None:
    from interpddpm.errors import UserError

    for bad in ("0", "-2", "four", "nan"):
        monkeypatch.setenv(pace.ENV_SESSION_HOURS, bad)
        with pytest.raises(UserError, match="INTERPDDPM_SESSION_HOURS"):
            pace.session_hours()
    monkeypatch.setenv(pace.ENV_SESSION_HOURS, "12")
    assert pace.session_hours() == 12.0


def test_the_trainer_ticks_a_registered_run(tmp_path, monkeypatch) -> None:
    """The training loop feeds the pace of a registered run, and prints its line (smoke
    sizes on the CPU, the expectation registered by hand)."""
    from interpddpm import runs

    cfg = runs.baseline_config("smoke").replace(
        output_dir=str(tmp_path / "run"), steps=pace.WARMUP_STEPS + pace.MEASURED_STEPS
    )
    ticks: list[int] = []
    real = pace.Pace.tick
    monkeypatch.setattr(
        pace.Pace, "tick", lambda self, step: (ticks.append(step), real(self, step))
    )
    lines: list[str] = []
    monkeypatch.setattr(
        pace,
        "watch",
        lambda run, start, end: pace.Pace(
            run, start, end, pace.Expectation(1.0, "T4", "x"), out=lines.append
        ),
    )
    from interpddpm.training import train

    train(cfg, progress=False, device="cpu")
    assert ticks == list(range(1, cfg.steps + 1))
    assert len(lines) == 1 and lines[0].startswith("pace: ")
