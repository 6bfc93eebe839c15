"""Ablations of interpretable fine-tuning: what each design choice costs in realism and buys in
locality (chapter 12).

Every variant fine-tunes the same vanilla model with the same seeds and budget into ONE model for
all three concepts (eyes, nose, mouth: K = 4 players), changing one setting of the reference
configuration (the book's two-sided ``L_IE`` of eq. 8 on region means, fresh-noise baseline,
lambda 1e3 -> 1). Each is scored by

- locality (eq. 11's ratio of summed MSEs outside / inside) per concept, swap protocol; and
- the Frechet distance of its samples to real toy faces with the parser's features, as a ratio
  to the vanilla model's (same noise seeds; the paper's Table 2 reports 1.43-1.51).

Results are cached as JSON next to the runs, keyed by the variant's full training config and the
evaluation sizes, so a chapter re-opened later does not retrain or re-measure.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import runs
from .artifacts import (
    atomic_write,
    json_digest,
    read_cached,
    read_json,
    read_tensors,
    write_json,
    write_tensors,
)
from .devices import precision_label
from .errors import RunDirError, UserError, check_writable_dir
from .locks import locked
from .profiles import PROFILES, Profile, book_data, cache_dir, get_profile
from .training import BOOKKEEPING, drop_later_defaults

#: The concepts every ablation model is fine-tuned for at once (K = 4).
CONCEPTS = ("eyes", "nose", "mouth")


#: The reference recipe every variant changes one setting of: the paper's eq. (8) as chapter 5
#: first implemented it (pinned here, so that a change of the book's default does not move it).
REFERENCE: dict[str, Any] = {
    "ie_constraint": "two_sided",
    "game_value": "region_mean",
    "baseline": "noise",
    "lambda_start": 1e3,
    "ie_t_min": 0,
    "ie_t_weight": "uniform",
}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One setting changed from the reference fine-tuning configuration."""

    name: str
    group: str  # which ablation question it answers
    overrides: dict[str, Any]
    interpretable: bool = True
    # the training budget: ablation_steps and ablation_decay_steps times this
    budget: int = 1
    # a sampler variant (no training of its own): the model of variant ``model_of``, sampled
    # with the vanilla model below timestep ``switch_t`` (:class:`interpddpm.hybrid.HybridDenoiser`)
    model_of: str | None = None
    switch_t: int | None = None
    # a merged variant (no training of its own): the single-concept models of ``merge_recipe``
    # (``runs.finetune_config(p, [concept], recipe=...)``) merged in weight space with these
    # (concept, alpha) pairs (:mod:`interpddpm.merging`, task arithmetic)
    merge_of: tuple[tuple[str, float], ...] | None = None
    merge_recipe: str = "book"

    def changes(self) -> str:
        """What this variant changes, in words (the chapter's table of variants)."""
        if self.merge_of is not None:
            terms = ", ".join(f"{a:g} x {c}" for c, a in self.merge_of)
            return (
                f"no training: the vanilla model plus the task vectors of the {self.merge_recipe}"
                f"-recipe single-concept models ({terms})"
            )
        if self.switch_t is not None:
            return f"the model of {self.model_of!r}, vanilla model for t < {self.switch_t}"
        if not self.interpretable:
            return "no L_IE"
        parts = [f"{k} = {v}" for k, v in self.overrides.items()]
        parts += [f"{self.budget}x the steps"] if self.budget != 1 else []
        return ", ".join(parts) or "-"


_ONE = {"ie_constraint": "one_sided"}
_ONE10 = _ONE | {"lambda_start": 10.0}
_DEFAULT = "one-sided, lambda 10, t weighted by noise"
_DEFAULT_IE = _ONE10 | {"ie_t_weight": "noise"}
_SPLIT = _DEFAULT_IE | {"ie_outside": "split"}


def _hybrid(model_of: str, label: str, switch_t: int) -> Variant:
    return Variant(
        f"{label}, vanilla below t = {switch_t}",
        "hybrid sampler (no training)",
        {},
        model_of=model_of,
        switch_t=switch_t,
    )


def _merged(recipe: str, alpha: float) -> Variant:
    label = "book" if recipe == "book" else "paper's"
    return Variant(
        f"merged {label} single-concept models, alpha {alpha:g}",
        "merged single-concept models (no training)",
        {},
        merge_of=tuple((c, alpha) for c in CONCEPTS),
        merge_recipe=recipe,
    )


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("reference", "reference", {}),
        Variant("no L_IE (control)", "reference", {}, interpretable=False),
        Variant("baseline: zero", "absent-player baseline", {"baseline": "zero"}),
        Variant("baseline: other x_t", "absent-player baseline", {"baseline": "shuffle"}),
        Variant("game: per pixel", "game value", {"game_value": "pixel"}),
        Variant("one-sided", "constraint", {"ie_constraint": "one_sided"}),
        Variant("lambda start 1e2", "lambda schedule", {"lambda_start": 100.0}),
        Variant("t >= 500 only", "timestep weighting", {"ie_t_min": 500}),
        Variant("sub-batch x2", "sub-batch", {"ie_sub_batch": "double"}),
        Variant("one-sided, lambda start 1e2", "one-sided + lambda", _ONE | {"lambda_start": 1e2}),
        Variant("one-sided, lambda start 10", "one-sided + lambda", _ONE10),
        Variant(
            "one-sided, lambda 10, floor 0.1", "one-sided + lambda", _ONE10 | {"lambda_floor": 0.1}
        ),
        Variant(
            "one-sided, lambda 10, t >= 250", "one-sided + timesteps", _ONE10 | {"ie_t_min": 250}
        ),
        Variant(
            "one-sided, lambda 10, t >= 500", "one-sided + timesteps", _ONE10 | {"ie_t_min": 500}
        ),
        Variant(_DEFAULT, "one-sided + timesteps", _DEFAULT_IE),
        # beyond the paper (issue 13): what limits realism, and what restores it
        Variant("default, 4x steps", "budget", _DEFAULT_IE, budget=4),
        Variant("default, 12x steps", "budget", _DEFAULT_IE, budget=12),
        Variant("reference, 4x steps", "budget", {}, budget=4),
        Variant("reference, 12x steps", "budget", {}, budget=12),
        Variant("default + teacher", "teacher", _DEFAULT_IE | {"teacher_weight": 1.0}),
        Variant(
            "default + teacher, 4x steps",
            "teacher",
            _DEFAULT_IE | {"teacher_weight": 1.0},
            budget=4,
        ),
        Variant(
            "default, 4x steps, floor 10", "budget", _DEFAULT_IE | {"lambda_floor": 10.0}, budget=4
        ),
        Variant(
            "default, 12x steps, floor 3", "budget", _DEFAULT_IE | {"lambda_floor": 3.0}, budget=12
        ),
        Variant(
            "default, decoder only", "fewer free parameters", _DEFAULT_IE | {"trainable": "decoder"}
        ),
        # the outside of the concepts read as the other concepts, hair, skin and background
        Variant("default, outside split", "outside as several regions", _SPLIT),
        Variant("default, outside split, 4x steps", "outside as several regions", _SPLIT, budget=4),
        # ... and the interpretable model only for the noisy steps
        *(_hybrid(_DEFAULT, "default", t) for t in (100, 250, 500)),
        *(_hybrid("reference", "reference", t) for t in (250, 500)),
        _hybrid("default, 4x steps", "default 4x", 100),
        *(_hybrid("reference, 4x steps", "reference 4x", t) for t in (100, 250)),
        *(_hybrid("reference, 12x steps", "reference 12x", t) for t in (100, 250)),
        *(_hybrid("default, outside split", "split", t) for t in (100, 250)),
        *(_hybrid("default, outside split, 4x steps", "split 4x", t) for t in (100, 250)),
        # ... and no K = 4 training at all: the three single-concept models merged in weight
        # space (issue 28, :mod:`interpddpm.merging`)
        _merged("book", 1.0),
        _merged("paper", 1.0),
        # alpha 1 summed three fine-tuning drifts (nearly orthogonal task vectors) and lost
        # realism: half of each
        _merged("book", 0.5),
    ]
}


#: The variant the book uses as its default (``runs.DEFAULT_IE`` holds its settings).
DEFAULT_VARIANT = _DEFAULT


def variant_config(profile: str | Profile, variant: str | Variant) -> Any:
    """The :class:`~interpddpm.training.TrainConfig` of one variant at the profile's ablation
    budget (``ablation_steps`` fine-tuning steps, lambda decayed over ``ablation_decay_steps``);
    for a sampler variant (``model_of``), the config of the variant whose model it samples."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    if v.model_of is not None:  # a sampler variant trains nothing: its model's run
        return variant_config(p, v.model_of)
    if v.merge_of is not None:
        raise ValueError(
            f"{v.name!r} trains no run of its own: it merges finished single-concept runs, "
            "whose configs ablations.merge_sources gives."
        )
    base = runs.finetune_config(p, CONCEPTS, interpretable=v.interpretable)
    overrides = dict(v.overrides)
    if overrides.get("ie_sub_batch") == "double":
        overrides["ie_sub_batch"] = 2 * base.ie_sub_batch
    slug = "ablation-" + re.sub(r"[^a-z0-9]+", "-", v.name.lower()).strip("-")
    steps = p.ablation_steps * v.budget
    settings = {
        **REFERENCE,
        "steps": steps,
        "lambda_decay_steps": p.ablation_decay_steps * v.budget,
        "checkpoint_every": min(steps, 500),  # a long budget run survives an interruption
        **overrides,
    }
    return runs.named(base.replace(**settings), p, slug)


def merge_sources(profile: str | Profile, variant: str | Variant) -> list[tuple[str, float, Any]]:
    """``(concept, alpha, TrainConfig)`` of each single-concept run a merged variant adds:
    the profile's ``runs.finetune_config(p, [concept], recipe=variant.merge_recipe)``, the
    runs chapter 5 trains (both recipes)."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    if v.merge_of is None:
        raise ValueError(f"{v.name!r} is not a merged variant (it has no merge_of).")
    return [
        (c, a, runs.finetune_config(p, [c], recipe=v.merge_recipe)) for c, a in v.merge_of
    ]


def merge_runs(
    profile: str | Profile, variant: str | Variant, *, train: bool = False
) -> list[Any]:
    """The finished source runs of a merged variant, in :func:`merge_sources`' order. A run
    missing here is refused with the command that trains it (:func:`interpddpm.runs.require`),
    never trained silently; ``train=True`` (a sweep that trains every variant now,
    :func:`sweep` with ``recompute``) trains it, saying so."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    out = []
    for c, _, cfg in merge_sources(p, v):
        if train:
            print(f"{v.name}: training (or loading) its source {Path(cfg.output_dir).name}")
            runs.baseline(p, progress=False)
            out.append(runs.ensure(cfg, progress=False))
            continue
        out.append(
            runs.require(
                cfg,
                needed_by=f"the merged variant {v.name!r}",
                train_with=f"run chapter 05 with profile {p.name!r}, or "
                f"runs.interpretable({p.name!r}, [{c!r}], recipe={v.merge_recipe!r})",
            )
        )
    return out


def merged_model(
    profile: str | Profile, variant: str | Variant, *, train: bool = False
) -> tuple[Any, Any, list[Any]]:
    """``(model, vanilla run, source runs)`` of a merged variant: the UNet whose weights are the
    vanilla model's EMA weights plus ``alpha`` times the task vector of each source's EMA
    weights (what the chapters sample with; :func:`interpddpm.merging.merge_models`). Missing
    sources: :func:`merge_runs` (refused unless ``train``)."""
    from .merging import merge_models

    p = profile if isinstance(profile, Profile) else get_profile(profile)
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    sources = merge_runs(p, v, train=train)
    alphas = [a for _, a in v.merge_of or ()]
    base = runs.baseline(p, progress=False)  # the vanilla run every variant starts from
    return merge_models(base.model(), [s.model() for s in sources], alphas), base, sources


def _merge_payload(p: Profile, v: Variant, key: Any) -> dict[str, Any]:
    """What a merged variant's keys depend on: each source's recipe (``key`` of its config
    dict) with its concept and alpha."""
    return {"merge": [[c, a, key(cfg.to_dict())] for c, a, cfg in merge_sources(p, v)]}


def _key(payload: dict[str, Any]) -> str:
    return json_digest(payload)


#: The version of what :func:`score` returns: cached scores of another version are recomputed
#: (2: the per-pair sums of the locality protocol, for the cuts' intervals; 3: KID, bootstrap
#: replicates of FID and KID for the ratios' intervals, and the concepts' survival rates).
SCORES_VERSION = 3


def _score_key(run: dict[str, Any], p: Profile, v: Variant | None = None) -> str:
    """The cache key of a model's scores: its training config, the evaluation sizes, the
    sampler (hybrid variants) and :data:`SCORES_VERSION`."""
    sampler = {} if v is None else _sampler(v)
    if v is not None and v.merge_of is not None:
        sampler = _merge_payload(p, v, lambda cfg: cfg)
    return _key({"run": run, **_eval_sizes(p), **sampler, "scores": SCORES_VERSION})


def _cut_columns(scored: dict[str, Any], van: dict[str, Any], p: Profile) -> dict[str, float]:
    """The cuts' 95% intervals (paired bootstrap over the protocol's pairs) as table columns."""
    from .metrics import cut_intervals

    ci = cut_intervals(scored["pairs"], van["pairs"], _eval_sizes(p)["n_pairs"])
    cols = {}
    for c in CONCEPTS:
        cols[f"cut {c} low"], cols[f"cut {c} high"] = ci[c]
    cols["min cut low"], cols["min cut high"] = ci["min"]
    return cols


def _sampler(v: Variant) -> dict[str, Any]:
    """What a sampler variant adds to the keys of its scores and record (nothing for others)."""
    return {} if v.switch_t is None else {"switch_t": v.switch_t}


def _eval_sizes(p: Profile) -> dict[str, int]:
    return {
        "n_pairs": p.ablation_pairs,
        "fid_samples": p.ablation_fid_samples,
        "ddim_steps": p.ablation_ddim_steps,
        "dilation": p.dilation,
        # C2ST of the FID samples against the real set (4 folds; 2 for the smoke sizes)
        "c2st_folds": 4 if p.ablation_fid_samples >= 16 else 2,
        # half-precision FID/C2ST sets on a GPU (a key of their own; fp32 keys unchanged)
        **({"realism_half": 1} if p.realism_half else {}),
    }


def score(
    model: Any, profile: str | Profile, *, parser: Any = None, real: torch.Tensor | None = None
) -> dict[str, Any]:
    """Locality per concept, the FID (the profile's ``fid_feature``) and the C2ST accuracy
    (with its interval, :mod:`interpddpm.c2st`) of one model at the ablation sizes."""
    from .c2st import c2st
    from .metrics import locality_protocol
    from .realism import feature_sets, realism_scores, sample_images

    p = profile if isinstance(profile, Profile) else get_profile(profile)
    s = _eval_sizes(p)
    parser = parser or runs.parser(p, progress=False)
    if real is None:
        real, _ = runs.faces(p, s["fid_samples"], seed=777)
    loc = locality_protocol(
        model,
        parser,
        CONCEPTS,
        n_pairs=s["n_pairs"],
        dilation=s["dilation"],
        num_inference_steps=s["ddim_steps"],
        seed=11,
    )
    fake = sample_images(
        model,
        s["fid_samples"],
        seed=5,
        num_inference_steps=s["ddim_steps"],
        half=p.realism_half,
        cache=cache_dir(p) / "samples",  # chapter 08 samples the same sets at the cpu sizes
    )
    test = c2st(real, fake, folds=s["c2st_folds"])
    feats = feature_sets([real, fake], feature=p.fid_feature, parser=parser)
    # FID and KID with bootstrap replicates: the same seed for every model pairs them
    realism = realism_scores(*feats)
    return {
        "locality": {r.concept: r.ratio_of_sums for r in loc},
        "pairs": {r.concept: r.pairs() for r in loc},  # for the paired bootstrap of the cuts
        "survival": {r.concept: r.survival for r in loc},
        **realism,
        "c2st": test.accuracy,
        "c2st_low": test.low,
        "c2st_high": test.high,
        "grid": fake[:16],
    }


def _realism_columns(scored: dict[str, Any], van: dict[str, Any]) -> dict[str, float]:
    """FID and KID against the vanilla model's, with the 95% intervals of both ratios (paired
    bootstrap, :func:`interpddpm.realism.ratio_interval`), and the concepts' survival rates."""
    from .realism import ratio_interval

    ratio = scored["fid"] / van["fid"]
    cols = {"FID": scored["fid"], "FID ratio": ratio}
    # re-centred on the full-set ratio: bootstrap resamples bias FID (see ratio_interval)
    cols["FID ratio low"], cols["FID ratio high"] = ratio_interval(
        scored["fid_boot"], van["fid_boot"], point=ratio
    )
    cols["KID"] = scored["kid"]
    # KID is unbiased and can be <= 0 for a model as close to the data as its sample allows
    ok = van["kid"] > 0 and min(van["kid_boot"]) > 0
    kid_ratio = scored["kid"] / van["kid"] if ok else math.nan
    cols["KID ratio"] = kid_ratio
    low_high = (
        ratio_interval(scored["kid_boot"], van["kid_boot"], point=kid_ratio)
        if ok
        else (math.nan, math.nan)
    )
    cols["KID ratio low"], cols["KID ratio high"] = low_high
    for c in CONCEPTS:
        cols[f"survival {c}"] = scored["survival"][c]
    cols["min survival"] = min(scored["survival"][c] for c in CONCEPTS)
    return cols


def _c2st_columns(scored: dict[str, Any]) -> dict[str, float]:
    """A score's C2ST accuracy and interval as table columns."""
    return {
        "C2ST": scored["c2st"],
        "C2ST low": scored["c2st_low"],
        "C2ST high": scored["c2st_high"],
    }


def _cached(path: Path, key: str, compute: Any) -> dict[str, Any]:
    """Scores of one model: ``path`` (the sample grid) and ``path.with_suffix('.json')`` (the
    key and the numbers), each with its digest (:mod:`interpddpm.artifacts`). Locked while
    checked and computed: a second process waits and reuses the result. A corrupted or
    digest-less entry is recomputed with a warning."""
    meta = path.with_suffix(".json")
    with locked(path, wait=True, what="ablation scores"):
        saved = read_cached(meta, read_json, what="ablation scores")
        if saved is not None and saved.get("key") == key:
            grid = read_cached(path, read_tensors, what="ablation sample grid")
            if grid is not None:
                return {**saved["result"], "grid": grid}
        result = compute()
        write_tensors(path, result["grid"])  # the grid first: the JSON with the key commits
        out = {k: v for k, v in result.items() if k != "grid"}
        write_json(meta, {"key": key, "result": out})
        return result


def vanilla_scores(profile: str | Profile = "auto", *, progress: bool = True) -> dict[str, Any]:
    """The vanilla model's scores at the ablation sizes (the reference of every ratio)."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    base = runs.baseline(p, progress=progress)
    key = _score_key(runs.baseline_config(p).to_dict(), p)
    path = cache_dir(p) / "ablations" / "vanilla.pt"
    return _cached(path, key, lambda: score(base.model(), p))


def run_variant(
    profile: str | Profile,
    variant: str | Variant,
    *,
    progress: bool = True,
    train_sources: bool = False,
) -> dict[str, Any]:
    """Fine-tune (or load) one variant and score it; adds cuts and ratios against vanilla.
    A merged variant trains nothing: its source runs must be finished (chapter 5's), or
    ``train_sources`` trains them (:func:`merge_runs`)."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    if v.merge_of is not None:
        return _run_merged(p, v, progress=progress, train_sources=train_sources)
    cfg = variant_config(p, v)
    base = runs.baseline(p, progress=progress)
    result = runs.ensure(cfg, progress=progress)
    key = _score_key(cfg.to_dict(), p, v)
    name = Path(cfg.output_dir).name + ("" if v.switch_t is None else f"-switch-{v.switch_t}")
    path = Path(cfg.output_dir).parent.parent / "ablations" / f"{name}.pt"

    def model() -> Any:
        if v.switch_t is None:
            return result.model()
        from .hybrid import HybridDenoiser

        return HybridDenoiser(result.model(), base.model(), v.switch_t)

    scored = _cached(path, key, lambda: score(model(), p))
    return _row(p, v, scored, vanilla_scores(p, progress=progress), _cost_columns(result))


def _run_merged(
    p: Profile, v: Variant, *, progress: bool = True, train_sources: bool = False
) -> dict[str, Any]:
    """:func:`run_variant` for a merged variant: no training, the sources' cost."""
    # built first: a missing source is refused before anything is measured (merging is cheap)
    model, _, sources = merged_model(p, v, train=train_sources)
    key = _score_key({"vanilla": runs.baseline_config(p).to_dict()}, p, v)
    slug = re.sub(r"[^a-z0-9]+", "-", v.name.lower()).strip("-")
    path = cache_dir(p) / "ablations" / f"{slug}-{key[:8]}.pt"
    scored = _cached(path, key, lambda: score(model, p))
    van = vanilla_scores(p, progress=progress)
    return _row(p, v, scored, van, _merged_cost_columns(sources))


def _row(
    p: Profile, v: Variant, scored: dict[str, Any], van: dict[str, Any], cost: dict[str, Any]
) -> dict[str, Any]:
    """A sweep row: a variant's scores against the vanilla model's, and its training cost."""
    cuts = {c: 1 - scored["locality"][c] / van["locality"][c] for c in CONCEPTS}
    return {
        "variant": v.name,
        "group": v.group,
        **{f"locality {c}": scored["locality"][c] for c in CONCEPTS},
        **{f"cut {c}": cuts[c] for c in CONCEPTS},
        "min cut": min(cuts.values()),
        **_cut_columns(scored, van, p),
        **_realism_columns(scored, van),
        **_c2st_columns(scored),
        **cost,
        "grid": scored["grid"],
    }


def _merged_cost_columns(sources: Sequence[Any]) -> dict[str, Any]:
    """The training cost of a merged model: its sources' steps together, their rows per step
    (each a K = 2 run; the mean, weighted by steps, if they differ) and seconds per step."""
    cols = [_cost_columns(s) for s in sources]
    steps = sum(c["steps"] for c in cols)
    rows = {c["rows per step"] for c in cols}
    return {
        "steps": steps,
        "rows per step": rows.pop()
        if len(rows) == 1
        else sum(c["rows per step"] * c["steps"] for c in cols) / steps,
        "sec per step": sum(c["sec per step"] * c["steps"] for c in cols) / steps,
    }


def _cost_columns(run: Any) -> dict[str, Any]:
    """What a run's training cost, from its own log: the steps, the rows of one forward pass
    (the batch plus the L_IE coalition rows), and the mean seconds per step on the machine and
    thread count that trained it."""
    log = run.metrics()
    return {
        "steps": log[-1]["step"],
        "rows per step": log[-1]["rows"],
        "sec per step": sum(m["sec_per_step"] for m in log) / len(log),
    }


def run_all(
    profile: str | Profile = "auto",
    names: Sequence[str] | None = None,
    *,
    progress: bool = True,
    train_sources: bool = False,
) -> list[dict[str, Any]]:
    """Every variant (or ``names``), in order; cached runs and scores are reused.
    ``train_sources``: see :func:`run_variant` (merged variants)."""
    names = list(VARIANTS) if names is None else list(names)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown ablation variants {unknown}; valid: {list(VARIANTS)}.")
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    if not train_sources:  # refuse a missing source before an hour of other variants
        for n in names:
            if VARIANTS[n].merge_of is not None:
                merge_runs(p, n)
    return [
        run_variant(p, n, progress=progress, train_sources=train_sources) for n in names
    ]


def pareto_front(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Names of the variants no other variant beats on both min cut (higher) and FID ratio
    (lower). Rows with an undefined (NaN) cut or ratio are measured nowhere on the plane: they
    neither join the front nor push others off it."""
    rows = [r for r in rows if not (math.isnan(r["min cut"]) or math.isnan(r["FID ratio"]))]
    front = []
    for r in rows:
        dominated = any(
            o is not r
            and o["min cut"] >= r["min cut"]
            and o["FID ratio"] <= r["FID ratio"]
            and (o["min cut"] > r["min cut"] or o["FID ratio"] < r["FID ratio"])
            for o in rows
        )
        if not dominated:
            front.append(r["variant"])
    return front


def region_denoising_error(
    model: Any,
    *,
    timesteps: Sequence[int] = (50, 150, 300, 500, 700, 900),
    n_images: int = 64,
    seed: int = 3,
    image_size: int = 32,
    faces: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> dict[str, list[float]]:
    """``E ||eps - eps_theta(x_t, t)||^2`` inside the concepts and in the rest, per timestep, on
    held-out faces with the same noise for every model: where denoising got worse.

    ``faces``: images ``[B, 3, S, S]`` in [-1, 1] and their label maps, e.g. the profile's
    ``runs.faces(profile, 64, seed=4242)``; ``None``: ``n_images`` toy faces
    ``ToyFaces(image_size, seed=4242)``. The model runs on its own device."""
    from diffusers import DDPMScheduler

    from .denoiser_game import predict_noise
    from .regions import player_masks
    from .sampling import model_device_dtype, training_scheduler_config
    from .toyfaces import ToyFaces

    sched = DDPMScheduler.from_config(training_scheduler_config(model))
    if faces is None:
        faces = ToyFaces(image_size, n_images, seed=4242).batch(range(n_images))
    images, labels = faces
    if labels is None:
        raise ValueError("region_denoising_error needs label maps (a dataset with masks).")
    masks = player_masks(labels, CONCEPTS).float()  # [B, 4, H, W]; the last is the rest
    concept = masks[:, :-1].sum(1, keepdim=True)
    out: dict[str, list[float]] = {"t": list(timesteps), "concepts": [], "rest": []}
    gen = torch.Generator().manual_seed(seed)
    device, dtype = model_device_dtype(model)
    model.eval()
    for t in timesteps:
        noise = torch.randn(images.shape, generator=gen)
        tt = torch.full((len(images),), t, dtype=torch.long)
        x_t = sched.add_noise(images, noise, tt)
        with torch.no_grad():
            eps = predict_noise(model, x_t.to(device, dtype), tt.to(device))
        err = (eps.float().cpu() - noise).pow(2).mean(1, keepdim=True)  # over channels
        out["concepts"].append(float((err * concept).sum() / concept.sum()))
        out["rest"].append(float((err * (1 - concept)).sum() / (1 - concept).sum()))
    return out


# ------------------------------------------------------------------------------------------
# The stored sweep: the CPU book shows a sweep recorded by `interpddpm ablations` and
# re-measures its default live (the whole sweep takes ~30 min on 2 cores).
# ------------------------------------------------------------------------------------------
def sweep_path(profile: str | Profile, root: Path | None = None) -> Path:
    """``book/data/ablations-<profile>.json`` of the repository (the recorded sweep)."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    name = f"ablations-{p.name}.json"
    return root / "book" / "data" / name if root is not None else book_data(name)


def _record_key(config: dict[str, Any], base: dict[str, Any] | None = None) -> str:
    """A hash of a variant's recipe and of its plain model's (``base``, the config of the run it
    starts from), independent of where this checkout keeps its runs and of the machine:
    bookkeeping keys, run paths and the training precision (``"auto"`` resolves per machine;
    the record names the one it used) are left out. A new base recipe makes a record stale."""
    skip = BOOKKEEPING | {"init_from", "mixed_precision"}
    own = _key(drop_later_defaults({k: v for k, v in config.items() if k not in skip}))
    if base is None:
        return own
    return _key({"variant": own, "base": _record_key(base)})


def variant_record_key(profile: str | Profile, variant: str | Variant) -> str:
    """The key a recorded sweep row must carry to match ``variant`` as this profile runs it."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    base = runs.baseline_config(p).to_dict()
    if v.merge_of is not None:  # its sources' recipes (each on the same base) and alphas
        payload = _merge_payload(p, v, lambda cfg: _record_key(cfg, base))
        return _key({**payload, "base": _record_key(base)})
    key = _record_key(variant_config(p, v).to_dict(), base)
    return key if v.switch_t is None else _key({"model": key, **_sampler(v)})


def _grid_uint8(grid: torch.Tensor) -> Any:
    """The first 16 samples tiled 4x4 as an ``[H, W, 3]`` uint8 array."""
    from .plotting import to_uint8_grid

    return (to_uint8_grid(grid[:16], nrow=4) * 255).round().to(torch.uint8).numpy()


def grid_png(grid: torch.Tensor) -> str:
    """A 4x4 sample grid as a base64 PNG (a few kB) for the JSON record."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_grid_uint8(grid)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def grid_image(record: dict[str, Any]) -> Any:
    """The sample grid of a stored row as an ``[H, W, 3]`` uint8 array."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(record["grid_png"]))))


def grid_faces(image: Any, per_row: int = 4, pad: int = 1) -> torch.Tensor:
    """The faces of a tiled sample grid (``[H, W, 3]`` uint8, as :func:`grid_image` returns it)
    as images ``[N, 3, h, w]`` in [-1, 1], for :func:`interpddpm.plotting.face_rows`."""
    x = torch.as_tensor(image).permute(2, 0, 1).float() / 127.5 - 1
    side = (x.shape[-1] - pad) // per_row - pad  # one face, without its border
    rows = (x.shape[-2] - pad) // (side + pad)
    return torch.stack(
        [
            x[:, pad + r * (side + pad) : pad + r * (side + pad) + side,
              pad + c * (side + pad) : pad + c * (side + pad) + side]
            for r in range(rows)
            for c in range(per_row)
        ]
    )  # fmt: skip


def record_sweep(
    profile: str | Profile = "auto",
    *,
    path: Path | None = None,
    progress: bool = True,
    names: Sequence[str] | None = None,
) -> Path:
    """Run (or load) every variant and write the sweep record: rows, vanilla scores, sizes, the
    hash of each variant's training config, and small PNG sample grids.

    ``path``: the record file, or an existing folder that receives ``ablations-<profile>.json``
    (default: :func:`sweep_path`). Its folder is checked for writing BEFORE the sweep runs
    (:class:`interpddpm.errors.RunDirError`), not after half an hour of training.

    ``names``: measure only these variants now, and keep the rows of the existing record that
    still match their recipes (variants missing from it, or recorded with other settings, are
    measured too). Every row says when and on what machine it was measured (``measured``) and
    the vanilla FID its ratio divides by (``vanilla FID``): a re-trained vanilla model on another
    machine is not bit-identical, so each ratio stays against the vanilla model of its own run.
    A new row also keeps its vanilla model's locality (``vanilla locality``, what its cuts divide
    by); when rows of the existing record are kept, so are its vanilla scores and its stamp
    (what those rows were measured against and shown beside), and ``updated`` says when rows
    were last added."""
    import datetime
    import platform

    p = profile if isinstance(profile, Profile) else get_profile(profile)
    out = Path(path) if path is not None else sweep_path(p)
    if out.is_dir():
        out = out / sweep_path(p, root=Path(".")).name
    check_writable_dir(out.parent, "the folder of the sweep record")
    if out.exists() and not out.is_file():
        raise RunDirError(f"{out} exists and is not a file; choose another --out.")
    kept: dict[str, dict[str, Any]] = {}
    old: dict[str, Any] | None = None
    if names is not None:
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown ablation variants {unknown}; valid: {list(VARIANTS)}.")
        if out.is_file():
            old = json.loads(out.read_text())
            stamp = {"created": old["created"], "machine": old["machine"]}
            # the stamp and vanilla FID of rows recorded before rows carried their own (added
            # at the end, so that a kept row's text in the record stays as it was)
            kept = {
                r["variant"]: {"measured": stamp, "vanilla FID": old["vanilla"]["fid"]} | r
                if "measured" not in r
                else r
                for r in _valid_rows(p, old)
                if r["variant"] not in names
            }
    now = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
    }
    todo = [n for n in VARIANTS if n not in kept]
    for n in todo:  # a merged variant's missing source: refused before anything runs
        if VARIANTS[n].merge_of is not None:
            merge_runs(p, n)
    van = vanilla_scores(p, progress=progress)
    fresh = run_all(p, todo, progress=progress)
    rows = {
        r["variant"]: {
            **{k: v for k, v in r.items() if k != "grid"},
            "config_key": variant_record_key(p, r["variant"]),
            "grid_png": grid_png(r["grid"]),
            "measured": now,
            "vanilla FID": van["fid"],
            "vanilla locality": van["locality"],
        }
        for r in fresh
    }
    vanilla = {
        "locality": van["locality"],
        **{k: van[k] for k in ("fid", "kid", "survival", "c2st", "c2st_low", "c2st_high")},
        "grid_png": grid_png(van["grid"]),
    }
    stamp: dict[str, Any] = dict(now)
    if old is not None and kept:  # the kept rows' vanilla model and stamp stay with them
        vanilla = old["vanilla"]
        stamp = {"created": old["created"], "machine": old["machine"], "updated": now["created"]}
        if old["vanilla"]["fid"] != van["fid"]:
            print(
                f"the vanilla model scores FID {van['fid']:.4g} here, {old['vanilla']['fid']:.4g}"
                " in the record (another parser or machine): the new rows carry their own"
                " (vanilla FID, vanilla locality); the record's vanilla scores stay those its"
                " other rows were measured against"
            )
    record = {
        "profile": p.name,
        **stamp,
        "torch": torch.__version__,
        "mixed_precision": variant_config(p, DEFAULT_VARIANT).mixed_precision,
        "sizes": {"steps": p.ablation_steps, "decay": p.ablation_decay_steps, **_eval_sizes(p)},
        "vanilla": vanilla,
        "rows": [rows.get(n) or kept[n] for n in VARIANTS],
    }
    text = json.dumps(record, indent=1)
    return atomic_write(out, lambda tmp: tmp.write_text(text))


def _valid_rows(p: Profile, record: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a record whose variant exists and was recorded with its current recipe."""
    return [
        r
        for r in record["rows"]
        if r["variant"] in VARIANTS and r["config_key"] == variant_record_key(p, r["variant"])
    ]


def load_sweep(profile: str | Profile = "auto", *, path: Path | None = None) -> dict[str, Any]:
    """The recorded sweep of a profile; its rows must match the current variants' configs, and
    every variant must have its row."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    path = path or sweep_path(p)
    if not path.is_file():
        raise FileNotFoundError(
            f"no recorded sweep at {path}; record one with `interpddpm ablations --profile "
            f"{p.name}` (or run the variants with ablations.run_all)."
        )
    record = json.loads(path.read_text())
    valid = {r["variant"] for r in _valid_rows(p, record)}
    stale = [r["variant"] for r in record["rows"] if r["variant"] not in valid]
    if stale:
        raise ValueError(
            f"{path} was recorded with other settings for {stale}; re-record it with "
            f"`interpddpm ablations --profile {p.name}` (--variants to re-measure only those)."
        )
    missing = [n for n in VARIANTS if n not in valid]
    if missing:
        raise ValueError(
            f"{path} has no row for {missing}; add them with `interpddpm ablations --profile "
            f"{p.name} --variants` and their names."
        )
    return record


def same_training(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two TrainConfig dicts train the same weights (bookkeeping keys aside)."""
    return {k: v for k, v in a.items() if k not in BOOKKEEPING} == {
        k: v for k, v in b.items() if k not in BOOKKEEPING
    }


def measure_run(
    profile: str | Profile, config: Any, label: str, *, progress: bool = True
) -> dict[str, Any]:
    """Train (or load) the fine-tuning run ``config`` and score it at the ablation sizes, as a
    row of the sweep's table named ``label`` (scores cached beside its run): cuts with their
    intervals, FID and KID ratios with theirs, survival and C2ST against the vanilla model's.
    Any concepts (a single-concept model too): eyes, nose and mouth are always measured."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    runs.baseline(p, progress=progress)  # what a fine-tune starts from
    run = runs.ensure(config, progress=progress)
    key = _score_key(config.to_dict(), p)
    path = cache_dir(p) / "ablations" / f"{Path(config.output_dir).name}.pt"
    scored = _cached(path, key, lambda: score(run.model(), p))
    van = vanilla_scores(p, progress=progress)
    cuts = {c: 1 - scored["locality"][c] / van["locality"][c] for c in CONCEPTS}
    return {
        "variant": label,
        **{f"cut {c}": cuts[c] for c in CONCEPTS},
        "min cut": min(cuts.values()),
        **_cut_columns(scored, van, p),
        **_realism_columns(scored, van),
        **_c2st_columns(scored),
        **_cost_columns(run),
        "grid": scored["grid"],
    }


def measure_default_live(
    profile: str | Profile = "auto", *, progress: bool = True
) -> dict[str, Any]:
    """Score the book's main K = 4 model (chapter 5, trained with ``runs.DEFAULT_IE``) at the
    ablation sizes: on the CPU its config equals the default variant's, so its row re-measures
    the recorded one live. ``same_config`` says whether that holds for this profile."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    main_cfg = runs.finetune_config(p, CONCEPTS)
    variant_cfg = variant_config(p, DEFAULT_VARIANT).to_dict()
    label = f"{DEFAULT_VARIANT} (chapter 5's model, live)"
    row = measure_run(p, main_cfg, label, progress=progress)
    return {**row, "same_config": same_training(main_cfg.to_dict(), variant_cfg)}


#: Profiles whose sweep the book records (``book/data/ablations-<name>.json``, shipped in the
#: wheel); a profile with ``ablation_record`` shows that profile's record.
RECORDED_SWEEPS = ("cpu",)


def expects_record(p: Profile) -> bool:
    """Whether chapter 12 on ``p`` reads a recorded sweep (and measures only its default live):
    then a missing record is refused, not silently replaced by training every variant."""
    return p.ablation_record is not None or p.name in RECORDED_SWEEPS


def sweep_work(p: Profile) -> list[Any]:
    """The UNet rows of training and scoring every variant at the profile's ablation sizes, as
    :class:`interpddpm.budget.Work` (what ``sweep(recompute=True)`` costs with nothing
    cached)."""
    from .budget import Work

    multi = p.ie_sub_batch_multi * (2**len(CONCEPTS) - 1)  # K = 4: 15 coalitions a sample
    score = p.ablation_pairs * (1 + len(CONCEPTS)) * p.ablation_ddim_steps
    score += p.ablation_fid_samples * p.ablation_ddim_steps
    out = [Work("vanilla scored", "pixel", 0, score)]
    for v in VARIANTS.values():
        if v.switch_t is None and v.merge_of is None:  # merged: chapter 5's runs
            extra = 0 if not v.interpretable else multi
            if v.overrides.get("ie_sub_batch") == "double":
                extra *= 2
            rows = p.batch_size + extra
            steps = p.ablation_steps * v.budget
            out.append(Work(f"fine-tune {v.name}", "pixel", rows * steps, 0, rows))
        out.append(Work(f"score {v.name}", "pixel", 0, score))
    return out


def refusal(p: Profile, record: str) -> str:
    """The one-line refusal of a sweep whose record is missing: what running it would cost (at
    the likely rate on a T4 and an A100) and the parameter that allows it."""
    from .budget import GPUS, work_seconds

    work = sweep_work(p)
    hours = {g: sum(work_seconds(p, w, GPUS[g]) for w in work) / 3600 for g in ("T4", "A100")}
    trained = sum(1 for v in VARIANTS.values() if v.switch_t is None and v.merge_of is None)
    return (
        f"chapter 12 on profile {p.name!r} shows the recorded sweep {record}, which is not "
        f"here (a checkout without book/data, or a package installed without its records). "
        f"Running the sweep instead trains {trained} variants and scores {len(VARIANTS)}: about "
        f"{hours['T4']:.1f} h on a T4, {hours['A100']:.1f} h on an A100. Reinstall interpddpm "
        f"from its wheel (it carries the record), or set recompute = True "
        f"(ablations.sweep(P, recompute=True)) to run it."
    )


def sweep(profile: str | Profile = "auto", *, recompute: bool = False) -> dict[str, Any]:
    """What chapter 12 shows: the recorded sweep when the repository has one for this profile
    (and ``recompute`` is False), else every variant run now. Returns ``{"source", "vanilla",
    "rows"}``; each row and the vanilla entry carry ``image``, a uint8 4x4 sample grid."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    # a GPU profile without a record of its own shows the record of ``ablation_record`` (the
    # full sweep at gpu sizes is hours on an A100: ``interpddpm ablations --profile gpu``)
    shown = p
    try:
        path = sweep_path(p)
        if not path.is_file() and p.ablation_record and not recompute:
            shown = PROFILES[p.ablation_record]
            path = sweep_path(shown)
    except FileNotFoundError:
        path = None
    if not recompute and (path is None or not path.is_file()) and expects_record(p):
        # never start hours of training silently (issue 26): an installed package without
        # its records, or a checkout without book/data, used to train every variant here
        raise UserError(refusal(p, f"book/data/ablations-{shown.name}.json"))
    if not recompute and path is not None and path.is_file():
        record = load_sweep(shown, path=path)
        for entry in [record["vanilla"], *record["rows"]]:
            entry["image"] = grid_image(entry)
        of = "" if shown is p else f"the {shown.name} profile's record, "
        return {
            "source": f"{of}recorded {record['created']} ({record['machine']}, "
            f"{precision_label(record.get('mixed_precision', 'no'))} training)"
            + (f", rows added {record['updated']}" if record.get("updated") else ""),
            "profile": shown.name,
            "vanilla": record["vanilla"],
            "rows": record["rows"],
        }
    rows = run_all(p, train_sources=True)  # every variant now: the merged ones' sources too
    van = vanilla_scores(p)
    for entry in [van, *rows]:
        entry["image"] = _grid_uint8(entry.pop("grid"))
    return {"source": "computed now", "profile": p.name, "vanilla": van, "rows": rows}
