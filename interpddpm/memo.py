"""Measurements cached under a key of what they measure, and recorded with the book.

A measurement of a model (its FID sample set, its locality protocol) is a pure function of the
model's weights, the parser's weights and the protocol's settings. :func:`cached` saves it once
under a digest of those (``<folder>/<kind>-<key digest>.pt``, written atomically with its sha256
by :mod:`interpddpm.artifacts`) and answers the same request from the file afterwards. Beside
each entry a ``.key.json`` names the weights digests it depends on, so that
:func:`record` can pick the entries of the models the book records (its comparison models,
:func:`interpddpm.runs.recorded_source`) and keep them with the book, and :func:`adopt` copies
them into a cache on another machine: the cpu book then loads the recorded comparison models'
samples and locality instead of measuring them again (issue 29), and measures live only the
models it teaches by training. A key that no recorded entry matches (another model, another
setting) is measured as before, so a recorded entry can be stale but never wrong.

Serves :func:`interpddpm.realism.sample_images` and :func:`interpddpm.metrics.generate_pairs` /
:func:`interpddpm.metrics.locality_protocol` (chapters 05, 07, 08 and 12).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from .artifacts import json_digest, read_cached, read_tensors, write_tensors
from .locks import locked

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "KEY_SUFFIX",
    "adopt",
    "cached",
    "entry_path",
    "record",
    "tensors_digest",
    "weights_digest",
]

T = TypeVar("T")


def weights_digest(model: nn.Module) -> str:
    """sha256 of a model's parameters and buffers (names, shapes, dtypes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def tensors_digest(*tensors: torch.Tensor | None) -> str:
    """sha256 of tensors (shapes, dtypes and values; None counts as absent): the key of the
    data a measurement reads."""
    digest = hashlib.sha256()
    for t in tensors:
        if t is None:
            digest.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        digest.update(f"{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


#: The sidecar of an entry ``<kind>-<digest>.pt``: ``<kind>-<digest>.pt.key.json``.
KEY_SUFFIX = ".key.json"


def entry_path(folder: str | os.PathLike, kind: str, parts: Sequence[Any]) -> Path:
    """Where :func:`cached` keeps the entry of ``kind`` under the key ``parts`` (JSON)."""
    return Path(folder) / f"{kind}-{json_digest(list(parts), 16)}.pt"


def cached(
    folder: str | os.PathLike | None,
    kind: str,
    parts: Sequence[Any],
    compute: Callable[[], T],
    *,
    digests: Sequence[str],
    what: str,
    valid: Callable[[Any], bool] = lambda _: True,
) -> T:
    """``compute()``, saved in ``folder`` under the key ``parts`` (or not saved: ``folder``
    None). A saved entry that ``valid`` accepts is returned without computing; a corrupted
    one is recomputed with a warning (:func:`interpddpm.artifacts.read_cached`).

    ``digests``: the weights digests (:func:`interpddpm.memo.weights_digest`) of every
    network the result depends on, also part of the key; :func:`record` selects entries by
    them. ``compute`` must return tensors, numbers, strings or containers of them
    (``torch.load(weights_only=True)`` reads them back).
    """
    if folder is None:
        return compute()
    path = entry_path(folder, kind, parts)
    # locked: a second process asking for the same entry waits and reuses it
    with locked(path, wait=True, what=what):
        saved = read_cached(path, read_tensors, what=what)
        if saved is not None and valid(saved):
            return saved
        result = compute()
        write_tensors(path, result)  # atomic, with its digest
        side = {"kind": kind, "parts": list(parts), "digests": sorted(set(digests))}
        Path(f"{path}{KEY_SUFFIX}").write_text(json.dumps(side, indent=1) + "\n")
        return result


def _entry_files(entry: Path) -> list[Path]:
    # the sidecar and the digest first, the entry last: a folder holding the entry holds the rest
    return [Path(f"{entry}{KEY_SUFFIX}"), Path(f"{entry}.sha256"), entry]


def _copy_entry(entry: Path, dest_folder: Path) -> None:
    dest_folder.mkdir(parents=True, exist_ok=True)
    for src in _entry_files(entry):
        tmp = dest_folder / f".{src.name}.tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest_folder / src.name)


def _entries(folder: Path) -> Iterable[tuple[Path, dict[str, Any]]]:
    """The complete entries of ``folder`` and their sidecars."""
    for side in sorted(folder.glob(f"*.pt{KEY_SUFFIX}")):
        entry = Path(str(side)[: -len(KEY_SUFFIX)])
        if not (entry.is_file() and Path(f"{entry}.sha256").is_file()):
            continue
        try:
            yield entry, json.loads(side.read_text())
        except (OSError, ValueError):
            continue


def record(cache: str | os.PathLike, dest: str | os.PathLike, digests: Iterable[str]) -> list[Path]:
    """Copy the entries of the cache folder ``cache`` that depend only on networks whose
    weights digests are in ``digests`` (the recorded runs and the recorded parser) into
    ``dest``; entries already there are kept. Returns the copies made."""
    allowed, made = set(digests), []
    cache, dest = Path(cache), Path(dest)
    for entry, side in _entries(cache):
        needs = set(side.get("digests") or ())
        if needs and needs <= allowed and not (dest / entry.name).exists():
            _copy_entry(entry, dest)
            made.append(dest / entry.name)
    return made


def adopt(recorded: str | os.PathLike, cache: str | os.PathLike) -> int:
    """Copy the recorded entries of folder ``recorded`` that ``cache`` lacks into ``cache``
    (an entry the cache already has, measured here, is never replaced); their digests are
    checked when they are read. Returns how many were copied."""
    recorded, cache = Path(recorded), Path(cache)
    if not recorded.is_dir():
        return 0
    todo = [e for e, _ in _entries(recorded) if not (cache / e.name).exists()]
    if not todo:
        return 0
    with locked(cache, wait=True, what="recorded measurements (memo.adopt)"):
        for entry in todo:
            if not (cache / entry.name).exists():
                _copy_entry(entry, cache)
    return len(todo)
