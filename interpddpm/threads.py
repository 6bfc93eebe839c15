"""How many CPU threads torch should use, chosen from what else is running.

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
busy job but 1.5x slower on an idle machine. So the count is chosen from the load at the moment
work starts: the cores other processes keep busy, sampled from ``/proc/stat`` (the 1-minute load
average lags by a minute and would count our own previous chapter), are left to them.
``OMP_NUM_THREADS`` set by the user always wins.

Serves every chapter on a CPU.
"""

from __future__ import annotations

import os
import time

__all__ = ["busy_cores", "threads_for_load"]


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None where it does not exist."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(interval: float = 0.5) -> float | None:
    """How many cores are busy over ``interval`` seconds (this process should be idle then);
    None where the system does not say (not Linux)."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(interval)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    share = (second[0] - first[0]) / (second[1] - first[1])
    return share * (os.cpu_count() or 1)


def threads_for_load(interval: float = 0.5, busy: float | None = None) -> int:
    """The torch thread count for work about to start: the cores that other processes leave
    free (at least 1, at most all), or ``OMP_NUM_THREADS`` when the user set it."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = os.cpu_count() or 1
    busy = busy_cores(interval) if busy is None else busy
    if busy is None:
        return cores
    return max(1, min(cores, cores - round(busy)))
