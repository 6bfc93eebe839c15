"""The torch thread count chosen from the load (interpddpm.threads)."""

from __future__ import annotations

import os

from interpddpm.threads import busy_cores, threads_for_load


def test_threads_leave_busy_cores_to_others(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert threads_for_load(busy=0.1) == 2  # idle: all cores
    assert threads_for_load(busy=0.9) == 1  # one core busy elsewhere: one thread
    assert threads_for_load(busy=2.0) == 1  # never fewer than one
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert threads_for_load(busy=2.6) == 5


def test_the_users_omp_num_threads_wins(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_for_load(busy=0.0) == 3


def test_busy_cores_reads_a_share_of_the_cpus() -> None:
    busy = busy_cores(0.2)
    if not os.path.exists("/proc/stat"):  # not Linux: the system does not say
        assert busy is None
    else:
        assert busy is not None and 0.0 <= busy <= (os.cpu_count() or 1) + 1e-9
