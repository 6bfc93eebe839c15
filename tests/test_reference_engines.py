"""Our Shapley values against shapiq and captum on the same games (interpddpm.reference_engines)."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from interpddpm.games import (
    AdditiveGame,
    AirportGame,
    CountingGame,
    FunctionGame,
    GloveGame,
    UnanimityGame,
    WeightedVotingGame,
    random_game,
)
from interpddpm.shapley import exact_shapley

pytest.importorskip("shapiq")
pytest.importorskip("captum")

from interpddpm.reference_engines import (  # noqa: E402
    captum_exact,
    captum_sampling,
    shapiq_exact,
)

# captum accumulates its attributions in float32 whatever the forward's dtype.
CAPTUM_ATOL = 1e-5


def _game(n: int, value_shape: tuple[int, ...] = (), dtype: torch.dtype = torch.float64, seed=0):
    return random_game(
        n, value_shape, generator=torch.Generator().manual_seed(100 * n + seed), dtype=dtype
    )


TOY_GAMES = {
    "additive": AdditiveGame([0.5, -1.0, 2.0, 0.25]),
    "additive_vector": AdditiveGame(torch.arange(12, dtype=torch.float64).reshape(4, 3) - 5),
    "unanimity": UnanimityGame(5, [1, 3, 4]),
    "glove": GloveGame([0, 1], [2, 3, 4]),
    "voting": WeightedVotingGame([4, 3, 2, 1], quota=6),
    "airport": AirportGame([3.0, 1.0, 4.0, 1.5, 9.0]),
    "int_valued": FunctionGame(4, lambda s: s.long().sum(1) ** 2),
}


# ---------------------------------------------------------------------------------------------
# Exact engines equal exact_shapley
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value_shape", [(), (3,), (2, 3)])
@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_shapiq_exact_equals_ours_float64(n, value_shape):
    game = _game(n, value_shape)
    ours = exact_shapley(game)
    theirs, n_eval = shapiq_exact(game)
    assert theirs.shape == ours.shape == (n, *value_shape)
    assert theirs.dtype == torch.float64
    assert (theirs - ours).abs().max() < 1e-10
    assert n_eval == 2**n


@pytest.mark.parametrize("value_shape", [(), (3,)])
@pytest.mark.parametrize("n", [2, 4, 6])
def test_shapiq_exact_float32(n, value_shape):
    game = _game(n, value_shape, dtype=torch.float32)
    theirs, _ = shapiq_exact(game)
    assert theirs.dtype == torch.float32
    assert (theirs - exact_shapley(game)).abs().max() < 1e-5


@pytest.mark.parametrize("value_shape", [(), (3,), (2, 3)])
@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_captum_exact_equals_ours(n, value_shape):
    game = _game(n, value_shape)
    ours = exact_shapley(game)
    theirs, n_eval = captum_exact(game)
    assert theirs.shape == ours.shape and theirs.dtype == torch.float64
    assert (theirs - ours).abs().max() < CAPTUM_ATOL
    # every permutation evaluates its n nonempty prefixes; the empty coalition goes once
    assert n_eval == n * math.factorial(n) + 1


@pytest.mark.parametrize("n", [2, 4, 5])
def test_captum_exact_float32(n):
    game = _game(n, (2,), dtype=torch.float32)
    theirs, _ = captum_exact(game)
    assert theirs.dtype == torch.float32
    assert (theirs - exact_shapley(game)).abs().max() < CAPTUM_ATOL


@pytest.mark.parametrize("n", [3, 5])
def test_captum_exact_is_exact_up_to_float32_rounding(n):
    """With small integer values captum's float32 sums are exact: only the final division rounds.

    This pins captum's semantics down to one float32 ulp (1e-5 alone could hide a small bias).
    """
    values = torch.randint(-50, 51, (2**n,), generator=torch.Generator().manual_seed(n))
    game = FunctionGame(n, lambda s: values[(s.long() * 2 ** torch.arange(n)).sum(1)].double())
    ours = exact_shapley(game)
    theirs, _ = captum_exact(game)
    torch.testing.assert_close(theirs, ours, rtol=2**-23, atol=1e-30)


@pytest.mark.parametrize("name", sorted(TOY_GAMES))
def test_toy_games_all_engines(name):
    game = TOY_GAMES[name]
    ours = exact_shapley(game)
    shapiq_phi, shapiq_eval = shapiq_exact(game)
    captum_phi, captum_eval = captum_exact(game)
    n = game.n_players
    assert (shapiq_phi - ours).abs().max() < 1e-10
    assert (captum_phi - ours).abs().max() < CAPTUM_ATOL
    assert (shapiq_eval, captum_eval) == (2**n, n * math.factorial(n) + 1)
    # integer/bool games come back as float64, like exact_shapley
    assert shapiq_phi.dtype == captum_phi.dtype == ours.dtype == torch.float64


def test_airport_closed_form_all_engines():
    game = TOY_GAMES["airport"]
    closed = game.closed_form()
    assert (shapiq_exact(game)[0] - closed).abs().max() < 1e-10
    assert (captum_exact(game)[0] - closed).abs().max() < CAPTUM_ATOL


# ---------------------------------------------------------------------------------------------
# Evaluation counts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_evaluation_counts(n):
    counting = CountingGame(_game(n, (4,)))
    exact_shapley(counting)
    assert (counting.rows, counting.calls) == (2**n, 1)
    # a 4-component game still costs shapiq 2**n rows: the components share one evaluation
    assert shapiq_exact(_game(n, (4,)))[1] == 2**n
    assert captum_sampling(_game(n), 7, seed=0)[1] == n * 7 + 1


# ---------------------------------------------------------------------------------------------
# captum sampling
# ---------------------------------------------------------------------------------------------
def test_captum_sampling_converges():
    game = _game(5, (3,))
    exact = exact_shapley(game)

    def mean_error(n_samples: int) -> float:
        errors = [
            (captum_sampling(game, n_samples, seed)[0] - exact).abs().mean().item()
            for seed in range(6)
        ]
        return sum(errors) / len(errors)

    few, many = mean_error(10), mean_error(400)
    assert many < few
    # error ~ 1/sqrt(permutations): 40x more permutations should gain well over 2x
    assert many < few / 2


def test_captum_sampling_seeded_and_leaves_global_rng_alone():
    game = _game(4, (2,))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, _ = captum_sampling(game, 20, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    b, _ = captum_sampling(game, 20, seed=5)
    c, _ = captum_sampling(game, 20, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_captum_sampling_efficiency():
    """Each permutation telescopes to v(N) - v(empty), so the estimate is efficient (float32)."""
    game = _game(6, (2,))
    phi, _ = captum_sampling(game, 15, seed=0)
    total = game.values[-1] - game.values[0]
    assert (phi.sum(0) - total).abs().max() < CAPTUM_ATOL


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def test_captum_exact_refuses_many_players():
    with pytest.raises(ValueError, match="8! = 40,320 permutations"):
        captum_exact(_game(8))


def test_captum_sampling_rejects_bad_n_samples():
    with pytest.raises(ValueError, match="n_samples"):
        captum_sampling(_game(3), 0)


@pytest.mark.parametrize(
    ("module", "engine"),
    [
        ("shapiq", lambda g: shapiq_exact(g)),
        ("captum.attr", lambda g: captum_exact(g)),
        ("captum.attr", lambda g: captum_sampling(g, 3)),
    ],
)
def test_missing_dependency_names_the_extra(monkeypatch, module, engine):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=r"pip install interpddpm\[book\]"):
        engine(_game(3))
