"""Single-concept models with the one-sided constraint: does reading the outside as several
regions make it localise?

For a single concept (K = 2: the concept against "the rest") the one-sided constraint, which
only asks the *mean* of the one large rest region to ignore the concept, measured no locality
gain. ``ie_outside="split"`` reads the rest as the other concepts, hair, skin and background
(:func:`interpddpm.regions.output_masks`). This script fine-tunes these models from the
profile's vanilla model at the same budget (chapter 5's) and scores each as a row of chapter
12's table (:func:`interpddpm.ablations.measure_run`: cuts with intervals, FID and KID ratios,
survival, C2ST). The split at a floor of 3 became the book's single-concept recipe
(``runs.SINGLE_IE``); every row is the paper's recipe with a few settings changed:

- eyes, nose and mouth models with the paper's two-sided recipe (``runs.PAPER_IE``);
- a nose model with the one-sided constraint, lambda from 10, weighted by the noise level;
- eyes, nose and mouth models with the same and the outside split, at lambda floors 1, 3
  and 10, and at floors 10 and 20 with four times the steps and the lambda decay.

The rows go to book/data/single-concept-<profile>.json (chapter 12 shows them).

    python benchmarks/single_concept.py --profile cpu
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from interpddpm import ablations, runs
from interpddpm.artifacts import atomic_write
from interpddpm.profiles import get_profile

ROOT = Path(__file__).resolve().parents[1]
ONE_SIDED = {"ie_constraint": "one_sided", "lambda_start": 10.0, "ie_t_weight": "noise"}
SPLIT = ONE_SIDED | {"ie_outside": "split"}
#: The lambda floors of the split rows (the paper's are 10 for the nose, 1 for eyes and mouth).
FLOORS = (1.0, 3.0, 10.0)
#: label -> (concept, overrides of the paper's recipe for that concept): none (chapter 5's
#: paper-recipe models: a run folder carries the config's fingerprint, so equal configs share
#: one run), the one-sided constraint with the outside one region for the nose, and the split
#: outside at each floor for each concept (floor 3: chapter 5's book models)
MODELS = {
    **{f"{c}, paper's two-sided recipe": (c, {}) for c in ("eyes", "nose", "mouth")},
    "nose, one-sided": ("nose", ONE_SIDED),
    **{
        f"{c}, split, floor {floor:g}": (c, SPLIT | {"lambda_floor": floor})
        for c in ("eyes", "nose", "mouth")
        for floor in FLOORS
    },
    # the strong box (every cut >= 85% at an FID ratio <= 1.5): the floor-10 split models
    # missed it narrowly (eyes 84% at 1.53); realism recovers with steps (chapter 12's budget
    # curve), so the same at 4x the steps and the lambda decay (cpu: 80 / 83 / 83% at 1.31 /
    # 1.15 / 1.01, past the 1x front but short of 85%), and at a floor of 20
    **{
        f"{c}, split, floor {floor:g}, 4x steps": (
            c,
            SPLIT | {"lambda_floor": floor, "budget": 4},
        )
        for floor in (10.0, 20.0)
        for c in ("eyes", "nose", "mouth")
    },
}


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--profile", default="cpu")
    p = get_profile(args.parse_args().profile)
    rows = []
    for label, (concept, settings) in MODELS.items():
        overrides = dict(settings)
        budget = overrides.pop("budget", 1)  # steps and lambda decay, times this
        if budget != 1:
            overrides |= {
                "steps": p.finetune_steps * budget,
                "lambda_decay_steps": p.lambda_decay_steps * budget,
            }
        config = runs.finetune_config(p, [concept], recipe="paper", **overrides)
        t0 = time.perf_counter()
        row = ablations.measure_run(p, config, label)
        row["grid_png"] = ablations.grid_png(row.pop("grid"))  # the sweep's sample noises
        row["seconds"] = round(time.perf_counter() - t0, 1)
        keys = (
            "ie_constraint",
            "lambda_start",
            "lambda_floor",
            "ie_t_weight",
            "ie_outside",
            "steps",
        )
        row["config"] = {k: getattr(config, k) for k in keys}
        rows.append(row)
        row["concept"] = concept
        print(
            f"{label}: {concept} cut {row[f'cut {concept}']:.3f} "
            f"[{row[f'cut {concept} low']:.3f}, {row[f'cut {concept} high']:.3f}], "
            f"FID ratio {row['FID ratio']:.2f}, {concept} survival "
            f"{row[f'survival {concept}']:.2f}, C2ST {row['C2ST']:.2f}",
            flush=True,
        )
    record = {"profile": p.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows}
    out = ROOT / "book" / "data" / f"single-concept-{p.name}.json"
    text = json.dumps(record, indent=1)
    atomic_write(out, lambda tmp: tmp.write_text(text))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
