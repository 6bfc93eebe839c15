"""Null players, Theorem 1, the losses L_I (7) and L_IE (8), and their evaluation counts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from interpddpm.games import CountingGame, FunctionGame, TableGame, all_coalitions, random_game
from interpddpm.shapley import exact_shapley
from interpddpm.theorem import (
    concept_null_pairs,
    dummy_loss,
    dummy_loss_from_values,
    evaluation_counts,
    exact_design,
    null_player_loss_from_values,
    null_players,
    sampled_design,
    shapley_loss,
    theorem1_hypothesis,
    verify_theorem1,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def eq8_literal(values: torch.Tensor) -> torch.Tensor:
    """Eq. (8) written out literally: for each k, for each S subset K\\{k}, two squared terms."""
    k_players = values.shape[-1]
    flat = values.reshape(values.shape[0], -1, k_players)
    total = torch.zeros(flat.shape[1], dtype=torch.float64)
    for k in range(k_players):
        for s in range(2**k_players):
            if s >> k & 1:
                continue
            total += (flat[s | 1 << k, :, k] - flat[1 << k, :, k]) ** 2
            total += (flat[s, :, k] - flat[0, :, k]) ** 2
    return total.mean()


def local_game(k: int, seed: int, extra: tuple[int, ...] = ()) -> TableGame:
    """A K-output game where v_k depends on player k only: every other player is null in v_k."""
    g = gen(seed)
    a = torch.randn(*extra, k, generator=g, dtype=torch.float64)
    b = torch.randn(*extra, k, generator=g, dtype=torch.float64)
    c = all_coalitions(k).double()  # [2**k, k]
    shape = (2**k, *([1] * len(extra)), k)
    return TableGame(a + b * c.view(shape))


# ---- null players and Theorem 1 -------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 7), data=st.data())
def test_null_players_found_exactly(seed: int, n: int, data: st.DataObject) -> None:
    nulls = data.draw(st.sets(st.integers(0, n - 1), max_size=n))
    values = random_game(n, (2,), generator=gen(seed)).values.clone()
    rows = torch.arange(2**n)
    mask = sum(1 << i for i in nulls)
    values = values[rows & ~mask]  # v(S) := v(S minus nulls): exactly the chosen ones are null
    assert null_players(TableGame(values)) == sorted(nulls)


def test_theorem1_on_random_games() -> None:
    """Hypothesis => all others null, and the converse, on 10,000 random games (both branches)."""
    counts = verify_theorem1(10_000, generator=gen(0))
    assert counts["hyp & not null"] == 0 and counts["not hyp & null"] == 0
    assert counts["hyp & null"] > 4_000 and counts["not hyp & not null"] > 4_000


def test_theorem1_hypothesis_rejects_bad_player() -> None:
    with pytest.raises(ValueError, match="player must be in 0..2"):
        theorem1_hypothesis(random_game(3), 3)


# ---- L_IE (eq. 8) ---------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1), k=st.integers(2, 7), extra=st.sampled_from([(), (3,), (2, 2)])
)
def test_dummy_loss_exact_equals_eq8(seed: int, k: int, extra: tuple[int, ...]) -> None:
    game = random_game(k, (*extra, k), generator=gen(seed))
    expected = eq8_literal(game.values)
    torch.testing.assert_close(dummy_loss(game), expected)
    torch.testing.assert_close(dummy_loss(game, per_region=True), expected)


def test_dummy_loss_zero_iff_local() -> None:
    for k in (2, 3, 5):
        assert dummy_loss(local_game(k, k, (4,))).abs() < 1e-20
        assert shapley_loss(local_game(k, k, (4,))).abs() < 1e-12
        assert dummy_loss(random_game(k, (k,), generator=gen(k))) > 0.1


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("per_region", [False, True])
def test_sampled_dummy_loss_unbiased(k: int, per_region: bool) -> None:
    """The mean of many sampled estimates is within 4 standard errors of the exact loss."""
    game = random_game(k, (2, k), generator=gen(100 + k))
    exact = dummy_loss(game)
    g = gen(7)
    est = torch.stack(
        [dummy_loss(game, n_samples=3, generator=g, per_region=per_region) for _ in range(4000)]
    )
    se = est.std() / math.sqrt(len(est))
    assert abs(est.mean() - exact) < 4 * se + 1e-12, (float(est.mean()), float(exact), float(se))


def test_sampled_k2_is_exact() -> None:
    """K = 2 has one coalition of size >= 2, so the pooled estimator is exact for every draw."""
    game = random_game(2, (5, 2), generator=gen(1))
    torch.testing.assert_close(dummy_loss(game, n_samples=1, generator=gen(3)), dummy_loss(game))


def test_sampled_error_shrinks_with_budget() -> None:
    game = random_game(6, (6,), generator=gen(5))
    exact = dummy_loss(game)
    g = gen(0)

    def rmse(c: int) -> float:
        e = torch.stack([dummy_loss(game, n_samples=c, generator=g) - exact for _ in range(300)])
        return float(e.pow(2).mean().sqrt())

    assert rmse(256) < rmse(4) / 4  # 1/sqrt(64) = 1/8 expected


def test_designs() -> None:
    d = exact_design(4)
    assert d.n_rows == 16 and d.full_row == 15 and d.coalitions[d.full_row].all()
    s = sampled_design(4, 9, generator=gen(0))
    assert s.n_rows == 9 + 4 + 1
    assert not s.coalitions[s.empty_row].any()
    for k, row in enumerate(s.singleton_rows):
        assert s.coalitions[row].nonzero().flatten().tolist() == [k]
    assert (s.coalitions[5:].sum(1) >= 2).all()
    torch.testing.assert_close(s.weights[5:].sum(), torch.tensor(16 - 4 - 1.0, dtype=torch.float64))


# ---- L_I (eq. 7) ----------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(2, 6))
def test_shapley_loss_matches_definition(seed: int, k: int) -> None:
    game = random_game(k, (k,), generator=gen(seed))
    phi = exact_shapley(game)  # phi[j, k] = phi_{v_k}(j)
    expected = sum(phi[j, o].abs() for o in range(k) for j in range(k) if j != o)
    torch.testing.assert_close(shapley_loss(game), expected)
    torch.testing.assert_close(shapley_loss(game, per_pair=True), expected)


def test_shapley_loss_zero_without_null_players() -> None:
    """The counterexample: L_I = 0 while player 1 is not null in v_0, so L_IE > 0.

    Player 1's marginal contributions to v_0 cancel in the Shapley average:
    v_0({1}) - v_0({}) = +1 and v_0({0,1}) - v_0({0}) = -1, with equal weights 1/2 at K = 2.
    """
    values = torch.zeros(4, 2, dtype=torch.float64)
    values[:, 0] = torch.tensor([0.0, 3.0, 1.0, 2.0])  # v_0 of {}, {0}, {1}, {0,1}
    values[:, 1] = torch.tensor([0.0, 0.0, 5.0, 5.0])  # v_1 depends on player 1 only
    game = TableGame(values)
    assert shapley_loss(game).abs() < 1e-12
    assert 1 not in null_players(FunctionGame(2, lambda s: game(s)[:, 0]))
    assert dummy_loss(game) > 0.5


# ---- the cost model -------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_evaluation_counts_measured(k: int) -> None:
    c = 8
    counts = evaluation_counts(k, c)
    game = CountingGame(random_game(k, (k,), generator=gen(k)))
    measured = {}
    for name, call in {
        "L_I exact (paper)": lambda: shapley_loss(game, per_pair=True),
        "L_IE exact (paper)": lambda: dummy_loss(game, per_region=True),
        "L_IE sampled (paper)": lambda: dummy_loss(game, n_samples=c, per_region=True),
        "L_IE exact (pooled)": lambda: dummy_loss(game),
        "L_IE sampled (pooled)": lambda: dummy_loss(game, n_samples=c),
    }.items():
        game.reset()
        call()
        measured[name] = game.rows
    assert measured == counts
    assert counts["L_I exact (paper)"] == k * (k - 1) * 2**k
    assert counts["L_IE sampled (pooled)"] == c + k + 1


# ---- bad input ------------------------------------------------------------------------------
def test_loss_bad_input() -> None:
    with pytest.raises(ValueError, match="one component per player"):
        dummy_loss(random_game(3, (2,)))
    with pytest.raises(ValueError, match="one component per player"):
        shapley_loss(random_game(3))
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        dummy_loss(random_game(3, (3,)), n_samples=0)
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        dummy_loss(random_game(3, (3,)), n_samples=-1, per_region=True)
    with pytest.raises(ValueError, match="dummy_loss\\(game, n_samples"):
        dummy_loss(FunctionGame(22, lambda s: s.double()))


# ---- the one-sided (targeted null-player) loss ----------------------------------------------
def one_sided_game(k: int, seed: int, n_concepts: int) -> TableGame:
    """Outputs j != c ignore every concept c < n_concepts; the rest player is read by everyone."""
    g = gen(seed)
    c = all_coalitions(k).double()  # [2**k, k]
    free = torch.randn(2**k, 3, k, generator=g, dtype=torch.float64)  # arbitrary in the rest
    values = torch.empty(2**k, 3, k, dtype=torch.float64)
    for j in range(k):
        # v_j may depend on player j itself and on the non-concept players, nothing else
        readable = [p for p in range(k) if p == j or p >= n_concepts]
        key = (c[:, readable] * (2 ** torch.arange(len(readable)))).sum(1).long()
        values[..., j] = free[key, :, j]
    return TableGame(values)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_one_sided_loss_zero_iff_concepts_are_null_outside(k: int) -> None:
    pairs = concept_null_pairs(k)
    for seed in range(20):
        game = one_sided_game(k, seed, k - 1)
        assert null_player_loss_from_values(game.values, pairs) < 1e-24
        # brute force: phi_c(v_j) = 0 for every constrained pair (null-player axiom) ...
        phi = exact_shapley(game)  # [players, 3, outputs]
        for c, j in pairs:
            assert phi[c, :, j].abs().max() < 1e-12
        # ... while the reverse direction (the concept reading the rest) stays free
        assert phi[k - 1, :, k - 2].abs().max() > 1e-3
        # and the two-sided L_IE is NOT zero: the constraint is strictly weaker
        assert dummy_loss(game) > 1e-3
    # a random game violates it; the value is the literal double sum
    game = random_game(k, (2, k), generator=gen(k))
    literal = 0.0
    for c, j in pairs:
        for t in range(2**k):
            if t >> c & 1:
                literal += ((game.values[t, :, j] - game.values[t ^ 1 << c, :, j]) ** 2).mean()
    torch.testing.assert_close(null_player_loss_from_values(game.values, pairs), literal)


def test_all_pairs_has_the_zero_set_of_l_ie() -> None:
    for k in (2, 3):
        every = [(i, j) for i in range(k) for j in range(k) if i != j]
        assert null_player_loss_from_values(local_game(k, 1, (4,)).values, every) < 1e-24
        assert null_player_loss_from_values(random_game(k, (k,), generator=gen(k)).values, every)


def test_sample_weights() -> None:
    game = random_game(3, (4, 3), generator=gen(0))
    design, pairs = exact_design(3), concept_null_pairs(3)
    w = torch.tensor([0.0, 1.0, 2.0, 1.0])
    for loss in (
        lambda w: dummy_loss_from_values(game.values, design, w),
        lambda w: null_player_loss_from_values(game.values, pairs, w),
    ):
        torch.testing.assert_close(loss(torch.ones(4)), loss(None))
        parts = [loss(torch.eye(4, dtype=torch.float64)[i]) for i in range(4)]
        weighted = sum(wi * p for wi, p in zip(w, parts, strict=True))
        torch.testing.assert_close(loss(w.double()), weighted)
    with pytest.raises(ValueError, match="one weight per sample"):
        dummy_loss_from_values(game.values, design, torch.ones(3))
    with pytest.raises(ValueError, match="all 2\\*\\*K"):
        null_player_loss_from_values(game.values[:4], pairs)
    with pytest.raises(ValueError, match="invalid"):
        null_player_loss_from_values(game.values, [(1, 1)])


def test_dummy_loss_of_one_player_is_zero() -> None:
    """K = 1: eq. (8) has no pair j != k, so L_IE is 0, exact and sampled alike (callers sweep
    n = 1..8); the trainer's config, not the theory, refuses to train one player (K >= 2)."""
    from interpddpm.training import ConfigError, TrainConfig

    game = random_game(1, (4, 1), generator=gen(0))  # values [B=4, K=1] per coalition
    for kwargs in ({}, {"n_samples": 3}, {"per_region": True}):
        loss = dummy_loss(game, generator=gen(1), **kwargs)
        assert loss.shape == () and loss.dtype == torch.float64 and float(loss) == 0.0
    assert float(dummy_loss(random_game(2, (4, 2), generator=gen(0)))) > 0  # K = 2: not always 0
    with pytest.raises(ConfigError, match="at least one concept"):
        TrainConfig(interpretable=True, concepts=())  # K = 1 player: the rest alone
    assert len(TrainConfig(interpretable=True, concepts=("nose",)).concepts) + 1 == 2


def test_null_player_loss_with_more_outputs_than_players_is_the_brute_force_sum() -> None:
    """n_players: values [2**K, B, J] with J > K outputs (the outside cut into regions)."""
    from interpddpm.theorem import concept_null_pairs, null_player_loss_from_values

    gen = torch.Generator().manual_seed(3)
    k, j_out, b = 3, 6, 5
    values = torch.randn(2**k, b, j_out, generator=gen, dtype=torch.float64)
    weights = torch.rand(b, generator=gen, dtype=torch.float64) + 0.5
    pairs = concept_null_pairs(k, n_outputs=j_out)
    assert pairs == [(c, j) for c in range(k - 1) for j in range(j_out) if j != c]
    brute = torch.zeros((), dtype=torch.float64)
    for i, j in pairs:
        terms = [
            (values[t, :, j] - values[t & ~(1 << i), :, j]).pow(2)
            for t in range(2**k)
            if t >> i & 1
        ]
        brute += torch.stack([(weights * d).mean() for d in terms]).sum()
    got = null_player_loss_from_values(values, pairs, weights, n_players=k)
    assert torch.allclose(got, brute, rtol=1e-12)
    # J == K: the same as without n_players
    square = values[..., :k]
    pairs_k = concept_null_pairs(k)
    assert torch.equal(
        null_player_loss_from_values(square, pairs_k, n_players=k),
        null_player_loss_from_values(square, pairs_k),
    )
    with pytest.raises(ValueError, match="n_outputs >= K"):
        concept_null_pairs(k, n_outputs=2)
    with pytest.raises(ValueError, match="invalid for K=3 and 6 outputs"):
        null_player_loss_from_values(values, [(0, 6)], n_players=k)
