"""The loss of one training step (chapter 5): eq. (9), ``L = L_DDPM + lambda(step) * L_IE``.

``L_DDPM = ||eps - eps_theta(x_t, t)||^2`` (Ho et al.) and ``L_IE`` is eq. (8) on the denoiser
game of :mod:`interpddpm.denoiser_game`, computed on the first ``ie_sub_batch`` samples of each
batch:

- exact (``2**K`` coalitions) when ``K <= ie_exact_max_players``: the grand coalition is the
  ordinary forward pass that ``L_DDPM`` already makes, so only ``2**K - 1`` extra rows per sample;
- otherwise the pooled unbiased estimator with ``ie_samples`` coalitions (``C + K + 1`` rows);
- or, with ``ie_rows = m``, ``m`` of the ``2**K - 1`` coalitions per sample, drawn for each
  sample on its own, every squared difference weighted by the inverse chance of having both its
  rows (:func:`interpddpm.theorem.row_subsample_loss`): unbiased, ``m`` rows a sample, so the
  same rows cover more samples (issue 29: the variance per row, ``benchmarks/ie_variance.py``).

All coalition rows and the batch go through the network in ONE forward pass
(:func:`training_losses`). ``lambda`` decays exponentially from ``lambda_start`` (the paper: 1e3)
to ``lambda_floor`` (10 for the nose, 1 for eyes and mouth) over ``lambda_decay_steps``, then
stays there (:func:`lambda_at`). Every random draw of step ``s`` (batch indices, noise,
timesteps, baseline, dropout) is derived from ``(seed, s, process)`` (:func:`step_seed`), so a
resumed run ends with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..denoiser_game import game_values, predict_noise
from ..regions import apply_coalitions, baseline_fill, output_masks, player_masks
from ..theorem import (
    CoalitionDesign,
    concept_null_pairs,
    dummy_loss_from_values,
    dummy_terms,
    exact_design,
    null_player_loss_from_values,
    null_terms,
    row_subsample,
    row_subsample_loss,
    sampled_design,
)
from .config import TRAINABLE, ConfigError, TrainConfig


# ------------------------------------------------------------------------------------------
# Schedules and per-step randomness
# ------------------------------------------------------------------------------------------
def lambda_at(step: int, config: TrainConfig) -> float:
    """``lambda(step)``: exponential decay from ``lambda_start`` to ``lambda_floor`` (eq. 9)."""
    if config.lambda_start == 0 or config.lambda_floor == 0:
        start, floor = config.lambda_start, config.lambda_floor
        frac = min(step / config.lambda_decay_steps, 1.0)
        return start + (floor - start) * frac
    frac = min(step / config.lambda_decay_steps, 1.0)
    return config.lambda_start * (config.lambda_floor / config.lambda_start) ** frac


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``lr_warmup_steps``, then constant."""
    if config.lr_warmup_steps and step < config.lr_warmup_steps:
        return config.lr * (step + 1) / config.lr_warmup_steps
    return config.lr


def step_seed(seed: int, step: int, process: int = 0, stream: int = 0) -> int:
    """A 63-bit seed for one (run, step, process, stream): independent of Python's hash salt."""
    digest = hashlib.sha256(f"{seed}:{step}:{process}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def batch_indices(
    step: int, config: TrainConfig, n_items: int, process: int, n_processes: int
) -> Tensor:
    """Indices of this process's batch at ``step``: epochs of random permutations of the data."""
    global_batch = config.batch_size * n_processes
    start = step * global_batch + process * config.batch_size
    positions = torch.arange(start, start + config.batch_size)
    epochs = positions // n_items
    out = torch.empty_like(positions)
    for epoch in epochs.unique().tolist():
        perm = torch.randperm(
            n_items,
            generator=torch.Generator().manual_seed(step_seed(config.seed, epoch, stream=1)),
        )
        sel = epochs == epoch
        out[sel] = perm[positions[sel] % n_items]
    return out


# ------------------------------------------------------------------------------------------
# The loss of one batch
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class StepLosses:
    total: Tensor
    ddpm: Tensor
    ie: Tensor | None
    lam: float
    rows: int
    teacher: Tensor | None = None  # the teacher term (unweighted), when teacher_weight > 0


def trainable_parameters(model: torch.nn.Module, trainable: str = "all") -> list[Tensor]:
    """The parameters a run trains. ``"decoder"`` freezes everything but a UNet2DModel's up
    blocks and output head (``up_blocks``, ``conv_norm_out``, ``conv_out``): the encoder, the
    middle block and the time embedding keep their pretrained weights."""
    if trainable == "all":
        return list(model.parameters())
    if trainable != "decoder":
        raise ConfigError(f"trainable must be one of {TRAINABLE}, got {trainable!r}.")
    if not hasattr(model, "up_blocks"):
        raise ConfigError(
            f"trainable='decoder' needs a UNet with up_blocks (a diffusers UNet2DModel), not a "
            f"{type(model).__name__}; use trainable='all'."
        )
    decoder = ("up_blocks.", "conv_norm_out.", "conv_out.")
    params = []
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(decoder))
        if param.requires_grad:
            params.append(param)
    return params


def ie_design(config: TrainConfig, generator: torch.Generator) -> CoalitionDesign:
    """The coalitions of this step: exact for small K, pooled sampling otherwise."""
    k = len(config.concepts) + 1
    if k <= config.ie_exact_max_players:
        return exact_design(k)
    return sampled_design(k, config.ie_samples, generator=generator)


def ie_sample_weights(noise_scheduler: Any, t: Tensor, config: TrainConfig) -> Tensor | None:
    """Per-sample weights of ``L_IE``: ``None`` (uniform) or ``(1 - alpha_bar_t)`` divided by its
    mean over all timesteps, so that the average weight stays 1 and lambda keeps its meaning."""
    if config.ie_t_weight == "uniform":
        return None
    noise_level = 1 - noise_scheduler.alphas_cumprod.to(torch.float64)
    return (noise_level[t.cpu()] / noise_level.mean()).float().to(t.device)


def min_snr_weights(noise_scheduler: Any, t: Tensor, gamma: float) -> Tensor:
    """Min-SNR-gamma weights of an epsilon-prediction loss, ``min(SNR_t, gamma) / SNR_t`` with
    ``SNR_t = abar_t / (1 - abar_t)`` (Hang et al. 2023; diffusers' ``compute_snr``)."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, t).float()
    return snr.clamp(max=gamma) / snr


def training_losses(
    model: Any,
    noise_scheduler: Any,
    images: Tensor,
    labels: Tensor | None,
    config: TrainConfig,
    step: int,
    generator: torch.Generator,
    *,
    rank: int = 0,
    world: int = 1,
    neighbour: Tensor | None = None,
    teacher: Any = None,
) -> StepLosses:
    """``L_DDPM`` and (when interpretable) ``lambda * L_IE`` of one batch, one forward pass.

    Several processes (``world > 1``) share a global batch of ``world * b`` samples, process
    ``rank`` holding the global positions ``[rank * b, (rank + 1) * b)`` (:func:`batch_indices`).
    Every process then passes the same ``generator`` (seeded as process 0's), draws the
    randomness of the WHOLE global batch in the single-process order (noise, t, the ``ie_t_min``
    redraw, the coalition design, the baseline fill) and keeps its own slice: a run does not
    depend on how many processes share its batch. The ``L_IE`` sub-batch is the first
    ``ie_sub_batch`` samples of the global batch (the first ones of this process's slice, maybe
    none). ``neighbour`` (``[1, C, H, W]``) is the clean image (or latent) at global position
    ``rank * b - 1`` (mod ``world * b``): the ``"shuffle"`` baseline of this process's first sample
    reads it, as ``images.roll(1, 0)`` does in one process; it defaults to ``images[-1:]``.
    The losses returned are then this process's SHARE: their mean over the processes (what DDP's
    gradient averaging computes) is the loss of the global batch.

    ``teacher`` (the frozen initial model, needed when ``config.teacher_weight > 0``) adds
    ``teacher_weight * mean_i w_i ||eps_theta(x_t) - eps_teacher(x_t)||^2`` over the batch, with
    the ``w_i`` of ``L_DDPM`` (min-SNR or 1).
    """
    if config.teacher_weight > 0 and teacher is None:
        raise ValueError("config.teacher_weight > 0 needs the frozen teacher model (teacher=).")
    b = images.shape[0]
    n = b * world  # the global batch
    lo = rank * b  # this process's first global position
    device = images.device
    noise_all = torch.randn((n, *images.shape[1:]), generator=generator)
    noise = noise_all[lo : lo + b].to(device)
    n_t = noise_scheduler.config.num_train_timesteps
    t = torch.randint(0, n_t, (n,), generator=generator)
    if config.interpretable and config.ie_t_min > 0:  # the L_IE samples: only noisier steps
        sub = min(config.ie_sub_batch, n)
        t[:sub] = torch.randint(config.ie_t_min, n_t, (sub,), generator=generator)
    t = t[lo : lo + b].to(device)
    x_t = noise_scheduler.add_noise(images, noise, t)
    inputs, times = [x_t], [t]
    design = masks = None
    sub = own = 0
    if config.interpretable:
        if labels is None:
            raise ValueError("interpretable training needs label maps for the regions.")
        sub = min(config.ie_sub_batch, n)  # the global L_IE sub-batch: positions [0, sub)
        own = min(max(sub - lo, 0), b)  # those of them this process holds: its first `own`
    if own > 0:
        design = ie_design(config, generator)
        picked = None  # ie_rows: each sample's own rows of the exact design, [own, m]
        if config.ie_rows is not None:
            k_all = len(config.concepts) + 1
            picked = row_subsample(k_all, config.ie_rows, sub, generator=generator)[lo : lo + own]
        masks = player_masks(labels[:own], config.concepts, dilation=config.dilation).to(device)
        if masks.shape[-2:] != x_t.shape[-2:]:
            raise ValueError(
                f"region masks are {tuple(masks.shape[-2:])} but x_t is {tuple(x_t.shape[-2:])}: "
                "a latent model needs label maps on its latent grid. Downsample them with "
                "regions.downsample_labels(labels, latent_size, prefer=concepts), or set "
                "TrainConfig.autoencoder and the trainer does it."
            )
        keep = torch.ones(design.n_rows, dtype=torch.bool)
        if design.full_row is not None:
            keep[design.full_row] = False  # the grand coalition IS the L_DDPM forward
        others = None
        if config.baseline == "shuffle":  # another sample's x_t at this sample's own t
            if neighbour is None and world > 1:
                raise ValueError("with several processes the 'shuffle' baseline needs neighbour.")
            before = images[-1:] if neighbour is None else neighbour.to(images)
            previous = torch.cat([before, images[:-1]])  # images.roll(1, 0) of the global batch
            previous_noise = noise_all.roll(1, 0)[lo : lo + b].to(device)
            others = noise_scheduler.add_noise(previous, previous_noise, t)[:own]
        if world == 1 or others is not None:
            fill = baseline_fill(x_t[:own], config.baseline, generator=generator, others=others)
        else:  # "zero" and "noise" read only x's shape: draw the global sub-batch's, keep ours
            ghost = x_t.new_zeros((sub, *x_t.shape[1:]))
            fill = baseline_fill(ghost, config.baseline, generator=generator)[lo : lo + own]
        coalitions = design.coalitions[keep] if picked is None else design.coalitions[picked]
        rows = apply_coalitions(x_t[:own], masks, coalitions, fill)
        inputs.append(rows.reshape(-1, *x_t.shape[1:]))
        times.append(t[:own].repeat_interleave(rows.shape[1]))
    eps = predict_noise(model, torch.cat(inputs), torch.cat(times))
    eps_teacher = None
    if config.teacher_weight > 0:
        with torch.no_grad():
            eps_teacher = predict_noise(teacher, x_t, t)
    # Only the forward pass may run in reduced precision (mixed_precision): the losses are
    # computed in fp32, since L_IE compares game values that differ by little (region means
    # are an einsum, which autocast would otherwise run in bf16).
    with torch.autocast(eps.device.type, enabled=False):
        eps_batch = eps[:b]
        snr_w = None
        if config.snr_gamma is None:
            loss_ddpm = F.mse_loss(eps_batch.float(), noise.float())
        else:
            snr_w = min_snr_weights(noise_scheduler, t, config.snr_gamma)
            per_sample = (eps_batch.float() - noise.float()).pow(2).flatten(1).mean(1)
            loss_ddpm = (per_sample * snr_w).mean()
        main, loss_teacher = loss_ddpm, None
        if eps_teacher is not None:
            gap = (eps_batch.float() - eps_teacher.float()).pow(2).flatten(1).mean(1)
            loss_teacher = (gap if snr_w is None else gap * snr_w).mean()
            main = loss_ddpm + config.teacher_weight * loss_teacher
            loss_teacher = loss_teacher.detach()
        if design is None:
            if config.interpretable:  # none of the global L_IE sub-batch is this process's
                zero = loss_ddpm.detach().new_zeros(())
                lam = lambda_at(step, config)
                return StepLosses(main, loss_ddpm.detach(), zero, lam, eps.shape[0], loss_teacher)
            return StepLosses(main, loss_ddpm.detach(), None, 0.0, eps.shape[0], loss_teacher)
        eps_rows = eps[b:].reshape(own, -1, *eps.shape[1:])  # [own, R', C, H, W]
        weights = ie_sample_weights(noise_scheduler, t[:own], config)
        k = masks.shape[1]
        outputs = masks
        if config.ie_constraint == "one_sided" and config.ie_outside != "one":
            # finer output regions, the same K players
            outputs = output_masks(
                labels[:own], config.concepts, dilation=config.dilation, outside="split"
            ).to(device)
        if picked is not None:  # each sample's own rows: the values of all 2**K, some unread
            rows_v = game_values(eps_rows.float(), outputs, config.game_value)  # [m, own, ...]
            full_v = game_values(eps_batch[:own].unsqueeze(1).float(), outputs, config.game_value)
            who = torch.arange(own, device=device)[:, None].expand_as(picked)
            values = rows_v.new_zeros((2**k, *rows_v.shape[1:]))
            values = values.index_put((picked.T.to(device), who.T), rows_v)
            values = torch.cat([values[:-1], full_v])
            present = torch.zeros(2**k, own, dtype=torch.bool, device=device)
            present[picked.T.to(device), who.T] = True
            present[-1] = True
            if config.ie_constraint == "one_sided":
                terms = null_terms(k, concept_null_pairs(k, n_outputs=outputs.shape[1]))
            else:
                terms = dummy_terms(k)
            loss_ie = row_subsample_loss(values, terms, present, config.ie_rows, weights)
        else:
            if design.full_row is not None:
                full = eps_batch[:own].unsqueeze(1)
                eps_rows = torch.cat(
                    [eps_rows[:, : design.full_row], full, eps_rows[:, design.full_row :]], 1
                )
            values = game_values(eps_rows.float(), outputs, config.game_value)
            if config.ie_constraint == "one_sided":
                pairs = concept_null_pairs(k, n_outputs=outputs.shape[1])
                loss_ie = null_player_loss_from_values(values, pairs, weights, n_players=k)
            else:
                loss_ie = dummy_loss_from_values(values, design, weights)
        if world > 1:  # L_IE is a mean over its samples: with world * own / sub, the mean of
            loss_ie = loss_ie * (world * own / sub)  # the processes' shares is the global L_IE
        lam = lambda_at(step, config)
        return StepLosses(
            main + lam * loss_ie,
            loss_ddpm.detach(),
            loss_ie.detach(),
            lam,
            eps.shape[0],
            loss_teacher,
        )
