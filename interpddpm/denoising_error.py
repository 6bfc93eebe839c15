"""How well a denoiser predicts the noise, step by step: the diagnostic behind washed-out samples.

A deterministic sampler (DDIM with eta = 0, what the method needs so that an image is a function
of its noise x_T) adds no fresh noise that could hide a poor noise prediction, so the error of
eps_theta at each noise level shows up in the samples. :func:`denoising_error_by_t` measures the
training loss L_DDPM (per element: ``mean (eps - eps_theta(x_t, t))^2``) separately at chosen
timesteps, on held-out images, with the same noise for every model compared.

Two reference levels make the numbers readable: predicting zero scores 1 (the variance of
eps), and at large t, where x_t is almost pure noise, the best predictor approaches it too.

Serves chapter 8 (why samples wash out).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DDPMScheduler
from torch import Tensor

from .sampling import model_device_dtype, training_scheduler_config

__all__ = ["DEFAULT_TIMESTEPS", "denoising_error_by_t"]

#: Timesteps that cover the schedule, denser at low noise where samples are finished.
DEFAULT_TIMESTEPS: tuple[int, ...] = (10, 25, 50, 100, 200, 300, 500, 700, 900, 990)


@torch.no_grad()
def denoising_error_by_t(
    model: Any,
    images: Tensor,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    *,
    seed: int = 0,
    batch_size: int = 64,
    scheduler: Any = None,
) -> dict[int, float]:
    """``{t: mean squared error of the predicted noise}`` on ``images`` [B, C, H, W] in
    [-1, 1], each noised at every ``t`` with the noise drawn from ``seed`` (the same noise for
    each ``t`` and for every model, so models are compared on equal terms).

    The model is a diffusers ``UNet2DModel`` (or anything called as ``model(x, t).sample``);
    the noise schedule is the one it was trained with (``model.scheduler_config``).
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(
            f"images must be a tensor [B, C, H, W], got {getattr(images, 'shape', images)}"
        )
    sched = DDPMScheduler.from_config(training_scheduler_config(model, scheduler))
    n_train = sched.config.num_train_timesteps
    bad = [t for t in timesteps if not 0 <= int(t) < n_train]
    if bad:
        raise ValueError(f"timesteps must lie in [0, {n_train}), got {bad}")
    device, dtype = model_device_dtype(model)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    errors: dict[int, float] = {}
    for t in timesteps:
        total, count = 0.0, 0
        for x0, eps in zip(images.split(batch_size), noise.split(batch_size), strict=True):
            step = torch.full((len(x0),), int(t), dtype=torch.long)
            x_t = sched.add_noise(x0.double(), eps.double(), step)
            pred = model(x_t.to(device=device, dtype=dtype), step.to(device)).sample
            total += float((pred.double().cpu() - eps.double()).pow(2).sum())
            count += eps.numel()
        errors[int(t)] = total / count
    return errors
