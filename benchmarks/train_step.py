"""Interpretable vs plain training step time at the same batch, measured in one run.

Each variant runs the full step of :func:`interpddpm.training.training_losses` (one forward with
the coalition rows stacked under the batch, backward, AdamW) on the same UNet and batch; the
variants take turns so that machine noise hits them alike, and the median of each is reported
with its ratio to the plain step. Target (issue 3): K = 2 exact at most 1.5x the plain step.
``--precision`` adds the same steps under bf16 autocast (what the cpu profile's
``mixed_precision="auto"`` picks on a CPU with native bf16) and their ratio to fp32.

    python benchmarks/train_step.py [--preset cpu] [--batch 32] [--repeats 6] [--threads 1]
                                    [--precision]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from interpddpm.models import make_unet
from interpddpm.toyfaces import ToyFaces
from interpddpm.training import TrainConfig, native_bf16, run_noise_scheduler, training_losses


def autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16)


def variants(sub_batch: int) -> dict[str, TrainConfig]:
    base = dict(interpretable=True, ie_sub_batch=sub_batch)
    return {
        "plain": TrainConfig(),
        "K = 2 exact (4 coalitions)": TrainConfig(**base, concepts=("nose",)),
        "K = 4 exact (16 coalitions)": TrainConfig(**base, concepts=("eyes", "nose", "mouth")),
        "K = 4 pooled (C = 6: 11 coalitions)": TrainConfig(
            **base, concepts=("eyes", "nose", "mouth"), ie_exact_max_players=3, ie_samples=6
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--sub-batch", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", action="store_true", help="also time bf16 autocast")
    args = ap.parse_args()
    precisions = ["fp32", "bf16"] if args.precision else ["fp32"]
    if args.threads:
        torch.set_num_threads(args.threads)
    model = make_unet(args.preset, sample_size=args.size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, labels = ToyFaces(args.size, 10_000).batch(range(args.batch))
    sched = run_noise_scheduler(TrainConfig())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, preset {args.preset} "
        f"({sum(p.numel() for p in model.parameters()):,} params), {args.size}x{args.size}, "
        f"batch {args.batch}, median of {args.repeats} steps (after 1 warm-up), "
        f"native bf16: {native_bf16('cpu')}"
    )
    for sub in args.sub_batch:
        configs = variants(sub)
        times = {(name, pr): [] for name in configs for pr in precisions}
        rows: dict[str, int] = {}
        for i in range(args.repeats + 1):
            for (name, pr), spent in times.items():
                gen = torch.Generator().manual_seed(i)
                start = time.perf_counter()
                with autocast(pr):
                    out = training_losses(model, sched, images, labels, configs[name], 0, gen)
                out.total.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if i:  # the first round warms up allocators and kernels
                    spent.append(time.perf_counter() - start)
                rows[name] = out.rows
        median = {key: statistics.median(spent) for key, spent in times.items()}
        plain = median["plain", "fp32"]
        print(f"\nL_IE on a sub-batch of {sub}:")
        print(f"{'variant':38s} {'rows/forward':>12s} {'s/step':>8s} {'ratio':>7s}")
        for name in configs:
            t = median[name, "fp32"]
            print(f"{name:38s} {rows[name]:12d} {t:8.3f} {t / plain:6.2f}x")
        if args.precision:
            print(f"\n{'variant':38s} {'fp32 s':>8s} {'bf16 s':>8s} {'bf16/fp32':>10s}")
            for name in configs:
                a, b = median[name, "fp32"], median[name, "bf16"]
                print(f"{name:38s} {a:8.3f} {b:8.3f} {b / a:9.2f}x")
        k2 = median["K = 2 exact (4 coalitions)", "fp32"] / plain
        verdict = "PASS" if k2 <= 1.5 else "FAIL"
        print(f"{verdict}: K = 2 exact step is {k2:.2f}x the plain step (target <= 1.5x)")


if __name__ == "__main__":
    main()
