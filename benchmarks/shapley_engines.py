"""Our Shapley engines against captum and shapiq: time, game evaluations and accuracy.

Run: ``python benchmarks/shapley_engines.py [--quick]``.

Two games for K = 4..10 players, both float64:

(a) ``toy``: a random TableGame (one N(0, 1) value per coalition, scalar); evaluations are
    free, so the times measure each engine's own overhead.
(b) ``convnet``: a fixed random conv net (two 5x5 conv layers, ReLU, a 1x1 head, then region-mean
    pooling) on a fixed random image [3, 32, 32] split into K vertical strips; a coalition keeps
    its strips and zeros the others; the value is the vector of the K region means (value_shape
    [K], like the paper's v_k). Evaluations cost a forward pass, batched over coalitions.

Table 1 (exact): ``exact_shapley`` (2**K rows, one batched call) vs captum ``ShapleyValues``
(all K! permutations, K * K! + 1 rows, K <= 7 only; perturbations_per_eval = K, the most
batching captum allows) vs shapiq ``ExactComputer`` (2**K rows). Table 2 (sampling):
``permutation_shapley`` vs captum ``ShapleyValueSampling`` at the same budget of game rows,
mean absolute error against the exact values, averaged over seeds.

Times: ``time.perf_counter``, one warm-up run, then ``--repeats`` rounds in which ours and
shapiq run in turn (a load that drifts hits both alike), best of the rounds; "overhead" is an
engine's least time outside the game (the game is timed from inside). captum's exact method:
best of ``--repeats`` (at K = 7 one run). Sampling times are medians over the seeds. Ratios are
measured in the same run; never assert them in tests. torch runs single-threaded by default
(``--threads``): on a loaded 2-core machine two OpenMP threads made a one-image forward about
100x slower, which would measure the scheduler rather than the engines.

Where the time goes (cProfile of the convnet game at K = 4, 50 calls each, issue 29): ours
3.2 ms per call, 85% of it in the game's ``conv2d``; our own work was 0.15 ms, the biggest
part rebuilding the index pairs of eq. (4) (a Python list per player) at every call. shapiq
17 ms: the same game time plus its Python loops over the powerset and ``copy.deepcopy``. Both
evaluate the same 2**K rows in one call, so on a game that costs something the two can only
differ by their overhead: the 0.4x read at K = 4 in a ``--quick`` run (one timed run, ours
and shapiq one after the other on a loaded machine) was the load, not the engine. Now the
index plan is cached per K and the sum is one batched product: our overhead fell 2.3-3x (toy
game, K = 4..10, 0.05-0.21 ms), and the rounds are interleaved.

Sampling at equal rows: captum's estimator IS plain permutation sampling (S permutations,
K*S + 1 rows); ours shares the empty and grand coalitions, so the same rows buy
(budget - 2) // (K - 1) permutations: its expected error is lower by about sqrt(K / (K - 1))
(1.15x at K = 4, 1.05x at K = 10), less than the noise of a mean over 10 seeds (the 0.8x
reads of plain sampling; over 200 seeds plain read 0.98-1.21x). The stratified design
(``permutation_shapley(..., design="stratified")``: rotations of one random order and their
reverses, so every player stands at every position equally often) is unbiased and exactly
efficient like plain sampling; its error was 1.25-3.9x below captum's on the toy game (200
seeds); on the convnet game, whose values interact only between neighbouring strips
(interactions of order at most 2), each order and its reverse give the exact values, so an
even number of orders is exact to rounding (shown as "exact").
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from interpddpm.games import CountingGame, Game, check_coalitions, random_game
from interpddpm.reference_engines import (
    CAPTUM_EXACT_MAX_PLAYERS,
    captum_exact,
    captum_sampling,
    shapiq_exact,
)
from interpddpm.shapley import exact_shapley, permutation_shapley

TARGET_K = 6
TARGET_SPEEDUP = 20.0
TARGET_ATOL = 1e-5


# --------------------------------------------------------------------------------------------
# Games
# --------------------------------------------------------------------------------------------
def toy_game(k: int, seed: int = 0) -> Game:
    """A random scalar TableGame in float64."""
    return random_game(k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class RegionMeanNet(nn.Module):
    """Two conv layers and a 1x1 head, then the mean of the output map over each region."""

    def __init__(self, labels: Tensor, n_regions: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 1, 1),
        )
        onehot = nn.functional.one_hot(labels.flatten(), n_regions).T.to(torch.float32)
        self.register_buffer("pool", onehot / onehot.sum(1, keepdim=True))  # [K, H*W]

    def forward(self, x: Tensor) -> Tensor:
        maps = self.features(x).flatten(1)  # [B, H*W]
        return maps @ self.pool.T  # [B, K]: region-mean pooling


class ConvRegionGame:
    """v(S) = the net's K region means on the image with the regions outside S zeroed."""

    def __init__(self, k: int, seed: int = 0, size: int = 32, chunk: int = 16) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.n_players = k
        self.labels = (torch.arange(size) * k // size).expand(size, size)  # K vertical strips
        self.image = (torch.rand(3, size, size, generator=gen) * 2 - 1).double()
        with torch.random.fork_rng(devices=[]):  # seed the net's init, leave global RNG alone
            torch.manual_seed(seed)
            self.net = RegionMeanNet(self.labels, k).double().eval()
        self.chunk = chunk  # small float64 batches stay in cache: faster per image on a CPU

    @torch.no_grad()
    def __call__(self, coalitions: Tensor) -> Tensor:
        check_coalitions(coalitions, self.n_players)
        keep = coalitions[:, self.labels].unsqueeze(1)  # [B, 1, H, W]
        images = self.image * keep  # absent regions -> 0
        return torch.cat([self.net(x) for x in images.split(self.chunk)], 0)


GAMES: dict[str, Callable[[int, int], Game]] = {"toy": toy_game, "convnet": ConvRegionGame}


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------
def best_time(fn: Callable[[], Any], repeats: int, warmup: bool = True) -> tuple[float, Any]:
    """One warm-up call, then the best wall time of ``repeats`` calls; also the last result."""
    if warmup:
        fn()
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


class TimedGame:
    """A game that adds the wall time spent inside it to ``seconds`` (the rest of an engine's
    time is its own overhead)."""

    def __init__(self, game: Game) -> None:
        self.game, self.n_players, self.seconds = game, game.n_players, 0.0

    def __call__(self, coalitions: Tensor) -> Tensor:
        start = time.perf_counter()
        try:
            return self.game(coalitions)
        finally:
            self.seconds += time.perf_counter() - start


def interleaved(
    engines: dict[str, Callable[[Game], Any]],
    game: Game,
    repeats: int,
    min_seconds: float = 1.0,
    max_rounds: int = 100,
) -> dict[str, tuple[float, float, Any]]:
    """Each engine once as a warm-up, then rounds in which every engine runs once (the
    machine's load drifts alike for all): at least ``repeats`` rounds, more while a round
    takes under ``min_seconds`` in all (up to ``max_rounds``: fast calls get more chances to
    run unpreempted on a busy machine). Per engine the best wall time, the least time outside
    the game (the engine's own overhead) and the result."""
    start = time.perf_counter()
    for fn in engines.values():
        fn(game)
    per_round = time.perf_counter() - start
    rounds = max(repeats, min(max_rounds, int(min_seconds / max(per_round, 1e-9))))
    best: dict[str, tuple[float, float, Any]] = {}
    for _ in range(rounds):
        for name, fn in engines.items():
            timed = TimedGame(game)
            start = time.perf_counter()
            result = fn(timed)
            total = time.perf_counter() - start
            overhead = total - timed.seconds
            if name in best:
                total, overhead = min(total, best[name][0]), min(overhead, best[name][1])
            best[name] = (total, overhead, result)
    return best


def ours_exact(game: Game) -> tuple[Tensor, int]:
    counting = CountingGame(game)
    return exact_shapley(counting), counting.rows


def ours_sampling(
    game: Game, n_permutations: int, seed: int, design: str = "plain"
) -> tuple[Tensor, int]:
    counting = CountingGame(game)
    gen = torch.Generator().manual_seed(seed)
    phi = permutation_shapley(counting, n_permutations, design=design, generator=gen)
    return phi, counting.rows


def fmt_t(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def fmt_x(ratio: float | None) -> str:
    if ratio is not None and ratio > 1e6:  # an estimate exact to rounding (see the docstring)
        return "exact"
    return "-" if ratio is None else f"{ratio:,.1f}x"


def fmt_e(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))
    print(f"\n{title}\n{line}\n{'-' * len(line)}")
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def exact_rows(name: str, ks: list[int], repeats: int) -> tuple[list[list[str]], dict]:
    """Table 1 rows for one game; also the K = TARGET_K measurements for the PASS/FAIL lines."""
    rows, target, versus_shapiq = [], {}, []
    for k in ks:
        game = GAMES[name](k, 0)
        runs = interleaved({"ours": ours_exact, "shapiq": shapiq_exact}, game, repeats)
        t_ours, o_ours, (phi, n_ours) = runs["ours"]
        t_shapiq, o_shapiq, (phi_s, n_shapiq) = runs["shapiq"]
        err_s = (phi_s - phi).abs().max().item()
        t_captum = n_captum = err_c = None
        if k <= CAPTUM_EXACT_MAX_PLAYERS:
            # captum's cost grows as K!: at K = 7 (5,040 forward calls) one run, no warm-up
            slow = k == CAPTUM_EXACT_MAX_PLAYERS
            t_captum, (phi_c, n_captum) = best_time(
                lambda g=game: captum_exact(g), 1 if slow else repeats, warmup=not slow
            )
            err_c = (phi_c - phi).abs().max().item()
        if k == TARGET_K:
            target = {"speedup": t_captum / t_ours, "err": err_c}
        versus_shapiq.append((k, t_shapiq / t_ours, err_s))
        rows.append(
            [
                str(k),
                fmt_t(t_ours),
                fmt_t(t_captum),
                fmt_t(t_shapiq),
                fmt_x(t_captum / t_ours if t_captum else None),
                fmt_x(t_shapiq / t_ours),
                fmt_t(o_ours),
                fmt_t(o_shapiq),
                f"{n_ours:,}",
                "-" if n_captum is None else f"{n_captum:,}",
                f"{n_shapiq:,}",
                fmt_e(err_c),
                fmt_e(err_s),
            ]
        )
        sys.stdout.flush()
    return rows, {**target, "shapiq": versus_shapiq}


EXACT_HEADER = [
    "K", "t ours", "t captum", "t shapiq", "captum/ours", "shapiq/ours", "overhead ours",
    "overhead shapiq", "rows ours", "rows captum", "rows shapiq", "|captum-ours|",
    "|shapiq-ours|",
]  # fmt: skip

SAMPLING_HEADER = [
    "K", "budget", "perms captum", "perms ours", "rows captum", "rows ours",
    "mean|phi|", "MAE captum", "MAE plain", "MAE strat", "captum/plain", "captum/strat",
    "t captum", "t strat", "t captum/strat",
]  # fmt: skip


def sampling_rows(
    name: str, ks: list[int], samples: list[int], seeds: int
) -> tuple[list[list[str]], list[tuple[int, int, float]]]:
    """Table 2 rows: same row budget ``S * K + 1`` (captum's cost for S permutations); ours
    plain (the default) and stratified. Also (K, S, MAE captum / MAE stratified) per row."""
    rows, ratios = [], []
    for k in ks:
        game = GAMES[name](k, 0)
        exact = exact_shapley(game)
        for s in samples:
            budget = s * k + 1
            # ours shares the empty and grand coalitions: (K - 1) rows per permutation + 2
            perms = (budget - 2) // (k - 1)
            captum_sampling(game, s, seed=0)  # warm-up
            ours_sampling(game, perms, seed=0, design="stratified")
            err: dict[str, list[float]] = {"captum": [], "plain": [], "strat": []}
            t_c, t_o = [], []
            for seed in range(seeds):
                start = time.perf_counter()
                phi_c, n_c = captum_sampling(game, s, seed=seed)
                t_c.append(time.perf_counter() - start)
                start = time.perf_counter()
                phi_o, n_o = ours_sampling(game, perms, seed=seed, design="stratified")
                t_o.append(time.perf_counter() - start)
                phi_p, n_p = ours_sampling(game, perms, seed=seed)
                err["captum"].append((phi_c - exact).abs().mean().item())
                err["strat"].append((phi_o - exact).abs().mean().item())
                err["plain"].append((phi_p - exact).abs().mean().item())
            assert n_p == n_o <= n_c == budget  # equal (or smaller) cost for ours
            mae = {key: statistics.mean(v) for key, v in err.items()}
            tc, to = statistics.median(t_c), statistics.median(t_o)
            ratios.append((k, s, mae["captum"] / mae["strat"]))
            rows.append(
                [
                    str(k), f"{budget:,}", str(s), str(perms), f"{n_c:,}", f"{n_o:,}",
                    f"{exact.abs().mean().item():.2e}", fmt_e(mae["captum"]),
                    fmt_e(mae["plain"]), fmt_e(mae["strat"]),
                    fmt_x(mae["captum"] / mae["plain"]), fmt_x(mae["captum"] / mae["strat"]),
                    fmt_t(tc), fmt_t(to), fmt_x(tc / to),
                ]
            )  # fmt: skip
        sys.stdout.flush()
    return rows, ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="K up to 7, fewer repeats/seeds")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (best of)")
    parser.add_argument(
        "--seeds", type=int, default=None, help="seeds for the sampling table (convnet game)"
    )
    parser.add_argument(
        "--toy-seeds", type=int, default=None, help="seeds for the toy game's sampling table"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a loaded 2-core machine, 2 OpenMP threads made a "
        "one-image forward ~100x slower, which would swamp the comparison)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    k_max = 7 if args.quick else 10
    repeats = args.repeats or (1 if args.quick else 5)
    seeds = args.seeds or (3 if args.quick else 10)
    game_seeds = {"toy": args.toy_seeds or (10 if args.quick else 50), "convnet": seeds}
    samples = [10, 100]
    ks = list(range(4, k_max + 1))

    from importlib.metadata import version

    print(
        f"python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), captum {version('captum')}, "
        f"shapiq {version('shapiq')}; {'quick' if args.quick else 'full'} run, "
        f"best of {repeats} interleaved rounds after 1 warm-up (captum exact: best of "
        f"{repeats}, at K = 7 1 run, no warm-up)"
    )
    verdicts = []
    for name in GAMES:
        rows, target = exact_rows(name, ks, repeats)
        print_table(
            f"[{name}] exact Shapley values: time, game rows evaluated, max |difference| "
            "to exact_shapley (float64; captum accumulates in float32)",
            EXACT_HEADER,
            rows,
        )
        ok_speed = target["speedup"] >= TARGET_SPEEDUP
        ok_err = target["err"] < TARGET_ATOL
        verdicts.append(
            f"{'PASS' if ok_speed else 'FAIL'} [{name}] exact_shapley is "
            f"{target['speedup']:,.1f}x faster than captum ShapleyValues at K = {TARGET_K} "
            f"(target >= {TARGET_SPEEDUP:g}x)"
        )
        verdicts.append(
            f"{'PASS' if ok_err else 'FAIL'} [{name}] values equal at K = {TARGET_K}: "
            f"max |captum - ours| = {target['err']:.1e} (target < {TARGET_ATOL:g}, float64 game)"
        )
        slow = [f"K = {k}: {x:.2f}x" for k, x, _ in target["shapiq"] if x < 1]
        worst = max(e for _, _, e in target["shapiq"])
        verdicts.append(
            f"{'PASS' if not slow else 'FAIL'} [{name}] exact_shapley at least as fast as shapiq "
            f"at every K = {ks[0]}..{ks[-1]}"
            + (f" (slower at {', '.join(slow)})" if slow else "")
            + f"; max |shapiq - ours| = {worst:.1e}"
        )
    for name in GAMES:
        rows, ratios = sampling_rows(name, ks, samples, game_seeds[name])
        print_table(
            f"[{name}] sampling at the same budget of game rows (captum: S perms = S*K + 1 "
            f"rows; ours: (budget - 2) // (K - 1) perms, plain and stratified), mean abs error "
            f"vs exact over {game_seeds[name]} seeds, median time",
            SAMPLING_HEADER,
            rows,
        )
        worse = [f"K = {k}, S = {s}: {x:.2f}x" for k, s, x in ratios if x < 1]
        verdicts.append(
            f"{'PASS' if not worse else 'FAIL'} [{name}] stratified sampling error no worse than "
            f"captum's at equal rows, every K and S"
            + (f" (worse at {', '.join(worse)})" if worse else "")
        )
    print(
        f"\nTarget: exact_shapley at least {TARGET_SPEEDUP:g}x faster than captum's exact "
        f"method at K = {TARGET_K}, values equal within {TARGET_ATOL:g} (float64 games)."
    )
    print("\n".join(verdicts))
    print(
        "Row counts: ours exact 2**K, captum exact K*K!+1, shapiq 2**K (one evaluation shared "
        "by all value components); factorials: "
        + ", ".join(f"{k}!={math.factorial(k):,}" for k in ks)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
