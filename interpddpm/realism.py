"""Realism: Frechet distance between generated and real images (the paper's Table 2 uses FID).

FID needs a feature network. With network access, torchmetrics' Inception-v3 (``"inception"``,
the standard FID; its weights are downloaded at first use). Offline, on toy faces, the encoder
of the book's face parser (``"parser"``): a network trained on the same data, so the distance
is meaningful for comparing models on toy faces, but it is NOT comparable to published FIDs.
Every table in the book says which feature network it used.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .artifacts import read_cached, read_tensors, write_tensors
from .devices import place
from .locks import locked
from .sampling import ddim_sample_batched, model_noise
from .training import json_digest


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
                "Inception FID needs torch-fidelity (`pip install 'interpddpm[gpu]'`, with "
                "torchvision) and network access for its weights at first use; offline, use "
                "feature='parser' (toy faces only)."
            ) from error
    else:
        raise ValueError(f"feature must be 'parser' or 'inception', got {feature!r}.")
    metric = place(metric)  # Inception on the GPU when there is one: 5.7 GFLOP per image
    dev = metric.device
    with torch.no_grad():
        for batch in real.split(batch_size):
            metric.update((batch.to(dev).clamp(-1, 1) + 1) / 2, real=True)
        for batch in fake.split(batch_size):
            metric.update((batch.to(dev).clamp(-1, 1) + 1) / 2, real=False)
        return float(metric.compute())


def weights_digest(model: nn.Module) -> str:
    """sha256 of a model's parameters and buffers (names, shapes, dtypes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def sample_images(
    model: Any,
    n: int,
    *,
    seed: int = 0,
    num_inference_steps: int = 50,
    batch_size: int = 64,
    cache: str | os.PathLike | None = None,
) -> Tensor:
    """``n`` DDIM samples of ``model`` from noise drawn with ``seed`` (the same for every model).

    ``cache``: a folder where the samples are saved under a key of the model's weights, ``n``,
    ``seed`` and the steps, and from where the same request is answered without sampling again
    (chapters 08 and 12 ask for the same FID sets of the same models). A corrupted cached set
    (its digest does not match) is sampled again, with a warning.
    """
    if cache is None:
        return _sample(model, n, seed, num_inference_steps, batch_size)
    key = json_digest([weights_digest(model), n, seed, num_inference_steps], 16)
    path = Path(cache) / f"samples-{key}.pt"
    # locked: a second process asking for the same set waits and reuses it
    with locked(path, wait=True, what="FID sample set"):
        saved = read_cached(path, read_tensors, what="sample set")
        if isinstance(saved, Tensor) and saved.shape[0] == n:
            return saved
        x0 = _sample(model, n, seed, num_inference_steps, batch_size)
        write_tensors(path, x0.cpu())  # atomic, with its digest (interpddpm.artifacts)
        return x0


def _sample(model: Any, n: int, seed: int, num_inference_steps: int, batch_size: int) -> Tensor:
    x_T = model_noise(model, n, generator=torch.Generator().manual_seed(seed))
    return ddim_sample_batched(
        model, x_T, num_inference_steps=num_inference_steps, batch_size=batch_size
    )
