"""Does the cheaper L_IE design keep the result? (issue 29) Fine-tunes the book's K = 4 model
(chapter 5's, ``runs.DEFAULT_IE``) and its nose model (``runs.SINGLE_IE``) with fewer coalition
rows per step (``TrainConfig.ie_rows`` on a larger sub-batch) and scores them as rows of
chapter 12's table (:func:`interpddpm.ablations.measure_run`: the cuts and the FID ratio with
their 95% intervals), beside the recorded rows of the same models trained with the exact loss
(book/data/ablations-cpu.json, book/data/single-concept-cpu.json), or with ``--live-exact``
beside the exact loss's runs trained and scored here (the same face parser and vanilla scores:
a parser trained on another machine moves the FID and the cuts a little). The rows go into the
``training`` entry of book/data/ie-cost-<profile>.json.

    python benchmarks/ie_cheap_runs.py [--profile cpu] [--k4 3 6] [--k2 2 0] [--only k4]
                                       [--live-exact]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from interpddpm import ablations, runs
from interpddpm.profiles import get_profile

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("min cut", "min cut low", "min cut high", "FID ratio", "FID ratio low", "FID ratio high")
SPLIT3 = dict(runs.SINGLE_IE)  # the book's single-concept recipe (chapter 5's nose model)


def summary(row: dict, concept: str | None = None) -> dict:
    """The fields this benchmark prints of a sweep row (one concept's cut, when given)."""
    out = {k: row[k] for k in KEYS}
    if concept:
        for end in ("", " low", " high"):
            out[f"cut{end}"] = row[f"cut {concept}{end}"]
    out["rows per step"] = row["rows per step"]
    return out


def exact_row(name: str, label: str, concept: str | None = None) -> dict:
    rows = json.loads((ROOT / "book" / "data" / name).read_text())["rows"]
    return summary(next(r for r in rows if r["variant"] == label), concept)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu")
    # B samples with M rows each (M = 0: the exact design on B samples)
    ap.add_argument("--k4", type=int, nargs=2, default=[3, 6], metavar=("B", "M"))
    ap.add_argument("--k2", type=int, nargs=2, default=[2, 0], metavar=("B", "M"))
    ap.add_argument("--only", choices=["k4", "k2"], default=None)
    ap.add_argument(
        "--live-exact",
        action="store_true",
        help="also fine-tune and score the exact design here (same parser and vanilla "
        "scores as the cheap run); the recorded row is kept as exact_recorded",
    )
    args = ap.parse_args()
    p = get_profile(args.profile)
    out = ROOT / "book" / "data" / f"ie-cost-{p.name}.json"
    data = json.loads(out.read_text()) if out.exists() else {}
    training = data.setdefault("training", {})
    jobs = []
    if args.only in (None, "k4"):
        b, m = args.k4
        base = ablations.variant_config(p, ablations.DEFAULT_VARIANT)
        cfg = runs.named(
            base.replace(ie_sub_batch=b, ie_rows=m or None), p, f"ablation-default-rows-{m}-b-{b}"
        )
        exact = exact_row(f"ablations-{p.name}.json", ablations.DEFAULT_VARIANT)
        live = base if args.live_exact else None
        jobs.append(
            ("K = 4", cfg, exact, None, f"rows {m}, b = {b}" if m else f"exact, b = {b}", live)
        )
    if args.only in (None, "k2"):
        b, m = args.k2
        cfg = runs.finetune_config(
            p, ["nose"], recipe="paper", **SPLIT3, ie_sub_batch=b, ie_rows=m or None
        )
        exact = exact_row(f"single-concept-{p.name}.json", "nose, split, floor 3", "nose")
        design = f"rows {m}, b = {b}" if m else f"exact, b = {b}"
        live = runs.finetune_config(p, ["nose"]) if args.live_exact else None
        jobs.append(("K = 2 (nose)", cfg, exact, "nose", design, live))

    def measured(cfg, label: str, concept: str | None) -> dict:
        return summary(ablations.measure_run(p, cfg, label), concept)

    for key, cfg, exact, concept, design, live in jobs:
        t0 = time.perf_counter()
        cheap = measured(cfg, f"{key}, {design}", concept)
        entry = training.get(key, {}) if live is None else {}
        entry |= {"design": design, "exact_recorded": exact, "cheap": cheap}
        # the exact row: measured here beside the cheap one (the same parser and vanilla
        # scores), else the record's (kept from an earlier --live-exact when there is one)
        if live is not None:
            entry["exact"] = measured(live, f"{key}, exact (live)", concept)
        entry.setdefault("exact", exact)
        training[key] = entry
        print(
            f"{key} ({time.perf_counter() - t0:.0f} s): exact {entry['exact']}\n  {design}: {cheap}"
        )
        out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
