"""The named runs the chapters share, trained once per profile and cached.

``baseline`` is a plain DDPM trained from scratch; ``interpretable(concepts)`` fine-tunes it with
``L_IE`` (eq. 9); ``control`` fine-tunes it for the same steps WITHOUT ``L_IE``, so that
improvements are not mistaken for the effect of merely training longer. Each lives in
``cache_dir(profile)/runs/<name>-<fingerprint>`` (:func:`named`); a chapter opened alone trains
what it is missing, and a finished run is loaded, not retrained. With a source of published runs
(``INTERPDDPM_RUNS_FROM`` or :func:`use_published`), a missing run is first fetched from it
(:mod:`interpddpm.hub`). A profile may record runs with the book (:func:`recorded_source`:
the cpu profile's baseline in ``book/data/runs-cpu``), which are loaded the same way.

Serves chapters 4 to 12: the runs they share.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import devices, memo, pace
from .artifacts import sha256_file
from .devices import place, resolve_mixed_precision
from .hub import RUNS_OFF, Source, fetch_run, parse_source
from .locks import locked
from .profiles import Profile, book_data, cache_dir, get_profile
from .training import (
    TrainConfig,
    TrainResult,
    list_checkpoints,
    read_verified_record,
    train,
    training_dataset,
)

#: The paper's lambda floors: 10 for the nose model, 1 for the eyes and mouth models.
LAMBDA_FLOOR = {"nose": 10.0, "eyes": 1.0, "mouth": 1.0}

#: The book's interpretable fine-tuning settings beyond the paper's for a model of two or more
#: concepts, chosen in chapter 12 from the ablations (``interpddpm.ablations.DEFAULT_VARIANT``):
#: the one-sided constraint (only the outside of a concept must ignore the concept's noise), a
#: gentler lambda start, and L_IE weighted by the noise level 1 - alpha_bar_t (the nearly clean
#: steps, where the constraint costs the most realism, weigh little). The lambda floors stay the
#: paper's.
DEFAULT_IE: dict[str, Any] = {
    "ie_constraint": "one_sided",
    "lambda_start": 10.0,
    "ie_t_weight": "noise",
}

#: The book's settings for a model of ONE concept (chapter 12, ``benchmarks/single_concept.py``):
#: the one-sided constraint on the outside read as several regions (the other concepts, hair,
#: skin, background: ``regions.output_masks``), lambda from 10 to a floor of 3 for every
#: concept, weighted by the noise level. With the outside one "rest" region, the one-sided
#: constraint did not localise at all (the mean of a large region ignores the concept for free:
#: a nose cut of 1% on the cpu book); split, it cuts 64 / 70 / 78% (eyes / nose / mouth) at FID
#: ratios of 1.12 / 1.09 / 1.17, where the paper's recipe cuts 79 / 98 / 92% at 1.65 / 7.0 /
#: 2.5 and leaves the concept a patch of noise.
SINGLE_IE: dict[str, Any] = {
    "ie_constraint": "one_sided",
    "lambda_start": 10.0,
    "lambda_floor": 3.0,
    "ie_t_weight": "noise",
    "ie_outside": "split",
}

#: The paper's recipe (eq. 8, two-sided, lambda from 1e3 to the paper's floors
#: :data:`LAMBDA_FLOOR`, the outside one region): ``recipe="paper"``. The chapters train it
#: beside the book's models as the reproduction of the paper's, and chapter 10's latent models
#: use it.
PAPER_IE: dict[str, Any] = {
    "ie_constraint": "two_sided",
    "lambda_start": 1e3,
    "ie_t_weight": "uniform",
    "ie_outside": "one",
}

#: The recipes :func:`finetune_config` knows: the book's (:data:`DEFAULT_IE` for several
#: concepts, :data:`SINGLE_IE` for one) and the paper's (:data:`PAPER_IE`).
RECIPES = ("book", "paper")


def paper_floor(concepts: Sequence[str]) -> float:
    """The paper's lambda floor for a model of ``concepts``: the smallest of theirs."""
    return min(LAMBDA_FLOOR.get(c, 1.0) for c in concepts)


def ie_settings(concepts: Sequence[str], recipe: str = "book") -> dict[str, Any]:
    """The L_IE settings of a fine-tuning run of ``concepts``: the book's recipe
    (:data:`DEFAULT_IE` with the paper's floors for several concepts, :data:`SINGLE_IE` for
    one) or the paper's (:data:`PAPER_IE` with its floors)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
    if not concepts:
        raise ValueError("a fine-tuning run needs at least one concept, e.g. ['nose']")
    if recipe == "paper":
        return PAPER_IE | {"lambda_floor": paper_floor(concepts)}
    if len(concepts) >= 2:
        return DEFAULT_IE | {"lambda_floor": paper_floor(concepts)}
    return dict(SINGLE_IE)


def _profile(profile: str | Profile) -> Profile:
    return profile if isinstance(profile, Profile) else get_profile(profile)


def run_dir(profile: str | Profile, name: str) -> Path:
    return cache_dir(_profile(profile)) / "runs" / name


#: Training precisions a run may have been trained under (TrainConfig.mixed_precision).
PRECISIONS = ("no", "bf16", "fp16")


def named(config: TrainConfig, profile: str | Profile, name: str) -> TrainConfig:
    """``config`` saved in ``runs/<name>-<config.fingerprint()>``: when a profile or a default
    changes what a run learns, the new run gets its own folder instead of colliding with (and
    being refused by) the old one, which stays untouched.

    One run, any GPU (issue 26): the fingerprint keeps the training precision (a run resumes
    only under the precision it started with: fp16 carries a GradScaler, bf16 none), but a
    FINISHED run of the same config trained under another precision is the same model for
    loading, sampling and editing (its checkpoints hold fp32 weights): when this config's own
    folder holds no checkpoint, such a sibling (:func:`precision_siblings`) is used as it is,
    so a baseline trained on an A100 (bf16) is loaded on a T4 (fp16) instead of retrained.
    Only on the profiles of real photographs (gpu, paper): the toy profiles' runs take minutes
    and the cpu book's numbers come from its own precision's runs."""
    own = config.replace(output_dir=str(run_dir(profile, f"{name}-{config.fingerprint()}")))
    if not _profile(profile).real_faces or list_checkpoints(own.output_dir):
        return own  # the toy profiles train in minutes: their runs stay their own
    for sibling in precision_siblings(own):
        if _finished(sibling):
            _say(
                f"using {Path(sibling.output_dir).name}, finished under "
                f"{sibling.mixed_precision}, on this {own.mixed_precision} machine (a finished "
                "run loads at any precision)"
            )
            _ADOPTED.add(sibling.output_dir)
            return sibling
    for sibling in precision_siblings(own):
        if list_checkpoints(sibling.output_dir):  # started elsewhere: say so, train anew
            _say(
                f"{Path(sibling.output_dir).name} was started under {sibling.mixed_precision} "
                f"and resumes only there; this {own.mixed_precision} machine trains "
                f"{Path(own.output_dir).name} (the other run's checkpoints stay)"
            )
    return own


_said: set[str] = set()


def _say(line: str) -> None:
    """Print ``line`` once per process (run configs are rebuilt many times a chapter)."""
    if line not in _said:
        _said.add(line)
        print(line, flush=True)


#: Run folders of finished runs adopted from another precision (:func:`named`): loaded as
#: they are by :func:`ensure`, never handed to the trainer (whose precision check would refuse
#: a bf16 run on a T4, say, though loading it needs no bf16).
_ADOPTED: set[str] = set()


def _load_finished(config: TrainConfig, codec: Any = None) -> TrainResult:
    """The finished run in ``config.output_dir`` as :func:`train` returns one, without training
    machinery (any device, any precision: the checkpoint holds fp32 weights)."""
    out = Path(config.output_dir)
    state = read_verified_record(list_checkpoints(out)[-1], "state.json", "train the run again")
    return TrainResult(out, int(state["step"]), out / "metrics.jsonl", 0.0, codec)


def precision_siblings(config: TrainConfig) -> list[TrainConfig]:
    """``config`` under each other training precision, each in its own run folder (beside
    ``config.output_dir``, named ``<name>-<its fingerprint>``)."""
    folder = Path(config.output_dir)
    stem = folder.name.rsplit("-", 1)[0]
    out = []
    for precision in PRECISIONS:
        if precision != config.mixed_precision:
            alt = config.replace(mixed_precision=precision)
            out.append(alt.replace(output_dir=str(folder.parent / f"{stem}-{alt.fingerprint()}")))
    return out


def _finished(config: TrainConfig) -> bool:
    """Whether ``config.output_dir`` holds a verified checkpoint at ``config.steps``."""
    checkpoints = list_checkpoints(config.output_dir)
    if not checkpoints:
        return False
    try:
        state = read_verified_record(checkpoints[-1], "state.json", "train the run again")
    except Exception:  # damaged: not a run to adopt (training it here reports the damage)
        return False
    return int(state.get("step", -1)) >= config.steps


def baseline_config(profile: str | Profile) -> TrainConfig:
    p = _profile(profile)
    config = TrainConfig(
        dataset=p.dataset,
        image_size=p.image_size,
        preset=p.preset,
        steps=p.baseline_steps,
        batch_size=p.batch_size,
        lr=p.baseline_lr,
        beta_schedule=p.beta_schedule,
        snr_gamma=p.snr_gamma,
        lr_warmup_steps=min(100, p.baseline_steps // 10),
        checkpoint_every=max(p.baseline_steps // 4, 1),
        checkpoint_minutes=p.checkpoint_minutes,
        log_every=max(p.baseline_steps // 100, 1),
        mixed_precision=resolve_mixed_precision(p.mixed_precision),
    )
    return named(config, p, "baseline")


def run_name(concepts: Sequence[str], interpretable: bool = True, tag: str = "") -> str:
    base = ("interp-" if interpretable else "control-") + "-".join(concepts)
    return base + (f"-{tag}" if tag else "")


def finetune_config(
    profile: str | Profile,
    concepts: Sequence[str],
    *,
    interpretable: bool = True,
    recipe: str = "book",
    tag: str = "",
    **overrides: Any,
) -> TrainConfig:
    """Fine-tuning from the baseline at the paper's lr 2e-4: the L_IE settings of ``recipe``
    (:func:`ie_settings`: "book", chosen in chapter 12, or "paper"), then ``overrides``. The
    run's folder carries the config's fingerprint, so the two recipes never share one."""
    p = _profile(profile)
    k = len(concepts) + 1
    base = baseline_config(p)
    cfg = base.replace(
        **ie_settings(concepts, recipe),
        init_from=base.output_dir,
        steps=p.finetune_steps,
        lr=p.finetune_lr,
        lr_warmup_steps=0,
        checkpoint_every=max(p.finetune_steps // 2, 1),
        checkpoint_minutes=p.checkpoint_minutes,
        log_every=max(p.finetune_steps // 100, 1),
        interpretable=interpretable,
        concepts=list(concepts),
        dilation=p.dilation,
        lambda_decay_steps=p.lambda_decay_steps,
        ie_sub_batch=p.ie_sub_batch if k == 2 else p.ie_sub_batch_multi,
    )
    cfg = cfg.replace(**overrides) if overrides else cfg
    if "output_dir" in overrides:
        return cfg
    return named(cfg, p, run_name(concepts, interpretable, tag))


_FROM_ENV: Any = object()  # no use_published() call: the environment variable decides
_published: Any = _FROM_ENV


def use_published(source: str | os.PathLike | None) -> None:
    """Fetch missing runs from ``source`` (``owner/name``, ``owner/name@revision`` or a local
    folder laid out like such a hub repo, :func:`interpddpm.hub.parse_source`) in
    :func:`ensure`, instead of training them; ``None`` (or ``"none"``) turns fetching off,
    the profile's recorded runs (:func:`recorded_source`) included. Overrides the environment
    variable ``INTERPDDPM_RUNS_FROM`` for this process. A bad spelling fails here.
    """
    global _published
    if source is not None and not _is_off(source):
        parse_source(source)
    _published = source


def _is_off(setting: str | os.PathLike | None) -> bool:
    return setting is not None and str(setting).strip() == RUNS_OFF


def _source_setting() -> str | os.PathLike | None:
    """:func:`use_published`'s source (None there means off), else ``INTERPDDPM_RUNS_FROM``."""
    if _published is not _FROM_ENV:
        return RUNS_OFF if _published is None else _published
    from .hub import ENV_RUNS_FROM

    return os.environ.get(ENV_RUNS_FROM, "").strip() or None


def published_source() -> str | os.PathLike | None:
    """The source of published runs: :func:`use_published`'s, else ``INTERPDDPM_RUNS_FROM``;
    None when neither names one or fetching is off (``none``)."""
    source = _source_setting()
    return None if _is_off(source) else source


def recorded_source(profile: str | Profile) -> Path | None:
    """The profile's recorded runs, ``book/data/<Profile.recorded_runs>`` of the repository:
    runs trained once by the project and kept with the book (the cpu profile's 13-minute
    baseline), which :func:`ensure` loads instead of training them. Each is used only for
    exactly its config (the folder name carries the fingerprint). None when the profile
    records none, outside a checkout (a pip install), or when fetching is off
    (``INTERPDDPM_RUNS_FROM=none``, ``make book RETRAIN=1``: train everything here)."""
    p = _profile(profile)
    if p.recorded_runs is None or _is_off(_source_setting()):
        return None
    try:
        folder = book_data(p.recorded_runs)
    except FileNotFoundError:
        return None
    return folder if folder.is_dir() else None


def is_recorded(profile: str | Profile, run: TrainResult | str | os.PathLike) -> bool:
    """Whether the finished ``run`` (a result or its folder) is one of the profile's recorded
    runs: its newest checkpoint has every file of the record with the same sha256 (a record
    keeps no optimizer state), loaded from the record or trained here to the same bits."""
    folder = recorded_source(profile)
    if folder is None:
        return False
    local = Path(run.output_dir if isinstance(run, TrainResult) else run)
    digests = []
    for run in (local, folder / "runs" / local.name):
        checkpoints = list_checkpoints(run)
        if not checkpoints:
            return False
        state = read_verified_record(checkpoints[-1], "state.json", "train the run again")
        digests.append(state["sha256"])
    local_digests, recorded = digests
    return all(local_digests.get(name) == digest for name, digest in recorded.items())


#: Environment variable that lets a chapter train runs its estimate does not include.
ENV_TRAIN_MISSING = "INTERPDDPM_TRAIN_MISSING"
#: Which chapter trains which runs (by run folder prefix); other chapters load them.
TRAINED_IN = {"baseline-": "04", "interp-": "05", "control-": "05", "ldm-": "10", "ablation-": "12"}


def check_training_allowed(config: TrainConfig) -> None:
    """Refuse to train a run that the running chapter's estimate does not include (a chapter
    opened alone on a GPU profile, before the chapter that trains it): one error line with
    which chapter trains it, what that chapter costs and the way to allow it here. Only for
    the profiles of real photographs (gpu, paper), where such a run costs an hour or more, and
    only in a chapter (:data:`interpddpm.budget.CURRENT`, set by its estimate line)."""
    from . import budget
    from .errors import UserError
    from .profiles import PROFILES

    chapter, name = budget.CURRENT.get("chapter"), budget.CURRENT.get("profile")
    p = PROFILES.get(name or "")
    if chapter is None or p is None or not p.real_faces:
        return
    if os.environ.get(ENV_TRAIN_MISSING, "").strip() in ("1", "true", "yes"):
        return
    run = Path(config.output_dir)
    if run.parent.name != "runs" or run.parent.parent.name != p.name:
        return  # not a run of the chapter's profile (a test's, a user's own folder)
    folder = run.name
    owner = next((c for prefix, c in TRAINED_IN.items() if folder.startswith(prefix)), None)
    if owner is None or owner == chapter:
        return
    e = budget.chapter_estimate(p, owner, "T4")
    raise UserError(
        f"chapter {chapter} needs the run {folder}, which chapter {owner} trains (that chapter: "
        f"about {e.seconds / 60:.0f} min on a T4): run chapter {owner} first (with Drive "
        f"mounted its runs are kept), fetch published runs (INTERPDDPM_RUNS_FROM), or set "
        f"{ENV_TRAIN_MISSING}=1 to train it here."
    )


def ensure(
    config: TrainConfig,
    *,
    progress: bool = True,
    codec: Any = None,
    recorded: Source | str | os.PathLike | None = None,
) -> TrainResult:
    """Train ``config`` unless its output folder already holds a finished run (then load it).

    When another process is training that run (another notebook, ``make book``), this waits
    for it (printing ``waiting for <run folder> (held by pid N ...)``) and then reuses its
    result, instead of failing or training the same run twice (:mod:`interpddpm.locks`).

    With a source of published runs (:func:`published_source`), a run missing here is first
    fetched from it (:func:`interpddpm.hub.fetch_run`: verified, then loaded, not trained);
    a run the source lacks is trained as usual, and local checkpoints are never replaced.
    ``codec`` is the run's :class:`interpddpm.training.Codec` (None: pixels; latent runs come
    through :mod:`interpddpm.latent`, which passes its autoencoder's).
    ``recorded`` is a folder of recorded runs (:func:`recorded_source`), tried after the
    published source; it is quiet about runs it does not hold.

    A run trained here on a GPU profile's GPU times itself against what the chapter's
    estimate assumed (:func:`pace_expectation`, :mod:`interpddpm.pace`): one line with its
    measured rate and finish time, and the options when it would outlast the session.
    """
    if config.output_dir in _ADOPTED and _finished(config):
        return _load_finished(config, codec)
    with locked(config.output_dir, wait=True, what="run build (runs.ensure)"):
        source = published_source()
        if source is not None:
            fetch_run(source, config, quiet=True)
        if recorded is not None:
            fetch_run(recorded, config, quiet=True)
        if not list_checkpoints(config.output_dir):
            # the same run published under another precision is the same model (see named)
            for sibling in precision_siblings(config):
                for src in (s for s in (source,) if s is not None):  # published runs
                    if fetch_run(src, sibling, quiet=True) is not None and _finished(sibling):
                        print(
                            f"using {Path(sibling.output_dir).name} (trained under "
                            f"{sibling.mixed_precision}) for this {config.mixed_precision} "
                            "machine: a finished run loads at any precision",
                            flush=True,
                        )
                        _ADOPTED.add(sibling.output_dir)
                        return _load_finished(sibling, codec)
            check_training_allowed(config)
            if source is not None:
                text = parse_source(source).text
                print(f"{text} has no runs/{Path(config.output_dir).name}; training it here")
        pace.expect(config.output_dir, pace_expectation(config))
        try:
            return train(config, progress=progress, codec=codec)
        finally:
            pace.expect(config.output_dir, None)


#: The profile field that sizes each kind of run (by run folder prefix, longest first).
STEPS_FIELD = {
    "ldm-baseline": "ldm_baseline_steps",
    "ldm-": "ldm_finetune_steps",
    "baseline-": "baseline_steps",
    "interp-": "finetune_steps",
    "control-": "finetune_steps",
    "ablation-": "ablation_steps",
}


def pace_expectation(config: TrainConfig) -> pace.Expectation | None:
    """What the chapter estimate assumed for a run of a GPU profile trained on a GPU: its
    seconds per step on this GPU (a T4 when :data:`interpddpm.budget.GPUS` lacks it) and the
    profile field that sizes it. None elsewhere (the cpu book prints no pace line)."""
    from . import budget
    from .profiles import PROFILES

    run = Path(config.output_dir)
    p = PROFILES.get(run.parent.parent.name) if run.parent.name == "runs" else None
    if p is None or not p.real_faces or devices.default_device().type != "cuda":
        return None
    gpu = (budget.gpu_key(torch.cuda.get_device_name()) or ("T4",))[0]
    field = next((f for prefix, f in STEPS_FIELD.items() if run.name.startswith(prefix)), None)
    knob = "the run's steps" if field is None else f"{field} (now {getattr(p, field)})"
    return pace.Expectation(budget.run_step_seconds(p, config, gpu), gpu, knob)


def require(config: TrainConfig, *, needed_by: str, train_with: str) -> TrainResult:
    """The finished run of ``config``, loaded and never trained: for what only combines
    finished runs (chapter 12's merged models, :mod:`interpddpm.merging`), where a silent
    training job would hide minutes to hours of work behind a look-up. A run missing here is
    first fetched from the published source (:func:`published_source`) when one is set;
    otherwise one :class:`interpddpm.errors.UserError` line names the run, ``needed_by`` (who
    asked) and ``train_with`` (the command that trains it)."""
    from .errors import UserError

    if not _finished(config):
        source = published_source()
        if source is not None:
            with locked(config.output_dir, wait=True, what="run fetch (runs.require)"):
                fetch_run(source, config, quiet=True)
    if not _finished(config):
        folder = Path(config.output_dir)
        state = "is not finished" if list_checkpoints(folder) else "is missing"
        raise UserError(
            f"{needed_by} needs the finished run {folder.name} ({config.steps} steps), which "
            f"{state} in {folder.parent}; train it first: {train_with} (or fetch published "
            "runs with INTERPDDPM_RUNS_FROM)."
        )
    return _load_finished(config)


def _recorded(p: Profile) -> Source | None:
    """The profile's recorded runs as a fetch source, or None (:func:`recorded_source`)."""
    folder = recorded_source(p)
    # messages name the folder as the repository does, not as this machine's path
    return None if folder is None else Source(f"book/data/{p.recorded_runs}", folder=folder)


#: The cache folders (under :func:`interpddpm.profiles.cache_dir`) whose entries the book
#: records for its recorded models (:mod:`interpddpm.memo`): FID sample sets, locality pairs
#: and locality results.
MEASUREMENT_FOLDERS = ("samples", "locality")


def adopt_recorded_measurements(profile: str | Profile) -> int:
    """Copy the measurements recorded with the profile's runs
    (``book/data/<recorded_runs>/measurements/<folder>``) that its cache lacks into the cache
    (:func:`interpddpm.memo.adopt`): the samples and locality of the recorded comparison models
    are then loaded, not measured again. An entry is used only by a request with exactly its
    key (the same weights, parser and settings). Returns how many were copied."""
    p = _profile(profile)
    folder = recorded_source(p)
    if folder is None:
        return 0
    return sum(
        memo.adopt(folder / "measurements" / sub, cache_dir(p) / sub)
        for sub in MEASUREMENT_FOLDERS
    )


def record_measurements(profile: str | Profile) -> list[Path]:
    """Keep the cache's measurements of the profile's recorded runs and recorded parser with
    them (``book/data/<recorded_runs>/measurements``): the entries whose every network is one
    of those (:func:`interpddpm.memo.record`). Run it after a book build that measured them
    (``interpddpm record-measurements``). Returns the new files."""
    from .errors import UserError
    from .training.codec import load_run_model

    p = _profile(profile)
    folder = recorded_source(p)
    if folder is None:
        raise UserError(f"profile {p.name!r} has no recorded runs folder to record into.")
    digests = {
        memo.weights_digest(load_run_model(run, device="cpu"))
        for run in sorted((folder / "runs").iterdir())
        if run.is_dir()
    }
    weights = recorded_parser(p)
    local = cache_dir(p) / f"parser-{p.image_size}.safetensors"
    if weights is not None and local.is_file() and sha256_file(local) == sha256_file(weights):
        digests.add(memo.weights_digest(parser(p, progress=False).cpu()))
    made = []
    for sub in MEASUREMENT_FOLDERS:
        made += memo.record(cache_dir(p) / sub, folder / "measurements" / sub, digests)
    return made


def baseline(profile: str | Profile = "auto", *, progress: bool = True) -> TrainResult:
    """The plain DDPM of ``profile``: trained here, or loaded from the profile's recorded
    runs (:func:`recorded_source`) when they hold exactly this config's run (with the
    measurements recorded with them, :func:`adopt_recorded_measurements`)."""
    p = _profile(profile)
    adopt_recorded_measurements(p)
    return ensure(baseline_config(p), progress=progress, recorded=_recorded(p))


def interpretable(
    profile: str | Profile,
    concepts: Sequence[str],
    *,
    progress: bool = True,
    recipe: str = "book",
    tag: str = "",
    **overrides: Any,
) -> TrainResult:
    """A model of ``concepts`` fine-tuned from :func:`baseline` with ``recipe``'s L_IE
    (:func:`finetune_config`); loaded from the profile's recorded runs when they hold exactly
    this config's run (the cpu book records the comparison models it shows but does not teach
    by training: the paper's recipe and the K = 4 model)."""
    p = _profile(profile)
    baseline(p, progress=progress)
    config = finetune_config(p, concepts, recipe=recipe, tag=tag, **overrides)
    return ensure(config, progress=progress, recorded=_recorded(p))


def control(
    profile: str | Profile, concepts: Sequence[str] = ("nose",), *, progress: bool = True
) -> TrainResult:
    """The control fine-tune of ``concepts``: the interpretable run's steps without L_IE (what
    fine-tuning alone does); recorded like :func:`interpretable`."""
    p = _profile(profile)
    baseline(p, progress=progress)
    config = finetune_config(p, concepts, interpretable=False)
    return ensure(config, progress=progress, recorded=_recorded(p))


def parser(profile: str | Profile = "auto", *, progress: bool = True) -> Any:
    """The face parser for generated images of this profile, on the profile's device.

    ``parser="toy"``: a small parser trained once on toy faces' exact masks (cached);
    ``parser="bisenet"``: the paper's pretrained BiSeNet for real faces (downloaded once from
    :data:`interpddpm.parsing.BISENET_REPO`). The toy parser never sees a photograph.
    """
    from .parsing import BiSeNetParser, get_parser

    p = _profile(profile)
    if p.parser == "bisenet":
        return place(BiSeNetParser.from_pretrained())
    if p.parser != "toy":
        raise ValueError(f"profile {p.name!r}: parser must be 'toy' or 'bisenet', not {p.parser!r}")
    adopt_recorded_parser(p)
    device = devices.default_device()
    found = get_parser(
        p.image_size, cache_dir(p), device=device, progress=progress, steps=p.parser_steps
    )
    return place(found, device)


def recorded_parser(profile: str | Profile) -> Path | None:
    """The toy parser kept with the profile's recorded runs
    (``book/data/<recorded_runs>/parser-<size>.safetensors``, its JSON sidecar and digest), when
    it was trained exactly as this profile trains one (its size, ``parser_steps`` and seed 0):
    a parser's weights differ in their last bits with the machine's thread count, and every
    locality number of the book reads through it, so the cpu book keeps the one it was measured
    with. None when there is none, it was trained otherwise, or recorded runs are off
    (``make book RETRAIN=1``)."""
    p = _profile(profile)
    folder = recorded_source(p)
    if folder is None or p.parser != "toy":
        return None
    weights = folder / f"parser-{p.image_size}.safetensors"
    sidecar = weights.with_suffix(".json")
    if not (weights.is_file() and sidecar.is_file()):
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    wanted = {"size": p.image_size, "steps": p.parser_steps, "seed": 0}
    return weights if all(meta.get(k) == v for k, v in wanted.items()) else None


def adopt_recorded_parser(profile: str | Profile) -> bool:
    """Copy :func:`recorded_parser` into the profile's cache when the cache has no parser of
    its size yet (the cache's own parser, trained here, is never replaced); True when copied.
    :func:`interpddpm.parsing.get_parser` then loads it, its digest checked."""
    p = _profile(profile)
    source = recorded_parser(p)
    dest = cache_dir(p) / f"parser-{p.image_size}.safetensors"
    if source is None:
        return False
    with locked(dest, wait=True, what="face parser build (runs.parser)"):
        if dest.exists():
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        # sidecar and digest first, the weights last and atomically: a cache holding the
        # weights holds the rest
        for src in (source.with_suffix(".json"), Path(f"{source}.sha256")):
            if src.is_file():
                tmp = dest.parent / f".{src.name}.tmp"
                shutil.copyfile(src, tmp)
                os.replace(tmp, dest.parent / src.name)
        tmp = dest.parent / f".{dest.name}.tmp"
        shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    print(f"using the recorded face parser book/data/{p.recorded_runs}/{source.name}", flush=True)
    return True


def parser_iou(profile: str | Profile, parser: Any, n: int | None = None) -> dict[str, Any]:
    """How well ``parser`` (:func:`parser`) labels ``n`` faces with exact label maps
    (:func:`interpddpm.parsing.evaluate_parser`): held-out toy faces, which the toy parser never
    saw, or the first ``n`` faces of the profile's dataset with their annotated masks merged to
    the book's classes (a parser never sees toy faces on a real dataset's profile). ``n=None``:
    256, or one FID set of the profile if smaller (the smoke sizes). The result names the faces
    under ``"faces"``.
    """
    from .parsing import evaluate_parser

    p = _profile(profile)
    n = min(256, p.fid_samples) if n is None else n
    if p.dataset == "toyfaces":
        return {"faces": "held-out toy faces", **evaluate_parser(parser, p.image_size, n=n)}
    data = _real_faces(p, "all")  # a pretrained parser never saw this dataset
    if data.labels is None:
        raise ValueError(f"{p.dataset!r} has no label maps: a parser cannot be scored on it.")
    n = min(n, len(data))
    found = evaluate_parser(parser, p.image_size, n=n, dataset=data)
    return {"faces": f"{p.dataset} faces (annotated masks)", **found}


#: The dataset a run trains on (toy faces, CelebA(-HQ) or a folder), indexable and with
#: ``batch(indices) -> (images in [-1, 1], labels or None)``.
training_data = training_dataset


def _real_faces(p: Profile, part: str) -> Any:
    """The profile's real dataset at its image size: ``part`` of its rows
    (:func:`interpddpm.datasets.get_dataset`)."""
    from .datasets import get_dataset

    return get_dataset(p.dataset, size=p.image_size, part=part)


def faces(
    profile: str | Profile, n: int, *, seed: int, start: int = 0
) -> tuple[Tensor, Tensor | None]:
    """Faces ``start .. start + n - 1`` of the profile's dataset set ``seed``, with their label
    maps (None without masks): the real faces that generated ones are compared with (FID,
    C2ST), audited on and edited from.

    Toy faces: items ``start ..`` of ``ToyFaces(image_size, seed=seed)`` (no run trains on
    a seed other than its own). A real dataset: its held-out rows, the last
    :data:`interpddpm.datasets.HELD_OUT_ROWS` that no run trains on (``part="held-out"``), N of
    them: one fixed shuffle, cut into blocks of ``n``; ``seed`` picks block
    ``seed % (N // n)``, so the sets of two seeds that differ by less than ``N // n`` are
    disjoint (the real-vs-real floor of chapter 08); ``start`` shifts inside the shuffle.
    """
    p = _profile(profile)
    if p.dataset == "toyfaces":
        from .toyfaces import ToyFaces

        return ToyFaces(p.image_size, start + n, seed=seed).batch(range(start, start + n))
    data = _real_faces(p, "held-out")
    total = len(data)
    if n > total:
        raise ValueError(
            f"asked for {n} held-out faces, but {p.dataset!r} holds out only {total} "
            "(datasets.HELD_OUT_ROWS): ask for fewer."
        )
    first = (seed % max(total // n, 1)) * n + start
    order = torch.randperm(total, generator=torch.Generator().manual_seed(0))
    return data.batch(order[(torch.arange(first, first + n) % total)].tolist())
