"""One GPU check: training speed and memory per precision, sampling, locality and FID on CUDA.

What it measures, at the ``gpu`` profile's sizes (preset, image size, batch, L_IE sub-batches)
with a randomly initialised UNet and toy-face data of the right shapes:

1. the device (name, compute capability, memory, versions) and the precisions tried: fp32,
   fp16 with a GradScaler (as accelerate does) and bf16 where the GPU has it natively;
2. the training step (``training.training_losses``, backward, grad clipping, AdamW, EMA) of a
   plain DDPM, a K = 2 and a K = 4 fine-tune in each precision: s/step, rows/s, achieved TFLOP/s
   (``budget.pixel_model(P).flops`` x 3 x rows) and its ratio to the GPU's peak in
   ``budget.GPUS``, and the peak memory next to ``budget``'s predicted ``train_bytes``;
3. a 50-step DDIM sample of 64 images (fp32), one locality protocol on a few pairs (BiSeNet
   parser, pretrained if it can be downloaded, else random weights: it says which) and an FID
   batch (Inception when torch-fidelity and its weights are reachable, else skipped, saying why;
   plus the offline parser-feature FID);
4. that every model it used has its parameters on CUDA, then a summary table.

Its output calibrates :data:`interpddpm.budget.UTILISATION` (the fraction of peak a small UNet
reaches: the "% peak" column of the precision ``auto`` picks) and the memory model
(``ModelCost.train_bytes``, an upper bound: "peak GiB" against "predicted GiB").

It takes 2-4 minutes on one Colab T4 and under 2 on an A100/H100 (at most 8: the parts left
after 7 minutes are skipped). Every part runs on its own: a failing one is reported, the others
still run. Run it once on a GPU, e.g. on Colab after installing the package::

    pip install -e .            # or: pip install "interpddpm @ git+<repository url>"
    python benchmarks/gpu_check.py [--peak-tflops X]

``--peak-tflops``: the GPU's dense fp16/bf16 peak when ``budget.GPUS`` has no entry for it (an
H200: 989), so that the "% peak" column and the calibration lines are printed.
``--stand-ins`` accepts BiSeNet's random weights (without it the check FAILS where the book
would: chapters 06-12 need the pretrained parser). Also: the book's own trainer with one
resume (every loss finite), DDIM throughput in fp32 and fp16 next to ``budget.py``'s rates,
chapter 10's LDM fine-tune peak memory; a training row the card cannot hold is skipped with
the reason.
``--dry-run`` (automatic when torch sees no GPU) runs the same code on the CPU at tiny sizes
(the smoke profile: its preset at 32 px, one step each) in well under a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import math
import os
import re
import socket
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from interpddpm import budget, devices, metrics, models, parsing, realism, runs, sampling
from interpddpm.profiles import ENV_CACHE, PROFILES, Profile
from interpddpm.toyfaces import ToyFaces
from interpddpm.training import TrainConfig, training_losses

TIME_LIMIT_S = 420.0  # parts not started after 7 minutes are skipped (the whole run: <= 8 min)
GIB = 2**30
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
CONCEPTS = ["eyes", "nose", "mouth"]
#: torch-fidelity's Inception weights (torchmetrics' FID network), kept in torch hub's cache.
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each part does: the gpu profile's sizes, or tiny ones for the dry run."""

    profile: Profile
    warmup: int  # training steps before the timed ones
    steps: int  # timed training steps per variant and precision
    ddim_steps: int
    ddim_batch: int
    pairs: int  # locality protocol pairs
    pair_steps: int  # their DDIM steps
    parser_input: int  # BiSeNet's input resolution
    fid_images: int  # real and fake images each


def sizes(dry: bool) -> Sizes:
    if dry:
        return Sizes(PROFILES["smoke"], 0, 1, 5, 8, 2, 5, 128, 8)
    p = PROFILES["gpu"]
    return Sizes(p, 2, 5, 50, 64, 4, p.ddim_steps, 512, 64)


class Skip(Exception):
    """A part that cannot run here (not an error): its message is the reason."""


@dataclasses.dataclass
class Outcome:
    part: str
    ran: str = "skipped"  # "yes", "partly" (some of its rows failed), "FAILED" or "skipped"
    seconds: float | None = None
    peak_bytes: int | None = None
    note: str = ""


class Check:
    """What the parts share: the device, the sizes, the clock, the models used, the outcomes."""

    def __init__(
        self, device: torch.device, sz: Sizes, dry: bool, peak_tflops: float | None = None
    ) -> None:
        self.device, self.sz, self.dry = device, sz, dry
        self.gpu = gpu_entry(peak_tflops) if device.type == "cuda" else None
        self.cuda = device.type == "cuda"
        self.start = time.perf_counter()
        self.models: dict[str, torch.device | None] = {}
        self.outcomes: list[Outcome] = []
        self.calibration: list[str] = []
        self.guard_announced = False
        self.stand_ins = False  # --stand-ins: random BiSeNet weights accepted
        self._faces: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int | None:
        return torch.cuda.max_memory_allocated() if self.cuda else None

    def faces(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` toy faces and label maps at the profile's size (rendered once, reused)."""
        if n not in self._faces:
            self._faces[n] = ToyFaces(self.sz.profile.image_size, n).batch(range(n))
        return self._faces[n]

    def use(self, name: str, module: Any) -> Any:
        """Record the device of ``module``'s parameters (checked at the end)."""
        self.models[name] = devices.module_device(module)
        return module

    def run(
        self, name: str, part: Callable[[Check, Outcome], None], *, always: bool = False
    ) -> Outcome:
        """Run one part under the time guard (``always``: a part of no cost, run anyway);
        record its time, peak memory or error."""
        out = Outcome(name)
        self.outcomes.append(out)
        # the dry run tests the script itself: every part runs, however busy the CPU
        if self.elapsed() > TIME_LIMIT_S and not always and not self.dry:
            if not self.guard_announced:
                print(
                    f"\ntime guard: {self.elapsed():.0f} s passed (limit {TIME_LIMIT_S:.0f} s), "
                    "skipping the remaining parts"
                )
                self.guard_announced = True
            out.note = "time guard"
            return out
        print(f"\n== {name}", flush=True)
        self.reset_peak()
        t0 = time.perf_counter()
        out.ran = "running"
        try:
            part(self, out)
            if out.ran == "running":
                out.ran = "yes"
        except Skip as reason:
            out.ran, out.note = "skipped", str(reason)
            print(f"skipped: {reason}")
        except Exception as err:  # one failing part must not hide the others
            out.ran, out.note = "FAILED", short_error(err)
            print(f"FAILED: {out.note}")
            print(where(err))
        finally:  # after a CUDA error these may raise too: keep going
            with contextlib.suppress(Exception):
                self.sync()
            out.seconds = time.perf_counter() - t0
            with contextlib.suppress(Exception):
                if out.peak_bytes is None:
                    out.peak_bytes = self.peak()
                if self.cuda:
                    torch.cuda.empty_cache()
        return out


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------
def short_error(err: BaseException, limit: int = 160) -> str:
    lines = str(err).strip().splitlines()
    text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    if err.__cause__ is not None:
        text += f" (cause: {type(err.__cause__).__name__}: {err.__cause__})"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def where(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)[-3:]
    return "  at " + " <- ".join(
        f"{os.path.relpath(f.filename)}:{f.lineno} {f.name}" for f in reversed(frames)
    )


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether ``host:443`` accepts a connection (downloads would work), within ``timeout``."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def gpu_entry(peak_tflops: float | None = None) -> budget.GPU | None:
    """The :data:`budget.GPUS` entry whose key is a word of this GPU's name (an L40S is no L4),
    or this GPU with the ``peak_tflops`` given on the command line."""
    name = torch.cuda.get_device_name()
    if peak_tflops is not None:
        memory = torch.cuda.get_device_properties(0).total_memory / GIB
        # fp32 peak unknown: the T4's ratio of fp32 to fp16 tensor peak (8.1 / 65)
        return budget.GPU(name, memory, peak_tflops, peak_tflops * 8.1 / 65)
    for key, gpu in budget.GPUS.items():
        if re.search(rf"\b{re.escape(key)}\b", name.upper()):
            return gpu
    return None


def precisions(device: torch.device, dry: bool) -> list[str]:
    """fp32, fp16 (every CUDA GPU has it) and bf16 where native; all three in the dry run."""
    if dry:
        return ["fp32", "fp16", "bf16"]
    return ["fp32", "fp16"] + (["bf16"] if devices.native_bf16(device) else [])


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def scratch_cache() -> Iterator[None]:
    """``runs.*_config`` name run folders under the artifact cache (and create it): point the
    cache at a temporary folder meanwhile, so the check leaves nothing behind."""
    old = os.environ.get(ENV_CACHE)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[ENV_CACHE] = tmp
        try:
            yield
        finally:
            if old is None:
                os.environ.pop(ENV_CACHE, None)
            else:
                os.environ[ENV_CACHE] = old


@contextlib.contextmanager
def recording_place(ctx: Check, name: str) -> Iterator[None]:
    """Record what ``realism`` places (the FID metric it builds internally) under ``name``."""
    original = realism.place

    def spy(module: Any, device: Any = None) -> Any:
        return ctx.use(name, original(module, device))

    realism.place = spy
    try:
        yield
    finally:
        realism.place = original


def new_unet(ctx: Check, name: str) -> torch.nn.Module:
    p = ctx.sz.profile
    torch.manual_seed(0)
    unet = devices.place(models.make_unet(p.preset, p.image_size), ctx.device)
    return ctx.use(name, unet)


# ------------------------------------------------------------------------------------------
# The parts
# ------------------------------------------------------------------------------------------
def part_device(ctx: Check, out: Outcome) -> None:
    p = ctx.sz.profile
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        print(
            f"device: {props.name}, compute capability {props.major}.{props.minor}, "
            f"{props.total_memory / GIB:.1f} GiB, {props.multi_processor_count} SMs; "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
        )
        print(
            f"TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, "
            f"cuDNN {torch.backends.cudnn.allow_tf32}; cudnn.benchmark "
            f"{torch.backends.cudnn.benchmark}"
        )
        gpu = ctx.gpu
        print(
            "peak for the ratios: "
            + (f"{gpu.name} ({gpu.peak_tflops:g} TFLOP/s fp16/bf16 peak)" if gpu else "none")
        )
    else:
        print(f"device: CPU, {torch.get_num_threads()} threads (dry run: no timings to keep)")
    print(
        f"torch {torch.__version__}, diffusers {version('diffusers')}, accelerate "
        f"{version('accelerate')}, torchmetrics {version('torchmetrics')}, torch-fidelity "
        f"{version('torch-fidelity')}"
    )
    auto = devices.resolve_mixed_precision("auto", ctx.device.type)
    tried = precisions(ctx.device, ctx.dry)
    print(
        f'precision: resolve_mixed_precision("auto", "{ctx.device.type}") = {auto!r}; native '
        f"bf16: {devices.native_bf16(ctx.device)}; trying {', '.join(tried)}"
        + (" (fp16 with a GradScaler)" if "fp16" in tried else "")
    )
    cost = budget.pixel_model(p)
    print(
        f"profile {p.name}: preset {p.preset} at {p.image_size} px, batch {p.batch_size}, "
        f"ie_sub_batch {p.ie_sub_batch} (K = 2) / {p.ie_sub_batch_multi} (K = 4); UNet "
        f"{cost.params / 1e6:.1f}M parameters, {cost.flops / 1e9:.2f} GFLOP per forward"
    )
    out.note = f"auto -> {auto}; tried {', '.join(tried)}"


def train_configs(p: Profile) -> dict[str, TrainConfig]:
    """The plain DDPM's config and two fine-tunes' (as the chapters build them)."""
    with scratch_cache():
        return {
            "plain": runs.baseline_config(p),
            "K = 2": runs.finetune_config(p, ["nose"]),
            "K = 4": runs.finetune_config(p, CONCEPTS),
        }


def train_step(
    ctx: Check,
    model: torch.nn.Module,
    parts: dict[str, Any],
    config: TrainConfig,
    step: int,
    precision: str,
) -> tuple[int, float]:
    """One step as the trainer makes it: losses under autocast, backward (scaled for fp16),
    gradient clipping, AdamW, EMA. Returns the forward rows and the loss."""
    opt, scaler, ema = parts["opt"], parts["scaler"], parts["ema"]
    images, labels = parts["data"]
    gen = torch.Generator().manual_seed(step)
    with autocast(ctx.device, precision):
        losses = training_losses(model, parts["sched"], images, labels, config, step, gen)
    params = [q for q in model.parameters() if q.requires_grad]
    if scaler is not None:
        scaler.scale(losses.total).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        scaler.step(opt)
        scaler.update()
    else:
        losses.total.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
    opt.zero_grad(set_to_none=True)
    ema.step(model.parameters())
    return losses.rows, float(losses.total.detach())  # the trainer reads the loss every step


def train_part(precision: str) -> Callable[[Check, Outcome], None]:
    def part(ctx: Check, out: Outcome) -> None:
        from diffusers import DDPMScheduler
        from diffusers.training_utils import EMAModel

        p = ctx.sz.profile
        configs = train_configs(p)
        cost = budget.pixel_model(p)
        gpu = ctx.gpu
        model = new_unet(ctx, f"UNet (train {precision})")
        model.train()
        first = configs["plain"]
        scaler = torch.amp.GradScaler(ctx.device.type) if precision == "fp16" else None
        images, labels = ctx.faces(p.batch_size)
        parts = {
            "opt": torch.optim.AdamW(model.parameters(), lr=first.lr),
            "scaler": scaler,
            "ema": EMAModel(model.parameters(), decay=first.ema_decay, use_ema_warmup=True),
            "sched": DDPMScheduler(
                num_train_timesteps=first.num_train_timesteps, beta_schedule=first.beta_schedule
            ),
            "data": (images.to(ctx.device), labels.to(ctx.device)),
        }
        half = precision != "fp32"
        print(
            f"{'variant':8s} {'rows':>5s} {'s/step':>8s} {'rows/s':>8s} {'TFLOP/s':>8s} "
            f"{'% peak':>7s} {'peak GiB':>9s} {'predicted GiB':>14s}  "
            f"({ctx.sz.warmup} warm-up + {ctx.sz.steps} timed steps)"
        )
        notes, peaks = [], []
        for name, config in configs.items():
            if ctx.elapsed() > TIME_LIMIT_S:
                notes.append(f"{name}: time guard")
                break
            rows_needed = budget._finetune_rows(p, {"plain": 1, "K = 2": 2, "K = 4": 4}[name], 1)
            need = cost.train_bytes(
                rows_needed[0] if name != "plain" else p.batch_size, half=precision != "fp32"
            )
            if gpu is not None and need > gpu.memory_gib * GIB:
                reason = f"predicted {gib(need)} GiB > the card's {gpu.memory_gib:g} GiB"
                print(f"{name:8s} skipped: cannot fit ({reason})")
                notes.append(f"{name}: skipped, {reason}")
                continue
            try:
                step = 0
                for _ in range(ctx.sz.warmup):
                    train_step(ctx, model, parts, config, step, precision)
                    step += 1
                ctx.reset_peak()
                t0 = time.perf_counter()
                for _ in range(ctx.sz.steps):
                    rows, loss = train_step(ctx, model, parts, config, step, precision)
                    step += 1
                ctx.sync()
                sec = (time.perf_counter() - t0) / ctx.sz.steps
            except Exception as err:  # an OOM in K = 4 keeps the plain and K = 2 rows
                parts["opt"].zero_grad(set_to_none=True)
                if scaler is not None:  # its per-step state may be half-way through
                    parts["scaler"] = scaler = torch.amp.GradScaler(ctx.device.type)
                if ctx.cuda:
                    torch.cuda.empty_cache()
                oom = isinstance(err, torch.cuda.OutOfMemoryError)
                msg = "out of memory" if oom else short_error(err, 100)
                print(f"{name:8s} FAILED: {msg}")
                if not oom:
                    print(where(err))
                notes.append(f"{name}: {msg}")
                continue
            peak = ctx.peak()
            peaks.append(peak or 0)
            tflops = cost.flops * 3 * rows / sec / 1e12
            # each precision against its own peak (budget.flops_per_second at utilisation 1)
            kind = "fp32" if precision == "no" else "half"
            own = (
                budget.flops_per_second(gpu, kind, "optimistic")
                / budget.UTILISATION["tensor" if kind == "half" or gpu.tf32_tflops else "fp32"][
                    "optimistic"
                ]
                / 1e12
                if gpu
                else None
            )
            share = f"{100 * tflops / own:6.1f}%" if own else f"{'-':>7s}"
            predicted = cost.train_bytes(rows, half)
            print(
                f"{name:8s} {rows:5d} {sec:8.3f} {rows / sec:8.0f} {tflops:8.2f} {share} "
                f"{gib(peak):>9s} {gib(predicted):>14s}"
                + ("" if math.isfinite(loss) else f"  loss {loss}")
            )
            notes.append(f"{name} {sec:.3f} s" + ("" if math.isfinite(loss) else " (loss nan)"))
            if gpu and precision == devices.resolve_mixed_precision("auto", ctx.device.type):
                ratio = (
                    "" if peak is None else f", memory measured/predicted {peak / predicted:.2f}"
                )
                table = "tensor" if kind == "half" or gpu.tf32_tflops else "fp32"
                assumed = budget.UTILISATION[table]
                ctx.calibration.append(
                    f"{name} ({precision}): share of peak {tflops / own:.3f} against "
                    f"budget.UTILISATION[{table!r}] likely {assumed['likely']:.3f}, "
                    f"optimistic {assumed['optimistic']:.3f}{ratio}"
                )
        out.peak_bytes = max(peaks) if peaks and ctx.cuda else None
        out.note = "; ".join(notes)
        if len(peaks) < len(configs):
            out.ran = "partly"

    return part


def part_ddim(ctx: Check, out: Outcome) -> None:
    sz = ctx.sz
    model = new_unet(ctx, "UNet (DDIM)")
    x_T = torch.randn(sz.ddim_batch, 3, sz.profile.image_size, sz.profile.image_size)
    sampling.ddim_sample(model, x_T[:2].to(ctx.device), num_inference_steps=2)  # warm-up
    ctx.reset_peak()
    t0 = time.perf_counter()
    x0 = sampling.ddim_sample(model, x_T.to(ctx.device), num_inference_steps=sz.ddim_steps)
    ctx.sync()
    sec = time.perf_counter() - t0
    cost = budget.pixel_model(sz.profile)
    rows = sz.ddim_batch * sz.ddim_steps
    predicted = cost.inference_bytes(sz.ddim_batch)
    finite = bool(torch.isfinite(x0).all())
    print(
        f"DDIM {sz.ddim_steps} steps x {sz.ddim_batch} images (fp32): {sec:.2f} s, "
        f"{rows / sec:.0f} rows/s, {cost.flops * rows / sec / 1e12:.2f} TFLOP/s; peak "
        f"{gib(ctx.peak())} GiB (predicted {gib(predicted)}); output on {x0.device}, "
        f"finite: {finite}"
    )
    out.note = f"{sz.ddim_steps} x {sz.ddim_batch}, {rows / sec:.0f} rows/s" + (
        "" if finite else ", NON-FINITE output"
    )
    if not finite:
        raise FloatingPointError("DDIM output is not finite")


def part_trainer(ctx: Check, out: Outcome) -> None:
    """The book's own trainer (``training.train``: accelerate, checkpoints, resume) on toy faces
    at the profile's preset, size and precision: half the steps, a resume to the end, every
    logged loss finite, and a DDIM sample of the result finite."""
    from interpddpm import training

    p = ctx.sz.profile
    steps = 4 if ctx.dry else 200  # fp16: long enough for the GradScaler to back off
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            preset=p.preset,
            image_size=p.image_size,
            dataset_length=max(64, p.batch_size),
            batch_size=p.batch_size,
            steps=steps,
            checkpoint_every=steps // 2,
            log_every=1,
            mixed_precision=devices.resolve_mixed_precision("auto", ctx.device.type),
            output_dir=os.path.join(tmp, "run"),
        )
        t0 = time.perf_counter()
        first = training.train(config, stop_after=steps // 2, progress=False)
        resumed = training.train(config, progress=False)
        sec = time.perf_counter() - t0
        if first.step != steps // 2 or resumed.step != steps:
            raise RuntimeError(f"steps {first.step} then {resumed.step}, expected {steps}")
        losses = [m["loss"] for m in resumed.metrics() if "loss" in m]
        bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"non-finite loss at logged steps {bad[:5]}")
        state = training.read_checkpoint(training.list_checkpoints(resumed.output_dir)[-1])
        scale = (state.get("scaler") or {}).get("scale")  # fp16: the GradScaler's, saved
        model = ctx.use("UNet (trainer run)", resumed.model(device=ctx.device))
        x = torch.randn(4, 3, p.image_size, p.image_size, device=ctx.device)
        image = sampling.ddim_sample(model, x, num_inference_steps=5)
        if not bool(torch.isfinite(image).all()):
            raise FloatingPointError("DDIM sample of the trained run is not finite")
    backed = "" if scale is None else f", GradScaler scale {scale:g}" + (
        " (backed off from 65536)" if scale < 65536 else " (never backed off)"
    )
    out.note = (
        f"{config.mixed_precision}: {steps // 2} steps, resumed to {steps}, "
        f"{len(losses)} finite losses{backed}, {sec:.1f} s"
    )
    print(out.note)


def part_sampling(ctx: Check, out: Outcome) -> None:
    """DDIM throughput in fp32 (what the chapters run) and fp16 (model.half()), each next to
    budget.py's likely and optimistic rates for that precision on this card."""
    sz = ctx.sz
    cost = budget.pixel_model(sz.profile)
    notes = []
    for precision, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        if precision == "fp16" and not ctx.cuda:
            notes.append("fp16: CUDA only")
            continue
        model = new_unet(ctx, f"UNet (DDIM {precision})")
        model = model if dtype == torch.float32 else model.to(dtype)
        x_T = torch.randn(sz.ddim_batch, 3, sz.profile.image_size, sz.profile.image_size)
        sampling.ddim_sample(model, x_T[:2].to(ctx.device, dtype), num_inference_steps=2)
        ctx.sync()
        t0 = time.perf_counter()
        x0 = sampling.ddim_sample(model, x_T.to(ctx.device, dtype), num_inference_steps=5)
        ctx.sync()
        sec = time.perf_counter() - t0
        if not bool(torch.isfinite(x0).all()):
            raise FloatingPointError(f"{precision} DDIM output is not finite")
        tflops = cost.flops * sz.ddim_batch * 5 / sec / 1e12
        line = f"{precision}: {sz.ddim_batch * 5 / sec:.0f} rows/s, {tflops:.2f} TFLOP/s"
        if ctx.gpu is not None:
            kind = "fp32" if precision == "fp32" else "half"
            likely, best = (
                budget.flops_per_second(ctx.gpu, kind, r) / 1e12 for r in ("likely", "optimistic")
            )
            line += f" (budget.py: likely {likely:.2f}, optimistic {best:.2f})"
            ctx.calibration.append(f"DDIM sampling {line}")
        print(line)
        notes.append(line.split(" (")[0])
    out.note = "; ".join(notes)


def part_ldm_memory(ctx: Check, out: Outcome) -> None:
    """Peak memory of one fine-tuning step of chapter 10's latent UNet (the 274M-parameter
    ``CompVis/ldm-celebahq-256`` UNet, random weights) at the profile's rows, under the
    training precision: the tightest fit of the book on a 16 GB card."""
    from diffusers import UNet2DModel

    p = PROFILES["gpu"]
    cost = budget.latent_model(p)
    sub = max(1, min(p.ie_sub_batch, p.ldm_batch_size // 2))
    rows = p.ldm_batch_size + 3 * sub
    precision = devices.resolve_mixed_precision("auto", ctx.device.type)
    predicted = cost.train_bytes(rows, half=precision != "no")
    if ctx.dry:
        raise Skip(f"dry run: the 274M-parameter LDM UNet is for a GPU ({gib(predicted)} GiB)")
    if ctx.gpu is not None and predicted > ctx.gpu.memory_gib * GIB:
        raise Skip(f"cannot fit: predicted {gib(predicted)} GiB > {ctx.gpu.memory_gib:g} GiB")
    model = ctx.use("LDM UNet", UNet2DModel(**budget.LDM_CELEBAHQ_UNET).to(ctx.device))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    x = torch.randn(rows, 3, 64, 64, device=ctx.device)
    t = torch.randint(0, 1000, (rows,), device=ctx.device)
    ctx.reset_peak()
    with autocast(ctx.device, "fp32" if precision == "no" else precision):
        loss = model(x, t).sample.float().pow(2).mean()
    loss.backward()
    opt.step()
    ctx.sync()
    peak = ctx.peak()
    out.peak_bytes = peak
    out.note = f"{rows} rows ({precision}): peak {gib(peak)} GiB, predicted {gib(predicted)}"
    print(out.note)


def load_bisenet(ctx: Check) -> tuple[parsing.BiSeNetParser, str]:
    """The pretrained BiSeNet when it can be had (cache or network), else random weights."""
    online = reachable("huggingface.co")
    try:
        parser = parsing.BiSeNetParser.from_pretrained(
            input_size=ctx.sz.parser_input, device=ctx.device, local_files_only=not online
        )
        how = "pretrained BiSeNet"
    except Exception as err:  # not downloadable, not cached, or a broken file
        if not (ctx.dry or ctx.stand_ins):  # the book would fail here: so does the check
            raise RuntimeError(
                f"BiSeNet's pretrained weights are not available ({type(err).__name__}: "
                f"{short_error(err, 120)}); chapters 06-12 need them. Rerun with network "
                "access, or with --stand-ins to accept random weights (locality numbers "
                "then mean nothing)"
            ) from err
        parser = parsing.BiSeNetParser(input_size=ctx.sz.parser_input)
        where_from = "network" if online else "offline, not in the Hub cache"
        how = f"random-weight BiSeNet (pretrained unavailable: {where_from}; {type(err).__name__})"
    return ctx.use("BiSeNet parser", devices.place(parser, ctx.device)), how


def describe(results: list[metrics.LocalityResult]) -> tuple[str, bool]:
    """``concept ratio (pairs)`` per concept, and whether each is finite or explicitly
    undefined (NaN with no measured pair)."""
    parts, ok = [], True
    for r in results:
        if math.isfinite(r.ratio_of_sums):
            parts.append(f"{r.concept} {r.ratio_of_sums:.3f} ({r.n_pairs})")
        elif r.n_pairs == 0:
            parts.append(f"{r.concept} undefined")
        else:
            parts.append(f"{r.concept} NaN with {r.n_pairs} pairs")
            ok = False
    return ", ".join(parts), ok


def part_locality(ctx: Check, out: Outcome) -> None:
    sz = ctx.sz
    model = new_unet(ctx, "UNet (locality)")
    parser, how = load_bisenet(ctx)
    print(f"parser: {how}")
    kwargs: dict[str, Any] = dict(num_inference_steps=sz.pair_steps, batch_size=64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gen = metrics.generate_pairs(model, parser, sz.pairs, **kwargs)
        parsed = metrics.locality_protocol(
            model, parser, CONCEPTS, n_pairs=sz.pairs, generated=gen, **kwargs
        )
        # the parse of a random model's faces may lack every concept: the toy faces' label maps
        # make sure the swap-and-regenerate path runs too
        toy = dataclasses.replace(gen, labels=ctx.faces(sz.pairs)[1])
        swapped = metrics.locality_protocol(
            model, parser, CONCEPTS, n_pairs=sz.pairs, generated=toy, **kwargs
        )
    text_parsed, ok_parsed = describe(parsed)
    text_toy, ok_toy = describe(swapped)
    print(f"{sz.pairs} pairs, DDIM {sz.pair_steps}; parser's masks: {text_parsed}")
    print(f"toy label maps: {text_toy}; {len(caught)} warning(s)")
    out.note = f"{how.split(' (')[0]}; parsed: {text_parsed}; toy masks: {text_toy}"
    if not (ok_parsed and ok_toy):
        raise FloatingPointError("a locality is NaN although pairs were measured: " + out.note)


def fid_images(ctx: Check) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    n, s = ctx.sz.fid_images, ctx.sz.profile.image_size
    real = torch.rand(n, 3, s, s, generator=gen) * 2 - 1
    return real, (torch.rand(n, 3, s, s, generator=gen) * 2 - 1) * 0.5


def part_fid_inception(ctx: Check, out: Outcome) -> None:
    if importlib.util.find_spec("torch_fidelity") is None:
        raise Skip("torch-fidelity is not installed (pip install torch-fidelity)")
    cached = os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_FILE))
    if not cached and not reachable("github.com"):
        raise Skip("Inception weights not in torch hub's cache and github.com unreachable")
    real, fake = fid_images(ctx)
    with recording_place(ctx, "Inception (FID)"):
        fid = realism.frechet_distance(real, fake, feature="inception")
    print(f"Inception FID of {len(real)} + {len(fake)} random images: {fid:.2f}")
    out.note = f"{len(real)}+{len(fake)} images, FID {fid:.1f}"
    if not math.isfinite(fid):
        raise FloatingPointError(f"FID is {fid}")


def part_fid_parser(ctx: Check, out: Outcome) -> None:
    """The offline FID (the toy parser's encoder, random weights here): the same device path
    without any download."""
    parser = devices.place(parsing.FaceParser(size=ctx.sz.profile.image_size), ctx.device)
    ctx.use("FaceParser (FID features)", parser)
    real, fake = fid_images(ctx)
    with recording_place(ctx, "FID metric (parser features)"):
        fid = realism.frechet_distance(real, fake, feature="parser", parser=parser)
    print(f"parser-feature FID of {len(real)} + {len(fake)} random images: {fid:.4f}")
    out.note = f"{len(real)}+{len(fake)} images, FID {fid:.3g}"
    if not math.isfinite(fid):
        raise FloatingPointError(f"FID is {fid}")


def part_placement(ctx: Check, out: Outcome) -> None:
    wrong = []
    for name, device in ctx.models.items():
        ok = device is not None and device.type == ctx.device.type
        print(f"{name:30s} {str(device):8s} {'ok' if ok else 'NOT ON ' + ctx.device.type}")
        if not ok:
            wrong.append(name)
    out.note = f"{len(ctx.models)} models on {ctx.device.type}"
    if wrong:
        raise RuntimeError(f"not on {ctx.device.type}: {', '.join(wrong)}")


# ------------------------------------------------------------------------------------------
def summary(ctx: Check) -> None:
    print(f"\n== summary ({ctx.elapsed():.0f} s in all)")
    print(f"{'part':22s} {'ran?':8s} {'time':>7s} {'peak GiB':>9s}  note")
    for o in ctx.outcomes:
        sec = "-" if o.seconds is None else f"{o.seconds:.1f} s"
        print(f"{o.part:22s} {o.ran:8s} {sec:>7s} {gib(o.peak_bytes):>9s}  {o.note}")
    if ctx.calibration:
        print(f"\ncalibration (budget.UTILISATION is now {budget.UTILISATION}):")
        for line in ctx.calibration:
            print(f"  {line}")
    elif ctx.cuda:
        print(
            "\nno calibration: this GPU has no budget.GPUS entry; rerun with --peak-tflops "
            "<its dense fp16/bf16 peak> (e.g. 989 for an H100/H200 SXM), or add an entry"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--dry-run", action="store_true", help="tiny sizes on the CPU (tests the script itself)"
    )
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="this GPU's dense fp16/bf16 peak, for a GPU that budget.GPUS does not list",
    )
    ap.add_argument(
        "--stand-ins",
        action="store_true",
        help="accept BiSeNet's random weights when the pretrained ones cannot be had",
    )
    args = ap.parse_args(argv)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print(
            "No GPU is visible to torch (torch.cuda.is_available() is False): dry run on the CPU."
        )
        dry = True
    device = torch.device("cpu" if dry else "cuda")
    os.environ[devices.ENV_DEVICE] = str(device)  # the library's own placements agree with ours
    ctx = Check(device, sizes(dry), dry, args.peak_tflops)
    ctx.stand_ins = args.stand_ins
    print(f"gpu_check: {'DRY RUN, ' if dry else ''}profile {ctx.sz.profile.name} on {device}")
    ctx.run("device", part_device)
    for precision in precisions(device, dry):
        ctx.run(f"train {precision}", train_part(precision))
    ctx.run("trainer + resume", part_trainer)
    ctx.run("DDIM sample", part_ddim)
    ctx.run("sampling per precision", part_sampling)
    ctx.run("LDM fine-tune memory", part_ldm_memory)
    ctx.run("locality protocol", part_locality)
    ctx.run("FID (Inception)", part_fid_inception)
    ctx.run("FID (parser features)", part_fid_parser)
    ctx.run("models on device", part_placement, always=True)
    summary(ctx)
    return 1 if any(o.ran in ("FAILED", "partly") for o in ctx.outcomes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
