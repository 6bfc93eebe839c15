"""What a run trains on (chapters 5 and 10): the :class:`Codec` protocol and the pixel codec
:class:`PixelCodec`, the dataset (:func:`training_dataset`), the checks made before anything
loads (:func:`check_startable`), and :func:`load_run_model`, the UNet of a finished run.

A *codec* builds the initial UNet and the noise schedule and maps each batch into the diffusion
space. Pixel runs use :class:`PixelCodec` (the identity). Latent diffusion (``autoencoder`` set)
passes :class:`interpddpm.latent.LatentCodec`: each batch is encoded by the frozen autoencoder
and its label maps are moved to the latent grid, so ``L_DDPM`` and ``L_IE`` run on latents. The
trainer never imports :mod:`interpddpm.latent` (``interpddpm.latent.train`` builds the codec and
calls :func:`interpddpm.training.train`).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..devices import place
from ..errors import check_writable_dir
from ..toyfaces import MIN_SIZE as TOY_MIN_SIZE
from ..toyfaces import ToyFaces
from .checkpoints import (
    CheckpointError,
    latest_verified_checkpoint,
    list_checkpoints,
    read_checkpoint,
)
from .config import ConfigError, TrainConfig


class _RenderCache:
    """Keeps every rendered toy face in memory: rendering costs ~15% of a CPU training step,
    and a run draws each of its ``length`` faces many times."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.images: dict[int, Tensor] = {}
        self.labels: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        missing = sorted({i for i in indices if i not in self.images})
        if missing:
            images, labels = self.dataset.batch(missing)
            self.images.update(zip(missing, images, strict=True))
            self.labels.update(zip(missing, labels, strict=True))
        return (
            torch.stack([self.images[i] for i in indices]),
            torch.stack([self.labels[i] for i in indices]),
        )


#: Toy face sets up to this length are kept rendered in memory (:class:`_RenderCache`).
_RENDER_CACHE_MAX = 20_000


def training_dataset(config: TrainConfig) -> Any:
    """The data ``config.dataset`` names at ``config.image_size`` (what :func:`train` reads when
    it is given no dataset): toy faces rendered once and memoised, or a real dataset through
    :func:`interpddpm.datasets.get_dataset` (Colab / GPU)."""
    if config.dataset == "toyfaces":
        faces = ToyFaces(
            size=config.image_size, length=config.dataset_length, seed=config.data_seed
        )
        return _RenderCache(faces) if config.dataset_length <= _RENDER_CACHE_MAX else faces
    from .. import datasets  # real data (Colab / GPU); imported only when asked for

    # never the held-out rows at the end (datasets.HELD_OUT_ROWS): runs.faces reads those.
    # A latent run (an autoencoder) reads only its first dataset_length rows: chapter 10's
    # 256 px copy of 30,000 rows would take 25 minutes to convert for a few thousand images
    limit = config.dataset_length if config.autoencoder else None
    return datasets.get_dataset(config.dataset, size=config.image_size, limit=limit, part="train")


def fetch_batch(dataset: Any, indices: Tensor) -> tuple[Tensor, Tensor | None]:
    """The images (in [-1, 1], else a ValueError says how to map them) and label maps (None
    when the dataset has none) of ``dataset`` at ``indices``: one ``batch(indices)`` call
    when the dataset has it, else one item at a time."""
    if hasattr(dataset, "batch"):
        images, labels = dataset.batch(indices.tolist())
    else:
        items = [dataset[int(i)] for i in indices]
        images = torch.stack([it[0] for it in items])
        labels = torch.stack([it[1] for it in items]) if len(items[0]) > 1 else None
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.001 or hi > 1.001:  # a [0, 255] or [0, 1]-shifted dataset would train on garbage
        raise ValueError(
            f"training images must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]; "
            "map [0, 1] images with x * 2 - 1 (and [0, 255] with x / 127.5 - 1)."
        )
    return images, labels


#: A Hugging Face Hub model id as ``init_from`` takes it: ``owner/name``.
HUB_MODEL_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def check_preset_size(preset: str, image_size: int, scale: int = 1) -> None:
    """Refuse an unknown UNet preset, or an ``image_size`` whose grid (``image_size / scale``:
    the latent grid of an autoencoder that downsamples ``scale`` times) the preset's UNet cannot
    halve ``len(block_out_channels) - 1`` times; the error names the nearest valid sizes."""
    from ..models import UNET_PRESETS

    if preset not in UNET_PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid presets: {', '.join(UNET_PRESETS)}.")
    halvings = len(UNET_PRESETS[preset]["block_out_channels"]) - 1
    step = 2**halvings * scale
    if image_size % step:
        lo, hi = image_size // step * step, (image_size // step + 1) * step
        nearest = f"{lo} or {hi}" if lo >= max(step, TOY_MIN_SIZE) else str(hi)
        grid = "the image" if scale == 1 else f"the {scale}x smaller latent grid"
        raise ConfigError(
            f"image_size={image_size} does not fit preset {preset!r}: its UNet halves {grid} "
            f"{halvings} times, so image_size must be a multiple of {step}; nearest valid "
            f"sizes: {nearest}."
        )


def check_init_from(init_from: str, *, latent: bool = False) -> None:
    """Fail at once when ``init_from`` is neither a local model nor a plausible hub id.

    A local folder must be a run folder (``checkpoint-*``), a checkpoint (``state.json``) or a
    diffusers folder (``model_index.json`` or ``config.json``). A missing path is sent to the
    Hugging Face Hub only when it reads as an ``owner/name`` id whose first part is not a local
    folder; otherwise (``runs/baselin``, ``./x``, ``/abs/path``) the error names the closest
    siblings instead of spending seconds on hub retries.
    """
    src = Path(init_from).expanduser()
    what = "a run folder (with checkpoint-* folders), a checkpoint (state.json), a " + (
        "latent diffusion pipeline folder" if latent else "pipeline folder (model_index.json)"
    )
    if src.is_dir():
        markers = ("state.json", "model_index.json", "config.json")
        if list_checkpoints(src) or any((src / m).is_file() for m in markers):
            return
        hint = ""
        if (src / "metrics.jsonl").is_file():
            hint = " It looks like a run that has not saved a checkpoint yet: train it first."
        raise ConfigError(f"init_from {init_from!r} is a folder but not {what}.{hint}")
    if src.exists():
        raise ConfigError(f"init_from {init_from!r} is a file; give {what} or a hub id.")
    parts = Path(init_from).parts
    hub_like = (
        HUB_MODEL_ID.fullmatch(init_from) is not None
        and not init_from.startswith((".", "~"))
        and not Path(parts[0]).exists()
    )
    if hub_like:
        return  # the loader asks the hub (fast offline; its errors say how to get the model)
    parent = src.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    try:
        siblings = sorted(p.name for p in parent.iterdir())
    except OSError:
        siblings = []
    close = difflib.get_close_matches(src.name, siblings, n=3, cutoff=0.6)
    base = "" if str(parent) == "." else str(parent)
    guesses = [os.path.join(base, name) for name in close]
    hint = (
        f"did you mean {' or '.join(guesses)}?"
        if guesses
        else f"no such path (nothing similar in {parent})."
    )
    raise ConfigError(
        f"init_from {init_from!r} is neither {what}, nor a Hugging Face Hub id (owner/name); {hint}"
    )


def check_init_size(unet: Any, config: TrainConfig, size: int, channels: int) -> None:
    """Refuse an ``init_from`` model whose inputs are not ``[channels, size, size]``: it would
    train, but its saved ``sample_size`` would disagree with the run's ``image_size``."""
    s, c = unet.config.sample_size, unet.config.in_channels
    s = tuple(s) if isinstance(s, list | tuple) else (s, s)
    if c == channels and s == (size, size):
        return
    got, want = f"[{c}, {s[0]}, {s[1]}]", f"[{channels}, {size}, {size}]"
    if config.autoencoder is None:
        fix = (
            f"set image_size={s[0]} to fine-tune it at its own size, or set init_from=null to "
            f"train a new model at {config.image_size} px"
            if c == channels
            else "it is not a pixel-space model (a latent run needs autoencoder set)"
        )
        raise ConfigError(
            f"init_from {config.init_from!r} takes {got} inputs (sample_size={s[0]}) but "
            f"image_size={config.image_size} gives {want} images; {fix}."
        )
    raise ConfigError(
        f"the UNet of init_from {config.init_from!r} takes {got} inputs, but the autoencoder "
        f"{config.autoencoder!r} gives {want} latents at image_size={config.image_size}; use a "
        "matching image_size or autoencoder."
    )


def _gib(n: float) -> str:
    """Bytes as GiB, TiB, ... (three digits)."""
    for power, unit in ((3, "GiB"), (4, "TiB"), (5, "PiB")):
        if n < 1000 * 2 ** (10 * power):
            return f"{n / 2 ** (10 * power):.3g} {unit}"
    return f"{n / 2**60:,.0f} EiB"


def host_memory() -> int | None:
    """The RAM this process may use: the machine's, or its container's limit when lower
    (cgroup v2 ``memory.max``); None where the system does not say."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    return total


def check_memory(config: TrainConfig, device: str | torch.device, n_items: int | None) -> None:
    """Refuse, before anything is allocated, a run whose sizes this machine cannot hold.

    Lower bounds only (activations are not counted): the shuffled order of the ``n_items``
    data items (int64), the toy faces the run keeps rendered, and one step's tensors (the batch,
    its noise, ``x_t``, the predicted noise and, when interpretable, the ``L_IE`` coalition rows
    in and out), against the RAM (:func:`host_memory`) and the GPU's memory. ``n_items`` None:
    a dataset whose length is known only once loaded."""
    ram = host_memory()
    device = torch.device(device)
    gpu = None
    if device.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_properties(device.index or 0).total_memory
    s, b = config.image_size, config.batch_size
    image, labels = 3 * s * s * 4, s * s * 8  # one fp32 image, one int64 label map
    step = b * (image + labels)  # the batch as fetched
    rows = 0
    if config.autoencoder is None:  # pixel runs: noise, x_t, eps, and the L_IE rows
        step += 3 * b * image
        if config.interpretable:
            rows = min(config.ie_sub_batch, b) * config.ie_rows_per_sample()
            step += 2 * rows * image
    order = 0 if n_items is None else 8 * n_items
    cached = 0
    if config.dataset == "toyfaces" and config.dataset_length <= _RENDER_CACHE_MAX:
        cached = min(config.dataset_length, config.steps * b) * (image + labels)
    room = gpu if gpu is not None else ram
    if room is not None and step > room:  # one batch alone does not fit
        rows_text, fix = "", "lower batch_size or image_size"
        if rows:
            rows_text = f" with {rows:,} L_IE coalition rows"
            if 2 * rows > b:
                fix = "lower ie_samples, ie_rows or ie_sub_batch (or batch_size, image_size)"
        where = (
            f"the GPU has {_gib(gpu)}"
            if gpu is not None
            else f"this machine has {_gib(ram)} of RAM"
        )
        raise ConfigError(
            f"batch_size={b} at image_size={s}{rows_text} needs at least {_gib(step)} for one "
            f"training step's tensors (activations not counted); {where}: {fix}."
        )
    if ram is None:
        return
    if order > ram // 2:
        raise ConfigError(
            f"dataset_length={n_items} needs at least {_gib(order)} for the shuffled order of "
            f"its items (8 bytes each); this machine has {_gib(ram)} of RAM: use at most "
            f"{ram // 16:,} items."
        )
    host = order + cached + (0 if gpu is not None else step)
    if host > ram:
        raise ConfigError(
            f"dataset_length={config.dataset_length} toy faces at image_size={s} need at least "
            f"{_gib(host)} with the faces this run keeps rendered (and one step's tensors); this "
            f"machine has {_gib(ram)} of RAM: lower image_size, or dataset_length (above "
            f"{_RENDER_CACHE_MAX:,} faces are drawn anew each time instead of kept)."
        )


def check_startable(config: TrainConfig, stop_after: int | None = None) -> Path:
    """What :func:`train` checks before it loads anything: ``stop_after``, the model source
    (the preset and size of a new pixel model, or that ``init_from`` exists) and the run folder,
    created and probed for writing (:class:`RunDirError` when it is a file or read-only).
    Returns the run folder."""
    if stop_after is not None and (
        isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after <= 0
    ):
        raise ConfigError(f"stop_after must be a positive number of steps, got {stop_after!r}.")
    if config.init_from is not None:
        check_init_from(config.init_from, latent=config.autoencoder is not None)
    elif config.autoencoder is None:  # a latent grid's size is checked with its autoencoder
        check_preset_size(config.preset, config.image_size)
    return check_writable_dir(config.output_dir, "output_dir")


@runtime_checkable
class Codec(Protocol):
    """What :func:`train` needs to know about the space a run diffuses in.

    ``initial_model(config)`` builds the UNet the run starts from (before any resume);
    ``noise_scheduler(config)`` the ``DDPMScheduler`` of the run (saved with each checkpoint,
    so that :func:`load_run_model` needs no codec); ``encode_batch(images, labels, concepts,
    keys=)`` maps a batch of images in [-1, 1] and its label maps into that space (CPU tensors);
    ``to(device)`` moves what the codec computes with. ``latent`` says whether
    ``config.autoencoder`` must be set for it.
    """

    latent: bool

    def initial_model(self, config: TrainConfig) -> Any: ...

    def noise_scheduler(self, config: TrainConfig) -> Any: ...

    def encode_batch(
        self,
        images: Tensor,
        labels: Tensor | None,
        concepts: Sequence[Any] = (),
        *,
        keys: Tensor | Sequence[int] | None = None,
    ) -> tuple[Tensor, Tensor | None]: ...

    def to(self, device: str | torch.device) -> Codec: ...


class PixelCodec:
    """The codec of a pixel-space DDPM: the images are the diffusion space."""

    latent = False

    def initial_model(self, config: TrainConfig) -> Any:
        """A new UNet of ``config.preset``, a run folder's EMA weights, or a pretrained
        diffusers model (folder or hub id), checked against ``config.image_size``."""
        from ..models import load_pretrained, make_unet

        if config.init_from is None:
            check_preset_size(config.preset, config.image_size)
            return make_unet(config.preset, sample_size=config.image_size)
        check_init_from(config.init_from)
        src = Path(config.init_from)
        if src.is_dir() and (list_checkpoints(src) or (src / "state.json").is_file()):
            unet = load_run_model(src, ema=True)
        else:
            unet, _ = load_pretrained(config.init_from)
        check_init_size(unet, config, config.image_size, 3)
        return unet

    def noise_scheduler(self, config: TrainConfig) -> Any:
        from diffusers import DDPMScheduler

        return DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule
        )

    def encode_batch(
        self,
        images: Tensor,
        labels: Tensor | None,
        concepts: Sequence[Any] = (),
        *,
        keys: Tensor | Sequence[int] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        return images, labels

    def to(self, device: str | torch.device) -> PixelCodec:
        return self


def check_codec(config: TrainConfig, codec: Any) -> Any:
    """The codec a run of ``config`` trains with: ``codec``, or :class:`PixelCodec` for a
    pixel run. A latent run (``autoencoder`` set) without one, or a codec of the other kind,
    is refused with the call that builds the right one."""
    if codec is None:
        if config.autoencoder is None:
            return PixelCodec()
        raise ConfigError(
            f"this config diffuses in the latent space of autoencoder={config.autoencoder!r}: "
            "train it with interpddpm.latent.train(config) (or pass "
            "codec=interpddpm.latent.LatentCodec.load(config.autoencoder)); the CLI "
            "`interpddpm train` does this itself."
        )
    if not isinstance(codec, Codec):
        raise ConfigError(
            f"codec must have initial_model, noise_scheduler, encode_batch and to "
            f"(interpddpm.training.Codec), got {type(codec).__name__}."
        )
    if bool(codec.latent) != (config.autoencoder is not None):
        want = "a latent codec (its autoencoder)" if config.autoencoder else "PixelCodec()"
        raise ConfigError(
            f"codec {type(codec).__name__} does not match the config "
            f"(autoencoder={config.autoencoder!r}): pass {want}."
        )
    return codec


def load_run_model(
    path: str | os.PathLike,
    *,
    ema: bool = True,
    device: str | torch.device | None = None,
    codec: Any = None,
) -> Any:
    """The UNet of a run folder (its newest checkpoint that verifies: a corrupted newer one is
    skipped with a warning, see :func:`latest_verified_checkpoint`) or of one checkpoint folder,
    in eval mode on ``device`` (default :func:`interpddpm.devices.default_device`: the GPU when
    there is one).

    ``ema=True`` returns the EMA weights (what to sample from), else the raw weights. The
    model's ``scheduler_config`` (what sampling uses) is the one saved with the checkpoint;
    checkpoints written before it was saved take it from ``codec`` (default
    :class:`PixelCodec`; a latent run of that age needs its :class:`Codec`).
    """
    from diffusers import UNet2DModel

    path = Path(path)
    if (path / "state.json").is_file():
        state = read_checkpoint(path)
    else:
        found = latest_verified_checkpoint(path)
        if found is None:
            raise CheckpointError(f"no checkpoint in {path}; train first (interpddpm train ...).")
        state = found[1]
    model = UNet2DModel.from_config(state["model_config"])
    weights = state["tensors"]["model.safetensors"]
    if ema:
        weights = {**weights, **state["tensors"]["ema.safetensors"]}
    model.load_state_dict(weights)
    saved = state.get("scheduler_config")
    if saved is None:  # a checkpoint from before the schedule was saved with it
        config = TrainConfig.from_dict(state["config"])
        saved = dict(check_codec(config, codec).noise_scheduler(config).config)
    model.scheduler_config = saved
    return place(model.eval(), device)


def run_noise_scheduler(config: TrainConfig, codec: Any = None) -> Any:
    """The ``DDPMScheduler`` a run of ``config`` trains with (see :class:`Codec`)."""
    return check_codec(config, codec).noise_scheduler(config)
