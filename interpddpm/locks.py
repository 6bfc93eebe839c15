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
A holder on another host is never broken automatically: the error says where to check.

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

__all__ = ["LockedError", "holder", "info_file", "lock_file", "locked", "pid_running"]

#: Seconds a lock may stay held while its info names a dead process (or no process) before it
#: counts as stale: a new holder writes its info within microseconds of taking the lock.
STALE_GRACE_S = 2.0
#: Seconds between two looks at a held lock while waiting.
POLL_S = 0.5

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
    return (
        info is not None
        and info.get("host") == socket.gethostname()
        and not pid_running(info.get("pid"))
    )


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
        "host": socket.gethostname(),
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
    lock = _acquire(path, wait=wait, what=what, timeout=timeout)
    try:
        _write_info(path, what)
        with _held_guard:
            _held[key] = 1
        try:
            yield path
        finally:
            with _held_guard:
                _held.pop(key, None)
            # the info goes BEFORE the lock: it never names a process that no longer holds it
            if (holder(path) or {}).get("pid") == os.getpid():
                with contextlib.suppress(FileNotFoundError):
                    info_file(path).unlink()
    finally:
        lock.release()
