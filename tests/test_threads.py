"""The torch thread count chosen per job from the load (interpddpm.threads).

The load is replayed from recorded ``/proc/stat`` first lines (2 cores, 100 ticks per second:
a 0.2 s slice holds 40 ticks) with this process's CPU seconds and a clock beside each: nothing
here sleeps or times anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from interpddpm import threads
from interpddpm.threads import (
    CpuReading,
    choose_threads,
    others_busy,
    parse_proc_stat,
    recheck,
    threads_for_load,
)

#: Six readings 0.2 s apart (a fresh sample): one core busy for ONE slice, idle otherwise.
BLIP = [
    "cpu  55060 0 6708 28587 780 0 93 143 0 0",
    "cpu  55061 0 6708 28626 780 0 93 143 0 0",
    "cpu  55080 0 6709 28646 780 0 93 143 0 0",
    "cpu  55080 0 6710 28685 780 0 93 143 0 0",
    "cpu  55081 0 6710 28724 780 0 93 143 0 0",
    "cpu  55081 0 6710 28764 780 0 93 143 0 0",
]
#: The same, with another job keeping one core busy all the time.
BUSY = [
    "cpu  55060 0 6708 28587 780 0 93 143 0 0",
    "cpu  55079 0 6709 28607 780 0 93 143 0 0",
    "cpu  55099 0 6709 28627 780 0 93 143 0 0",
    "cpu  55118 0 6710 28647 780 0 93 143 0 0",
    "cpu  55138 0 6711 28666 780 0 93 143 0 0",
    "cpu  55158 0 6711 28686 780 0 93 143 0 0",
]


def reading(line: str, own: float, at: float) -> CpuReading:
    return CpuReading(*parse_proc_stat(line), own=own, at=at)


class Replay:
    """A reading function that returns recorded readings in turn; sleep only counts."""

    def __init__(self, readings: list[CpuReading]) -> None:
        self.readings, self.sleeps = list(readings), 0

    def __call__(self) -> CpuReading:
        return self.readings.pop(0)

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1


def sample(lines: list[str], start: float = 0.0) -> list[CpuReading]:
    """A fresh sample: this process idle (own time constant), readings 0.2 s apart. The first
    reading is taken twice (choose_threads looks once before it samples)."""
    first = reading(lines[0], 1.0, start)
    return [first] + [reading(x, 1.0, start + 0.2 * i) for i, x in enumerate(lines)]


def later(previous: CpuReading, seconds: float, busy_cores: float, own_cores: float):
    """The reading ``seconds`` after ``previous`` with the machine ``busy_cores`` busy, this
    process ``own_cores`` of it (2 cores at 100 ticks per second)."""
    return CpuReading(
        busy=previous.busy + 100 * seconds * busy_cores,
        total=previous.total + 200 * seconds,
        own=previous.own + own_cores * seconds,
        at=previous.at + seconds,
    )


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch) -> Iterator[None]:
    """Two cores, no decision in force, no user override; torch's count restored after."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(threads.ENV_LOG, raising=False)
    monkeypatch.delenv(threads.ENV_THREADS, raising=False)  # the suite's conftest sets it
    monkeypatch.setattr(threads, "_last", None)
    monkeypatch.setattr(threads, "_current", None)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_parse_proc_stat_counts_idle_and_iowait_as_free() -> None:
    busy, total = parse_proc_stat("cpu  100 5 20 300 10 1 2 3 7 0\n")
    assert total == 100 + 5 + 20 + 300 + 10 + 1 + 2 + 3  # guest (7) is inside user already
    assert busy == total - 300 - 10
    with pytest.raises(ValueError, match="/proc/stat"):
        parse_proc_stat("cpu0 1 2 3 4")


def test_niced_work_is_free_for_a_process_at_normal_priority() -> None:
    line = "cpu  100 50 20 300 10 1 2 3 7 0\n"
    busy, total = parse_proc_stat(line)
    busy_free_nice, total_free_nice = parse_proc_stat(line, nice_is_free=True)
    assert total_free_nice == total
    assert busy - busy_free_nice == 50  # exactly the nice ticks move to free time


def test_read_cpu_counts_niced_work_only_when_itself_niced(monkeypatch, tmp_path) -> None:
    calls = []

    def fake_parse(text: str, *, nice_is_free: bool = False) -> tuple[float, float]:
        calls.append(nice_is_free)
        return 1.0, 2.0

    monkeypatch.setattr(threads, "parse_proc_stat", fake_parse)
    # no autogroup scheduling: nice alone decides (the case with it is tested below)
    monkeypatch.setattr(threads, "PROC", tmp_path / "no-proc")
    for priority, free in ((0, True), (10, False), (-5, True)):
        monkeypatch.setattr(threads.os, "getpriority", lambda *a, p=priority: p)
        assert threads.read_cpu() is not None
        assert calls[-1] is free, (priority, calls)


def test_our_own_work_is_not_another_jobs_load() -> None:
    first = reading(BLIP[0], 10.0, 0.0)
    second = later(first, 60.0, busy_cores=2.0, own_cores=2.0)  # we kept both cores busy
    assert others_busy(first, second, 2) == pytest.approx(0.0)
    third = later(second, 60.0, busy_cores=2.0, own_cores=1.0)  # one core was someone else's
    assert others_busy(second, third, 2) == pytest.approx(1.0)


def test_a_momentary_busy_core_does_not_pin_one_thread(capsys) -> None:
    replay = Replay(sample(BLIP))
    choice = choose_threads("training run x", read=replay, sleep=replay.sleep)
    assert choice.threads == 2 and torch.get_num_threads() == 2
    assert replay.sleeps == threads.SLICES  # five slices, median taken
    assert choice.others == pytest.approx(0.05)  # the median slice, not the busy one (1.0)
    line = capsys.readouterr().out.strip()
    assert line == (
        "threads: 2 torch threads for training run x "
        "(other jobs kept 0.05 of 2 cores busy over 1 s)"
    )


def test_a_core_busy_all_along_leaves_one_thread() -> None:
    replay = Replay(sample(BUSY))
    choice = choose_threads("sample set", read=replay, sleep=replay.sleep)
    assert choice.threads == 1 and torch.get_num_threads() == 1
    assert choice.others == pytest.approx(1.0)


def test_each_job_decides_again_over_the_window_since_the_last(capsys) -> None:
    replay = Replay(sample(BUSY))
    assert choose_threads("first job", read=replay, sleep=replay.sleep).threads == 1
    last = threads._last
    # 2 minutes later, the other job has ended; we ran one thread all along
    now = later(last, 120.0, busy_cores=1.0, own_cores=1.0)
    replay.readings = [now]
    choice = choose_threads("second job", read=replay, sleep=replay.sleep)
    assert replay.sleeps == threads.SLICES  # no new sample: the 2-minute window says it
    assert (choice.threads, choice.window_s, choice.others) == (2, 120.0, pytest.approx(0.0))
    # a job inside that job, a second later: the decision stands, silently
    soon = later(now, 1.0, busy_cores=2.0, own_cores=0.0)
    replay.readings = [soon]
    assert choose_threads("inner job", read=replay, sleep=replay.sleep) is choice
    assert "inner job" not in capsys.readouterr().out


def test_recheck_follows_the_load_during_a_job(capsys) -> None:
    replay = Replay(sample(BLIP))
    assert choose_threads("training run x", read=replay, sleep=replay.sleep).threads == 2
    start = threads._last

    def clock_at(r: CpuReading):
        return lambda: r.at

    # too soon: nothing is read
    assert recheck(read=lambda: pytest.fail("read too soon"), clock=lambda: start.at + 10) is None
    # a busy job starts: beside our two threads it gets only 0.67 of a core
    r1 = later(start, 30.0, busy_cores=2.0, own_cores=4 / 3)
    change = recheck(read=lambda: r1, clock=clock_at(r1))
    assert change is not None and (change.previous, change.threads) == (2, 1)
    assert torch.get_num_threads() == 1
    assert "threads: 2 -> 1 torch thread during training run x" in capsys.readouterr().out
    # it idles to 0.4 of a core: not clearly below a half, one thread stays
    r2 = later(r1, 30.0, busy_cores=1.4, own_cores=1.0)
    assert recheck(read=lambda: r2, clock=clock_at(r2)) is None
    # it ends: two threads again
    r3 = later(r2, 30.0, busy_cores=1.1, own_cores=1.0)
    change = recheck(read=lambda: r3, clock=clock_at(r3))
    assert change is not None and (change.previous, change.threads) == (1, 2)


def test_the_users_omp_num_threads_wins(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_for_load(busy=0.0) == 3

    def never() -> CpuReading:
        raise AssertionError("the load is not read when the user chose")

    choice = choose_threads("training run x", read=never, sleep=lambda s: None)
    assert (choice.threads, choice.source) == (3, "OMP_NUM_THREADS")
    assert "OMP_NUM_THREADS=3, set by you" in choice.line()
    assert recheck(read=never, clock=lambda: 1e9) is None


def test_threads_leave_busy_cores_to_others(monkeypatch) -> None:
    assert threads_for_load(busy=0.1) == 2  # idle: all cores
    assert threads_for_load(busy=0.5) == 1  # half a core busy elsewhere rounds to one
    assert threads_for_load(busy=2.0) == 1  # never fewer than one
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert threads_for_load(busy=2.6) == 5


def test_decisions_go_to_the_thread_log_and_the_run_log(tmp_path, monkeypatch) -> None:
    log = tmp_path / "threads.jsonl"
    monkeypatch.setenv(threads.ENV_LOG, str(log))
    replay = Replay(sample(BUSY))
    choose_threads("sample set", read=replay, sleep=replay.sleep)
    records = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(r["job"], r["threads"], r["source"]) for r in records] == [("sample set", 1, "load")]
    assert threads.log_fields() == {"threads": 1, "other_load": 1.0}


def test_keep_leaves_the_count_alone(monkeypatch) -> None:
    monkeypatch.setenv(threads.ENV_THREADS, "keep")
    torch.set_num_threads(1)
    choice = choose_threads("job", read=lambda: pytest.fail("read"), sleep=lambda s: None)
    assert (choice.threads, choice.source) == (1, "kept") and torch.get_num_threads() == 1


def test_no_proc_stat_means_all_cores_without_waiting() -> None:
    choice = choose_threads("job", read=lambda: None, sleep=lambda s: pytest.fail("slept"))
    assert (choice.threads, choice.source) == (2, "unknown")
    assert "reports no load" in choice.line()


def test_a_training_run_chooses_its_threads_and_logs_them(tmp_path, monkeypatch, capsys) -> None:
    """The trainer decides at its start (here from a recorded busy core) and writes the count
    and the load into every metrics.jsonl record."""
    from interpddpm.training import TrainConfig, read_metrics, train

    replay = Replay(sample(BUSY))
    monkeypatch.setattr(threads, "read_cpu", replay)  # the trainer calls with the defaults
    monkeypatch.setattr(threads, "_sleep", replay.sleep)
    monkeypatch.setattr(threads, "_clock", lambda: 10.0)  # 9 s after the sample: no recheck
    config = TrainConfig(
        preset="tiny",
        image_size=16,
        batch_size=2,
        dataset_length=8,
        steps=2,
        log_every=1,
        output_dir=str(tmp_path / "run"),
    )
    train(config, progress=False, device="cpu")
    out = capsys.readouterr().out
    assert "threads: 1 torch thread for training run run (steps 0-2) (other jobs kept 1.00" in out
    records = read_metrics(tmp_path / "run")
    assert [(r["threads"], r["other_load"]) for r in records] == [(1, 1.0), (1, 1.0)]


def _fake_proc(tmp_path, autogroup_enabled: str, own: str, processes: dict) -> Path:
    """A /proc tree: ``processes`` maps pid -> (nice, thread states, autogroup line)."""
    (tmp_path / "sys/kernel").mkdir(parents=True)
    (tmp_path / "sys/kernel/sched_autogroup_enabled").write_text(autogroup_enabled + "\n")
    (tmp_path / "self").mkdir()
    (tmp_path / "self/autogroup").write_text(own + "\n")
    for pid, (nice, states, group) in processes.items():
        d = tmp_path / str(pid)
        # comm with a space and a parenthesis: fields are read after its last ')'
        line = f"{pid} (py thon) {states[0]} 1 1 1 0 -1 0 0 0 0 0 5 5 0 0 39 {nice} 3 0\n"
        (d / "task").mkdir(parents=True)
        (d / "stat").write_text(line)
        (d / "autogroup").write_text(group + "\n")
        for i, state in enumerate(states):
            (d / "task" / str(pid + i)).mkdir()
            task = line.replace(f" {states[0]} ", f" {state} ", 1)
            (d / "task" / str(pid + i) / "stat").write_text(task)
    return tmp_path


@pytest.mark.parametrize(
    ("enabled", "processes", "yields"),
    [
        ("0", {7: (19, "R", "/autogroup-9 nice 0")}, True),  # nice works machine-wide
        ("1", {7: (19, "R", "/autogroup-9 nice 0")}, False),  # another session's full share
        ("1", {7: (19, "R", "/autogroup-9 nice 19")}, True),  # its session is niced too
        ("1", {7: (19, "R", "/autogroup-1 nice 0")}, True),  # our own session
        ("1", {7: (19, "SR", "/autogroup-9 nice 0")}, False),  # a worker thread runs
        ("1", {7: (19, "SS", "/autogroup-9 nice 0")}, True),  # asleep (khugepaged)
        ("1", {7: (0, "R", "/autogroup-9 nice 0")}, True),  # not niced: busy ticks anyway
    ],
)
def test_niced_work_yields_only_where_the_scheduler_makes_it(
    tmp_path, monkeypatch, enabled, processes, yields
) -> None:
    """With autogroup scheduling, nice orders processes only inside one session: a niced job
    in another, un-niced autogroup keeps a full core's share, so its nice ticks are busy."""
    monkeypatch.setattr(threads.os, "getpriority", lambda *a: 0)
    proc = _fake_proc(tmp_path, enabled, "/autogroup-1 nice 0", processes)
    assert threads.niced_work_yields(proc) is yields
    monkeypatch.setattr(threads.os, "getpriority", lambda *a: 10)  # we are niced ourselves
    assert threads.niced_work_yields(proc) is False
