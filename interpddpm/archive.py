"""Share trained models: pack one profile's artifact cache into an archive, unpack it elsewhere.

A chapter loads what it needs from the cache (:func:`interpddpm.profiles.cache_dir`) and trains
only what is missing, so a cache built once (``make book``) saves every other machine the
training. :func:`pack` keeps the newest checkpoint of each run that verifies (the one a chapter
loads and a resumed run continues from) and leaves out locks and quarantined files;
:func:`unpack` never overwrites a file that differs from the archive's.

Serves every chapter: the trained models of a profile, moved to another machine.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

from .artifacts import atomic_write, sha256_file
from .errors import UserError
from .profiles import cache_dir, resolve_profile_name

__all__ = ["ArchiveError", "default_archive", "pack", "unpack"]

_SKIPPED_SUFFIXES = (".lock", ".lock.info")


class ArchiveError(UserError):
    """An archive that cannot be packed or unpacked as asked."""


def default_archive(profile: str) -> Path:
    """``dist/interpddpm-artifacts-<profile>.tar.gz`` (relative to the working directory)."""
    return Path("dist") / f"interpddpm-artifacts-{resolve_profile_name(profile)}.tar.gz"


def _members(cache: Path) -> list[Path]:
    """The files of ``cache`` worth sharing, relative to it."""
    from .training import CHECKPOINT_PREFIX, latest_verified_checkpoint

    keep: list[Path] = []
    for folder, dirs, files in os.walk(cache):
        here = Path(folder)
        checkpoints = [d for d in dirs if d.startswith(CHECKPOINT_PREFIX)]
        if checkpoints:
            newest = latest_verified_checkpoint(here)
            dirs[:] = [d for d in dirs if d not in checkpoints]
            if newest is not None:
                keep += [p.relative_to(cache) for p in sorted(newest[0].rglob("*")) if p.is_file()]
        dirs[:] = sorted(d for d in dirs if not d.startswith("corrupt-"))
        keep += [
            (here / name).relative_to(cache)
            for name in sorted(files)
            if not name.endswith(_SKIPPED_SUFFIXES) and not name.startswith("corrupt-")
        ]
    return keep


def pack(profile: str = "auto", out: str | os.PathLike | None = None) -> Path:
    """Write the cache of ``profile`` to the gzipped tar ``out`` (default
    :func:`default_archive`); members are named ``<profile>/...``. Returns the archive."""
    name = resolve_profile_name(profile)
    cache = cache_dir(name)
    members = _members(cache)
    if not members:
        raise ArchiveError(
            f"the cache {cache} holds nothing to pack: build it first (make book PROFILE={name})"
        )
    out = Path(out) if out is not None else default_archive(name)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w:gz") as tar:
            for rel in members:
                tar.add(cache / rel, arcname=f"{name}/{rel.as_posix()}", recursive=False)

    atomic_write(out, write)
    umask = os.umask(0)
    os.umask(umask)
    out.chmod(0o666 & ~umask)  # a file to share, not the private temporary file it was
    return out


def unpack(archive: str | os.PathLike, base: str | os.PathLike | None = None) -> Path:
    """Extract ``archive`` (made by :func:`pack`) into the cache root ``base`` (default: the
    folder holding every profile's cache, ``_artifacts`` or ``$INTERPDDPM_CACHE``); returns the
    profile's cache folder. Files already there with the same content are kept; a file that
    differs stops the extraction before anything is written."""
    archive = Path(archive)
    if not archive.is_file():
        raise ArchiveError(f"no archive {archive}: make one with `make artifacts` (pack)")
    with tarfile.open(archive, "r:*") as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
        profiles = {Path(n).parts[0] for n in names}
        if len(profiles) != 1:
            raise ArchiveError(
                f"{archive} is not an interpddpm cache archive (profiles {profiles})"
            )
        (profile,) = profiles
        root = Path(base) if base is not None else cache_dir(profile).parent
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            tar.extractall(tmp, filter="data")
            clashes = [
                n
                for n in names
                if (root / n).exists() and sha256_file(root / n) != sha256_file(Path(tmp) / n)
            ]
            if clashes:
                raise ArchiveError(
                    f"{len(clashes)} files of {archive} differ from files already in {root} "
                    f"(first: {clashes[0]}); nothing was changed. Move {root / profile} away "
                    "or unpack into another folder (INTERPDDPM_CACHE)."
                )
            for n in names:
                target = root / n
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(Path(tmp) / n, target)
    return root / profile
