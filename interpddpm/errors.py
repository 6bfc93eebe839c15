"""The errors a user can fix by changing an input (a config key, a path, a file).

Every such error derives from :class:`UserError` (a ``ValueError``): the command line prints
its message on one line (``error: ...``) and exits with status 2, without a traceback unless
``interpddpm --debug`` is given. The classes live where their subject lives and stay importable
from there (``interpddpm.training.ConfigError``, ``interpddpm.training.CheckpointError``, ...);
this module only holds the base and the errors shared by several modules. No heavy imports:
the command line imports it before anything else.

Serves every chapter: the one-line errors of bad input.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

__all__ = ["RunDirError", "UserError", "check_writable_dir"]


class UserError(ValueError):
    """An input the user can fix; its message says what is wrong and what to do."""


class RunDirError(UserError):
    """A folder that should receive results cannot be created or written."""


#: The errno values of a full disk (or a quota used up).
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _no_space(path: Path, what: str, err: OSError) -> RunDirError:
    return RunDirError(
        f"{what} {str(path)!r} has no space left ({err.strerror or err}); free some space "
        "there, or choose another folder."
    )


def check_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create folder ``path`` (with its parents) and check that a file can be written in it.

    Raises :class:`RunDirError` naming the path when it is an existing file, lies below a file,
    or cannot be created or written (read-only, no permission, no space left), so that a long
    job fails at its start rather than when it first saves.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise RunDirError(
            f"{what} {str(path)!r} is an existing file, not a folder; choose another path or "
            "remove that file."
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise RunDirError(
            f"{what} {str(path)!r} cannot be created: a part of it is a file "
            f"({err.filename or err}); choose another path."
        ) from err
    except OSError as err:
        if err.errno in _NO_SPACE:
            raise _no_space(path, what, err) from err
        raise RunDirError(
            f"{what} {str(path)!r} cannot be created ({err.strerror or err}); choose a folder "
            "you can write to."
        ) from err
    fd = probe = None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        # one byte written and synced: an empty file can be created on a full disk
        os.write(fd, b"0")
        os.fsync(fd)
    except OSError as err:
        if err.errno in _NO_SPACE:
            raise _no_space(path, what, err) from err
        raise RunDirError(
            f"{what} {str(path)!r} is not writable ({err.strerror or err}); choose a folder "
            "you can write to, or fix its permissions."
        ) from err
    finally:
        if fd is not None:
            os.close(fd)
        if probe is not None:
            os.unlink(probe)
    return path
