"""Regions, the denoiser game and the locality audit."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from interpddpm.denoiser_game import DenoiserGame, audit, game_values, off_diagonal_share
from interpddpm.games import all_coalitions
from interpddpm.models import make_unet
from interpddpm.regions import (
    apply_coalitions,
    baseline_fill,
    check_partition,
    coalition_masks,
    dilate,
    player_masks,
    resize_masks,
)
from interpddpm.theorem import dummy_loss
from interpddpm.toyfaces import ToyFaces


@pytest.fixture(scope="module")
def faces() -> tuple[torch.Tensor, torch.Tensor]:
    return ToyFaces(32, 16).batch(range(4))


class PixelwiseModel(torch.nn.Module):
    """Output pixel depends only on the same input pixel (1x1 convolutions)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 1), torch.nn.SiLU(), torch.nn.Conv2d(8, 3, 1)
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x) * (1 + t.float().view(-1, 1, 1, 1) / 1000)


def test_player_masks_partition(faces) -> None:
    _, labels = faces
    for dilation in (0, 1, 2):
        m = player_masks(labels, ["eyes", "nose", "mouth"], dilation=dilation)
        assert m.shape == (4, 4, 32, 32)
        check_partition(m)
        nose = torch.isin(labels, torch.tensor([5]))
        assert (m[:, 1] | m[:, 0])[nose].all()  # nose pixels stay in the nose (or eyes) region
    m0 = player_masks(labels, ["nose"])
    m2 = player_masks(labels, ["nose"], dilation=2)
    assert m2[:, 0].sum() > m0[:, 0].sum()
    assert torch.equal(player_masks(labels, [(6, 7)]), player_masks(labels, ["mouth"]))


def test_absent_concept_gives_empty_mask(faces) -> None:
    _, labels = faces
    labels = labels.clone()
    labels[labels == 11] = 1
    m = player_masks(labels, [(11,), "nose"])
    assert m[:, 0].sum() == 0
    check_partition(m)


def test_dilate_square() -> None:
    x = torch.zeros(1, 7, 7, dtype=torch.bool)
    x[0, 3, 3] = True
    assert dilate(x, 1).sum() == 9 and dilate(x, 2).sum() == 25


def test_resize_masks_stays_partition(faces) -> None:
    m = player_masks(faces[1], ["eyes", "nose", "mouth"], dilation=1)
    for size in (8, 16, 64):
        r = resize_masks(m, size)
        assert r.shape == (4, 4, size, size)
        check_partition(r)


def test_coalitions_and_baselines(faces) -> None:
    x, labels = faces
    m = player_masks(labels, ["nose"])
    c = all_coalitions(2)
    cm = coalition_masks(m, c)
    assert torch.equal(cm[:, 0], torch.zeros_like(cm[:, 0]))
    assert torch.equal(cm[:, 3], torch.ones_like(cm[:, 3]))
    fill = baseline_fill(x, "shuffle")
    xs = apply_coalitions(x, m, c, fill)
    assert torch.equal(xs[:, 3], x) and torch.equal(xs[:, 0], x.roll(1, 0))
    nose = m[:, 0:1].expand_as(x)
    assert torch.equal(xs[:, 1][nose], x[nose]) and torch.equal(xs[:, 1][~nose], fill[~nose])
    g = torch.Generator().manual_seed(0)
    noise = baseline_fill(x, "noise", generator=g)
    assert 0.9 < noise.std() < 1.1


def test_pixelwise_model_is_local_vanilla_unet_is_not(faces) -> None:
    x, labels = faces
    m = player_masks(labels, ["eyes", "nose", "mouth"], dilation=1)
    sched = DDPMScheduler()
    for value in ("region_mean", "pixel"):
        for baseline in ("zero", "noise", "shuffle"):
            a = audit(PixelwiseModel(), sched, x, m, [50, 500, 950], baseline=baseline, value=value)
            assert a.shape == (3, 4, 4)
            assert off_diagonal_share(a).max() < 1e-5
            assert a.diagonal(dim1=-2, dim2=-1).min() > 0
    torch.manual_seed(0)
    unet = make_unet("tiny", sample_size=32)
    a = audit(unet, sched, x, m, [50, 500, 950], value="pixel")
    assert off_diagonal_share(a).min() > 0.05


def test_dummy_loss_of_denoiser_game(faces) -> None:
    x, labels = faces
    m = player_masks(labels, ["nose"])
    assert dummy_loss(DenoiserGame(PixelwiseModel(), x, 10, m)) < 1e-10
    assert dummy_loss(DenoiserGame(PixelwiseModel(), x, 10, m, value="pixel")) < 1e-10
    unet = make_unet("tiny", sample_size=32)
    assert dummy_loss(DenoiserGame(unet, x, 10, m, value="pixel")) > 0


def test_game_values_shapes(faces) -> None:
    m = player_masks(faces[1], ["nose"])
    eps = torch.randn(4, 3, 3, 32, 32)
    assert game_values(eps, m).shape == (3, 4, 2)
    pix = game_values(eps, m, "pixel")
    assert pix.shape == (3, 4, 3, 32, 32, 2)
    torch.testing.assert_close(pix.sum(-1), eps.transpose(0, 1))


def test_bad_inputs(faces) -> None:
    x, labels = faces
    with pytest.raises(ValueError, match="label ids must be in 0..11"):
        player_masks(labels + 12, ["nose"])
    with pytest.raises(TypeError, match="integer tensor"):
        player_masks(labels.float(), ["nose"])
    with pytest.raises(ValueError, match="unknown concept 'beard'"):
        player_masks(labels, ["beard"])
    m = player_masks(labels, ["nose"])
    overlap = m.clone()
    overlap[:, 0] = True
    with pytest.raises(ValueError, match="overlap"):
        check_partition(overlap)
    with pytest.raises(ValueError, match="uncovered"):
        check_partition(torch.zeros_like(m))
    with pytest.raises(ValueError, match="do not match x_t"):
        DenoiserGame(PixelwiseModel(), x[:2], 10, m)
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_fill(x, "mean")
    with pytest.raises(ValueError, match="unknown game value"):
        DenoiserGame(PixelwiseModel(), x, 10, m, value="median")


def test_split_outside_refines_the_rest(faces) -> None:
    """output_masks("split"): the same concept masks, then the rest cut by label groups."""
    from interpddpm.regions import OUTSIDE_GROUPS, output_masks, output_names

    _, labels = faces
    for concepts in (["nose"], ["eyes", "nose", "mouth"], [(6, 7)]):
        players = player_masks(labels, concepts, dilation=1)
        assert torch.equal(output_masks(labels, concepts, dilation=1), players)  # "one"
        out = output_masks(labels, concepts, dilation=1, outside="split")
        names = output_names(concepts, "split")
        assert out.shape[1] == len(names) and names[-3:] == list(OUTSIDE_GROUPS)
        check_partition(out)
        n = len(concepts)
        assert torch.equal(out[:, :n], players[:, :n])
        assert torch.equal(out[:, n:].any(1), players[:, -1])  # the parts make up the rest
        for k, name in enumerate(names[n:], start=n):
            ids = OUTSIDE_GROUPS.get(name)
            if ids is not None and name != "background":  # the last part also takes strays
                assert torch.isin(labels[out[:, k]], torch.tensor(ids)).all(), name
    assert output_names(["nose"], "split") == [
        "nose", "eyes", "mouth", "hair", "skin", "background"
    ]  # fmt: skip
    assert output_names(["eyes", "nose", "mouth"], "split")[3:] == list(OUTSIDE_GROUPS)
    with pytest.raises(ValueError, match="outside must be one of"):
        output_masks(labels, ["nose"], outside="halves")


def test_split_outputs_see_what_the_rest_mean_cancels(faces) -> None:
    """A concept whose noise moves hair up and skin down by the same total leaves the mean of
    the one large rest region unchanged (the one-sided loss is 0 there) but not the means of
    its parts: the split loss sees it. Without such a change both losses are 0."""
    from interpddpm.regions import output_masks
    from interpddpm.theorem import concept_null_pairs, null_player_loss_from_values

    _, labels = faces
    concepts = ["nose"]
    players = player_masks(labels, concepts, dilation=1)
    split = output_masks(labels, concepts, dilation=1, outside="split")
    k, rows = players.shape[1], all_coalitions(2)
    hair, skin = split[:, 3], split[:, 4]
    assert (hair.sum((1, 2)) > 0).all() and (skin.sum((1, 2)) > 0).all()
    base = torch.randn(1, 1, 3, 32, 32, dtype=torch.float64).expand(4, len(rows), 3, 32, 32)
    base = base.clone()
    shift = hair.double() / hair.sum((1, 2), keepdim=True) - skin.double() / skin.sum(
        (1, 2), keepdim=True
    )  # zero sum over the rest
    moved = base.clone()
    with_nose = rows[:, 0]
    moved[:, with_nose] += shift[:, None, None] * 1024  # only when the nose is present

    def losses(eps: torch.Tensor) -> tuple[float, float]:
        one = null_player_loss_from_values(
            game_values(eps, players), concept_null_pairs(k), n_players=k
        )
        fine = null_player_loss_from_values(
            game_values(eps, split), concept_null_pairs(k, n_outputs=split.shape[1]), n_players=k
        )
        return float(one), float(fine)

    assert losses(base) == (0.0, 0.0)
    one, fine = losses(moved)
    assert one < 1e-8 and fine > 1.0
