"""Deterministic DDIM sampling (eta = 0) and DDIM inversion, with diffusers' schedulers.

The paper trains a DDPM (forward process (1), reverse process (2), ancestral step (3)) and samples
with DDIM at eta = 0, so an image is a deterministic function x_0 = G(x_T) of its noise: with
alpha_bar_t the cumulative product of (1 - beta_t),

    x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) / sqrt(alpha_bar_t)
    x_{t'} = sqrt(alpha_bar_{t'}) x0_hat + sqrt(1 - alpha_bar_{t'}) eps_theta(x_t, t),   t' < t.

DDIM inversion, the paper's eq. (10), runs the same update upwards (t' > t) with eps_theta
evaluated at the target step, mapping a real image x_0 to a noise x_T that regenerates it.
The update itself is diffusers' ``DDIMScheduler.step`` / ``DDIMInverseScheduler.step``; this
module only drives them, so :func:`ddim_sample` equals ``DDIMPipeline`` for the same UNet,
scheduler config, number of steps and x_T (before the pipeline's map to [0, 1]).

Which scheduler ("the model's training scheduler"): ``scheduler`` may be any diffusers scheduler
(``DDPMScheduler``, ``DDIMScheduler``, ...) or its config; only its config is used, converted with
``DDIMScheduler.from_config`` exactly as ``DDIMPipeline`` does. When it is None, the model's
``scheduler_config`` attribute is used (set by :mod:`interpddpm.models` loaders), else the
default ``DDPMScheduler()`` config: 1000 steps, linear betas from 1e-4 to 0.02 (Ho et al. 2020).

Pitfall: diffusers' schedulers default to ``clip_sample=True`` (x0_hat clamped to [-1, 1]). That
is what ``DDIMPipeline`` does and what :func:`ddim_sample` reproduces, but the clamp is not
invertible: to regenerate an inverted image use ``ddim_sample(..., clip_sample=False)``
(:func:`ddim_invert` always runs without clipping) with the same steps and scheduler.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler

__all__ = [
    "ddim_invert",
    "ddim_sample",
    "ddim_sample_batched",
    "ddim_scheduler",
    "model_noise",
    "training_scheduler_config",
]

SchedulerLike = Any  # a diffusers scheduler (anything with .config) or a config mapping
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]


def training_scheduler_config(model: Any = None, scheduler: SchedulerLike = None) -> dict:
    """The training scheduler config used for ``model``: see the module doc for the order."""
    if scheduler is None:
        scheduler = getattr(model, "scheduler_config", None)
    if scheduler is None:
        return dict(DDPMScheduler().config)
    if isinstance(scheduler, Mapping):
        return dict(scheduler)
    config = getattr(scheduler, "config", None)
    if not isinstance(config, Mapping):
        raise TypeError(
            "scheduler must be a diffusers scheduler or a scheduler config mapping, "
            f"got {type(scheduler).__name__}."
        )
    return dict(config)


def ddim_scheduler(
    model: Any = None, scheduler: SchedulerLike = None, *, clip_sample: bool | None = None
) -> DDIMScheduler:
    """A fresh ``DDIMScheduler`` built from the training scheduler config (as ``DDIMPipeline``)."""
    overrides = {} if clip_sample is None else {"clip_sample": bool(clip_sample)}
    return DDIMScheduler.from_config(training_scheduler_config(model, scheduler), **overrides)


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters(), None)
    if param is None:
        return torch.device("cpu"), torch.float32
    return param.device, param.dtype


def _check_timesteps(sched: Any, steps: int) -> None:
    # "leading" spacing plus steps_offset can exceed the schedule (e.g. offset 1 at 1000 steps),
    # which diffusers reports as a bare IndexError mid-loop.
    n_train = sched.config.num_train_timesteps
    if int(sched.timesteps.max()) >= n_train:
        raise ValueError(
            f"{steps} steps with timestep_spacing={sched.config.timestep_spacing!r} and "
            f"steps_offset={sched.config.steps_offset} reach timestep "
            f"{int(sched.timesteps.max())} >= num_train_timesteps={n_train}; use fewer steps."
        )


def _check(model: Any, x: torch.Tensor, name: str, steps: int, num_train_timesteps: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    config = model.config
    size = getattr(config, "sample_size", None)
    if size is None:  # a UNet without a declared size: any H, W it can downsample
        height, width = "H", "W"
        spatial_ok = x.ndim == 4
    else:
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        spatial_ok = x.ndim == 4 and tuple(x.shape[2:]) == (height, width)
    expected = (config.in_channels, height, width)
    if x.ndim != 4 or x.shape[0] == 0 or x.shape[1] != config.in_channels or not spatial_ok:
        raise ValueError(
            f"{name} must have shape [B, {expected[0]}, {height}, {width}] (B >= 1) for this model "
            f"(in_channels={config.in_channels}, sample_size={size}); got {tuple(x.shape)}."
        )
    if (
        isinstance(steps, bool)
        or not isinstance(steps, int)
        or not 1 <= steps <= num_train_timesteps
    ):
        raise ValueError(
            f"num_inference_steps must be an int in [1, {num_train_timesteps}] (the scheduler's "
            f"num_train_timesteps), got {steps!r}."
        )


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _eps(model: Any, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    out = model(x, t)
    # UNet2DModel returns UNet2DOutput; plain modules may return a tensor or a tuple.
    if hasattr(out, "sample"):
        return out.sample
    return out[0] if isinstance(out, tuple) else out


def _steps(timesteps: torch.Tensor, progress: bool, desc: str):
    if not progress:
        return timesteps
    from tqdm import tqdm  # plain tqdm: tqdm.auto widgets need CDN scripts in the book

    return tqdm(timesteps, desc=desc)


def _run(
    model: Any,
    sched: Any,
    x: torch.Tensor,
    step_kwargs: dict[str, Any],
    progress: bool,
    desc: str,
    callback: Callback | None,
) -> torch.Tensor:
    """The sampling loop shared by both directions: x <- sched.step(eps_theta(x, t), t, x)."""
    with _eval_mode(model):
        # inference_mode is a few % faster than no_grad on CPU; its tensors refuse in-place
        # edits and autograd outside it, so everything handed out is cloned outside it.
        with torch.inference_mode():
            for i, t in enumerate(_steps(sched.timesteps, progress, desc)):
                x = sched.step(_eps(model, x, t), t, x, **step_kwargs).prev_sample
                if callback is not None:
                    with torch.inference_mode(False):
                        callback(i, t, x.clone())
        return x.clone()


def ddim_sample(
    model: Any,
    x_T: torch.Tensor,
    *,
    num_inference_steps: int = 50,
    scheduler: SchedulerLike = None,
    clip_sample: bool | None = None,
    progress: bool = False,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Generate x_0 from the noise ``x_T`` [B, C, H, W] by DDIM with eta = 0 (deterministic).

    Equals ``DDIMPipeline(model, scheduler)(num_inference_steps=...)`` started from the same
    x_T, before its ``(x / 2 + 0.5).clamp(0, 1)``: same ``DDIMScheduler.from_config``
    conversion, timesteps and ``step`` calls. ``clip_sample`` overrides the scheduler config's
    (None keeps it; use False to regenerate :func:`ddim_invert` output). ``callback(i, t, x)`` is
    called after step i with its timestep t and (a copy of) the new sample. ``x_T`` is moved to
    the model's device and dtype; the result stays there, an ordinary tensor without grad. The
    model runs in eval mode (its mode is restored afterwards).
    """
    sched = ddim_scheduler(model, scheduler, clip_sample=clip_sample)
    _check(model, x_T, "x_T", num_inference_steps, sched.config.num_train_timesteps)
    device, dtype = _model_device_dtype(model)
    sched.set_timesteps(num_inference_steps)  # CPU timesteps, as DDIMPipeline
    _check_timesteps(sched, num_inference_steps)
    x = x_T.to(device=device, dtype=dtype)
    # eta = 0: no noise is drawn; DDIMPipeline passes use_clipped_model_output=None too.
    step = {"eta": 0.0, "use_clipped_model_output": None}
    return _run(model, sched, x, step, progress, "DDIM sampling", callback)


def ddim_invert(
    model: Any,
    x_0: torch.Tensor,
    *,
    num_inference_steps: int = 50,
    scheduler: SchedulerLike = None,
    progress: bool = False,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDIM inversion, eq. (10): the noise x_T [B, C, H, W] that DDIM maps back to ``x_0``.

    Runs ``DDIMInverseScheduler`` (built from the same training config, ``clip_sample=False``)
    over the same timesteps as :func:`ddim_sample` in reverse order, so x_T lands on the noise
    level where sampling starts. Each step uses eps_theta at the *target* timestep on the
    current sample (the usual approximation), so ``ddim_sample(model, ddim_invert(model, x0),
    clip_sample=False)`` recovers x0 exactly when eps_theta does not depend on x, and
    approximately (better with more steps) otherwise. Only ``"leading"`` and ``"trailing"``
    timestep spacings are invertible this way.
    """
    config = training_scheduler_config(model, scheduler)
    spacing = config.get("timestep_spacing", "leading")
    if spacing not in ("leading", "trailing"):
        raise ValueError(
            f"DDIM inversion needs timestep_spacing 'leading' or 'trailing' (the spacings of "
            f"DDIMInverseScheduler), got {spacing!r}."
        )
    # Clipping x0_hat is not invertible, so inversion never clips.
    sched = DDIMInverseScheduler.from_config(config, clip_sample=False)
    _check(model, x_0, "x_0", num_inference_steps, sched.config.num_train_timesteps)
    device, dtype = _model_device_dtype(model)
    sched.set_timesteps(num_inference_steps)
    _check_timesteps(sched, num_inference_steps)
    x = x_0.to(device=device, dtype=dtype)
    return _run(model, sched, x, {}, progress, "DDIM inversion", callback)


def model_noise(model: Any, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` standard-normal noises ``x_T`` of the model's input shape (on the CPU)."""
    cfg = model.config
    size = cfg.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return torch.randn(n, cfg.in_channels, height, width, generator=generator)


def ddim_sample_batched(
    model: Any, x_T: torch.Tensor, *, num_inference_steps: int = 50, batch_size: int = 64
) -> torch.Tensor:
    """:func:`ddim_sample` over ``x_T`` in chunks of ``batch_size`` (bounded memory), on CPU."""
    device, _ = _model_device_dtype(model)
    return torch.cat(
        [
            ddim_sample(model, chunk.to(device), num_inference_steps=num_inference_steps).cpu()
            for chunk in x_T.split(batch_size)
        ]
    )
