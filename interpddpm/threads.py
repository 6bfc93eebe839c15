"""How many CPU threads torch should use, chosen per job from what else is running.

On a small machine, two torch threads on two cores collapse when another job runs at the same
priority: each OpenMP parallel region waits for its descheduled partner. Measured side by side
in one run (``benchmarks/thread_load.py``, 2-core AMD EPYC, plain cpu-profile training step):

=====================================  ======  ================  ===============
setting                                 idle    beside a nice 10  beside a nice 0
                                                busy thread       busy thread
=====================================  ======  ================  ===============
2 threads, OpenMP default wait          0.240   0.276             1.272
2 threads, ``OMP_WAIT_POLICY=PASSIVE``  0.329   0.714             1.354
1 thread                                0.367   0.382             0.364
=====================================  ======  ================  ===============

(seconds per step). A passive wait policy loses everywhere; one thread is 3.5x faster beside a
busy job but 1.5x slower on an idle machine. So the count follows the load, and is decided
where long work starts, not once per process:

- :func:`choose_threads` at the start of each long job (a training run, a sample set, a
  locality measurement, a parser's training) leaves to other processes the cores they keep
  busy. The load is the machine's busy share from ``/proc/stat`` less this process's own CPU
  time, so our own work never counts as "another job"; a process at normal priority also
  leaves out niced work (``nice -n 10 make test`` beside the book), which yields its core,
  unless Linux's autogroup scheduling keeps that work's share (:func:`niced_work_yields`).
  With a reading from an earlier decision 5 s to 10 min old, the load is averaged over that
  whole window; otherwise it is the median of five 0.2 s slices, so a core busy for a moment
  (a kernel starting, a file copied) does not decide for minutes of work.
- :func:`recheck`, called inside long loops (training steps, sampling batches), looks again
  every 30 s and changes the count when the load over those 30 s says so (a busy job started
  or ended), with a margin so that a load near a half core does not flip it back and forth.
- Each decision prints one line (``threads: 2 torch threads for training run ... (other jobs
  kept 0.05 of 2 cores busy over 1 s)``) and is appended to ``$INTERPDDPM_THREAD_LOG`` when
  that is set (``make book`` sets it per chapter and reports the choices); a training run also
  writes its thread count and the load seen into each ``metrics.jsonl`` record
  (:func:`log_fields`).

``OMP_NUM_THREADS`` set by the user always wins: nothing is measured or changed then.
``INTERPDDPM_THREADS=keep`` leaves torch's count as the process set it, silently (the test
suite sets it: tiny jobs on a fixed count, bit-equal reruns).
The (1-minute) load average is not used: it lags by a minute and counts our own work.

Serves every chapter on a CPU.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "CpuReading",
    "ThreadChoice",
    "busy_cores",
    "choose_threads",
    "current",
    "log_fields",
    "others_busy",
    "parse_proc_stat",
    "read_cpu",
    "recheck",
    "threads_for_load",
]

#: ``keep``: never change torch's thread count (the test suite sets it).
ENV_THREADS = "INTERPDDPM_THREADS"
#: The variable naming a JSON-lines file that receives every decision (``make book`` sets it).
ENV_LOG = "INTERPDDPM_THREAD_LOG"
#: A window shorter than this says too little: a decision within it keeps the current count.
MIN_WINDOW_S = 5.0
#: A window longer than this is stale: the load is sampled afresh.
MAX_WINDOW_S = 600.0
#: How often :func:`recheck` looks at the load during a job.
RECHECK_S = 30.0
#: The fresh sample at a job start: this many slices of this many seconds, median taken.
SLICES, SLICE_S = 5, 0.2
#: :func:`recheck` changes the count only when the load is this far past a rounding boundary.
MARGIN = 0.15


@dataclass(frozen=True)
class CpuReading:
    """One look at the machine: all CPUs' busy and total time in clock ticks (the first line
    of ``/proc/stat``), this process's own CPU seconds (all its threads) and a monotonic clock."""

    busy: float
    total: float
    own: float
    at: float


@dataclass(frozen=True)
class ThreadChoice:
    """A decision: ``threads`` for ``job``, from ``others`` cores kept busy by other processes
    over ``window_s`` seconds (None where the system does not say) on ``cores`` cores;
    ``source`` is ``"load"``, ``"OMP_NUM_THREADS"`` (the user's), ``"kept"``
    (``INTERPDDPM_THREADS=keep``) or ``"unknown"`` (no load reported)."""

    threads: int
    cores: int
    others: float | None
    window_s: float
    job: str
    source: str
    previous: int | None = None  # the count before a change during a job (recheck)

    def line(self) -> str:
        """The printed line, e.g. ``threads: 2 torch threads for training run x (other jobs
        kept 0.05 of 2 cores busy over 1 s)``."""
        count = f"{self.threads} torch thread{'s' if self.threads != 1 else ''}"
        if self.previous is not None:
            count = f"{self.previous} -> {count} during"
        else:
            count += " for"
        if self.source == "OMP_NUM_THREADS":
            why = f"OMP_NUM_THREADS={self.threads}, set by you"
        elif self.others is None:
            why = f"{self.cores} cores; the system reports no load"
        else:
            why = (
                f"other jobs kept {self.others:.2f} of {self.cores} cores busy over "
                f"{self.window_s:.3g} s"
            )
        return f"threads: {count} {self.job} ({why})"


def parse_proc_stat(text: str, *, nice_is_free: bool = False) -> tuple[float, float]:
    """(busy, total) clock ticks of all CPUs from the first line of ``/proc/stat``
    (``cpu user nice system idle iowait irq softirq steal guest guest_nice``).

    Idle and iowait are free time; steal (another virtual machine ran) counts as busy. guest
    and guest_nice are already inside user and nice, so they are not added again. With
    ``nice_is_free`` the ``nice`` ticks (processes at a lower priority, nice > 0) are free time
    too: the scheduler hands their core to a nice-0 job (about 98% of it against nice 19), and
    two threads beside a niced busy job stay fast (the table above), so a niced background job
    must not push a nice-0 process down to one thread.
    """
    fields = text.split()
    if not fields or fields[0] != "cpu" or len(fields) < 5:
        raise ValueError(f"not the first line of /proc/stat: {text[:80]!r}")
    ticks = [float(v) for v in fields[1:9]]
    total = sum(ticks)
    free = ticks[3] + ticks[4] + (ticks[1] if nice_is_free else 0.0)
    return total - free, total


def _runs_at_normal_priority() -> bool:
    """True when this process is not niced: lower-priority (niced) work then yields to it. A
    niced process competes with other niced work as an equal, so their ticks stay busy."""
    try:
        return os.getpriority(os.PRIO_PROCESS, 0) <= 0
    except (AttributeError, OSError):
        return False


def _autogroup(text: str) -> tuple[str, int] | None:
    """``("/autogroup-12", 19)`` from a ``/proc/<pid>/autogroup`` line, None if unreadable."""
    parts = text.split()
    if len(parts) == 3 and parts[1] == "nice":
        try:
            return parts[0], int(parts[2])
        except ValueError:
            return None
    return None


#: Where Linux shows processes and scheduler settings (a test points it at a fake tree).
PROC = Path("/proc")


def niced_work_yields(proc: str | os.PathLike | None = None) -> bool:
    """Whether the niced work running now yields its cores to this process, so that its
    ``nice`` ticks count as free (:func:`parse_proc_stat`).

    Only for a process at normal priority, and with Linux's autogroup scheduling
    (``/proc/sys/kernel/sched_autogroup_enabled`` = 1, the default of most distributions)
    only for niced work in this process's own session or in an autogroup that is niced
    itself: autogroup shares the CPU between sessions first, so a ``nice -n 19`` job started
    from another terminal takes a full core's share beside us (measured: two torch threads
    beside one went from 4.4 to 67 ms per image-step, and back to 4.4 once its autogroup was
    niced with ``echo 19 > /proc/<pid>/autogroup``).
    """
    if not _runs_at_normal_priority():
        return False
    root = PROC if proc is None else Path(proc)
    try:
        enabled = (root / "sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        enabled = False
    if not enabled:
        return True
    try:
        own = _autogroup((root / "self/autogroup").read_text())
    except OSError:
        own = None
    for entry in root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            group = _autogroup((entry / "autogroup").read_text())
        except OSError:
            continue  # the process ended, or is not ours to read
        fields = _stat_fields(stat)
        if len(fields) < 17 or int(fields[16]) <= 0:
            continue  # not niced
        if not _running(entry):
            continue  # niced but asleep (a kernel daemon, a job waiting)
        if group is None or own is None or (group[0] != own[0] and group[1] <= 0):
            return False
    return True


def _stat_fields(stat: str) -> list[str]:
    """The fields of a ``/proc/<pid>/stat`` line after ``pid (comm)`` (state is the first,
    nice the 17th); comm may hold spaces and parentheses, so split after its last ')'."""
    return stat[stat.rfind(")") + 2 :].split()


def _running(process: Path) -> bool:
    """Whether any thread of the process is running or runnable now (torch's worker threads
    run while its main thread waits)."""
    try:
        tasks = list((process / "task").iterdir())
    except OSError:
        tasks = [process]
    for task in tasks:
        try:
            if _stat_fields((task / "stat").read_text())[:1] == ["R"]:
                return True
        except OSError:
            continue
    return False


def read_cpu() -> CpuReading | None:
    """A :class:`CpuReading` now, or None where ``/proc/stat`` does not exist (not Linux)."""
    try:
        with open("/proc/stat") as f:
            busy, total = parse_proc_stat(f.readline(), nice_is_free=niced_work_yields())
    except (OSError, ValueError):
        return None
    return CpuReading(busy, total, time.process_time(), time.monotonic())


def _cores() -> int:
    return os.cpu_count() or 1


def others_busy(first: CpuReading, second: CpuReading, cores: int) -> float | None:
    """Cores that OTHER processes kept busy between two readings: the machine's busy share
    times ``cores``, less this process's CPU seconds per second of the window. None for an
    empty window."""
    ticks, seconds = second.total - first.total, second.at - first.at
    if ticks <= 0 or seconds <= 0:
        return None
    machine = (second.busy - first.busy) / ticks * cores
    own = (second.own - first.own) / seconds
    return min(float(cores), max(0.0, machine - own))


def _sample(
    read: Callable[[], CpuReading | None], sleep: Callable[[float], None]
) -> tuple[float | None, float, CpuReading | None]:
    """The median load of :data:`SLICES` slices of :data:`SLICE_S` seconds, the window's
    length and the last reading."""
    readings = [read()]
    for _ in range(SLICES):
        sleep(SLICE_S)
        readings.append(read())
    if any(r is None for r in readings):
        return None, 0.0, None
    loads = [others_busy(a, b, _cores()) for a, b in zip(readings, readings[1:], strict=False)]
    loads = [x for x in loads if x is not None]
    window = readings[-1].at - readings[0].at
    return (statistics.median(loads) if loads else None), window, readings[-1]


def _user_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return max(1, int(value)) if value.isdigit() else None


def _kept() -> bool:
    return os.environ.get(ENV_THREADS, "").strip().lower() == "keep"


def _for_load(others: float | None, cores: int) -> int:
    """The cores others leave free: at least 1, at most all."""
    if others is None:
        return cores
    return max(1, min(cores, cores - math.floor(others + 0.5)))  # half a core rounds up


_sleep, _clock = time.sleep, time.monotonic  # module attributes: tests replace them

# The state of this process: the last reading and the decision in force.
_last: CpuReading | None = None
_current: ThreadChoice | None = None


def _apply(choice: ThreadChoice, announce: bool) -> ThreadChoice:
    global _current
    _current = choice
    if choice.source != "OMP_NUM_THREADS":
        import torch  # local: keep `import interpddpm.threads` light (the book imports it)

        if torch.get_num_threads() != choice.threads:
            torch.set_num_threads(choice.threads)
    if announce:
        print(choice.line(), flush=True)
        path = os.environ.get(ENV_LOG)
        if path:
            try:
                with open(path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(asdict(choice)) + "\n")
            except OSError:
                pass  # a report only: never fail the job for it
    return choice


def choose_threads(
    job: str,
    *,
    read: Callable[[], CpuReading | None] | None = None,
    sleep: Callable[[float], None] | None = None,
    announce: bool = True,
) -> ThreadChoice:
    """Decide the torch thread count for a long job about to start, apply it
    (``torch.set_num_threads``), print it and log it; returns the :class:`ThreadChoice`.

    ``read`` and ``sleep`` (default :func:`read_cpu` and ``time.sleep``, looked up when
    called) are injectable so that tests replay recorded ``/proc/stat`` readings. A decision
    made less than :data:`MIN_WINDOW_S` ago (a job inside a job) is kept as it is, silently.
    """
    global _last
    read, sleep = read or read_cpu, sleep or _sleep
    cores = _cores()
    if _kept():
        import torch

        return ThreadChoice(torch.get_num_threads(), cores, None, 0.0, job, "kept")
    user = _user_threads()
    if user is not None:
        choice = ThreadChoice(user, cores, None, 0.0, job, "OMP_NUM_THREADS")
        fresh = _current is None or _current.source != "OMP_NUM_THREADS"
        return _apply(choice, announce and fresh)
    now = read()
    measured = None if now is not None else (None, 0.0, None)  # (others, window, last reading)
    if now is not None and _last is not None and _current is not None:
        age = now.at - _last.at
        if age < MIN_WINDOW_S:
            return _current
        if age <= MAX_WINDOW_S:  # the whole window since the last reading: no waiting
            measured = others_busy(_last, now, cores), age, now
    others, window, _last = measured or _sample(read, sleep)
    source = "load" if others is not None else "unknown"
    threads = _for_load(others, cores)
    return _apply(ThreadChoice(threads, cores, others, window, job, source), announce)


def recheck(
    *,
    read: Callable[[], CpuReading | None] | None = None,
    clock: Callable[[], float] | None = None,
    announce: bool = True,
) -> ThreadChoice | None:
    """During a job: every :data:`RECHECK_S` seconds, the load over that window; change the
    thread count when it says so. Returns the new choice, or None (no decision in force, too
    soon, no change). Cheap between looks: one clock read.

    Fewer threads as soon as the load rounds that way (while our threads run, a busy job gets
    only its fair share of the cores, so its load reads low); more threads only when the load
    plus :data:`MARGIN` still rounds that way, so a load near a half core does not flip it.
    """
    global _last
    if _current is None or _current.source != "load" or _last is None or _kept():
        return None
    if (clock or _clock)() - _last.at < RECHECK_S:
        return None
    now = (read or read_cpu)()
    if now is None:
        return None
    cores = _cores()
    others = others_busy(_last, now, cores)
    window, _last = now.at - _last.at, now
    if others is None:
        return None
    threads = _for_load(others, cores)
    if threads > _current.threads:
        threads = max(_current.threads, _for_load(others + MARGIN, cores))
    if threads == _current.threads:
        return None
    choice = ThreadChoice(threads, cores, others, window, _current.job, "load", _current.threads)
    return _apply(choice, announce)


def current() -> ThreadChoice | None:
    """The decision in force in this process (None before the first :func:`choose_threads`)."""
    return _current


def log_fields() -> dict[str, float | int | None]:
    """``{"threads": ..., "other_load": ...}`` for a run's log record: the torch threads now
    and the cores other jobs kept busy at the last decision (None when not measured)."""
    import torch

    return {
        "threads": torch.get_num_threads(),
        "other_load": None
        if _current is None or _current.others is None
        else round(_current.others, 2),
    }


def busy_cores(interval: float = 0.5) -> float | None:
    """How many cores are busy over ``interval`` seconds, this process's own work excluded;
    None where the system does not say (not Linux)."""
    first = read_cpu()
    if first is None:
        return None
    time.sleep(interval)
    second = read_cpu()
    return None if second is None else others_busy(first, second, _cores())


def threads_for_load(interval: float = 0.5, busy: float | None = None) -> int:
    """The torch thread count for work about to start: the cores that other processes leave
    free (at least 1, at most all), or ``OMP_NUM_THREADS`` when the user set it. A one-off
    answer; long jobs use :func:`choose_threads`."""
    user = _user_threads()
    if user is not None:
        return user
    return _for_load(busy_cores(interval) if busy is None else busy, _cores())
