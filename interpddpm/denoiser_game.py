"""The game a denoiser plays at ``(x_t, t)`` (eq. 5) and the audit of how local a model is.

Players are the K regions of ``x_t``; for a coalition ``S`` the network sees
``x_t^S = m_S * x_t + (1 - m_S) * b`` (absent regions replaced by the baseline ``b``) and
predicts ``eps_theta(x_t^S, t)``. Two value functions:

- ``"region_mean"`` (the paper): ``v_k(S)`` = the mean of the predicted noise over output
  region ``k``; values ``[R, B, K]``.
- ``"pixel"``: ``v_k(S)`` = the predicted noise at every pixel of output region ``k`` (zero
  elsewhere); values ``[R, B, C, H, W, K]``. Asking every pixel, not only the region's mean, to
  ignore the other regions is a much stronger constraint (chapter 12 measures both).

Many coalitions and samples go through the network in one batched forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .devices import module_device
from .regions import (
    DEFAULT_BASELINE,
    apply_coalitions,
    baseline_fill,
    check_partition,
    region_means,
)
from .shapley import exact_shapley

VALUES = ("region_mean", "pixel")


def predict_noise(model: Any, x: Tensor, t: Tensor) -> Tensor:
    """``eps_theta(x, t)`` for a diffusers ``UNet2DModel`` or any module returning a tensor."""
    out = model(x, t)
    if hasattr(out, "sample"):  # UNet2DOutput
        return out.sample
    return out[0] if isinstance(out, tuple) else out


def game_values(eps: Tensor, masks: Tensor, value: str = "region_mean") -> Tensor:
    """Game values from predicted noise ``eps [B, R, C, H, W]`` of R coalitions.

    Returns ``[R, B, K]`` (region mean) or ``[R, B, C, H, W, K]`` (pixel): the coalition axis
    first, component k of the last axis is ``v_k`` (the convention of :mod:`interpddpm.theorem`).
    """
    if value == "region_mean":
        return region_means(eps, masks).transpose(0, 1)
    if value == "pixel":
        m = masks.float().permute(0, 2, 3, 1)[:, None, None]  # [B, 1, 1, H, W, K]
        return (eps.unsqueeze(-1) * m).transpose(0, 1)
    raise ValueError(f"unknown game value {value!r}; choose one of {', '.join(VALUES)}.")


def _timesteps(t: Tensor | int, batch: int, device: torch.device) -> Tensor:
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be a scalar or have shape [{batch}], got {list(t.shape)}.")
    return t


class DenoiserGame:
    """``v_k(S)`` of eq. (5) for a batch of ``(x_t, t)`` and player masks (a duck-typed game).

    ``x_t`` ``[B, C, H, W]``; ``t`` scalar or ``[B]``; ``masks`` ``[B, K, H, W]``, a partition
    (:func:`interpddpm.regions.player_masks`). The baseline is drawn once at construction, so
    ``v`` is a fixed function of ``S``. ``chunk_size`` bounds the rows per forward pass.
    """

    def __init__(
        self,
        model: Any,
        x_t: Tensor,
        t: Tensor | int,
        masks: Tensor,
        *,
        baseline: str = DEFAULT_BASELINE,
        value: str = "region_mean",
        generator: torch.Generator | None = None,
        chunk_size: int = 256,
    ) -> None:
        if x_t.ndim != 4:
            raise ValueError(f"x_t must be [B, C, H, W], got {list(x_t.shape)}.")
        x_t = x_t.to(module_device(model) or x_t.device)  # the game is played where the model is
        self.masks = check_partition(masks).to(x_t.device)
        if self.masks.shape[0] != x_t.shape[0] or self.masks.shape[-2:] != x_t.shape[-2:]:
            raise ValueError(
                f"masks {list(masks.shape)} do not match x_t {list(x_t.shape)}: need "
                f"[{x_t.shape[0]}, K, {x_t.shape[2]}, {x_t.shape[3]}] (resize them with "
                "regions.resize_masks for latents)."
            )
        if value not in VALUES:
            raise ValueError(f"unknown game value {value!r}; choose one of {', '.join(VALUES)}.")
        self.model, self.x_t, self.value, self.chunk_size = model, x_t, value, chunk_size
        self.t = _timesteps(t, x_t.shape[0], x_t.device)
        self.fill = baseline_fill(x_t, baseline, generator=generator)
        self.n_players = int(self.masks.shape[1])

    def noise_predictions(self, coalitions: Tensor) -> Tensor:
        """``eps_theta(x_t^S, t)`` for every sample and coalition: ``[B, R, C, H, W]``."""
        x = apply_coalitions(self.x_t, self.masks, coalitions, self.fill)  # [B, R, C, H, W]
        b, r = x.shape[:2]
        flat = x.reshape(b * r, *x.shape[2:])
        t = self.t.repeat_interleave(r)
        eps = torch.cat(
            [
                predict_noise(self.model, xs, ts)
                for xs, ts in zip(
                    flat.split(self.chunk_size), t.split(self.chunk_size), strict=True
                )
            ]
        )
        return eps.reshape(b, r, *eps.shape[1:])

    def __call__(self, coalitions: Tensor) -> Tensor:
        return game_values(self.noise_predictions(coalitions), self.masks, self.value)


def interaction_matrix(
    model: Any,
    x_t: Tensor,
    t: Tensor | int,
    masks: Tensor,
    *,
    baseline: str = DEFAULT_BASELINE,
    value: str = "pixel",
    generator: torch.Generator | None = None,
) -> Tensor:
    """``M[j, k]``: how much input region ``j`` moves output region ``k``, ``[K, K]``.

    The exact Shapley values ``phi_{v_k}(j)`` of the denoiser game (``2**K`` coalitions per
    sample, one batched forward pass), as mean absolute values over the batch and, for the pixel
    game, over the pixels and channels of region ``k``. A model whose output region k depends on
    input region k only has a diagonal matrix. The small matrix comes back on the CPU (the
    game runs on the model's device).
    """
    with torch.no_grad():
        game = DenoiserGame(
            model, x_t, t, masks, baseline=baseline, value=value, generator=generator
        )
        phi = exact_shapley(game).abs()  # [K(j), B, ..., K(k)]
    if value == "region_mean":
        return phi.mean(1).cpu()
    area = game.masks.float().sum((-2, -1)) * x_t.shape[1]  # [B, K]: pixels x channels
    per_sample = phi.sum((2, 3, 4)) / area.clamp_min(1.0)  # [K(j), B, K(k)]
    present = (area > 0).float()  # an absent region has no pixels: leave it out of the mean
    return ((per_sample * present).sum(1) / present.sum(0).clamp_min(1.0)).cpu()


def off_diagonal_share(matrix: Tensor) -> Tensor:
    """Share of the total ``|M|`` off the diagonal (0 = perfectly local); last two axes K x K."""
    m = matrix.abs()
    total = m.sum((-2, -1))
    diag = m.diagonal(dim1=-2, dim2=-1).sum(-1)
    return (total - diag) / total.clamp_min(1e-30)


def audit(
    model: Any,
    scheduler: Any,
    x0: Tensor,
    masks: Tensor,
    timesteps: Sequence[int],
    *,
    baseline: str = DEFAULT_BASELINE,
    value: str = "pixel",
    seed: int = 0,
) -> Tensor:
    """Interaction matrices across timesteps, ``[len(timesteps), K, K]``.

    ``x_t`` is drawn from the forward process (eq. 1) with ``scheduler.add_noise``; the same
    noise (from ``seed``) is used at every t so the rows differ only by the noise level.
    """
    gen = torch.Generator().manual_seed(seed)
    x0 = x0.to(module_device(model) or x0.device)
    noise = torch.randn(x0.shape, generator=gen).to(x0)
    out = []
    for t in timesteps:
        tt = torch.full((x0.shape[0],), int(t), dtype=torch.long, device=x0.device)
        x_t = scheduler.add_noise(x0, noise, tt)
        out.append(
            interaction_matrix(model, x_t, tt, masks, baseline=baseline, value=value, generator=gen)
        )
    return torch.stack(out)


def kept_region_error(
    model: Any,
    scheduler: Any,
    x0: Tensor,
    masks: Tensor,
    timesteps: Sequence[int],
    *,
    baseline: str = DEFAULT_BASELINE,
    seed: int = 0,
) -> Tensor:
    """How much replacing the other regions disturbs the prediction inside a kept region.

    For each t and each player k: the noise-prediction error ``|eps_theta(x_t^{k}) - eps|^2``
    inside region k when only region k is kept (the others replaced by ``baseline``), divided by
    the same error with the full input. 1 means the model's prediction in region k ignores the
    rest; larger means it leans on the context (or on the baseline being out of distribution).
    Returns ``[len(timesteps), K]`` on the CPU (computed on the model's device).
    """
    gen = torch.Generator().manual_seed(seed)
    x0 = x0.to(module_device(model) or x0.device)
    noise = torch.randn(x0.shape, generator=gen).to(x0)
    masks = masks.to(x0.device)
    k = masks.shape[1]
    coalitions = torch.cat([torch.eye(k, dtype=torch.bool), torch.ones(1, k, dtype=torch.bool)])
    m = masks.float().unsqueeze(2)  # [B, K, 1, H, W]
    out = []
    with torch.no_grad():
        for t in timesteps:
            tt = torch.full((x0.shape[0],), int(t), dtype=torch.long, device=x0.device)
            x_t = scheduler.add_noise(x0, noise, tt)
            game = DenoiserGame(model, x_t, tt, masks, baseline=baseline, generator=gen)
            eps = game.noise_predictions(coalitions)  # [B, K + 1, C, H, W]
            err = (eps - noise.unsqueeze(1)).pow(2)
            kept = (err[:, :k] * m).sum((0, 2, 3, 4))
            full = (err[:, k:] * m).sum((0, 2, 3, 4))
            out.append(kept / full.clamp_min(1e-12))
    return torch.stack(out).cpu()
