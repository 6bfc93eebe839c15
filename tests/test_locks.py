"""Locks on run folders and caches (interpddpm.locks): two processes never write one thing.

Every test that needs a second process starts a real one (subprocess) and synchronises on what
it prints, never on time: the outcome is the same on a fast and a slow machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from interpddpm import locks
from interpddpm.locks import LockedError, holder, info_file, lock_file, locked
from interpddpm.training import TrainConfig, list_checkpoints, read_metrics, train

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(preset="tiny", image_size=16, batch_size=4, dataset_length=40, log_every=1, lr=1e-3)

HOLDER = """
import sys
from interpddpm.locks import locked
with locked(sys.argv[1], wait=False, what=sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
"""


def _python(code: str, *args: str) -> subprocess.Popen:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=env,
    )


def _hold(path: Path, what: str = "training run") -> subprocess.Popen:
    """A second process that holds the lock of ``path`` until its stdin is closed."""
    proc = _python(HOLDER, str(path), what)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    assert proc.wait() == 0


def test_second_trainer_fails_at_once_naming_the_holder(tmp_path) -> None:
    out = tmp_path / "run"
    cfg = TrainConfig(**TINY, steps=2, checkpoint_every=2, output_dir=str(out))
    proc = _hold(out)
    try:
        info = holder(out)
        assert info["pid"] == proc.pid and info["host"] == socket.gethostname()
        assert info["what"] == "training run" and info["since"]
        with pytest.raises(LockedError) as error:
            train(cfg, progress=False)
    finally:
        _release(proc)
    message = str(error.value)
    assert f"held by pid {proc.pid} on {socket.gethostname()}" in message
    assert f"ps -p {proc.pid}" in message and f"delete {lock_file(out)}" in message
    # it failed before writing anything: nothing mixed into the holder's folder
    assert not (out / "metrics.jsonl").exists() and list_checkpoints(out) == []
    assert not info_file(out).exists()  # the holder removed its info when it released
    train(cfg, progress=False)  # free again
    assert [r["step"] for r in read_metrics(out)] == [1, 2]


ENSURE = """
import json, sys
from interpddpm import runs
from interpddpm.training import TrainConfig
result = runs.ensure(TrainConfig.from_dict(json.loads(sys.argv[1])), progress=False)
print("result step", result.step, flush=True)
"""


def test_ensure_waits_for_the_holder_and_reuses_its_run(tmp_path) -> None:
    """A notebook asking for a run that another process is training waits, then loads it."""
    out = tmp_path / "baseline"
    cfg = TrainConfig(**TINY, steps=2, checkpoint_every=1, output_dir=str(out))
    with locked(out, wait=False, what="run build (runs.ensure)"):
        proc = _python(ENSURE, json.dumps(cfg.to_dict()))
        lines = []
        while not lines or not lines[-1].startswith("waiting for"):
            line = proc.stdout.readline()
            assert line, f"the second process ended without waiting: {''.join(lines)}"
            lines.append(line)
        assert lines[-1].strip().startswith(f"waiting for {out} (held by pid {os.getpid()} ")
        first = train(cfg, progress=False)  # the holder trains (nested in its own lock)
        model_bytes = (list_checkpoints(out)[-1] / "model.safetensors").read_bytes()
    rest, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, rest
    assert "result step 2" in rest
    assert first.step == 2
    # the waiter reused the run: no second training, no duplicated log lines
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    assert (list_checkpoints(out)[-1] / "model.safetensors").read_bytes() == model_bytes


def test_a_killed_holder_leaves_no_lock_and_its_info_is_replaced(tmp_path) -> None:
    path = tmp_path / "cache-entry"
    proc = _hold(path, "ablation scores")
    proc.kill()  # SIGKILL: no cleanup runs; the OS releases the lock
    proc.wait()
    assert holder(path)["pid"] == proc.pid  # what the killed process left
    with locked(path, wait=False, what="test"):
        assert holder(path)["pid"] == os.getpid()  # a held lock's info names its holder
    assert holder(path) is None


FLOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def test_a_lock_kept_by_a_dead_holder_is_broken_with_a_warning(tmp_path, monkeypatch) -> None:
    """The OS lock lives on (e.g. in a forked child) but the info names a dead process."""
    monkeypatch.setattr(locks, "STALE_GRACE_S", 0.2)
    path = tmp_path / "run"
    orphan = _python(FLOCK, str(lock_file(path)))
    assert orphan.stdout.readline().strip() == "held"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"pid": dead.pid, "host": socket.gethostname(), "since": "earlier", "what": "x"}
    info_file(path).write_text(json.dumps(stale))
    try:
        with pytest.warns(RuntimeWarning, match=rf"removing the stale lock .*pid {dead.pid}"):
            with locked(path, wait=False, what="training run"):
                assert holder(path)["pid"] == os.getpid()
    finally:
        orphan.stdin.close()
        orphan.wait()


def test_a_live_holder_on_this_host_is_never_broken(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(locks, "STALE_GRACE_S", 0.2)
    path = tmp_path / "run"
    proc = _hold(path)
    try:
        with pytest.raises(LockedError, match=f"pid {proc.pid}"):
            with locked(path, wait=False, what="training run"):
                pass
        with pytest.raises(LockedError, match="gave up waiting"):
            with locked(path, wait=True, what="test", timeout=0.3):
                pass
    finally:
        _release(proc)


def test_nesting_in_one_thread_and_exclusion_across_threads(tmp_path) -> None:
    path = tmp_path / "entry"
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            with locked(path, wait=False, what="thread"):
                pass
        except LockedError as error:
            errors.append(error)

    with locked(path, wait=False, what="outer"):
        with locked(path, wait=False, what="inner"):  # nested: no deadlock
            assert holder(path)["what"] == "outer"
        assert holder(path)["what"] == "outer"  # still held after the inner block
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert len(errors) == 1 and f"pid {os.getpid()}" in str(errors[0])
    assert holder(path) is None
    with locked(path, wait=False, what="again"):  # released
        pass


def test_pid_running() -> None:
    assert locks.pid_running(os.getpid())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not locks.pid_running(dead.pid)
    assert not locks.pid_running(-1)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    assert not locks.pid_running(zombie.pid)
    zombie.wait()


# ------------------------------------------------------------- two machines, one Drive folder
class Machines:
    """Two hostnames and a wall clock that moves only when told (``locks._now``)."""

    def __init__(self, monkeypatch) -> None:
        self.host, self.t = "colab-a", 1_700_000_000.0
        monkeypatch.setattr(locks, "this_host", lambda: self.host)
        monkeypatch.setattr(locks, "_now", lambda: self.t)

    def lease(self, path: Path, host: str, age_s: float, pid: int = 4242) -> None:
        """The info another machine's trainer left, with its last heartbeat ``age_s`` ago."""
        info = {
            "pid": pid,
            "host": host,
            "since": "2026-12-07T20:00:00+00:00",
            "what": "training run",
        }
        info_file(path).parent.mkdir(parents=True, exist_ok=True)
        info_file(path).write_text(json.dumps(info))
        os.utime(info_file(path), (self.t - age_s, self.t - age_s))


def test_a_fresh_lease_of_another_machine_is_refused_in_one_line(tmp_path, monkeypatch) -> None:
    m = Machines(monkeypatch)
    out = tmp_path / "runs" / "baseline-1"
    m.lease(out, "colab-b", age_s=locks.STALE_AFTER_S - 60)  # 9 min without a heartbeat
    with pytest.raises(LockedError) as error:
        with locked(out, wait=False, what="training run"):
            pass
    message = str(error.value)
    assert "\n" not in message
    assert "pid 4242 on colab-b" in message and "since 2026-12-07T20:00:00+00:00" in message
    assert "last heartbeat 9 min ago" in message and f"delete {info_file(out)}" in message
    assert holder(out)["host"] == "colab-b"  # the other machine's lease is untouched
    # seen from colab-b itself with no process holding the OS lock, that pid is gone: taken
    m.host = "colab-b"
    with locked(out, wait=False, what="training run"):
        assert holder(out)["pid"] == os.getpid()


def test_a_stale_lease_of_another_machine_is_taken_over(tmp_path, monkeypatch) -> None:
    m = Machines(monkeypatch)
    out = tmp_path / "runs" / "baseline-1"
    m.lease(out, "colab-b", age_s=locks.STALE_AFTER_S + 1)
    with pytest.warns(RuntimeWarning, match="taking over the lock .* pid 4242 on colab-b"):
        with locked(out, wait=False, what="training run"):
            info = holder(out)
            assert info["host"] == "colab-a" and info["pid"] == os.getpid()
    assert holder(out) is None  # released: no lease left behind


def test_the_heartbeat_keeps_a_lease_fresh(tmp_path, monkeypatch) -> None:
    """While held, each beat sets the info's mtime to now; colab-b, seeing it, refuses even
    long after the lock was taken. A beat of a lock taken over by another machine stops."""
    m = Machines(monkeypatch)
    out = tmp_path / "runs" / "baseline-1"
    with locked(out, wait=False, what="training run"):
        for _ in range(3):  # half an hour, a beat every ten minutes
            m.t += 0.9 * locks.STALE_AFTER_S
            assert locks.beat(out)
            assert locks.heartbeat_age(out) == pytest.approx(0.0, abs=1.0)
        # the other machine, while colab-a still trains: it gets its own OS lock (Drive has
        # none across machines) and then meets the lease, which the beats kept fresh
        m.host = "colab-b"
        with pytest.raises(LockedError, match="pid .* on colab-a .* last heartbeat 0 min ago"):
            locks._claim_from_other_hosts(out, wait=False, what="training run", deadline=None)
        m.host = "colab-a"
        m.lease(out, "colab-b", age_s=0)  # colab-b took it over (colab-a's lease had gone stale)
        assert not locks.beat(out)  # not ours any more: no beat
        assert holder(out)["host"] == "colab-b"
    assert holder(out)["host"] == "colab-b"  # colab-a's release leaves colab-b's lease alone
