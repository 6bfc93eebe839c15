"""Tiny stand-ins for the gpu profile's hub assets, and what the notebook kernels install.

``tests/test_gpu_path.py`` runs chapters 04-12 on the gpu profile's code path on a CPU. The
gpu profile reads three hub repositories and one downloaded network; offline, this module
builds stand-ins for them in the formats the hub serves:

- ``v-xchen-v/celebamask_hq``: a few hundred procedural faces with 19-part masks numbered by the
  hub copy's own ``id2label.json`` (skin is id 4, not BiSeNet's 1), in a Hugging Face cache laid
  out as ``datasets`` leaves it after one online ``load_dataset`` (see :func:`build_dataset`);
- ``vivym/face-parsing-bisenet``: ``79999_iter.pth``, a state dict of
  :class:`interpddpm.parsing.BiSeNet` whose weights are set by hand so that it labels every
  pixel with the part whose colour is nearest (a "colour-prototype" BiSeNet: IoU 0.5-0.7 for
  eyes, nose and mouth on the stand-in faces, and generated faces have parsable concepts);
- ``CompVis/ldm-celebahq-256``: an ``LDMPipeline`` folder (tiny random UNet and VQ-f4
  autoencoder, DDIM scheduler) with ``.bin`` weights and a vqvae config without
  ``scaling_factor``;
- Inception-v3 of torchmetrics' FID: replaced in the kernels by a small fixed conv net.

:func:`install` runs at the start of every notebook kernel (an IPython startup file): it
registers the test profile and a tiny UNet preset with the gpu preset's block types, swaps the
FID feature network, gives BiSeNet 256 px inputs (:data:`PARSER_INPUT`), and audits devices:
every call of a diffusers ``UNet2DModel`` or ``VQModel`` (forward, encode, decode), a face
parser or the FID feature network must find the module placed by
:func:`interpddpm.devices.place` on the profile's device (or running inside a placed module,
e.g. a UNet inside a placed ``HybridDenoiser``, the feature network inside the placed FID
metric; modules on the ``meta`` device, which compute nothing, are skipped).
Violations, and the image rows each model class ran, go to a JSON-lines file the test reads.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import io
import json
import os
import shutil
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

#: Environment variables through which the test configures the kernels.
ENV_AUDIT = "INTERPDDPM_TEST_DEVICE_AUDIT"
#: The test profile: the gpu profile's code path at smoke sizes.
PROFILE_NAME = "gpu-standin"
#: A tiny UNet preset with the block types of the gpu profile's preset (attention at 1/4 size).
PRESET = "gpu-standin"
#: Pixel models' image size: 32, not the gpu profile's 64 (4.7x cheaper UNet forwards on a
#: CPU; the 64 px run of chapters 04-12 took 9 minutes on two busy cores).
IMAGE_SIZE = 32
#: Image sizes of the stand-in LDM pipeline: pixels and latent grid (a VQ-f4 like CompVis').
LDM_IMAGE_SIZE, LDM_FACTOR = 64, 4
#: Input size of the BiSeNet parser in the kernels: 256 px, not face-parsing.PyTorch's 512
#: (4x cheaper on a CPU, where it dominated the run; at 32 px images each cell of its 1/8
#: feature map still sees one pixel). Resize, normalisation and 19 -> 12 merge are unchanged.
PARSER_INPUT = 256
#: Width of the stand-in FID feature vectors (Inception-v3's pool3 layer has 2048).
FID_FEATURES = 32
#: Commits of the hub repositories (any 40 hex digits work; the dataset's is the real one's).
DATASET_COMMIT = "79e5ac228d46121591e20313f85e1e01122810ad"
BISENET_COMMIT = "0" * 39 + "1"
LDM_COMMIT = "0" * 39 + "2"
N_FACES = 520  # chapters 04 and 08 ask for 256 held-out faces at once: the last half (260)
FACE_SIZE, MASK_SIZE = 128, 64  # CelebAMask-HQ: 1024 px photographs, 512 px masks

# Colours (RGB 0..255) of the parts of the stand-in faces, by the book's class; the
# colour-prototype BiSeNet assigns each pixel to the nearest one.
PART_COLOURS: dict[str, tuple[int, int, int]] = {
    "background": (40, 60, 110),
    "skin": (225, 180, 140),
    "eyebrows": (95, 60, 20),
    "eyes": (30, 140, 230),
    "ears": (190, 110, 190),
    "nose": (250, 120, 20),
    "mouth": (110, 0, 40),
    "lips": (215, 30, 70),
    "neck": (160, 170, 90),
    "cloth": (30, 160, 80),
    "hair": (15, 10, 10),
    "hat": (120, 60, 230),
}


# ------------------------------------------------------------------------------- profile
def sizes_from_smoke() -> dict[str, Any]:
    """The smoke profile's sizes (steps, batches, sample counts): every field that is not a
    code-path choice (dataset, model, parser, FID features, pretrained LDM, precision,
    checkpointing, recipe) and not the name."""
    from interpddpm.profiles import PROFILES

    code_path = {
        "name",
        "dataset",
        "image_size",
        "preset",
        "mixed_precision",
        "checkpoint_minutes",
        "baseline_lr",
        "beta_schedule",
        "snr_gamma",
        "finetune_lr",
        "dilation",
        "parser",
        "fid_feature",
        "realism_half",  # asked for on the gpu profile; the stand-in's CPU samples in fp32
        "ablation_record",
        "ldm_pretrained",
        "ldm_image_size",
        "ldm_latent_channels",
        "ldm_autoencoder_steps",
        "ldm_preset",
        "ldm_baseline_steps",
        "extra",
    }
    smoke = PROFILES["smoke"]
    return {
        f.name: getattr(smoke, f.name) for f in dataclasses.fields(smoke) if f.name not in code_path
    }


def standin_profile() -> Any:
    """``PROFILES["gpu"]`` with the smoke sizes, the tiny preset, 32 px images and the stand-in
    LDM's size."""
    from interpddpm.profiles import PROFILES

    return dataclasses.replace(
        PROFILES["gpu"],
        name=PROFILE_NAME,
        image_size=IMAGE_SIZE,
        preset=PRESET,
        ldm_image_size=LDM_IMAGE_SIZE,
        **sizes_from_smoke(),
    )


def tiny_preset() -> dict[str, Any]:
    """UNet2DModel arguments: the block types of the gpu profile's preset (self-attention at
    1/4 size) at tiny widths (the real one costs 13 to 46 GFLOP a forward)."""
    from interpddpm.models import UNET_PRESETS
    from interpddpm.profiles import PROFILES

    gpu = UNET_PRESETS[PROFILES["gpu"].preset]
    return dict(
        sample_size=IMAGE_SIZE,
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=8,
        down_block_types=gpu["down_block_types"],
        up_block_types=gpu["up_block_types"],
    )


def register_profile() -> Any:
    """Add the test profile to ``interpddpm.profiles.PROFILES`` and the tiny preset to
    ``interpddpm.models.UNET_PRESETS`` (in this process); returns the profile."""
    from interpddpm import models, profiles

    models.UNET_PRESETS[PRESET] = tiny_preset()
    profile = standin_profile()
    profiles.PROFILES[PROFILE_NAME] = profile
    return profile


# ------------------------------------------------------------------------------- hub cache
def _snapshot(hub: Path, repo_type: str, repo_id: str, commit: str) -> Path:
    """The snapshot folder of ``repo_id`` in a huggingface_hub cache, with ``refs/main``
    pointing at ``commit`` (what ``hf_hub_download`` resolves offline)."""
    root = hub / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def _ellipse(h: int, w: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    u, v = (xx + 0.5) / w, (yy + 0.5) / h
    return ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2 <= 1


def face_parts(rng: np.random.Generator, size: int = FACE_SIZE) -> np.ndarray:
    """A face-shaped map ``[size, size]`` of CelebAMask-HQ part NAMES' hub ids (painter's
    order: background, cloth, neck, hair, ears, skin, hat, brows, eyes, nose, lips, mouth)."""
    from interpddpm.datasets import CELEBAMASK_HQ_ID2LABEL

    ids = {name: int(i) for i, name in CELEBAMASK_HQ_ID2LABEL.items()}
    s = size
    out = np.full((s, s), ids["background"], dtype=np.uint8)
    cx, cy = 0.5 + rng.uniform(-0.04, 0.04), 0.5 + rng.uniform(-0.03, 0.03)
    k = rng.uniform(0.9, 1.1)  # face scale
    yy, xx = np.mgrid[0:s, 0:s]
    u, v = (xx + 0.5) / s, (yy + 0.5) / s
    out[v > 0.86] = ids["cloth"]
    out[(abs(u - cx) < 0.09 * k) & (v > cy + 0.15) & (v <= 0.86)] = ids["neck"]
    out[_ellipse(s, s, cx, cy - 0.06, 0.31 * k, 0.33 * k)] = ids["hair"]
    for side, name in ((-1, "l_ear"), (1, "r_ear")):
        out[_ellipse(s, s, cx + side * 0.235 * k, cy, 0.045 * k, 0.08 * k)] = ids[name]
    out[_ellipse(s, s, cx, cy + 0.02, 0.23 * k, 0.29 * k)] = ids["skin"]
    if rng.uniform() < 0.15:
        out[(v < cy - 0.2 * k) & _ellipse(s, s, cx, cy - 0.2, 0.34 * k, 0.2 * k)] = ids["hat"]
    # cartoon proportions: parts a few pixels wide even at 32 px
    for side, eye, brow in ((-1, "l_eye", "l_brow"), (1, "r_eye", "r_brow")):
        ex = cx + side * 0.1 * k
        out[(abs(u - ex) < 0.065 * k) & (abs(v - (cy - 0.14 * k)) < 0.022 * k)] = ids[brow]
        out[_ellipse(s, s, ex, cy - 0.06 * k, 0.07 * k, 0.05 * k)] = ids[eye]
    out[_ellipse(s, s, cx, cy + 0.05 * k, 0.055 * k, 0.085 * k)] = ids["nose"]
    my = cy + 0.18 * k
    lips = _ellipse(s, s, cx, my, 0.11 * k, 0.055 * k)
    out[lips & (v < my)] = ids["u_lip"]
    out[lips & (v >= my)] = ids["l_lip"]
    out[(abs(u - cx) < 0.08 * k) & (abs(v - my) < 0.015 * k)] = ids["mouth"]
    return out


def face_image(parts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The RGB uint8 photograph ``[H, W, 3]`` of a part map: each part's colour, a little
    shading and noise (the colour-prototype parser must still read it)."""
    from interpddpm.datasets import CELEBAMASK_HQ_ID2LABEL
    from interpddpm.parsing import PART_TO_TOY
    from interpddpm.toyfaces import LABELS

    lut = np.zeros((len(CELEBAMASK_HQ_ID2LABEL), 3), dtype=np.float64)
    for i, name in CELEBAMASK_HQ_ID2LABEL.items():
        lut[int(i)] = PART_COLOURS[LABELS[PART_TO_TOY[name]]]
    img = lut[parts] + rng.uniform(-12, 12, size=3)  # a per-face tint
    h = parts.shape[0]
    img *= np.linspace(1.06, 0.94, h)[:, None, None]  # light from above
    img += rng.normal(0, 4, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def build_dataset(hf_home: Path, n: int = N_FACES, seed: int = 0, *, prepared: bool = True) -> Path:
    """A stand-in ``v-xchen-v/celebamask_hq`` in ``hf_home``; returns its parquet file.

    Two copies, as one online ``load_dataset`` leaves them: the repository snapshot in the hub
    cache (``README.md`` with the card's features, ``data/train-*.parquet``, ``id2label.json``:
    what ``hf_hub_download(..., "id2label.json", repo_type="dataset")`` reads), and the
    prepared Arrow copy in the datasets cache
    (``datasets/v-xchen-v___celebamask_hq/default/0.0.0/<hash>/``), which is the ONLY thing
    ``datasets`` >= 2.16 reads offline: with ``HF_HUB_OFFLINE=1`` ``load_dataset`` goes straight
    to its ``CachedDatasetModuleFactory`` and the packaged ``cache`` builder. The Arrow copy is
    made by the same packaged ``parquet`` builder, configured as the hub module factory
    configures it for this repository (config ``default``, dataset name ``celebamask_hq``).
    ``prepared=False``: the hub copy only, as ``hf download`` leaves it.
    """
    import datasets as hf
    from datasets.data_files import DataFilesDict
    from datasets.load import configure_builder_class
    from datasets.packaged_modules.parquet.parquet import Parquet, ParquetConfig
    from PIL import Image

    from interpddpm.datasets import CELEBAMASK_HQ_ID2LABEL, CELEBAMASK_HQ_REPO

    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        parts = face_parts(rng)
        jpeg, png = io.BytesIO(), io.BytesIO()
        Image.fromarray(face_image(parts, rng)).save(jpeg, format="JPEG", quality=95)
        mask = Image.fromarray(parts).resize((MASK_SIZE, MASK_SIZE), Image.NEAREST)
        mask.save(png, format="PNG")  # mode "L": one id per pixel
        images.append({"bytes": jpeg.getvalue(), "path": None})
        labels.append({"bytes": png.getvalue(), "path": None})
    features = hf.Features({"image": hf.Image(), "label": hf.Image()})
    table = hf.Dataset.from_dict({"image": images, "label": labels}, features=features)

    snap = _snapshot(hf_home / "hub", "dataset", CELEBAMASK_HQ_REPO, DATASET_COMMIT)
    parquet = snap / "data" / "train-00000-of-00001.parquet"
    parquet.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(parquet))
    (snap / "id2label.json").write_text(json.dumps(CELEBAMASK_HQ_ID2LABEL, indent=2))
    (snap / "README.md").write_text(
        "---\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n"
        "  - name: label\n    dtype: image\n  splits:\n  - name: train\n"
        f"    num_examples: {n}\nconfigs:\n- config_name: default\n  data_files:\n"
        "  - split: train\n    path: data/train-*\n---\n"
    )

    if not prepared:
        return parquet
    # the builder the hub factory would configure, with the snapshot's file as its data (a
    # repo_id would demand hf:// paths): it writes <cache>/celebamask_hq/default/0.0.0/<hash>,
    # moved below to the folder a hub load writes, <cache>/v-xchen-v___celebamask_hq/...
    data_files = DataFilesDict.from_patterns({"train": ["data/train-*"]}, base_path=str(snap))
    builder_cls = configure_builder_class(
        Parquet,
        builder_configs=[ParquetConfig(name="default", data_files=data_files)],
        default_config_name="default",
        dataset_name="celebamask_hq",
    )
    cache = hf_home / "datasets"
    builder = builder_cls(cache_dir=str(cache), dataset_name="celebamask_hq", hash=DATASET_COMMIT)
    builder.download_and_prepare()
    namespace = CELEBAMASK_HQ_REPO.split("/")[0]
    shutil.move(cache / "celebamask_hq", cache / f"{namespace}___celebamask_hq")
    return parquet


# ------------------------------------------------------------------------------- BiSeNet
def colour_prototype_bisenet(sharpness: float = 40.0) -> nn.Module:
    """A :class:`interpddpm.parsing.BiSeNet` that labels each pixel by the nearest part colour.

    With BatchNorms set to identities (plus offsets that keep every activation positive, so
    ReLUs pass it unchanged) and the residual branches zeroed, the ResNet passes the
    ImageNet-normalised RGB through to the 1/8 features; the context path outputs zeros; the
    fusion and output convolutions pass the colour (and a constant) to the 1x1 classifier,
    whose rows are nearest-centroid scores ``s (c_k . x - |c_k|^2 / 2)``, ``x`` the RGB in
    [0, 1]. One BiSeNet id per book class gets its prototype; the others never win.
    """
    from interpddpm.parsing import (
        _IMAGENET_MEAN,
        _IMAGENET_STD,
        BISENET_CLASSES,
        PART_TO_TOY,
        BiSeNet,
    )
    from interpddpm.toyfaces import LABELS

    net = BiSeNet(19).eval()
    offset = 4.0  # ImageNet-normalised values are >= -2.2: + 4 keeps them positive
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.bias.zero_()
                module.running_mean.zero_()
                module.running_var.fill_(1.0 - module.eps)  # (x - 0) / sqrt(var + eps) = x

        def copy_rgb(conv: nn.Conv2d, shift: int = 0) -> None:  # channel c -> channel c
            k = conv.kernel_size[0] // 2 + shift  # the centre tap, shifted
            for c in range(3):
                conv.weight[c, c, k, k] = 1.0

        res = net.cp.resnet
        # feature cell i of the 1/8 map reads input pixel 8 i + 3 (the max-pool adds +-2):
        # the middle of an 8-pixel block, so every cell sees one image pixel, not an edge
        copy_rgb(res.conv1, shift=3)
        res.bn1.bias[:3] = offset
        for layer in (res.layer2, res.layer3, res.layer4):  # the stride-2 projections
            copy_rgb(layer[0].downsample[0])
        ffm = net.ffm.convblk
        copy_rgb(ffm.conv)
        ffm.bn.bias[3] = 1.0  # a constant channel
        head = net.conv_out.conv
        copy_rgb(head.conv)
        head.conv.weight[3, 3, 1, 1] = 1.0
        # after the FFM's attention (sigmoid(0) = 0.5): f_c = 1.5 (z_c + offset), f_3 = 1.5,
        # z_c = (x_c - mean_c) / std_c
        mean, std = torch.tensor(_IMAGENET_MEAN), torch.tensor(_IMAGENET_STD)
        out = net.conv_out.conv_out.weight  # [19, 256, 1, 1]
        taken: set[str] = set()
        for k, part in enumerate(BISENET_CLASSES):
            book = LABELS[PART_TO_TOY[part]]
            if book in taken:
                out[k, 3, 0, 0] = -1e3  # a second id of the same class: never chosen
                continue
            taken.add(book)
            colour = torch.tensor(PART_COLOURS[book], dtype=torch.float32) / 255
            # x_c = (f_c / 1.5 - offset) * std_c + mean_c
            out[k, :3, 0, 0] = sharpness * colour * std / 1.5
            const = (colour * (mean - offset * std)).sum() - colour.pow(2).sum() / 2
            out[k, 3, 0, 0] = sharpness * const / 1.5
    return net


def build_bisenet(hf_home: Path) -> Path:
    """``vivym/face-parsing-bisenet``'s ``79999_iter.pth`` (a torch state dict) in the hub
    cache, holding :func:`colour_prototype_bisenet`'s weights."""
    from interpddpm.parsing import BISENET_FILENAME, BISENET_REPO

    snap = _snapshot(hf_home / "hub", "model", BISENET_REPO, BISENET_COMMIT)
    torch.save(colour_prototype_bisenet().state_dict(), snap / BISENET_FILENAME)
    return snap / BISENET_FILENAME


# ------------------------------------------------------------------------------- LDM
def build_ldm(hf_home: Path, tmp: Path) -> Path:
    """A stand-in ``CompVis/ldm-celebahq-256`` pipeline in the hub cache: ``model_index.json``,
    ``unet/`` and ``vqvae/`` (random weights, ``.bin`` files; the vqvae config has no
    ``scaling_factor``, as the real one) and ``scheduler/`` (DDIM, scaled-linear betas
    0.0015-0.0195, no clipping). A random decoder paints every image nearly one flat colour,
    so chapter 10's parser finds no nose: its locality is undefined, and says so."""
    from diffusers import DDIMScheduler, LDMPipeline, UNet2DModel, VQModel

    from interpddpm.budget import LDM_CELEBAHQ_VQ
    from interpddpm.profiles import PROFILES

    repo = PROFILES["gpu"].ldm_pretrained
    torch.manual_seed(0)
    vqvae = VQModel(  # CompVis' VQ-f4 (budget's copy of its config), shrunk
        **{
            **LDM_CELEBAHQ_VQ,
            "block_out_channels": (8, 16, 16),
            "layers_per_block": 1,
            "num_vq_embeddings": 64,
            "norm_num_groups": 4,
            "sample_size": LDM_IMAGE_SIZE,
            "mid_block_add_attention": False,
        }
    )
    unet = UNet2DModel(
        sample_size=LDM_IMAGE_SIZE // LDM_FACTOR,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195, clip_sample=False
    )
    folder = tmp / "ldm"
    LDMPipeline(vqvae=vqvae, unet=unet, scheduler=scheduler).save_pretrained(
        folder, safe_serialization=False
    )
    config = folder / "vqvae" / "config.json"
    vq_config = json.loads(config.read_text())
    vq_config.pop("scaling_factor", None)  # absent from CompVis' config (the pitfall)
    config.write_text(json.dumps(vq_config, indent=2))
    snap = _snapshot(hf_home / "hub", "model", repo, LDM_COMMIT)
    shutil.copytree(folder, snap, dirs_exist_ok=True)
    return snap


def build_hub(hf_home: Path, tmp: Path) -> dict[str, Path]:
    """Every stand-in: the dataset, BiSeNet and the LDM pipeline."""
    return {
        "dataset": build_dataset(hf_home),
        "bisenet": build_bisenet(hf_home),
        "ldm": build_ldm(hf_home, tmp),
    }


# ------------------------------------------------------------------------------- kernels
class TinyInception(nn.Module):
    """The stand-in for torchmetrics' Inception-v3 FID features: a fixed random conv net
    (seeded, so every kernel builds the same one) pooled to ``num_features`` values. It takes
    what torchmetrics gives a custom feature network: float images in [0, 1]."""

    def __init__(self, num_features: int = FID_FEATURES) -> None:
        super().__init__()
        self.num_features = num_features
        gen = torch.Generator().manual_seed(2048)
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, num_features, 3, stride=2, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(images.float()))
        return torch.relu(self.conv2(x)).mean(dim=(2, 3))


def _install_fid_standin(record: Any) -> None:
    """Make ``FrechetInceptionDistance(feature=<int>)`` use :class:`TinyInception` (what
    :func:`interpddpm.realism.frechet_distance` builds for ``fid_feature="inception"``);
    networks passed as modules are left alone."""
    import torchmetrics.image.fid as fid

    original = fid.FrechetInceptionDistance

    class StandInFID(original):  # type: ignore[misc, valid-type]
        def __init__(self, feature: Any = 2048, **kwargs: Any) -> None:
            standin = None
            if isinstance(feature, int):
                record({"event": "inception-standin", "requested": feature})
                feature = standin = TinyInception()
            super().__init__(feature=feature, **kwargs)
            if standin is not None:
                # metric.update() calls it outside any forward: the audit asks its metric
                FID_OWNERS[standin] = weakref.ref(self)

    fid.FrechetInceptionDistance = StandInFID


#: Image rows each audited model class ran in this kernel (written when the kernel exits).
ROWS: collections.Counter = collections.Counter()
#: The FID metric of each stand-in feature network (the network is its submodule).
FID_OWNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _same_device(a: Any, b: Any) -> bool:
    """``"cuda"`` and ``"cuda:0"`` (the current GPU) are the same device."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (
        b.index if b.index is not None else current
    )


def _caller(depth: int = 3) -> str:
    """The innermost frames of interpddpm and of notebook cells: who called the model."""
    import traceback

    frames = [
        f"{Path(f.filename).name}:{f.lineno} {f.name}"
        for f in traceback.extract_stack()[:-3]
        if "/interpddpm/" in f.filename or "ipykernel" in f.filename
    ]
    return " <- ".join(reversed(frames[-depth:])) or "?"


def _install_face_audit(record: Any) -> None:
    """Record the on-page width of the faces of every figure the kernel prints (the inline
    backend prints each shown figure once): ``interpddpm.plotting.face_widths``."""
    from matplotlib.backend_bases import FigureCanvasBase

    from interpddpm.plotting import face_widths

    original = FigureCanvasBase.print_figure

    def print_figure(self: Any, *args: Any, **kwargs: Any) -> Any:
        widths = face_widths(self.figure)
        if widths:
            title = next((a.get_title() for a in self.figure.axes if a.get_title()), "")
            record({"event": "faces", "min_px": round(min(widths), 1), "title": title[:60]})
        return original(self, *args, **kwargs)

    FigureCanvasBase.print_figure = print_figure


def _install_device_audit(record: Any) -> None:
    """Record every call of an audited model that did not go through ``devices.place``."""
    from diffusers import UNet2DModel, VQModel

    from interpddpm import devices
    from interpddpm.parsing import BiSeNetParser, FaceParser

    audited = (UNet2DModel, VQModel, FaceParser, BiSeNetParser, TinyInception)
    stack: list[nn.Module] = []  # the modules whose forward is running (outermost first)

    def check(module: nn.Module, how: str) -> None:
        expected = str(devices.default_device())
        mark = devices.placed_on(module)
        param = devices.module_device(module)
        if param is not None and param.type == "meta":
            return  # shapes and FLOPs without weights or compute (interpddpm.budget)
        enclosing = [m for m in stack[:-1] if devices.placed_on(m) is not None]
        owner = FID_OWNERS.get(module)
        if owner is not None and owner() is not None:
            enclosing.append(owner())  # the FID metric that holds the feature network
        enclosing = [m for m in enclosing if devices.placed_on(m) is not None]
        problem = None
        if param is not None and not _same_device(param, expected):
            problem = f"parameters on {param}, profile device {expected}"
        elif mark is None and not enclosing:
            problem = "never placed (devices.place) and not inside a placed module"
        elif mark is not None and not _same_device(mark, expected):
            problem = f"placed on {mark}, profile device {expected}"
        if problem:
            record(
                {
                    "event": "device",
                    "model": type(module).__name__,
                    "call": how,
                    "problem": problem,
                    "inside": [type(m).__name__ for m in stack[:-1]],
                    "where": _caller(),
                }
            )

    def pre_hook(module: nn.Module, args: Any) -> None:
        stack.append(module)
        if isinstance(module, audited):
            check(module, "forward")
            first = args[0] if args else None
            if isinstance(first, torch.Tensor) and first.ndim == 4:
                ROWS[type(module).__name__] += int(first.shape[0])

    def post_hook(module: nn.Module, args: Any, output: Any) -> None:
        if stack and stack[-1] is module:
            stack.pop()

    torch.nn.modules.module.register_module_forward_pre_hook(pre_hook)
    torch.nn.modules.module.register_module_forward_hook(post_hook, always_call=True)

    # VQModel.encode / decode run its submodules, never VQModel.forward: audit them too
    for name in ("encode", "decode"):
        method = getattr(VQModel, name)

        def audited_method(self: Any, *args: Any, _m: Any = method, _n: str = name, **kw: Any):
            stack.append(self)
            try:
                check(self, _n)
                return _m(self, *args, **kw)
            finally:
                stack.pop()

        setattr(VQModel, name, audited_method)


def _install_parser_input() -> None:
    """``BiSeNetParser.from_pretrained()`` (what ``runs.parser`` calls) at :data:`PARSER_INPUT`."""
    from interpddpm.parsing import BiSeNetParser

    original = BiSeNetParser.from_pretrained.__func__

    def from_pretrained(cls: type, *args: Any, input_size: int = PARSER_INPUT, **kw: Any) -> Any:
        return original(cls, *args, input_size=input_size, **kw)

    BiSeNetParser.from_pretrained = classmethod(from_pretrained)


def install() -> None:
    """What a notebook kernel runs first (from its IPython startup file)."""
    audit = Path(os.environ[ENV_AUDIT])
    notebook = os.environ.get("INTERPDDPM_TEST_NOTEBOOK", "")

    def record(entry: dict[str, Any]) -> None:
        with audit.open("a") as f:
            f.write(json.dumps({"notebook": notebook, **entry}) + "\n")

    register_profile()
    _install_parser_input()
    _install_fid_standin(record)
    _install_device_audit(record)
    _install_face_audit(record)
    record({"event": "installed", "profile": PROFILE_NAME})
    atexit.register(lambda: record({"event": "rows", "rows": dict(ROWS)}))
