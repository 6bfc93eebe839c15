"""UNet presets and pretrained diffusers models (DDPM pixel models, LDM with its VQ autoencoder).

The denoiser eps_theta(x_t, t) of DDPM eqs. (1)-(3) is a diffusers :class:`UNet2DModel`.
:func:`make_unet` builds one from a named preset sized for a profile; :func:`load_pretrained`
loads a saved or hub pipeline (UNet + its training scheduler); :func:`load_latent_pretrained`
loads a latent diffusion model (UNet + scheduler + VQ autoencoder); :func:`save_pipeline` writes a
``DDPMPipeline`` folder that :func:`load_pretrained` (and ``DDPMPipeline.from_pretrained``) reads.

Every loader attaches the training scheduler's config to the UNet as ``unet.scheduler_config``,
so that :func:`interpddpm.sampling.ddim_sample` with ``scheduler=None`` uses it.

Serves chapters 4 to 12 (the UNets), chapters 10 and 12 directly.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import diffusers
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel, VQModel
from diffusers.configuration_utils import ConfigMixin

from .errors import UserError

_D, _AD, _U, _AU = "DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D"

# Keyword arguments of UNet2DModel per preset; "sample_size" is the resolution the preset is
# meant for (any size divisible by 2**(len(blocks) - 1) works).
UNET_PRESETS: dict[str, dict[str, Any]] = {
    # Tests: about 165k parameters, milliseconds per forward at 16x16.
    "tiny": dict(
        sample_size=16,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=(_D, _D),
        up_block_types=(_U, _U),
    ),
    # Smoke profile: code paths only (about 0.27M parameters).
    "smoke": dict(
        sample_size=32,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=(_D, _D, _D),
        up_block_types=(_U, _U, _U),
    ),
    # CPU profile: toy faces at 32x32, about 1.06M parameters (draws faces after ~2k steps).
    "cpu": dict(
        sample_size=32,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=(_D, _D, _D),
        up_block_types=(_U, _U, _U),
    ),
    # GPU profile: CelebA 64x64, the DDPM CIFAR-10 architecture (35.7M parameters) with
    # self-attention at 16x16 as in Ho et al. (2020).
    "gpu": dict(
        sample_size=64,
        block_out_channels=(128, 256, 256, 256),
        layers_per_block=2,
        down_block_types=(_D, _D, _AD, _D),
        up_block_types=(_U, _AU, _U, _U),
    ),
    # Colab (gpu profile): CelebA 64x64 on one T4 in about an hour of training, half the widths
    # of "gpu" (17.2M parameters, 13 GFLOP a forward against 46.7; interpddpm.budget).
    "colab": dict(
        sample_size=64,
        block_out_channels=(64, 128, 128, 256),
        layers_per_block=2,
        down_block_types=(_D, _D, _AD, _D),
        up_block_types=(_U, _AU, _U, _U),
    ),
    # Colab T4 (gpu profile, issue 26): the block types of "colab" at 3/4 of its widths (9.7M
    # parameters, 7.4 GFLOP a 64 px forward): chapters 04 + 05 in 90 minutes of a free T4 at
    # the likely rate of interpddpm.budget, dataset preparation included.
    "t4": dict(
        sample_size=64,
        block_out_channels=(48, 96, 96, 192),
        layers_per_block=2,
        norm_num_groups=16,
        down_block_types=(_D, _D, _AD, _D),
        up_block_types=(_U, _AU, _U, _U),
    ),
    # Paper scale: the DDIM CelebA 64x64 model (ch 128, mult (1, 2, 2, 2, 4), attention at 16x16,
    # dropout 0.1; 78.7M parameters).
    "paper": dict(
        sample_size=64,
        block_out_channels=(128, 256, 256, 256, 512),
        layers_per_block=2,
        down_block_types=(_D, _D, _AD, _D, _D),
        up_block_types=(_U, _U, _AU, _U, _U),
        dropout=0.1,
    ),
}


def unet_preset(name: str, sample_size: int | None = None, in_channels: int = 3) -> dict[str, Any]:
    """The :class:`UNet2DModel` keyword arguments of preset ``name`` (a fresh dict)."""
    if name not in UNET_PRESETS:
        raise UserError(f"Unknown UNet preset {name!r}. Valid presets: {', '.join(UNET_PRESETS)}.")
    kwargs = dict(UNET_PRESETS[name])
    if sample_size is not None:
        kwargs["sample_size"] = sample_size
    kwargs["in_channels"] = kwargs["out_channels"] = in_channels
    return kwargs


def make_unet(
    preset: str, sample_size: int | None = None, in_channels: int = 3, **overrides: Any
) -> UNet2DModel:
    """A randomly initialised :class:`UNet2DModel` from preset ``preset``.

    ``sample_size=None`` keeps the preset's resolution; ``overrides`` replace preset arguments.
    """
    return UNet2DModel(**{**unet_preset(preset, sample_size, in_channels), **overrides})


def count_parameters(model: Any) -> int:
    """Number of parameters of a torch module."""
    return sum(p.numel() for p in model.parameters())


class PretrainedNotAvailableError(OSError):
    """A pretrained model is neither a local folder nor obtainable from the Hugging Face Hub."""


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _offline_env() -> bool:
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE only once, at import.
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in {"1", "ON", "YES", "TRUE"}


def _not_available(repo: str, cause: BaseException) -> PretrainedNotAvailableError:
    return PretrainedNotAvailableError(
        f"Could not load the pretrained model {repo!r}: it is not a local folder and the "
        f"Hugging Face Hub did not provide it ({type(cause).__name__}: {cause}).\n"
        "To get it: run once with network access (files are cached under $HF_HOME, by default "
        "~/.cache/huggingface; set HF_HOME to reuse a cache elsewhere), or download it with "
        f"`hf download {repo} --local-dir DIR` and pass DIR; offline mode (HF_HUB_OFFLINE=1) "
        "only uses that cache."
    )


def _join(subfolder: str | None, name: str | None) -> str | None:
    parts = [p for p in (subfolder, name) if p]
    return "/".join(parts) if parts else None


class _Source:
    """A local folder or a hub repo id, read file by file (hub files are downloaded lazily)."""

    def __init__(self, repo_or_path: str | os.PathLike, subfolder: str | None, offline: bool):
        self.name = str(repo_or_path)
        self.subfolder = subfolder
        self.offline = offline
        path = Path(repo_or_path).expanduser()
        self.local = path.is_dir()
        if not self.local and (path.exists() or not _HUB_ID.match(self.name)):
            raise FileNotFoundError(
                f"{self.name!r} is not a folder holding a diffusers model (model_index.json with a "
                "unet, or a UNet2DModel config.json) and not a Hugging Face Hub id like "
                "'google/ddpm-ema-celebahq-256'."
            )
        self.root = str(path) if self.local else self.name

    def json(self, filename: str, folder: str | None = None) -> dict[str, Any] | None:
        """The parsed ``[subfolder/][folder/]filename``, or None when the source lacks it."""
        rel = _join(_join(self.subfolder, folder), filename)
        if self.local:
            file = Path(self.root, rel)
            return json.loads(file.read_text()) if file.is_file() else None
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            file = hf_hub_download(self.name, rel, local_files_only=self.offline)
        except LocalEntryNotFoundError as err:  # offline and not cached: cannot tell "absent"
            raise _not_available(self.name, err) from err
        except EntryNotFoundError:
            return None
        except OSError as err:  # no network, unknown repo, gated repo, HTTP errors
            raise _not_available(self.name, err) from err
        return json.loads(Path(file).read_text())

    def load(self, cls: type, folder: str | None) -> Any:
        """``cls.from_pretrained`` on ``[subfolder/]folder``."""
        kwargs: dict[str, Any] = {"subfolder": _join(self.subfolder, folder)}
        if not self.local:
            kwargs["local_files_only"] = self.offline
        try:
            return cls.from_pretrained(self.root, **kwargs)
        except OSError as err:
            if self.local:
                raise
            raise _not_available(self.name, err) from err


def _scheduler_class(name: str | None) -> type:
    cls = getattr(diffusers, name, None) if name else None
    return cls if isinstance(cls, type) and issubclass(cls, ConfigMixin) else DDPMScheduler


def _load_unet_and_scheduler(src: _Source, index: dict[str, Any] | None):
    if index is not None:  # a pipeline folder: model_index.json names its components
        if "unet" not in index:
            raise ValueError(
                f"{src.name!r} is a {index.get('_class_name', 'diffusers')} pipeline without a "
                f"'unet' component (components: {sorted(k for k in index if k[0] != '_')})."
            )
        unet = src.load(UNet2DModel, "unet")
        sched_entry = index.get("scheduler") or [None, None]
        scheduler = src.load(_scheduler_class(sched_entry[1]), "scheduler")
        return unet, scheduler
    config = src.json("config.json")
    if config is None:
        raise FileNotFoundError(
            f"{src.name!r}{'/' + src.subfolder if src.subfolder else ''} has neither "
            "model_index.json (a pipeline) nor config.json (a bare UNet2DModel)."
        )
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"{src.name!r} holds a {config['_class_name']}, not a UNet2DModel.")
    unet = src.load(UNet2DModel, None)
    sched_config = src.json("scheduler_config.json") or src.json(
        "scheduler_config.json", "scheduler"
    )
    if sched_config is None:
        warnings.warn(
            f"{src.name!r} is a bare UNet without a scheduler config; assuming the default "
            "DDPMScheduler() (1000 steps, linear betas 1e-4 to 0.02).",
            stacklevel=3,
        )
        scheduler = DDPMScheduler()
    else:
        scheduler = _scheduler_class(sched_config.get("_class_name")).from_config(sched_config)
    return unet, scheduler


def load_pretrained(
    repo_or_path: str | os.PathLike,
    *,
    subfolder: str | None = None,
    local_files_only: bool | None = None,
) -> tuple[UNet2DModel, Any]:
    """Load a pixel-space diffusion model: ``(unet, training scheduler)``.

    ``repo_or_path`` is a local folder or a Hugging Face Hub id (e.g.
    ``"google/ddpm-ema-celebahq-256"``) holding either a pipeline (``model_index.json`` with a
    ``unet`` and a ``scheduler``, as written by :func:`save_pipeline`) or a bare
    ``UNet2DModel`` (``config.json`` + weights; its scheduler is read from a
    ``scheduler_config.json`` beside it or in ``scheduler/``, else the default ``DDPMScheduler()``
    with a warning). ``subfolder`` selects a folder inside it. ``local_files_only=None`` follows
    ``HF_HUB_OFFLINE`` (read at call time). A latent diffusion pipeline (with a ``vqvae``) is
    refused: use :func:`load_latent_pretrained`.

    The UNet is returned in eval mode and carries ``unet.scheduler_config`` (see module doc).
    Raises :class:`PretrainedNotAvailableError` (an ``OSError``) when a hub id cannot be fetched
    (offline, not cached, unknown), with instructions, and ``FileNotFoundError`` for a missing path.
    """
    offline = _offline_env() if local_files_only is None else bool(local_files_only)
    src = _Source(repo_or_path, subfolder, offline)
    index = src.json("model_index.json")
    if index is not None and "vqvae" in index:
        raise ValueError(
            f"{src.name!r} is a latent diffusion pipeline (it has a 'vqvae'): its UNet denoises "
            "autoencoder latents, not pixels. Use interpddpm.models.load_latent_pretrained."
        )
    unet, scheduler = _load_unet_and_scheduler(src, index)
    unet.eval()
    unet.scheduler_config = dict(scheduler.config)
    return unet, scheduler


def load_latent_pretrained(
    repo_or_path: str | os.PathLike = "CompVis/ldm-celebahq-256",
    *,
    subfolder: str | None = None,
    local_files_only: bool | None = None,
    scaling_factor: float | None = 1.0,
) -> tuple[UNet2DModel, Any, VQModel]:
    """Load a latent diffusion pipeline folder or hub id: ``(unet, scheduler, vqvae)``.

    Latents are ``z = vqvae.encode(x).latents * scaling_factor`` and images
    ``vqvae.decode(z / scaling_factor)``, as in diffusers' ``LDMPipeline``.
    Pitfall: ``CompVis/ldm-celebahq-256`` was trained on unscaled latents but its VQModel config
    falls back to diffusers' default ``scaling_factor=0.18215``, so ``LDMPipeline`` decodes garbage.
    By default this function therefore sets ``vqvae.config.scaling_factor = 1.0``; pass
    ``scaling_factor=None`` to keep the stored value. Other arguments as :func:`load_pretrained`.
    """
    src, index = _latent_source(repo_or_path, subfolder, local_files_only)
    unet, scheduler = _load_unet_and_scheduler(src, index)
    vqvae = _load_vqvae(src, scaling_factor)
    unet.eval()
    unet.scheduler_config = dict(scheduler.config)
    return unet, scheduler, vqvae


def load_latent_autoencoder(
    repo_or_path: str | os.PathLike = "CompVis/ldm-celebahq-256",
    *,
    subfolder: str | None = None,
    local_files_only: bool | None = None,
    scaling_factor: float | None = 1.0,
) -> tuple[VQModel, dict[str, Any]]:
    """Only the VQ autoencoder of a latent diffusion pipeline (the UNet is not loaded), and the
    pipeline's scheduler config. Arguments and the scaling-factor pitfall as
    :func:`load_latent_pretrained`."""
    src, _ = _latent_source(repo_or_path, subfolder, local_files_only)
    return _load_vqvae(src, scaling_factor), _scheduler_config(src)


def latent_scheduler_config(
    repo_or_path: str | os.PathLike,
    *,
    subfolder: str | None = None,
    local_files_only: bool | None = None,
) -> dict[str, Any]:
    """The scheduler config of a latent diffusion pipeline (no weights are loaded); raises
    ``ValueError`` when ``repo_or_path`` is not one."""
    src, _ = _latent_source(repo_or_path, subfolder, local_files_only)
    return _scheduler_config(src)


def _scheduler_config(src: _Source) -> dict[str, Any]:
    return src.json("scheduler_config.json", "scheduler") or {}


def _latent_source(
    repo_or_path: str | os.PathLike, subfolder: str | None, local_files_only: bool | None
) -> tuple[_Source, dict[str, Any]]:
    offline = _offline_env() if local_files_only is None else bool(local_files_only)
    src = _Source(repo_or_path, subfolder, offline)
    index = src.json("model_index.json")
    if index is None or "vqvae" not in index or "unet" not in index:
        raise ValueError(
            f"{src.name!r} is not a latent diffusion pipeline (model_index.json with 'unet' and "
            "'vqvae'); for a pixel-space model use interpddpm.models.load_pretrained."
        )
    return src, index


def _load_vqvae(src: _Source, scaling_factor: float | None) -> VQModel:
    vqvae = src.load(VQModel, "vqvae")
    if scaling_factor is not None:
        vqvae.register_to_config(scaling_factor=float(scaling_factor))  # config is frozen
    return vqvae.eval()


def save_pipeline(unet: UNet2DModel, scheduler: Any, path: str | os.PathLike) -> Path:
    """Save ``unet`` and its training ``scheduler`` as a ``DDPMPipeline`` folder; return it."""
    path = Path(path)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(path)
    return path
