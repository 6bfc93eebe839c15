"""Exclusive locks on run folders and cache entries: two processes never write one thing.

One context manager, :func:`locked`, guards every place where two processes (two terminals,
two notebooks, two ``make book``) could write the same files: a training run's folder
(:func:`interpddpm.training.train`), each cache entry that is built when missing
(:func:`interpddpm.runs.ensure`, the scores of :mod:`interpddpm.ablations`, the sample sets of
:func:`interpddpm.realism.sample_images`, the face parser, the latent autoencoder) and the
book's staging folder (:func:`interpddpm.book.execute`).

The lock of ``path`` is the file ``<path>.lock`` beside it, taken with :mod:`filelock`. That is
an OS lock (``flock``): the kernel releases it when its process dies, so a crash or a kill never
leaves a folder locked. While it is held, ``<path>.lock.info`` (JSON) names the holder: pid,
host, start time, what it does and its command line. The holder writes it right after taking
the lock and removes it right before releasing it; the next holder overwrites what a killed
one left, so the info of a HELD lock always names its holder.

Meeting a held lock:

- ``wait=False`` (a trainer): :class:`LockedError` at once, naming the holder and how to break a
  stale lock.
- ``wait=True`` (a cache that a notebook builds when missing): one line ``waiting for <path>
  (held by pid N ...)`` on stdout, then the caller waits and goes on when the holder is done;
  it then finds the holder's result and reuses it instead of building it again.

Stale locks: when a lock stays held while its info names a process that no longer runs on this
host (the OS lock then lives on in a forked child, or the filesystem has no OS locks and
filelock fell back to a lock file), the lock file is removed with a warning and taken afresh.

Two machines on one shared folder (two Colab runtimes on one Google Drive): an OS lock does not
reach across machines, so the info file is also a lease. While the lock is held, a heartbeat
thread refreshes the info file's mtime every :data:`HEARTBEAT_S` seconds. A process that gets
the OS lock and finds the info of a process on ANOTHER host whose heartbeat is fresh (younger
than :data:`STALE_AFTER_S`) treats the lock as held: ``wait=False`` (a trainer) refuses with one
line (who holds it, since when, its last heartbeat, how to take it over), ``wait=True`` waits
for the info to go away or go stale. A lease whose heartbeat stopped that long ago (the other
runtime was disconnected) is taken over with a warning naming its host. Best effort: Drive
has no atomic cross-machine operation, so two machines that start the same run within the
moment it takes Drive to sync a file may both go on (the info is read back after writing, so
only a simultaneous start slips through).

A process that holds the lock of a path may enter :func:`locked` for it again (in the same
thread): ``runs.ensure`` holds a run's lock and calls ``train``, which takes it again.

Serves every chapter: two notebooks never write one run.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = [
    "LockedError",
    "beat",
    "heartbeat_age",
    "holder",
    "info_file",
    "lock_file",
    "locked",
    "pid_running",
    "this_host",
]

#: Seconds a lock may stay held while its info names a dead process (or no process) before it
#: counts as stale: a new holder writes its info within microseconds of taking the lock.
STALE_GRACE_S = 2.0
#: Seconds between two looks at a held lock while waiting.
POLL_S = 0.5
#: Seconds between two refreshes of a held lock's info file (its mtime: the heartbeat).
HEARTBEAT_S = 60.0
#: A lock of another host whose info has not been refreshed for this long is stale (its
#: runtime is gone): long enough for Drive's sync delays between two machines.
STALE_AFTER_S = 600.0

#: The wall clock heartbeats are compared with (tests replace it).
_now = time.time


def this_host() -> str:
    """The name that lock infos give this machine (tests replace it)."""
    return socket.gethostname()


_held: dict[tuple[str, int], int] = {}  # (lock file, thread) -> nesting depth, in this process
_held_guard = threading.Lock()


class LockedError(UserError, RuntimeError):
    """Another process holds the lock of a run folder or cache entry."""


def lock_file(path: str | os.PathLike) -> Path:
    """The lock file of ``path``: ``<path>.lock``, beside it."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def info_file(path: str | os.PathLike) -> Path:
    """The file that names the holder of ``path``'s lock: ``<path>.lock.info`` (JSON)."""
    path = Path(path)
    return path.with_name(path.name + ".lock.info")


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie, dead but not reaped, does not)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS): os.kill said it exists
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def holder(path: str | os.PathLike) -> dict[str, Any] | None:
    """What ``<path>.lock.info`` says (pid, host, since, what, command), or None when there is
    no readable info. It names the holder while the lock is held; after a kill it names the
    killed process until the next holder overwrites it."""
    try:
        data = json.loads(info_file(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _describe(info: dict[str, Any] | None) -> str:
    if info is None:
        return "held by a process that did not say who it is"
    text = f"held by pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"
    return text + (f": {info['what']}" if info.get("what") else "")


def _dead(info: dict[str, Any] | None) -> bool:
    """The info names a process of this host that no longer runs."""
    return info is not None and info.get("host") == this_host() and not pid_running(info.get("pid"))


def _locked_message(path: Path, what: str, info: dict[str, Any] | None) -> str:
    pid, host = (info or {}).get("pid", "?"), (info or {}).get("host", "this host")
    return (
        f"{path} is locked by another process ({_describe(info)}); this {what} cannot use it "
        f"at the same time. Wait for that process to finish, or use another folder. If it is "
        f"gone (check with `ps -p {pid}` on {host}), the lock is stale: delete "
        f"{lock_file(path)} and try again."
    )


def _write_info(path: Path, what: str) -> None:
    info = {
        "pid": os.getpid(),
        "host": this_host(),
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "what": what,
        "command": " ".join(sys.argv)[:300],
    }
    target = info_file(path)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, target)


def _break_stale(path: Path, info: dict[str, Any], inode: int | None) -> bool:
    """Remove the lock file and info of ``path`` if they are still the stale ones seen."""
    lock = lock_file(path)
    try:
        if holder(path) != info or os.stat(lock).st_ino != inode:
            return False  # someone else moved on meanwhile
    except OSError:
        return False
    warnings.warn(
        f"removing the stale lock {lock} of {path}: it stayed held while its holder, pid "
        f"{info.get('pid')} on {info.get('host')} (since {info.get('since')}), no longer runs",
        RuntimeWarning,
        stacklevel=4,
    )
    for f in (lock, info_file(path)):
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
    return True


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def heartbeat_age(path: str | os.PathLike) -> float | None:
    """Seconds since the lock info of ``path`` was last written or refreshed (None: no info)."""
    try:
        return max(0.0, _now() - os.stat(info_file(path)).st_mtime)
    except OSError:
        return None


def _ours(info: dict[str, Any] | None) -> bool:
    return info is not None and info.get("pid") == os.getpid() and info.get("host") == this_host()


def _foreign(info: dict[str, Any] | None) -> bool:
    """The info names a process on another host."""
    return info is not None and bool(info.get("host")) and info.get("host") != this_host()


def _foreign_message(path: Path, what: str, info: dict[str, Any], age: float) -> str:
    stale_min = STALE_AFTER_S / 60
    return (
        f"{path} is in use on another machine: pid {info.get('pid')} on {info.get('host')} "
        f"({info.get('what') or 'a lock'}) since {info.get('since')}, last heartbeat "
        f"{age / 60:.0f} min ago; this {what} will not run beside it. If that runtime is gone, "
        f"its lock goes stale {stale_min:.0f} min after its last heartbeat and is then taken "
        f"over; to take it over now, delete {info_file(path)}."
    )


def _claim_from_other_hosts(path: Path, *, wait: bool, what: str, deadline: float | None) -> None:
    """With this host's OS lock held: refuse (``wait=False``) or wait while a process of
    another host holds a fresh lease on ``path``; take over a stale one with a warning."""
    announced = False
    while True:
        info, age = holder(path), heartbeat_age(path)
        if not _foreign(info) or age is None:
            return
        if age >= STALE_AFTER_S:
            warnings.warn(
                f"taking over the lock of {path} from pid {info.get('pid')} on "
                f"{info.get('host')} (since {info.get('since')}): no heartbeat for "
                f"{age / 60:.0f} min, its runtime is gone",
                RuntimeWarning,
                stacklevel=5,
            )
            return
        if not wait:
            raise LockedError(_foreign_message(path, what, info, age))
        if not announced:
            print(f"waiting for {path} ({_describe(info)})", flush=True)
            announced = True
        if deadline is not None and time.monotonic() >= deadline:
            raise LockedError("gave up waiting. " + _foreign_message(path, what, info, age))
        time.sleep(min(POLL_S * 20, HEARTBEAT_S))


class _Heartbeat:
    """Refreshes the mtime of ``path``'s lock info every :data:`HEARTBEAT_S` seconds while
    the info names this process; stops when told or when another process took the lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"lock heartbeat {path}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            if not beat(self.path):
                return

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def beat(path: str | os.PathLike) -> bool:
    """One heartbeat: set the mtime of ``path``'s lock info to now, if the info names this
    process. Returns False when it does not (the lock was taken over): no more beats."""
    if not _ours(holder(path)):
        return False
    now = _now()
    with contextlib.suppress(OSError):
        os.utime(info_file(path), (now, now))
    return True


def _acquire(path: Path, *, wait: bool, what: str, timeout: float | None) -> Any:
    """Take the lock of ``path`` (see :func:`locked`); returns the held ``FileLock``."""
    from filelock import FileLock, Timeout

    lock_path = lock_file(path)
    deadline = None if timeout is None else time.monotonic() + timeout
    announced = False
    suspect: tuple[dict[str, Any] | None, int | None, float] | None = None
    while True:
        lock = FileLock(str(lock_path))
        with contextlib.suppress(Timeout):
            lock.acquire(timeout=0)
            return lock
        info, now = holder(path), time.monotonic()
        if info is None or _dead(info):  # just taken (info not yet written), or stale
            if suspect is None or suspect[0] != info:
                suspect = (info, _inode(lock_path), now)
            elif now - suspect[2] >= STALE_GRACE_S:
                if info is not None and _break_stale(path, info, suspect[1]):
                    suspect = None
                    continue
                if not wait:
                    raise LockedError(_locked_message(path, what, info))
        else:
            suspect = None
            if not wait:
                raise LockedError(_locked_message(path, what, info))
        if wait and not announced and (suspect is None or now - suspect[2] >= STALE_GRACE_S):
            print(f"waiting for {path} ({_describe(info)})", flush=True)
            announced = True
        if deadline is not None and now >= deadline:
            raise LockedError(
                f"gave up waiting {timeout} s for {path}. " + _locked_message(path, what, info)
            )
        with contextlib.suppress(Timeout):
            lock.acquire(timeout=POLL_S if suspect is None else 0.1)
            return lock


@contextlib.contextmanager
def locked(
    path: str | os.PathLike, *, wait: bool, what: str, timeout: float | None = None
) -> Iterator[Path]:
    """Hold the exclusive lock of ``path`` (a folder or a file, existing or not) in this block.

    Args:
        path: what is guarded; the lock is ``<path>.lock`` beside it (its parent folder is
            created if missing).
        wait: when another process holds the lock, ``False`` raises :class:`LockedError` at
            once; ``True`` prints ``waiting for <path> (held by pid N ...)`` and waits.
        what: what this process does there, e.g. ``"training run"``; written into the info
            file and the messages.
        timeout: with ``wait=True``, give up after that many seconds (:class:`LockedError`);
            ``None`` waits as long as it takes.

    Yields:
        ``path`` (as a :class:`~pathlib.Path`).

    Entering it again for the same ``path`` in the same thread, while it is held, nests
    (the lock is released when the outermost block ends).
    """
    path = Path(path).expanduser().absolute()
    lock_path = lock_file(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    key = (os.path.realpath(lock_path), threading.get_ident())
    with _held_guard:
        depth = _held.get(key, 0)
        if depth:
            _held[key] = depth + 1
    if depth:
        try:
            yield path
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    lock = _acquire(path, wait=wait, what=what, timeout=timeout)
    beats = None
    try:
        # a lease of another machine on a shared folder (Drive): the OS lock cannot see it
        _claim_from_other_hosts(path, wait=wait, what=what, deadline=deadline)
        _write_info(path, what)
        info = holder(path)
        if not _ours(info):  # another machine wrote its lease at the same moment
            raise LockedError(_foreign_message(path, what, info or {}, 0.0))
        beats = _Heartbeat(path)
        with _held_guard:
            _held[key] = 1
        try:
            yield path
        finally:
            with _held_guard:
                _held.pop(key, None)
            beats.close()
            # the info goes BEFORE the lock: it never names a process that no longer holds it
            if _ours(holder(path)):
                with contextlib.suppress(FileNotFoundError):
                    info_file(path).unlink()
    finally:
        lock.release()
