"""Shapley values (eq. 4): exact enumeration and permutation sampling (Castro et al. 2009).

``phi_v(i|N) = sum_{S subset N\\{i}} |S|! (n-1-|S|)! / n! * (v(S u {i}) - v(S))``.

Both estimators return a tensor ``[n_players, *value_shape]``: for a vector-valued game the
Shapley value is taken component by component (linearity), which is how the paper's K output
regions are handled at once.

Serves chapters 1, 2 and 4.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
from torch import Tensor

from .games import Game, all_coalitions, check_exact_size, check_game, evaluate


def shapley_weights(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``w[s] = s! (n-1-s)! / n!`` for coalition sizes ``s = 0..n-1`` (the weights of eq. 4)."""
    return torch.tensor([1.0 / (n * math.comb(n - 1, s)) for s in range(n)], dtype=dtype)


def marginal_index_pairs(n: int) -> tuple[Tensor, Tensor]:
    """Row numbers ``(without[i], with_[i])``, each ``[n, 2**(n-1)]``, of ``S`` and ``S u {i}``.

    ``without[i]`` lists every coalition that lacks ``i`` (bit encoding of
    :func:`interpddpm.games.all_coalitions`); ``with_[i] = without[i] | (1 << i)``.
    """
    rows = torch.arange(2**n)
    without = torch.stack([rows[(rows >> i) & 1 == 0] for i in range(n)])
    with_ = without | (1 << torch.arange(n)).unsqueeze(1)
    return without, with_


@functools.lru_cache(maxsize=16)
def _marginal_plan(n: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(without, with_, weights)`` for eq. (4) on ``n`` players: the row pairs of
    :func:`marginal_index_pairs` and the float64 weight ``w(|S|)`` of each pair ``[n,
    2**(n-1)]``. Cached per ``n``: the index work is done once, not at every table."""
    without, with_ = marginal_index_pairs(n)
    sizes = all_coalitions(n).sum(1)[without]  # |S| for each S lacking i
    return without, with_, shapley_weights(n)[sizes]


def shapley_from_table(values: Tensor) -> Tensor:
    """Exact Shapley values from a full value table ``[2**n, *value_shape]`` (no game calls).

    Row ``r`` is ``v`` of the coalition whose members are the set bits of ``r``
    (:func:`interpddpm.games.all_coalitions`); a row count that is not ``2**n`` with ``n >= 1``
    is refused (``ValueError``): it is no value table of any game.

    Each player's marginal contributions ``v(S u {i}) - v(S)`` are formed first (a null
    player's are exactly zero, so its value is exactly zero), then weighted and summed in one
    batched matrix product.
    """
    rows = values.shape[0] if values.ndim else 0
    if rows < 2 or rows & (rows - 1):
        raise ValueError(
            f"a value table has 2**n rows (one per coalition of n >= 1 players), got {rows} "
            "rows; evaluate the game on interpddpm.games.all_coalitions(n)."
        )
    n = rows.bit_length() - 1
    without, with_, weights = _marginal_plan(n)
    dtype = values.dtype if values.is_floating_point() else torch.float64
    flat = values.reshape(rows, -1)
    if flat.device != without.device:
        without, with_ = without.to(flat.device), with_.to(flat.device)
    deltas = (flat[with_] - flat[without]).to(dtype)  # [n, 2**(n-1), D]
    weights = weights.to(device=values.device, dtype=dtype).unsqueeze(1)  # [n, 1, 2**(n-1)]
    return torch.bmm(weights, deltas).reshape(n, *values.shape[1:])


def exact_shapley(game: Game, *, batch_size: int | None = None) -> Tensor:
    """Exact Shapley values of every player, evaluating each of the 2**n coalitions once.

    The coalitions are sent in batches of ``batch_size`` rows (all at once when None), so the game
    sees exactly ``2**n`` rows in total. Returns ``[n, *value_shape]``. For float64 accuracy give a
    float64 game; the arithmetic follows the game's dtype.
    """
    n = check_game(game)
    check_exact_size(n)
    coalitions = all_coalitions(n)
    if batch_size is None:
        values = evaluate(game, coalitions)
    else:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        values = torch.cat([evaluate(game, chunk) for chunk in coalitions.split(batch_size)], 0)
    return shapley_from_table(values)


def shapley_by_definition(game: Game) -> Tensor:
    """Eq. (4) written out literally, one coalition pair at a time (slow; a reference for tests)."""
    n = check_game(game)
    check_exact_size(n)
    phi = None
    for i in range(n):
        others = [j for j in range(n) if j != i]
        total = 0.0
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - 1 - size) / math.factorial(n)
            for subset in itertools.combinations(others, size):
                s = torch.zeros(1, n, dtype=torch.bool)
                s[0, list(subset)] = True
                s_i = s.clone()
                s_i[0, i] = True
                total = total + weight * (evaluate(game, s_i)[0] - evaluate(game, s)[0])
        total = torch.as_tensor(total)
        phi = total.new_zeros((n, *total.shape)) if phi is None else phi
        phi[i] = total
    return phi


#: Orders of :func:`sample_permutations`.
DESIGNS = ("plain", "antithetic", "stratified")


def sample_permutations(
    n: int,
    n_permutations: int,
    *,
    antithetic: bool = False,
    design: str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``n_permutations`` uniform random permutations of ``range(n)`` as int64 ``[P, n]``.

    ``design`` (default ``"plain"``; ``antithetic=True`` is ``"antithetic"``):

    - ``"plain"``: independent permutations.
    - ``"antithetic"``: every second permutation is the reverse of the one before it (a
      classic variance reduction: a player early in one is late in the other).
    - ``"stratified"``: blocks of ``2n``: one random permutation, its ``n`` cyclic rotations,
      each followed by its reverse. Within a block every player stands at every position
      exactly twice, so the size of the coalition before it (the largest source of variance)
      is balanced instead of drawn. Each permutation alone is still uniform (a rotation or a
      reverse of a uniform permutation is uniform), so the estimate stays unbiased.
    """
    if (
        isinstance(n_permutations, bool)
        or not isinstance(n_permutations, int)
        or n_permutations <= 0
    ):
        raise ValueError(
            f"n_permutations must be a positive int, got {n_permutations!r}; "
            "more permutations give a more accurate estimate (error ~ 1/sqrt(n_permutations))."
        )
    if design is None:
        design = "antithetic" if antithetic else "plain"
    elif antithetic and design != "antithetic":
        raise ValueError(f"antithetic=True contradicts design={design!r}; give one of them.")
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}.")
    if design == "plain":
        return torch.argsort(torch.rand(n_permutations, n, generator=generator), dim=1)
    if design == "antithetic":
        perms = torch.argsort(torch.rand((n_permutations + 1) // 2, n, generator=generator), 1)
        return torch.stack([perms, perms.flip(1)], 1).reshape(-1, n)[:n_permutations]
    blocks = -(-n_permutations // (2 * n))
    base = torch.argsort(torch.rand(blocks, n, generator=generator), dim=1)  # [B, n]
    rotations = (torch.arange(n).view(n, 1) + torch.arange(n).view(1, n)) % n  # [shift, pos]
    rotated = base[:, rotations]  # [B, n, n]: rotation k of block b
    perms = torch.stack([rotated, rotated.flip(2)], 2)  # [B, n, 2, n]: each, then its reverse
    return perms.reshape(-1, n)[:n_permutations]


def permutation_shapley(
    game: Game,
    n_permutations: int,
    *,
    antithetic: bool = False,
    design: str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Castro, Gomez and Tejada (2009): Shapley values from random permutations.

    For each permutation, the ``n + 1`` nested coalitions (prefixes of length 0..n) give every
    player's marginal contribution ``v(prefix u {i}) - v(prefix)``; the estimate averages them.
    All prefixes of all permutations go to the game in ONE batched call, the empty and the grand
    coalition once each, so the game sees ``n_permutations * (n - 1) + 2`` rows (at most
    ``n_permutations * (n + 1)``). Each permutation's contributions telescope to
    ``v(N) - v(empty)``, so every estimate satisfies efficiency exactly, and it is unbiased.
    Returns ``[n, *value_shape]``.

    ``design`` (or ``antithetic``) chooses how the orders are drawn
    (:func:`sample_permutations`): ``"stratified"`` balances every player's positions and
    gave 1.2-4x lower error than ``"plain"`` at the same rows on the games of
    ``benchmarks/shapley_engines.py``; ``"plain"`` stays the default (chapter 3 compares it).
    """
    n = check_game(game)
    perms = sample_permutations(
        n, n_permutations, antithetic=antithetic, design=design, generator=generator
    )
    p = perms.shape[0]
    # prefixes[p, j] = the first j players of permutation p, j = 0..n
    position = torch.empty_like(perms)
    position.scatter_(1, perms, torch.arange(n).expand(p, n))
    prefixes = position.unsqueeze(1) < torch.arange(n + 1).view(1, n + 1, 1)  # [P, n+1, n]
    inner = prefixes[:, 1:n].reshape(-1, n)  # the shared empty and grand coalitions go once
    ends = torch.stack([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)])
    values = evaluate(game, torch.cat([ends, inner], 0))
    v_empty, v_full, v_inner = values[0], values[1], values[2:]
    v_inner = v_inner.reshape(p, n - 1, *values.shape[1:])
    v = torch.cat(
        [v_empty.expand(p, 1, *values.shape[1:]), v_inner, v_full.expand(p, 1, *values.shape[1:])],
        1,
    )  # [P, n+1, *value_shape]
    contributions = v[:, 1:] - v[:, :-1]  # [P, n, ...]: contribution of the j-th player in line
    dtype = values.dtype if values.is_floating_point() else torch.float64
    phi = torch.zeros((n, *values.shape[1:]), dtype=dtype, device=values.device)
    phi.index_add_(
        0,
        perms.reshape(-1).to(values.device),
        contributions.reshape(p * n, *values.shape[1:]).to(dtype),
    )
    return phi / p


__all__ = [
    "DESIGNS",
    "axiom_residuals",
    "exact_shapley",
    "marginal_index_pairs",
    "permutation_shapley",
    "sample_permutations",
    "shapley_by_definition",
    "shapley_from_table",
    "shapley_weights",
]


def axiom_residuals(
    values: Tensor, *, generator: torch.Generator | None = None
) -> dict[str, float]:
    """Largest violation of each Shapley axiom on variants of the game ``values[2**n, ...]``.

    - efficiency: ``|sum_i phi_i - (v(N) - v(empty))|``;
    - symmetry: players i, j made interchangeable (values averaged over the i<->j swap),
      ``|phi_i - phi_j|``;
    - dummy: player i made null (``v(S) := v(S \\ {i})``), ``|phi_i|``;
    - linearity: ``|phi(a v + b w) - a phi(v) - b phi(w)|`` with a second random game ``w``.
    """
    n = values.shape[0].bit_length() - 1
    rows = torch.arange(2**n)
    phi = shapley_from_table(values)
    out = {"efficiency": float((phi.sum(0) - (values[-1] - values[0])).abs().max())}
    i, j = torch.randperm(n, generator=generator)[:2].tolist() if n > 1 else (0, 0)
    bi, bj = (rows >> i) & 1, (rows >> j) & 1
    swapped = rows & ~((1 << i) | (1 << j)) | (bj << i) | (bi << j)
    sym = shapley_from_table((values + values[swapped]) / 2)
    out["symmetry"] = float((sym[i] - sym[j]).abs().max())
    dummy = shapley_from_table(values[rows & ~(1 << i)])
    out["dummy"] = float(dummy[i].abs().max())
    other = torch.randn(values.shape, generator=generator, dtype=values.dtype)
    a, b = torch.randn(2, generator=generator, dtype=values.dtype)
    lin = shapley_from_table(a * values + b * other)
    out["linearity"] = float((lin - a * phi - b * shapley_from_table(other)).abs().max())
    return out
