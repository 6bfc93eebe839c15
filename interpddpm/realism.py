"""Realism: Frechet distance between generated and real images (the paper's Table 2 uses FID).

FID needs a feature network. With network access, torchmetrics' Inception-v3 (``"inception"``,
the standard FID; its weights are downloaded at first use). Offline, on toy faces, the encoder
of the book's face parser (``"parser"``): a network trained on the same data, so the distance
is meaningful for comparing models on toy faces, but it is NOT comparable to published FIDs.
Every table in the book says which feature network it used.

Serves chapters 5, 8 and 12.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from . import memo
from .devices import native_bf16, place
from .memo import weights_digest
from .sampling import ddim_sample_batched, model_noise


class ParserFeatures(nn.Module):
    """The face parser's pooled encoder as a torchmetrics feature network.

    torchmetrics gives it images in [0, 1] (``normalize=True``); the parser expects [-1, 1].
    """

    def __init__(self, parser: Any) -> None:
        super().__init__()
        self.parser = parser
        dim = getattr(parser, "feature_dim", None)  # else ask the encoder (on its own device)
        self.num_features = int(
            dim if dim is not None else parser.encode(torch.zeros(1, 3, 32, 32)).shape[-1]
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.parser.encode(images.float() * 2 - 1)


def colour_spread(images: Tensor) -> float:
    """Mean over pixels of the standard deviation over R, G, B of images in [-1, 1] (mapped to
    [0, 1]): washed-out, greyish samples score low (issue 16; toy faces score about 0.1)."""
    return float(((images.clamp(-1, 1) + 1) / 2).std(dim=1).mean())


def frechet_distance(
    real: Tensor,
    fake: Tensor,
    *,
    feature: str = "parser",
    parser: Any = None,
    batch_size: int = 128,
) -> float:
    """FID between two image sets ``[N, 3, H, W]`` in [-1, 1] with the chosen feature network."""
    _check_sets(real, fake)
    metric = _feature_metric(feature, parser)
    dev = metric.device
    with torch.no_grad():
        for batch in real.split(batch_size):
            metric.update((batch.to(dev).clamp(-1, 1) + 1) / 2, real=True)
        for batch in fake.split(batch_size):
            metric.update((batch.to(dev).clamp(-1, 1) + 1) / 2, real=False)
        return float(metric.compute())


def _feature_metric(feature: str, parser: Any) -> Any:
    """torchmetrics' FID object with the chosen feature network, on the default device."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if feature == "parser":
        if parser is None:
            raise ValueError("feature='parser' needs parser=<a FaceParser> (runs.parser(profile)).")
        metric = FrechetInceptionDistance(feature=ParserFeatures(parser), normalize=True)
    elif feature == "inception":
        try:
            metric = FrechetInceptionDistance(feature=2048, normalize=True)
        except Exception as error:  # missing torch-fidelity or offline weights
            raise RuntimeError(
                "Inception FID needs torch-fidelity (`pip install 'interpddpm[gpu]'`, with "
                "torchvision) and network access for its weights at first use; offline, use "
                "feature='parser' (toy faces only)."
            ) from error
    else:
        raise ValueError(f"feature must be 'parser' or 'inception', got {feature!r}.")
    return place(metric)  # Inception on the GPU when there is one: 5.7 GFLOP per image


def _check_sets(real: Tensor, fake: Tensor) -> None:
    for name, x in (("real", real), ("fake", fake)):
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} images must be [N, 3, H, W], got {list(x.shape)}.")
        if x.shape[0] < 2:
            raise ValueError(
                f"{name}: FID needs at least 2 images (use hundreds), got {x.shape[0]}."
            )


def features(
    images: Tensor, *, feature: str = "parser", parser: Any = None, batch_size: int = 128
) -> Tensor:
    """The FID feature vectors (float64, CPU) of images ``[N, 3, H, W]`` in [-1, 1], exactly as
    torchmetrics' FID extracts them (its network and input conversion)."""
    return feature_sets([images], feature=feature, parser=parser, batch_size=batch_size)[0]


def feature_sets(
    sets: Sequence[Tensor], *, feature: str = "parser", parser: Any = None, batch_size: int = 128
) -> list[Tensor]:
    """:func:`features` of several image sets with one feature network (built, and for
    Inception loaded, once)."""
    metric = _feature_metric(feature, parser)
    out = []
    with torch.no_grad():
        for images in sets:
            parts = []
            for batch in images.split(batch_size):
                x = (batch.to(metric.device).clamp(-1, 1) + 1) / 2
                if not metric.used_custom_model:  # Inception takes bytes, as in metric.update
                    x = (x * 255).byte()
                parts.append(metric.inception(x).double().reshape(len(x), -1).cpu())
            out.append(torch.cat(parts))
    return out


def frechet_from_features(real: Tensor, fake: Tensor) -> float:
    """The FID of two feature sets ``[N, D]``: the *squared* Frechet (2-Wasserstein) distance of
    their Gaussian fits, ``|mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))``, with unbiased
    covariances (torchmetrics' FID on these features)."""
    real, fake = real.double(), fake.double()
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = torch.cov(real.T), torch.cov(fake.T)
    root = torch.linalg.eigvals(cov_r @ cov_f).sqrt().real.sum()
    return float((mu_r - mu_f).square().sum() + cov_r.trace() + cov_f.trace() - 2 * root)


def kernel_distance(real: Tensor, fake: Tensor) -> float:
    """KID (Binkowski et al. 2018): the unbiased squared MMD of two feature sets ``[N, D]``
    under the cubic polynomial kernel ``k(x, y) = (x . y / D + 1)^3``. Unbiased at any sample
    size (FID is not: it shrinks as N grows), so small sets can be compared."""
    real, fake = real.double(), fake.double()
    d = real.shape[1]
    k_rr = (real @ real.T / d + 1) ** 3
    k_ff = (fake @ fake.T / d + 1) ** 3
    k_rf = (real @ fake.T / d + 1) ** 3
    m, n = len(real), len(fake)
    xx = (k_rr.sum() - k_rr.diagonal().sum()) / (m * (m - 1))
    yy = (k_ff.sum() - k_ff.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2 * k_rf.mean())


#: Bootstrap resamples behind every realism interval (the same seeded index sets for every
#: model, so that the ratio of two models pairs their resamples: see :func:`realism_scores`).
N_BOOT = 200


def realism_scores(
    real_features: Tensor, fake_features: Tensor, *, n_boot: int = N_BOOT, seed: int = 0
) -> dict[str, Any]:
    """FID and KID of one feature set against the real one, each with ``n_boot`` bootstrap
    replicates (real and fake rows resampled with replacement from ``seed``).

    The replicates of two models scored with the same ``seed`` (and fake sets sampled from the
    same noises, as :func:`sample_images` does for every model) are paired: replicate ``b``
    resamples the same real images and the same noises for both, so elementwise ratios give
    the interval of the ratio of the two models (:func:`ratio_interval`). Bootstrap FID is
    biased upwards (a resample repeats images); in a ratio that bias largely cancels.
    """
    gen = torch.Generator().manual_seed(seed)
    m, n = len(real_features), len(fake_features)
    fid_b, kid_b = [], []
    for _ in range(n_boot):
        r = torch.randint(0, m, (m,), generator=gen)
        f = torch.randint(0, n, (n,), generator=gen)
        fid_b.append(frechet_from_features(real_features[r], fake_features[f]))
        kid_b.append(kernel_distance(real_features[r], fake_features[f]))
    return {
        "fid": frechet_from_features(real_features, fake_features),
        "kid": kernel_distance(real_features, fake_features),
        "fid_boot": fid_b,
        "kid_boot": kid_b,
    }


def ratio_interval(
    model: Sequence[float],
    reference: Sequence[float],
    level: float = 0.95,
    *,
    point: float | None = None,
) -> tuple[float, float]:
    """The ``level`` interval of ``model / reference`` from paired bootstrap replicates
    (:func:`realism_scores` with the same seed for both).

    Without ``point``: the replicates' percentile interval. With ``point`` (the ratio on the
    full sets): those percentiles moved by ``point - median``, so the interval keeps the
    bootstrap's spread and shape but sits on the estimate. Use it for FID: a resample repeats
    images, which raises FID, and raises the vanilla model's small FID relatively more, so raw
    bootstrap ratios sit below the full-set ratio (e.g. 7.47 with raw percentiles
    [5.42, 7.69] on the cpu record's reference row).
    """
    a = torch.tensor(list(model), dtype=torch.float64)
    b = torch.tensor(list(reference), dtype=torch.float64)
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(
            f"ratio_interval needs paired replicates of equal length >= 2, got {len(a)} and "
            f"{len(b)}: score both with realism_scores and the same n_boot and seed."
        )
    ratios = a / b
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = (float(x) for x in torch.quantile(ratios, q))
    if point is not None:
        shift = point - float(ratios.median())
        lo, hi = lo + shift, hi + shift
    return lo, hi


def sample_images(
    model: Any,
    n: int,
    *,
    seed: int = 0,
    num_inference_steps: int = 50,
    batch_size: int = 64,
    cache: str | os.PathLike | None = None,
    half: bool = False,
) -> Tensor:
    """``n`` DDIM samples of ``model`` from noise drawn with ``seed`` (the same for every model).

    ``cache``: a folder where the samples are saved under a key of the model's weights, ``n``,
    ``seed`` and the steps, and from where the same request is answered without sampling again
    (chapters 08 and 12 ask for the same FID sets of the same models). A corrupted cached set
    (its digest does not match) is sampled again, with a warning.

    ``half``: on a CUDA device the UNet runs under half-precision autocast (bf16 where the GPU
    has it natively, else fp16: several times a T4's fp32 rate, and a T4 has no TF32). Only for
    the realism sets (FID, KID, C2ST: statistics over many images); the locality pairs and
    every edit stay fp32. On a CPU it changes nothing: the same samples under the same cache
    key. Half sets are cached under a key of their own (:func:`sample_precision`).
    """
    precision = sample_precision(model, half)
    parts: list[Any] = [weights_digest(model), n, seed, num_inference_steps]
    if precision != "fp32":  # fp32 sets keep the key they always had
        parts.append(precision)
    if cache is None:
        return _sample(model, n, seed, num_inference_steps, batch_size, precision)
    return memo.cached(
        cache,
        "samples",
        parts,
        lambda: _sample(model, n, seed, num_inference_steps, batch_size, precision).cpu(),
        digests=parts[:1],
        what="sample set",
        valid=lambda saved: isinstance(saved, Tensor) and saved.shape[0] == n,
    )


#: Autocast dtypes of :func:`sample_images`' half precisions.
HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def sample_precision(model: Any, half: bool) -> str:
    """What :func:`sample_images` samples ``model`` in: ``"fp32"``, or with ``half`` on a CUDA
    device ``"bf16"`` (where it is native) or ``"fp16"``."""
    device = next(model.parameters()).device
    if not half or device.type != "cuda":
        return "fp32"
    return "bf16" if native_bf16(device) else "fp16"


def _sample(
    model: Any, n: int, seed: int, steps: int, batch_size: int, precision: str = "fp32"
) -> Tensor:
    x_T = model_noise(model, n, generator=torch.Generator().manual_seed(seed))
    dtype = HALF_DTYPES.get(precision)
    # the UNet's convolutions in half precision; DDIM's update stays in the latents' fp32
    half = torch.autocast("cuda", dtype=dtype) if dtype else contextlib.nullcontext()
    with half:
        x0 = ddim_sample_batched(model, x_T, num_inference_steps=steps, batch_size=batch_size)
    return x0.float()
