"""Stochastic DDIM with fixed per-step noise: does eta > 0 change locality or realism?

The paper samples with DDIM at eta = 0, so an image is a function x_0 = G(x_T) of its noise and
an edit of one region of x_T is an edit of the image. With eta > 0 each step also adds fresh
noise; drawn from the sample's own seed and shared by the original and the edit
(``interpddpm.sampling.step_noise``), the edit stays a deterministic function of (x_T, seed).
Issue 16 asks what that changes. For the vanilla model and the interpretable K = 4 model of
chapter 5, at eta = 0, 0.5 and 1, this script measures:

- the locality ratio per concept (the paper's swap protocol, chapter 7) and the cut of the
  interpretable model against the vanilla one at the same eta;
- realism: the C2ST accuracy (with interval) of DDIM samples against fresh toy faces, and the
  colour spread (mean per-pixel std over R, G, B; washed-out samples score low).

The result goes to book/data/eta-study-<profile>.json and is printed as a table.

    python benchmarks/eta_study.py --profile cpu
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from interpddpm import runs
from interpddpm.artifacts import atomic_write
from interpddpm.c2st import c2st
from interpddpm.metrics import locality_protocol
from interpddpm.profiles import get_profile
from interpddpm.realism import colour_spread
from interpddpm.sampling import ddim_sample_batched, model_noise
from interpddpm.toyfaces import ToyFaces

ROOT = Path(__file__).resolve().parents[1]
CONCEPTS = ("eyes", "nose", "mouth")
ETAS = (0.0, 0.5, 1.0)


def main() -> None:
    parser_ = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser_.add_argument("--profile", default="cpu")
    parser_.add_argument("--samples", type=int, default=512, help="images per C2ST set")
    parser_.add_argument(
        "--etas", type=float, nargs="*", default=list(ETAS), help="the etas to (re)measure"
    )
    args = parser_.parse_args()
    p = get_profile(args.profile)
    parser = runs.parser(p)
    models = {
        "vanilla": runs.baseline(p).model(),
        "interpretable K = 4": runs.interpretable(p, list(CONCEPTS)).model(),
    }
    n = args.samples
    real = ToyFaces(p.image_size, n, seed=12345).batch(range(n))[0]
    out = ROOT / "book" / "data" / f"eta-study-{p.name}.json"
    # rows of other etas already in the record are kept (a study can be resumed eta by eta)
    rows = json.loads(out.read_text())["rows"] if out.is_file() else []
    rows = [r for r in rows if r["eta"] not in args.etas]
    for eta in args.etas:
        for name, model in models.items():
            start = time.perf_counter()
            loc = locality_protocol(
                model,
                parser,
                CONCEPTS,
                n_pairs=p.n_pairs,
                dilation=p.dilation,
                num_inference_steps=p.ddim_steps,
                seed=11,
                eta=eta,
            )
            x_T = model_noise(model, n, generator=torch.Generator().manual_seed(0))
            fake = ddim_sample_batched(
                model, x_T, num_inference_steps=p.ddim_steps, eta=eta, seeds=list(range(n))
            )
            test = c2st(real, fake)
            rows.append(
                {
                    "eta": eta,
                    "model": name,
                    **{f"locality {r.concept}": r.ratio_of_sums for r in loc},
                    "c2st": test.accuracy,
                    "c2st_low": test.low,
                    "c2st_high": test.high,
                    "spread": colour_spread(fake),
                    "seconds": time.perf_counter() - start,
                }
            )
            print(json.dumps(rows[-1]))
    rows.sort(key=lambda r: (r["eta"], list(models).index(r["model"])))
    for row in rows:  # the cut of each model against the vanilla one at the same eta
        van = next(r for r in rows if r["eta"] == row["eta"] and r["model"] == "vanilla")
        for c in CONCEPTS:
            row[f"cut {c}"] = 1 - row[f"locality {c}"] / van[f"locality {c}"]
    record = {
        "profile": p.name,
        "ddim_steps": p.ddim_steps,
        "n_pairs": p.n_pairs,
        "c2st_samples": n,
        "threads": torch.get_num_threads(),
        "real spread": colour_spread(real),
        "rows": rows,
    }
    text = json.dumps(record, indent=1)
    atomic_write(out, lambda tmp: tmp.write_text(text))
    print(f"\nrecord: {out}  (real faces' colour spread {record['real spread']:.3f})")
    print("eta  model                 C2ST [interval]         spread  cut eyes/nose/mouth")
    for r in rows:
        cuts = " / ".join(f"{r[f'cut {c}']:+.2f}" for c in CONCEPTS)
        print(
            f"{r['eta']:<4} {r['model']:<21} {r['c2st']:.3f} [{r['c2st_low']:.3f}, "
            f"{r['c2st_high']:.3f}]  {r['spread']:.3f}   {cuts}"
        )


if __name__ == "__main__":
    main()
