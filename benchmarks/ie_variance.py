"""How noisy is the sampled ``L_IE`` per forward row? The designs of one interpretable step
side by side (issue 29), on the cpu profile's vanilla model (where every fine-tune starts).

A step estimates ``L_IE`` from ``b`` samples (the sub-batch), each with ``r`` coalition rows
besides the grand one (the ordinary forward): ``R = b r`` extra rows. The designs:

- ``exact``: all ``r = 2**K - 1`` rows, the design of the recorded runs;
- ``rows m``: ``m`` of them drawn per sample (``TrainConfig.ie_rows``), unbiased;
- ``pooled C``: the pooled estimator (``C + K + 1`` rows, the two-sided ``L_IE`` only).

Samples are independent, so a design's variance is ``Var_1 / b`` with ``Var_1`` that of one
sample's estimate, and ``Var_1 = Var_x(L_x) + E_x Var_S(est | x)``: the spread of the exact
per-sample loss ``L_x`` over samples (image, timestep, noise, baseline) plus the spread of the
estimate over the sample's coalition draws. Both parts are computed from the exact rows of
``--samples`` samples: every ``m``-subset (all of them, or 400 drawn) and 400 pooled designs
per sample, so the table is exact up to the choice of samples. ``Var_1 x r`` is the variance
per row: equal values mean equal noise at equal rows. The pooled design shares its coalitions
across the sub-batch, which adds covariance the per-sample figure leaves out (it can only be
worse than printed).

For each design the table gives the least sub-batch ``b`` whose noise is at most that of the
recorded runs' design (exact on ``--ref-b`` samples: 4 for K = 2, 2 for K = 4), and its extra
rows ``R = b r``. ``--json`` writes the table.

    python benchmarks/ie_variance.py [--samples 128] [--json book/data/ie-cost-cpu.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from interpddpm import runs
from interpddpm.denoiser_game import game_values, predict_noise
from interpddpm.games import all_coalitions, coalition_index
from interpddpm.profiles import get_profile
from interpddpm.regions import apply_coalitions, baseline_fill, output_masks, player_masks
from interpddpm.theorem import (
    PairTerms,
    concept_null_pairs,
    dummy_terms,
    null_terms,
    row_pair_probability,
    sampled_design,
)
from interpddpm.toyfaces import ToyFaces
from interpddpm.training import load_run_model, run_noise_scheduler
from interpddpm.training.losses import ie_sample_weights

ROOT = Path(__file__).resolve().parents[1]
K4 = ("eyes", "nose", "mouth")
PAPER = {"ie_constraint": "two_sided", "ie_t_weight": "uniform", "ie_outside": "one"}
#: recipe -> (concepts, overrides of the book's recipe, the recorded runs' sub-batch,
#: the ie_rows values m to measure, the pooled C values to measure)
RECIPES: dict[str, tuple[tuple[str, ...], dict[str, Any], int, list[int], list[int]]] = {
    "K = 2, book (one-sided, split)": (("nose",), {}, 4, [2], []),
    "K = 2, paper (two-sided)": (("nose",), PAPER, 4, [2], []),
    "K = 4, book (one-sided)": (K4, {}, 2, [2, 3, 4, 6, 8], []),
    "K = 4, paper (two-sided)": (K4, PAPER, 2, [2, 3, 4, 6, 8], [2, 6, 12]),
}
SUBSETS = 400  # coalition draws per sample where there are more m-subsets than this


def per_sample_loss(values: torch.Tensor, terms: PairTerms, w: torch.Tensor, scale: torch.Tensor):
    """``sum_t scale[t, n] w[n] (v_o(a) - v_o(b))^2`` per column ``n`` of ``values``
    ``[2**K, n, outputs]``: one estimate per column."""
    d = values[terms.a, :, terms.output] - values[terms.b, :, terms.output]  # [T, n]
    return (d.pow(2) * scale).sum(0) * w


def subset_presence(k: int, m: int, gen: torch.Generator) -> torch.Tensor:
    """Bool ``[2**K, S]``: every ``m``-subset of the ``2**K - 1`` other rows (or SUBSETS drawn
    uniformly), the grand coalition in each."""
    others = 2**k - 1
    if math.comb(others, m) <= SUBSETS:
        subsets = torch.tensor(list(itertools.combinations(range(others), m)))
    else:
        subsets = torch.rand(SUBSETS, others, generator=gen).argsort(1)[:, :m]
    present = torch.zeros(2**k, len(subsets), dtype=torch.bool)
    present[subsets.T, torch.arange(len(subsets)).expand(m, -1)] = True
    present[-1] = True
    return present


@torch.no_grad()
def measure(profile: str, n_samples: int, recipes: list[str]) -> list[dict[str, Any]]:
    p = get_profile(profile)
    base = runs.baseline_config(p)
    model = load_run_model(runs.recorded_source(p) / "runs" / Path(base.output_dir).name)
    faces = ToyFaces(p.image_size, 10_000)
    out = []
    for recipe in recipes:
        concepts, overrides, ref_b, ms, cs = RECIPES[recipe]
        cfg = runs.finetune_config(p, concepts).replace(**overrides)
        sched = run_noise_scheduler(cfg)
        k = len(concepts) + 1
        one_sided = cfg.ie_constraint == "one_sided"
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(0)
        exact, within = [], {f"rows {m}": [] for m in ms} | {f"pooled C = {c}": [] for c in cs}
        for start in range(0, n_samples, 8):  # 8 samples a forward
            n = min(8, n_samples - start)
            images, labels = faces.batch(torch.randint(0, len(faces), (n,), generator=gen).tolist())
            noise = torch.randn(images.shape, generator=gen)
            t = torch.randint(0, cfg.num_train_timesteps, (n,), generator=gen)
            x_t = sched.add_noise(images, noise, t)
            masks = player_masks(labels, concepts, dilation=cfg.dilation)
            outputs = masks
            if one_sided and cfg.ie_outside != "one":
                outputs = output_masks(labels, concepts, dilation=cfg.dilation, outside="split")
            fill = baseline_fill(x_t, cfg.baseline, generator=gen)
            rows = apply_coalitions(x_t, masks, all_coalitions(k), fill)
            eps = predict_noise(model, rows.flatten(0, 1), t.repeat_interleave(2**k))
            values = game_values(eps.view(*rows.shape).double(), outputs)  # [2**K, n, out]
            w = ie_sample_weights(sched, t, cfg)
            w = torch.ones(n, dtype=torch.float64) if w is None else w.double()
            if one_sided:
                terms = null_terms(k, concept_null_pairs(k, n_outputs=outputs.shape[1]))
            else:
                terms = dummy_terms(k)
            ones = torch.ones(len(terms.a), 1, dtype=torch.float64)
            for s in range(n):
                v, ws = values[:, s : s + 1], w[s : s + 1]
                exact.append(float(per_sample_loss(v, terms, ws, ones)))
                for m in ms:
                    present = subset_presence(k, m, gen)
                    both = (present[terms.a] & present[terms.b]).double()
                    scale = both / row_pair_probability(k, m, terms.a, terms.b)[:, None]
                    est = per_sample_loss(v.expand(-1, both.shape[1], -1), terms, ws, scale)
                    within[f"rows {m}"].append(float(est.var()))
                for c in cs:  # the pooled design: its coalitions' rows, weights
                    ests = []
                    for _ in range(SUBSETS // 4):
                        d = sampled_design(k, c, generator=gen)
                        r = coalition_index(d.coalitions)
                        vv = v[r, 0]  # [R, K]
                        single = vv[d.singleton_rows].diagonal()  # v_k({k})
                        ref = torch.where(d.coalitions, single, vv[d.empty_row])
                        ests.append(float((d.weights[:, None] * (vv - ref).pow(2)).sum()) * ws)
                    within[f"pooled C = {c}"].append(float(torch.tensor(ests).var()))
        loss = torch.tensor(exact, dtype=torch.float64)
        mean, between = float(loss.mean()), float(loss.var())
        designs = [("exact", 2**k - 1, 0.0)]
        designs += [(f"rows {m}", m, sum(within[f"rows {m}"]) / n_samples) for m in ms]
        designs += [
            (f"pooled C = {c}", c + k + 1, sum(within[f"pooled C = {c}"]) / n_samples) for c in cs
        ]
        target = between / ref_b  # the recorded runs' noise: exact on ref_b samples
        for name, r, inner in designs:
            var1 = between + inner
            b = max(1, math.ceil(var1 / target - 1e-9))
            out.append(
                {
                    "recipe": recipe,
                    "design": name,
                    "rows_per_sample": r,
                    "rel_var_per_sample": var1 / mean**2,
                    "within_share": inner / var1,
                    "rel_var_x_rows": var1 / mean**2 * r,
                    "sub_batch_for_ref_noise": b,
                    "extra_rows_for_ref_noise": b * r,
                    "ref_sub_batch": ref_b,
                    "ref_extra_rows": ref_b * (2**k - 1),
                }
            )
        print(f"[{recipe}: {time.perf_counter() - t0:.0f} s, L_IE per sample {mean:.3g}]")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--recipe", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--json", type=Path, default=None, help="write the table into this JSON")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.samples} samples")
    rows = measure(args.profile, args.samples, args.recipe)
    head = f"{'design':16s} {'r':>3s} {'Var/mean^2':>10s} {'within':>7s} {'x r':>7s}"
    print(f"\n{head} {'b for ref noise':>15s} {'R':>4s}")
    recipe = None
    for r in rows:
        if r["recipe"] != recipe:
            recipe = r["recipe"]
            print(
                f"{recipe} (recorded: exact, b = {r['ref_sub_batch']}, R = {r['ref_extra_rows']})"
            )
        print(
            f"  {r['design']:14s} {r['rows_per_sample']:3d} {r['rel_var_per_sample']:10.2f} "
            f"{r['within_share']:7.0%} {r['rel_var_x_rows']:7.1f} "
            f"{r['sub_batch_for_ref_noise']:15d} {r['extra_rows_for_ref_noise']:4d}"
        )
    if args.json:
        data = json.loads(args.json.read_text()) if args.json.exists() else {}
        data["variance"] = {"profile": args.profile, "samples": args.samples, "rows": rows}
        args.json.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
