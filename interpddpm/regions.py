"""Regions: label maps -> K player masks, coalition masks, and the absent-player baseline.

The players of the paper's game (eq. 5) are K semantic regions of the noisy image ``x_t``; the
outputs are the same K regions of the predicted noise. Player masks are a *partition* of the
image: each chosen concept (eyes, nose, mouth, ...) is one player, and everything else is the
last player ("rest"). A coalition ``S`` keeps the pixels of its players and replaces the others
by a *baseline* (the paper does not say which; see :data:`BASELINES`).

Serves chapters 4, 5, 6 and 7.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .toyfaces import (
    BACKGROUND,
    CLOTH,
    CONCEPTS,
    EARS,
    EYEBROWS,
    HAIR,
    HAT,
    N_CLASSES,
    NECK,
    SKIN,
)

#: How absent players are filled in ``x_t^S``:
#: ``"zero"``: zeros (the mean of the noise; the paper's most literal reading of "removed");
#: ``"noise"``: fresh Gaussian noise of the same scale as x_t at that step (keeps the input
#: statistics in distribution);
#: ``"shuffle"``: the same region of another sample's x_t in the batch (an in-distribution x_t
#: whose content is unrelated).
BASELINES = ("zero", "noise", "shuffle")

#: The default, chosen by measurement (chapter 04): replacing absent regions by zeros throws a
#: vanilla model's prediction of the kept region far off (an input it never saw in training),
#: fresh noise hardly does.
DEFAULT_BASELINE = "noise"

ConceptSpec = str | Sequence[int]


def concept_ids(concept: ConceptSpec) -> tuple[int, ...]:
    """Label ids of a concept given by name (``"nose"``) or by ids (``(6, 7)``)."""
    if isinstance(concept, str):
        if concept not in CONCEPTS:
            raise ValueError(
                f"unknown concept {concept!r}; known: {', '.join(CONCEPTS)} "
                "(or pass label ids, e.g. (6, 7))."
            )
        return tuple(CONCEPTS[concept])
    ids = tuple(int(i) for i in concept)
    if not ids or not all(0 <= i < N_CLASSES for i in ids):
        raise ValueError(f"concept label ids must be in 0..{N_CLASSES - 1}, got {ids}.")
    return ids


def concept_name(concept: ConceptSpec) -> str:
    return concept if isinstance(concept, str) else "+".join(str(i) for i in concept_ids(concept))


def check_labels(labels: Tensor) -> Tensor:
    """Validate label maps: integer ``[B, H, W]`` with ids in ``0..N_CLASSES-1``."""
    if (
        not isinstance(labels, Tensor)
        or labels.dtype.is_floating_point
        or labels.dtype == torch.bool
    ):
        raise TypeError("labels must be an integer tensor [B, H, W] of class ids.")
    if labels.ndim != 3:
        raise ValueError(f"labels must have shape [B, H, W], got {list(labels.shape)}.")
    if labels.numel() and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise ValueError(
            f"label ids must be in 0..{N_CLASSES - 1} (the 12-class set of toyfaces.LABELS), "
            f"got values in {int(labels.min())}..{int(labels.max())}. Merge other label sets "
            "first (e.g. parsing.CELEBAMASK_TO_TOY for the 19 CelebAMask-HQ classes)."
        )
    return labels


def dilate(masks: Tensor, radius: int) -> Tensor:
    """Binary dilation of masks ``[..., H, W]`` by a square of side ``2 * radius + 1``."""
    if radius < 0:
        raise ValueError(f"dilation radius must be >= 0, got {radius}.")
    if radius == 0:
        return masks.bool()
    shape = masks.shape
    flat = masks.reshape(-1, 1, *shape[-2:]).float()
    out = F.max_pool2d(flat, 2 * radius + 1, stride=1, padding=radius)
    return out.reshape(shape) > 0.5


def player_masks(labels: Tensor, concepts: Sequence[ConceptSpec], *, dilation: int = 0) -> Tensor:
    """K = len(concepts) + 1 disjoint player masks ``[B, K, H, W]`` (bool) covering the image.

    Player k < K-1 is concept k (its label ids, dilated by ``dilation`` pixels as the paper
    dilates its regions); the last player is everything else. Where dilated concepts overlap,
    the earlier concept keeps the pixel. A concept absent from an image gets an empty mask: its
    game values are then 0 (see :func:`region_means`) and it constrains nothing for that image.
    """
    labels = check_labels(labels)
    if len(concepts) == 0:
        raise ValueError("give at least one concept, e.g. ['nose'] (K = 2: nose vs the rest).")
    taken = torch.zeros_like(labels, dtype=torch.bool)
    masks = []
    for concept in concepts:
        ids = torch.tensor(concept_ids(concept), device=labels.device)
        m = dilate(torch.isin(labels, ids), dilation) & ~taken
        taken |= m
        masks.append(m)
    masks.append(~taken)
    return torch.stack(masks, 1)


#: How the outside of the concepts is read by the one-sided constraint
#: (``TrainConfig.ie_outside``, :func:`output_masks`): ``"one"``, one output region (the
#: paper's "rest"); ``"split"``, the other paper concepts, hair, skin and background each.
OUTSIDES = ("one", "split")
#: The paper's three concepts: under ``"split"`` those a model does not edit are output regions.
PAPER_CONCEPTS = ("eyes", "nose", "mouth")
#: The outside's other output regions under ``"split"``, in this order (label ids).
OUTSIDE_GROUPS: dict[str, tuple[int, ...]] = {
    "hair": (HAIR, HAT),
    "skin": (SKIN, EARS, NECK, EYEBROWS),
    "background": (BACKGROUND, CLOTH),
}


def output_names(concepts: Sequence[ConceptSpec], outside: str = "one") -> list[str]:
    """The names of :func:`output_masks`' regions, in order."""
    names = [concept_name(c) for c in concepts]
    if outside == "one":
        return [*names, "rest"]
    taken = {i for c in concepts for i in concept_ids(c)}
    others = [c for c in PAPER_CONCEPTS if not set(concept_ids(c)) <= taken]
    return [*names, *others, *OUTSIDE_GROUPS]


def output_masks(
    labels: Tensor, concepts: Sequence[ConceptSpec], *, dilation: int = 0, outside: str = "one"
) -> Tensor:
    """The output regions ``[B, J, H, W]`` the one-sided constraint reads (bool, a partition).

    ``outside="one"``: the K player masks of :func:`player_masks` (J = K). ``"split"``: the
    concepts' masks (the same first ``len(concepts)`` players), then the rest of the image cut
    into the paper concepts not among ``concepts``, hair, skin and background
    (:func:`output_names`). The players, the inputs a coalition keeps or replaces, stay the K
    of :func:`player_masks`: only the outputs are finer, so that a concept's noise must leave
    the mean of each of them alone, not just the mean of one large "rest" region, where
    changes of opposite sign cancel. A region absent from an image is empty (values 0).
    """
    if outside not in OUTSIDES:
        raise ValueError(f"outside must be one of {OUTSIDES}, got {outside!r}.")
    players = player_masks(labels, concepts, dilation=dilation)
    if outside == "one":
        return players
    rest = players[:, -1]
    taken = torch.zeros_like(rest)
    parts = []
    names = output_names(concepts, outside)[len(concepts) :]
    for name in names:
        ids = concept_ids(name) if name in CONCEPTS else OUTSIDE_GROUPS[name]
        m = rest & torch.isin(labels, torch.tensor(ids, device=labels.device)) & ~taken
        taken |= m
        parts.append(m)
    parts[-1] |= rest & ~taken  # labels of no group (a concept given by ids) go with the last
    return torch.cat([players[:, :-1], torch.stack(parts, 1)], 1)


def check_partition(masks: Tensor) -> Tensor:
    """Check that masks ``[B, K, H, W]`` are disjoint and cover every pixel (a partition)."""
    if masks.ndim != 4:
        raise ValueError(f"player masks must have shape [B, K, H, W], got {list(masks.shape)}.")
    m = masks.bool()
    count = m.sum(1)
    if (count > 1).any():
        n = int((count > 1).sum())
        raise ValueError(
            f"player masks overlap at {n} pixels; each pixel must belong to exactly "
            "one region (build them with regions.player_masks)."
        )
    if (count == 0).any():
        n = int((count == 0).sum())
        raise ValueError(
            f"player masks leave {n} pixels uncovered; add a 'rest' region "
            "(regions.player_masks does this: the last player is everything else)."
        )
    return m


def resize_masks(masks: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Resize a partition ``[B, K, H, W]`` to another grid (e.g. an LDM's latents), still a
    partition: each target cell goes to the player covering most of it (area interpolation)."""
    m = check_partition(masks)
    frac = F.interpolate(m.float(), size=size, mode="area" if _shrinks(m, size) else "nearest")
    winner = frac.argmax(1, keepdim=True)
    return torch.zeros_like(frac, dtype=torch.bool).scatter_(1, winner, True)


def downsample_labels(
    labels: Tensor, size: int | tuple[int, int], *, prefer: Sequence[ConceptSpec] = ()
) -> Tensor:
    """Label maps ``[B, H, W]`` on a coarser grid ``[B, h, w]`` (e.g. an LDM's latent grid).

    A cell takes the first concept of ``prefer`` that covers ANY of its pixels (so a small part
    such as the nose keeps a non-empty region after downsampling), otherwise its majority label
    (ties go to the lower id). ``H, W`` must be multiples of ``h, w``.
    """
    labels = check_labels(labels)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    big_h, big_w = labels.shape[-2:]
    if h <= 0 or w <= 0 or big_h % h or big_w % w:
        raise ValueError(
            f"cannot downsample {big_h}x{big_w} label maps to {h}x{w}: the latent grid must "
            "divide the image size (e.g. 32x32 -> 16x16 for an autoencoder downsampling by 2)."
        )
    onehot = F.one_hot(labels, N_CLASSES).permute(0, 3, 1, 2).float()
    frac = F.adaptive_avg_pool2d(onehot, (h, w))  # [B, N_CLASSES, h, w]: share of each label
    bonus = torch.zeros(N_CLASSES, device=labels.device)
    for rank, concept in enumerate(prefer):  # earlier concepts win, all beat any majority
        for i in concept_ids(concept):
            if bonus[i] == 0:
                bonus[i] = 2.0 + len(prefer) - rank
    score = frac + (frac > 0) * bonus.view(1, -1, 1, 1)
    return score.argmax(1)


def _shrinks(m: Tensor, size: int | tuple[int, int]) -> bool:
    h, w = (size, size) if isinstance(size, int) else size
    return h <= m.shape[-2] and w <= m.shape[-1]


def coalition_masks(masks: Tensor, coalitions: Tensor) -> Tensor:
    """Pixel masks of coalitions: ``[B, R, H, W]`` float, 1 where a present player's region is.

    ``coalitions`` is bool ``[R, K]`` (the same coalitions for every sample) or ``[B, R, K]``
    (each sample its own, as :func:`interpddpm.theorem.row_subsample` draws them)."""
    per_sample = coalitions.ndim == 3 and coalitions.shape[0] == masks.shape[0]
    if (
        coalitions.dtype != torch.bool
        or not (coalitions.ndim == 2 or per_sample)
        or coalitions.shape[-1] != masks.shape[1]
    ):
        raise ValueError(
            f"coalitions must be bool [R, K={masks.shape[1]}] or [B={masks.shape[0]}, R, "
            f"K={masks.shape[1]}], got {coalitions.dtype} {list(coalitions.shape)}."
        )
    spec = "bkhw,brk->brhw" if per_sample else "bkhw,rk->brhw"
    return torch.einsum(spec, masks.float(), coalitions.float().to(masks.device))


def baseline_fill(
    x: Tensor,
    kind: str = DEFAULT_BASELINE,
    *,
    generator: torch.Generator | None = None,
    others: Tensor | None = None,
) -> Tensor:
    """What absent players are replaced by (see :data:`BASELINES`), same shape as ``x``.

    For ``"shuffle"``, ``others`` is the batch of other samples' ``x_t`` at the SAME timesteps
    as ``x`` (the trainer draws it from the forward process); without it the batch is rolled by
    one, which is right when every sample shares one t (as in :class:`DenoiserGame` audits).
    """
    if kind == "zero":
        return torch.zeros_like(x)
    if kind == "noise":
        # x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps has about unit variance at every t.
        return torch.randn(x.shape, generator=generator, device="cpu", dtype=x.dtype).to(x.device)
    if kind == "shuffle":
        if others is not None:
            if others.shape != x.shape:
                raise ValueError(f"others {list(others.shape)} must match x {list(x.shape)}.")
            return others
        if x.shape[0] < 2:
            raise ValueError("the 'shuffle' baseline needs a batch of at least 2 samples.")
        return x.roll(1, 0)
    raise ValueError(f"unknown baseline {kind!r}; choose one of {', '.join(BASELINES)}.")


def apply_coalitions(x: Tensor, masks: Tensor, coalitions: Tensor, baseline: Tensor) -> Tensor:
    """``x^S = m_S * x + (1 - m_S) * baseline`` for every coalition: ``[B, R, C, H, W]``."""
    m = coalition_masks(masks, coalitions).unsqueeze(2)  # [B, R, 1, H, W]
    return m * x.unsqueeze(1) + (1 - m) * baseline.unsqueeze(1)


def region_means(y: Tensor, masks: Tensor) -> Tensor:
    """Mean of ``y [B, ..., C, H, W]`` over each region: ``[B, ..., K]`` (0 for empty regions).

    ``masks`` is ``[B, K, H, W]``; ``y`` may have extra axes after the batch (coalitions).
    Computed in ``y``'s floating dtype (float64 values stay float64).
    """
    m = masks.to(y.dtype if y.is_floating_point() else torch.float32)
    extra = y.ndim - 4
    m = m.view(m.shape[0], *([1] * extra), *m.shape[1:])  # [B, 1.., K, H, W]
    area = m.sum((-2, -1)).clamp_min(1.0) * y.shape[-3]
    return torch.einsum("...chw,...khw->...k", y, m) / area
