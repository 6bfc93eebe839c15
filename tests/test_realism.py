"""FID with the parser's features, and DDIM reconstruction for real-image editing."""

from __future__ import annotations

import pytest
import torch

from interpddpm.editing import psnr, reconstruct
from interpddpm.models import make_unet
from interpddpm.parsing import FaceParser
from interpddpm.realism import ParserFeatures, frechet_distance, sample_images, weights_digest
from interpddpm.toyfaces import ToyFaces


@pytest.fixture(scope="module")
def parser() -> FaceParser:
    torch.manual_seed(0)
    return FaceParser().eval()


def test_fid_orders_distributions(parser) -> None:
    """Same distribution: small; faces with their pixels shuffled (same colours, no shapes) and
    uniform noise: larger. (The parser here is untrained: its GroupNorm features ignore global
    brightness, so a structural change is what any such network must see.)"""
    a, _ = ToyFaces(32, 300, seed=0).batch(range(300))  # n > feature dim: a usable covariance
    b, _ = ToyFaces(32, 300, seed=1).batch(range(300))
    same = frechet_distance(a, b, parser=parser)
    perm = torch.randperm(32 * 32, generator=torch.Generator().manual_seed(0))
    shuffled = b.flatten(2)[:, :, perm].reshape(b.shape)
    scrambled = frechet_distance(a, shuffled, parser=parser)
    noise = frechet_distance(a, torch.rand_like(b) * 2 - 1, parser=parser)
    assert 0 <= same < scrambled and same < noise
    assert frechet_distance(a, a, parser=parser) < 1e-3


def test_fid_bad_input(parser) -> None:
    x = torch.zeros(4, 3, 32, 32)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(x, x[:1], parser=parser)
    with pytest.raises(ValueError, match="needs parser"):
        frechet_distance(x, x)
    with pytest.raises(ValueError, match="feature must be"):
        frechet_distance(x, x, feature="clip", parser=parser)
    assert ParserFeatures(parser)(torch.rand(2, 3, 32, 32)).shape == (2, parser.encode(x).shape[1])


def test_reconstruction_psnr_rises_with_steps() -> None:
    """Inversion then sampling regenerates a face; more steps reconstruct it better."""
    torch.manual_seed(0)
    model = make_unet("tiny", sample_size=16)
    with torch.no_grad():  # a small-output model: the regime where DDIM inversion is accurate
        model.conv_out.weight.mul_(0.01)
        model.conv_out.bias.zero_()
    x0, _ = ToyFaces(16, 4).batch(range(4))
    coarse = psnr(reconstruct(model, x0, num_inference_steps=10)[1], x0).mean()
    fine = psnr(reconstruct(model, x0, num_inference_steps=100)[1], x0).mean()
    assert fine > coarse + 3 and fine > 25
    assert torch.equal(psnr(x0, x0), torch.full((4,), 10 * torch.log10(torch.tensor(4e12)).item()))


def test_sample_images_is_seeded() -> None:
    model = make_unet("tiny", sample_size=16)
    a = sample_images(model, 3, seed=1, num_inference_steps=2)
    b = sample_images(model, 3, seed=1, num_inference_steps=2)
    assert a.shape == (3, 3, 16, 16) and torch.equal(a, b)


def test_sample_cache_answers_the_same_request_only(tmp_path, monkeypatch) -> None:
    """Cached FID sets: the same weights, n, seed and steps load; anything else samples anew."""
    import interpddpm.realism as realism

    torch.manual_seed(0)
    unet = make_unet("tiny", sample_size=16)
    first = sample_images(unet, 3, seed=5, num_inference_steps=2, cache=tmp_path)
    assert torch.equal(first, sample_images(unet, 3, seed=5, num_inference_steps=2))
    calls = []
    real_sampler = realism.ddim_sample_batched
    monkeypatch.setattr(
        realism, "ddim_sample_batched", lambda *a, **k: calls.append(1) or real_sampler(*a, **k)
    )
    assert torch.equal(sample_images(unet, 3, seed=5, num_inference_steps=2, cache=tmp_path), first)
    assert calls == []  # answered from the cache
    sample_images(unet, 3, seed=6, num_inference_steps=2, cache=tmp_path)
    with torch.no_grad():
        next(unet.parameters()).add_(0.1)  # other weights: not the cached set
    sample_images(unet, 3, seed=5, num_inference_steps=2, cache=tmp_path)
    assert len(calls) == 2 and len(list(tmp_path.glob("samples-*.pt"))) == 3


def test_colour_spread_is_zero_for_grey_and_known_for_pure_colours() -> None:
    import torch

    from interpddpm.realism import colour_spread

    assert colour_spread(torch.full((2, 3, 4, 4), 0.3)) == 0.0
    red = torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    # channels (1, 0, 0) in [0, 1]: unbiased std = sqrt(1/3)
    assert abs(colour_spread(red) - (1 / 3) ** 0.5) < 1e-6


def test_weights_digest_reads_scalar_buffers():
    """0-dim buffers (BatchNorm's num_batches_tracked, a hybrid's switch) are hashed by value."""

    def module(value: int) -> torch.nn.Module:
        m = torch.nn.Linear(2, 2)
        torch.nn.init.zeros_(m.weight), torch.nn.init.zeros_(m.bias)
        m.register_buffer("count", torch.tensor(value, dtype=torch.long))
        return m

    assert weights_digest(module(3)) == weights_digest(module(3))
    assert weights_digest(module(3)) != weights_digest(module(4))
