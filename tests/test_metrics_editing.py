"""Locality (the paper's formula), its protocol, and region editing."""

from __future__ import annotations

import math

import pytest
import torch

from interpddpm.editing import edit_region, lab_mse_map, resample_region, rgb_to_lab, swap_region
from interpddpm.metrics import area_normalised_locality, locality, locality_protocol
from interpddpm.models import make_unet


def test_locality_formula() -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1
    mask = torch.zeros(3, 8, 8)
    mask[:, 2:4, 2:5] = 1  # 6 pixels
    edit = x0.clone()
    edit[:, :, 2:4, 2:5] += 0.5  # inside: 6 px * 3 ch * 0.25
    edit[:, 0, 7, 7] += 1.0  # outside: 1
    inside, outside, area = 6 * 3 * 0.25, 1.0, 6
    expected = (outside / area) / (inside / area)
    torch.testing.assert_close(locality(x0, edit, mask), torch.full((3,), expected))
    torch.testing.assert_close(locality(x0, edit, mask.unsqueeze(1)), torch.full((3,), expected))
    area_norm = (outside / (64 - 6)) / (inside / 6)
    torch.testing.assert_close(
        area_normalised_locality(x0, edit, mask), torch.full((3,), area_norm)
    )
    # an edit confined to the mask is perfectly local
    assert (locality(x0, x0 + 0.3 * mask.unsqueeze(1), mask) == 0).all()


def test_locality_bad_input() -> None:
    x = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match="0 or 1"):
        locality(x, x + 1, torch.full((2, 8, 8), 0.5))
    with pytest.raises(ValueError, match="mask must be"):
        locality(x, x + 1, torch.ones(3, 8, 8))
    with pytest.raises(ValueError, match="differ in shape"):
        locality(x, torch.zeros(2, 3, 4, 4), torch.ones(2, 8, 8))
    with pytest.warns(RuntimeWarning, match=r"image\(s\) \[0, 1\] have an empty mask"):
        assert torch.isnan(locality(x, x + 1, torch.zeros(2, 8, 8))).all()  # absent concept


def test_region_edits() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g)
    donor = torch.randn(2, 3, 8, 8, generator=g)
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, :3] = True
    r = resample_region(x, mask, generator=g)
    assert torch.equal(r[:, :, 3:], x[:, :, 3:]) and not torch.equal(r[:, :, :3], x[:, :, :3])
    s = swap_region(x, donor, mask)
    assert torch.equal(s[:, :, :3], donor[:, :, :3]) and torch.equal(s[:, :, 3:], x[:, :, 3:])
    with pytest.raises(ValueError, match="does not fit"):
        resample_region(x, torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="donor"):
        edit_region(None, x, mask, mode="swap")


def test_lab() -> None:
    white = torch.ones(1, 3, 2, 2)
    black = -torch.ones(1, 3, 2, 2)
    torch.testing.assert_close(
        rgb_to_lab(white)[0, 0], torch.full((2, 2), 100.0), atol=1e-3, rtol=0
    )
    torch.testing.assert_close(rgb_to_lab(black)[0, 0], torch.zeros(2, 2), atol=1e-3, rtol=0)
    assert lab_mse_map(white, white).abs().max() == 0
    assert lab_mse_map(white, black).shape == (1, 2, 2)


class OracleParser:
    """Stands in for the face parser: the 'nose' is a fixed square in every image."""

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        labels = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long)
        labels[:, 6:10, 6:10] = 5
        return labels


class LocalModel(torch.nn.Module):
    """A 1x1-conv denoiser: every output pixel depends on its own input pixel only."""

    def __init__(self) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.config = SimpleNamespace(sample_size=16, in_channels=3)

    def forward(self, x, t):
        return self.conv(x)


def test_protocol_separates_local_and_global_models() -> None:
    """The protocol gives (near) zero locality for a pixel-local model, not for a UNet."""
    torch.manual_seed(0)
    local = locality_protocol(
        LocalModel(), OracleParser(), ["nose"], n_pairs=4, dilation=0, num_inference_steps=5
    )[0]
    unet = locality_protocol(
        make_unet("tiny", sample_size=16),
        OracleParser(),
        ["nose", "eyes"],
        n_pairs=4,
        dilation=1,
        num_inference_steps=5,
    )
    assert local.n_pairs == 4 and local.ratio_of_sums < 1e-10
    assert unet[0].ratio_of_sums > 1e-3
    assert unet[1].n_pairs == 0 and unet[1].n_skipped == 4  # the parser finds no eyes
    # the oracle parser sees the nose wherever the labels put it: every edit keeps it
    assert local.survival == 1.0 and local.survived.tolist() == [True] * 4
    assert math.isnan(unet[1].survival) and "survived" not in unet[1].row()


def test_baseline_editors_keep_the_outside() -> None:
    """RePaint and blended diffusion regenerate only the masked region (diffusers' pipeline)."""
    from interpddpm.editing import blended_edit, repaint_edit
    from interpddpm.toyfaces import ToyFaces

    torch.manual_seed(0)
    model = make_unet("tiny", sample_size=16)
    x0, _ = ToyFaces(16, 4).batch(range(2))
    mask = torch.zeros(2, 16, 16)
    mask[:, 4:10, 4:10] = 1
    g = torch.Generator().manual_seed(0)
    rp = repaint_edit(
        model, x0, mask, num_inference_steps=10, jump_length=3, jump_n_sample=2, generator=g
    )
    bl = blended_edit(
        model, x0, mask, torch.randn(x0.shape, generator=g), num_inference_steps=10, generator=g
    )
    outside = (1 - mask).bool().unsqueeze(1).expand_as(x0)
    assert torch.allclose(bl[outside], x0[outside])
    assert (rp[outside] - x0[outside]).abs().max() < 0.02  # 8-bit rounding of the pipeline output
    inside = mask.bool().unsqueeze(1).expand_as(x0)
    assert (rp[inside] - x0[inside]).abs().mean() > 0.05
    assert (bl[inside] - x0[inside]).abs().mean() > 0.05


def test_protocol_baselines() -> None:
    """RePaint and blended diffusion keep the outside: near-zero locality on any model."""
    torch.manual_seed(0)
    unet = make_unet("tiny", sample_size=16)
    swap = locality_protocol(unet, OracleParser(), ["nose"], n_pairs=3, num_inference_steps=4)[0]
    for method in ("repaint", "blended"):
        r = locality_protocol(
            unet, OracleParser(), ["nose"], n_pairs=3, num_inference_steps=4, method=method
        )[0]
        assert r.n_pairs == 3 and r.ratio_of_sums < swap.ratio_of_sums
    with pytest.raises(ValueError, match="method must be one of"):
        locality_protocol(unet, OracleParser(), ["nose"], n_pairs=2, method="sega")


def test_protocol_on_the_first_pairs_of_shared_faces() -> None:
    """``Generated.head(n)``: the baselines edit the first n of the same faces and noises."""
    from interpddpm.metrics import generate_pairs

    torch.manual_seed(0)
    unet = make_unet("tiny", sample_size=16)
    g = generate_pairs(unet, OracleParser(), 4, num_inference_steps=3)
    head = g.head(2)
    assert torch.equal(head.x_T, g.x_T[:2]) and torch.equal(head.labels, g.labels[:2])
    assert torch.equal(g.head(10).x0, g.x0)  # asking for more keeps them all
    r = locality_protocol(unet, OracleParser(), ["nose"], num_inference_steps=3, generated=head)
    assert r[0].n_pairs + r[0].n_skipped == 2
    with pytest.raises(ValueError, match="n must be positive"):
        g.head(0)


def test_locality_is_undefined_without_an_inside_or_an_outside() -> None:
    """A full mask used to read as 0.0, "perfectly local": there is no outside, so it is NaN
    (with a warning naming the images), like an empty mask; the other images keep their value."""
    x = torch.zeros(4, 3, 8, 8)
    edit = x + 1
    mask = torch.zeros(4, 8, 8)
    mask[0] = 1  # full
    mask[2, :4] = 1  # half: defined
    mask[3] = 1  # full
    for fn in (locality, area_normalised_locality):
        with pytest.warns(RuntimeWarning) as record:
            out = fn(x, edit, mask)
        messages = " ".join(str(w.message) for w in record)
        assert "image(s) [0, 3] have a full mask (no outside)" in messages
        assert "image(s) [1] have an empty mask (nothing inside)" in messages
        assert torch.isnan(out[[0, 1, 3]]).all() and out[2] == pytest.approx(1.0)


class WholeImageParser(OracleParser):
    """The 'nose' covers the whole of image 0 (no outside) and a square in the others."""

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        labels = super().predict(images)
        labels[0] = 5
        return labels


def test_protocol_leaves_out_pairs_without_an_outside() -> None:
    torch.manual_seed(0)
    r = locality_protocol(
        LocalModel(), WholeImageParser(), ["nose"], n_pairs=3, dilation=0, num_inference_steps=3
    )[0]
    assert (r.n_pairs, r.n_skipped) == (2, 1)
    assert r.per_pair.shape == (2,) and torch.isfinite(r.per_pair).all()


def test_a_concept_no_face_shows_is_reported_not_printed_as_nan() -> None:
    """No silent NaN: the protocol warns, and the Table 1 reduction reads 'undefined'."""
    from interpddpm.metrics import UNDEFINED, Generated, percent, table1

    n = 3
    noise = torch.randn(n, 3, 16, 16)
    background = torch.zeros(n, 16, 16, dtype=torch.long)  # the parser found no nose anywhere
    g = Generated(noise, noise.flip(0), noise.clamp(-1, 1), background)
    unet = make_unet("tiny", sample_size=16)
    with pytest.warns(RuntimeWarning, match=r"locality of nose is undefined: in none of the 3"):
        (r,) = locality_protocol(unet, OracleParser(), ["nose"], generated=g)
    assert r.n_pairs == 0 and r.n_skipped == n and torch.isnan(torch.tensor(r.ratio_of_sums))
    rows, cuts = table1(
        {"vanilla": {"nose": r}, "interp": {"nose": r}},
        ["nose"],
        vanilla="vanilla",
        compare=["interp"],
    )
    reduction = next(row for row in rows if row["model"].startswith("reduction"))
    assert reduction["nose"] == UNDEFINED
    assert percent(0.634) == "63%" and percent(0.634, 1) == "63.4%"
    assert percent(float("nan")) == UNDEFINED


def test_table1_leaves_a_concept_a_model_lacks_empty() -> None:
    """A single-concept model of the nose has no eyes: its row reads None there (drawn "–"),
    its reductions cover the nose only, and the numbers it has are 1 - ratio / vanilla's."""
    from interpddpm.metrics import LocalityResult, table1

    def result(ratio: float) -> LocalityResult:
        per = torch.tensor([ratio])
        return LocalityResult("x", ratio, ratio, ratio, ratio, 1, 0, per)

    rows, cuts = table1(
        {
            "vanilla": {"eyes": result(2.0), "nose": result(4.0)},
            "nose only": {"nose": result(1.0)},
        },
        ["eyes", "nose"],
        vanilla="vanilla",
        compare=["nose only"],
    )
    assert rows[1] == {"model": "nose only", "eyes": None, "nose": 1.0}
    assert cuts == {"nose only": {"nose": 0.75}}
    assert rows[2] == {"model": "reduction vs vanilla: nose only", "nose": "75%"}


# ---- stochastic DDIM (eta > 0) with the per-step noise shared by the original and the edit ----


def test_stochastic_edit_shares_the_originals_noise() -> None:
    from interpddpm.sampling import ddim_sample_batched

    torch.manual_seed(0)
    unet = make_unet("tiny", sample_size=16)
    eta, steps, seeds = 0.8, 4, [21, 22]
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    x0 = ddim_sample_batched(unet, x_T, num_inference_steps=steps, eta=eta, seeds=seeds)
    nothing = torch.zeros(2, 16, 16)
    # An edit that leaves x_T as it is gives back exactly the original: the same noise.
    x_T_same, same = edit_region(
        unet, x_T, nothing, num_inference_steps=steps, eta=eta, seeds=torch.tensor(seeds)
    )
    assert torch.equal(x_T_same, x_T) and torch.equal(same, x0)
    # Other seeds: the same x_T gives other images.
    _, other = edit_region(unet, x_T, nothing, num_inference_steps=steps, eta=eta, seeds=[1, 2])
    assert (other - x0).abs().mean() > 1e-2
    # A swap on a pixel-local model changes exactly the region (the outside's trajectory,
    # noise included, is that of the original).
    local = LocalModel()
    mask = torch.zeros(2, 16, 16)
    mask[:, 4:8, 4:8] = 1
    donor = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    orig = ddim_sample_batched(local, x_T, num_inference_steps=steps, eta=eta, seeds=seeds)
    _, edited = edit_region(
        local, x_T, mask, mode="swap", donor=donor, num_inference_steps=steps, eta=eta, seeds=seeds
    )
    outside = (1 - mask).bool().unsqueeze(1).expand_as(orig)
    torch.testing.assert_close(edited[outside], orig[outside], atol=1e-6, rtol=0)
    assert (edited[~outside] - orig[~outside]).abs().mean() > 1e-2
    with pytest.raises(ValueError, match=r"pass seeds=\[one int per sample\]"):
        edit_region(unet, x_T, nothing, num_inference_steps=steps, eta=eta)
    with pytest.raises(ValueError, match="1 seeds for 2 samples"):
        edit_region(unet, x_T, nothing, num_inference_steps=steps, eta=eta, seeds=[1])
    with pytest.raises(ValueError, match="eta must be"):
        edit_region(unet, x_T, nothing, num_inference_steps=steps, eta=-1.0, seeds=seeds)
    # eta = 0 (the default) is unchanged; seeds are then unused.
    _, det = edit_region(unet, x_T, nothing, num_inference_steps=steps)
    _, det_seeded = edit_region(unet, x_T, nothing, num_inference_steps=steps, seeds=seeds)
    assert torch.equal(det, det_seeded) and not torch.allclose(det, x0)


def test_stochastic_protocol_shares_each_pairs_noise() -> None:
    import dataclasses

    from interpddpm.metrics import generate_pairs, pair_seeds

    torch.manual_seed(0)
    model = LocalModel()
    kw = {"n_pairs": 3, "dilation": 0, "num_inference_steps": 4}
    (r,) = locality_protocol(model, OracleParser(), ["nose"], eta=0.5, **kw)
    assert r.n_pairs == 3 and r.ratio_of_sums < 1e-10  # a local model stays local at eta > 0
    g = generate_pairs(model, OracleParser(), 3, num_inference_steps=4, eta=0.5)
    assert g.eta == 0.5 and torch.equal(g.seeds, pair_seeds(0, 3))
    assert torch.equal(pair_seeds(0, 5)[:3], g.seeds) and not torch.equal(pair_seeds(1, 3), g.seeds)
    assert not torch.allclose(
        g.x0, generate_pairs(model, OracleParser(), 3, num_inference_steps=4).x0
    )
    head = g.head(2)
    assert torch.equal(head.seeds, g.seeds[:2]) and head.eta == 0.5
    (rh,) = locality_protocol(model, OracleParser(), ["nose"], generated=head, eta=0.5, **kw)
    assert rh.n_pairs == 2 and rh.ratio_of_sums < 1e-10
    # The control: edits with another pair's noise change the whole image.
    wrong = dataclasses.replace(g, seeds=g.seeds.roll(1))
    (rw,) = locality_protocol(model, OracleParser(), ["nose"], generated=wrong, eta=0.5, **kw)
    assert rw.ratio_of_sums > 1.0
    with pytest.raises(ValueError, match=r"sampled with eta=0.5 but eta=0.0 was asked"):
        locality_protocol(model, OracleParser(), ["nose"], generated=g, **kw)
    with pytest.raises(ValueError, match="no seeds"):
        no_seeds = dataclasses.replace(g, seeds=None)
        locality_protocol(model, OracleParser(), ["nose"], generated=no_seeds, eta=0.5, **kw)


def _pair_parts(n, ratio, seed, missing=()):
    """Per-pair sums of a protocol of n pairs whose outside/inside ratio is about `ratio`."""
    g = torch.Generator().manual_seed(seed)
    inside = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    outside = ratio * inside * torch.exp(0.5 * torch.randn(n, generator=g, dtype=torch.float64))
    keep = [i for i in range(n) if i not in missing]
    return {"index": keep, "inside": inside[keep].tolist(), "outside": outside[keep].tolist()}


def test_cut_intervals_paired_bootstrap():
    from interpddpm.metrics import cut_intervals

    n = 48
    van = {"eyes": _pair_parts(n, 1.0, 1), "nose": _pair_parts(n, 2.0, 2)}
    # a model equal to vanilla: every resample's cut is exactly 0
    same = cut_intervals(van, van, n, n_boot=200)
    assert all(lo == pytest.approx(0, abs=1e-12) and hi == pytest.approx(0, abs=1e-12)
               for lo, hi in same.values())  # fmt: skip
    model = {"eyes": _pair_parts(n, 0.2, 3), "nose": _pair_parts(n, 0.5, 4, missing=(0, 5))}
    ci = cut_intervals(model, van, n, n_boot=2000)

    def cut(c):
        r = lambda d: sum(d["outside"]) / sum(d["inside"])  # noqa: E731
        return 1 - r(model[c]) / r(van[c])

    for c in model:  # the point estimate lies inside its interval
        assert ci[c][0] < cut(c) < ci[c][1]
    assert ci["min"][0] <= min(ci["eyes"][0], ci["nose"][0]) + 1e-12
    # more pairs, narrower intervals (about 1/sqrt(n))
    big_van = {"eyes": _pair_parts(4 * n, 1.0, 5)}
    big = cut_intervals({"eyes": _pair_parts(4 * n, 0.2, 6)}, big_van, 4 * n)
    small = cut_intervals({"eyes": model["eyes"]}, {"eyes": van["eyes"]}, n)
    ratio = (big["eyes"][1] - big["eyes"][0]) / (small["eyes"][1] - small["eyes"][0])
    assert 0.3 < ratio < 0.75
    # a concept no pair measured
    empty = {"index": [], "inside": [], "outside": []}
    none = cut_intervals({"eyes": empty}, {"eyes": van["eyes"]}, n, n_boot=100)
    assert all(math.isnan(v) for v in none["eyes"] + none["min"])


def test_cut_intervals_cover_the_true_cut():
    """Over 60 simulated protocols with a known population cut, the 95% intervals cover it in
    most of them (a fixed seed: deterministic)."""
    from interpddpm.metrics import cut_intervals

    n, true_cut, covered = 48, 1 - 0.3 / 1.0, 0
    # E[outside] / E[inside] = ratio * E[exp(0.5 z)] for both models: the population cut is exact
    for trial in range(60):
        van = {"eyes": _pair_parts(n, 1.0, 1000 + trial)}
        model = {"eyes": _pair_parts(n, 0.3, 2000 + trial)}
        lo, hi = cut_intervals(model, van, n, n_boot=400, seed=trial)["eyes"]
        covered += lo <= true_cut <= hi
    assert covered >= 50  # nominal 57 of 60


def test_concept_survival_counts_the_concept_left_in_its_region() -> None:
    """An edit that keeps the nose (or moves it within the region) keeps it; one that paints
    the region with skin, or leaves under half of the nose, loses it."""
    from interpddpm.metrics import SURVIVAL_SHARE, concept_mask, concept_survival
    from interpddpm.toyfaces import NOSE, SKIN

    before = torch.full((4, 8, 8), SKIN)
    before[:, 3:5, 3:5] = NOSE  # a 4-pixel nose
    region = concept_mask(before, "nose", 1)
    after = before.clone()
    after[1, 3:5, 3:5] = SKIN  # gone
    after[2, 3:5, 3] = SKIN  # half left: survives (SURVIVAL_SHARE = 0.5)
    after[3, 3:5, 3:5] = SKIN
    after[3, 4, 4] = NOSE  # a quarter left: lost
    assert SURVIVAL_SHARE == 0.5
    got = concept_survival(before, after, region, "nose")
    assert got.tolist() == [True, False, True, False]
