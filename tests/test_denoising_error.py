"""The denoising error by timestep: exact on the two predictors whose error is known (zero
noise scores the noise's variance, 1; the ideal denoiser of a one-image dataset scores 0), and
the same noise for every model compared."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler

from interpddpm.denoising_error import denoising_error_by_t
from interpddpm.models import make_unet


class ZeroNoise(torch.nn.Module):
    scheduler_config = dict(DDPMScheduler().config)

    def forward(self, x, t):
        return SimpleNamespace(sample=torch.zeros_like(x))


class IdealDenoiser(torch.nn.Module):
    """Knows the data is one image x0, so eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""

    scheduler_config = dict(DDPMScheduler().config)

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.x0 = x0
        self.abar = DDPMScheduler().alphas_cumprod.double()

    def forward(self, x, t):
        a = self.abar[t].view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(x.double() - a.sqrt() * self.x0) / (1 - a).sqrt())


def test_predicting_zero_scores_the_variance_of_the_noise() -> None:
    images = torch.rand(64, 3, 16, 16) * 2 - 1
    errors = denoising_error_by_t(ZeroNoise(), images, (10, 500, 990))
    assert list(errors) == [10, 500, 990]
    # the same noise at every t: exactly the same error, mean eps^2 ~ 1 (sd 0.0064 here)
    assert errors[10] == errors[500] == errors[990] == pytest.approx(1.0, abs=0.03)


def test_the_ideal_denoiser_scores_zero() -> None:
    x0 = torch.rand(1, 3, 16, 16) * 2 - 1
    errors = denoising_error_by_t(IdealDenoiser(x0), x0.expand(8, -1, -1, -1), batch_size=3)
    assert max(errors.values()) < 1e-8, errors


def test_a_unet_is_measured_reproducibly_and_bad_input_is_explained() -> None:
    torch.manual_seed(0)
    unet = make_unet("tiny", sample_size=16)
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    a = denoising_error_by_t(unet, images, (50, 900), batch_size=4)
    assert a == denoising_error_by_t(unet, images, (50, 900), batch_size=4)
    assert all(v > 0 and v == v for v in a.values())
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 1000\)"):
        denoising_error_by_t(unet, images, (1000,))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        denoising_error_by_t(unet, images[0])
