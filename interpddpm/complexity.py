"""Measured cost and accuracy of the ways to compute the losses (chapter 03).

The counts come from :class:`interpddpm.games.CountingGame`, so they are measured, not
recomputed from :func:`interpddpm.theorem.evaluation_counts`; the chapter shows both agree.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from .games import CountingGame, Game
from .shapley import exact_shapley, permutation_shapley
from .theorem import dummy_loss, evaluation_counts, shapley_loss

LossFn = Callable[[Game, int, torch.Generator], Tensor]

#: The four ways of the paper and the two pooled ones, each ``(game, C, generator) -> loss``.
LOSS_APPROACHES: dict[str, LossFn] = {
    "L_I exact (paper)": lambda g, c, gen: shapley_loss(g, per_pair=True),
    "L_IE exact (paper)": lambda g, c, gen: dummy_loss(g, per_region=True),
    "L_IE sampled (paper)": lambda g, c, gen: dummy_loss(
        g, n_samples=c, generator=gen, per_region=True
    ),
    "L_IE exact (pooled)": lambda g, c, gen: dummy_loss(g),
    "L_IE sampled (pooled)": lambda g, c, gen: dummy_loss(g, n_samples=c, generator=gen),
}


def measure_loss_costs(
    ks: Iterable[int],
    n_samples: int,
    make_game: Callable[[int], Game],
    *,
    repeats: int = 3,
    max_rows: int = 2**20,
    seed: int = 0,
) -> list[dict]:
    """Rows sent to the game and best-of-``repeats`` wall time of every approach, per K.

    An approach whose predicted row count exceeds ``max_rows`` is skipped (recorded as None)
    to keep the chapter's run time bounded.
    """
    records = []
    for k in ks:
        game = CountingGame(make_game(k))
        predicted = evaluation_counts(k, n_samples)
        for name, fn in LOSS_APPROACHES.items():
            row = {"K": k, "approach": name, "predicted": predicted[name]}
            if predicted[name] > max_rows:
                records.append({**row, "rows": None, "seconds": None})
                continue
            best = math.inf
            for _ in range(repeats):
                game.reset()
                gen = torch.Generator().manual_seed(seed)
                start = time.perf_counter()
                fn(game, n_samples, gen)
                best = min(best, time.perf_counter() - start)
            records.append({**row, "rows": game.rows, "seconds": best})
    return records


def rmse_against_budget(
    estimate: Callable[[int, torch.Generator], Tensor],
    exact: Tensor,
    budgets: Iterable[int],
    *,
    repeats: int,
    seed: int = 0,
) -> list[float]:
    """Root-mean-square error of ``estimate(budget, generator)`` over ``repeats`` draws."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for budget in budgets:
        errs = torch.stack(
            [(estimate(budget, gen) - exact).double().pow(2).mean() for _ in range(repeats)]
        )
        out.append(float(errs.mean().sqrt()))
    return out


def dummy_loss_rmse(
    game: Game, budgets: Iterable[int], *, repeats: int, per_region: bool = False, seed: int = 0
) -> list[float]:
    """RMSE of the sampled ``L_IE`` against the exact one, per budget ``C``."""
    exact = dummy_loss(game)
    return rmse_against_budget(
        lambda c, gen: dummy_loss(game, n_samples=c, generator=gen, per_region=per_region),
        exact,
        budgets,
        repeats=repeats,
        seed=seed,
    )


def permutation_rmse(
    game: Game, budgets: Iterable[int], *, repeats: int, antithetic: bool = False, seed: int = 0
) -> list[float]:
    """RMSE of :func:`permutation_shapley` against :func:`exact_shapley`, per permutation count."""
    exact = exact_shapley(game)
    return rmse_against_budget(
        lambda p, gen: permutation_shapley(game, p, antithetic=antithetic, generator=gen),
        exact,
        budgets,
        repeats=repeats,
        seed=seed,
    )


def loglog_slope(x: Iterable[float], y: Iterable[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (-0.5 for a 1/sqrt(C) error)."""
    lx = torch.tensor([math.log(v) for v in x], dtype=torch.float64)
    ly = torch.tensor([math.log(v) for v in y], dtype=torch.float64)
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float((lx * ly).sum() / (lx * lx).sum())
