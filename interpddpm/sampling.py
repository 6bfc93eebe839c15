"""DDIM sampling (deterministic at eta = 0, the paper's) and DDIM inversion, with diffusers.

The paper trains a DDPM (forward process (1), reverse process (2), ancestral step (3)) and samples
with DDIM at eta = 0, so an image is a deterministic function x_0 = G(x_T) of its noise: with
alpha_bar_t the cumulative product of (1 - beta_t),

    x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) / sqrt(alpha_bar_t)
    x_{t'} = sqrt(alpha_bar_{t'}) x0_hat + sqrt(1 - alpha_bar_{t'}) eps_theta(x_t, t),   t' < t.

DDIM inversion, the paper's eq. (10), runs the same update upwards (t' > t) with eps_theta
evaluated at the target step, mapping a real image x_0 to a noise x_T that regenerates it.
The update itself is diffusers' ``DDIMScheduler.step`` / ``DDIMInverseScheduler.step``; this
module only drives them, so :func:`ddim_sample` equals ``DDIMPipeline`` for the same UNet,
scheduler config, number of steps and x_T (before the pipeline's map to [0, 1]).

Which scheduler ("the model's training scheduler"): ``scheduler`` may be any diffusers scheduler
(``DDPMScheduler``, ``DDIMScheduler``, ...) or its config; only its config is used, converted with
``DDIMScheduler.from_config`` exactly as ``DDIMPipeline`` does. When it is None, the model's
``scheduler_config`` attribute is used (set by :mod:`interpddpm.models` loaders), else the
default ``DDPMScheduler()`` config: 1000 steps, linear betas from 1e-4 to 0.02 (Ho et al. 2020).

Stochastic DDIM with fixed per-step noise (beyond the paper): DDIM (Song et al. 2021, eq. 12)
adds ``sigma_t(eta) z_t`` at every step, with

    x_{t'} = sqrt(alpha_bar_{t'}) x0_hat + sqrt(1 - alpha_bar_{t'} - sigma_t^2) eps_theta(x_t, t)
             + sigma_t z_t,
    sigma_t(eta) = eta sqrt((1 - alpha_bar_{t'}) / (1 - alpha_bar_t))
                       * sqrt(1 - alpha_bar_t / alpha_bar_{t'})

(eq. 16): eta = 0 is the deterministic sampler, eta = 1 has the DDPM posterior's variance.
:func:`ddim_sample` takes the noises ``z_t`` as an argument (``noise``, one per step and
sample), and :func:`step_noise` draws them from one seed per sample, independently of the
batch a sample is in. The image is then a deterministic function ``x_0 = G(x_T, seed)``, and an
edit that changes a region of ``x_T`` but keeps the seed shares the original's per-step noise.
:func:`ddim_sample_batched` and :func:`interpddpm.editing.edit_region` take ``eta`` and
``seeds`` and build that noise themselves.

Pitfall: diffusers' schedulers default to ``clip_sample=True`` (x0_hat clamped to [-1, 1]). That
is what ``DDIMPipeline`` does and what :func:`ddim_sample` reproduces, but the clamp is not
invertible: to regenerate an inverted image use ``ddim_sample(..., clip_sample=False)``
(:func:`ddim_invert` always runs without clipping) with the same steps and scheduler.

Serves chapters 4 to 12 (inversion: chapter 9).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler

from . import threads

__all__ = [
    "ddim_invert",
    "ddim_sample",
    "ddim_sample_batched",
    "ddim_scheduler",
    "derive_seed",
    "model_noise",
    "step_noise",
    "training_scheduler_config",
]

SchedulerLike = Any  # a diffusers scheduler (anything with .config) or a config mapping
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]
Seeds = Sequence[int] | torch.Tensor  # one int seed per sample


#: Images x steps from which :func:`ddim_sample_batched` is a long job that chooses its torch
#: threads from the load (:func:`interpddpm.threads.choose_threads`); smaller ones keep them.
LONG_SAMPLING = 2000


def training_scheduler_config(model: Any = None, scheduler: SchedulerLike = None) -> dict:
    """The training scheduler config used for ``model``: see the module doc for the order."""
    if scheduler is None:
        scheduler = getattr(model, "scheduler_config", None)
    if scheduler is None:
        return dict(DDPMScheduler().config)
    if isinstance(scheduler, Mapping):
        return dict(scheduler)
    config = getattr(scheduler, "config", None)
    if not isinstance(config, Mapping):
        raise TypeError(
            "scheduler must be a diffusers scheduler or a scheduler config mapping, "
            f"got {type(scheduler).__name__}."
        )
    return dict(config)


def ddim_scheduler(
    model: Any = None, scheduler: SchedulerLike = None, *, clip_sample: bool | None = None
) -> DDIMScheduler:
    """A fresh ``DDIMScheduler`` built from the training scheduler config (as ``DDIMPipeline``)."""
    overrides = {} if clip_sample is None else {"clip_sample": bool(clip_sample)}
    return DDIMScheduler.from_config(training_scheduler_config(model, scheduler), **overrides)


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of ``model``'s first parameter (CPU float32 for a model without
    any): where its inputs must go."""
    param = next(model.parameters(), None)
    if param is None:
        return torch.device("cpu"), torch.float32
    return param.device, param.dtype


def _check_timesteps(sched: Any, steps: int) -> None:
    # "leading" spacing plus steps_offset can exceed the schedule (e.g. offset 1 at 1000 steps),
    # which diffusers reports as a bare IndexError mid-loop.
    n_train = sched.config.num_train_timesteps
    if int(sched.timesteps.max()) >= n_train:
        raise ValueError(
            f"{steps} steps with timestep_spacing={sched.config.timestep_spacing!r} and "
            f"steps_offset={sched.config.steps_offset} reach timestep "
            f"{int(sched.timesteps.max())} >= num_train_timesteps={n_train}; use fewer steps."
        )


def _check(model: Any, x: torch.Tensor, name: str, steps: int, num_train_timesteps: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    config = model.config
    size = getattr(config, "sample_size", None)
    if size is None:  # a UNet without a declared size: any H, W it can downsample
        height, width = "H", "W"
        spatial_ok = x.ndim == 4
    else:
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        spatial_ok = x.ndim == 4 and tuple(x.shape[2:]) == (height, width)
    expected = (config.in_channels, height, width)
    if x.ndim != 4 or x.shape[0] == 0 or x.shape[1] != config.in_channels or not spatial_ok:
        raise ValueError(
            f"{name} must have shape [B, {expected[0]}, {height}, {width}] (B >= 1) for this model "
            f"(in_channels={config.in_channels}, sample_size={size}); got {tuple(x.shape)}."
        )
    if (
        isinstance(steps, bool)
        or not isinstance(steps, int)
        or not 1 <= steps <= num_train_timesteps
    ):
        raise ValueError(
            f"num_inference_steps must be an int in [1, {num_train_timesteps}] (the scheduler's "
            f"num_train_timesteps), got {steps!r}."
        )


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _eps(model: Any, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    out = model(x, t)
    # UNet2DModel returns UNet2DOutput; plain modules may return a tensor or a tuple.
    if hasattr(out, "sample"):
        return out.sample
    return out[0] if isinstance(out, tuple) else out


def _steps(timesteps: torch.Tensor, progress: bool, desc: str):
    if not progress:
        return timesteps
    from tqdm import tqdm  # plain tqdm: tqdm.auto widgets need CDN scripts in the book

    return tqdm(timesteps, desc=desc)


def _run(
    model: Any,
    sched: Any,
    x: torch.Tensor,
    step_kwargs: dict[str, Any],
    progress: bool,
    desc: str,
    callback: Callback | None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """The sampling loop shared by both directions: x <- sched.step(eps_theta(x, t), t, x),
    with ``variance_noise=noise[i]`` at step i when ``noise`` is given."""
    with _eval_mode(model):
        # inference_mode is a few % faster than no_grad on CPU; its tensors refuse in-place
        # edits and autograd outside it, so everything handed out is cloned outside it.
        with torch.inference_mode():
            for i, t in enumerate(_steps(sched.timesteps, progress, desc)):
                kwargs = (
                    step_kwargs if noise is None else {**step_kwargs, "variance_noise": noise[i]}
                )
                x = sched.step(_eps(model, x, t), t, x, **kwargs).prev_sample
                if callback is not None:
                    with torch.inference_mode(False):
                        callback(i, t, x.clone())
        return x.clone()


def derive_seed(*parts: int | str) -> int:
    """A seed in [0, 2**63) from ``parts`` (ints and strings), by SHA-256: the same on every
    machine and Python (no hash randomisation), unrelated for different parts, and storable in
    an int64 tensor. E.g. ``derive_seed("locality_protocol", seed, i)`` for pair i."""
    tokens = []
    for part in parts:
        if isinstance(part, str):
            tokens.append(f"s{len(part)}:{part}")
        else:
            tokens.append(f"i:{_as_int(part, 'derive_seed parts')}")
    digest = hashlib.sha256("|".join(tokens).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise ValueError(f"{what} must be ints, got the bool {value!r}.")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be ints, got {value!r} ({type(value).__name__}).") from None


def _seed_list(seeds: Seeds) -> list[int]:
    """``seeds`` (a sequence of ints or a 1-D integer tensor) as a non-empty list of ints."""
    if isinstance(seeds, torch.Tensor):
        if seeds.ndim != 1 or seeds.dtype.is_floating_point or seeds.dtype.is_complex:
            raise ValueError(
                "seeds must be a sequence of ints or a 1-D integer tensor (one per sample), got "
                f"a {seeds.dtype} tensor of shape {tuple(seeds.shape)}."
            )
        values = seeds.tolist()
    elif isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise ValueError(
            f"seeds must be a sequence of ints (one per sample), got {type(seeds).__name__}."
        )
    else:
        values = list(seeds)
    if not values:
        raise ValueError("seeds must hold one int per sample; got none.")
    return [_as_int(v, "seeds") for v in values]


def _check_eta(eta: Any) -> float:
    """``eta`` as a float in [0, 1], or a ValueError."""
    ok = isinstance(eta, (int, float)) and not isinstance(eta, bool)
    if not ok or not math.isfinite(eta) or not 0 <= eta <= 1:
        raise ValueError(
            f"eta must be a finite number in [0, 1] (0: deterministic DDIM, 1: the DDPM "
            f"posterior's variance; above 1, 1 - alpha_bar_prev - sigma_t^2 in DDIM's eq. 12 "
            f"turns negative and the step gives NaN), got {eta!r}."
        )
    return float(eta)


def step_noise(
    n_steps: int,
    shape: tuple[int, ...] | torch.Size,
    seeds: Seeds,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard-normal per-step noise ``[n_steps, B, C, H, W]`` (CPU) for stochastic DDIM.

    ``shape`` is the batch's ``x_T.shape`` ``[B, C, H, W]`` (B must equal ``len(seeds)``) or one
    sample's ``[C, H, W]``. Sample b's noise comes from its own ``torch.Generator`` seeded from
    ``seeds[b]`` alone (through :func:`derive_seed`, so it is not the noise that
    ``torch.Generator().manual_seed(seeds[b])`` would draw for x_T): it is the same whatever
    batch, position or batch size the sample is in. Pass it as ``ddim_sample(..., noise=...)``.
    """
    seed_list = _seed_list(seeds)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int (the sampling steps), got {n_steps!r}.")
    dims = tuple(int(d) for d in shape)
    if len(dims) == 4:
        if dims[0] != len(seed_list):
            raise ValueError(
                f"shape {list(dims)} has B = {dims[0]} samples but {len(seed_list)} seeds were "
                "given: pass one seed per sample."
            )
        sample_shape = dims[1:]
    elif len(dims) == 3:
        sample_shape = dims
    else:
        raise ValueError(
            f"shape must be x_T's [B, C, H, W] or one sample's [C, H, W], got {list(dims)}."
        )
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}.")
    noise = torch.empty(n_steps, len(seed_list), *sample_shape, dtype=dtype)
    for b, seed in enumerate(seed_list):
        gen = torch.Generator().manual_seed(derive_seed("step_noise", seed))
        noise[:, b] = torch.randn(n_steps, *sample_shape, generator=gen, dtype=dtype)
    return noise


def _checked_noise(
    noise: torch.Tensor | None, eta: float, steps: int, x_T: torch.Tensor
) -> torch.Tensor | None:
    """The per-step noise to use (None at eta = 0), after checking its presence and shape."""
    if noise is None:
        if eta > 0:
            raise ValueError(
                f"eta={eta} > 0 adds noise at every step: pass "
                "noise=step_noise(num_inference_steps, x_T.shape, seeds) (one seed per sample), "
                "or use ddim_sample_batched(..., eta=eta, seeds=seeds)."
            )
        return None
    if not isinstance(noise, torch.Tensor):
        raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}.")
    expected = (steps, *x_T.shape)
    if tuple(noise.shape) != expected:
        raise ValueError(
            f"noise must have shape [num_inference_steps, *x_T.shape] = {list(expected)}, got "
            f"{list(noise.shape)}."
        )
    return noise if eta > 0 else None


def seeded_noise(
    eta: float, seeds: Seeds | None, steps: int, x_T: torch.Tensor
) -> torch.Tensor | None:
    """:func:`step_noise` for ``x_T`` from ``seeds`` when eta > 0 (None at eta = 0, where seeds,
    if given, are only checked): the noise of :func:`ddim_sample_batched` and of editing."""
    eta = _check_eta(eta)
    if seeds is None:
        if eta > 0:
            raise ValueError(
                f"eta={eta} > 0 draws per-step noise from each sample's seed: pass seeds=[one "
                "int per sample] (the same seeds for an original and its edits)."
            )
        return None
    seed_list = _seed_list(seeds)
    if len(seed_list) != len(x_T):
        raise ValueError(f"{len(seed_list)} seeds for {len(x_T)} samples: pass one per sample.")
    return step_noise(steps, x_T.shape, seed_list) if eta > 0 else None


def ddim_sample(
    model: Any,
    x_T: torch.Tensor,
    *,
    num_inference_steps: int = 50,
    scheduler: SchedulerLike = None,
    clip_sample: bool | None = None,
    progress: bool = False,
    callback: Callback | None = None,
    eta: float = 0.0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate x_0 from the noise ``x_T`` [B, C, H, W] by DDIM; eta = 0 (default) is
    deterministic.

    Equals ``DDIMPipeline(model, scheduler)(num_inference_steps=...)`` started from the same
    x_T, before its ``(x / 2 + 0.5).clamp(0, 1)``: same ``DDIMScheduler.from_config``
    conversion, timesteps and ``step`` calls. ``clip_sample`` overrides the scheduler config's
    (None keeps it; use False to regenerate :func:`ddim_invert` output). ``callback(i, t, x)`` is
    called after step i with its timestep t and (a copy of) the new sample. ``x_T`` is moved to
    the model's device and dtype; the result stays there, an ordinary tensor without grad. The
    model runs in eval mode (its mode is restored afterwards).

    ``eta`` in [0, 1] scales sigma_t (DDIM, Song et al. 2021, eq. 12 with sigma_t(eta) of
    eq. 16). For eta > 0, ``noise`` [num_inference_steps, B, C, H, W] is required, e.g.
    ``step_noise(num_inference_steps, x_T.shape, seeds)``: step i gets
    ``DDIMScheduler.step(..., eta=eta, variance_noise=noise[i])`` (moved to the model's device
    and dtype), so the result is a deterministic function of (x_T, noise). At eta = 0 ``noise``
    is checked but unused and the steps are exactly those of the deterministic sampler.
    """
    eta = _check_eta(eta)
    sched = ddim_scheduler(model, scheduler, clip_sample=clip_sample)
    _check(model, x_T, "x_T", num_inference_steps, sched.config.num_train_timesteps)
    z = _checked_noise(noise, eta, num_inference_steps, x_T)
    device, dtype = model_device_dtype(model)
    sched.set_timesteps(num_inference_steps)  # CPU timesteps, as DDIMPipeline
    _check_timesteps(sched, num_inference_steps)
    x = x_T.to(device=device, dtype=dtype)
    if z is not None:
        z = z.to(device=device, dtype=dtype)
    # eta = 0: no noise is drawn; DDIMPipeline passes use_clipped_model_output=None too.
    step = {"eta": eta, "use_clipped_model_output": None}
    return _run(model, sched, x, step, progress, "DDIM sampling", callback, z)


def ddim_invert(
    model: Any,
    x_0: torch.Tensor,
    *,
    num_inference_steps: int = 50,
    scheduler: SchedulerLike = None,
    progress: bool = False,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDIM inversion, eq. (10): the noise x_T [B, C, H, W] that DDIM maps back to ``x_0``.

    Runs ``DDIMInverseScheduler`` (built from the same training config, ``clip_sample=False``)
    over the same timesteps as :func:`ddim_sample` in reverse order, so x_T lands on the noise
    level where sampling starts. Each step uses eps_theta at the *target* timestep on the
    current sample (the usual approximation), so ``ddim_sample(model, ddim_invert(model, x0),
    clip_sample=False)`` recovers x0 exactly when eps_theta does not depend on x, and
    approximately (better with more steps) otherwise. Only ``"leading"`` and ``"trailing"``
    timestep spacings are invertible this way.
    """
    config = training_scheduler_config(model, scheduler)
    spacing = config.get("timestep_spacing", "leading")
    if spacing not in ("leading", "trailing"):
        raise ValueError(
            f"DDIM inversion needs timestep_spacing 'leading' or 'trailing' (the spacings of "
            f"DDIMInverseScheduler), got {spacing!r}."
        )
    # Clipping x0_hat is not invertible, so inversion never clips.
    sched = DDIMInverseScheduler.from_config(config, clip_sample=False)
    _check(model, x_0, "x_0", num_inference_steps, sched.config.num_train_timesteps)
    device, dtype = model_device_dtype(model)
    sched.set_timesteps(num_inference_steps)
    _check_timesteps(sched, num_inference_steps)
    x = x_0.to(device=device, dtype=dtype)
    return _run(model, sched, x, {}, progress, "DDIM inversion", callback)


def model_noise(model: Any, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` standard-normal noises ``x_T`` of the model's input shape (on the CPU)."""
    cfg = model.config
    size = cfg.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return torch.randn(n, cfg.in_channels, height, width, generator=generator)


def ddim_sample_batched(
    model: Any,
    x_T: torch.Tensor,
    *,
    num_inference_steps: int = 50,
    batch_size: int = 64,
    eta: float = 0.0,
    seeds: Seeds | None = None,
) -> torch.Tensor:
    """:func:`ddim_sample` over ``x_T`` in chunks of ``batch_size`` (bounded memory), on CPU.

    For eta > 0, ``seeds`` (one int per sample) are required: each chunk's per-step noise is
    ``step_noise(num_inference_steps, chunk.shape, its seeds)``, so sample b gets the same noise
    whatever ``batch_size`` (the result depends on it only through float rounding). At eta = 0
    ``seeds`` are checked but unused.
    """
    if isinstance(batch_size, bool) or not hasattr(batch_size, "__index__") or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    batch_size = operator.index(batch_size)
    eta = _check_eta(eta)
    seed_list = None if seeds is None else _seed_list(seeds)
    if seed_list is not None and len(seed_list) != len(x_T):
        raise ValueError(f"{len(seed_list)} seeds for {len(x_T)} samples: pass one per sample.")
    device, _ = model_device_dtype(model)
    if device.type == "cpu" and len(x_T) * num_inference_steps >= LONG_SAMPLING:
        threads.choose_threads(f"sampling {len(x_T)} images x {num_inference_steps} steps")
    out = []
    for start in range(0, len(x_T), batch_size):
        threads.recheck()  # a job started or ended beside us: follow the load
        chunk = x_T[start : start + batch_size]
        chunk_seeds = None if seed_list is None else seed_list[start : start + batch_size]
        noise = seeded_noise(eta, chunk_seeds, num_inference_steps, chunk)
        x0 = ddim_sample(
            model,
            chunk.to(device),
            num_inference_steps=num_inference_steps,
            eta=eta,
            noise=noise,
        )
        out.append(x0.cpu())
    return torch.cat(out)
