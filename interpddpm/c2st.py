"""Classifier two-sample test (C2ST, Lopez-Paz and Oquab, ICLR 2017): can a small network tell
generated images from real ones?

A realism measure a reader understands without the book's feature network: train a small CNN
from scratch to label images "real" or "generated" and report how often it is right on images it
did not train on. Chance (0.5) means the two sets cannot be told apart; 1.0 means every sample
gives itself away. Unlike FID it needs no pretrained features. Under the null hypothesis (same
distribution) the held-out accuracy is binomial around 0.5 whatever the sample size; under the
alternative it is *not* free of the sample size: with more images the classifier trains on more
examples, learns the difference better and scores higher. Compare C2STs only at the same number
of images per set, the same classifier settings and the same sampler.

The estimate is *cross-fitted*: the images of each set are split into ``folds`` parts, a fresh
classifier is trained on all folds but one and tested on the one left out, so every image is
tested exactly once, by a classifier that never saw it. The interval is the Wilson score
interval of the pooled held-out accuracy: it covers the sampling of the held-out predictions
given the trained classifiers, not the variance of the training itself (the seed's
initialisation, fold split and batch order), so it is too narrow by that much. Rerun with other
``seed`` values to see the training's share.

Serves chapters 5 and 8 (can a classifier tell samples from data).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from statistics import NormalDist

import torch
from torch import Tensor, nn

from . import memo
from .devices import default_device

__all__ = ["C2STResult", "c2st", "c2st_classifier", "wilson_interval"]


@dataclass(frozen=True)
class C2STResult:
    """Held-out accuracy of the real-vs-generated classifier, with its interval."""

    accuracy: float
    low: float
    high: float
    fold_accuracies: tuple[float, ...]
    n_per_set: int
    confidence: float

    def __str__(self) -> str:
        return (
            f"{self.accuracy:.3f} [{self.low:.3f}, {self.high:.3f}] "
            f"({2 * self.n_per_set} held-out predictions)"
        )

    def as_row(self) -> dict[str, float]:
        """The three numbers a table shows."""
        return {"C2ST": self.accuracy, "C2ST low": self.low, "C2ST high": self.high}


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ``correct / total``."""
    if total <= 0 or not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total and total > 0, got {correct}/{total}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def c2st_classifier(channels: int, width: int = 16) -> nn.Module:
    """The small CNN of the test: three strided convolutions, global pooling, one logit."""
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
        nn.SiLU(),
        nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
        nn.SiLU(),
        nn.Conv2d(4 * width, 4 * width, 3, stride=2, padding=1),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, 1),
    )


def _check(real: Tensor, fake: Tensor, folds: int) -> int:
    for name, x in (("real", real), ("fake", fake)):
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must be an image tensor [N, C, H, W], got {_shape(x)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} holds NaN or infinite values: check the sampler's output")
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(
            f"real and fake images differ in shape: {tuple(real.shape[1:])} vs "
            f"{tuple(fake.shape[1:])} (resize one set to the other's size first)"
        )
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an int >= 2, got {folds!r}")
    n = min(len(real), len(fake))
    if n < 4 * folds:
        raise ValueError(
            f"need at least {4 * folds} images in each set for {folds} folds, got "
            f"{len(real)} real and {len(fake)} fake"
        )
    return n


def _shape(x: object) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def c2st(
    real: Tensor,
    fake: Tensor,
    *,
    folds: int = 4,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    width: int = 16,
    seed: int = 0,
    confidence: float = 0.95,
    device: str | torch.device | None = None,
    cache: str | os.PathLike | None = None,
) -> C2STResult:
    """Cross-fitted classifier two-sample test of ``real`` against ``fake`` images [N, C, H, W]
    (same C, H, W; any value range, the same for both).

    The first ``n = min(len(real), len(fake))`` images of each set are used, so the two classes
    are balanced and chance is exactly 0.5. Deterministic for a given ``seed`` (the fold split,
    the initialisation and the batch order); the global random state is left untouched.
    The classifiers train on ``device`` (default :func:`interpddpm.devices.default_device`).

    ``cache``: a folder where the result is saved under a key of the two image sets and every
    setting (:func:`interpddpm.memo.cached`), so a chapter that scores the same sets again
    (chapters 05 and 08) reads it.
    """
    n = _check(real, fake, folds)
    dev = default_device() if device is None else torch.device(device)
    if cache is not None:
        settings = dict(folds=folds, epochs=epochs, batch_size=batch_size, lr=lr, width=width)
        settings |= dict(seed=seed, confidence=confidence)
        parts = ["c2st", memo.tensors_digest(real[:n], fake[:n]), settings, dev.type]
        saved = memo.cached(
            cache,
            "c2st",
            parts,
            lambda: dataclasses.asdict(c2st(real, fake, **settings, device=dev)),
            digests=[],  # images, not a network: such an entry is never recorded
            what="C2ST result",
            valid=lambda saved: isinstance(saved, dict) and saved.get("n_per_set") == n,
        )
        return C2STResult(**{**saved, "fold_accuracies": tuple(saved["fold_accuracies"])})
    x = torch.cat([real[:n], fake[:n]]).detach().float().cpu()
    y = torch.cat([torch.zeros(n), torch.ones(n)])
    gen = torch.Generator().manual_seed(seed)
    # stratified folds: each fold holds the same number of real and generated images
    fold_of = torch.empty(2 * n, dtype=torch.long)
    for cls in (0, 1):
        order = torch.randperm(n, generator=gen) + cls * n
        fold_of[order] = torch.arange(n) % folds
    correct = torch.zeros(2 * n, dtype=torch.bool)
    for fold in range(folds):
        train, test = fold_of != fold, fold_of == fold
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1000 + fold)
            net = c2st_classifier(x.shape[1], width).to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        xs, ys = x[train], y[train]
        net.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(xs), generator=gen).split(batch_size):
                loss = nn.functional.binary_cross_entropy_with_logits(
                    net(xs[idx].to(dev)).squeeze(1), ys[idx].to(dev)
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            logits = torch.cat([net(b.to(dev)).squeeze(1).cpu() for b in x[test].split(256)])
        correct[test] = (logits > 0) == y[test].bool()
    per_fold = tuple(float(correct[fold_of == f].float().mean()) for f in range(folds))
    k = int(correct.sum())
    low, high = wilson_interval(k, 2 * n, confidence)
    return C2STResult(k / (2 * n), low, high, per_fold, n, confidence)
