"""Shapley values against the brute-force formula (4), the axioms, and permutation sampling."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from interpddpm.games import (
    AdditiveGame,
    AirportGame,
    CountingGame,
    FunctionGame,
    GloveGame,
    TableGame,
    UnanimityGame,
    WeightedVotingGame,
    all_coalitions,
    random_game,
)
from interpddpm.shapley import (
    DESIGNS,
    exact_shapley,
    permutation_shapley,
    sample_permutations,
    shapley_by_definition,
)

value_shapes = st.sampled_from([(), (1,), (3,), (2, 2)])


def brute_force(values: torch.Tensor) -> torch.Tensor:
    """Eq. (4) over explicit subsets, written independently of the library."""
    n = values.shape[0].bit_length() - 1
    phi = torch.zeros((n, *values.shape[1:]), dtype=torch.float64)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            w = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for sub in itertools.combinations(others, size):
                r = sum(1 << j for j in sub)
                phi[i] += w * (values[r | (1 << i)] - values[r])
    return phi


def random_table(seed: int, n: int, shape: tuple[int, ...]) -> TableGame:
    return random_game(n, shape, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 8), shape=value_shapes)
def test_exact_matches_brute_force(seed: int, n: int, shape: tuple[int, ...]) -> None:
    game = random_table(seed, n, shape)
    torch.testing.assert_close(exact_shapley(game), brute_force(game.values), atol=1e-10, rtol=0)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 4))
def test_library_definition_matches_brute_force(seed: int, n: int) -> None:
    game = random_table(seed, n, (2,))
    torch.testing.assert_close(shapley_by_definition(game), brute_force(game.values))


@pytest.mark.parametrize("n", [1, 3, 6, 8])
def test_exact_evaluates_each_coalition_once(n: int) -> None:
    counter = CountingGame(random_table(0, n, (2,)))
    exact_shapley(counter)
    assert counter.rows == 2**n and counter.calls == 1
    counter.reset()
    exact_shapley(counter, batch_size=7)
    assert counter.rows == 2**n and counter.calls == math.ceil(2**n / 7)


def test_all_coalitions_bit_encoding() -> None:
    c = all_coalitions(4)
    assert c.shape == (16, 4) and c.dtype == torch.bool
    assert not c[0].any() and c[-1].all()
    for r in range(16):
        assert [bool(b) for b in c[r]] == [bool(r >> i & 1) for i in range(4)]


# ---- the four axioms --------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 8), shape=value_shapes)
def test_efficiency(seed: int, n: int, shape: tuple[int, ...]) -> None:
    game = random_table(seed, n, shape)
    torch.testing.assert_close(exact_shapley(game).sum(0), game.values[-1] - game.values[0])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 7), a=st.floats(-3, 3), b=st.floats(-3, 3))
def test_linearity(seed: int, n: int, a: float, b: float) -> None:
    g1, g2 = random_table(seed, n, (2,)), random_table(seed + 1, n, (2,))
    combined = TableGame(a * g1.values + b * g2.values)
    torch.testing.assert_close(
        exact_shapley(combined), a * exact_shapley(g1) + b * exact_shapley(g2)
    )


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 7), data=st.data())
def test_symmetry(seed: int, n: int, data: st.DataObject) -> None:
    """Make players i and j interchangeable (v(S u i) = v(S u j)) and check equal values."""
    i, j = data.draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
    values = random_table(seed, n, ()).values.clone()
    for r in range(2**n):  # symmetrise: the value of S is the mean over S and its i<->j swap
        bi, bj = r >> i & 1, r >> j & 1
        swapped = r & ~((1 << i) | (1 << j)) | (bj << i) | (bi << j)
        if swapped > r:
            values[r] = values[swapped] = (values[r] + values[swapped]) / 2
    phi = exact_shapley(TableGame(values))
    torch.testing.assert_close(phi[i], phi[j])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 7), data=st.data())
def test_dummy_player(seed: int, n: int, data: st.DataObject) -> None:
    """A null player (v(S u i) = v(S) for all S) gets exactly zero; others are unaffected."""
    i = data.draw(st.integers(0, n - 1))
    values = random_table(seed, n, (3,)).values.clone()
    rows = torch.arange(2**n)
    has_i = (rows >> i) & 1 == 1
    values[has_i] = values[rows[has_i] ^ (1 << i)]
    phi = exact_shapley(TableGame(values))
    assert phi[i].abs().max() == 0


# ---- closed forms of the toy games ---------------------------------------------------------
def test_toy_game_closed_forms() -> None:
    w = torch.tensor([1.5, -2.0, 0.25, 4.0])
    torch.testing.assert_close(exact_shapley(AdditiveGame(w)), w.double())
    phi = exact_shapley(UnanimityGame(5, [0, 2, 3]))
    torch.testing.assert_close(phi, torch.tensor([1 / 3, 0, 1 / 3, 1 / 3, 0], dtype=torch.float64))
    airport = AirportGame([3.0, 1.0, 4.0, 1.0, 5.0])
    torch.testing.assert_close(exact_shapley(airport), airport.closed_form())
    # glove game with one left glove and two right gloves: the scarce left holds 2/3
    torch.testing.assert_close(
        exact_shapley(GloveGame([0], [1, 2])), torch.tensor([2 / 3, 1 / 6, 1 / 6]).double()
    )
    # weighted voting [50; 49, 49, 1, 1]: the two big players share most of the power, the two
    # small ones are interchangeable
    phi = exact_shapley(WeightedVotingGame([49, 49, 1, 1], 50))
    torch.testing.assert_close(phi.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(phi[0], phi[1])
    torch.testing.assert_close(phi[2], phi[3])
    assert phi[0] > phi[2]


# ---- permutation sampling -------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 8),
    p=st.integers(1, 20),
    design=st.sampled_from(DESIGNS),
    shape=value_shapes,
)
def test_permutation_efficiency_and_budget(
    seed: int, n: int, p: int, design: str, shape: tuple[int, ...]
) -> None:
    game = CountingGame(random_table(seed, n, shape))
    phi = permutation_shapley(game, p, design=design, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(phi.sum(0), game.game.values[-1] - game.game.values[0])
    assert game.calls == 1 and game.rows <= p * (n + 1)
    assert game.rows == (p * (n - 1) + 2 if n > 1 else 2)


def test_permutation_exact_when_all_orders_used() -> None:
    """Averaging over all n! orders gives eq. (4) exactly (the sampling estimator's mean)."""
    game = random_table(3, 4, (2,))
    orders = torch.tensor(list(itertools.permutations(range(4))))
    contributions = []
    for order in orders:
        prefix = torch.zeros(4, dtype=torch.bool)
        row = torch.zeros(4, 2, dtype=torch.float64)
        prev = game.values[0]
        for player in order:
            prefix[player] = True
            cur = game(prefix.unsqueeze(0))[0]
            row[player] = cur - prev
            prev = cur
        contributions.append(row)
    torch.testing.assert_close(torch.stack(contributions).mean(0), exact_shapley(game))


def test_permutation_unbiased_and_converges() -> None:
    game = random_table(11, 6, (2,))
    exact = exact_shapley(game)
    gen = torch.Generator().manual_seed(0)
    # unbiased: the mean of many 1-permutation estimates is within 4 standard errors
    est = torch.stack([permutation_shapley(game, 1, generator=gen) for _ in range(3000)])
    se = est.std(0) / math.sqrt(len(est))
    assert ((est.mean(0) - exact).abs() <= 4 * se + 1e-12).all()

    # converges: the RMS error shrinks roughly like 1/sqrt(P)
    def rmse(p: int) -> float:
        errs = [
            (permutation_shapley(game, p, generator=gen) - exact).pow(2).mean() for _ in range(60)
        ]
        return float(torch.stack(errs).mean().sqrt())

    e10, e640 = rmse(10), rmse(640)
    assert e640 < e10 / 4  # 1/sqrt(64) = 1/8 expected; 1/4 leaves room for noise


def test_stratified_blocks_balance_positions_and_stay_unbiased() -> None:
    n = 5
    perms = sample_permutations(
        n, 4 * n + 3, design="stratified", generator=torch.Generator().manual_seed(2)
    )
    assert perms.shape == (4 * n + 3, n)
    assert all(sorted(p.tolist()) == list(range(n)) for p in perms)
    for block in perms[: 4 * n].split(2 * n):  # two full blocks of 2n
        counts = torch.zeros(n, n, dtype=torch.long)  # [player, position]
        for perm in block:
            counts[perm, torch.arange(n)] += 1
        assert (counts == 2).all()  # every player at every position twice
        assert torch.equal(block[1], block[0].flip(0))  # each rotation, then its reverse
        assert torch.equal(block[2], block[0].roll(-1))
    # unbiased: the mean of many 7-permutation estimates (a partial block) is within 4 standard
    # errors of the exact values
    game = random_table(11, 6, (2,))
    exact, gen = exact_shapley(game), torch.Generator().manual_seed(0)
    est = torch.stack(
        [permutation_shapley(game, 7, design="stratified", generator=gen) for _ in range(3000)]
    )
    se = est.std(0) / math.sqrt(len(est))
    assert ((est.mean(0) - exact).abs() <= 4 * se + 1e-12).all()
    with pytest.raises(ValueError, match="design must be one of"):
        sample_permutations(3, 2, design="sobol")
    with pytest.raises(ValueError, match="contradicts"):
        sample_permutations(3, 2, antithetic=True, design="stratified")


def test_antithetic_pairs_are_reversed() -> None:
    perms = sample_permutations(5, 7, antithetic=True, generator=torch.Generator().manual_seed(1))
    assert perms.shape == (7, 5)
    for a, b in zip(perms[0::2], perms[1::2], strict=False):
        assert torch.equal(a.flip(0), b)
    assert all(sorted(p.tolist()) == list(range(5)) for p in perms)


# ---- bad input ------------------------------------------------------------------------------
def test_bad_input_messages() -> None:
    game = random_table(0, 3, ())
    with pytest.raises(TypeError, match="dtype torch.bool"):
        game(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"shape \[B, 3\]"):
        game(torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="one row per coalition"):
        exact_shapley(FunctionGame(3, lambda s: torch.zeros(5)))
    with pytest.raises(TypeError, match="must return a torch.Tensor"):
        exact_shapley(FunctionGame(3, lambda s: [0.0] * len(s)))
    with pytest.raises(ValueError, match="permutation_shapley"):
        exact_shapley(FunctionGame(21, lambda s: s.sum(1).double()))
    with pytest.raises(ValueError, match="n_permutations must be a positive int"):
        permutation_shapley(game, 0)
    with pytest.raises(ValueError, match="n_permutations must be a positive int"):
        permutation_shapley(game, -3)
    with pytest.raises(ValueError, match="2\\*\\*n rows"):
        TableGame(torch.zeros(6))
    with pytest.raises(TypeError, match="n_players"):
        exact_shapley(object())  # type: ignore[arg-type]


def test_value_table_must_have_a_power_of_two_rows() -> None:
    """A table of 6 (or 0, or 1) rows is no game's value table: refused, not read as 2 players."""
    from interpddpm.shapley import shapley_from_table

    for rows in (0, 1, 3, 6, 12):
        with pytest.raises(ValueError, match=f"has 2\\*\\*n rows .* got {rows} rows"):
            shapley_from_table(torch.zeros(rows, 2))
    table = random_game(3, (2,), generator=torch.Generator().manual_seed(0)).values
    torch.testing.assert_close(shapley_from_table(table), brute_force(table))
