"""Editing one visual concept by changing the noise of its region (Section 4 of the paper).

With DDIM at eta = 0 an image is a deterministic function ``x_0 = G(x_T)`` of its noise, and
``x_T`` has the image's shape. To edit concept k, change ``x_T`` inside region k only:
*resample* it (fresh Gaussian noise) or *swap* it with another image's noise. For an
interpretable model only region k of ``x_0`` should change. MSE maps in CIE Lab colour space
show where it did.

Beyond the paper, :func:`edit_region` also samples with stochastic DDIM (``eta > 0``, see
:mod:`interpddpm.sampling`): the per-step noise comes from each sample's ``seeds``, so the
image is ``x_0 = G(x_T, seed)`` and the edit keeps the original's per-step noise as long as the
original was sampled with the same ``eta`` and ``seeds`` (e.g. ``ddim_sample_batched(model,
x_T, eta=eta, seeds=seeds)``).

Serves chapters 6, 7, 9 and 10.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from . import memo
from .denoiser_game import predict_noise
from .sampling import (
    ddim_invert,
    ddim_sample,
    ddim_scheduler,
    seeded_noise,
    training_scheduler_config,
)


def _mask4(mask: Tensor, like: Tensor) -> Tensor:
    """A ``[B, 1, H, W]`` float mask from ``[B, H, W]`` or ``[B, 1, H, W]``, on ``like``'s
    device (masks come from the parser, images from the model: either may sit on the GPU)."""
    m = mask if mask.ndim == 4 else mask.unsqueeze(1)
    if m.shape[0] != like.shape[0] or m.shape[-2:] != like.shape[-2:] or m.shape[1] != 1:
        raise ValueError(
            f"mask {list(mask.shape)} does not fit x {list(like.shape)}: expected "
            f"[{like.shape[0]}, {like.shape[2]}, {like.shape[3]}] or "
            f"[{like.shape[0]}, 1, {like.shape[2]}, {like.shape[3]}]."
        )
    return m.to(like.device, like.dtype)


def resample_region(
    x_T: Tensor, mask: Tensor, *, generator: torch.Generator | None = None
) -> Tensor:
    """``x_T`` with fresh standard-normal noise inside ``mask`` (1 = region to edit)."""
    m = _mask4(mask, x_T)
    fresh = torch.randn(x_T.shape, generator=generator, dtype=x_T.dtype).to(x_T.device)
    return m * fresh + (1 - m) * x_T


def swap_region(x_T: Tensor, donor: Tensor, mask: Tensor) -> Tensor:
    """``x_T`` with the noise inside ``mask`` taken from ``donor`` (same shape)."""
    if donor.shape != x_T.shape:
        raise ValueError(f"donor {list(donor.shape)} must have the shape of x_T {list(x_T.shape)}.")
    m = _mask4(mask, x_T)
    return m * donor + (1 - m) * x_T


def rgb_to_lab(images: Tensor) -> Tensor:
    """CIE Lab (D65) of images ``[B, 3, H, W]`` in [-1, 1] (sRGB), ``[B, 3, H, W]``."""
    from skimage.color import rgb2lab

    rgb = ((images.detach().float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    return torch.from_numpy(rgb2lab(rgb, channel_axis=-1)).permute(0, 3, 1, 2).float()


def lab_mse_map(x0: Tensor, x0_edit: Tensor) -> Tensor:
    """Per-pixel squared difference in Lab, averaged over L, a, b: ``[B, H, W]``."""
    return (rgb_to_lab(x0) - rgb_to_lab(x0_edit)).pow(2).mean(1)


def edit_region(
    model: Any,
    x_T: Tensor,
    mask: Tensor,
    *,
    mode: str = "resample",
    donor: Tensor | None = None,
    generator: torch.Generator | None = None,
    num_inference_steps: int = 50,
    scheduler: Any = None,
    clip_sample: bool | None = None,
    eta: float = 0.0,
    seeds: Sequence[int] | Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Edit the region ``mask`` of ``x_T`` (``"resample"`` or ``"swap"`` with ``donor``) and
    regenerate: returns ``(x_T_edit, x0_edit)``. ``clip_sample=False`` for a noise found by
    DDIM inversion (eq. 10), as in :func:`reconstruct`; None keeps the scheduler's setting.

    ``eta > 0``: stochastic DDIM whose per-step noise is ``step_noise(num_inference_steps,
    x_T.shape, seeds)``, ``seeds`` one int per sample (required), the noise of the original
    sampled with the same ``eta`` and ``seeds``; so an edit that leaves ``x_T`` unchanged gives
    back exactly the original. At eta = 0 ``seeds`` are checked but unused."""
    if mode == "resample":
        x_T_edit = resample_region(x_T, mask, generator=generator)
    elif mode == "swap":
        if donor is None:
            raise ValueError("mode='swap' needs donor=<another x_T of the same shape>.")
        x_T_edit = swap_region(x_T, donor, mask)
    else:
        raise ValueError(f"mode must be 'resample' or 'swap', got {mode!r}.")
    noise = seeded_noise(eta, seeds, num_inference_steps, x_T_edit)
    x0 = ddim_sample(
        model,
        x_T_edit,
        num_inference_steps=num_inference_steps,
        scheduler=scheduler,
        clip_sample=clip_sample,
        eta=eta,
        noise=noise,
    )
    return x_T_edit, x0


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak 2), per image."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def reconstruct(
    model: Any,
    x0: Tensor,
    *,
    num_inference_steps: int = 50,
    scheduler: Any = None,
    cache: str | os.PathLike | None = None,
) -> tuple[Tensor, Tensor]:
    """DDIM inversion (eq. 10) then sampling without clipping: ``(x_T, x0_reconstructed)``.

    The first step of real-image editing: a photograph's noise ``x_T`` regenerates it, and its
    regions can then be resampled or swapped like those of a generated image.

    ``cache``: a folder where both are saved under a key of the model's weights, the images
    and the steps (:func:`interpddpm.memo.cached`; not with a ``scheduler`` of your own).
    """

    def compute() -> tuple[Tensor, Tensor]:
        x_T = ddim_invert(model, x0, num_inference_steps=num_inference_steps, scheduler=scheduler)
        x0_rec = ddim_sample(
            model,
            x_T,
            num_inference_steps=num_inference_steps,
            scheduler=scheduler,
            clip_sample=False,
        )
        return x_T, x0_rec

    if cache is None or scheduler is not None or not isinstance(model, torch.nn.Module):
        return compute()
    weights = memo.weights_digest(model)
    parts = ["reconstruct", weights, memo.tensors_digest(x0), num_inference_steps]
    x_T, x0_rec = memo.cached(
        cache,
        "reconstruct",
        parts,
        lambda: tuple(t.cpu() for t in compute()),
        digests=[weights],
        what="DDIM reconstruction",
        valid=lambda saved: isinstance(saved, tuple) and len(saved) == 2,
    )
    return x_T.to(x0.device), x0_rec.to(x0.device)


# ---- comparison methods: editing methods that do not need an interpretable model ----------
def repaint_edit(
    model: Any,
    x0: Tensor,
    mask: Tensor,
    *,
    num_inference_steps: int = 50,
    jump_length: int = 10,
    jump_n_sample: int = 2,
    generator: torch.Generator | None = None,
    scheduler: Any = None,
) -> Tensor:
    """RePaint (Lugmayr et al., 2022) with diffusers' ``RePaintPipeline``: regenerate the region
    ``mask`` (1 = edit) of ``x0`` with the same UNet, keeping the rest. Returns ``[B, 3, H, W]``
    in [-1, 1]. The paper's defaults are 250 steps and 10 resamplings; fewer here for the CPU."""
    from diffusers import RePaintPipeline, RePaintScheduler

    keep = 1 - _mask4(mask, x0)
    sched = RePaintScheduler.from_config(training_scheduler_config(model, scheduler))
    pipe = RePaintPipeline(unet=model, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    device = next(model.parameters()).device
    out = pipe(
        x0.to(device),
        keep.to(device),
        num_inference_steps=num_inference_steps,
        jump_length=jump_length,
        jump_n_sample=jump_n_sample,
        generator=generator,
        output_type="np",
    ).images
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() * 2 - 1


def blended_edit(
    model: Any,
    x0: Tensor,
    mask: Tensor,
    x_T: Tensor,
    *,
    num_inference_steps: int = 50,
    generator: torch.Generator | None = None,
    scheduler: Any = None,
) -> Tensor:
    """Blended diffusion (Avrahami et al., 2022) with DDIM: sample from ``x_T`` and, after every
    step, replace the outside of ``mask`` (1 = edit) by the original noised to that step, so
    only the region is generated while staying consistent with its surroundings."""
    sched = ddim_scheduler(model, scheduler)
    sched.set_timesteps(num_inference_steps)
    device = next(model.parameters()).device  # the work runs where the model is
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(device)
    x0, m, x = x0.to(device), _mask4(mask, x0).to(device), x_T.to(device)
    with torch.no_grad():
        timesteps = sched.timesteps.tolist()
        for i, t in enumerate(timesteps):
            tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=device)
            x = sched.step(predict_noise(model, x, tt), int(t), x).prev_sample
            if i + 1 < len(timesteps):
                t_next = torch.full((x.shape[0],), int(timesteps[i + 1]), dtype=torch.long)
                x = m * x + (1 - m) * sched.add_noise(x0, noise, t_next.to(device))
    return m * x + (1 - m) * x0
