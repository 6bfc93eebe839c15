"""FID with the parser's features, and DDIM reconstruction for real-image editing."""

from __future__ import annotations

import pytest
import torch

from interpddpm.editing import psnr, reconstruct
from interpddpm.memo import weights_digest
from interpddpm.models import make_unet
from interpddpm.parsing import FaceParser
from interpddpm.realism import ParserFeatures, frechet_distance, sample_images
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


def test_features_give_torchmetrics_fid_and_kid(parser) -> None:
    """FID from realism.features equals torchmetrics' FID; KID equals torchmetrics' KID on the
    whole sets (one subset of all images), both with the parser's features."""
    from torchmetrics.image.kid import KernelInceptionDistance

    from interpddpm.realism import features, frechet_from_features, kernel_distance

    a, _ = ToyFaces(32, 120, seed=0).batch(range(120))
    b, _ = ToyFaces(32, 120, seed=1).batch(range(120))
    perm = torch.randperm(32 * 32, generator=torch.Generator().manual_seed(0))
    b = b.flatten(2)[:, :, perm].reshape(b.shape)  # shuffled pixels: a clear distance
    fa, fb = features(a, parser=parser), features(b, parser=parser)
    assert fa.dtype == torch.float64 and fa.shape[0] == 120
    expected = frechet_distance(a, b, parser=parser)
    assert frechet_from_features(fa, fb) == pytest.approx(expected, rel=1e-6, abs=1e-9)
    kid = KernelInceptionDistance(
        feature=ParserFeatures(parser), subsets=1, subset_size=120, normalize=True
    )
    kid.update((a + 1) / 2, real=True)
    kid.update((b + 1) / 2, real=False)
    mean, _ = kid.compute()
    # torchmetrics keeps float32 features: agreement to float32 rounding
    assert float(mean) > 1e-3
    assert kernel_distance(fa, fb) == pytest.approx(float(mean), rel=1e-4)


def test_kid_is_unbiased_where_fid_is_not() -> None:
    """Two samples of one distribution: KID averages to 0 (within 3 standard errors over 60
    draws) while FID is positive in every draw and shrinks as n grows (its bias)."""
    from interpddpm.realism import frechet_from_features, kernel_distance

    gen = torch.Generator().manual_seed(0)
    kids, fids = [], {20: [], 80: []}
    for _ in range(60):
        x, y = torch.randn(40, 8, generator=gen), torch.randn(40, 8, generator=gen)
        kids.append(kernel_distance(x, y))
    for n in fids:
        for _ in range(20):
            x, y = torch.randn(n, 8, generator=gen), torch.randn(n, 8, generator=gen)
            fids[n].append(frechet_from_features(x, y))
    k = torch.tensor(kids, dtype=torch.float64)
    assert abs(float(k.mean())) < 3 * float(k.std()) / len(k) ** 0.5
    assert min(fids[20]) > 0 and sum(fids[80]) / 20 < sum(fids[20]) / 20
    # a shifted distribution: KID clearly positive
    shifted = [
        kernel_distance(torch.randn(40, 8, generator=gen), torch.randn(40, 8, generator=gen) + 1)
        for _ in range(5)
    ]
    assert min(shifted) > 5 * float(k.std())


def test_paired_bootstrap_ratio_intervals() -> None:
    """Paired replicates: a model identical to the reference has the interval [1, 1]; a model
    further from the data than the reference has an interval above 1 that holds its ratio."""
    from interpddpm.realism import ratio_interval, realism_scores

    gen = torch.Generator().manual_seed(0)
    real = torch.randn(150, 6, generator=gen, dtype=torch.float64)
    near = torch.randn(150, 6, generator=gen, dtype=torch.float64) + 0.3
    far = near + 0.5  # the same noises, further off: as two models sampled from one x_T set
    ref = realism_scores(real, near, n_boot=60, seed=3)
    same = realism_scores(real, near, n_boot=60, seed=3)
    assert ratio_interval(same["fid_boot"], ref["fid_boot"]) == (1.0, 1.0)
    other = realism_scores(real, far, n_boot=60, seed=3)
    for name in ("fid", "kid"):
        lo, hi = ratio_interval(other[f"{name}_boot"], ref[f"{name}_boot"])
        assert 1 < lo <= other[name] / ref[name] <= hi
    # re-centred on a point: the same spread, moved so that its median is the point
    raw = ratio_interval(other["fid_boot"], ref["fid_boot"])
    point = other["fid"] / ref["fid"]
    moved = ratio_interval(other["fid_boot"], ref["fid_boot"], point=point)
    assert moved[1] - moved[0] == pytest.approx(raw[1] - raw[0])
    assert moved[0] < point < moved[1]
    with pytest.raises(ValueError, match="paired replicates"):
        ratio_interval([1.0, 2.0], [1.0])


def test_half_realism_sets_change_nothing_on_a_cpu(tmp_path) -> None:
    """``half=True`` (the gpu profile's realism sets) on a CPU: the same samples under the same
    cache key as fp32, so the cpu and smoke books do not move."""
    from interpddpm.realism import sample_precision

    torch.manual_seed(0)
    unet = make_unet("tiny", sample_size=16)
    assert sample_precision(unet, True) == sample_precision(unet, False) == "fp32"
    full = sample_images(unet, 3, seed=5, num_inference_steps=2, cache=tmp_path)
    half = sample_images(unet, 3, seed=5, num_inference_steps=2, cache=tmp_path, half=True)
    assert torch.equal(full, half) and half.dtype == torch.float32
    assert len(list(tmp_path.glob("samples-*.pt"))) == 1  # one set, one key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="half-precision sampling needs CUDA")
@pytest.mark.parametrize("native", [False, True])
def test_half_realism_sets_on_a_gpu(tmp_path, monkeypatch, native) -> None:
    """On CUDA: fp16 (a T4, ``native=False``) or bf16 autocast, fp32 images close to the fp32
    samples, cached under a key of their own."""
    import interpddpm.realism as realism

    monkeypatch.setattr(realism, "native_bf16", lambda device=None: native)
    torch.manual_seed(0)
    unet = make_unet("smoke", sample_size=32).cuda()
    assert realism.sample_precision(unet, True) == ("bf16" if native else "fp16")
    full = sample_images(unet, 8, seed=5, num_inference_steps=10, cache=tmp_path)
    half = sample_images(unet, 8, seed=5, num_inference_steps=10, cache=tmp_path, half=True)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert not torch.equal(full, half)  # it did run in half precision
    assert float((full - half).abs().mean()) < 0.05  # images in [-1, 1]
    assert len(list(tmp_path.glob("samples-*.pt"))) == 2
