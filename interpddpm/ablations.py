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
    read_cached,
    read_json,
    read_tensors,
    write_json,
    write_tensors,
)
from .locks import locked
from .profiles import Profile, cache_dir, get_profile
from .training import BOOKKEEPING, drop_later_defaults, json_digest, precision_label

#: The concepts every ablation model is fine-tuned for at once (K = 4).
CONCEPTS = ("eyes", "nose", "mouth")

#: The paper's operating point: locality cut 58-66% (mean 63%), FID ratio 1.43-1.51 (Table 2).
PAPER_POINT = {"locality_cut": 0.63, "fid_ratio": 1.47}


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


_ONE = {"ie_constraint": "one_sided"}
_ONE10 = _ONE | {"lambda_start": 10.0}

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
        Variant(
            "one-sided, lambda 10, t weighted by noise",
            "one-sided + timesteps",
            _ONE10 | {"ie_t_weight": "noise"},
        ),
    ]
}


#: The variant the book uses as its default (``runs.DEFAULT_IE`` holds its settings).
DEFAULT_VARIANT = "one-sided, lambda 10, t weighted by noise"


def variant_config(profile: str | Profile, variant: str | Variant) -> Any:
    """The :class:`~interpddpm.training.TrainConfig` of one variant at the profile's ablation
    budget (``ablation_steps`` fine-tuning steps, lambda decayed over ``ablation_decay_steps``)."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    base = runs.finetune_config(p, CONCEPTS, interpretable=v.interpretable)
    overrides = dict(v.overrides)
    if overrides.get("ie_sub_batch") == "double":
        overrides["ie_sub_batch"] = 2 * base.ie_sub_batch
    slug = "ablation-" + re.sub(r"[^a-z0-9]+", "-", v.name.lower()).strip("-")
    settings = {
        **REFERENCE,
        "steps": p.ablation_steps,
        "lambda_decay_steps": p.ablation_decay_steps,
        "checkpoint_every": p.ablation_steps,
        **overrides,
    }
    return runs.named(base.replace(**settings), p, slug)


def _key(payload: dict[str, Any]) -> str:
    return json_digest(payload)


def _eval_sizes(p: Profile) -> dict[str, int]:
    return {
        "n_pairs": p.ablation_pairs,
        "fid_samples": p.ablation_fid_samples,
        "ddim_steps": p.ablation_ddim_steps,
        "dilation": p.dilation,
        # C2ST of the FID samples against the real set (4 folds; 2 for the smoke sizes)
        "c2st_folds": 4 if p.ablation_fid_samples >= 16 else 2,
    }


def score(
    model: Any, profile: str | Profile, *, parser: Any = None, real: torch.Tensor | None = None
) -> dict[str, Any]:
    """Locality per concept, the parser-feature FID and the C2ST accuracy (with its interval,
    :mod:`interpddpm.c2st`) of one model at the ablation sizes."""
    from .c2st import c2st
    from .metrics import locality_protocol
    from .realism import frechet_distance, sample_images
    from .toyfaces import ToyFaces

    p = profile if isinstance(profile, Profile) else get_profile(profile)
    s = _eval_sizes(p)
    parser = parser or runs.parser(p, progress=False)
    if real is None:
        real, _ = ToyFaces(p.image_size, s["fid_samples"], seed=777).batch(range(s["fid_samples"]))
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
        cache=cache_dir(p) / "samples",  # chapter 08 samples the same sets at the cpu sizes
    )
    test = c2st(real, fake, folds=s["c2st_folds"])
    return {
        "locality": {r.concept: r.ratio_of_sums for r in loc},
        "fid": frechet_distance(real, fake, parser=parser),
        "c2st": test.accuracy,
        "c2st_low": test.low,
        "c2st_high": test.high,
        "grid": fake[:16],
    }


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
    key = _key({"run": runs.baseline_config(p).to_dict(), **_eval_sizes(p)})
    path = cache_dir(p) / "ablations" / "vanilla.pt"
    return _cached(path, key, lambda: score(base.model(), p))


def run_variant(
    profile: str | Profile, variant: str | Variant, *, progress: bool = True
) -> dict[str, Any]:
    """Fine-tune (or load) one variant and score it; adds cuts and ratios against vanilla."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    cfg = variant_config(p, v)
    runs.baseline(p, progress=progress)
    result = runs.ensure(cfg, progress=progress)
    key = _key({"run": cfg.to_dict(), **_eval_sizes(p)})
    path = Path(cfg.output_dir).parent.parent / "ablations" / f"{Path(cfg.output_dir).name}.pt"
    scored = _cached(path, key, lambda: score(result.model(), p))
    van = vanilla_scores(p, progress=progress)
    cuts = {c: 1 - scored["locality"][c] / van["locality"][c] for c in CONCEPTS}
    return {
        "variant": v.name,
        "group": v.group,
        **{f"locality {c}": scored["locality"][c] for c in CONCEPTS},
        **{f"cut {c}": cuts[c] for c in CONCEPTS},
        "min cut": min(cuts.values()),
        "FID": scored["fid"],
        "FID ratio": scored["fid"] / van["fid"],
        **_c2st_columns(scored),
        "rows per step": result.metrics()[-1]["rows"],
        "sec per step": sum(m["sec_per_step"] for m in result.metrics()) / len(result.metrics()),
        "grid": scored["grid"],
    }


def run_all(
    profile: str | Profile = "auto",
    names: Sequence[str] | None = None,
    *,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Every variant (or ``names``), in order; cached runs and scores are reused."""
    names = list(VARIANTS) if names is None else list(names)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown ablation variants {unknown}; valid: {list(VARIANTS)}.")
    return [run_variant(profile, n, progress=progress) for n in names]


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
) -> dict[str, list[float]]:
    """``E ||eps - eps_theta(x_t, t)||^2`` inside the concepts and in the rest, per timestep, on
    held-out toy faces with the same noise for every model: where denoising got worse."""
    from diffusers import DDPMScheduler

    from .denoiser_game import predict_noise
    from .regions import player_masks
    from .sampling import training_scheduler_config
    from .toyfaces import ToyFaces

    sched = DDPMScheduler.from_config(training_scheduler_config(model))
    images, labels = ToyFaces(image_size, n_images, seed=4242).batch(range(n_images))
    masks = player_masks(labels, CONCEPTS).float()  # [B, 4, H, W]; the last is the rest
    concept = masks[:, :-1].sum(1, keepdim=True)
    out: dict[str, list[float]] = {"t": list(timesteps), "concepts": [], "rest": []}
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    for t in timesteps:
        noise = torch.randn(images.shape, generator=gen)
        tt = torch.full((n_images,), t, dtype=torch.long)
        with torch.no_grad():
            err = (predict_noise(model, sched.add_noise(images, noise, tt), tt) - noise).pow(2)
        err = err.mean(1, keepdim=True)  # over channels
        out["concepts"].append(float((err * concept).sum() / concept.sum()))
        out["rest"].append(float((err * (1 - concept)).sum() / (1 - concept).sum()))
    return out


# ------------------------------------------------------------------------------------------
# The stored sweep: the CPU book shows a sweep recorded by `interpddpm ablations` and
# re-measures its default live (the whole sweep takes ~30 min on 2 cores).
# ------------------------------------------------------------------------------------------
def sweep_path(profile: str | Profile, root: Path | None = None) -> Path:
    """``book/data/ablations-<profile>.json`` of the repository (the recorded sweep)."""
    from .profiles import book_data

    p = profile if isinstance(profile, Profile) else get_profile(profile)
    name = f"ablations-{p.name}.json"
    return root / "book" / "data" / name if root is not None else book_data(name)


def _record_key(config: dict[str, Any], base: dict[str, Any] | None = None) -> str:
    """A hash of a variant's recipe and of its baseline's (``base``, the config of the run it
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
    return _record_key(variant_config(p, v).to_dict(), runs.baseline_config(p).to_dict())


def _grid_uint8(grid: torch.Tensor) -> Any:
    """The first 16 samples tiled 4x4 as an ``[H, W, 3]`` uint8 array."""
    from .plotting import to_uint8_grid

    return (to_uint8_grid(grid[:16], nrow=4) * 255).round().to(torch.uint8).numpy()


def _grid_png(grid: torch.Tensor) -> str:
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


def record_sweep(
    profile: str | Profile = "auto", *, path: Path | None = None, progress: bool = True
) -> Path:
    """Run (or load) every variant and write the sweep record: rows, vanilla scores, sizes, the
    hash of each variant's training config, and small PNG sample grids.

    ``path``: the record file, or an existing folder that receives ``ablations-<profile>.json``
    (default: :func:`sweep_path`). Its folder is checked for writing BEFORE the sweep runs
    (:class:`interpddpm.errors.RunDirError`), not after half an hour of training."""
    import datetime
    import platform

    from .errors import RunDirError, check_writable_dir

    p = profile if isinstance(profile, Profile) else get_profile(profile)
    out = Path(path) if path is not None else sweep_path(p)
    if out.is_dir():
        out = out / sweep_path(p, root=Path(".")).name
    check_writable_dir(out.parent, "the folder of the sweep record")
    if out.exists() and not out.is_file():
        raise RunDirError(f"{out} exists and is not a file; choose another --out.")
    rows = run_all(p, progress=progress)
    van = vanilla_scores(p, progress=progress)
    record = {
        "profile": p.name,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "mixed_precision": variant_config(p, DEFAULT_VARIANT).mixed_precision,
        "sizes": {"steps": p.ablation_steps, "decay": p.ablation_decay_steps, **_eval_sizes(p)},
        "vanilla": {
            "locality": van["locality"],
            "fid": van["fid"],
            **{k: van[k] for k in ("c2st", "c2st_low", "c2st_high")},
            "grid_png": _grid_png(van["grid"]),
        },
        "rows": [
            {
                **{k: v for k, v in r.items() if k != "grid"},
                "config_key": variant_record_key(p, r["variant"]),
                "grid_png": _grid_png(r["grid"]),
            }
            for r in rows
        ],
    }
    text = json.dumps(record, indent=1)
    return atomic_write(out, lambda tmp: tmp.write_text(text))


def load_sweep(profile: str | Profile = "auto", *, path: Path | None = None) -> dict[str, Any]:
    """The recorded sweep of a profile; its rows must match the current variants' configs."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    path = path or sweep_path(p)
    if not path.is_file():
        raise FileNotFoundError(
            f"no recorded sweep at {path}; record one with `interpddpm ablations --profile "
            f"{p.name}` (or run the variants with ablations.run_all)."
        )
    record = json.loads(path.read_text())
    stale = [
        r["variant"]
        for r in record["rows"]
        if r["variant"] not in VARIANTS or r["config_key"] != variant_record_key(p, r["variant"])
    ]
    if stale:
        raise ValueError(
            f"{path} was recorded with other settings for {stale}; re-record it with "
            f"`interpddpm ablations --profile {p.name}`."
        )
    return record


def same_training(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two TrainConfig dicts train the same weights (bookkeeping keys aside)."""
    return {k: v for k, v in a.items() if k not in BOOKKEEPING} == {
        k: v for k, v in b.items() if k not in BOOKKEEPING
    }


def measure_default_live(
    profile: str | Profile = "auto", *, progress: bool = True
) -> dict[str, Any]:
    """Score the book's main K = 4 model (chapter 5, trained with ``runs.DEFAULT_IE``) at the
    ablation sizes: on the CPU its config equals the default variant's, so its row re-measures
    the recorded one live. ``same_config`` says whether that holds for this profile."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    main = runs.interpretable(p, CONCEPTS, progress=progress)
    main_cfg = runs.finetune_config(p, CONCEPTS).to_dict()
    variant_cfg = variant_config(p, DEFAULT_VARIANT).to_dict()
    same = same_training(main_cfg, variant_cfg)
    key = _key({"run": main_cfg, **_eval_sizes(p)})
    path = cache_dir(p) / "ablations" / f"{Path(main_cfg['output_dir']).name}.pt"
    scored = _cached(path, key, lambda: score(main.model(), p))
    van = vanilla_scores(p, progress=progress)
    cuts = {c: 1 - scored["locality"][c] / van["locality"][c] for c in CONCEPTS}
    return {
        "variant": f"{DEFAULT_VARIANT} (chapter 5's model, live)",
        **{f"cut {c}": cuts[c] for c in CONCEPTS},
        "min cut": min(cuts.values()),
        "FID ratio": scored["fid"] / van["fid"],
        **_c2st_columns(scored),
        "same_config": same,
        "grid": scored["grid"],
    }


def sweep(profile: str | Profile = "auto", *, recompute: bool = False) -> dict[str, Any]:
    """What chapter 12 shows: the recorded sweep when the repository has one for this profile
    (and ``recompute`` is False), else every variant run now. Returns ``{"source", "vanilla",
    "rows"}``; each row and the vanilla entry carry ``image``, a uint8 4x4 sample grid."""
    p = profile if isinstance(profile, Profile) else get_profile(profile)
    try:
        path = sweep_path(p)
    except FileNotFoundError:
        path = None
    if not recompute and path is not None and path.is_file():
        record = load_sweep(p, path=path)
        for entry in [record["vanilla"], *record["rows"]]:
            entry["image"] = grid_image(entry)
        return {
            "source": f"recorded {record['created']} ({record['machine']}, "
            f"{precision_label(record.get('mixed_precision', 'no'))} training)",
            "vanilla": record["vanilla"],
            "rows": record["rows"],
        }
    rows = run_all(p)
    van = vanilla_scores(p)
    for entry in [van, *rows]:
        entry["image"] = _grid_uint8(entry.pop("grid"))
    return {"source": "computed now", "vanilla": van, "rows": rows}
