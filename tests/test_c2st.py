"""The classifier two-sample test: calibrated at chance when both sets come from one
distribution (over independent draws), powerful against washed-out faces, deterministic, and
clear about bad input."""

from __future__ import annotations

import statistics

import pytest
import torch

from interpddpm.c2st import c2st, wilson_interval
from interpddpm.toyfaces import ToyFaces

#: A small test that still learns on 128 images a set (about 120 optimizer steps a fold).
SMALL = dict(width=8, epochs=8, batch_size=16)


def faces(seed: int, n: int = 128) -> torch.Tensor:
    return ToyFaces(32, n, seed=seed).batch(range(n))[0]


def washed_out(x: torch.Tensor) -> torch.Tensor:
    """Less saturated and darker, as the issue's DDIM samples look."""
    return 0.85 * (0.6 * x + 0.4 * x.mean(1, keepdim=True))


def test_wilson_interval_matches_known_values() -> None:
    low, high = wilson_interval(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert (low, high) == pytest.approx((0, 0.2775), abs=1e-4)
    a, b = wilson_interval(30, 40, 0.9)
    c, d = wilson_interval(10, 40, 0.9)
    assert (a, b) == pytest.approx((1 - d, 1 - c))  # symmetric in success and failure
    assert wilson_interval(30, 40, 0.99)[0] < a  # more confidence, a wider interval
    with pytest.raises(ValueError, match="correct <= total"):
        wilson_interval(11, 10)


def test_same_distribution_scores_chance_on_average() -> None:
    """Over independent draws of two sets from one distribution, the held-out accuracy
    averages 0.5 (binomial sd of one test: 0.031 at 256 predictions)."""
    runs = [c2st(faces(100 + 2 * s), faces(101 + 2 * s), seed=s, **SMALL) for s in range(4)]
    mean = statistics.mean(r.accuracy for r in runs)
    assert abs(mean - 0.5) < 3 * 0.031 / 2, [r.accuracy for r in runs]
    assert all(r.n_per_set == 128 and len(r.fold_accuracies) == 4 for r in runs)


def test_washed_out_faces_are_detected() -> None:
    result = c2st(faces(1), washed_out(faces(2)), **SMALL)
    assert result.accuracy > 0.75 and result.low > 0.5, str(result)


def test_every_image_is_tested_once_and_the_run_is_reproducible() -> None:
    real, fake = faces(3, 64), washed_out(faces(4, 64))
    state = torch.random.get_rng_state()
    a = c2st(real, fake, **SMALL)
    assert torch.equal(state, torch.random.get_rng_state()), "the global RNG was used"
    b = c2st(real, fake, **SMALL)
    assert a == b
    # equal folds (64 a set, 4 folds): the pooled accuracy is the mean of the folds'
    assert a.accuracy == pytest.approx(statistics.mean(a.fold_accuracies))
    assert a.low <= a.accuracy <= a.high
    assert set(a.as_row()) == {"C2ST", "C2ST low", "C2ST high"}


def test_bad_input_is_explained() -> None:
    x = faces(5, 32)
    with pytest.raises(ValueError, match="differ in shape"):
        c2st(x, x[:, :, :16, :16])
    with pytest.raises(ValueError, match="NaN"):
        c2st(x, x * float("nan"))
    with pytest.raises(ValueError, match="at least 16 images"):
        c2st(x[:8], x[:8])
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        c2st(x[0], x[0])
    with pytest.raises(ValueError, match="folds"):
        c2st(x, x, folds=1)
