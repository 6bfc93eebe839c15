"""How long a chapter takes and how much GPU memory it needs, before running it.

The estimate rests on two measurements and one table:

- **FLOPs per UNet forward** (one image, one timestep), counted by
  ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device (no weights, no compute:
  milliseconds even for the 274M-parameter LDM UNet);
- **activation memory per row**: the bytes autograd keeps for the backward pass, summed through
  ``torch.autograd.graph.saved_tensors_hooks`` (also on ``meta``), at batch 2 minus batch 1;
  under fp16/bf16 autocast about half of the fp32 figure is kept. Both run high, never low:
  the meta device decomposes group norm into ops the real kernels fuse (FLOPs +1-2%, saved
  bytes up to +45% against a CPU run, ``tests/test_budget.py``), so the memory is an upper
  bound;
- **GPU throughput** at each precision's own rate (:func:`flops_per_second`): training under
  fp16/bf16 autocast at the GPU's dense tensor-core peak, fp32 work (sampling, the FID
  network, an fp32 run) at its fp32 peak (CUDA cores; TF32 tensor cores where cuDNN uses them
  by default, sm80+), each times the fraction of peak measured for a convnet in PyTorch
  (:data:`UTILISATION`, calibrated on :data:`PUBLISHED`), at two rates: ``optimistic`` (what
  ResNet-50 reaches) and ``likely`` (two thirds of it: a diffusers UNet has group norms,
  attention and small 64 px maps; to be replaced by ``benchmarks/gpu_check.py``'s numbers);
- **host-side work**: a fixed cost per training step (optimizer, EMA, batch from the memory
  map, kernel launches) and per sampling call, and the dataset's download and conversion
  (:data:`DATASET_PREP`, measured per row on a CPU) in the chapter that first reads it.

Published measurements (:data:`PUBLISHED`, NVIDIA DeepLearningExamples, ResNet-50 v1.5 for
PyTorch, README "Results", pytorch-21.03 NGC container; 8.2 GFLOP a 224 px forward, 3x that a
training row):

- T4, inference, FP32, batch 64: 428 images/s = 3.5 TFLOPS, 43% of the T4's 8.1 fp32 peak;
- T4, inference, mixed precision (AMP), batch 128: 1190 images/s = 9.8 TFLOPS, 15% of 65;
- V100 16GB, training, AMP: 1200 images/s = 29.5 TFLOPS, 24% of 125; FP32: 367 images/s =
  9.0 TFLOPS, 58% of 15.7;
- A100 80GB, training, AMP: 2470 images/s = 60.8 TFLOPS, 19% of 312; TF32: 938 images/s =
  23.1 TFLOPS, 15% of 156.

The T4 has no published training row there; its inference rows set the rates (training
reached the same or a higher share of peak than inference on the V100: 24% against 21% under
AMP), so the T4 is charged at 15% of its fp16 peak (optimistic) and 10% (likely) for
training, and 43% / 29% of its fp32 peak for fp32 sampling.

A chapter's work (:func:`chapter_work`) is a list of UNet row counts read off the profile:
training rows (forward + backward: 3 forwards' FLOPs), sampling rows, and the largest batch
one training step holds (its peak memory); chapter 10 adds its autoencoder's encodes (one
per training face and run) and decodes (one per sample), in fp32: at 256 px the pretrained
VQ-f4 costs more per image than a UNet forward (:data:`LDM_CELEBAHQ_VQ`), and the pretrained
weights' download. The counts follow the chapters' code (chapter 10's own sizes:
``ldm_grid``, ``ldm_pairs``, ``ldm_ddim_steps``, ``ldm_finetune_steps``,
``ldm_dataset_length``); runs and sample sets that an earlier chapter already made are
loaded, not recounted.

Serves every chapter: the cost cell at its start.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from .profiles import Profile, get_profile

__all__ = [
    "DATASET_PREP",
    "GPUS",
    "PUBLISHED",
    "RATES",
    "UTILISATION",
    "ChapterEstimate",
    "GPU",
    "LDM_CELEBAHQ_VQ",
    "ModelCost",
    "Work",
    "autoencoder_flops",
    "chapter_estimate",
    "chapter_work",
    "estimate_line",
    "gpu_key",
    "measure_model",
    "profile_table",
    "run_step_seconds",
    "unet_cost",
]

#: Inception-v3 at 299x299 (torchmetrics' FID network): 5.7 GFLOP per image (Szegedy et al.).
INCEPTION_FLOPS = 5.7e9
#: The rates an estimate is given at: ``likely`` (what chapters are sized by) and
#: ``optimistic`` (ResNet-50's measured share of peak).
RATES = ("likely", "optimistic")
#: ``(card, model, mode, precision, batch, images/s)``: the published measurements the rates
#: rest on (NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5 README).
PUBLISHED: tuple[tuple[str, str, str, str, int, int], ...] = (
    ("T4", "ResNet-50 v1.5", "inference", "fp32", 64, 428),
    ("T4", "ResNet-50 v1.5", "inference", "amp", 128, 1190),
    ("V100 16GB", "ResNet-50 v1.5", "training", "amp", 256, 1200),
    ("V100 16GB", "ResNet-50 v1.5", "training", "fp32", 256, 367),
    ("A100 80GB", "ResNet-50 v1.5", "training", "amp", 256, 2470),
    ("A100 80GB", "ResNet-50 v1.5", "training", "tf32", 256, 938),
)
#: ResNet-50 v1.5 at 224 px: 4.1 G multiply-adds a forward, 8.2 GFLOP as FlopCounterMode counts.
RESNET50_FLOPS = 8.2e9
#: A diffusers UNet reaches this share of what ResNet-50 reaches (the ``likely`` rate).
LIKELY_FACTOR = 2 / 3
#: Fraction of peak reached on tensor cores (fp16/bf16/TF32) and on fp32 CUDA cores
#: (:data:`PUBLISHED`: T4 AMP 15%, A100 TF32 15%; T4 fp32 43%).
UTILISATION: dict[str, dict[str, float]] = {
    "tensor": {"optimistic": 0.15, "likely": 0.15 * LIKELY_FACTOR},
    "fp32": {"optimistic": 0.43, "likely": 0.43 * LIKELY_FACTOR},
}
#: Host-side seconds per training step (optimizer and EMA update, a batch from the memory map,
#: launching a few thousand kernels) and per sampling call of up to INFERENCE_ROWS rows.
STEP_SECONDS = {"optimistic": 0.02, "likely": 0.04}
CALL_SECONDS = {"optimistic": 0.005, "likely": 0.01}
#: Preparing the hub copy of CelebAMask-HQ (``v-xchen-v/celebamask_hq``: six parquet files,
#: 2.91 GB, 30,000 rows) at one image size: its download (at 100 / 40 MB/s) and ``datasets``'
#: Arrow copy, then the conversion of each row (a 1024 px JPEG and a 512 px mask decoded,
#: cropped, resized: 41-59 ms on one core of this project's CPU, measured with
#: ``datasets._convert_row``; Colab's two vCPUs are of the same class).
DATASET_PREP: dict[str, dict[str, float]] = {
    "download_gb": {"optimistic": 2.91, "likely": 2.91},
    "download_gb_per_s": {"optimistic": 0.1, "likely": 0.04},
    "row_seconds": {"optimistic": 0.03, "likely": 0.05},
}
CELEBAMASK_HQ_ROWS = 30_000
#: Bytes per parameter in training: fp32 weights, gradients, Adam's two moments and the EMA copy.
TRAIN_BYTES_PER_PARAM = 20
#: Rows per sampling forward (``ddim_sample_batched``'s batch) and the share of backward-kept
#: activations alive at once without grad (freed layer by layer; an assumption).
INFERENCE_ROWS = 64
INFERENCE_ACT_FRACTION = 0.1
#: Images per step of our own autoencoder's training (:func:`interpddpm.latent.train_autoencoder`).
AUTOENCODER_BATCH = 8
#: DDIM steps of the RePaint baseline count about twice (jump_n_sample = 2 resamples).
REPAINT_FACTOR = 2


@dataclasses.dataclass(frozen=True)
class GPU:
    """A GPU as the estimate sees it: its name, memory and dense peaks per precision."""

    name: str
    memory_gib: float
    peak_tflops: float  # dense fp16/bf16 tensor cores (no sparsity)
    fp32_tflops: float  # fp32 on CUDA cores
    tf32_tflops: float | None = None  # dense TF32 tensor cores (sm80+), which cuDNN convs use

    @property
    def tflops(self) -> float:
        """Training throughput under half-precision autocast at the likely rate (TFLOPS)."""
        return flops_per_second(self, "half", "likely") / 1e12


def flops_per_second(gpu: GPU, precision: str, rate: str = "likely") -> float:
    """FLOP/s of ``precision`` work (``"half"``: fp16/bf16 autocast; ``"fp32"``) on ``gpu`` at
    ``rate`` (:data:`RATES`): each precision at its own peak times :data:`UTILISATION`."""
    if rate not in RATES:
        raise ValueError(f"unknown rate {rate!r}: use one of {', '.join(RATES)}.")
    if precision == "half":
        return gpu.peak_tflops * 1e12 * UTILISATION["tensor"][rate]
    if precision != "fp32":
        raise ValueError(f"unknown precision {precision!r}: use 'half' or 'fp32'.")
    if gpu.tf32_tflops is not None:  # cuDNN convolutions run fp32 on TF32 tensor cores
        return gpu.tf32_tflops * 1e12 * UTILISATION["tensor"][rate]
    return gpu.fp32_tflops * 1e12 * UTILISATION["fp32"][rate]


#: Colab's GPUs and data-centre ones (vendor data sheets, dense, no sparsity).
GPUS: dict[str, GPU] = {
    "T4": GPU("NVIDIA T4", 15.0, 65.0, 8.1),  # Turing: no TF32
    "L4": GPU("NVIDIA L4", 22.5, 121.0, 30.3, 60.0),
    "V100": GPU("NVIDIA V100 16GB", 16.0, 125.0, 15.7),
    "A100": GPU("NVIDIA A100 40GB", 40.0, 312.0, 19.5, 156.0),
    "H100": GPU("NVIDIA H100 SXM", 80.0, 989.0, 67.0, 495.0),
    "H200": GPU("NVIDIA H200", 141.0, 989.0, 67.0, 495.0),
}


@dataclasses.dataclass(frozen=True)
class ModelCost:
    """Measured cost of one UNet at one resolution."""

    params: int
    flops: float  # per forward of one row
    act_bytes: float  # kept for backward per row, fp32
    const_bytes: float  # kept for backward whatever the batch (weights seen by the ops)

    def train_bytes(self, rows: int, half: bool) -> float:
        """Peak memory of one training step of ``rows`` rows (autocast ``half`` or fp32)."""
        act = self.act_bytes * (0.5 if half else 1.0)
        return self.params * TRAIN_BYTES_PER_PARAM + self.const_bytes + rows * act

    def inference_bytes(self, rows: int) -> float:
        """Peak memory of a no-grad forward of ``rows`` rows: fp32 weights plus the live
        activations, :data:`INFERENCE_ACT_FRACTION` of what a backward would keep."""
        return self.params * 4 + rows * self.act_bytes * INFERENCE_ACT_FRACTION


def unet_cost(model: Any, size: int) -> ModelCost:
    """Measure ``model`` (a ``UNet2DModel``) at ``size`` on the device it sits on: FLOPs of a
    one-row forward, and the bytes autograd keeps for backward per row (batch 2 minus batch 1)
    and whatever the batch. On the meta device this costs no memory and no compute."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    channels = model.config.in_channels

    def run(batch: int) -> Any:
        x = torch.zeros(batch, channels, size, size, device=device)
        return model(x, torch.zeros(batch, dtype=torch.long, device=device)).sample

    with FlopCounterMode(display=False) as counter:
        run(1)

    def saved(batch: int) -> int:
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run(batch)
        return total

    one, two = saved(1), saved(2)
    params = sum(p.numel() for p in model.parameters())
    return ModelCost(params, float(counter.get_total_flops()), two - one, 2 * one - two)


def _meta_unet_cost(config: tuple[tuple[str, Any], ...], size: int) -> ModelCost:
    import torch
    from diffusers import UNet2DModel

    with torch.device("meta"):
        model = UNet2DModel(**dict(config))
    return unet_cost(model, size)


@functools.lru_cache(maxsize=32)
def _cached_cost(config: tuple[tuple[str, Any], ...], size: int) -> ModelCost:
    return _meta_unet_cost(config, size)


def measure_model(config: dict[str, Any], size: int) -> ModelCost:
    """FLOPs, parameters and activation bytes of a ``UNet2DModel(**config)`` at ``size``
    (measured on the meta device; cached per configuration)."""
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in config.items()))
    return _cached_cost(frozen, size)


#: The UNet of ``CompVis/ldm-celebahq-256`` as diffusers builds it (its unet/config.json:
#: latents 3x64x64, channels 224-448-672-896, attention at the three lower resolutions).
LDM_CELEBAHQ_UNET: dict[str, Any] = dict(
    sample_size=64,
    in_channels=3,
    out_channels=3,
    layers_per_block=2,
    block_out_channels=(224, 448, 672, 896),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=32,
)


#: The VQ-f4 autoencoder of ``CompVis/ldm-celebahq-256`` as diffusers builds it (Rombach et
#: al.'s ``vq-f4`` config: ch 128, ch_mult 1-2-4, two residual blocks a stage, 8192 codes, 3
#: latent channels; diffusers adds the attention of the mid blocks): 55.3M parameters, about
#: 345 GFLOP to encode a 256 px image and 671 GFLOP to decode one, more than a UNet forward
#: (202 GFLOP): the encodes of training batches and the decodes of every sample are charged.
LDM_CELEBAHQ_VQ: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(128, 256, 512),
    layers_per_block=2,
    latent_channels=3,
    vq_embed_dim=3,
    num_vq_embeddings=8192,
    sample_size=256,
)
#: Bytes of the pretrained LDM's weights fetched from the hub (fp32 ``.bin`` files: the UNet's
#: 274M and the autoencoder's 55M parameters).
LDM_DOWNLOAD_GB = (274_056_163 + 55_322_782) * 4 / 1e9


@functools.lru_cache(maxsize=8)
def _vq_flops(config: tuple[tuple[str, Any], ...], size: int) -> tuple[float, float]:
    import torch
    from diffusers import VQModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        vq = VQModel(**dict(config))
    x = torch.zeros(1, vq.config.in_channels, size, size, device="meta")
    with torch.no_grad():
        with FlopCounterMode(display=False) as enc:
            h = vq.encode(x).latents
        with FlopCounterMode(display=False) as dec:
            vq.decode(h)
    return float(enc.get_total_flops()), float(dec.get_total_flops())


def autoencoder_flops(p: Profile) -> tuple[float, float]:
    """FLOPs to encode and to decode one image of the profile's latent autoencoder at
    ``p.ldm_image_size`` (the pretrained VQ-f4, or our own :func:`interpddpm.latent.
    make_autoencoder`), measured on the meta device."""
    if p.ldm_pretrained:
        config = dict(LDM_CELEBAHQ_VQ)
    else:
        import torch

        from .latent import make_autoencoder

        with torch.device("meta"):
            config = dict(make_autoencoder(p.ldm_latent_channels, p.ldm_image_size).config)
        config = {k: v for k, v in config.items() if not k.startswith("_")}
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in config.items()))
    return _vq_flops(frozen, p.ldm_image_size)


def pixel_model(p: Profile) -> ModelCost:
    """The profile's pixel-space UNet (``p.preset`` at ``p.image_size``)."""
    from .models import unet_preset

    return measure_model(unet_preset(p.preset, p.image_size), p.image_size)


def latent_model(p: Profile) -> ModelCost:
    """The profile's latent UNet: the pretrained LDM's, or ``p.ldm_preset`` on our latents."""
    from .models import unet_preset

    if p.ldm_pretrained:
        return measure_model(LDM_CELEBAHQ_UNET, 64)
    # our VQ autoencoder (latent.make_autoencoder) downsamples by 2: 16x16 latents at 32 px
    size = p.ldm_image_size // 2
    return measure_model(unet_preset(p.ldm_preset, size, p.ldm_latent_channels), size)


@dataclasses.dataclass(frozen=True)
class Work:
    """One piece of a chapter: rows through one model."""

    what: str
    model: str  # "pixel", "latent" or "inception"
    train_rows: float = 0.0  # rows trained (forward + backward)
    sample_rows: float = 0.0  # rows through a forward pass only
    peak_rows: int = 0  # rows in the largest training step (0: inference only)
    disk_bytes: float = 0.0  # what it leaves in the artifact cache (Drive on Colab)
    download_gb: float = 0.0  # fetched from the hub first (pretrained weights)
    # what its forward passes run in: "fp32", or "half" (the realism sets of a profile with
    # realism_half: realism.sample_images under autocast)
    precision: str = "fp32"


def _finetune_rows(p: Profile, k: int, steps: int, interpretable: bool = True) -> tuple[int, int]:
    """``(rows per step, steps)`` of a fine-tune with ``k`` players: the batch (its grand
    coalition is the L_DDPM forward) plus the other ``2**k - 1`` coalitions of the L_IE
    sub-batch."""
    sub = p.ie_sub_batch if k == 2 else p.ie_sub_batch_multi
    extra = sub * (2**k - 1) if interpretable else 0
    return p.batch_size + extra, steps


def _k2_k4_control(p: Profile, steps: int) -> list[tuple[str, int, int]]:
    # each concept with the book's recipe, and the profile's paper-recipe concepts: the same
    # rows per step
    runs = [(f"{c} (K = 2)", *_finetune_rows(p, 2, steps)) for c in ("eyes", "nose", "mouth")]
    runs += [(f"{c} (K = 2, paper)", *_finetune_rows(p, 2, steps)) for c in p.paper_recipe_concepts]
    runs.append(("eyes+nose+mouth (K = 4)", *_finetune_rows(p, 4, steps)))
    runs.append(("control", *_finetune_rows(p, 2, steps, interpretable=False)))
    return runs


#: Bytes a training checkpoint keeps per parameter (fp32 weights, EMA, Adam's two moments) and
#: how many checkpoints a run keeps (``TrainConfig.keep_checkpoints``; latent runs keep one).
CHECKPOINT_BYTES_PER_PARAM = 16
PIXEL_KEEP, LATENT_KEEP = 2, 1


def _run_bytes(cost: ModelCost, keep: int = PIXEL_KEEP) -> float:
    return cost.params * CHECKPOINT_BYTES_PER_PARAM * keep


def _dataset_work(size: int, *, local: bool = False, rows: int = CELEBAMASK_HQ_ROWS) -> Work:
    """The hub copy of CelebAMask-HQ downloaded and converted at ``size`` px: uint8 images and
    label maps, 4 bytes a pixel (kept on Drive; ``local``: on the runtime's own disk, see
    :func:`interpddpm.datasets.get_dataset`)."""
    disk = 0.0 if local else rows * 4.0 * size * size
    where = ", on the runtime's disk" if local else ""
    return Work(
        f"CelebAMask-HQ ({rows} rows) at {size} px: download and conversion{where}",
        "dataset",
        0,
        rows,
        disk_bytes=disk,
    )


def dataset_seconds(rows: float, rate: str = "likely") -> float:
    """Seconds to download the hub copy and convert ``rows`` rows (:data:`DATASET_PREP`)."""
    d = DATASET_PREP
    download = d["download_gb"][rate] / d["download_gb_per_s"][rate]
    return download + rows * d["row_seconds"][rate]


#: Faces chapter 10 shows and edits per model (its figures: two rows of four).
LDM_SHOWN = 8


def _latent_work(p: Profile) -> list[Work]:
    """Chapter 10's work, as its notebook does it: the autoencoder (trained, or the pretrained
    one fetched), the latent runs (their batches encoded once per run: the codec memoises the
    latents of ``ldm_dataset_length`` faces), ``ldm_grid`` samples of two models, resample
    edits of ``LDM_SHOWN`` of them (the nose, and exercise 10.3's mouth), and the locality
    protocol of three models over ``ldm_pairs`` pairs, every sample at ``ldm_ddim_steps``
    DDIM steps and decoded at ``ldm_image_size`` px; and, for a vanilla LDM trained here, its
    C2ST set (``fid_samples`` at ``fid_steps``) with as many reconstructions."""
    sub = max(1, min(p.ie_sub_batch, p.ldm_batch_size // 2))
    interp = p.ldm_batch_size + 3 * sub
    steps, shown = p.ldm_ddim_steps, min(LDM_SHOWN, p.ldm_grid)
    out = []
    if p.real_faces:  # the latent runs read their first rows at the LDM's size
        out.append(_dataset_work(p.ldm_image_size, local=True, rows=p.ldm_dataset_length))
    if p.ldm_pretrained:
        out.append(Work("pretrained LDM weights from the hub", "none", download_gb=LDM_DOWNLOAD_GB))
    elif p.ldm_autoencoder_steps > 0:
        rows = p.ldm_autoencoder_steps * AUTOENCODER_BATCH
        out.append(Work("autoencoder training", "autoencoder", rows, 0, AUTOENCODER_BATCH))
    runs = [(p.ldm_finetune_steps, interp), (p.ldm_finetune_steps, p.ldm_batch_size)]
    if p.ldm_baseline_steps > 0:
        runs.append((p.ldm_baseline_steps, p.ldm_batch_size))
        out.append(
            Work(
                "latent baseline training",
                "latent",
                p.ldm_baseline_steps * p.ldm_batch_size,
                0,
                p.ldm_batch_size,
            )
        )
    latent_bytes = _run_bytes(latent_model(p), LATENT_KEEP)
    out += [
        Work(
            "latent fine-tune (nose)",
            "latent",
            p.ldm_finetune_steps * interp,
            0,
            interp,
            latent_bytes,
        ),
        Work(
            "latent control",
            "latent",
            p.ldm_finetune_steps * p.ldm_batch_size,
            0,
            p.ldm_batch_size,
            latent_bytes,
        ),
        Work(
            "training batches encoded (fp32, once a face and run)",
            "encoder",
            0,
            sum(min(p.ldm_dataset_length, s * p.ldm_batch_size) for s, _ in runs) + shown,
        ),
        # samples of two models; nose and mouth edits of the shown ones
        Work("latent samples and edits", "latent", 0, 2 * (p.ldm_grid + 2 * shown) * steps),
        Work("latent locality", "latent", 0, 3 * 2 * p.ldm_pairs * steps),
        Work(
            "decoded images",
            "decoder",
            0,
            shown + 2 * (p.ldm_grid + 2 * shown) + 3 * 2 * p.ldm_pairs,
        ),
    ]
    if p.ldm_baseline_steps > 0:  # the C2ST of a vanilla LDM trained here (issue 28):
        # fid_samples at fid_steps, and as many real faces encoded and decoded
        out += [
            Work("C2ST set of the vanilla LDM", "latent", 0, p.fid_samples * p.fid_steps),
            Work("C2ST reconstructions encoded", "encoder", 0, p.fid_samples),
            Work("C2ST images decoded", "decoder", 0, 2 * p.fid_samples),
        ]
    return out


def _realism_precision(p: Profile) -> str:
    """What the profile's realism sets are sampled in (on a GPU: :func:`interpddpm.realism.
    sample_images` with ``half=p.realism_half``)."""
    return "half" if p.realism_half else "fp32"


def chapter_work(profile: str | Profile, chapter: str) -> list[Work]:
    """The UNet rows chapter ``chapter`` ("01".."12") runs on ``profile``, assuming the runs
    and sample sets of earlier chapters are cached (a chapter opened alone first trains what
    it lacks: add chapters 04 and 05)."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    # vanilla, control, three K = 2 models, the K = 4 model and the paper-recipe models
    models = 6 + len(p.paper_recipe_concepts)
    n = chapter[:2]
    if n in ("01", "02", "03"):
        return []  # toy games: seconds on any CPU
    if n == "04":
        out = []
        if p.real_faces:
            out.append(_dataset_work(p.image_size))
        return out + [
            Work(
                "baseline DDPM training",
                "pixel",
                p.baseline_steps * p.batch_size,
                0,
                p.batch_size,
                disk_bytes=_run_bytes(pixel_model(p)),
            ),
            Work("denoiser-game audits", "pixel", 0, 2 * p.audit_samples * 5 * 16),
        ]
    if n == "05":
        out = [
            Work(f"fine-tune {name}", "pixel", rows * steps, 0, rows, _run_bytes(pixel_model(p)))
            for name, rows, steps in _k2_k4_control(p, p.finetune_steps)
        ]
        out.append(Work("sample grids", "pixel", 0, models * p.n_grid * p.ddim_steps))
        out.append(
            Work(
                "C2ST/FID sample sets",
                "pixel",
                0,
                models * p.fid_samples * p.fid_steps,
                precision=_realism_precision(p),
            )
        )
        return out
    if n == "06":
        return [
            Work("edits and swaps", "pixel", 0, 4 * 6 * p.n_grid * p.ddim_steps),
            Work("audits", "pixel", 0, 6 * p.audit_samples * 5 * 4),
        ]
    if n == "07":
        # originals + one edit per concept, per model: vanilla, control and K = 4 edit three
        # concepts, each K = 2 model one
        sets = 3 * (1 + 3) + (3 + len(p.paper_recipe_concepts)) * (1 + 1)
        return [
            Work("locality protocol", "pixel", 0, sets * p.n_pairs * p.ddim_steps),
            Work("RePaint", "pixel", 0, REPAINT_FACTOR * 3 * p.baseline_pairs * p.ddim_steps),
            Work("blended diffusion", "pixel", 0, 3 * p.baseline_pairs * p.ddim_steps),
        ]
    if n == "08":
        out = [Work("denoising error by t", "pixel", 0, 2 * 256 * 10)]
        if p.fid_feature == "inception":
            out.append(Work("Inception features", "inception", 0, (2 + models) * p.fid_samples))
        return out
    if n == "09":
        return [
            Work(
                "inversion and reconstruction",
                "pixel",
                0,
                2 * 2 * p.inversion_images * (10 + 50 + 200),
            ),
            Work("real-image edits", "pixel", 0, 4 * p.inversion_images * 2 * p.ddim_steps),
        ]
    if n == "10":
        return _latent_work(p)
    if n == "11":
        return [Work("editor: inversions and edits", "pixel", 0, 12 * 2 * p.ddim_steps)]
    if n == "12":
        pairs = p.ablation_pairs * (1 + 3) * p.ablation_ddim_steps
        fid = p.ablation_fid_samples * p.ablation_ddim_steps
        return [
            Work("vanilla and default: locality at the ablation sizes", "pixel", 0, 2 * pairs),
            Work(
                "vanilla and default: FID/C2ST sets at the ablation sizes",
                "pixel",
                0,
                2 * fid,
                precision=_realism_precision(p),
            ),
        ]
    raise ValueError(f"unknown chapter {chapter!r}: use '01' .. '12'.")


@dataclasses.dataclass(frozen=True)
class ChapterEstimate:
    """Seconds (at the likely and the optimistic rate), peak GPU memory and disk of one
    chapter on one GPU."""

    chapter: str
    gpu: GPU
    seconds: float  # at the likely rate
    peak_bytes: float
    flops: float
    optimistic_seconds: float = 0.0
    disk_bytes: float = 0.0

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.gpu.memory_gib * 2**30


def _cost(p: Profile, kind: str) -> ModelCost | None:
    if kind == "pixel":
        return pixel_model(p)
    if kind == "latent":
        return latent_model(p)
    return None


def _row_flops(p: Profile, kind: str) -> float:
    """FLOPs of one row (one forward) of ``kind``'s model."""
    cost = _cost(p, kind)
    if cost is not None:
        return cost.flops
    if kind in ("encoder", "decoder", "autoencoder"):
        enc, dec = autoencoder_flops(p)
        return {"encoder": enc, "decoder": dec, "autoencoder": enc + dec}[kind]
    if kind == "none":
        return 0.0
    return INCEPTION_FLOPS


def work_seconds(p: Profile, w: Work, g: GPU, rate: str = "likely") -> float:
    """Seconds of one piece of work on ``g`` at ``rate``: training at the profile's training
    precision, sampling at the work's own precision (fp32, or half for the realism sets of a
    profile with ``realism_half``), the FID network and the latent autoencoder at fp32, plus
    the host-side seconds per step and per sampling call; a dataset's download and
    conversion, pretrained weights' download."""
    if w.model == "dataset":
        return dataset_seconds(w.sample_rows, rate)
    per_row = _row_flops(p, w.model)
    train = "fp32" if p.mixed_precision == "no" else "half"
    seconds = w.download_gb / DATASET_PREP["download_gb_per_s"][rate]
    seconds += 3 * w.train_rows * per_row / flops_per_second(g, train, rate)
    seconds += w.sample_rows * per_row / flops_per_second(g, w.precision, rate)
    if w.peak_rows:
        seconds += w.train_rows / w.peak_rows * STEP_SECONDS[rate]
    seconds += w.sample_rows / INFERENCE_ROWS * CALL_SECONDS[rate]
    return seconds


def run_step_seconds(
    p: Profile, config: Any, gpu: str | GPU = "T4", rate: str = "likely"
) -> float:
    """Seconds one training step of ``config`` (a :class:`interpddpm.training.TrainConfig`
    of profile ``p``) costs as the chapter estimates charge it: its UNet rows (the batch, plus
    the L_IE sub-batch's other coalitions, ``TrainConfig.ie_rows_per_sample`` a sample)
    forward and backward at the training precision, the host-side seconds of a step, and for
    a latent run the encodes of its batch (the first pass over the faces; later passes reuse
    them). What a run's measured pace is
    set against (:mod:`interpddpm.pace`)."""
    g = GPUS[gpu] if isinstance(gpu, str) else gpu
    kind = "latent" if config.autoencoder else "pixel"
    rows = config.batch_size + config.ie_sub_batch * config.ie_rows_per_sample()
    seconds = work_seconds(p, Work("one step", kind, rows, 0, rows), g, rate)
    if config.autoencoder:
        seconds += work_seconds(p, Work("its batch", "encoder", 0, config.batch_size), g, rate)
    return seconds


def chapter_estimate(
    profile: str | Profile, chapter: str, gpu: str | GPU = "T4"
) -> ChapterEstimate:
    """Time (likely and optimistic), peak memory and disk of ``chapter`` on ``gpu`` (a key of
    :data:`GPUS` or a GPU)."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    g = GPUS[gpu] if isinstance(gpu, str) else gpu
    half = p.mixed_precision != "no"
    flops, peak, disk = 0.0, 0.0, 0.0
    seconds = {rate: 0.0 for rate in RATES}
    for w in chapter_work(p, chapter):
        for rate in RATES:
            seconds[rate] += work_seconds(p, w, g, rate)
        disk += w.disk_bytes
        if w.model == "dataset":
            continue
        cost = _cost(p, w.model)
        per_row = _row_flops(p, w.model)
        flops += (3 * w.train_rows + w.sample_rows) * per_row
        if cost is not None and w.peak_rows:
            peak = max(peak, cost.train_bytes(w.peak_rows, half))
        elif cost is not None:
            peak = max(peak, cost.inference_bytes(INFERENCE_ROWS))
    return ChapterEstimate(
        chapter, g, seconds["likely"], peak, flops, seconds["optimistic"], disk
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


#: ``(profile name, chapter)`` of the chapter this process runs: set by :func:`estimate_line`,
#: which every chapter calls first; :func:`interpddpm.runs.ensure` reads it to refuse training
#: a run that the chapter's estimate does not include (issue 26).
CURRENT: dict[str, str] = {}


def estimate_line(
    profile: str | Profile, chapter: str, gpus: tuple[str, ...] = ("T4", "A100")
) -> str:
    """One line for the top of a chapter: its estimated time and peak memory per GPU (and
    the disk it adds). Records the chapter as this process's (:data:`CURRENT`)."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    CURRENT.update(profile=p.name, chapter=chapter[:2])
    if not chapter_work(p, chapter):
        return f"profile {p.name}: toy games only, seconds on any machine"
    if p.dataset == "toyfaces":  # tiny UNets: overheads, not FLOPs, set the pace on a CPU
        return (  # two short lines: the book shows outputs in a fixed-width box
            "time: the page 'Running this book' gives each chapter's measured\n"
            "time on 2 CPU cores (GPU estimates: the gpu and paper profiles)"
        )
    gpus = tuple(gpus) + tuple(g for g in _current_gpu() if g not in gpus)
    parts = []
    disk = 0.0
    for name in gpus:
        e = chapter_estimate(p, chapter, name)
        warn = "" if e.fits else " (does not fit)"
        disk = e.disk_bytes
        parts.append(
            f"{name} ~{_duration(e.seconds)} (at best {_duration(e.optimistic_seconds)}), "
            f"{e.peak_bytes / 2**30:.1f} GiB{warn}"
        )
    return (
        f"estimated on profile {p.name} (earlier chapters' runs cached):\n"
        + "; ".join(parts)
        + f"\ndisk: {disk / 1e9:.1f} GB more in the artifact cache (Drive on Colab)"
    )


def _current_gpu() -> tuple[str, ...]:
    """The :data:`GPUS` key of the GPU this process sees (by name), if any."""
    import torch

    if not torch.cuda.is_available():
        return ()
    return gpu_key(torch.cuda.get_device_name())


def gpu_key(device_name: str) -> tuple[str, ...]:
    """The :data:`GPUS` key named by a CUDA device name, matched as a whole word ("Tesla T4"
    is T4; "NVIDIA L40S" is not L4), or ``()``."""
    words = set(device_name.upper().replace("-", " ").split())
    return tuple(k for k in GPUS if k in words)[:1]


def profile_table(
    profile: str | Profile, gpus: tuple[str, ...] = ("T4", "A100")
) -> list[dict[str, Any]]:
    """Rows ``{chapter, <gpu> time, <gpu> memory, ...}`` for chapters 04-12."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    rows = []
    for chapter in [f"{i:02d}" for i in range(4, 13)]:
        row: dict[str, Any] = {"chapter": chapter}
        for name in gpus:
            e = chapter_estimate(p, chapter, name)
            row[f"{name} min"] = round(e.seconds / 60, 1)
            row[f"{name} min (optimistic)"] = round(e.optimistic_seconds / 60, 1)
            row[f"{name} GiB"] = round(e.peak_bytes / 2**30, 1)
        row["disk GB"] = round(e.disk_bytes / 1e9, 2)
        rows.append(row)
    return rows
