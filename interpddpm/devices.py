"""Where models run and in which precision they train: the one place that decides both.

Every model a chapter trains, samples, audits or scores (UNets, parsers, autoencoders, feature
networks) is put on :func:`default_device` by :func:`place`: CUDA when a GPU is visible, the
CPU otherwise, or what ``INTERPDDPM_DEVICE`` says. Library functions then move their inputs to
the model's device, so a chapter never holds a GPU model while its work runs on the CPU (10^5
to 10^6 UNet forwards: hours instead of minutes), nor mixes the two.

Training precision (:func:`resolve_mixed_precision`): bf16 autocast where the device computes
bf16 natively (CUDA compute capability 8.0+, CPUs with AVX512-BF16 or AMX), fp16 with a
GradScaler on older GPUs (a T4), fp32 elsewhere. Weights, losses and every measurement stay fp32.

Serves every chapter: where each model runs.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, TypeVar

import torch

from .errors import UserError

__all__ = [
    "ENV_DEVICE",
    "DeviceError",
    "check_precision",
    "check_profile_device",
    "default_device",
    "module_device",
    "native_bf16",
    "place",
    "placed_on",
    "precision_label",
    "resolve_mixed_precision",
]

ENV_DEVICE = "INTERPDDPM_DEVICE"
#: Attribute :func:`place` sets on a module: the device it was put on (audits read it).
PLACED = "_interpddpm_device"

M = TypeVar("M")


class DeviceError(UserError):
    """A device asked for that this machine does not have, or a precision it cannot run."""


def default_device() -> torch.device:
    """``$INTERPDDPM_DEVICE`` when set (``cpu``, ``cuda``, ``cuda:1``...), else CUDA when
    available, else the CPU. A CUDA device asked for on a machine without one is refused."""
    name = os.environ.get(ENV_DEVICE, "").strip()
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise DeviceError(
            f"{ENV_DEVICE}={name!r} is not a device name: use 'cpu', 'cuda' or 'cuda:N'."
        ) from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"{ENV_DEVICE}={name!r} but torch sees no CUDA GPU here: unset {ENV_DEVICE} "
                "(the CPU is used), or on Colab pick Runtime > Change runtime type > GPU."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"{ENV_DEVICE}={name!r} but only {torch.cuda.device_count()} GPU(s) are "
                "visible: use 'cuda' or an index below that."
            )
    elif device.type != "cpu":
        raise DeviceError(f"{ENV_DEVICE}={name!r}: only 'cpu' and 'cuda[:N]' are supported.")
    return device


def place(module: M, device: str | torch.device | None = None) -> M:
    """``module`` moved to ``device`` (default :func:`default_device`) and marked as placed.

    Works for ``nn.Module`` and for objects with their own ``.to`` (a latent codec). The mark
    (:data:`PLACED`) lets a test check that every model a chapter runs went through here.
    """
    target = default_device() if device is None else torch.device(device)
    moved = module.to(target)  # type: ignore[attr-defined]
    module = module if moved is None else moved
    try:
        setattr(module, PLACED, str(target))
    except AttributeError:  # an object that refuses new attributes: nothing to mark
        pass
    return module


def placed_on(module: Any) -> str | None:
    """The device :func:`place` put ``module`` on, or None when it never went through it."""
    return getattr(module, PLACED, None)


def module_device(module: Any) -> torch.device | None:
    """The device of a module's first parameter (None for a module without parameters)."""
    param = next(iter(module.parameters()), None) if hasattr(module, "parameters") else None
    return None if param is None else param.device


def check_profile_device(profile_name: str, device: torch.device | None = None) -> None:
    """Warn, once per call site, when a GPU-sized profile (``gpu``, ``paper``) runs on a CPU:
    every chapter would take hours to days. Silent when ``INTERPDDPM_DEVICE`` asks for the CPU
    explicitly (tests run the gpu code path with tiny stand-ins that way)."""
    device = default_device() if device is None else device
    if profile_name in ("gpu", "paper") and device.type == "cpu" and ENV_DEVICE not in os.environ:
        warnings.warn(
            f"profile {profile_name!r} is sized for a GPU but none is visible: every chapter "
            "would run for hours on the CPU. Use profile='cpu', or a GPU runtime (Colab: "
            "Runtime > Change runtime type > GPU).",
            RuntimeWarning,
            stacklevel=2,
        )


# ------------------------------------------------------------------------------------------
# Training precision (a TrainConfig's mixed_precision)
# ------------------------------------------------------------------------------------------
def _device_name(device: str | torch.device | None) -> str:
    return str(default_device() if device is None else device)


def native_bf16(device: str | torch.device | None = None) -> bool:
    """Whether ``device`` (default: :func:`default_device`) computes bf16 natively.

    On CUDA that means compute capability 8.0 or newer (A100, L4, H100...): a T4 (7.5) runs
    bf16 only emulated (``torch.cuda.is_bf16_supported()`` says True there, so it is not asked).
    On a CPU it needs AVX512-BF16 or AMX: without them bf16 is emulated and slower than fp32.
    """
    name = _device_name(device)
    if name.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.get_device_capability(name) >= (8, 0)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private but stable
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def resolve_mixed_precision(value: str, device: str | torch.device | None = None) -> str:
    """A profile's precision as :class:`~interpddpm.training.TrainConfig` takes it. ``"auto"``
    is ``"bf16"`` where the device has native bf16 (:func:`native_bf16`); on an older GPU (a
    T4) it is ``"fp16"``, which accelerate pairs with a GradScaler; on a CPU without bf16 it is
    ``"no"`` (fp32). Other values pass unchanged.

    bf16 autocast trains the cpu profile's models about 25-35% faster on an AVX512-BF16 CPU.
    The choice is part of the run's config, so runs of each precision get their own folders.
    """
    if value == "auto":
        if native_bf16(device):
            return "bf16"
        return "fp16" if _device_name(device).startswith("cuda") else "no"
    return value


def check_precision(mixed_precision: str, device: str | torch.device | None = None) -> None:
    """Refuse what a run cannot train in as asked, naming the fix: bf16 on a GPU that only
    emulates it (several times slower than fp32), and fp16 on a CPU, where accelerate turns
    fp16 autocast off (the run would train in fp32 while its record said fp16)."""
    name = _device_name(device)
    if mixed_precision == "fp16" and not name.startswith("cuda"):
        raise DeviceError(
            "mixed_precision='fp16' asks for fp16 autocast, which accelerate does not run on a "
            "CPU (the run would train in fp32 and record fp16): use mixed_precision='no' (fp32)"
            + (" or 'bf16' (native here)." if native_bf16(name) else ".")
        )
    if mixed_precision == "bf16" and name.startswith("cuda") and not native_bf16(name):
        major, minor = torch.cuda.get_device_capability(name)
        gpu = torch.cuda.get_device_name(name)
        raise DeviceError(
            f"mixed_precision='bf16' asked for, but this GPU ({gpu}, "
            f"compute capability {major}.{minor}) has no native bf16 (it needs 8.0 or newer): use "
            "mixed_precision='fp16' (with a GradScaler, what 'auto' picks here) or 'no' (fp32)."
        )


def precision_label(mixed_precision: str) -> str:
    """How tables name a run's precision: ``"fp32"`` or e.g. ``"bf16 autocast"``."""
    return "fp32" if mixed_precision == "no" else f"{mixed_precision} autocast"
