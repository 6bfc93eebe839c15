"""Which training recipe gives the cpu profile a base model whose DDIM samples look like data?

Issue 16: the cpu baseline's DDIM-50 samples are washed out (a small CNN tells them from toy
faces 96% of the time). For each recipe variant this script trains (or loads) a plain DDPM with
the profile's baseline config, the first cpu recipe (FIRST_RECIPE) and the variant's overrides
on top ("book": the baseline exactly as the chapters train it), then measures, on the same
noise and the same real faces for every variant:

- C2ST accuracy (interpddpm.c2st) of DDIM-50 samples against fresh toy faces, with its interval,
  and of two real sets (the floor);
- the denoising error by timestep (interpddpm.denoising_error) on held-out faces;
- the colour spread (mean over pixels of the std over R, G, B: low = washed out) of DDIM 50 and
  250 steps, DPM-Solver++ 20 steps and DDIM 50 steps with eta = 1, beside the real faces';
- training wall time and seconds per step.

Results are written to book/data/base-recipe-<profile>.json (one record per variant, merged
with the file's earlier variants) and printed as a table.

    python benchmarks/base_recipe.py                      # every variant
    python benchmarks/base_recipe.py --variants book first fp32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from interpddpm import runs
from interpddpm.artifacts import atomic_write
from interpddpm.c2st import c2st
from interpddpm.denoising_error import denoising_error_by_t
from interpddpm.locks import locked
from interpddpm.profiles import get_profile
from interpddpm.realism import colour_spread
from interpddpm.sampling import ddim_sample_batched, model_noise, training_scheduler_config
from interpddpm.toyfaces import ToyFaces
from interpddpm.training import read_metrics, train

ROOT = Path(__file__).resolve().parents[1]
#: The cpu baseline's recipe before issue 16 (what "first" trains, whatever the default is now).
FIRST_RECIPE: dict[str, Any] = {"beta_schedule": "linear", "snr_gamma": None, "lr": 5e-4}
#: name -> TrainConfig overrides of FIRST_RECIPE ("book": the profile's baseline as it is now,
#: the run the chapters train, shared with their cache)
VARIANTS: dict[str, dict[str, Any] | None] = {
    "first": {},
    "book": None,
    "fp32": {"mixed_precision": "no"},
    "min-snr-5": {"snr_gamma": 5.0},
    "min-snr-1": {"snr_gamma": 1.0},
    "min-snr-5-lr-1e-3": {"snr_gamma": 5.0, "lr": 1e-3},
    "lr-1e-3": {"lr": 1e-3},
    "steps-x2": {"steps_factor": 2},
    "min-snr-5-lr-1e-3-x2": {"snr_gamma": 5.0, "lr": 1e-3, "steps_factor": 2},
    "min-snr-1-lr-1e-3": {"snr_gamma": 1.0, "lr": 1e-3},
    # the cosine schedule of Nichol and Dhariwal (2021), better than linear at 32x32
    "cosine-min-snr-5-lr-1e-3": {
        "beta_schedule": "squaredcos_cap_v2",
        "snr_gamma": 5.0,
        "lr": 1e-3,
    },
    "cosine-lr-1e-3": {"beta_schedule": "squaredcos_cap_v2", "lr": 1e-3},
}
#: the keys of a row's "recipe": what a reader compares between rows
RECIPE_KEYS = ("beta_schedule", "snr_gamma", "lr", "steps", "batch_size", "mixed_precision")
N_C2ST = 512  # samples per set
N_SPREAD = 64  # samples per sampler for the colour spread


def sample_with(model: Any, x_T: torch.Tensor, scheduler: Any, steps: int, eta: float | None):
    """Run one diffusers scheduler from x_T (eta for DDIM; fixed seed for its fresh noise)."""
    scheduler.set_timesteps(steps)
    x = x_T.clone()
    gen = torch.Generator().manual_seed(1)
    kwargs = {} if eta is None else {"eta": eta, "generator": gen}
    with torch.inference_mode():
        for t in scheduler.timesteps:
            eps = model(x, t).sample
            x = scheduler.step(eps, t, x, **kwargs).prev_sample
    return x


def measure(model: Any, real: torch.Tensor, held_out: torch.Tensor) -> dict[str, Any]:
    config = training_scheduler_config(model)
    gen = torch.Generator().manual_seed(0)
    x_T = model_noise(model, N_C2ST, generator=gen)
    fake = ddim_sample_batched(model, x_T, num_inference_steps=50, batch_size=128)
    c = c2st(real, fake)
    small = x_T[:N_SPREAD]
    spreads = {
        "DDIM 50": colour_spread(fake[:N_SPREAD]),
        "DDIM 250": colour_spread(
            ddim_sample_batched(model, small, num_inference_steps=250, batch_size=N_SPREAD)
        ),
        "DPM-Solver++ 20": colour_spread(
            sample_with(model, small, DPMSolverMultistepScheduler.from_config(config), 20, None)
        ),
        "DDIM 50, eta 1": colour_spread(
            sample_with(model, small, DDIMScheduler.from_config(config), 50, 1.0)
        ),
    }
    return {
        "c2st": c.accuracy,
        "c2st_low": c.low,
        "c2st_high": c.high,
        "spread": spreads,
        "eps_mse_by_t": denoising_error_by_t(model, held_out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args()
    profile = get_profile(args.profile)
    real = ToyFaces(profile.image_size, N_C2ST, seed=12345).batch(range(N_C2ST))[0]
    other = ToyFaces(profile.image_size, N_C2ST, seed=54321).batch(range(N_C2ST))[0]
    held_out = ToyFaces(profile.image_size, 256, seed=999).batch(range(256))[0]
    out = ROOT / "book" / "data" / f"base-recipe-{profile.name}.json"
    record = json.loads(out.read_text()) if out.is_file() else {}
    floor = c2st(real, other)
    record["real vs real"] = floor_row = {
        "c2st": floor.accuracy,
        "c2st_low": floor.low,
        "c2st_high": floor.high,
        "spread": {"real": colour_spread(real)},
    }
    base = runs.baseline_config(profile)
    for name in args.variants:
        if VARIANTS[name] is None:  # the book's own baseline run (shared with the chapters)
            overrides: dict[str, Any] = {}
            config = base
        else:
            overrides = {**FIRST_RECIPE, **VARIANTS[name]}
            factor = overrides.pop("steps_factor", 1)
            if factor != 1:
                overrides.update(
                    steps=base.steps * factor, checkpoint_every=base.checkpoint_every * factor
                )
            config = runs.named(base.replace(**overrides), profile, f"recipe-{name}")
        start = time.perf_counter()
        result = train(config)
        wall = time.perf_counter() - start
        log = read_metrics(result.metrics_file)
        sec = sorted(r["sec_per_step"] for r in log if "sec_per_step" in r)
        row = measure(result.model(), real, held_out)
        row.update(
            recipe={k: getattr(config, k) for k in RECIPE_KEYS},
            steps=config.steps,
            mixed_precision=config.mixed_precision,
            sec_per_step=sec[len(sec) // 2] if sec else None,
            wall_this_call=wall,
            threads=torch.get_num_threads(),
        )
        # other variants may run beside this one (each process re-reads the record)
        with locked(out, wait=True, what="base recipe record"):
            record = json.loads(out.read_text()) if out.is_file() else {}
            record[name] = row
            record["real vs real"] = floor_row
            text = json.dumps(record, indent=1)
            atomic_write(out, lambda tmp, text=text: tmp.write_text(text))
        print(name, json.dumps({k: v for k, v in row.items() if k != "eps_mse_by_t"}))
    print(f"\nrecord: {out}")
    record = json.loads(out.read_text())
    ts = list(next(iter(v for v in record.values() if "eps_mse_by_t" in v))["eps_mse_by_t"])
    print("variant".ljust(14), "C2ST [interval]".ljust(22), "spread D50 D250 DPM eta1", "s/step")
    for name, row in record.items():
        s = row["spread"]
        print(
            name.ljust(14),
            f"{row['c2st']:.3f} [{row['c2st_low']:.3f}, {row['c2st_high']:.3f}]".ljust(22),
            " ".join(f"{v:.3f}" for v in s.values()),
            row.get("sec_per_step"),
        )
    print("eps MSE by t:", ts)
    for name, row in record.items():
        if "eps_mse_by_t" in row:
            print(name.ljust(14), " ".join(f"{v:.3f}" for v in row["eps_mse_by_t"].values()))


if __name__ == "__main__":
    main()
