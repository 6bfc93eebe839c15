"""Locality (the paper's Table 1 metric, from Li et al., AAAI 2022) and its protocol.

For a pair ``(x0, x0')`` before and after editing concept k, with ``M`` the parser's mask of the
concept in ``x0`` (dilated) and ``M' = 1 - M``:

    MSE(in)  = || M  * (x0 - x0') ||^2 / ||M||_1
    MSE(out) = || M' * (x0 - x0') ||^2 / ||M||_1     (as printed: both over ||M||_1)
    locality = MSE(out) / MSE(in)                     (smaller is better)

Since both are over ``||M||_1`` the ratio is "change outside / change inside", which grows with
the outside area; :func:`area_normalised_locality` divides each MSE by its own area instead.

Beyond the paper, the protocol can sample with stochastic DDIM (``eta > 0``,
:mod:`interpddpm.sampling`): pair i's per-step noise comes from the seed
``derive_seed("locality_protocol", seed, i)``, shared by its original and its edits, so a swap
still changes only the noise x_T of the region.

Serves chapters 6, 7, 8, 9, 10 and 12.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from . import memo
from .editing import blended_edit, repaint_edit, swap_region
from .regions import ConceptSpec, concept_ids, concept_name, dilate
from .sampling import ddim_sample_batched, derive_seed, model_noise


def _masks(x0: Tensor, mask: Tensor) -> Tensor:
    if x0.ndim != 4:
        raise ValueError(f"images must be [B, 3, H, W], got {list(x0.shape)}.")
    m = mask if mask.ndim == 4 else mask.unsqueeze(1)
    if m.shape[0] != x0.shape[0] or m.shape[1] != 1 or m.shape[-2:] != x0.shape[-2:]:
        raise ValueError(
            f"mask must be [B, 1, H, W] or [B, H, W] matching the images "
            f"{list(x0.shape)}, got {list(mask.shape)}."
        )
    m = m.to(x0.dtype)
    if ((m != 0) & (m != 1)).any():
        raise ValueError("mask values must be 0 or 1.")
    return m


def _in_out(x0: Tensor, x0_edit: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    if x0.shape != x0_edit.shape:
        raise ValueError(f"x0 {list(x0.shape)} and x0_edit {list(x0_edit.shape)} differ in shape.")
    m = _masks(x0, mask)
    sq = (x0 - x0_edit).pow(2)
    inside = (m * sq).sum((1, 2, 3))
    outside = ((1 - m) * sq).sum((1, 2, 3))
    return inside, outside, m.sum((1, 2, 3))


def _defined(area: Tensor, total: int, what: str) -> Tensor:
    """Which images have both an inside and an outside (``0 < ||M||_1 < H W``); warns naming
    the others, whose locality is undefined (NaN)."""
    empty, full = area == 0, area == total
    for bad, why in ((empty, "an empty mask (nothing inside)"), (full, "a full mask (no outside)")):
        if bad.any():
            warnings.warn(
                f"{what}: image(s) {bad.nonzero().flatten().tolist()} have {why}; their "
                "locality is undefined and set to NaN (leave them out when aggregating, e.g. "
                "with torch.nanmean, and report how many).",
                RuntimeWarning,
                stacklevel=3,
            )
    return ~(empty | full)


def locality(x0: Tensor, x0_edit: Tensor, mask: Tensor) -> Tensor:
    """The paper's locality ``MSE(out) / MSE(in)``, one value per image ``[B]``.

    An image whose mask is empty (the concept is absent: nothing inside) or full (the region is
    the whole image: nothing outside) gets NaN, with a ``RuntimeWarning`` naming the images:
    the ratio is undefined there (a full mask would otherwise read as "perfectly local", 0).
    """
    inside, outside, area = _in_out(x0, x0_edit, mask)
    mse_in, mse_out = inside / area, outside / area
    out = mse_out / mse_in
    ok = _defined(area, x0[0, 0].numel(), "locality")
    return torch.where(ok, out, torch.full_like(out, float("nan")))


def area_normalised_locality(x0: Tensor, x0_edit: Tensor, mask: Tensor) -> Tensor:
    """``(||M' d||^2 / ||M'||_1) / (||M d||^2 / ||M||_1)``: per-pixel change outside vs inside.

    NaN (with a warning) for images whose mask is empty or full, as :func:`locality`."""
    inside, outside, area = _in_out(x0, x0_edit, mask)
    total = x0[0, 0].numel()
    out = (outside / (total - area).clamp_min(1)) / (inside / area)
    ok = _defined(area, total, "area_normalised_locality")
    return torch.where(ok, out, torch.full_like(out, float("nan")))


@dataclasses.dataclass
class LocalityResult:
    """Locality of swapping one concept's noise over ``n_pairs`` pairs."""

    concept: str
    ratio_of_sums: float  # sum of MSE(out) / sum of MSE(in) over the pairs (the headline number)
    mean_ratio: float  # mean of the per-pair ratios
    median_ratio: float
    area_normalised: float  # ratio of sums with each MSE over its own area
    n_pairs: int  # pairs used
    # pairs left out: the parse of x0 lacks the concept (no region to edit) or the region is
    # the whole image (no outside to compare): their locality is undefined
    n_skipped: int
    per_pair: Tensor
    # the measured pairs' indices in the protocol (pair i: the same x_T and donor for every
    # model) and their summed squared changes inside and outside the concept: what a paired
    # bootstrap of the cut against another model resamples (:func:`cut_intervals`)
    pair_index: Tensor = dataclasses.field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    inside: Tensor = dataclasses.field(default_factory=lambda: torch.empty(0))
    outside: Tensor = dataclasses.field(default_factory=lambda: torch.empty(0))
    # in-region realism (issue 13): the share of edited faces in which the parser still finds
    # the concept in its region (:func:`concept_survival`), and the per-pair outcomes
    survival: float = float("nan")
    survived: Tensor = dataclasses.field(default_factory=lambda: torch.empty(0, dtype=torch.bool))

    def row(self) -> dict[str, Any]:
        skip = ("per_pair", "pair_index", "inside", "outside", "survived")
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}

    def pairs(self) -> dict[str, list]:
        """The per-pair sums as JSON-ready lists (``index``, ``inside``, ``outside``)."""
        return {
            "index": self.pair_index.tolist(),
            "inside": self.inside.tolist(),
            "outside": self.outside.tolist(),
        }


@dataclasses.dataclass
class Generated:
    """The shared half of the protocol: noises, generated images and their parse.

    ``eta`` is the DDIM eta the faces were sampled with and ``seeds`` (int64 ``[n_pairs]``, or
    None) the per-pair seeds of their per-step noise, which the edits reuse (needed for eta > 0).
    """

    x_T: Tensor
    donor: Tensor
    x0: Tensor
    labels: Tensor
    seeds: Tensor | None = None
    eta: float = 0.0

    def head(self, n: int) -> Generated:
        """The first ``n`` pairs (all of them when ``n`` is larger): a cheaper protocol on the
        same faces, e.g. for the costly RePaint comparison method."""
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}.")
        seeds = None if self.seeds is None else self.seeds[:n]
        return Generated(
            self.x_T[:n], self.donor[:n], self.x0[:n], self.labels[:n], seeds, self.eta
        )


def pair_seeds(seed: int, n_pairs: int) -> Tensor:
    """The per-step-noise seeds of the protocol's pairs, int64 ``[n_pairs]``: pair i's is
    ``derive_seed("locality_protocol", seed, i)``, whatever ``n_pairs``."""
    return torch.tensor(
        [derive_seed("locality_protocol", seed, i) for i in range(n_pairs)], dtype=torch.int64
    )


def generate_pairs(
    model: Any,
    parser: Any,
    n_pairs: int,
    *,
    seed: int = 0,
    num_inference_steps: int = 50,
    batch_size: int = 64,
    decode: Callable[[Tensor], Tensor] | None = None,
    eta: float = 0.0,
    cache: str | os.PathLike | None = None,
) -> Generated:
    """Noise pairs ``(x_T, donor)`` from ``seed`` (the same for every model), ``x0 = G(x_T)``
    and the parser's labels of ``x0``. ``decode`` maps sampled latents to images (a latent
    diffusion model's decoder, :mod:`interpddpm.latent`); None for pixel-space models.
    ``eta > 0``: stochastic DDIM with pair i's per-step noise from ``pair_seeds(seed, n)[i]``
    (kept in the result for the edits).

    ``cache``: a folder where ``x0`` and its labels are saved under a key of the model's and
    the parser's weights and the settings, and from where the same request is answered
    (:func:`interpddpm.memo.cached`; pixel-space models only: with ``decode`` nothing is
    cached)."""
    gen = torch.Generator().manual_seed(seed)
    x_T = model_noise(model, n_pairs, generator=gen)
    donor = model_noise(model, n_pairs, generator=gen)
    seeds = pair_seeds(seed, n_pairs)

    def compute() -> dict[str, Tensor]:
        x0 = _sample(model, x_T, num_inference_steps, batch_size, decode, eta=eta, seeds=seeds)
        return {"x0": x0, "labels": parser.predict(x0)}

    models = _digests(model, parser) if decode is None else None
    if cache is None or models is None:
        made = compute()
    else:
        parts = ["pairs", *models, n_pairs, seed, num_inference_steps, float(eta)]
        made = memo.cached(
            cache,
            "pairs",
            parts,
            lambda: {k: v.cpu() for k, v in compute().items()},
            digests=models,
            what="locality pairs",
            valid=lambda saved: isinstance(saved, dict) and len(saved.get("x0", ())) == n_pairs,
        )
    return Generated(x_T, donor, made["x0"], made["labels"], seeds, float(eta))


def _digests(*networks: Any) -> list[str] | None:
    """The weights digests of ``networks``, or None when one of them is not a torch module
    (then nothing is cached: its output cannot be keyed)."""
    if not all(isinstance(n, torch.nn.Module) for n in networks):
        return None
    return [memo.weights_digest(n) for n in networks]


def _generated_digest(g: Generated) -> str:
    """The key of the faces a protocol edits: their tensors and eta."""
    eta = torch.tensor(float(g.eta), dtype=torch.float64)
    return memo.tensors_digest(g.x_T, g.donor, g.x0, g.labels, g.seeds, eta)


def _sample(
    model: Any,
    x_T: Tensor,
    steps: int,
    batch_size: int,
    decode: Callable[[Tensor], Tensor] | None = None,
    *,
    eta: float = 0.0,
    seeds: Tensor | None = None,
) -> Tensor:
    """DDIM samples of ``x_T`` (decoded when ``decode``); ``seeds`` give the per-step noise at
    eta > 0 and are not used at eta = 0."""
    x0 = ddim_sample_batched(
        model,
        x_T,
        num_inference_steps=steps,
        batch_size=batch_size,
        eta=eta,
        seeds=seeds if eta else None,
    )
    return x0 if decode is None else decode(x0)


def concept_mask(labels: Tensor, concept: ConceptSpec, dilation: int = 1) -> Tensor:
    """The (dilated) parser mask ``M_k`` of a concept, ``[B, H, W]`` bool."""
    ids = torch.tensor(concept_ids(concept), device=labels.device)
    return dilate(torch.isin(labels, ids), dilation)


#: An edited concept *survives* when the parser labels at least this share of the pixels it
#: labelled as the concept inside the edited region before the edit.
SURVIVAL_SHARE = 0.5


def concept_survival(
    labels_before: Tensor, labels_after: Tensor, region: Tensor, concept: ConceptSpec
) -> Tensor:
    """Per image (bool ``[B]``): does the concept survive the edit of ``region``?

    A realism measure inside the edited region, where a locality-driven model damages faces
    (issue 13): an edit that turns a nose into a blotch keeps locality perfect but loses the
    nose. True when the concept's parsed pixels inside ``region`` after the edit are at least
    :data:`SURVIVAL_SHARE` of those before it. A vanilla edit that redraws the nose keeps
    about all noses; a model that draws noise there keeps few.
    """
    before = (concept_mask(labels_before, concept, 0) & region).flatten(1).sum(1)
    after = (concept_mask(labels_after, concept, 0) & region).flatten(1).sum(1)
    return after >= SURVIVAL_SHARE * before.clamp_min(1)


EDIT_METHODS = ("swap", "repaint", "blended")


def locality_protocol(
    model: Any,
    parser: Any,
    concepts: Sequence[ConceptSpec],
    *,
    n_pairs: int = 100,
    dilation: int = 1,
    num_inference_steps: int = 50,
    seed: int = 0,
    batch_size: int = 64,
    generated: Generated | None = None,
    method: str = "swap",
    decode: Callable[[Tensor], Tensor] | None = None,
    noise_mask: Callable[[Tensor, ConceptSpec], Tensor] | None = None,
    eta: float = 0.0,
    cache: str | os.PathLike | None = None,
) -> list[LocalityResult]:
    """The paper's protocol per concept: edit region k of every generated face, regenerate, and
    compare with the parser's (dilated) mask of the original ``x0``.

    ``method="swap"`` (the paper's): swap region k of ``x_T`` with the donor noise and sample.
    Comparison methods on the same model, faces and masks: ``"repaint"`` (RePaint inpaints the
    region) and ``"blended"`` (blended diffusion from the swapped noise, the outside pinned to the
    noised original at every step).

    Latent diffusion (:mod:`interpddpm.latent`): ``decode`` maps sampled latents to images and
    ``noise_mask(labels, concept)`` gives the region of the latent noise to swap (on the latent
    grid) from the parser's labels of ``x0``; the measurement stays in image space with the
    parser's mask. Only ``method="swap"`` applies to latent models.

    ``eta > 0`` (beyond the paper): the faces are sampled with stochastic DDIM, pair i's
    per-step noise drawn from its seed (:func:`pair_seeds`), and the swap edit reuses that
    noise, so it differs from the original only through region k of x_T. A ``generated`` set
    must have been made with the same ``eta``. The RePaint and blended comparison methods edit
    the same faces with their own samplers, as at eta = 0.

    ``cache``: a folder where the results (and the faces, when ``generated`` is None) are
    saved under a key of the model's and parser's weights, the faces and every setting, and
    from where the same request is answered (:func:`interpddpm.memo.cached`; pixel-space
    models only). The cpu book loads its recorded comparison models' results this way.
    """
    if n_pairs <= 0:
        raise ValueError(f"n_pairs must be positive, got {n_pairs}.")
    if method not in EDIT_METHODS:
        raise ValueError(f"method must be one of {EDIT_METHODS}, got {method!r}.")
    if method != "swap" and (decode is not None or noise_mask is not None):
        raise ValueError(f"method={method!r} edits pixels; latent models support only 'swap'.")
    if generated is not None:
        if float(eta) != generated.eta:
            raise ValueError(
                f"generated was sampled with eta={generated.eta} but eta={eta} was asked: the "
                f"edits must use the originals' eta (pass eta={generated.eta})."
            )
        if generated.eta and generated.seeds is None:
            raise ValueError(
                "generated has eta > 0 but no seeds: the edits need the originals' per-step "
                "noise seeds (make it with generate_pairs)."
            )
    g = generated or generate_pairs(
        model,
        parser,
        n_pairs,
        seed=seed,
        num_inference_steps=num_inference_steps,
        batch_size=batch_size,
        decode=decode,
        eta=eta,
        cache=cache,
    )
    args = (model, parser, concepts, g, dilation, num_inference_steps, seed, batch_size, method)
    models = _digests(model, parser) if decode is None and noise_mask is None else None
    if cache is None or models is None:
        return _protocol(*args, decode, noise_mask)
    names = [[concept_name(c), sorted(concept_ids(c))] for c in concepts]
    parts = ["locality", *models, names, dilation, num_inference_steps, seed, batch_size]
    parts += [method, _generated_digest(g)]
    rows = memo.cached(
        cache,
        "locality",
        parts,
        lambda: [dataclasses.asdict(r) for r in _protocol(*args)],
        digests=models,
        what="locality protocol",
        valid=lambda saved: isinstance(saved, list) and len(saved) == len(concepts),
    )
    return [LocalityResult(**row) for row in rows]


def _protocol(
    model: Any,
    parser: Any,
    concepts: Sequence[ConceptSpec],
    g: Generated,
    dilation: int,
    num_inference_steps: int,
    seed: int,
    batch_size: int,
    method: str,
    decode: Callable[[Tensor], Tensor] | None = None,
    noise_mask: Callable[[Tensor, ConceptSpec], Tensor] | None = None,
) -> list[LocalityResult]:
    """:func:`locality_protocol` on the faces ``g``, its arguments checked."""
    results = []
    for concept in concepts:
        m = concept_mask(g.labels, concept, dilation)
        # measurable pairs: the region is neither empty (concept absent) nor the whole image
        present = m.flatten(1).any(1) & ~m.flatten(1).all(1)
        if not present.any():  # no image with a measurable region: nothing to measure
            warnings.warn(
                f"locality of {concept_name(concept)} is undefined: in none of the "
                f"{len(present)} generated faces does the parser find the concept as a region "
                "that is neither empty nor the whole image, so its row is NaN with n_pairs = 0 "
                "(tables show it as undefined). More pairs, or a better-trained model or "
                "parser, give it a value.",
                RuntimeWarning,
                stacklevel=3,
            )
            nan = float("nan")
            results.append(
                LocalityResult(
                    concept_name(concept), nan, nan, nan, nan, 0, int(len(present)), torch.empty(0)
                )
            )
            continue
        x0, mk = g.x0[present], m[present]
        region = mk if noise_mask is None else noise_mask(g.labels[present], concept)
        x_T_edit = swap_region(g.x_T[present], g.donor[present], region)
        gen = torch.Generator().manual_seed(seed + 1)
        if method == "swap":
            seeds = None if g.seeds is None else g.seeds[present]
            x0_edit = _sample(
                model, x_T_edit, num_inference_steps, batch_size, decode, eta=g.eta, seeds=seeds
            )
        elif method == "repaint":
            x0_edit = torch.cat(
                [
                    repaint_edit(
                        model, a, b, num_inference_steps=num_inference_steps, generator=gen
                    )
                    for a, b in zip(x0.split(batch_size), mk.split(batch_size), strict=True)
                ]
            )
        else:
            x0_edit = torch.cat(
                [
                    blended_edit(
                        model, a, b, c, num_inference_steps=num_inference_steps, generator=gen
                    )
                    for a, b, c in zip(
                        x0.split(batch_size),
                        mk.split(batch_size),
                        x_T_edit.split(batch_size),
                        strict=True,
                    )
                ]
            )
        inside, outside, area = _in_out(x0, x0_edit, mk)
        per_pair = outside / inside
        survived = concept_survival(g.labels[present], parser.predict(x0_edit), mk, concept)
        total = x0[0, 0].numel()
        area_norm = (outside.sum() / (total - area).sum()) / (inside.sum() / area.sum())
        results.append(
            LocalityResult(
                concept=concept_name(concept),
                ratio_of_sums=float(outside.sum() / inside.sum()),
                mean_ratio=float(per_pair.mean()),
                median_ratio=float(per_pair.median()),
                area_normalised=float(area_norm),
                n_pairs=int(present.sum()),
                n_skipped=int((~present).sum()),
                per_pair=per_pair,
                pair_index=present.nonzero().flatten(),
                inside=inside.double(),
                outside=outside.double(),
                survival=float(survived.double().mean()),
                survived=survived.cpu(),
            )
        )
    return results


def cut_intervals(
    model: dict[str, dict[str, list]],
    vanilla: dict[str, dict[str, list]],
    n_pairs: int,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of the locality cuts ``1 - R_model / R_vanilla`` (``R``: the ratio
    of sums over pairs) by a PAIRED bootstrap over the protocol's ``n_pairs`` pairs: each
    resample draws pair indices with replacement and keeps, for both models, the drawn pairs
    each could measure (``model[concept]`` and ``vanilla[concept]``: :meth:`LocalityResult.pairs`
    dicts). The same draws serve every concept, so ``"min"`` (the worst cut) gets its interval
    too. A concept no pair measured gets ``(nan, nan)``."""
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, n_pairs, (n_boot, n_pairs), generator=gen)
    counts = torch.zeros(n_boot, n_pairs, dtype=torch.float64)
    counts.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))

    def ratios(parts: dict[str, list]) -> Tensor:
        idx = torch.as_tensor(parts["index"], dtype=torch.long)
        w = counts[:, idx]  # how often each measured pair was drawn
        inside = torch.as_tensor(parts["inside"], dtype=torch.float64)
        outside = torch.as_tensor(parts["outside"], dtype=torch.float64)
        return (w @ outside) / (w @ inside)  # NaN where a resample drew none of them

    alpha = (1 - level) / 2
    out: dict[str, tuple[float, float]] = {}
    cuts = []
    for concept in model:
        if not model[concept]["index"] or not vanilla[concept]["index"]:
            out[concept] = (math.nan, math.nan)
            cuts.append(torch.full((n_boot,), math.nan, dtype=torch.float64))
            continue
        cut = 1 - ratios(model[concept]) / ratios(vanilla[concept])
        cuts.append(cut)
        q = torch.nanquantile(cut, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
        out[concept] = (float(q[0]), float(q[1]))
    worst = torch.stack(cuts).min(0).values  # NaN propagates: an undefined concept
    if torch.isnan(worst).all():
        out["min"] = (math.nan, math.nan)
    else:
        q = torch.nanquantile(worst, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
        out["min"] = (float(q[0]), float(q[1]))
    return out


UNDEFINED = "undefined (no measurable pair)"


def percent(value: float, digits: int = 0) -> str:
    """A locality cut or share as a percentage, and :data:`UNDEFINED` where it is NaN (a
    concept that no generated face showed), so that no table or sentence prints ``nan%``."""
    return UNDEFINED if math.isnan(value) else f"{value:.{digits}%}"


#: The paper's Table 1 (locality, lower is better), for reference beside our measurements.
PAPER_TABLE1: dict[str, dict[str, float]] = {
    "Stable Diffusion": {"mouth": 0.1284, "eyes": 0.2307, "nose": 0.1707},
    "RePaint": {"mouth": 0.0553, "eyes": 0.7806, "nose": 0.1125},
    "SEGA": {"mouth": 0.8617, "eyes": 0.6956, "nose": 1.0189},
    "Editing in Style": {"mouth": 1.3649, "eyes": 0.9745, "nose": 2.9423},
    "IGAN": {"mouth": 0.0606, "eyes": 0.0802, "nose": 0.0995},
    "LDM": {"mouth": 0.0511, "eyes": 0.0867, "nose": 0.3506},
    "DDPM": {"mouth": 0.0869, "eyes": 0.0837, "nose": 0.2035},
    "Interpretable LDM": {"mouth": 0.0357, "eyes": 0.0640, "nose": 0.3191},
    "Interpretable DDPM": {"mouth": 0.0369, "eyes": 0.0295, "nose": 0.0683},
}

#: The paper's Table 2 (FID, lower is better).
PAPER_TABLE2: dict[str, float] = {
    "DDPM": 12.86,
    "Interpretable DDPM (nose)": 18.81,
    "Interpretable DDPM (eyes)": 19.42,
    "Interpretable DDPM (mouth)": 18.44,
}


def table1(
    results: dict[str, dict[str, LocalityResult]],
    concepts: Sequence[str],
    *,
    vanilla: str,
    compare: Sequence[str],
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """The Table 1 analogue: a row per model (ratio of sums per concept), the relative
    reduction of each ``compare`` row against ``vanilla``, and the paper's rows beside them.

    ``results[model][concept]`` are :func:`locality_protocol` results; a model without a
    concept (a single-concept model of another one) has no entry there, which its row leaves
    empty (None). Returns the rows and the reductions
    ``{model: {concept: 1 - locality / vanilla locality}}`` of the concepts each model has.
    """
    rows = [
        {"model": name, **{c: r[c].ratio_of_sums if c in r else None for c in concepts}}
        for name, r in results.items()
    ]
    base = results[vanilla]
    cuts = {
        name: {
            c: 1 - results[name][c].ratio_of_sums / base[c].ratio_of_sums
            for c in concepts
            if c in results[name]
        }
        for name in compare
    }
    rows += [
        {"model": f"reduction vs vanilla: {name}", **{c: percent(v) for c, v in cut.items()}}
        for name, cut in cuts.items()
    ]
    paper = {
        c: 1 - PAPER_TABLE1["Interpretable DDPM"][c] / PAPER_TABLE1["DDPM"][c] for c in concepts
    }
    rows += [
        {"model": "paper: DDPM (CelebA 64x64)", **{c: PAPER_TABLE1["DDPM"][c] for c in concepts}},
        {
            "model": "paper: Interpretable DDPM",
            **{c: PAPER_TABLE1["Interpretable DDPM"][c] for c in concepts},
        },
        {"model": "paper: reduction", **{c: f"{v:.0%}" for c, v in paper.items()}},
    ]
    return rows, cuts
