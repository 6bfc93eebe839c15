"""Realism: Frechet distance between generated and real images (the paper's Table 2 uses FID).

FID needs a feature network. With network access, torchmetrics' Inception-v3 (``"inception"``,
the standard FID; its weights are downloaded at first use). Offline, on toy faces, the encoder
of the book's face parser (``"parser"``): a network trained on the same data, so the distance
is meaningful for comparing models on toy faces, but it is NOT comparable to published FIDs.
Every table in the book says which feature network it used.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .sampling import ddim_sample_batched, model_noise


class ParserFeatures(nn.Module):
    """The face parser's pooled encoder as a torchmetrics feature network.

    torchmetrics gives it images in [0, 1] (``normalize=True``); the parser expects [-1, 1].
    """

    def __init__(self, parser: Any) -> None:
        super().__init__()
        self.parser = parser
        self.num_features = int(parser.encode(torch.zeros(1, 3, 32, 32)).shape[-1])

    def forward(self, images: Tensor) -> Tensor:
        return self.parser.encode(images.float() * 2 - 1)


def frechet_distance(
    real: Tensor,
    fake: Tensor,
    *,
    feature: str = "parser",
    parser: Any = None,
    batch_size: int = 128,
) -> float:
    """FID between two image sets ``[N, 3, H, W]`` in [-1, 1] with the chosen feature network."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    for name, x in (("real", real), ("fake", fake)):
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} images must be [N, 3, H, W], got {list(x.shape)}.")
        if x.shape[0] < 2:
            raise ValueError(
                f"{name}: FID needs at least 2 images (use hundreds), got {x.shape[0]}."
            )
    if feature == "parser":
        if parser is None:
            raise ValueError("feature='parser' needs parser=<a FaceParser> (runs.parser(profile)).")
        metric = FrechetInceptionDistance(feature=ParserFeatures(parser), normalize=True)
    elif feature == "inception":
        try:
            metric = FrechetInceptionDistance(feature=2048, normalize=True)
        except Exception as error:  # missing torch-fidelity or offline weights
            raise RuntimeError(
                "Inception FID needs `pip install torch-fidelity` and network access for its "
                "weights at first use; offline, use feature='parser' (toy faces only)."
            ) from error
    else:
        raise ValueError(f"feature must be 'parser' or 'inception', got {feature!r}.")
    with torch.no_grad():
        for batch in real.split(batch_size):
            metric.update((batch.clamp(-1, 1) + 1) / 2, real=True)
        for batch in fake.split(batch_size):
            metric.update((batch.clamp(-1, 1) + 1) / 2, real=False)
        return float(metric.compute())


def sample_images(
    model: Any, n: int, *, seed: int = 0, num_inference_steps: int = 50, batch_size: int = 64
) -> Tensor:
    """``n`` DDIM samples of ``model`` from noise drawn with ``seed`` (the same for every model)."""
    x_T = model_noise(model, n, generator=torch.Generator().manual_seed(seed))
    return ddim_sample_batched(
        model, x_T, num_inference_steps=num_inference_steps, batch_size=batch_size
    )
