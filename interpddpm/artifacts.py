"""Integrity of what is saved: digests, atomic writes and verified reads, in one place.

Two kinds of saved things:

- **Cache entries** (one file each: the ablation scores, FID sample sets, the face parser, the
  preprocessed datasets): written with :func:`write_artifact` (through a temporary file renamed
  over the target, plus a ``<file>.sha256`` digest beside it, in ``sha256sum`` format) and read
  with :func:`read_artifact`, which checks the digest first. :func:`read_cached` turns a missing
  entry into ``None`` and a corrupted one into a warning and ``None``: the caller recomputes it.
  :func:`write_json` / :func:`read_json` and :func:`write_tensors` / :func:`read_tensors` are
  the pairs for JSON and tensors.
- **Recorded folders** (training checkpoints, the latent autoencoder): a JSON record lists the
  sha256 of every file, and :func:`seal_record` stores a digest of the record's own canonical
  JSON inside it (key :data:`RECORD_DIGEST`), so that an edited step or optimizer setting is
  caught too. :func:`verify_record` checks both. Records written before that digest existed
  still load, with one warning each.

Corrupted user data (a checkpoint) is never recomputed here: the trainer falls back to an older
checkpoint that verifies (:func:`interpddpm.training.latest_verified_checkpoint`).

Serves every chapter: whatever a chapter saves goes through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .errors import UserError

__all__ = [
    "RECORD_DIGEST",
    "ArtifactError",
    "atomic_write",
    "digest_file",
    "json_digest",
    "quarantine",
    "read_artifact",
    "read_cached",
    "read_json",
    "read_tensors",
    "seal_record",
    "sha256_file",
    "verify_artifact",
    "verify_record",
    "write_artifact",
    "write_json",
    "write_tensors",
]

T = TypeVar("T")

#: The key of a record's own digest (sha256 of its canonical JSON without this key).
RECORD_DIGEST = "record_sha256"

_warned_unsealed: set[str] = set()


class ArtifactError(UserError, RuntimeError):
    """A saved file has no digest, or its bytes do not match the digest recorded beside it."""


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def json_digest(payload: Any, length: int | None = None) -> str:
    """sha256 (hex, the first ``length`` characters) of ``payload`` as canonical JSON: the one
    key function of every cache here (run folders, score caches, sample sets, autoencoders)."""
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def digest_file(path: str | os.PathLike) -> Path:
    """Where the digest of ``path`` is kept: ``<path>.sha256`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file in ``path``'s folder, then rename it over
    ``path``: readers see the old file or the complete new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_artifact(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write a cache entry: ``write(tmp)`` fills a temporary file, its sha256 goes to
    ``<path>.sha256`` and the file is renamed over ``path`` (both renames atomic; a crash in
    between leaves a digest that does not match, which :func:`read_cached` recomputes)."""
    path = Path(path)

    def write_and_digest(tmp: Path) -> None:
        write(tmp)
        line = f"{sha256_file(tmp)}  {path.name}\n"  # the format of `sha256sum -c`
        atomic_write(digest_file(path), lambda d: d.write_text(line))

    return atomic_write(path, write_and_digest)


def verify_artifact(path: str | os.PathLike) -> Path:
    """Check ``path`` against ``<path>.sha256``; :class:`ArtifactError` says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist.")
    try:
        recorded = digest_file(path).read_text().split()[0]
    except (OSError, IndexError) as err:
        raise ArtifactError(
            f"{path} has no digest ({digest_file(path).name} is missing or empty): it was not "
            "written by this version of interpddpm, or its writer was interrupted"
        ) from err
    if sha256_file(path) != recorded:
        raise ArtifactError(
            f"{path} does not match its recorded sha256 ({digest_file(path).name}): corrupted "
            "or modified"
        )
    return path


def read_artifact(path: str | os.PathLike, read: Callable[[Path], T]) -> T:
    """``read(path)`` after checking ``path`` against its digest (:func:`verify_artifact`).

    Writers of the same path are kept out by the caller's lock (:mod:`interpddpm.locks`)."""
    return read(verify_artifact(path))


def read_cached(path: str | os.PathLike, read: Callable[[Path], T], *, what: str) -> T | None:
    """A cache entry, or ``None`` to say "compute it": when ``path`` is missing, and when it is
    corrupted (no digest, a digest mismatch, or ``read`` fails), the latter with a warning
    ``cached <what> <path> is unusable (<why>); recomputing it``."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return read_artifact(path, read)
    except Exception as err:  # a digest mismatch, or bytes the reader cannot parse
        warnings.warn(
            f"cached {what} {path} is unusable ({err}); recomputing it",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """A JSON cache entry (with its digest)."""
    text = json.dumps(data, indent=1) + "\n"
    return write_artifact(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path) -> Any:
    """The reader of :func:`write_json` entries (use with :func:`read_artifact`)."""
    return json.loads(path.read_text())


def write_tensors(path: str | os.PathLike, obj: Any) -> Path:
    """A ``torch.save`` cache entry (tensors, or containers of tensors), with its digest."""
    import torch

    return write_artifact(path, lambda tmp: torch.save(obj, tmp))


def read_tensors(path: Path) -> Any:
    """The reader of :func:`write_tensors` entries (``weights_only``: no code is unpickled)."""
    import torch

    return torch.load(path, weights_only=True)


# ------------------------------------------------------------------------------------------
# Recorded folders (checkpoints, the latent autoencoder)
# ------------------------------------------------------------------------------------------
def seal_record(record: dict[str, Any], default: Callable[[Any], Any] | None = None) -> str:
    """The JSON text of ``record`` with :data:`RECORD_DIGEST`: the sha256 of the record's own
    canonical JSON (``default`` converts what JSON lacks, as in :func:`json.dumps`)."""
    plain = json.loads(json.dumps(record, default=default))
    plain.pop(RECORD_DIGEST, None)
    return json.dumps({**plain, RECORD_DIGEST: json_digest(plain)}, indent=1)


def verify_record(
    path: str | os.PathLike,
    record: str,
    remedy: str,
    what: str,
    error: type[Exception] = ArtifactError,
) -> dict[str, Any]:
    """Read the JSON ``record`` of folder ``path`` and check it: its own digest
    (:data:`RECORD_DIGEST`, removed from the result) and every file it lists under ``sha256``.

    Raises ``error`` naming the folder, the file and why, ending with ``remedy``. A record
    without its own digest (written by an older interpddpm) is accepted with one warning.
    """
    path = Path(path)
    record_file = path / record
    if not record_file.is_file():
        raise error(f"{path} is not a {what} (no {record}); it may be incomplete.")
    try:
        data = json.loads(record_file.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("sha256"), dict):
            raise ValueError("no sha256 table")
    except (ValueError, OSError) as e:
        raise error(f"{record_file} is corrupted ({e}); {remedy}.") from e
    claimed = data.pop(RECORD_DIGEST, None)
    if claimed is None:
        if str(record_file) not in _warned_unsealed:
            _warned_unsealed.add(str(record_file))
            warnings.warn(
                f"{record_file} has no {RECORD_DIGEST} (written by an older interpddpm): its "
                "files are verified, its own values (step, settings) cannot be",
                RuntimeWarning,
                stacklevel=3,
            )
    elif json_digest(data) != claimed:
        raise error(
            f"{record_file} does not match its {RECORD_DIGEST} (edited or corrupted); {remedy}."
        )
    for name, digest in data["sha256"].items():
        f = path / name
        if not f.is_file():
            raise error(f"{path}: {name} is missing; {remedy}.")
        if sha256_file(f) != digest:
            raise error(
                f"{path}: {name} does not match its recorded sha256 (corrupted or modified); "
                f"{remedy}."
            )
    return data


def quarantine(path: str | os.PathLike, prefix: str = "corrupt-") -> Path:
    """Rename ``path`` to ``<prefix><name>`` (``-2``, ``-3``, ... if taken) in its folder, so
    that it is out of the way but nothing in it is lost; returns the new path."""
    path = Path(path)
    target = path.with_name(prefix + path.name)
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{prefix}{path.name}-{n}")
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, target)
    return target
