"""Trained runs on the Hugging Face Hub: publish a finished run once, fetch it everywhere else.

A run folder (``cache_dir(profile)/runs/<name>-<fingerprint>``, :mod:`interpddpm.runs`) is what
a chapter trains when it is missing and loads when it is there. :func:`publish_run` uploads the
part of a finished run that loading needs (its newest checkpoint, which verifies, and the small
training log) to ``runs/<run folder name>/`` of a hub repository. :func:`fetch_run` is the other
half: when a source of published runs is set (``INTERPDDPM_RUNS_FROM=owner/name[@revision]``, a
local folder laid out like such a repository, or :func:`interpddpm.runs.use_published`),
:func:`interpddpm.runs.ensure` fetches a missing run from it, verifies it, and the trainer then
loads it instead of training it: a Colab session need not retrain what someone already trained.

The run folder name carries the config's fingerprint, so a published run is found exactly when
it was trained with the requested config; the fetched copy is checked again (its digests and
its saved config's fingerprint) before it takes the run folder's place. A local run folder
that holds checkpoints is never replaced: local work is never lost.

Serves every chapter: the runs a chapter fetches instead of training them.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .artifacts import quarantine, seal_record
from .errors import UserError
from .training import (
    BOOKKEEPING,
    CHECKPOINT_PREFIX,
    HUB_MODEL_ID,
    ConfigError,
    TrainConfig,
    list_checkpoints,
    read_verified_record,
)

__all__ = [
    "ENV_RUNS_FROM",
    "METRICS_LIMIT",
    "RUNS_OFF",
    "Published",
    "PublishError",
    "PublishedRunsError",
    "Source",
    "fetch_run",
    "model_card",
    "parse_source",
    "publish_run",
    "record_run",
    "resolve_run",
]

#: The environment variable naming the source of published runs (see :func:`parse_source`).
ENV_RUNS_FROM = "INTERPDDPM_RUNS_FROM"
#: ``INTERPDDPM_RUNS_FROM=none``: fetch nothing, not even a profile's recorded runs (every run
#: is trained here; ``make book RETRAIN=1``).
RUNS_OFF = "none"
#: The training log is published only below this size (bytes): it is a record, not a need.
METRICS_LIMIT = 16 << 20
_METRICS = "metrics.jsonl"
_OPTIMIZER = "optimizer.safetensors"
_CARD = "README.md"
#: What a local source may hold beside a run that is not part of it (temporary, quarantined).
_NOT_COPIED = (".tmp-*", ".write-test-*", "corrupt-*", "*.lock", "*.lock.info")


class PublishError(UserError):
    """A run that cannot be published as asked (unfinished, unverified, a bad repo id)."""


class PublishedRunsError(UserError):
    """The source of published runs cannot be read, or holds a run that does not fit."""


# ------------------------------------------------------------------------------------------
# Publishing
# ------------------------------------------------------------------------------------------
def resolve_run(run: str | os.PathLike, profile: str = "auto") -> Path:
    """The run folder ``run``: a path, or the name of a folder in ``cache_dir(profile)/runs``."""
    from .profiles import cache_dir

    path = Path(run).expanduser()
    if path.is_dir():
        return path
    runs = cache_dir(profile) / "runs"
    if (runs / str(run)).is_dir():
        return runs / str(run)
    there = sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    listing = f"runs there: {', '.join(there)}" if there else "it holds no runs"
    raise PublishError(f"no run {str(run)!r}: not a folder, nor a run in {runs} ({listing}).")


def _newest_checkpoint(run: Path, remedy: str, error: type[UserError]) -> tuple[Path, dict]:
    """The newest checkpoint of ``run`` and its verified ``state.json`` (digests of every file
    and of the record itself). Unlike the trainer, no fallback to an older checkpoint: what is
    shared must be exactly what its owner trained last."""
    checkpoints = list_checkpoints(run)
    if not checkpoints:
        raise error(f"{run} holds no checkpoint; {remedy}.")
    try:
        state = read_verified_record(checkpoints[-1], "state.json", remedy)
    except UserError as err:
        raise error(f"the newest checkpoint of {run} does not verify: {err}") from err
    return checkpoints[-1], state


def _local_init(config: dict[str, Any]) -> str | None:
    """The run folder a fine-tune starts from (it must exist wherever the run is loaded)."""
    init = config.get("init_from")
    return Path(init).name if init and os.path.isabs(init) else None


def _shown_config(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config without this machine's paths (a run folder counts by its name)."""
    shown = {k: v for k, v in config.items() if k != "output_dir"}
    for key in ("init_from", "autoencoder"):
        if shown.get(key) and os.path.isabs(shown[key]):
            shown[key] = Path(shown[key]).name
    return shown


def model_card(name: str, state: dict[str, Any], source: str) -> str:
    """The ``README.md`` of a repo of published runs: what the first run is, its config, and
    how to load it (other runs published later sit beside it under ``runs/``). ``source`` is
    the repo as ``INTERPDDPM_RUNS_FROM`` takes it: ``owner/name[@revision]``."""
    repo_id, _, revision = source.partition("@")
    pinned = f', revision="{revision}"' if revision else ""
    import yaml

    config = state["config"]
    init = _local_init(config)
    if config.get("interpretable"):
        what = (
            f"Fine-tuned from `{init or config.get('init_from')}` with the dummy-player loss "
            f"L_IE (eq. 9) for the concepts {', '.join(config.get('concepts', []))}"
        )
    elif config.get("init_from"):
        what = f"Fine-tuned from `{init or config['init_from']}` without L_IE (a control run)"
    else:
        what = "A plain DDPM trained from scratch (the baseline)"
    shown = yaml.safe_dump(_shown_config(config), sort_keys=True).rstrip()
    return f"""---
tags:
- interpddpm
- diffusion
- ddpm
- interpretability
---
# Trained runs of interpddpm

Runs trained with `interpddpm` (interpretable diffusion models through Shapley values), each in
`runs/<run folder>/`: its newest checkpoint (`checkpoint-*/`: weights, EMA weights, optimizer
state, and `state.json` with the config and the sha256 of every file) and its training log
(`metrics.jsonl`). A run folder is named `<run>-<fingerprint of its config>`.

## `{name}`

{what}; {state["step"]} steps, {config.get("image_size")} px, dataset `{config.get("dataset")}`.

```yaml
{shown}
```

## Load it

Set the source of published runs before the first cell that trains; `interpddpm.runs.ensure`
(every chapter) then fetches a run it finds here, verifies it and loads it instead of training
(a fine-tune needs the run it starts from too):

```bash
export INTERPDDPM_RUNS_FROM={source}
```

In a notebook: `%env INTERPDDPM_RUNS_FROM={source}`. By hand:

```python
from huggingface_hub import snapshot_download
from interpddpm.training import load_run_model

path = snapshot_download("{repo_id}"{pinned}, allow_patterns=["runs/{name}/*"])
unet = load_run_model(f"{{path}}/runs/{name}")  # the EMA weights
```
"""


@dataclasses.dataclass(frozen=True)
class Published:
    """What :func:`publish_run` uploaded: ``files`` relative to ``runs/<name>/`` of the repo."""

    repo_id: str
    revision: str | None
    path_in_repo: str
    step: int
    files: tuple[str, ...]
    card: bool  #: whether the repo's README.md was written (only when it had none)
    init_from: str | None  #: the run folder a fine-tune starts from (publish it too)


def _hub_api() -> Any:
    """The client :func:`publish_run` uses by default (tests pass their own ``api``)."""
    from huggingface_hub import HfApi

    return HfApi()


def publish_run(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    api: Any = None,
) -> Published:
    """Upload the finished run ``run_dir`` to ``runs/<its folder name>/`` of hub repo ``repo_id``
    (created if missing), so that :func:`fetch_run` can load it elsewhere.

    Only what loading needs is uploaded: the newest checkpoint (refused unless it verifies and
    the run reached its ``steps``) and ``metrics.jsonl`` when it is under
    :data:`METRICS_LIMIT`; an older checkpoint of the same run already in the repo is deleted
    in the same commit. A ``README.md`` model card is written when the repo has none.
    ``revision`` publishes to that branch (created from ``main`` if missing). ``api`` is a
    :class:`huggingface_hub.HfApi` (default: a new one, logged in as ``hf auth login`` or
    ``HF_TOKEN`` say).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise PublishError(f"no run folder {run}.")
    if not HUB_MODEL_ID.fullmatch(repo_id):
        raise PublishError(f"--repo-id {repo_id!r} is not a hub repo id of the form owner/name.")
    name = run.name
    with tempfile.TemporaryDirectory(prefix=f".publish-{name}-") as staging:
        staged = Path(staging) / name
        state, files = _portable_copy(run, staged)
        return _upload(staged, state, files, repo_id, private, revision, api)


def _portable_copy(
    run: Path, dest: Path, *, optimizer: bool = True
) -> tuple[dict[str, Any], list[str]]:
    """Copy what loading the finished run ``run`` needs into the new folder ``dest``: its
    newest checkpoint (refused unless it verifies and the run reached its ``steps``) and
    ``metrics.jsonl`` when under :data:`METRICS_LIMIT`. The copy's ``state.json`` names its
    run folder relatively (``runs/<name>``, re-sealed), so a shared run carries no path of the
    machine that trained it. ``optimizer=False`` leaves out the optimizer state (twice the
    weights' size), which only training on past ``steps`` would need. Returns the state and
    the copied files, relative to ``dest``."""
    remedy = f"finish the run first (interpddpm train, or runs.ensure, resumes {run})"
    checkpoint, state = _newest_checkpoint(run, remedy, PublishError)
    if state["step"] < state["config"]["steps"]:
        raise PublishError(
            f"{run} is unfinished (step {state['step']} of {state['config']['steps']}); "
            f"{remedy}, then share it."
        )
    state["config"] = {**state["config"], "output_dir": f"runs/{run.name}"}
    if not optimizer:
        state.pop("optimizer", None)
        state["sha256"] = {k: v for k, v in state["sha256"].items() if k != _OPTIMIZER}
    (dest / checkpoint.name).mkdir(parents=True)
    (dest / checkpoint.name / "state.json").write_text(seal_record(state))
    files = [f"{checkpoint.name}/state.json"]
    for weights in sorted(state["sha256"]):
        shutil.copyfile(checkpoint / weights, dest / checkpoint.name / weights)
        files.append(f"{checkpoint.name}/{weights}")
    metrics = run / _METRICS
    if metrics.is_file() and metrics.stat().st_size <= METRICS_LIMIT:
        shutil.copyfile(metrics, dest / _METRICS)
        files.append(_METRICS)
    return state, files


def record_run(run_dir: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Keep the finished run ``run_dir`` in the local folder ``folder`` (as
    ``folder/runs/<run folder name>/``, the layout :func:`fetch_run` reads from a folder):
    what :func:`publish_run` uploads, without a hub and without the optimizer state (a record
    is for loading, and stays small enough for a repository). The book records its cpu
    baseline this way (``book/data/runs-cpu``, :func:`interpddpm.runs.recorded_source`). A run
    already recorded there is left alone (remove it first to record it again). Returns the
    copy."""
    run = Path(run_dir)
    if not run.is_dir():
        raise PublishError(f"no run folder {run}.")
    dest = Path(folder) / "runs" / run.name
    if dest.exists():
        raise PublishError(f"{dest} already exists; remove it first to record {run} again.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".record-{run.name}-", dir=dest.parent))
    try:
        _portable_copy(run, tmp / run.name, optimizer=False)
        os.replace(tmp / run.name, dest)  # whole or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _upload(
    staged: Path,
    state: dict[str, Any],
    files: list[str],
    repo_id: str,
    private: bool,
    revision: str | None,
    api: Any,
) -> Published:
    """Upload the portable copy ``staged`` of a run (:func:`_portable_copy`)."""
    name = staged.name
    api = _hub_api() if api is None else api
    target = f"{repo_id}" + (f" (branch {revision})" if revision else "")
    source = repo_id + (f"@{revision}" if revision else "")  # what INTERPDDPM_RUNS_FROM takes
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=staged,
            path_in_repo=f"runs/{name}",
            allow_patterns=files,  # exact paths: only these files, never older checkpoints
            delete_patterns=[f"{CHECKPOINT_PREFIX}*"],  # a stale checkpoint of this run
            repo_type="model",
            revision=revision,
            commit_message=f"Publish run {name} (step {state['step']})",
        )
        card = not api.file_exists(repo_id, _CARD, repo_type="model", revision=revision)
        if card:
            api.upload_file(
                path_or_fileobj=model_card(name, state, source).encode(),
                path_in_repo=_CARD,
                repo_id=repo_id,
                repo_type="model",
                revision=revision,
                commit_message="Add a model card",
            )
    except Exception as err:  # HTTP (no login, no right to write), network, a bad name
        raise PublishError(
            f"publishing {name} to {target} failed ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:300]}); check the network and log in with a token "
            "that may write there (`hf auth login`, or the HF_TOKEN variable)."
        ) from err
    return Published(
        repo_id,
        revision,
        f"runs/{name}",
        state["step"],
        tuple(files),
        card,
        _local_init(state["config"]),
    )


# ------------------------------------------------------------------------------------------
# Fetching
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Source:
    """A source of published runs: a hub repo (``repo_id``, ``revision``) or a ``folder``."""

    text: str  #: as the user wrote it (messages quote it)
    repo_id: str | None = None
    revision: str | None = None
    folder: Path | None = None


def parse_source(text: str | os.PathLike) -> Source:
    """``owner/name``, ``owner/name@revision`` or a local folder laid out like such a repo
    (``runs/<run folder>/``). An existing folder wins over a hub id of the same spelling."""
    text = str(text).strip()
    path = Path(text).expanduser()
    if text and path.is_dir():
        return Source(text, folder=path)
    repo, at, revision = text.partition("@")
    if HUB_MODEL_ID.fullmatch(repo) and (revision or not at):
        return Source(text, repo_id=repo, revision=revision or None)
    raise PublishedRunsError(
        f"the source of published runs ({ENV_RUNS_FROM} or runs.use_published) {text!r} is "
        "neither an existing folder nor a hub repo id owner/name[@revision]; fix it, or unset "
        f"{ENV_RUNS_FROM} to train here."
    )


def _locate(source: Source, name: str) -> Path | None:
    """The folder of run ``name`` in ``source`` (downloaded first for a hub repo), or None."""
    if source.folder is not None:
        found = source.folder / "runs" / name
        return found if found.is_dir() else None
    from huggingface_hub import snapshot_download

    try:
        snapshot = snapshot_download(
            source.repo_id,
            repo_type="model",
            revision=source.revision,
            allow_patterns=[f"runs/{name}/*"],
        )
    except Exception as err:  # offline, unreachable, no such repo/revision, an incomplete cache
        where = f"hub repo {source.repo_id}" + (
            f" (revision {source.revision})" if source.revision else ""
        )
        raise PublishedRunsError(
            f"{ENV_RUNS_FROM}={source.text}: cannot read runs/{name} from the {where} "
            f"({type(err).__name__}: {' '.join(str(err).split())[:300]}). Connect to the "
            "network (and log in for a private repo), or unset "
            f"{ENV_RUNS_FROM} to train here, or set it to a local folder holding runs/{name}/."
        ) from err
    found = Path(snapshot) / "runs" / name
    return found if found.is_dir() else None


def _config_diff(saved: TrainConfig, wanted: TrainConfig) -> str:
    """The keys that make two fingerprints differ, ``key: saved -> wanted``."""
    a = _shown_config(saved.to_dict())
    b = _shown_config(wanted.to_dict())
    keys = sorted(k for k in a.keys() | b.keys() if k not in BOOKKEEPING and a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys) or "no key differs"


def _verify_fetched(folder: Path, config: TrainConfig, source: Source) -> int:
    """Check a fetched copy of a run before it is used: its newest checkpoint verifies and was
    trained with ``config`` (same fingerprint). Returns the checkpoint's step."""
    remedy = f"republish it, or unset {ENV_RUNS_FROM} to train here"
    _, state = _newest_checkpoint(folder, remedy, PublishedRunsError)
    try:
        saved = TrainConfig.from_dict(state["config"])
    except ConfigError as err:
        raise PublishedRunsError(
            f"{source.text}: runs/{folder.name} was saved by another interpddpm version ({err})"
        ) from err
    if saved.fingerprint() != config.fingerprint():
        raise PublishedRunsError(
            f"{source.text}: runs/{Path(config.output_dir).name} was trained with another config "
            f"(fingerprint {saved.fingerprint()}, wanted {config.fingerprint()}: "
            f"{_config_diff(saved, config)}); {remedy}."
        )
    return int(state["step"])


def fetch_run(
    source: Source | str | os.PathLike, config: TrainConfig, *, quiet: bool = False
) -> Path | None:
    """Put the published run of ``config`` into ``config.output_dir`` when it is missing there.

    Does nothing (returns None) when the run folder already holds checkpoints (they are never
    replaced) or when ``source`` lacks the run (one line says so; the caller trains as usual).
    Otherwise the run is downloaded (hub) or copied (folder) into a temporary folder beside
    the run folder, verified (:func:`_verify_fetched`), and renamed into place; one line says
    ``fetched <name> from <source>``. A run folder without checkpoints (an interrupted start)
    is kept as ``replaced-<name>``. The caller holds the run folder's lock.

    ``quiet=True`` (a profile's recorded runs, which hold only some runs): a missing run is
    mentioned only when the source holds the same run under another config, with the keys
    that differ (e.g. this machine trains in another precision).
    """
    source = source if isinstance(source, Source) else parse_source(source)
    dest = Path(config.output_dir)
    if list_checkpoints(dest):
        return None
    name = dest.name
    found = _locate(source, name)
    if found is None:
        if not quiet:
            print(f"{source.text} has no runs/{name}; training it here")
        elif source.folder is not None:
            _say_other_configs(source, config)
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".fetch-{name}-", dir=dest.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # a run folder like any other, not a private temporary one
        # files, not the hub cache's symlinks into its blobs
        shutil.copytree(found, tmp, ignore=shutil.ignore_patterns(*_NOT_COPIED), dirs_exist_ok=True)
        _verify_fetched(tmp, config, source)
        if dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
        elif dest.exists():
            quarantine(dest, prefix="replaced-")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"fetched {name} from {source.text}")
    return dest


def _say_other_configs(source: Source, config: TrainConfig) -> None:
    """One line per run of ``source`` (a folder) with ``config``'s run name but another
    fingerprint: which keys differ, and that the run is trained here instead."""
    name = Path(config.output_dir).name
    stem = name.rsplit("-", 1)[0]
    for other in sorted((source.folder / "runs").glob(f"{stem}-*")):
        try:
            _, state = _newest_checkpoint(other, "", PublishedRunsError)
            saved = TrainConfig.from_dict(state["config"])
        except (UserError, ConfigError):
            continue
        if saved.fingerprint() == config.fingerprint() or other.name.rsplit("-", 1)[0] != stem:
            continue
        print(
            f"{source.text} records {other.name}, trained with another config "
            f"({_config_diff(saved, config)}); training {name} here"
        )
