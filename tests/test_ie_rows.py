"""Fewer coalition rows per L_IE sample (issue 29): ``TrainConfig.ie_rows`` draws ``m`` of the
``2**K - 1`` coalitions per sample and weighs each squared difference by the inverse chance of
having both its rows (:func:`interpddpm.theorem.row_subsample_loss`)."""

from __future__ import annotations

import itertools

import pytest
import torch

from interpddpm.theorem import (
    concept_null_pairs,
    dummy_loss_from_values,
    dummy_terms,
    exact_design,
    null_player_loss_from_values,
    null_terms,
    row_subsample,
    row_subsample_loss,
)
from interpddpm.training import ConfigError, TrainConfig, training_losses


@pytest.mark.parametrize("k", [2, 3, 4])
def test_the_pair_terms_sum_to_both_exact_losses(k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    values = torch.randn(2**k, 5, k + 2, dtype=torch.float64, generator=gen)
    w = torch.rand(5, dtype=torch.float64, generator=gen)
    exact = dummy_loss_from_values(values[..., :k], exact_design(k), w)
    assert torch.allclose(
        row_subsample_loss(values[..., :k], dummy_terms(k), sample_weights=w), exact
    )
    pairs = concept_null_pairs(k, n_outputs=k + 2)
    one_sided = null_player_loss_from_values(values, pairs, w, n_players=k)
    assert torch.allclose(
        row_subsample_loss(values, null_terms(k, pairs), sample_weights=w), one_sided
    )


@pytest.mark.parametrize(("k", "m"), [(2, 2), (3, 2), (3, 4), (4, 3), (4, 6)])
def test_the_row_subsample_is_unbiased_over_every_draw(k: int, m: int) -> None:
    """The mean of the estimate over ALL m-subsets of the 2**K - 1 other rows (each equally
    likely under row_subsample) is the exact loss, for L_IE and the one-sided loss: no
    sampling, so no tolerance beyond float64 rounding."""
    gen = torch.Generator().manual_seed(10 * k + m)
    values = torch.randn(2**k, 1, k + 1, dtype=torch.float64, generator=gen)
    subsets = list(itertools.combinations(range(2**k - 1), m))
    n = len(subsets)
    present = torch.zeros(2**k, n, dtype=torch.bool)
    for s, rows in enumerate(subsets):
        present[list(rows), s] = True
    present[-1] = True
    # one "sample" per subset, all with the same game values: the loss averages them
    expanded = values.expand(2**k, n, k + 1)
    for terms, v in (
        (dummy_terms(k), values[..., :k]),
        (null_terms(k, concept_null_pairs(k, n_outputs=k + 1)), values),
    ):
        exact = row_subsample_loss(v, terms)
        est = row_subsample_loss(expanded[..., : v.shape[-1]], terms, present, m)
        assert torch.allclose(est, exact, rtol=1e-12), (k, m)


def test_row_subsample_draws_distinct_rows_uniformly() -> None:
    picked = row_subsample(4, 5, 3000, generator=torch.Generator().manual_seed(0))
    assert picked.shape == (3000, 5) and int(picked.max()) < 15  # never the grand coalition
    assert bool((picked.diff(dim=1) > 0).all())  # distinct and sorted
    freq = torch.bincount(picked.flatten(), minlength=15).double() / 3000
    # each row with chance 5/15; the binomial sd at 3000 draws is 0.0086 (a fixed seed)
    assert float((freq - 1 / 3).abs().max()) < 0.04
    with pytest.raises(ValueError, match="n_rows must be in"):
        row_subsample(2, 4, 1)


def _setup():
    from interpddpm.models import make_unet
    from interpddpm.toyfaces import ToyFaces
    from interpddpm.training import run_noise_scheduler

    torch.manual_seed(0)
    model = make_unet("tiny", sample_size=16)
    images, labels = ToyFaces(16, 8).batch(range(6))
    return model, images, labels, run_noise_scheduler(TrainConfig())


@pytest.mark.parametrize("recipe", ["two_sided", "one_sided split"])
def test_the_trainer_estimates_the_exact_loss_of_the_same_rows(recipe: str) -> None:
    """With ie_rows = m < 2**K - 1 the trainer's L_IE is row_subsample_loss of the exact
    rows' values (read from an exact step on the same x_t), with the rows each sample drew;
    with ie_rows = 2**K - 1 it is the exact step's L_IE."""
    from interpddpm.denoiser_game import game_values
    from interpddpm.regions import output_masks, player_masks

    model, images, labels, sched = _setup()
    one_sided = recipe.startswith("one")
    cfg = TrainConfig(
        interpretable=True,
        concepts=["eyes", "nose"],
        ie_sub_batch=3,
        baseline="zero",  # the fill draws nothing: the rows' randomness is the design's
        lambda_start=1.0,
        ie_t_weight="noise",
        ie_constraint="one_sided" if one_sided else "two_sided",
        ie_outside="split" if one_sided else "one",
    )
    seen: list[torch.Tensor] = []
    model.register_forward_hook(lambda m, i, o: seen.append(o.sample.detach()))

    def step(c: TrainConfig):
        return training_losses(model, sched, images, labels, c, 0, torch.Generator().manual_seed(4))

    exact = step(cfg)
    assert exact.rows == 6 + 3 * 7
    full = step(cfg.replace(ie_rows=7))
    assert full.rows == exact.rows and torch.allclose(full.ie, exact.ie, rtol=1e-5)
    cheap = step(cfg.replace(ie_rows=3))
    # the same denoising term, computed in a batch of another shape (float32: last bits
    # differ with the batch shape and thread count)
    assert cheap.rows == 6 + 3 * 3
    assert torch.allclose(cheap.ddpm, exact.ddpm, rtol=1e-5, atol=1e-7)
    # the draws of the step, in the trainer's order: noise, t, then each sample's rows
    gen = torch.Generator().manual_seed(4)
    torch.randn((6, *images.shape[1:]), generator=gen)
    t = torch.randint(0, 1000, (6,), generator=gen)
    picked = row_subsample(3, 3, 3, generator=gen)
    present = torch.zeros(8, 3, dtype=torch.bool)
    present[picked.T, torch.arange(3).expand(3, 3)] = True
    present[-1] = True
    eps = seen[0]
    rows = torch.cat([eps[6:].view(3, 7, 3, 16, 16), eps[:3, None]], 1)
    if one_sided:
        out = output_masks(labels[:3], ["eyes", "nose"], dilation=1, outside="split")
        terms = null_terms(3, concept_null_pairs(3, n_outputs=out.shape[1]))
    else:
        out = player_masks(labels[:3], ["eyes", "nose"], dilation=1)
        terms = dummy_terms(3)
    from interpddpm.training.losses import ie_sample_weights

    w = ie_sample_weights(sched, t[:3], cfg)
    want = row_subsample_loss(game_values(rows, out), terms, present, 3, w)
    assert torch.allclose(cheap.ie, want, rtol=1e-4)
    # the rows the cheap step ran are those exact rows
    assert torch.allclose(
        seen[2][6:].view(3, 3, 3, 16, 16), rows[torch.arange(3)[:, None], picked], atol=1e-5
    )


def test_ie_rows_leaves_recorded_configs_alone_and_refuses_bad_values() -> None:
    cfg = TrainConfig(interpretable=True, concepts=["eyes", "nose", "mouth"])
    assert "ie_rows" not in cfg.to_dict()
    assert cfg.replace(ie_rows=None).fingerprint() == cfg.fingerprint()
    cheap = cfg.replace(ie_rows=4)
    assert cheap.to_dict()["ie_rows"] == 4 and cheap.fingerprint() != cfg.fingerprint()
    # the rows a step adds, as the memory check and the time budget charge them
    assert (cfg.ie_rows_per_sample(), cheap.ie_rows_per_sample()) == (15, 4)
    pooled = cfg.replace(ie_exact_max_players=3, ie_samples=6)
    assert pooled.ie_rows_per_sample() == 6 + 4 + 1
    assert cfg.replace(interpretable=False).ie_rows_per_sample() == 0
    with pytest.raises(ConfigError, match="at most 15"):
        cfg.replace(ie_rows=16)
    with pytest.raises(ConfigError, match="ie_exact_max_players"):
        cfg.replace(ie_rows=4, ie_exact_max_players=3)
