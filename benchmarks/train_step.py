"""Interpretable vs plain training step time at the same batch, measured in one run.

Each variant runs the full step of :func:`interpddpm.training.training_losses` (one forward with
the coalition rows stacked under the batch, backward, AdamW) on the same UNet and batch; the
variants take turns so that machine noise hits them alike, and the median of each is reported
with its ratio to the plain step. The variants: the plain step; K = 2 and K = 4 with the exact
``L_IE`` on the recorded runs' sub-batches (4 and 2: ``Profile.ie_sub_batch`` and
``ie_sub_batch_multi``); and the cheaper designs of issue 29 (``TrainConfig.ie_rows`` rows per
sample on a larger sub-batch, chosen with ``benchmarks/ie_variance.py``). Targets (issue 29):
K = 2 at most 1.2x and K = 4 at most 2.0x the plain step. A step costs about what a plain step
on as many rows costs (the batch plus ``b x r`` coalition rows): ``--rows-only`` adds plain
steps on those row counts to show it. ``--precision`` adds the same steps under bf16 autocast
and their ratio to fp32. ``--json`` records the ratios (the ``step`` entry of that file).

    python benchmarks/train_step.py [--preset cpu] [--batch 32] [--repeats 6] [--threads 1]
                                    [--k2 2 0] [--k4 3 6] [--precision] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

from interpddpm.models import make_unet
from interpddpm.toyfaces import ToyFaces
from interpddpm.training import TrainConfig, native_bf16, run_noise_scheduler, training_losses

K4 = ("eyes", "nose", "mouth")


def autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)


def design(k: str, concepts: tuple[str, ...], b: int, m: int) -> tuple[str, TrainConfig]:
    """``m`` rows per sample on ``b`` samples (``m = 0``: the exact design on ``b``)."""
    name = f"K = {k} rows {m}, b = {b}" if m else f"K = {k} exact, b = {b}"
    cfg = TrainConfig(interpretable=True, ie_sub_batch=b, ie_rows=m or None, concepts=concepts)
    return name, cfg


def variants(k2: tuple[int, int], k4: tuple[int, int]) -> dict[str, TrainConfig]:
    """The plain step, the exact designs of the recorded runs and the cheaper designs."""
    return dict(
        [
            ("plain", TrainConfig()),
            design("2", ("nose",), 4, 0),
            design("2", ("nose",), *k2),
            design("4", K4, 2, 0),
            design("4", K4, *k4),
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    # the cheaper designs: B samples with M rows each (M = 0: exact on B samples)
    ap.add_argument("--k2", type=int, nargs=2, default=[2, 0], metavar=("B", "M"))
    ap.add_argument("--k4", type=int, nargs=2, default=[3, 6], metavar=("B", "M"))
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", action="store_true", help="also time bf16 autocast")
    ap.add_argument("--rows-only", action="store_true", help="also plain steps on those rows")
    ap.add_argument("--json", type=Path, default=None, help="record the ratios here")
    args = ap.parse_args()
    precisions = ["fp32", "bf16"] if args.precision else ["fp32"]
    if args.threads:
        torch.set_num_threads(args.threads)
    model = make_unet(args.preset, sample_size=args.size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    faces = ToyFaces(args.size, 10_000)
    images, labels = faces.batch(range(args.batch))
    sched = run_noise_scheduler(TrainConfig())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, preset {args.preset} "
        f"({sum(p.numel() for p in model.parameters()):,} params), {args.size}x{args.size}, "
        f"batch {args.batch}, median of {args.repeats} steps (after 1 warm-up), "
        f"native bf16: {native_bf16('cpu')}"
    )
    configs = variants(tuple(args.k2), tuple(args.k4))
    rows: dict[str, int] = {}
    for name, cfg in configs.items():  # the rows of each variant's one forward pass
        out = training_losses(model, sched, images, labels, cfg, 0, torch.Generator())
        rows[name] = out.rows
    batches = {name: (images, labels, cfg) for name, cfg in configs.items()}
    if args.rows_only:
        for name in list(configs)[1:]:
            more = faces.batch(range(rows[name]))
            batches[f"  plain on {rows[name]} rows"] = (*more, TrainConfig())
            rows[f"  plain on {rows[name]} rows"] = rows[name]
    times = {(name, pr): [] for name in batches for pr in precisions}
    for i in range(args.repeats + 1):
        for (name, pr), spent in times.items():
            x, y, cfg = batches[name]
            gen = torch.Generator().manual_seed(i)
            start = time.perf_counter()
            with autocast(pr):
                out = training_losses(model, sched, x, y, cfg, 0, gen)
            out.total.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:  # the first round warms up allocators and kernels
                spent.append(time.perf_counter() - start)
    median = {key: statistics.median(spent) for key, spent in times.items()}
    plain = median["plain", "fp32"]
    print(
        f"\n{'variant':30s} {'rows/forward':>12s} {'rows ratio':>10s} {'s/step':>8s} {'ratio':>7s}"
    )
    ratios = {}
    for name in batches:
        t = median[name, "fp32"]
        ratios[name.strip()] = {"rows": rows[name], "ratio": t / plain}
        print(
            f"{name:30s} {rows[name]:12d} {rows[name] / args.batch:9.2f}x {t:8.3f} "
            f"{t / plain:6.2f}x"
        )
    if args.precision:
        print(f"\n{'variant':30s} {'fp32 s':>8s} {'bf16 s':>8s} {'bf16/fp32':>10s}")
        for name in batches:
            a, b = median[name, "fp32"], median[name, "bf16"]
            print(f"{name:30s} {a:8.3f} {b:8.3f} {b / a:9.2f}x")
    names = list(configs)
    for name, target in ((names[2], 1.2), (names[4], 2.0)):
        r = median[name, "fp32"] / plain
        verdict = "PASS" if r <= target else "FAIL"
        print(f"{verdict}: {name} step is {r:.2f}x the plain step (target <= {target}x)")
    if args.json:
        data = json.loads(args.json.read_text()) if args.json.exists() else {}
        data["step"] = {
            "threads": torch.get_num_threads(),
            "batch": args.batch,
            "preset": args.preset,
            "repeats": args.repeats,
            "plain_seconds": plain,
            "variants": ratios,
        }
        args.json.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
