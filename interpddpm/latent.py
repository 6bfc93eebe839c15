"""Latent diffusion (LDM, Rombach et al. 2022): the paper's second model family.

A latent diffusion model runs the DDPM of eqs. (1)-(3) on the latents ``z = E(x) * s`` of a
frozen autoencoder instead of on pixels, and decodes ``x_0 = D(z_0 / s)`` at the end (``s`` is the
autoencoder's ``scaling_factor``). The paper's method carries over unchanged once the regions live
on the latent grid: the players of the game (eq. 5) are regions of ``z_t``, ``L_IE`` (eqs. 8-9) is
computed on latents, and an edit swaps or resamples one region of the latent noise ``z_T``.

- Autoencoder. On the CPU, a small diffusers :class:`~diffusers.VQModel` trained here on
  32x32 toy faces (3 x 16 x 16 latents, a factor 2): reconstruction (MSE) plus diffusers' VQ loss
  (codebook + 0.25 x commitment). On the ``gpu``/``paper`` profiles, the VQ-f4 autoencoder of
  ``CompVis/ldm-celebahq-256`` (3 x 64 x 64 latents at 256 px), see
  :func:`interpddpm.models.load_latent_pretrained` for its scaling-factor pitfall.
- Regions on the latent grid. :func:`interpddpm.regions.downsample_labels` maps label maps to the
  latent grid (a cell belongs to a concept when any of its pixels does, otherwise to its
  majority label); the trainer does this for every batch (``TrainConfig.autoencoder``).
- Locality is measured in image space, as for the pixel model, with the parser's masks of the
  decoded image (:func:`locality`).

Runs are cached per profile like :mod:`interpddpm.runs`: :func:`autoencoder`, :func:`baseline`,
:func:`interpretable`.

Serves chapter 10.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel, VQModel
from torch import Tensor

from . import runs
from .artifacts import json_digest, seal_record, sha256_file
from .devices import place
from .editing import edit_region, psnr
from .locks import locked
from .metrics import LocalityResult, locality_protocol
from .profiles import Profile, cache_dir, get_profile
from .regions import ConceptSpec, downsample_labels, player_masks
from .runs import ensure
from .sampling import ddim_sample_batched, model_noise
from .training import (
    ConfigError,
    TrainConfig,
    TrainResult,
    check_init_from,
    check_init_size,
    check_preset_size,
    list_checkpoints,
    load_run_model,
    read_metrics,
    read_verified_record,
)
from .training import train as train_pixels_or_latents

#: The file that marks a complete autoencoder folder (sha256 of every file, training record).
RECORD = "autoencoder.json"
#: DDIM clamps its estimate of z_0 to the range holding this share of the training latents' |z|
#: (the latent analogue of clipping pixels to [-1, 1]; see :func:`noise_scheduler`).
CLIP_QUANTILE = 0.999
_WEIGHTS = ("config.json", "diffusion_pytorch_model.safetensors")


# ------------------------------------------------------------------------------------------
# The autoencoder
# ------------------------------------------------------------------------------------------
def make_autoencoder(latent_channels: int = 3, image_size: int = 32) -> VQModel:
    """A small diffusers ``VQModel`` for toy faces: two stages (16, 32 channels), one
    downsampling, so ``[3, S, S]`` images map to ``[latent_channels, S/2, S/2]`` latents."""
    blocks = 2
    return VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=latent_channels,
        vq_embed_dim=latent_channels,
        num_vq_embeddings=256,
        norm_num_groups=8,
        sample_size=image_size,
        mid_block_add_attention=False,  # attention costs a lot on the CPU and adds little here
    )


def _restart_codes(vq: VQModel, h: Tensor, generator: torch.Generator, everyone: bool) -> None:
    """Set unused (or all) codebook vectors to random encoder outputs ``h`` (dead-code restart,
    as in Jukebox/SoundStream): keeps the whole codebook in use."""
    emb = vq.quantize.embedding.weight
    flat = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
    with torch.no_grad():
        idx = vq.quantize(h)[2][2].flatten()
        used = torch.zeros(emb.shape[0], dtype=torch.bool, device=emb.device)
        used[idx] = True
        dead = (~used | everyone).nonzero()[:, 0]
        pick = torch.randint(0, flat.shape[0], (len(dead),), generator=generator)
        jitter = torch.randn(len(dead), flat.shape[1], generator=generator).to(flat)
        emb.data[dead] = flat[pick.to(flat.device)] + 0.01 * flat.std() * jitter


def train_autoencoder(
    *,
    image_size: int = 32,
    latent_channels: int = 3,
    steps: int = 800,
    batch_size: int = 8,
    lr: float = 2e-3,
    plain_fraction: float = 0.6,
    pool: int = 2048,
    data_seed: int = 0,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> tuple[VQModel, dict[str, Any]]:
    """Train :func:`make_autoencoder` on toy faces; return it (eval mode, CPU) and a record.

    Loss: ``||D(q(E(x))) - x||^2`` plus the VQ loss of diffusers' ``VectorQuantizer``
    (codebook and 0.25 x commitment, straight-through gradients). The first ``plain_fraction``
    of the steps train a plain autoencoder (decoding without quantization); then the codebook is
    initialised from encoder outputs and quantization is switched on, with dead codes restarted
    every 50 steps. (Quantizing from step 0 collapses onto a few dozen codes and loses colour.)
    The data are the first ``pool`` faces of the training set ``ToyFaces(seed=data_seed)``.
    ``scaling_factor`` is set to 1 / std of the latents, so that ``z`` has unit variance like
    the noise of the diffusion (the LDM paper's rescaling). The record holds the training time,
    the held-out PSNR and ``latent_clip``, the :data:`CLIP_QUANTILE` quantile of ``|z|``.
    """
    from .toyfaces import ToyFaces

    if steps <= 0 or batch_size <= 0:
        raise ValueError(f"steps and batch_size must be positive, got {steps}, {batch_size}.")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    data, _ = ToyFaces(image_size, pool, seed=data_seed).batch(range(pool))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vq = make_autoencoder(latent_channels, image_size).to(dev)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(vq.parameters(), lr=lr)
    plain = int(plain_fraction * steps)
    bar = None
    if progress:
        from tqdm import tqdm  # plain tqdm renders in the static book

        bar = tqdm(total=steps, desc="autoencoder", dynamic_ncols=True)
    losses = []
    vq.train()
    for step in range(steps):
        x = data[torch.randint(0, pool, (batch_size,), generator=gen)].to(dev)
        h = vq.encode(x).latents
        if step >= plain and (step - plain) % 50 == 0:  # codebook (re)initialisation
            with torch.no_grad():
                sample = data[torch.randint(0, pool, (128,), generator=gen)].to(dev)
                _restart_codes(vq, vq.encode(sample).latents, gen, everyone=step == plain)
        out = vq.decode(h, force_not_quantize=step < plain)
        loss = F.mse_loss(out.sample, x) + out.commit_loss.mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix({"loss": f"{losses[-1]:.4f}"}, refresh=False)
    if bar is not None:
        bar.close()
    vq.eval()
    with torch.no_grad():
        z = torch.cat([vq.encode(c.to(dev)).latents for c in data[:512].split(128)])
    vq.register_to_config(scaling_factor=float(1.0 / z.std()))
    z = (z * vq.config.scaling_factor).abs().flatten().cpu()
    latent_clip = float(torch.quantile(z[: 1 << 24], CLIP_QUANTILE))
    codec = LatentCodec(vq.cpu())
    held_out, _ = ToyFaces(image_size, 256, seed=data_seed + 7919).batch(range(256))
    record = {
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "seconds": time.perf_counter() - t0,
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "psnr_held_out": float(reconstruction_psnr(codec, held_out).mean()),
        "codes_used": _codes_used(vq, codec.encode(held_out) / codec.scaling_factor),
        "latent_clip": latent_clip,
    }
    return vq, record


def _codes_used(vq: VQModel, h: Tensor) -> int:
    with torch.no_grad():
        return int(vq.quantize(h)[2][2].unique().numel())


def save_autoencoder(vq: VQModel, path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``vq`` as a diffusers folder plus :data:`RECORD` (sha256 of each file), atomically:
    a temporary folder renamed when complete. ``VQModel.from_pretrained(path)`` reads it."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    vq.save_pretrained(tmp, safe_serialization=True)
    sha = {f: sha256_file(tmp / f) for f in _WEIGHTS}
    (tmp / RECORD).write_text(seal_record({**record, "sha256": sha}))  # digest of itself too
    try:
        os.replace(tmp, path)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        if not (path / RECORD).is_file():
            raise
    return path


def read_autoencoder(path: str | os.PathLike) -> tuple[VQModel, dict[str, Any]]:
    """Load a folder written by :func:`save_autoencoder` after checking every file's sha256."""
    path = Path(path)
    record = read_verified_record(
        path,
        RECORD,
        f"delete {path} and the latent runs trained on it (they encode with these weights)",
        what="complete autoencoder folder",
    )
    return VQModel.from_pretrained(path).eval(), record


class LatentCodec:
    """A frozen VQ autoencoder seen as ``z = E(x) * s`` and ``x = D(z / s)`` (as ``LDMPipeline``).

    ``encode`` returns the unquantized encoder output (the LDM's diffusion space); ``decode``
    quantizes, decodes and clamps to [-1, 1]. ``scheduler_config`` is the noise schedule of the
    pipeline the autoencoder came from (None for our own autoencoders).

    It is the trainer's :class:`interpddpm.training.Codec` for latent runs: it builds their
    initial UNet (:func:`initial_unet`) and noise schedule (:func:`noise_scheduler`) and encodes
    each batch (:meth:`encode_batch`).
    """

    latent = True

    def __init__(
        self,
        vqvae: VQModel,
        *,
        source: str | None = None,
        record: dict[str, Any] | None = None,
        scheduler_config: dict[str, Any] | None = None,
        cache_limit: int = 20_000,
    ) -> None:
        self.vqvae = vqvae.eval().requires_grad_(False)
        self.source, self.record = source, record or {}
        self.scheduler_config = scheduler_config
        self.cache_limit = cache_limit
        self._cache: dict[int, Tensor] = {}

    @classmethod
    def load(cls, source: str | os.PathLike) -> LatentCodec:
        """From a folder of :func:`save_autoencoder` (integrity checked), a bare ``VQModel``
        folder, or a latent diffusion pipeline (folder or hub id, e.g.
        ``"CompVis/ldm-celebahq-256"``; its ``scaling_factor`` is set to 1, see
        :func:`interpddpm.models.load_latent_pretrained`)."""
        from .models import load_latent_autoencoder

        path = Path(source).expanduser()
        if (path / RECORD).is_file():
            vq, record = read_autoencoder(path)
            return cls(vq, source=str(source), record=record)
        config = path / "config.json"
        if config.is_file() and json.loads(config.read_text()).get("_class_name") == "VQModel":
            return cls(VQModel.from_pretrained(path), source=str(source))
        vq, sched = load_latent_autoencoder(source)  # a clear ValueError when not an LDM
        return cls(vq, source=str(source), scheduler_config=sched or None)

    def to(self, device: str | torch.device) -> LatentCodec:
        place(self.vqvae, device)  # marked as placed: device audits look at the VQModel
        return self

    def initial_model(self, config: TrainConfig) -> UNet2DModel:
        """The UNet a latent run of ``config`` starts from (:func:`initial_unet`)."""
        return initial_unet(config, self)

    def noise_scheduler(self, config: TrainConfig) -> DDPMScheduler:
        """The noise schedule of a latent run of ``config`` (:func:`noise_scheduler`)."""
        return noise_scheduler(config)

    @property
    def device(self) -> torch.device:
        return next(self.vqvae.parameters()).device

    @property
    def scaling_factor(self) -> float:
        return float(self.vqvae.config.scaling_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.vqvae.config.latent_channels)

    @property
    def factor(self) -> int:
        """How much the autoencoder downsamples (2 per extra encoder stage)."""
        return 2 ** (len(self.vqvae.config.block_out_channels) - 1)

    def latent_size(self, image_size: int) -> int:
        if image_size % self.factor:
            raise ValueError(f"image size {image_size} is not a multiple of {self.factor}.")
        return image_size // self.factor

    @torch.no_grad()
    def encode(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """Latents ``[B, C, S/f, S/f]`` (times the scaling factor) of images in [-1, 1]."""
        dev = self.device
        return torch.cat(
            [
                self.vqvae.encode(c.to(dev)).latents.float().cpu() * self.scaling_factor
                for c in images.split(batch_size)
            ]
        )

    @torch.no_grad()
    def decode(self, latents: Tensor, batch_size: int = 64) -> Tensor:
        """Images ``[B, 3, S, S]`` in [-1, 1] (on the CPU) from scaled latents."""
        dev = self.device
        return torch.cat(
            [
                self.vqvae.decode(c.to(dev) / self.scaling_factor).sample.float().cpu()
                for c in latents.split(batch_size)
            ]
        ).clamp(-1, 1)

    def labels(
        self, labels: Tensor, concepts: Sequence[ConceptSpec] = (), size: int | None = None
    ) -> Tensor:
        """Label maps on the latent grid (:func:`interpddpm.regions.downsample_labels`)."""
        size = size or self.latent_size(labels.shape[-1])
        return downsample_labels(labels, size, prefer=concepts)

    def region(self, labels: Tensor, concept: ConceptSpec, dilation: int = 0) -> Tensor:
        """The latent-grid mask ``[B, h, w]`` of one concept from image-resolution labels,
        dilated by ``dilation`` latent cells (the region that training and editing use)."""
        return player_masks(self.labels(labels, [concept]), [concept], dilation=dilation)[:, 0]

    def encode_batch(
        self,
        images: Tensor,
        labels: Tensor | None,
        concepts: Sequence[ConceptSpec] = (),
        *,
        keys: Tensor | Sequence[int] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """The trainer's hook: latents and latent-grid labels of one batch (CPU tensors).

        ``keys`` (dataset indices) memoise latents (encoding is deterministic), up to
        ``cache_limit`` items: one codec serves one dataset.
        """
        if keys is None:
            latents = self.encode(images)
        else:
            keys = [int(k) for k in keys]
            missing = [i for i, k in enumerate(keys) if k not in self._cache]
            fresh = self.encode(images[missing]) if missing else None
            out = [self._cache.get(k) for k in keys]
            for j, i in enumerate(missing):
                out[i] = fresh[j]
                if len(self._cache) < self.cache_limit:
                    self._cache[keys[i]] = fresh[j]
            latents = torch.stack(out)
        small = None if labels is None else self.labels(labels, concepts, latents.shape[-1])
        return latents, small


def reconstruction_psnr(codec: LatentCodec, images: Tensor) -> Tensor:
    """PSNR (dB) of ``D(E(x))`` against ``x``, per image."""
    return psnr(codec.decode(codec.encode(images)), images)


# ------------------------------------------------------------------------------------------
# What the trainer asks a latent codec for (interpddpm.training.Codec), and training
# ------------------------------------------------------------------------------------------
def train(config: TrainConfig, *, codec: LatentCodec | None = None, **kwargs: Any) -> TrainResult:
    """Train (or resume) a latent run: :func:`interpddpm.training.train` with the codec of
    ``config.autoencoder`` (loaded when ``codec`` is None); ``kwargs`` go to it unchanged."""
    if config.autoencoder is None:
        raise ConfigError(
            "latent.train needs a config with autoencoder set (the latent space to diffuse "
            "in); train a pixel run with interpddpm.training.train."
        )
    codec = LatentCodec.load(config.autoencoder) if codec is None else codec
    return train_pixels_or_latents(config, codec=codec, **kwargs)


def _pipeline_scheduler_config(init_from: str | None) -> dict[str, Any] | None:
    """The noise schedule a latent run must keep: that of the LDM pipeline it starts from,
    following run folders back to their own ``init_from``; None when it starts from scratch."""
    from .models import latent_scheduler_config

    seen = 0
    while init_from is not None and seen < 32:
        seen += 1
        path = Path(init_from)
        state = path / "state.json"
        if path.is_dir() and not state.is_file():  # a run folder: any checkpoint's config
            states = [c / "state.json" for c in list_checkpoints(path)]
            state = next((f for f in reversed(states) if f.is_file()), state)
        if state.is_file():  # a run folder or checkpoint: follow its own start
            init_from = json.loads(state.read_text())["config"].get("init_from")
            continue
        try:
            return latent_scheduler_config(init_from) or None
        except ValueError:  # a pixel-space pipeline: its own schedule is not a latent one
            return None
    return None


def noise_scheduler(config: TrainConfig) -> DDPMScheduler:
    """The noise schedule of a latent run (training, and sampling through the UNet's
    ``scheduler_config``): the pretrained pipeline's when the run starts from one (a pretrained
    denoiser is tied to its schedule); otherwise the config's, with DDIM's estimate of ``z_0``
    clamped to ``[-r, r]``, ``r`` = the autoencoder's ``latent_clip`` (pixel models clamp to
    [-1, 1]; a small latent model's early estimates otherwise blow up, since they are divided by
    ``sqrt(alpha_bar_t)``), or not clamped when the autoencoder records no range."""
    pretrained = _pipeline_scheduler_config(config.init_from)
    if pretrained is not None:
        return DDPMScheduler.from_config(pretrained)
    clip = _recorded(config.autoencoder).get("latent_clip")
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        clip_sample=clip is not None,
        clip_sample_range=float(clip or 1.0),
    )


def _recorded(source: str | None) -> dict[str, Any]:
    """The record of one of our autoencoder folders (unverified metadata), else {}."""
    record = Path(source).expanduser() / RECORD if source else None
    return json.loads(record.read_text()) if record is not None and record.is_file() else {}


def initial_unet(config: TrainConfig, codec: LatentCodec) -> UNet2DModel:
    """The UNet a latent run starts from: a fresh preset with ``in_channels`` = latent channels
    at the latent grid size, a run folder's EMA weights, or an LDM pipeline's UNet."""
    from .models import load_latent_pretrained, make_unet

    if config.image_size % codec.factor:
        lo, hi = ((config.image_size // codec.factor + d) * codec.factor for d in (0, 1))
        raise ConfigError(
            f"image_size={config.image_size} is not a multiple of the autoencoder's "
            f"downsampling factor {codec.factor} ({config.autoencoder!r}); nearest valid "
            f"sizes: {f'{lo} or {hi}' if lo else hi}."
        )
    size = codec.latent_size(config.image_size)
    if config.init_from is None:
        check_preset_size(config.preset, config.image_size, scale=codec.factor)
        unet = make_unet(config.preset, sample_size=size, in_channels=codec.latent_channels)
    else:
        check_init_from(config.init_from, latent=True)
        src = Path(config.init_from)
        if src.is_dir() and (list_checkpoints(src) or (src / "state.json").is_file()):
            unet = load_run_model(src, ema=True, codec=codec)
        else:
            unet = load_latent_pretrained(config.init_from)[0]
    check_init_size(unet, config, size, codec.latent_channels)  # a ConfigError (a ValueError)
    return unet


# ------------------------------------------------------------------------------------------
# A latent model: sample, edit, measure
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LatentModel:
    """A latent denoiser with its autoencoder: ``x_0 = D(DDIM(z_T) / s)``."""

    unet: UNet2DModel
    codec: LatentCodec
    name: str = "ldm"
    train_seconds: float = 0.0
    run: TrainResult | None = None

    def noise(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` latent noises ``z_T`` (CPU)."""
        return model_noise(self.unet, n, generator=generator)

    def sample(self, z_T: Tensor, *, num_inference_steps: int = 50, batch_size: int = 64) -> Tensor:
        """DDIM (eta = 0) in latent space, then decode: images ``[B, 3, S, S]`` in [-1, 1]."""
        z0 = ddim_sample_batched(
            self.unet, z_T, num_inference_steps=num_inference_steps, batch_size=batch_size
        )
        return self.codec.decode(z0)

    def region(self, labels: Tensor, concept: ConceptSpec, dilation: int = 1) -> Tensor:
        return self.codec.region(labels, concept, dilation)

    def edit(
        self,
        z_T: Tensor,
        labels: Tensor,
        concept: ConceptSpec,
        *,
        mode: str = "resample",
        donor: Tensor | None = None,
        generator: torch.Generator | None = None,
        dilation: int = 1,
        num_inference_steps: int = 50,
    ) -> tuple[Tensor, Tensor]:
        """Resample (or swap with ``donor``) the concept's region of ``z_T`` (from the
        image-resolution ``labels`` of its image, moved to the latent grid) and decode:
        ``(z_T_edit, x0_edit)``."""
        mask = self.region(labels, concept, dilation)
        device = next(self.unet.parameters()).device
        z_edit, z0 = edit_region(
            self.unet,
            z_T.to(device),
            mask.to(device),
            mode=mode,
            donor=None if donor is None else donor.to(device),
            generator=generator,
            num_inference_steps=num_inference_steps,
        )
        return z_edit.cpu(), self.codec.decode(z0)


class ResizedParser:
    """A face parser applied at its own resolution: images are resized to ``parser.size`` and
    the labels resized back (nearest), e.g. 256 px LDM samples and a 64 px parser."""

    def __init__(self, parser: Any, size: int | None = None) -> None:
        self.parser, self.size = parser, size or getattr(parser, "size", None)

    def predict(self, images: Tensor) -> Tensor:
        s = images.shape[-1]
        if self.size is None or self.size == s:
            return self.parser.predict(images)
        small = F.interpolate(images, size=self.size, mode="area" if self.size < s else "bilinear")
        labels = self.parser.predict(small)
        return F.interpolate(labels[:, None].float(), size=s, mode="nearest")[:, 0].long()


def locality(
    model: LatentModel,
    parser: Any,
    concepts: Sequence[ConceptSpec],
    *,
    n_pairs: int = 100,
    dilation: int = 1,
    num_inference_steps: int = 50,
    seed: int = 0,
    batch_size: int = 64,
) -> list[LocalityResult]:
    """The paper's locality protocol (:func:`interpddpm.metrics.locality_protocol`) for a latent
    model: swap the concept's region of the latent noise (``dilation`` latent cells), decode,
    and measure in image space with the parser's mask of the decoded ``x0`` dilated by the same
    extent in pixels (``dilation`` x the autoencoder's factor)."""
    return locality_protocol(
        model.unet,
        ResizedParser(parser),
        concepts,
        n_pairs=n_pairs,
        dilation=dilation * model.codec.factor,
        num_inference_steps=num_inference_steps,
        seed=seed,
        batch_size=batch_size,
        decode=model.codec.decode,
        noise_mask=lambda labels, concept: model.region(labels, concept, dilation),
    )


# ------------------------------------------------------------------------------------------
# Runs cached per profile
# ------------------------------------------------------------------------------------------
def _profile(profile: str | Profile) -> Profile:
    return profile if isinstance(profile, Profile) else get_profile(profile)


def _autoencoder_settings(p: Profile) -> dict[str, int]:
    return {
        "image_size": p.ldm_image_size,
        "latent_channels": p.ldm_latent_channels,
        "steps": p.ldm_autoencoder_steps,
        "pool": min(2048, p.ldm_dataset_length),
    }


def autoencoder_dir(profile: str | Profile = "auto") -> Path:
    """``ldm-autoencoder-<hash of its settings>`` in the profile's cache: a profile that trains
    its autoencoder differently gets a new folder, and through ``TrainConfig.autoencoder`` (and
    its fingerprint) new latent runs too."""
    p = _profile(profile)
    return cache_dir(p) / f"ldm-autoencoder-{json_digest(_autoencoder_settings(p), 8)}"


def autoencoder_source(profile: str | Profile = "auto") -> str:
    """What ``TrainConfig.autoencoder`` names for this profile: the pretrained pipeline, or
    the cached folder of our own autoencoder."""
    p = _profile(profile)
    return p.ldm_pretrained or str(autoencoder_dir(p))


def autoencoder(profile: str | Profile = "auto", *, progress: bool = True) -> LatentCodec:
    """The profile's frozen autoencoder: ``CompVis/ldm-celebahq-256``'s VQ-f4 on ``gpu``/
    ``paper``; on ``smoke``/``cpu`` our toy-face VQModel, trained once and cached. On the
    device of :func:`interpddpm.devices.place` (the GPU when there is one)."""
    p = _profile(profile)
    if p.ldm_pretrained:
        return place(LatentCodec.load(p.ldm_pretrained))
    path = autoencoder_dir(p)
    # another process training it: wait for it and load its result
    with locked(path, wait=True, what="autoencoder build (latent.autoencoder)"):
        if not (path / RECORD).is_file():
            vq, record = train_autoencoder(**_autoencoder_settings(p), progress=progress)
            save_autoencoder(vq, path, record)
        return place(LatentCodec.load(path))


def faces(profile: str | Profile, n: int, *, seed: int = 4242) -> tuple[Tensor, Tensor | None]:
    """``n`` faces at the profile's LDM resolution with their label maps: held-out toy faces
    (a seed no run trains on) or the first ``n`` images of the profile's dataset."""
    p = _profile(profile)
    if p.dataset == "toyfaces":
        from .toyfaces import ToyFaces

        return ToyFaces(p.ldm_image_size, n, seed=seed).batch(range(n))
    from .datasets import get_dataset

    return get_dataset(p.dataset, p.ldm_image_size, limit=n).batch(list(range(n)))


def _train_seconds(result: TrainResult) -> float:
    log = read_metrics(result.output_dir)
    return float(log[-1]["seconds"]) if log else 0.0


#: The noise schedule of latent runs trained here: betas linear in sqrt (Rombach et al.'s LDMs),
#: which keeps more signal at the noisiest steps than the linear one (alpha_bar_T 8e-4, not 4e-5)
#: and gave clearly better small latent models on the CPU.
BETA_SCHEDULE = "scaled_linear"


def baseline_config(profile: str | Profile = "auto") -> TrainConfig:
    """A latent UNet trained from scratch on the autoencoder's latents (plain ``L_DDPM``)."""
    p = _profile(profile)
    steps = p.ldm_baseline_steps
    if steps <= 0:
        raise ValueError(
            f"profile {p.name!r} trains no latent baseline (ldm_baseline_steps=0): its vanilla "
            f"LDM is the pretrained {p.ldm_pretrained!r}; use latent.baseline(profile)."
        )
    config = runs.baseline_config(p).replace(
        image_size=p.ldm_image_size,
        dataset_length=p.ldm_dataset_length,
        preset=p.ldm_preset,
        steps=steps,
        batch_size=p.ldm_batch_size,
        lr=p.ldm_baseline_lr,
        lr_warmup_steps=min(100, steps // 10),
        beta_schedule=BETA_SCHEDULE,
        checkpoint_every=max(steps // 4, 1),
        log_every=max(steps // 100, 1),
        autoencoder=autoencoder_source(p),
    )
    return runs.named(config, p, "ldm-baseline")


def finetune_config(
    profile: str | Profile, concepts: Sequence[str], *, interpretable: bool = True
) -> TrainConfig:
    """Fine-tuning of the vanilla LDM with ``L_IE`` on the latent grid (eq. 9), the settings of
    :func:`interpddpm.runs.finetune_config` with the paper's recipe: the book's single-concept
    recipe reads the outside as several regions, which were measured on pixels only (on a
    latent grid, hair, skin and background shrink to a few cells each), and chapter 10
    reproduces the paper's latent model."""
    p = _profile(profile)
    steps = p.ldm_finetune_steps
    pretrained = p.ldm_pretrained and p.ldm_baseline_steps <= 0
    config = runs.finetune_config(p, concepts, interpretable=interpretable, recipe="paper").replace(
        image_size=p.ldm_image_size,
        dataset_length=p.ldm_dataset_length,
        batch_size=p.ldm_batch_size,
        ie_sub_batch=max(1, min(p.ie_sub_batch, p.ldm_batch_size // 2)),  # bounds GPU memory
        init_from=p.ldm_pretrained if pretrained else baseline_config(p).output_dir,
        beta_schedule=BETA_SCHEDULE,  # ignored when starting from a pipeline: its own is kept
        steps=steps,
        lambda_decay_steps=max(1, min(p.lambda_decay_steps, steps)),
        checkpoint_every=max(steps // 2, 1),
        # one checkpoint of the 274M-parameter LDM is 4.4 GB with Adam's state: keep one, so
        # chapter 10 fits a free 15 GB Drive (interpddpm.budget.LATENT_KEEP)
        keep_checkpoints=1,
        log_every=max(steps // 100, 1),
        autoencoder=autoencoder_source(p),
    )
    return runs.named(config, p, "ldm-" + runs.run_name(concepts, interpretable))


def _model(result: TrainResult, codec: LatentCodec, name: str) -> LatentModel:
    unet = load_run_model(result.output_dir, codec=codec)
    return LatentModel(unet, place(codec), name, _train_seconds(result), result)


def baseline(profile: str | Profile = "auto", *, progress: bool = True) -> LatentModel:
    """The vanilla LDM of the profile: trained here (cached), or the pretrained pipeline's."""
    from .models import load_latent_pretrained

    p = _profile(profile)
    codec = autoencoder(p, progress=progress)
    if p.ldm_pretrained and p.ldm_baseline_steps <= 0:
        unet = place(load_latent_pretrained(p.ldm_pretrained)[0])
        return LatentModel(unet, place(codec), "vanilla LDM (pretrained)")
    result = ensure(baseline_config(p), progress=progress, codec=codec)
    return _model(result, codec, "vanilla LDM")


def _finetuned(
    p: Profile, concepts: Sequence[str], interpretable: bool, name: str, progress: bool
) -> LatentModel:
    if not (p.ldm_pretrained and p.ldm_baseline_steps <= 0):
        baseline(p, progress=progress)
    codec = autoencoder(p, progress=progress)
    config = finetune_config(p, concepts, interpretable=interpretable)
    return _model(ensure(config, progress=progress, codec=codec), codec, name)


def interpretable(
    profile: str | Profile, concepts: Sequence[str] = ("nose",), *, progress: bool = True
) -> LatentModel:
    """The vanilla LDM fine-tuned with ``L_IE`` on latent-grid regions (cached)."""
    name = f"interpretable LDM ({', '.join(concepts)})"
    return _finetuned(_profile(profile), concepts, True, name, progress)


def control(
    profile: str | Profile, concepts: Sequence[str] = ("nose",), *, progress: bool = True
) -> LatentModel:
    """The control of :func:`interpretable`: the same fine-tuning (steps, data, learning rate)
    without ``L_IE``, so that a locality gain is not mistaken for the effect of more training."""
    return _finetuned(_profile(profile), concepts, False, "control LDM (no L_IE)", progress)


__all__ = [
    "LatentCodec",
    "LatentModel",
    "ResizedParser",
    "autoencoder",
    "baseline",
    "baseline_config",
    "control",
    "finetune_config",
    "interpretable",
    "locality",
    "make_autoencoder",
    "read_autoencoder",
    "reconstruction_psnr",
    "save_autoencoder",
    "train",
    "train_autoencoder",
]
