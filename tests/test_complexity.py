"""complexity.py (chapter 3): measured row counts match the predicted ones, the errors of the
sampled estimators shrink with their budget, and the log-log slope is a least-squares slope."""

from __future__ import annotations

import math

import pytest
import torch

from interpddpm.complexity import (
    LOSS_APPROACHES,
    dummy_loss_rmse,
    loglog_slope,
    measure_loss_costs,
    permutation_rmse,
    rmse_against_budget,
)
from interpddpm.games import random_game
from interpddpm.theorem import evaluation_counts


def game(k: int):
    """Values [2**K, 2, K]: two samples, one output region per player (what the losses need)."""
    return random_game(k, (2, k), generator=torch.Generator().manual_seed(k))


def test_measured_rows_are_the_predicted_ones_and_big_approaches_are_skipped() -> None:
    records = measure_loss_costs([2, 3], 4, game, repeats=1)
    assert len(records) == 2 * len(LOSS_APPROACHES)
    for r in records:
        assert r["rows"] == r["predicted"] == evaluation_counts(r["K"], 4)[r["approach"]]
        assert r["seconds"] >= 0
    capped = measure_loss_costs([3], 4, game, repeats=1, max_rows=20)
    skipped = {r["approach"] for r in capped if r["rows"] is None}
    assert skipped == {r["approach"] for r in capped if r["predicted"] > 20} and skipped
    assert all(r["seconds"] is None for r in capped if r["rows"] is None)


def test_sampled_errors_shrink_with_the_budget() -> None:
    g = game(4)
    small, large = dummy_loss_rmse(g, [2, 512], repeats=8)
    assert 0 < large < small
    assert dummy_loss_rmse(g, [4], repeats=3) == dummy_loss_rmse(g, [4], repeats=3)  # seeded
    few, many = permutation_rmse(g, [2, 256], repeats=8)
    assert 0 < many < few
    exact = torch.tensor([1.0, 2.0])
    assert rmse_against_budget(lambda c, gen: exact, exact, [1, 5], repeats=2) == [0.0, 0.0]
    off = rmse_against_budget(lambda c, gen: exact + 3, exact, [1], repeats=2)
    assert off == [pytest.approx(3.0)]


def test_loglog_slope() -> None:
    xs = [1, 4, 16, 64]
    assert loglog_slope(xs, [3 / math.sqrt(x) for x in xs]) == pytest.approx(-0.5)
    assert loglog_slope(xs, [x**2 for x in xs]) == pytest.approx(2.0)
