"""Null players, Theorem 1 and the paper's two interpretability losses.

Conventions. The losses take a game whose value shape is ``[..., K]`` with ``K == n_players``:
component ``k`` of the last axis is ``v_k``, the game of output region ``k`` (eq. 5); any other
value axes (a batch of ``x_t``, say) are averaged.

- :func:`shapley_loss`: ``L_I = sum_k sum_{j != k} |phi_{v_k}(j)|`` (eq. 7).
- :func:`dummy_loss`: ``L_IE = sum_k sum_{S subset K\\{k}} [(v_k(S u {k}) - v_k({k}))^2
  + (v_k(S) - v_k(empty))^2]`` (eq. 8), justified by Theorem 1.

The pooled form used here (not in the paper): each coalition ``T`` of ``K`` appears exactly once
in the inner sum for every ``k`` (as ``S u {k}`` when ``k in T``, as ``S`` otherwise), so
``L_IE = sum_T sum_k d_k(T)^2`` with ``d_k(T) = v_k(T) - v_k(T n {k})``. One game evaluation of
``T`` yields ``v_k(T)`` for every ``k``: the exact loss costs ``2**K`` evaluations and an unbiased
sampled estimate ``C + K + 1`` (C sampled coalitions, the empty one and the K singletons), instead
of the paper's ``K 2**K`` and ``O(K C)``. Both this loss and the one-sided null-player loss are
sums of squared differences of two coalitions' values (:class:`PairTerms`), so a random subset
of ``m`` rows per sample estimates either without bias when each term is weighed by the inverse
chance of having both its rows (:func:`row_subsample_loss`, the trainer's ``ie_rows``).

Serves chapters 2, 3 and 5.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .games import Game, TableGame, all_coalitions, check_exact_size, check_game, evaluate
from .shapley import exact_shapley, marginal_index_pairs, shapley_weights

ATOL = 1e-9


# --------------------------------------------------------------------------------------------
# Null players and Theorem 1
# --------------------------------------------------------------------------------------------
def _table(game: Game) -> Tensor:
    check_exact_size(check_game(game))
    return evaluate(game, all_coalitions(game.n_players))


def _close(a: Tensor, b: Tensor, atol: float) -> Tensor:
    """Elementwise closeness reduced over value axes: ``[rows]`` bool."""
    return ((a - b).abs() <= atol).reshape(a.shape[0], -1).all(1)


def null_players(game: Game, *, atol: float = ATOL) -> list[int]:
    """Players ``i`` with ``v(S u {i}) = v(S)`` for every ``S`` (all value components), exactly.

    Evaluates the ``2**n`` coalitions once.
    """
    values = _table(game)
    without, with_ = marginal_index_pairs(game.n_players)
    return [
        i
        for i in range(game.n_players)
        if bool(_close(values[with_[i]], values[without[i]], atol).all())
    ]


def theorem1_hypothesis(game: Game, player: int, *, atol: float = ATOL) -> bool:
    """Theorem 1's hypothesis for ``player`` i: for every ``S subset N\\{i}``,
    ``v(S u {i}) = v({i})`` and ``v(S) = v(empty)``.

    Theorem 1: the hypothesis implies that every player other than ``i`` is null. The converse
    also holds (if all others are null, ``v(S u {i}) = v({i})`` and ``v(S) = v(empty)`` by
    removing the null players of ``S`` one at a time), so the two are equivalent.
    """
    n = check_game(game)
    if not 0 <= player < n:
        raise ValueError(f"player must be in 0..{n - 1}, got {player}.")
    values = _table(game)
    without, with_ = marginal_index_pairs(n)
    v_i = values[1 << player].expand_as(values[with_[player]])
    v_0 = values[0].expand_as(values[without[player]])
    return bool(
        _close(values[with_[player]], v_i, atol).all()
        and _close(values[without[player]], v_0, atol).all()
    )


# --------------------------------------------------------------------------------------------
# The losses
# --------------------------------------------------------------------------------------------
def _check_values(values: Tensor, k: int) -> None:
    if values.ndim < 2 or values.shape[-1] != k:
        raise ValueError(
            f"the losses need a game whose values end with one component per player "
            f"([B, ..., {k}]: component k is v_k, the game of output region k), got value "
            f"shape {list(values.shape[1:])}."
        )


def _positive_int(x: int, name: str, hint: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x <= 0:
        raise ValueError(f"{name} must be a positive int, got {x!r}; {hint}")
    return x


@dataclasses.dataclass(frozen=True)
class CoalitionDesign:
    """Coalitions to evaluate for one estimate of ``L_IE`` in the pooled form.

    ``L_IE ~= sum_r weights[r] * sum_k d_k(coalitions[r])^2``; the references
    ``v_k(empty)`` and ``v_k({k})`` are read from rows ``empty_row`` and ``singleton_rows[k]``
    (always part of ``coalitions``). ``full_row`` is the grand coalition's row when present:
    its game value is the ordinary forward pass, which training can reuse.
    """

    coalitions: Tensor  # bool [R, K]
    weights: Tensor  # float64 [R]
    empty_row: int
    singleton_rows: Tensor  # int64 [K]
    full_row: int | None

    @property
    def n_rows(self) -> int:
        return int(self.coalitions.shape[0])


def exact_design(k: int) -> CoalitionDesign:
    """All ``2**K`` coalitions, weight 1 each (the exact ``L_IE``)."""
    check_exact_size(k)
    coalitions = all_coalitions(k)
    return CoalitionDesign(
        coalitions=coalitions,
        weights=torch.ones(2**k, dtype=torch.float64),
        empty_row=0,
        singleton_rows=1 << torch.arange(k),
        full_row=2**k - 1,
    )


def sampled_design(
    k: int, n_samples: int, *, generator: torch.Generator | None = None
) -> CoalitionDesign:
    """The pooled unbiased estimator: the K + 1 references plus C sampled coalitions.

    Coalitions of size <= 1 contribute ``sum_j (v_k({j}) - v_k(empty))^2`` terms that the
    references already give exactly, so they enter with weight 1; the ``2**K - K - 1``
    coalitions of size >= 2 are estimated from ``C`` i.i.d. uniform draws among them, each with
    weight ``(2**K - K - 1) / C``. The expectation is the exact loss. Rows: ``C + K + 1``.
    """
    _positive_int(
        n_samples,
        "n_samples",
        "it is the number C of sampled coalitions (or None for the exact loss).",
    )
    if k < 2:
        raise ValueError(f"L_IE needs at least 2 players (regions), got K={k}.")
    n_large = 2**k - k - 1
    # Uniform over coalitions with >= 2 players: rejection from uniform bit vectors. Accepts with
    # probability n_large / 2**K >= 1/4, so a few rounds suffice.
    drawn: list[Tensor] = []
    have = 0
    while have < n_samples:
        bits = torch.rand(max(2 * (n_samples - have), 8), k, generator=generator) < 0.5
        bits = bits[bits.sum(1) >= 2]
        drawn.append(bits)
        have += bits.shape[0]
    sampled = torch.cat(drawn)[:n_samples]
    refs = torch.zeros(k + 1, k, dtype=torch.bool)
    refs[torch.arange(1, k + 1), torch.arange(k)] = True
    weights = torch.cat(
        [
            torch.ones(k + 1, dtype=torch.float64),
            torch.full((n_samples,), n_large / n_samples, dtype=torch.float64),
        ]
    )
    return CoalitionDesign(
        coalitions=torch.cat([refs, sampled]),
        weights=weights,
        empty_row=0,
        singleton_rows=torch.arange(1, k + 1),
        full_row=None,
    )


def dummy_residuals(values: Tensor, design: CoalitionDesign) -> Tensor:
    """``d_k(T) = v_k(T) - v_k(T n {k})`` for every row ``T`` of the design: ``[R, ..., K]``."""
    k = design.coalitions.shape[1]
    _check_values(values, k)
    v_empty = values[design.empty_row]  # [..., K]
    # v_k({k}) for each k: the diagonal of the singleton rows.
    v_single = values[design.singleton_rows.to(values.device)].diagonal(dim1=0, dim2=-1)
    # diagonal() moves the K axis last: [..., K]
    member = design.coalitions.to(values.device).view(design.n_rows, *([1] * (values.ndim - 2)), k)
    return values - torch.where(member, v_single, v_empty)


def _weigh_samples(d2: Tensor, sample_weights: Tensor | None) -> Tensor:
    """Multiply squared residuals ``[R, B, ..., K]`` by one weight per sample (axis 1)."""
    if sample_weights is None:
        return d2
    if d2.ndim < 3 or sample_weights.shape != (d2.shape[1],):
        raise ValueError(
            f"sample_weights must have one weight per sample, shape [{d2.shape[1]}] for values "
            f"of shape {list(d2.shape)}, got {list(sample_weights.shape)}."
        )
    return d2 * sample_weights.to(d2).view(1, -1, *([1] * (d2.ndim - 2)))


def dummy_loss_from_values(
    values: Tensor, design: CoalitionDesign, sample_weights: Tensor | None = None
) -> Tensor:
    """``L_IE`` (eq. 8) from the game values of a design's coalitions, averaged over extra axes.

    ``sample_weights`` (``[B]``, optional) weighs the samples of axis 1 (e.g. by timestep).
    """
    d2 = _weigh_samples(dummy_residuals(values, design).pow(2), sample_weights)  # [R, ..., K]
    per_row = d2.sum(-1).reshape(design.n_rows, -1).mean(1)  # sum over k, mean over extra axes
    return (design.weights.to(per_row) * per_row).sum()


def concept_null_pairs(
    k: int, n_concepts: int | None = None, n_outputs: int | None = None
) -> list[tuple[int, int]]:
    """``(player, output)`` pairs of the one-sided constraint: no output ``j != c`` may depend on
    concept ``c`` (players ``0 .. n_concepts-1``; the last player, "the rest", is free to be read).
    ``n_outputs`` (default ``k``): outputs beyond the players, the outside cut into several
    regions (``regions.output_masks``); output ``c < n_concepts`` is concept ``c``'s region.
    """
    n_concepts = k - 1 if n_concepts is None else n_concepts
    n_outputs = k if n_outputs is None else n_outputs
    if not 1 <= n_concepts < k:
        raise ValueError(f"need 1 <= n_concepts < K, got n_concepts={n_concepts}, K={k}.")
    if n_outputs < k:
        raise ValueError(f"need n_outputs >= K = {k}, got {n_outputs}.")
    return [(c, j) for c in range(n_concepts) for j in range(n_outputs) if j != c]


def null_player_loss_from_values(
    values: Tensor,
    pairs: list[tuple[int, int]],
    sample_weights: Tensor | None = None,
    *,
    n_players: int | None = None,
) -> Tensor:
    """``sum_{(i, j) in pairs} sum_{T owns i} (v_j(T) - v_j(T \\ {i}))^2`` on all ``2**K``
    coalitions (``values`` in the row order of :func:`exact_design`), averaged over extra axes.

    Zero iff player ``i`` is a null player of ``v_j`` for every pair, so by the null-player axiom
    ``phi_i(v_j) = 0`` for exactly these pairs (the hypothesis of Theorem 1 restricted to them).
    With every pair ``i != j`` it has the same zero set as ``L_IE``; with
    :func:`concept_null_pairs` it is the one-sided constraint that swap locality needs: only the
    outside of a concept must ignore the concept's input, the concept may still read its context.

    ``n_players`` (default: one output per player) lets the last axis hold more outputs than
    there are players: the games of finer output regions on the same coalitions.
    """
    k = values.shape[-1] if n_players is None else n_players
    if n_players is None:
        _check_values(values, k)
    elif values.ndim < 2:
        raise ValueError(f"values must be [2**K, ..., outputs], got shape {list(values.shape)}.")
    n_out = values.shape[-1]
    if values.shape[0] != 2**k:
        raise ValueError(
            f"null_player_loss_from_values needs the values of all 2**K = {2**k} coalitions "
            f"(exact_design order), got {values.shape[0]} rows."
        )
    rows = torch.arange(2**k, device=values.device)
    total = values.new_zeros(())
    for i, j in pairs:
        if not (0 <= i < k and 0 <= j < n_out) or i == j:
            raise ValueError(
                f"pair (player={i}, output={j}) is invalid for K={k} and {n_out} outputs."
            )
        with_i = rows[(rows >> i) & 1 == 1]
        d = values[with_i, ..., j] - values[with_i ^ (1 << i), ..., j]  # [2**(K-1), B, ...]
        d2 = _weigh_samples(d.pow(2).unsqueeze(-1), sample_weights)
        total = total + d2.reshape(len(with_i), -1).mean(1).sum()
    return total


# --------------------------------------------------------------------------------------------
# Fewer rows per sample: each sample evaluates a random subset of the coalitions (issue 29)
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PairTerms:
    """The squared differences an exact loss sums: ``sum_t mean_samples (v_o(a) - v_o(b))^2``
    over terms ``t = (a[t], b[t], o[t])`` (rows in :func:`exact_design` order, output ``o``).

    Both losses of the trainer have this form: ``L_IE`` (eq. 8, pooled: ``a = T``,
    ``b = T n {k}``, ``o = k``) and the one-sided null-player loss (``a = T``,
    ``b = T \\ {i}``, ``o = j`` for each pair ``(i, j)``). A loss of this form can be
    estimated without bias from any random subset of the rows that knows each term's chance
    of having both its rows (:func:`row_subsample_loss`).
    """

    a: Tensor  # int64 [n_terms]
    b: Tensor  # int64 [n_terms]
    output: Tensor  # int64 [n_terms]
    n_players: int


def dummy_terms(k: int) -> PairTerms:
    """The terms of ``L_IE`` (eq. 8): ``d_k(T) = v_k(T) - v_k(T n {k})`` for every ``T`` and
    ``k`` where the two coalitions differ (the others are 0)."""
    check_exact_size(k)
    rows = torch.arange(2**k).repeat_interleave(k)
    out = torch.arange(k).repeat(2**k)
    b = rows & (1 << out)
    keep = rows != b
    return PairTerms(rows[keep], b[keep], out[keep], k)


def null_terms(k: int, pairs: list[tuple[int, int]]) -> PairTerms:
    """The terms of :func:`null_player_loss_from_values` for ``pairs`` ``(player i, output j)``:
    ``v_j(T) - v_j(T \\ {i})`` for every ``T`` that holds ``i``."""
    check_exact_size(k)
    rows = torch.arange(2**k)
    a, b, o = [], [], []
    for i, j in pairs:
        if not 0 <= i < k or j < 0 or i == j:
            raise ValueError(f"pair (player={i}, output={j}) is invalid for K={k}.")
        with_i = rows[(rows >> i) & 1 == 1]
        a.append(with_i)
        b.append(with_i ^ (1 << i))
        o.append(torch.full_like(with_i, j))
    return PairTerms(torch.cat(a), torch.cat(b), torch.cat(o), k)


def row_subsample(
    k: int, n_rows: int, n_samples: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """For each of ``n_samples`` samples, ``n_rows`` of the ``2**K - 1`` coalitions other than
    the grand one, drawn uniformly without replacement and independently per sample: int64
    ``[n_samples, n_rows]`` row numbers (:func:`exact_design` order), sorted per sample. The
    grand coalition is not drawn: every sample has it (the trainer's ordinary forward pass)."""
    check_exact_size(k)
    others = 2**k - 1
    _positive_int(n_rows, "n_rows", "the coalition rows evaluated per sample.")
    if not 2 <= n_rows <= others:
        raise ValueError(
            f"n_rows must be in [2, 2**K - 1 = {others}] for K={k}, got {n_rows}: a term "
            "compares two coalitions, so a sample needs at least two rows besides the grand one."
        )
    keys = torch.rand(n_samples, others, generator=generator)
    return keys.argsort(1)[:, :n_rows].sort(1).values


def row_pair_probability(k: int, n_rows: int, a: Tensor, b: Tensor) -> Tensor:
    """``P(rows a and b are both evaluated)`` under :func:`row_subsample` (float64): the grand
    coalition always is, any other row with chance ``m / M`` (``M = 2**K - 1``), two distinct
    other rows with chance ``m (m - 1) / (M (M - 1))``."""
    full, big_m = 2**k - 1, 2**k - 1
    one = n_rows / big_m
    two = n_rows * (n_rows - 1) / (big_m * (big_m - 1)) if big_m > 1 else 1.0
    fulls = (a == full).to(torch.int64) + (b == full).to(torch.int64)
    p = torch.full(a.shape, two, dtype=torch.float64)
    p[fulls == 1] = one
    p[fulls == 2] = 1.0
    return p


def row_subsample_loss(
    values: Tensor,
    terms: PairTerms,
    present: Tensor | None = None,
    n_rows: int | None = None,
    sample_weights: Tensor | None = None,
) -> Tensor:
    """``sum_t mean_samples w_s (v_o(a) - v_o(b))^2`` (the loss of ``terms``) from game values
    ``[2**K, B, ..., outputs]`` in :func:`exact_design` order, averaged over extra axes.

    ``present=None``: every row holds a value, the exact loss. Otherwise ``present`` (bool
    ``[2**K, B]``) says which rows sample ``B`` evaluated (:func:`row_subsample` with
    ``n_rows``; absent rows may hold anything, they are multiplied by 0) and each term counts
    with weight ``1 / P(both rows)`` (:func:`row_pair_probability`): an unbiased estimate of
    the exact loss, whatever the game, since every term has both rows with that chance.
    """
    k = terms.n_players
    if values.ndim < 2 or values.shape[0] != 2**k:
        raise ValueError(
            f"values must be [2**K = {2**k}, B, ..., outputs], got shape {list(values.shape)}."
        )
    d = values[terms.a, ..., terms.output] - values[terms.b, ..., terms.output]  # [T, B, ...]
    d2 = _weigh_samples(d.pow(2).unsqueeze(-1), sample_weights).squeeze(-1)
    if present is not None:
        if n_rows is None:
            raise ValueError("a row subsample needs its n_rows (rows drawn per sample).")
        both = (present[terms.a] & present[terms.b]).to(d2.dtype)  # [T, B]
        inv = 1 / row_pair_probability(k, n_rows, terms.a, terms.b).to(d2)
        d2 = d2 * (both * inv[:, None]).view(*both.shape, *([1] * (d2.ndim - 2)))
    return d2.reshape(d2.shape[0], -1).mean(1).sum()


def dummy_loss(
    game: Game,
    *,
    n_samples: int | None = None,
    generator: torch.Generator | None = None,
    per_region: bool = False,
) -> Tensor:
    """``L_IE`` of eq. (8) for a game with values ``[B, ..., K]`` (``K == n_players``).

    ``n_samples=None``: exact, ``2**K`` coalition rows in one call. ``n_samples=C``: the pooled
    unbiased estimate from ``C`` random coalitions plus the ``K + 1`` references
    (``C + K + 1`` rows, one call). ``per_region=True`` reproduces the paper's accounting instead,
    one game per output region (exact: ``K 2**K`` rows; sampled: ``K (2 C + 2)`` rows, O(KC)),
    with the same expected value; it exists to measure the cost the pooled form saves.

    A game of one player (``K = 1``) has ``L_IE = 0`` on every path: eq. (8) sums over pairs of
    regions ``j != k`` and there is none (every residual ``v(T) - v(T n {1})`` is 0). The value
    is computed from the two references (empty and ``{1}``), so it has the game's dtype, device
    and autograd graph. Training with one player is refused where it belongs: the trainer's
    configuration (:class:`interpddpm.training.TrainConfig`) needs at least one concept (K >= 2).
    """
    k = check_game(game)
    if k == 1:  # no pair j != k: the exact design of one player (2 rows) gives 0 on every path
        design = exact_design(1)
        values = evaluate(game, design.coalitions)
        _check_values(values, 1)
        return dummy_loss_from_values(values, design)
    if per_region:
        return _dummy_loss_per_region(game, n_samples, generator)
    design = (
        exact_design(k) if n_samples is None else sampled_design(k, n_samples, generator=generator)
    )
    values = evaluate(game, design.coalitions)
    _check_values(values, k)
    return dummy_loss_from_values(values, design)


def _dummy_loss_per_region(
    game: Game, n_samples: int | None, generator: torch.Generator | None
) -> Tensor:
    """Eq. (8) region by region, as the paper counts it (one batched call per region)."""
    k = game.n_players
    if k < 2:
        raise ValueError(f"L_IE needs at least 2 players (regions), got K={k}.")
    total = None
    for region in range(k):
        if n_samples is None:
            check_exact_size(k)
            s = all_coalitions(k)[all_coalitions(k)[:, region].logical_not()]  # S subset K\{k}
            weight = 1.0
        else:
            _positive_int(n_samples, "n_samples", "the number C of sampled coalitions.")
            s = torch.rand(n_samples, k, generator=generator) < 0.5
            s[:, region] = False
            weight = 2 ** (k - 1) / n_samples
        s_k = s.clone()
        s_k[:, region] = True
        refs = torch.zeros(2, k, dtype=torch.bool)
        refs[1, region] = True  # rows: empty, {k}
        if n_samples is None:
            coalitions = torch.cat([s_k, s])  # refs are among them: s[0] = empty, s_k[0] = {k}
            v = evaluate(game, coalitions)
            _check_values(v, k)
            v = v[..., region]
            v_k, v_s = v[: len(s)], v[len(s) :]
            ref_single, ref_empty = v_k[0], v_s[0]
        else:
            v = evaluate(game, torch.cat([refs, s_k, s]))
            _check_values(v, k)
            v = v[..., region]
            ref_empty, ref_single = v[0], v[1]
            v_k, v_s = v[2 : 2 + len(s)], v[2 + len(s) :]
        terms = (v_k - ref_single).pow(2) + (v_s - ref_empty).pow(2)
        part = weight * terms.reshape(len(s), -1).mean(1).sum()
        total = part if total is None else total + part
    return total


def shapley_loss(game: Game, *, per_pair: bool = False) -> Tensor:
    """``L_I = sum_k sum_{j != k} |phi_{v_k}(j)|`` (eq. 7), exact, averaged over extra axes.

    Default: all ``phi_{v_k}(j)`` from ONE exact Shapley computation of the vector game
    (``2**K`` rows). ``per_pair=True`` reproduces the paper's accounting: a separate Shapley value
    per pair ``(k, j)``, ``K (K - 1) 2**K`` rows in all, same result.
    """
    k = check_game(game)
    if per_pair:
        check_exact_size(k)
        coalitions = all_coalitions(k)
        total = None
        for out in range(k):
            for j in range(k):
                if j == out:
                    continue
                without = coalitions[~coalitions[:, j]]
                with_ = without.clone()
                with_[:, j] = True
                v = evaluate(game, torch.cat([with_, without]))
                _check_values(v, k)
                v = v[..., out]
                dtype = v.dtype if v.is_floating_point() else torch.float64
                w = shapley_weights(k, dtype)[without.sum(1)]
                w = w.view(-1, *([1] * (v.ndim - 1)))
                phi = (w * (v[: len(without)] - v[len(without) :])).sum(0)
                part = phi.abs().mean()
                total = part if total is None else total + part
        return total
    phi = exact_shapley(game)  # [K (player j), ..., K (output k)]
    _check_values(phi, k)
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=phi.device)
    mask = off_diagonal.view(k, *([1] * (phi.ndim - 2)), k)
    per_elem = (phi.abs() * mask).sum(0).sum(-1)  # sum over j != k and over k: [...]
    return per_elem.mean() if per_elem.ndim else per_elem


# --------------------------------------------------------------------------------------------
# The cost model
# --------------------------------------------------------------------------------------------
COST_APPROACHES = (
    "L_I exact (paper)",
    "L_IE exact (paper)",
    "L_IE sampled (paper)",
    "L_IE exact (pooled)",
    "L_IE sampled (pooled)",
)


def evaluation_counts(k: int, n_samples: int) -> dict[str, int]:
    """Game evaluations (coalition rows) per ``x_t`` of each way to compute the loss.

    The paper's counts: ``L_I`` exact ``K (K-1) 2**K``; ``L_IE`` exact ``K 2**K``; its sampling
    ``O(K C)`` (here exactly ``K (2 C + 2)``: ``S`` and ``S u {k}`` for C draws of ``S`` plus
    the two references, per region). Pooled: ``2**K`` exact and ``C + K + 1`` sampled.
    """
    return {
        "L_I exact (paper)": k * (k - 1) * 2**k,
        "L_IE exact (paper)": k * 2**k,
        "L_IE sampled (paper)": k * (2 * n_samples + 2),
        "L_IE exact (pooled)": 2**k,
        "L_IE sampled (pooled)": n_samples + k + 1,
    }


__all__ = [
    "COST_APPROACHES",
    "CoalitionDesign",
    "dummy_loss",
    "dummy_loss_from_values",
    "concept_null_pairs",
    "null_player_loss_from_values",
    "null_terms",
    "dummy_terms",
    "PairTerms",
    "row_pair_probability",
    "row_subsample",
    "row_subsample_loss",
    "dummy_residuals",
    "evaluation_counts",
    "exact_design",
    "null_players",
    "sampled_design",
    "shapley_loss",
    "theorem1_hypothesis",
    "verify_theorem1",
]


def verify_theorem1(
    n_games: int,
    *,
    min_players: int = 2,
    max_players: int = 6,
    generator: torch.Generator | None = None,
) -> dict[str, int]:
    """Check Theorem 1 and its converse on ``n_games`` random games; returns the 2x2 counts.

    Three constructions take turns, for a random player ``i``:
    (a) the hypothesis by construction: ``v(S)`` depends only on whether ``i`` is in ``S``;
    (b) dummies by construction: a random game with ``v(S) := v(S minus D)`` for a random set
    ``D`` of other players (all of them half of the time), so exactly ``D`` are dummies;
    (c) a game of kind (a) with one coalition's value perturbed.
    For every game, ``theorem1_hypothesis(game, i)`` and "every other player is a dummy" are
    computed independently by enumeration. Theorem 1 and its converse say that the two counts off
    the diagonal are zero.
    """
    counts = {"hyp & null": 0, "hyp & not null": 0, "not hyp & null": 0, "not hyp & not null": 0}
    for trial in range(n_games):
        n = int(torch.randint(min_players, max_players + 1, (1,), generator=generator))
        i = int(torch.randint(0, n, (1,), generator=generator))
        rows = torch.arange(2**n)
        if trial % 3 == 1:
            others = [j for j in range(n) if j != i]
            if torch.rand(1, generator=generator) < 0.5:
                dummies = others
            else:
                keep = torch.rand(len(others), generator=generator) < 0.5
                dummies = [j for j, k in zip(others, keep.tolist(), strict=True) if k]
            mask = sum(1 << j for j in dummies)
            values = torch.randn(2**n, generator=generator, dtype=torch.float64)[rows & ~mask]
        else:
            lo, hi = torch.randn(2, generator=generator, dtype=torch.float64)
            values = lo + (hi - lo) * all_coalitions(n)[:, i].double()
            if trial % 3 == 2:
                r = int(torch.randint(0, 2**n, (1,), generator=generator))
                values[r] += float(torch.randn(1, generator=generator, dtype=torch.float64))
        game = TableGame(values)
        hyp = theorem1_hypothesis(game, i)
        null = set(range(n)) - {i} <= set(null_players(game))
        counts[f"{'hyp' if hyp else 'not hyp'} & {'null' if null else 'not null'}"] += 1
    return counts
