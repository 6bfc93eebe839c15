"""Cooperative games: the protocol, coalitions, and toy games.

A *game* is any object with an int attribute ``n_players`` and a ``__call__(coalitions)``
that maps a bool tensor ``[B, n_players]`` (row ``b`` holds the players present in coalition
``b``) to values ``[B, *value_shape]``. Batching is the point: the denoiser game of the paper
(eq. 5) evaluates many coalitions with one forward pass of a network, so every algorithm in
:mod:`interpddpm.shapley` and :mod:`interpddpm.theorem` sends its coalitions in as few calls as
possible.

Coalition encoding used throughout: row ``r`` of :func:`all_coalitions` contains player ``i``
iff bit ``i`` of ``r`` is 1, so row 0 is the empty coalition and row ``2**n - 1`` the grand one.

Serves chapters 1, 2, 4 and 5.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

#: Above this many players, enumerating all 2**n coalitions is refused.
MAX_EXACT_PLAYERS = 20


@runtime_checkable
class Game(Protocol):
    """The duck-typed game protocol (see the module docstring)."""

    n_players: int

    def __call__(self, coalitions: Tensor) -> Tensor: ...


def _check_n(n: int, what: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{what} must be a positive int, got {n!r}.")
    return n


def check_exact_size(n: int) -> None:
    """Refuse exact enumeration of 2**n coalitions when n is too large."""
    if n > MAX_EXACT_PLAYERS:
        raise ValueError(
            f"{n} players means 2**{n} = {2**n:,} coalitions: too many to enumerate exactly "
            f"(limit {MAX_EXACT_PLAYERS}). Use sampling instead: "
            "interpddpm.shapley.permutation_shapley(game, n_permutations=...) for Shapley values "
            "or interpddpm.theorem.dummy_loss(game, n_samples=...) for the loss."
        )


def all_coalitions(n: int, device: torch.device | str | None = None) -> Tensor:
    """All ``2**n`` coalitions as a bool tensor ``[2**n, n]``; row r holds i iff bit i of r is 1."""
    _check_n(n, "n_players")
    check_exact_size(n)
    rows = torch.arange(2**n, device=device).unsqueeze(1)
    bits = 2 ** torch.arange(n, device=device)
    return (rows & bits) != 0


def coalition_index(coalitions: Tensor) -> Tensor:
    """Inverse of :func:`all_coalitions`: the row number (int64 ``[B]``) of each coalition."""
    n = coalitions.shape[-1]
    bits = 2 ** torch.arange(n, device=coalitions.device)
    return (coalitions.long() * bits).sum(-1)


def check_coalitions(coalitions: Tensor, n_players: int) -> Tensor:
    """Validate a coalition batch: a bool tensor ``[B, n_players]``."""
    if not isinstance(coalitions, Tensor):
        raise TypeError(
            f"coalitions must be a torch.Tensor of dtype bool, got {type(coalitions).__name__}."
        )
    if coalitions.dtype != torch.bool:
        raise TypeError(
            f"coalitions must have dtype torch.bool, got {coalitions.dtype}; "
            "convert with `coalitions.bool()` (True = player present)."
        )
    if coalitions.ndim != 2 or coalitions.shape[1] != n_players:
        raise ValueError(
            f"coalitions must have shape [B, {n_players}] (one row per coalition, one column "
            f"per player), got {list(coalitions.shape)}."
        )
    return coalitions


def check_game(game: Game) -> int:
    """Check the game protocol and return ``game.n_players``."""
    n = getattr(game, "n_players", None)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or not callable(game):
        raise TypeError(
            "a game needs an int attribute `n_players` >= 1 and a __call__(coalitions); "
            f"got {type(game).__name__} with n_players={n!r}."
        )
    return n


def evaluate(game: Game, coalitions: Tensor) -> Tensor:
    """Call ``game`` on a batch of coalitions and check that it returned ``[B, *value_shape]``."""
    check_coalitions(coalitions, check_game(game))
    values = game(coalitions)
    if not isinstance(values, Tensor):
        raise TypeError(
            f"{type(game).__name__} returned {type(values).__name__}; a game must return a "
            "torch.Tensor of shape [B, *value_shape]."
        )
    if values.ndim < 1 or values.shape[0] != coalitions.shape[0]:
        raise ValueError(
            f"{type(game).__name__} returned shape {list(values.shape)} for "
            f"{coalitions.shape[0]} coalitions; the first axis must have one row per coalition "
            f"([{coalitions.shape[0]}, *value_shape])."
        )
    return values


class TableGame:
    """A game given by its full value table ``values[2**n, *value_shape]`` (bit encoding above)."""

    def __init__(self, values: Tensor) -> None:
        values = torch.as_tensor(values)
        rows = values.shape[0] if values.ndim else 0
        if rows < 2 or rows & (rows - 1):
            raise ValueError(f"TableGame needs 2**n rows (one per coalition, n >= 1), got {rows}.")
        self.values = values
        self.n_players = rows.bit_length() - 1

    @property
    def value_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[1:])

    def __call__(self, coalitions: Tensor) -> Tensor:
        check_coalitions(coalitions, self.n_players)
        return self.values[coalition_index(coalitions).to(self.values.device)]

    def __repr__(self) -> str:
        return f"TableGame(n_players={self.n_players}, value_shape={self.value_shape})"


class CountingGame:
    """Wrap a game and count the calls and coalition rows it receives (its evaluation cost)."""

    def __init__(self, game: Game) -> None:
        self.game = game
        self.n_players = game.n_players
        self.calls = 0
        self.rows = 0

    def __call__(self, coalitions: Tensor) -> Tensor:
        self.calls += 1
        self.rows += int(coalitions.shape[0])
        return self.game(coalitions)

    def reset(self) -> None:
        self.calls = 0
        self.rows = 0


class FunctionGame:
    """A game from a function of one coalition batch, e.g. ``lambda S: S.sum(1).double()``."""

    def __init__(self, n_players: int, fn) -> None:
        self.n_players = _check_n(n_players, "n_players")
        self.fn = fn

    def __call__(self, coalitions: Tensor) -> Tensor:
        check_coalitions(coalitions, self.n_players)
        return self.fn(coalitions)


def _as_float(x: Sequence[float] | Tensor) -> Tensor:
    t = torch.as_tensor(x, dtype=torch.float64)
    if t.ndim == 0:
        raise ValueError("expected a sequence of numbers, got a scalar.")
    return t


class AdditiveGame:
    """``v(S) = sum_{i in S} w_i``: every player's Shapley value is its weight.

    ``weights`` may be ``[n]`` (scalar game) or ``[n, *value_shape]`` (vector-valued game).
    """

    def __init__(self, weights: Sequence[float] | Tensor) -> None:
        self.weights = _as_float(weights)
        self.n_players = self.weights.shape[0]

    def __call__(self, coalitions: Tensor) -> Tensor:
        check_coalitions(coalitions, self.n_players)
        return torch.tensordot(coalitions.to(self.weights.dtype), self.weights, dims=1)


class UnanimityGame:
    """``v(S) = 1`` iff the carrier ``T`` is inside ``S``: Shapley value ``1/|T|`` on ``T``."""

    def __init__(self, n_players: int, carrier: Sequence[int]) -> None:
        self.n_players = _check_n(n_players, "n_players")
        self.carrier = sorted(set(int(i) for i in carrier))
        if not self.carrier or not all(0 <= i < n_players for i in self.carrier):
            raise ValueError(f"carrier must be a non-empty subset of 0..{n_players - 1}.")

    def __call__(self, coalitions: Tensor) -> Tensor:
        check_coalitions(coalitions, self.n_players)
        return coalitions[:, self.carrier].all(1).double()


class GloveGame:
    """Left and right gloves; a coalition is worth the number of pairs it can form."""

    def __init__(self, left: Sequence[int], right: Sequence[int]) -> None:
        self.left, self.right = list(left), list(right)
        players = self.left + self.right
        if not players or sorted(players) != list(range(len(players))):
            raise ValueError("left and right must partition the players 0..n-1.")
        self.n_players = len(players)

    def __call__(self, coalitions: Tensor) -> Tensor:
        check_coalitions(coalitions, self.n_players)
        n_left = coalitions[:, self.left].sum(1)
        n_right = coalitions[:, self.right].sum(1)
        return torch.minimum(n_left, n_right).double()


class WeightedVotingGame:
    """``v(S) = 1`` iff the weights in ``S`` reach the quota (the Shapley-Shubik power index)."""

    def __init__(self, weights: Sequence[float], quota: float) -> None:
        self.weights = _as_float(weights)
        self.quota = float(quota)
        self.n_players = self.weights.shape[0]

    def __call__(self, coalitions: Tensor) -> Tensor:
        check_coalitions(coalitions, self.n_players)
        return (coalitions.double() @ self.weights >= self.quota).double()


class AirportGame:
    """The airport cost game ``v(S) = max_{i in S} c_i`` (``v(empty) = 0``).

    Its Shapley value has the closed form of Littlechild and Owen (1973): with costs sorted
    ``c_(1) <= ... <= c_(n)``, player ``(i)`` pays ``sum_{j<=i} (c_(j) - c_(j-1)) / (n - j + 1)``.
    """

    def __init__(self, costs: Sequence[float]) -> None:
        self.costs = _as_float(costs)
        if (self.costs < 0).any():
            raise ValueError("airport costs must be non-negative.")
        self.n_players = self.costs.shape[0]

    def __call__(self, coalitions: Tensor) -> Tensor:
        check_coalitions(coalitions, self.n_players)
        return (coalitions.double() * self.costs).amax(1)

    def closed_form(self) -> Tensor:
        order = torch.argsort(self.costs)
        c = torch.cat([torch.zeros(1, dtype=torch.float64), self.costs[order]])
        n = self.n_players
        shares = (c[1:] - c[:-1]) / torch.arange(n, 0, -1, dtype=torch.float64)
        phi = torch.empty(n, dtype=torch.float64)
        phi[order] = torch.cumsum(shares, 0)
        return phi


def random_game(
    n_players: int,
    value_shape: Sequence[int] = (),
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> TableGame:
    """A game with i.i.d. standard-normal values for every coalition (``v(empty)`` included)."""
    _check_n(n_players, "n_players")
    check_exact_size(n_players)
    shape = (2**n_players, *value_shape)
    return TableGame(torch.randn(shape, generator=generator, dtype=dtype))


class MaskedNetworkGame:
    """A random neural-network game: ``v(S) = f(x * m_S)`` with ``m_S`` the features of ``S``.

    ``n_players`` groups of ``features_per_player`` input features each; absent players' features
    are replaced by zero (the baseline), and a fixed random two-layer MLP with ``n_outputs``
    outputs maps the masked input to the values ``[B, n_outputs]``. Its cost grows with the
    number of coalition rows, like the denoiser game, which makes it the toy stand-in for timing.
    """

    def __init__(
        self,
        n_players: int,
        n_outputs: int = 1,
        *,
        features_per_player: int = 8,
        hidden: int = 64,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        self.n_players = _check_n(n_players, "n_players")
        g = torch.Generator().manual_seed(seed)
        d = n_players * features_per_player
        self.features_per_player = features_per_player
        self.x = torch.randn(d, generator=g, dtype=dtype)
        self.w1 = torch.randn(d, hidden, generator=g, dtype=dtype) / d**0.5
        self.w2 = torch.randn(hidden, n_outputs, generator=g, dtype=dtype) / hidden**0.5

    def __call__(self, coalitions: Tensor) -> Tensor:
        check_coalitions(coalitions, self.n_players)
        mask = coalitions.repeat_interleave(self.features_per_player, 1).to(self.x.dtype)
        return torch.tanh((mask * self.x) @ self.w1) @ self.w2
