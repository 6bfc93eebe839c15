"""Shapley values of our games computed by other libraries (shapiq, captum), for cross-checks.

Each adapter takes one of our duck-typed games (``n_players`` and ``__call__(bool [B, n]) ->
[B, *value_shape]``, see :mod:`interpddpm.games`) and returns ``(phi, n_evaluations)``:
``phi`` is ``[n, *value_shape]`` like :func:`interpddpm.shapley.exact_shapley`, in the game's
floating dtype (float64 for integer or bool games), and ``n_evaluations`` is the number of
coalition rows the library made the game evaluate (its cost in the currency of the paper).

- :func:`shapiq_exact`: ``shapiq.ExactComputer`` (index ``"SV"``, order 1): ``2**n`` rows.
- :func:`captum_exact`: ``captum.attr.ShapleyValues``, which enumerates all ``n!`` permutations:
  ``n * n! + 1`` rows.
- :func:`captum_sampling`: ``captum.attr.ShapleyValueSampling`` with ``n_samples`` random
  permutations: ``n * n_samples + 1`` rows.

captum attributes *inputs*, not coalitions, so the game is presented to it through a
"presence" input: ``x = ones[1, n]``, baseline ``zeros[1, n]``, one feature per column; every
input captum builds has 0/1 entries and row ``x`` stands for the coalition ``x > 0.5``.

Semantics worth knowing (checked in ``tests/test_reference_engines.py``):

- shapiq returns the empty-coalition value ``v(empty)`` as the order-0 entry ``()`` of its
  :class:`shapiq.InteractionValues` (and as ``baseline_value``); the players' values ``(i,)``
  are the plain Shapley values, nothing subtracted. (Only ``shapiq.Game`` subclasses normalize
  by ``v(empty)``; a plain callable, as used here, is not normalized.) Its game function is
  scalar-valued, so a vector-valued game is evaluated once and its components are served from
  that one evaluation.
- captum accumulates attributions in float32 whatever the forward's dtype, so its values agree
  with exact float64 ones only to about 1e-7 relative, never to 1e-10.

Both libraries are optional (the ``book`` extra); they are imported only when called.

Serves chapter 3 (the cross-checks of the exact Shapley values).
"""

from __future__ import annotations

import importlib
import math
from types import ModuleType

import numpy as np
import torch
from torch import Tensor

from .games import CountingGame, Game, check_exact_size, evaluate

#: captum's exact method enumerates n! permutations; above this many players it is refused.
CAPTUM_EXACT_MAX_PLAYERS = 7


def _require(module: str) -> ModuleType:
    """Import an optional dependency, or fail with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{module!r} is needed for this reference engine but is not installed; "
            "install the optional dependencies with `pip install interpddpm[book]` "
            f"(or `pip install {module.split('.')[0]}`)."
        ) from err


def _result_dtype(values: Tensor) -> torch.dtype:
    return values.dtype if values.is_floating_point() else torch.float64


def _n_players(game: Game) -> int:
    n = getattr(game, "n_players", None)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TypeError(
            "a game needs an int attribute `n_players` >= 1 and a __call__(coalitions); "
            f"got {type(game).__name__} with n_players={n!r}."
        )
    return n


# --------------------------------------------------------------------------------------------
# shapiq
# --------------------------------------------------------------------------------------------
class _ShapiqGameFunction:
    """Our game as shapiq's game function: numpy bool ``[B, n]`` -> numpy ``[B]``.

    shapiq games are scalar-valued, so one ExactComputer runs per value component. The game is
    evaluated once, on the first coalition matrix shapiq sends; later components asking for the
    same matrix get a column of that evaluation, so the game's cost stays ``2**n`` rows.
    """

    def __init__(self, game: Game) -> None:
        self.game = CountingGame(game)
        self.component = 0
        self.raw: Tensor | None = None  # the game's values as returned: [B, *value_shape]
        self._coalitions: np.ndarray | None = None
        self._columns: Tensor | None = None  # [B, D] float64 on the CPU

    @property
    def n_components(self) -> int:
        return 1 if self._columns is None else self._columns.shape[1]

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        if self._coalitions is None or not np.array_equal(self._coalitions, coalitions):
            self._coalitions = np.array(coalitions, dtype=bool, copy=True)
            self.raw = evaluate(self.game, torch.from_numpy(self._coalitions.copy()))
            self._columns = self.raw.detach().to("cpu", torch.float64).reshape(len(self.raw), -1)
        return self._columns[:, self.component].numpy()


def shapiq_exact(game: Game) -> tuple[Tensor, int]:
    """Exact Shapley values from ``shapiq.ExactComputer(game_fun, n_players)("SV", order=1)``.

    Returns ``(phi [n, *value_shape], n_evaluations)``; shapiq evaluates the ``2**n`` coalitions
    once (for every value component together, see :class:`_ShapiqGameFunction`). shapiq works in
    numpy float64; the result is cast to the game's floating dtype.
    """
    shapiq = _require("shapiq")
    n = _n_players(game)
    check_exact_size(n)
    game_fun = _ShapiqGameFunction(game)
    phis: list[Tensor] = []
    while len(phis) < game_fun.n_components:  # n_components is known after the first run
        game_fun.component = len(phis)
        # A fresh computer per component: an ExactComputer caches its game values.
        iv = shapiq.ExactComputer(game_fun, n_players=n)(index="SV", order=1)
        # Entry () holds v(empty) (shapiq's baseline_value); entry (i,) is player i's value.
        phis.append(torch.tensor([iv[(i,)] for i in range(n)], dtype=torch.float64))
    raw = game_fun.raw
    phi = torch.stack(phis, 1).reshape(n, *raw.shape[1:])
    return phi.to(_result_dtype(raw)), game_fun.game.rows


# --------------------------------------------------------------------------------------------
# captum
# --------------------------------------------------------------------------------------------
class _PresenceForward:
    """captum forward function: presence inputs ``x [B, n]`` in {0, 1} -> game values.

    Returns ``[B]`` for a scalar game and ``[B, D]`` (value axes flattened) otherwise; captum
    treats the latter as D outputs per example and attributes each of them.
    """

    def __init__(self, game: Game) -> None:
        self.game = CountingGame(game)
        self.raw: Tensor | None = None  # one output, to recover value_shape and dtype

    def __call__(self, x: Tensor) -> Tensor:
        values = evaluate(self.game, x > 0.5)
        self.raw = values[:1]
        values = values.to(_result_dtype(values))
        return values if values.ndim == 1 else values.reshape(values.shape[0], -1)


def _presence_inputs(n: int) -> tuple[Tensor, Tensor, Tensor]:
    x = torch.ones(1, n, dtype=torch.float64)
    return x, torch.zeros_like(x), torch.arange(n).unsqueeze(0)


def _captum_result(attr: Tensor, forward: _PresenceForward, n: int) -> Tensor:
    """captum's ``[1, n]`` (scalar) or ``[1, D, n]`` (vector) attribution as ``[n, *vs]``."""
    raw = forward.raw
    phi = attr[0] if attr.ndim == 2 else attr[0].transpose(0, 1)
    return phi.reshape(n, *raw.shape[1:]).to(_result_dtype(raw))


def captum_exact(
    game: Game,
    *,
    perturbations_per_eval: int | None = None,
    max_players: int = CAPTUM_EXACT_MAX_PLAYERS,
) -> tuple[Tensor, int]:
    """Exact Shapley values from ``captum.attr.ShapleyValues`` (all ``n!`` permutations).

    ``perturbations_per_eval`` (default ``n``: one forward call per permutation, the most
    batching captum allows) is how many perturbed inputs captum stacks into one forward. The
    game sees ``n * n! + 1`` rows. Refused for ``n > max_players``: the cost grows as ``n!``.
    captum accumulates in float32 (see the module docstring). Returns ``(phi, n_evaluations)``.
    """
    n = _n_players(game)
    if n > max_players:
        raise ValueError(
            f"captum's exact ShapleyValues enumerates all {n}! = {math.factorial(n):,} "
            f"permutations ({n * math.factorial(n) + 1:,} game evaluations); refused above "
            f"{max_players} players. Use interpddpm.shapley.exact_shapley (2**n evaluations) or "
            "captum_sampling(game, n_samples=...) instead."
        )
    captum_attr = _require("captum.attr")
    forward = _PresenceForward(game)
    x, baseline, mask = _presence_inputs(n)
    attr = captum_attr.ShapleyValues(forward).attribute(
        x,
        baselines=baseline,
        feature_mask=mask,
        perturbations_per_eval=perturbations_per_eval or n,
    )
    return _captum_result(attr, forward, n), forward.game.rows


def captum_sampling(
    game: Game, n_samples: int, seed: int = 0, *, perturbations_per_eval: int | None = None
) -> tuple[Tensor, int]:
    """Sampled Shapley values from ``captum.attr.ShapleyValueSampling`` (``n_samples`` perms).

    captum draws its permutations with ``torch.randperm`` from the global RNG; it is seeded with
    ``seed`` inside :func:`torch.random.fork_rng`, so the caller's RNG state is left untouched.
    The game sees ``n * n_samples + 1`` rows. Returns ``(phi, n_evaluations)``.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples <= 0:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}.")
    n = _n_players(game)
    captum_attr = _require("captum.attr")
    forward = _PresenceForward(game)
    x, baseline, mask = _presence_inputs(n)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        attr = captum_attr.ShapleyValueSampling(forward).attribute(
            x,
            baselines=baseline,
            feature_mask=mask,
            n_samples=n_samples,
            perturbations_per_eval=perturbations_per_eval or n,
        )
    return _captum_result(attr, forward, n), forward.game.rows


__all__ = ["CAPTUM_EXACT_MAX_PLAYERS", "captum_exact", "captum_sampling", "shapiq_exact"]
