"""Benchmark: interpddpm.sampling.ddim_sample against diffusers' DDIMPipeline on the same UNet.

Both run DDIM (eta = 0) with the same scheduler config, steps and x_T; the runs are interleaved
and the best of ``--repeats`` is kept, so background load hits both alike. Prints images per
second for both, their ratio (target >= 1.0) and the largest difference between the outputs.

    python benchmarks/sampling.py            # "cpu" preset, 32x32, 16 images, 50 steps
    python benchmarks/sampling.py --quick    # 4 images, 10 steps, one repeat
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import DDIMPipeline, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from interpddpm.models import count_parameters, make_unet
from interpddpm.sampling import ddim_sample


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 images, 10 steps, 1 repeat")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.steps, args.repeats = 4, 10, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    unet = make_unet(args.preset, args.size).to(args.device).eval()
    scheduler = DDPMScheduler()
    pipe = DDIMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    shape = (args.images, unet.config.in_channels, args.size, args.size)

    def run_pipeline() -> torch.Tensor:
        g = torch.Generator(args.device).manual_seed(0)
        return pipe(
            batch_size=args.images, generator=g, num_inference_steps=args.steps, output_type="pt"
        ).images

    def run_ours() -> torch.Tensor:
        g = torch.Generator(args.device).manual_seed(0)
        x_T = randn_tensor(shape, generator=g, device=torch.device(args.device), dtype=unet.dtype)
        x0 = ddim_sample(unet, x_T, num_inference_steps=args.steps, scheduler=scheduler)
        return (x0 / 2 + 0.5).clamp(0, 1)

    def timed(fn) -> tuple[float, torch.Tensor]:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, out

    # Warm-up (allocator, kernels) with a couple of steps, then interleaved timed runs.
    with torch.no_grad():
        unet(torch.zeros(shape, device=args.device), torch.tensor(0))
    best = {"DDIMPipeline": float("inf"), "ddim_sample": float("inf")}
    outs: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for name, fn in (("DDIMPipeline", run_pipeline), ("ddim_sample", run_ours)):
            seconds, outs[name] = timed(fn)
            best[name] = min(best[name], seconds)
    diff = (outs["ddim_sample"] - outs["DDIMPipeline"]).abs().max().item()

    ips = {name: args.images / s for name, s in best.items()}
    ratio = ips["ddim_sample"] / ips["DDIMPipeline"]
    print(
        f"DDIM sampling, eta=0: preset {args.preset!r} ({count_parameters(unet) / 1e6:.2f}M "
        f"params), {args.size}x{args.size}, {args.images} images, {args.steps} steps, "
        f"device {args.device}, {torch.get_num_threads()} threads, best of {args.repeats}"
    )
    print(f"{'method':<14} {'seconds':>9} {'images/s':>10}")
    for name in best:
        print(f"{name:<14} {best[name]:>9.3f} {ips[name]:>10.2f}")
    print(f"ratio ddim_sample / DDIMPipeline (images/s): {ratio:.3f}  (target >= 1.0)")
    print(f"max |difference| of the [0, 1] images: {diff:.2e}")
    return {"ratio": ratio, "max_abs_diff": diff, **ips}


if __name__ == "__main__":
    main()
