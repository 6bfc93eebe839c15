"""A run's files (chapter 5): atomic safetensors checkpoints (save, list, verify, read),
resuming from the newest one that verifies, and the training log ``metrics.jsonl`` (append,
read, cut back to a resumed step).

A checkpoint folder ``checkpoint-<step>`` holds the weights, the EMA weights and the optimizer
state as safetensors, and ``state.json``: the step, the config, the noise schedule and the sha256
of every file, sealed with a digest of its own (:mod:`interpddpm.artifacts`). Checkpoints are
ordered by their step as a number; nothing a user made is deleted: a folder that fails to
verify is renamed ``corrupt-...``, and pruning renames, instead of deleting, a folder that holds
files a checkpoint does not. A write cut short leaves only ``.tmp-checkpoint-<step>``, removed
when the run resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..artifacts import atomic_write, quarantine, seal_record, sha256_file, verify_record
from ..errors import RunDirError, UserError
from .config import TrainConfig, check_resumable

CHECKPOINT_PREFIX = "checkpoint-"
#: The temp folder of a checkpoint being written (``.tmp-checkpoint-<step>``).
TMP_PREFIX = f".tmp-{CHECKPOINT_PREFIX}"
#: The files of a checkpoint (pruning deletes a folder that holds nothing else).
CHECKPOINT_FILES = frozenset(
    {"model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json"}
)


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, incomplete or corrupted, or cannot be written."""


def _flatten_optimizer(state: dict) -> tuple[dict[str, Tensor], dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "scalars": {}}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                meta["scalars"][f"{idx}.{key}"] = value
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    folder: Path,
    step: int,
    model: Any,
    optimizer: Any,
    ema: Any,
    config: TrainConfig,
    *,
    scheduler_config: Mapping[str, Any] | None = None,
    scaler: Any = None,
) -> Path:
    """Write ``folder/checkpoint-<step>`` atomically (a temp folder renamed when complete),
    with the run's noise schedule (``scheduler_config``) when given.
    The fp16 GradScaler's state (``scaler``: its scale and growth tracker) goes into
    ``state.json`` too, so that an fp16 resume is exact (issue 26).

    A write that fails (a full disk: safetensors raises its own ``SafetensorError``, not an
    ``OSError``) removes its temp folder and raises :class:`CheckpointError` in one line naming
    the checkpoint and the one a new call resumes from. A folder of that name already there is
    renamed ``corrupt-...`` (kept), never deleted."""
    from safetensors import SafetensorError

    final = folder / f"{CHECKPOINT_PREFIX}{step:07d}"
    tmp = folder / f"{TMP_PREFIX}{step:07d}"
    previous = list_checkpoints(folder)
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _write_checkpoint(tmp, step, model, optimizer, ema, config, scheduler_config, scaler)
    except (OSError, SafetensorError) as err:
        shutil.rmtree(tmp, ignore_errors=True)  # ours, and partial: frees what it took
        resume = f"it resumes from {previous[-1]}" if previous else "it starts from step 0"
        raise CheckpointError(
            f"cannot write checkpoint {final} ({type(err).__name__}: {' '.join(str(err).split())}"
            f"); free some space (or fix the folder), then run the same command again: {resume}."
        ) from err
    if final.exists():  # not one this run wrote (it resumed from an older step): keep it
        kept = quarantine(final)
        warnings.warn(
            f"{final} was already there; renamed to {kept.name} (kept) before saving step {step}",
            RuntimeWarning,
            stacklevel=2,
        )
    os.replace(tmp, final)
    return final


def _write_checkpoint(
    tmp: Path,
    step: int,
    model: Any,
    optimizer: Any,
    ema: Any,
    config: TrainConfig,
    scheduler_config: Mapping[str, Any] | None,
    scaler: Any,
) -> None:
    """The files of one checkpoint, into its temp folder ``tmp``."""
    names = [n for n, _ in model.named_parameters()]
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        tmp / "model.safetensors",
    )
    ema_state = ema.state_dict()
    shadow = ema_state.pop("shadow_params")
    save_file(
        {n: p.detach().cpu().contiguous() for n, p in zip(names, shadow, strict=True)},
        tmp / "ema.safetensors",
    )
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    files = ["model.safetensors", "ema.safetensors", "optimizer.safetensors"]
    state = {
        "step": step,
        "config": config.to_dict(),
        "model_config": dict(model.config),
        "ema": ema_state,
        "optimizer": opt_meta,
        "sha256": {f: sha256_file(tmp / f) for f in files},
    }
    if scaler is not None:  # numbers only: scale, growth/backoff factors, interval, tracker
        state["scaler"] = {k: float(v) for k, v in scaler.state_dict().items()}
    if scheduler_config is not None:  # a set in diffusers' config: sorted, so files are stable
        state["scheduler_config"] = {
            k: sorted(v) if isinstance(v, set | frozenset) or k == "_use_default_values" else v
            for k, v in scheduler_config.items()
        }
    # sealed: a digest of state.json's own values (step, config, optimizer settings) inside it
    (tmp / "state.json").write_text(seal_record(state, default=_json_default))


def _scaler_state(saved: Mapping[str, float]) -> dict[str, Any]:
    """A GradScaler state from a checkpoint's numbers (its intervals and tracker are ints)."""
    ints = {"growth_interval", "_growth_tracker"}
    return {k: int(v) if k in ints else float(v) for k, v in saved.items()}


def _json_default(o: Any) -> Any:
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step a ``checkpoint-<step>`` folder name says, or None for another name."""
    name = Path(path).name
    digits = name[len(CHECKPOINT_PREFIX) :]
    if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() and digits.isascii():
        return int(digits)
    return None


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-<step>`` folders of a run folder, oldest first: ordered by step as a
    number (``checkpoint-10000000`` after ``checkpoint-9999999``). Other names (a user's
    ``checkpoint-best``) are not checkpoints of the run: never read, pruned or deleted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def read_verified_record(
    path: str | os.PathLike, record: str, remedy: str, what: str = "checkpoint"
) -> dict[str, Any]:
    """Read the JSON ``record`` of a saved folder and check it (checkpoints, the latent
    autoencoder): its own digest (:func:`interpddpm.artifacts.seal_record`; a record saved
    before that digest existed loads with one warning) and every file it lists, present with
    its recorded sha256. Raises :class:`CheckpointError`; ``remedy`` ends the messages."""
    return verify_record(path, record, remedy, what, error=CheckpointError)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and verify a checkpoint: state.json's own digest, every file with its sha256."""
    path = Path(path)
    remedy = "training and load_run_model use the newest older checkpoint that verifies"
    state = read_verified_record(path, "state.json", remedy)
    named = checkpoint_step(path)
    if named is not None and state.get("step") != named:  # an unsealed record, edited
        raise CheckpointError(
            f"{path / 'state.json'} says step {state.get('step')!r}, but its folder is "
            f"{path.name} (edited?); {remedy}."
        )
    state["tensors"] = {name: load_file(path / name) for name in state["sha256"]}
    return state


def latest_verified_checkpoint(
    folder: str | os.PathLike, *, quarantine_bad: bool = False
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of run folder ``folder`` that verifies, with its loaded state
    (:func:`read_checkpoint`); ``None`` when the folder has no checkpoint at all.

    Each newer checkpoint that fails (corrupted, edited, or a stray empty or partial
    ``checkpoint-*`` folder) is reported with a warning naming it and why; with
    ``quarantine_bad=True`` (the trainer, which holds the run's lock) it is also renamed to
    ``corrupt-checkpoint-...`` so that the run continues past it; nothing is deleted. When no
    checkpoint verifies, :class:`CheckpointError` lists each one and why.
    """
    folder = Path(folder)
    bad: list[tuple[Path, str]] = []
    for checkpoint in reversed(list_checkpoints(folder)):
        try:
            state = read_checkpoint(checkpoint)
        except Exception as err:  # CheckpointError, or bytes safetensors cannot parse
            if not checkpoint.exists():  # pruned by a trainer meanwhile: not a fault
                continue
            bad.append((checkpoint, str(err)))
            continue
        for path, why in bad:
            moved = f"; renamed to {quarantine(path).name}" if quarantine_bad else ""
            warnings.warn(
                f"checkpoint {path} is unusable ({why}); using {checkpoint.name} instead{moved}",
                RuntimeWarning,
                stacklevel=2,
            )
        return checkpoint, state
    if bad:
        details = "\n".join(f"  {path.name}: {why}" for path, why in bad)
        raise CheckpointError(
            f"no checkpoint of {folder} verifies:\n{details}\nRestore one from a copy, or move "
            "these folders away to train from the start."
        )
    return None


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints of run folder ``folder``. A folder that
    holds files a checkpoint does not (a user's notes) is renamed ``corrupt-...`` instead,
    with a warning: nothing a user made is deleted."""
    for old in list_checkpoints(folder)[:-keep]:
        try:
            names = {p.name for p in old.iterdir()}
        except OSError:
            continue  # gone meanwhile
        try:  # the files its record lists are the trainer's too
            own = CHECKPOINT_FILES | set(json.loads((old / "state.json").read_text())["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            own = CHECKPOINT_FILES
        if names <= own:
            shutil.rmtree(old, ignore_errors=True)
            continue
        kept = quarantine(old)
        warnings.warn(
            f"{old} holds files a checkpoint does not ({', '.join(sorted(names - own))}); "
            f"renamed to {kept.name} instead of deleting it",
            RuntimeWarning,
            stacklevel=2,
        )


def remove_stale_temps(folder: Path) -> None:
    """Remove what a run killed while saving left in ``folder`` (its lock held): the temp
    folder of a checkpoint write (``.tmp-checkpoint-<step>``) and the temp file of a log
    rewrite (``.metrics.jsonl.*.tmp``), each with a warning."""
    stale = [p for p in folder.glob(f"{TMP_PREFIX}*") if p.name[len(TMP_PREFIX) :].isdigit()]
    stale += list(folder.glob(".metrics.jsonl.*.tmp"))
    for path in sorted(stale):
        warnings.warn(
            f"removing {path}: left by a run stopped while it was saving (never a checkpoint)",
            RuntimeWarning,
            stacklevel=2,
        )
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def resume(
    folder: Path,
    config: TrainConfig,
    model: Any,
    optimizer: Any,
    ema: Any,
    *,
    main_process: bool,
    scaler: Any = None,
) -> int:
    """Load the newest checkpoint of run folder ``folder`` that verifies into ``model``,
    ``optimizer`` and ``ema`` (an ``EMAModel``), after :func:`check_resumable`; return its step
    (0 when the folder has no checkpoint).

    Newer checkpoints that fail verification are reported; the main process (``main_process``)
    also renames them ``corrupt-checkpoint-*`` (:func:`latest_verified_checkpoint`) and cuts
    ``metrics.jsonl`` back to the resumed step: its lines past that step (or all, with no
    checkpoint) belong to a lost part of a run. Only one process does both: two renaming or
    rewriting at once would race. ``scaler`` (fp16's GradScaler) gets the checkpoint's scale
    and growth tracker back, when it saved them.
    """
    start = 0
    found = latest_verified_checkpoint(folder, quarantine_bad=main_process)
    if found is not None:
        checkpoint, state = found
        check_resumable(state["config"], config, checkpoint)
        model.load_state_dict(state["tensors"]["model.safetensors"])
        if "optimizer.safetensors" in state["tensors"]:
            optimizer.load_state_dict(
                _unflatten_optimizer(state["tensors"]["optimizer.safetensors"], state["optimizer"])
            )
        elif state["step"] < config.steps:  # a recorded run keeps what loading needs only
            raise CheckpointError(
                f"{checkpoint} holds weights without optimizer state (a recorded run, "
                f"hub.record_run): it loads at step {state['step']} but cannot train on to "
                f"{config.steps}. Train into another output_dir, or keep steps={state['step']}."
            )
        if scaler is not None and state.get("scaler") is not None:
            # the scale and its growth tracker as they were: the resumed steps scale, skip and
            # back off exactly as the uninterrupted run would (a checkpoint without it: the
            # scaler starts afresh, as before issue 26)
            scaler.load_state_dict(_scaler_state(state["scaler"]))
        names = [n for n, _ in model.named_parameters()]
        ema_tensors = state["tensors"]["ema.safetensors"]
        ema.load_state_dict({**state["ema"], "shadow_params": [ema_tensors[n] for n in names]})
        start = state["step"]
    if main_process:
        _truncate_metrics(folder / "metrics.jsonl", start)
    return start


# ------------------------------------------------------------------------------------------
# The training log
# ------------------------------------------------------------------------------------------
def append_metrics(
    path: Path,
    *,
    step: int,
    loss: float,
    loss_ddpm: float,
    loss_ie: float | None,
    loss_teacher: float | None,
    lam: float,
    lr: float,
    grad_norm: float | None,
    rows: int,
    seconds: float,
    sec_per_step: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Append one record (one JSON line) to a run's ``metrics.jsonl`` and return it: the step
    reached, the losses of the last step (``loss_ie`` None for a plain run; ``loss_teacher``
    only with a teacher term), ``lambda``, the lr, the gradient norm before clipping, the
    forward rows of the global batch, the seconds since the call began and per step; then
    ``extra`` (a CPU run's torch ``threads`` and the ``other_load`` its choice saw)."""
    record = {
        "step": step,
        "loss": loss,
        "loss_ddpm": loss_ddpm,
        "loss_ie": loss_ie,
        **({} if loss_teacher is None else {"loss_teacher": loss_teacher}),
        "lambda": lam,
        "lr": lr,
        "grad_norm": grad_norm,
        "rows": rows,
        "seconds": seconds,
        "sec_per_step": sec_per_step,
        **(extra or {}),
    }
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as err:  # a full disk: its message names no file
        raise RunDirError(
            f"cannot append to {path} ({err.strerror or err}); free some space (or fix the "
            "folder), then run the same command again: it resumes from its last checkpoint."
        ) from err
    return record


class MetricsLogError(UserError, RuntimeError):
    """A line of a run's ``metrics.jsonl`` that is not a JSON record, before its last line."""


def _metrics_records(path: Path) -> list[tuple[int, str, dict[str, Any] | None]]:
    """``(line number, line, record or None when undecodable)`` of each non-empty line."""
    out = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            record = None
        out.append((number, line, record))
    return out


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (a run folder or the file), oldest first.

    A torn LAST line (a write cut short by a crash, or one still being written) is left out
    with a warning naming the file and line; an undecodable line before it raises
    :class:`MetricsLogError` naming the file and line (resuming the run repairs both).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = _metrics_records(path)
    for i, (number, line, record) in enumerate(rows):
        if record is not None:
            continue
        if i < len(rows) - 1:
            raise MetricsLogError(
                f"{path}, line {number}: not a JSON record ({line[:80]!r}); the log is "
                "corrupted. Resuming the run (train) drops such lines; or delete that line."
            )
        warnings.warn(
            f"{path}, line {number}: dropping a torn last line ({line[:80]!r})",
            RuntimeWarning,
            stacklevel=2,
        )
    return [record for _, _, record in rows if record is not None]


def _truncate_metrics(path: Path, step: int) -> None:
    """Repair the log for a run resumed at ``step``: drop the lines past it (they belong to the
    lost part of the run) and every undecodable line (a write torn by a crash), the latter with
    a warning naming the file and line number."""
    if not path.is_file():
        return
    keep = []
    for number, line, record in _metrics_records(path):
        if record is None or not isinstance(record.get("step"), int):
            warnings.warn(
                f"{path}, line {number}: dropping an undecodable line (a torn write?): "
                f"{line[:80]!r}",
                RuntimeWarning,
                stacklevel=4,
            )
        elif record["step"] <= step:
            keep.append(line)
    text = "".join(line + "\n" for line in keep)
    atomic_write(path, lambda tmp: tmp.write_text(text))
