"""The training loop (chapter 5): :func:`train`, which trains or resumes a run with accelerate,
and :func:`interruption_report`, the line printed when a run is stopped.

Runs through accelerate (mixed precision on GPU, several processes without code changes), keeps
an EMA of the weights with diffusers' ``EMAModel`` and saves atomic safetensors checkpoints
(every ``checkpoint_every`` steps and, with ``checkpoint_minutes``, after that much wall time).
Every random draw of step ``s`` (batch indices, noise, timesteps, baseline, dropout) is derived
from ``(seed, s, process)``, so a run resumed from a checkpoint ends with exactly the weights of
an uninterrupted run. With several processes, each draws the noise, timesteps, coalitions and
fills of the whole global batch (as process 0) and keeps its slice
(:func:`interpddpm.training.losses.training_losses`): the run then matches a one-process run of
the same global batch up to float32 rounding (dropout alone stays per process).

EMA: ``EMAModel`` always warms its decay up; with ``ema_warmup=True`` (default) the decay is
``1 - (1 + step)^(-2/3)`` capped at ``ema_decay`` (about 0.999 after 30k steps), so short CPU
runs still get a useful average; ``ema_warmup=False`` gives diffusers' other ramp
``(1 + step) / (10 + step)``, also capped at ``ema_decay``: a constant 0.9999 never happens early.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from .. import pace, threads
from ..devices import check_precision, default_device, place
from ..errors import UserError
from ..locks import locked
from .checkpoints import (
    append_metrics,
    list_checkpoints,
    prune_checkpoints,
    read_metrics,
    remove_stale_temps,
    resume,
    save_checkpoint,
)
from .codec import (
    Codec,
    PixelCodec,
    check_codec,
    check_memory,
    check_startable,
    fetch_batch,
    load_run_model,
    training_dataset,
)
from .config import ConfigError, TrainConfig
from .losses import batch_indices, lr_at, step_seed, trainable_parameters, training_losses


class DivergedError(UserError, FloatingPointError):
    """The loss became inf or NaN (the learning rate or lambda is too high for the run)."""


#: The wall clock of :func:`train`'s timed checkpoints (tests replace it).
_clock = time.monotonic


def _accelerator(mixed_precision: str, cpu: bool) -> Any:
    """An :class:`accelerate.Accelerator`. Its state is a per-process singleton that refuses a
    second precision, yet one notebook kernel may train runs of several; the precision part is
    then reset (the distributed part, ``PartialState``, is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    current = AcceleratorState._shared_state.get("_mixed_precision")
    if current is not None and current != mixed_precision:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


@dataclasses.dataclass
class TrainResult:
    output_dir: Path
    step: int
    metrics_file: Path
    seconds: float
    #: the codec the run was trained with (None: pixels)
    codec: Any = dataclasses.field(default=None, repr=False, compare=False)

    def model(self, ema: bool = True, device: str | torch.device | None = None) -> Any:
        """The run's UNet on ``device`` (default: the GPU when there is one), see
        :func:`load_run_model`."""
        return load_run_model(self.output_dir, ema=ema, device=device, codec=self.codec)

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics_file)


def select_cuda_device(device: str | torch.device) -> None:
    """Make ``cuda:N`` the current CUDA device of a single process, so that accelerate trains
    where sampling runs (it takes the current device; ``INTERPDDPM_DEVICE=cuda:1`` would
    otherwise train on cuda:0). Launched processes keep accelerate's per-rank choice."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None and "LOCAL_RANK" not in os.environ:
        torch.cuda.set_device(device.index)


def train(
    config: TrainConfig,
    *,
    stop_after: int | None = None,
    progress: bool = True,
    device: str | None = None,
    codec: Codec | None = None,
    dataset: Any = None,
) -> TrainResult:
    """Train (or resume) the run in ``config.output_dir`` up to ``config.steps`` steps.

    ``codec`` (:class:`Codec`) is the diffusion space: None for pixels (:class:`PixelCodec`);
    a latent run passes its autoencoder's (:func:`interpddpm.latent.train` does). ``dataset``
    is the data ``config.dataset`` names, already built (indexable, or with ``batch(indices)``,
    giving images in [-1, 1] and label maps); None builds it (:func:`training_dataset`).
    ``device`` defaults to :func:`interpddpm.devices.default_device`.

    Resumes from the newest valid checkpoint there, if any, after checking that its config
    matches (only ``steps`` and bookkeeping keys may change). ``stop_after`` ends this call after
    that many steps (a checkpoint is written), e.g. to split a long run.

    The run folder is locked while training (:mod:`interpddpm.locks`): a second trainer on it
    fails at once with :class:`~interpddpm.locks.LockedError` naming the first one's pid.
    """
    if dataset is not None and len(dataset) == 0:
        raise ConfigError("dataset is empty: give the run at least one image.")
    n_items = len(dataset) if dataset is not None else None
    if dataset is None and config.dataset == "toyfaces":
        n_items = config.dataset_length
    # sizes this machine cannot hold, before anything is allocated or created
    check_memory(config, default_device() if device is None else device, n_items)
    out = check_startable(config, stop_after)  # fails fast on what the user can fix
    codec = check_codec(config, codec)
    # under `accelerate launch` the processes of one run share the folder: rank 0 holds the lock
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    guard = locked(out, wait=False, what="training run") if rank == 0 else contextlib.nullcontext()
    with guard:
        return _train_locked(
            config,
            out,
            stop_after=stop_after,
            progress=progress,
            device=device,
            codec=codec,
            dataset=dataset,
        )


def _train_locked(
    config: TrainConfig,
    out: Path,
    *,
    stop_after: int | None,
    progress: bool,
    device: str | None,
    codec: Codec,
    dataset: Any,
) -> TrainResult:
    """The body of :func:`train`, run while it holds the lock of the run folder ``out``."""
    from diffusers.training_utils import EMAModel

    device = str(default_device()) if device is None else device
    cpu = torch.device(device).type == "cpu"
    select_cuda_device(device)
    accelerator = _accelerator(config.mixed_precision, cpu)
    rank, world = accelerator.process_index, accelerator.num_processes
    dataset = training_dataset(config) if dataset is None else dataset
    noise_scheduler = codec.noise_scheduler(config)
    codec = codec.to(accelerator.device)  # a latent codec encodes where the model trains

    with torch.random.fork_rng(devices=[]):  # keep the caller's global RNG untouched
        torch.manual_seed(config.seed)
        model = codec.initial_model(config)
    # a new or pretrained UNet through devices.place too (accelerate's device is the same)
    model = place(model, accelerator.device)
    teacher = None
    if config.teacher_weight > 0:  # the frozen initial model (loaded before any resume)
        import copy

        teacher = copy.deepcopy(model).eval().requires_grad_(False).to(accelerator.device)
    model.train()
    optimizer = torch.optim.AdamW(
        trainable_parameters(model, config.trainable),
        lr=config.lr,
        betas=config.adam_betas,
        weight_decay=config.weight_decay,
    )
    ema = EMAModel(
        model.parameters(),
        decay=config.ema_decay,
        use_ema_warmup=config.ema_warmup,
        model_cls=type(model),
        model_config=model.config,
    )
    if accelerator.is_main_process:  # what a run stopped while saving left (we hold the lock)
        remove_stale_temps(out)
    # the newest checkpoint that verifies (newer bad ones are renamed corrupt-checkpoint-*), the
    # log cut back to it
    start = resume(
        out,
        config,
        model,
        optimizer,
        ema,
        main_process=accelerator.is_main_process,
        scaler=getattr(accelerator, "scaler", None),  # fp16's GradScaler (else None)
    )
    accelerator.wait_for_everyone()
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(accelerator.device)
    end = config.steps if stop_after is None else min(config.steps, start + stop_after)
    if start < end:  # a precision this device cannot train in (a finished run still loads)
        check_precision(config.mixed_precision, device)
    if accelerator.is_main_process and 0 < start < end:
        print(f"resuming {out} from step {start} of {config.steps}", flush=True)

    bar = None
    if progress and accelerator.is_main_process:
        from tqdm import tqdm  # plain tqdm renders in the static book

        bar = tqdm(total=config.steps, initial=start, desc="train", dynamic_ncols=True)
    metrics_file = out / "metrics.jsonl"
    # the chapter's estimate against this GPU's real pace (when the chapter registered one)
    timer = pace.watch(out, start, end) if accelerator.is_main_process else None
    auto_threads = cpu and world == 1  # one process on the CPU: its threads follow the load
    if auto_threads:
        threads.choose_threads(f"training run {out.name} (steps {start}-{end})")
    t0 = t_log = time.perf_counter()
    saved_at = _clock()  # wall time of the last checkpoint, or of this call's start
    step = step_log = start
    while step < end:
        if auto_threads:
            threads.recheck()
        # every process seeds as process 0 and draws the whole global batch's randomness
        # (training_losses keeps its slice): the run does not depend on the number of processes
        gen = torch.Generator().manual_seed(step_seed(config.seed, step))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        idx = batch_indices(step, config, len(dataset), rank, world)
        images, labels = fetch_batch(dataset, idx)
        # into the diffusion space (latents and latent-grid labels; pixels pass through)
        images, labels = codec.encode_batch(images, labels, config.concepts, keys=idx)
        images = images.to(accelerator.device)
        labels = labels.to(accelerator.device) if labels is not None else None
        neighbour = None  # the "shuffle" baseline of our first L_IE sample reads the sample
        if (  # before it in the global batch: the previous process's last one
            world > 1
            and config.interpretable
            and config.baseline == "shuffle"
            and rank * config.batch_size < config.ie_sub_batch
        ):
            nb_idx = batch_indices(step, config, len(dataset), (rank - 1) % world, world)[-1:]
            neighbour, _ = fetch_batch(dataset, nb_idx)
            neighbour, _ = codec.encode_batch(neighbour, None, keys=nb_idx)
            neighbour = neighbour.to(accelerator.device)
        with torch.random.fork_rng(devices=[]):
            # dropout stays per process: runs with dropout > 0 (the "paper" preset) are equal
            # across process counts only in distribution
            torch.manual_seed(step_seed(config.seed, step, rank, stream=2))
            with accelerator.autocast():
                losses = training_losses(
                    model,
                    noise_scheduler,
                    images,
                    labels,
                    config,
                    step,
                    gen,
                    rank=rank,
                    world=world,
                    neighbour=neighbour,
                    teacher=teacher,
                )
            accelerator.backward(losses.total)
        grad_norm = None
        if accelerator.sync_gradients and config.grad_clip > 0:
            grad_norm = accelerator.clip_grad_norm_(
                [q for q in model.parameters() if q.requires_grad], config.grad_clip
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(accelerator.unwrap_model(model).parameters())
        step += 1
        loss, loss_ddpm = float(losses.total.detach()), float(losses.ddpm)
        loss_ie, rows = (None if losses.ie is None else float(losses.ie)), losses.rows
        if world > 1:  # the global batch's losses: the processes' shares average to them
            shares = torch.tensor([loss, loss_ddpm, loss_ie or 0.0, rows], dtype=torch.float64)
            shares = accelerator.reduce(shares.to(accelerator.device), "sum").cpu()
            loss, loss_ddpm = float(shares[0]) / world, float(shares[1]) / world
            loss_ie = None if loss_ie is None else float(shares[2]) / world
            rows = int(shares[3])  # forward rows of the whole global batch
        if not math.isfinite(loss):  # the same on every process: all stop together
            saved = list_checkpoints(out)
            where = f"{saved[-1]} is intact" if saved else f"no checkpoint yet in {out}"
            raise DivergedError(
                f"loss became {loss} at step {step}; lower lr or lambda_start ({where})."
            )
        if accelerator.is_main_process and (step % config.log_every == 0 or step == end):
            append_metrics(
                metrics_file,
                step=step,
                loss=loss,
                loss_ddpm=loss_ddpm,
                loss_ie=loss_ie,
                loss_teacher=None if losses.teacher is None else float(losses.teacher),
                lam=losses.lam,
                lr=lr_at(step - 1, config),
                grad_norm=None if grad_norm is None else float(grad_norm),
                rows=rows,
                seconds=time.perf_counter() - t0,
                sec_per_step=(time.perf_counter() - t_log) / (step - step_log),
                extra=threads.log_fields() if auto_threads else None,  # threads, other_load
            )
            t_log, step_log = time.perf_counter(), step
        if bar is not None:
            bar.update(1)
            postfix = {"ddpm": f"{loss_ddpm:.4f}"}
            if loss_ie is not None:
                postfix["ie"] = f"{loss_ie:.2e}"
            bar.set_postfix(postfix, refresh=False)
        if timer is not None:  # before the checkpoint: a save is not a training step
            timer.tick(step)
        due = step % config.checkpoint_every == 0 or step == end
        if not due and config.checkpoint_minutes is not None and accelerator.is_main_process:
            # a checkpoint holds the state after a whole step: resuming from it is exact too
            due = _clock() - saved_at >= 60 * config.checkpoint_minutes
        if accelerator.is_main_process and due:
            save_checkpoint(
                out,
                step,
                accelerator.unwrap_model(model),
                optimizer,
                ema,
                config,
                scheduler_config=noise_scheduler.config,
                scaler=getattr(accelerator, "scaler", None),
            )
            prune_checkpoints(out, config.keep_checkpoints)
            saved_at = _clock()  # the interval counts from the written checkpoint
        accelerator.wait_for_everyone()
    if bar is not None:
        bar.close()
    codec = None if isinstance(codec, PixelCodec) else codec
    return TrainResult(out, step, metrics_file, time.perf_counter() - t0, codec)


def interruption_report(error: BaseException, config: TrainConfig) -> str:
    """One line for a :func:`train` call stopped by ``error`` (Ctrl-C: ``KeyboardInterrupt``):
    the step it had reached and the checkpoint a new call resumes from.

    No checkpoint is written on interrupt: the signal may land between the optimizer's and the
    EMA's updates of a step, and a checkpoint of that state would break the exact resume. The
    step is read from the frame of train's body (``_train_locked``) in the traceback (its local
    ``step``: the steps done).
    """
    step = None
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is _train_locked.__code__:  # train's body (it holds the lock)
            step = tb.tb_frame.f_locals.get("step")
        tb = tb.tb_next
    checkpoints = list_checkpoints(config.output_dir)
    where = (
        f"last checkpoint {checkpoints[-1]}"
        if checkpoints
        else f"no checkpoint yet in {config.output_dir}"
    )
    reached = f"stopped at step {step}" if isinstance(step, int) else "stopped before training"
    return f"{reached}, {where} (run the same command again to resume from it)"
