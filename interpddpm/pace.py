"""A training run that times itself: its measured rate, the rate its chapter's estimate
assumed, and when it will end, said once its first steps are done.

A chapter's estimate line (:mod:`interpddpm.budget`) is a forecast from FLOP counts and
published rates; the GPU a Colab session gets may be slower (another card, a shared host, a
throttled T4). So where long work starts, the chapter side registers what the estimate
assumed for a run (:func:`expect`: seconds per step, and the profile field that sizes it), and
the trainer times its own steps (:func:`watch`, a :class:`Pace` fed one :meth:`Pace.tick` a
step): after :data:`WARMUP_STEPS` warm-up step (kernel selection, the first batch's latents,
allocator growth) it measures :data:`MEASURED_STEPS` steps and prints one line::

    pace: 0.31 s/step measured (steps 2-6), the estimate assumed 0.258 on a T4; run ends
    in about 39 min (01:32 UTC), 3 h 51 min into a 4 h session

When the run would end after the session's budget (``$INTERPDDPM_SESSION_HOURS``, default
:data:`DEFAULT_SESSION_HOURS`: a free Colab session ends after at most 12 hours, and in
practice after a few hours of GPU use), it says so once per process, with the options: resume
from Drive in a later session, a smaller run (the profile field by name), trained weights.

The session starts when this module is first imported (the chapter's first cell imports the
package), or at ``$INTERPDDPM_SESSION_START`` (seconds since the epoch) when that is set: a
notebook restarted in the same runtime may set it to the runtime's start.

Only runs with an expectation are timed and nothing here changes what a run computes. The
trainer imports this module, never the chapters': the expectation comes in through
:func:`expect`, keyed by the run folder.

Serves chapters 4, 5, 10 and 12 (the chapters that train): their runs say how long they will
really take.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "DEFAULT_SESSION_HOURS",
    "ENV_SESSION_HOURS",
    "ENV_SESSION_START",
    "Expectation",
    "Pace",
    "expect",
    "session_hours",
    "watch",
]

ENV_SESSION_HOURS = "INTERPDDPM_SESSION_HOURS"
ENV_SESSION_START = "INTERPDDPM_SESSION_START"
#: Hours a session is planned for when ``$INTERPDDPM_SESSION_HOURS`` is unset: free Colab
#: runtimes end after at most 12 hours, and in practice often after a few hours of GPU use.
DEFAULT_SESSION_HOURS = 4.0
#: Steps run before the clock starts (the first step selects kernels and fills caches).
WARMUP_STEPS = 1
#: Steps the rate is measured over.
MEASURED_STEPS = 5

#: Wall clock (seconds since the epoch) of this module's first import: the session's start.
_IMPORTED = time.time()
_expected: dict[str, Expectation] = {}
_warned = False  # the over-budget options are printed once per process


@dataclasses.dataclass(frozen=True)
class Expectation:
    """What a chapter's estimate assumed for one run: ``seconds_per_step`` on ``gpu`` (a
    name, for the message) and ``knob``, the profile field that sizes the run (its steps),
    with its value, e.g. ``"baseline_steps = 7500"``."""

    seconds_per_step: float
    gpu: str
    knob: str


def _key(run: str | os.PathLike) -> str:
    return str(Path(run).expanduser().absolute())


def expect(run: str | os.PathLike, expectation: Expectation | None) -> None:
    """Register (or, with None, forget) what the estimate assumed for the run in folder
    ``run``: its training (:func:`watch`) then times itself against it."""
    if expectation is None:
        _expected.pop(_key(run), None)
    else:
        _expected[_key(run)] = expectation


def session_hours() -> float:
    """The session's budget in hours: ``$INTERPDDPM_SESSION_HOURS`` or
    :data:`DEFAULT_SESSION_HOURS`. A value that is not a positive number is refused."""
    raw = os.environ.get(ENV_SESSION_HOURS, "").strip()
    if not raw:
        return DEFAULT_SESSION_HOURS
    try:
        hours = float(raw)
    except ValueError:
        hours = float("nan")
    if not hours > 0:
        from .errors import UserError

        raise UserError(
            f"{ENV_SESSION_HOURS}={raw!r} is not a positive number of hours: set it to the "
            f"session length you plan for (e.g. 12 for a 12-hour runtime) or unset it."
        )
    return hours


def _session_start() -> float:
    raw = os.environ.get(ENV_SESSION_START, "").strip()
    try:
        return float(raw) if raw else _IMPORTED
    except ValueError:
        return _IMPORTED


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


class Pace:
    """Times one training call: :meth:`tick` after every step; once :data:`WARMUP_STEPS` +
    :data:`MEASURED_STEPS` steps are done, prints the pace line (and, once per process, the
    options when the run would outlast the session). ``clock`` (monotonic seconds) and
    ``wall`` (seconds since the epoch) are injectable for tests."""

    def __init__(
        self,
        run: str | os.PathLike,
        start: int,
        end: int,
        expectation: Expectation,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        out: Callable[[str], None] | None = None,
    ) -> None:
        self.run, self.start, self.end = Path(run), start, end
        self.expectation = expectation
        self.clock, self.wall = clock, wall
        self.out = out or (lambda text: print(text, flush=True))
        self._t0: float | None = None
        self.line: str | None = None  # the pace line, once printed

    def tick(self, step: int) -> None:
        """Step ``step`` (the count of steps done) has just finished."""
        if self.line is not None:
            return
        done = step - self.start
        if done == WARMUP_STEPS:
            self._t0 = self.clock()
        elif done == WARMUP_STEPS + MEASURED_STEPS and self._t0 is not None:
            self._report(step, (self.clock() - self._t0) / MEASURED_STEPS)

    def _report(self, step: int, measured: float) -> None:
        global _warned
        e = self.expectation
        left = (self.end - step) * measured
        now = self.wall()
        finish = time.strftime("%H:%M UTC", time.gmtime(now + left))
        elapsed = now - _session_start()
        budget = session_hours() * 3600
        first = step - MEASURED_STEPS + 1
        self.line = (
            f"pace: {measured:.3g} s/step measured (steps {first}-{step}), the estimate "
            f"assumed {e.seconds_per_step:.3g} on a {e.gpu}; run ends in about "
            f"{_duration(left)} ({finish}), {_duration(elapsed + left)} into a "
            f"{session_hours():g} h session"
        )
        self.out(self.line)
        if elapsed + left > budget and not _warned:
            _warned = True
            self.out(
                f"this run would outlast the session ({session_hours():g} h, "
                f"{ENV_SESSION_HOURS}). Options: (1) let it run with Google Drive mounted: "
                f"it checkpoints as it goes, and the same cell in a later session resumes "
                f"it; (2) a smaller run: lower {e.knob} in the profile "
                f"(interpddpm.profiles); (3) trained weights: set INTERPDDPM_RUNS_FROM to "
                f"published runs (`interpddpm publish` makes them) and rerun the cell."
            )


def watch(run: str | os.PathLike, start: int, end: int, **kwargs: object) -> Pace | None:
    """A :class:`Pace` for a training call of the run in folder ``run`` from step ``start``
    to ``end``, when its chapter registered an expectation (:func:`expect`) and enough steps
    are left to measure; else None (the trainer then times nothing)."""
    e = _expected.get(_key(run))
    if e is None or end - start < WARMUP_STEPS + MEASURED_STEPS:
        return None
    return Pace(run, start, end, e, **kwargs)  # type: ignore[arg-type]


def reset_warning() -> None:
    """Let the over-budget options print again (a new session plan; tests)."""
    global _warned
    _warned = False
