"""Run folders are named by what they train: a changed setting never collides with an old run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from interpddpm import latent, runs
from interpddpm.profiles import PROFILES
from interpddpm.training import BOOKKEEPING, TrainConfig


def test_fingerprint_tracks_what_is_learned_only() -> None:
    cfg = runs.finetune_config("cpu", ["nose"])
    assert cfg.fingerprint() == cfg.replace(checkpoint_every=7, log_every=3).fingerprint()
    assert cfg.fingerprint() == cfg.replace(output_dir="elsewhere").fingerprint()
    for change in ({"steps": 151}, {"lambda_start": 1e3}, {"ie_t_weight": "uniform"}, {"seed": 1}):
        assert cfg.replace(**change).fingerprint() != cfg.fingerprint(), change
    # The L_IE keys do not matter to a plain run, so they do not rename it.
    plain = TrainConfig(interpretable=False)
    assert plain.fingerprint() == plain.replace(lambda_start=1.0, concepts=["eyes"]).fingerprint()
    assert {"output_dir", "log_every"} <= BOOKKEEPING


def test_fingerprint_is_independent_of_the_checkout(tmp_path: Path) -> None:
    a = TrainConfig(init_from=str(tmp_path / "a" / "runs" / "baseline-0123abcd"))
    b = TrainConfig(init_from=str(tmp_path / "b" / "runs" / "baseline-0123abcd"))
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != a.replace(init_from=str(tmp_path / "baseline-ffffffff")).fingerprint()
    # a hub id is kept whole (the organisation is part of the name)
    assert TrainConfig(init_from="x/m").fingerprint() != TrainConfig(init_from="y/m").fingerprint()


def test_run_folders_carry_the_fingerprint_and_chain(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INTERPDDPM_CACHE", str(tmp_path))
    base = runs.baseline_config("cpu")
    assert Path(base.output_dir).name == f"baseline-{base.fingerprint()}"
    tuned = runs.finetune_config("cpu", ["nose"])
    assert tuned.init_from == base.output_dir
    assert Path(tuned.output_dir).name == f"interp-nose-{tuned.fingerprint()}"
    # fine-tunes keep their baseline's noise schedule and loss weighting (the profile's recipe)
    assert (tuned.beta_schedule, tuned.snr_gamma) == (base.beta_schedule, base.snr_gamma)
    # A profile whose baseline trains longer renames the baseline AND every run built on it.
    longer = dataclasses.replace(PROFILES["cpu"], baseline_steps=2001)
    assert runs.baseline_config(longer).output_dir != base.output_dir
    assert runs.finetune_config(longer, ["nose"]).output_dir != tuned.output_dir
    # ... while an explicit output_dir is kept as given.
    assert runs.finetune_config("cpu", ["nose"], output_dir="mine").output_dir == "mine"
    # The latent runs chain the same way, with their own prefix.
    ldm_base = latent.baseline_config("cpu")
    ldm_tuned = latent.finetune_config("cpu", ["nose"])
    assert Path(ldm_base.output_dir).name.startswith("ldm-baseline-")
    assert ldm_tuned.init_from == ldm_base.output_dir
    assert Path(ldm_tuned.output_dir).name == f"ldm-interp-nose-{ldm_tuned.fingerprint()}"
    # chapter 10 reproduces the paper's latent model: the paper's recipe, floors included
    paper = runs.ie_settings(["nose"], "paper")
    assert {k: getattr(ldm_tuned, k) for k in paper} == paper
    # The latent control: the same fine-tuning without L_IE, in its own folder.
    ldm_control = latent.finetune_config("cpu", ["nose"], interpretable=False)
    assert not ldm_control.interpretable and ldm_control.output_dir != ldm_tuned.output_dir
    same = {"steps", "lr", "batch_size", "init_from", "autoencoder", "seed", "beta_schedule"}
    assert all(getattr(ldm_control, k) == getattr(ldm_tuned, k) for k in same)
    # Our autoencoder's folder is named by its settings, and the latent runs follow it.
    other_ae = dataclasses.replace(PROFILES["cpu"], ldm_autoencoder_steps=801)
    assert latent.autoencoder_dir(other_ae) != latent.autoencoder_dir("cpu")
    assert latent.baseline_config(other_ae).output_dir != ldm_base.output_dir


def test_the_recorded_cpu_baseline_is_the_cpu_profile_s_run(tmp_path: Path) -> None:
    """book/data/runs-cpu holds the cpu profile's baseline (bf16, as trained on a CPU with
    native bf16) and only it: a recipe change without recording the run again fails here."""
    from interpddpm import hub
    from interpddpm.training import (
        CheckpointError,
        list_checkpoints,
        load_run_model,
        read_checkpoint,
    )

    profile = dataclasses.replace(PROFILES["cpu"], mixed_precision="bf16")
    folder = runs.recorded_source(profile)
    assert folder is not None and folder.name == "runs-cpu"
    config = runs.baseline_config(profile)
    name = Path(config.output_dir).name
    assert sorted(p.name for p in (folder / "runs").iterdir()) == [name]
    recorded = folder / "runs" / name
    (checkpoint,) = list_checkpoints(recorded)
    state = read_checkpoint(checkpoint)  # every digest verifies
    assert set(state["sha256"]) == {"model.safetensors", "ema.safetensors"}  # no optimizer
    assert state["step"] == config.steps == 4000
    assert TrainConfig.from_dict(state["config"]).fingerprint() == config.fingerprint()
    assert state["config"]["output_dir"] == f"runs/{name}"  # no path of a machine
    log = (recorded / "metrics.jsonl").read_text().splitlines()
    assert len(log) == config.steps // config.log_every
    # fetched into a fresh cache, it loads with the recorded EMA weights
    dest = hub.fetch_run(folder, config.replace(output_dir=str(tmp_path / name)), quiet=True)
    assert dest == tmp_path / name
    weights = load_run_model(dest).state_dict()
    ema = state["tensors"]["ema.safetensors"]
    assert ema.keys() <= weights.keys() and all(weights[k].equal(ema[k]) for k in ema)
    assert runs.is_recorded(profile, dest)
    assert not runs.is_recorded(profile, tmp_path / "empty")  # no checkpoint: not the record
    (dest / "checkpoint-0004000" / "ema.safetensors").write_bytes(b"edited")
    with pytest.raises(CheckpointError, match="ema.safetensors"):
        runs.is_recorded(profile, dest)  # a damaged copy is said, not taken for the record


def test_single_ie_is_the_recorded_split_recipe() -> None:
    """runs.SINGLE_IE is the recipe of chapter 12's recorded floor-3 split rows, and a config
    built with it is that row's run (same fingerprint as the benchmark's)."""
    import json

    from interpddpm.profiles import book_data

    record = json.loads(book_data("single-concept-cpu.json").read_text())
    rows = {r["variant"]: r for r in record["rows"]}
    for concept in ("eyes", "nose", "mouth"):
        saved = rows[f"{concept}, split, floor 3"]["config"]
        assert saved["steps"] == runs.finetune_config("cpu", [concept]).steps
        assert {k: saved[k] for k in runs.SINGLE_IE} == {
            k: runs.SINGLE_IE[k]
            for k in ("ie_constraint", "lambda_start", "lambda_floor", "ie_t_weight", "ie_outside")
        }
        config = runs.finetune_config("cpu", [concept])  # the book's recipe: SINGLE_IE
        assert config.ie_outside == "split" and config.lambda_floor == 3.0
        assert config == runs.finetune_config("cpu", [concept], **runs.SINGLE_IE)
        # the paper's recipe is the recorded "paper's two-sided recipe" row, floors and all
        paper = runs.finetune_config("cpu", [concept], recipe="paper")
        saved = rows[f"{concept}, paper's two-sided recipe"]["config"]
        assert {k: getattr(paper, k) for k in saved} == saved
        assert saved["lambda_floor"] == runs.LAMBDA_FLOOR[concept]
        assert paper.fingerprint() != config.fingerprint()
        assert paper.output_dir != config.output_dir


def test_recipes_pick_the_settings_and_refuse_unknown_names() -> None:
    """The book's recipe: DEFAULT_IE with the paper's floors for several concepts, SINGLE_IE
    for one; the paper's: PAPER_IE with its floors for any number. A control ignores L_IE
    settings, so it is one run whichever recipe names it."""
    assert runs.ie_settings(["nose"]) == runs.SINGLE_IE
    assert runs.ie_settings(["eyes", "mouth"]) == runs.DEFAULT_IE | {"lambda_floor": 1.0}
    assert runs.ie_settings(["nose"], "paper") == runs.PAPER_IE | {"lambda_floor": 10.0}
    assert runs.ie_settings(["eyes", "nose"], "paper")["lambda_floor"] == 1.0
    for recipe in runs.RECIPES:
        controls = {
            runs.finetune_config("cpu", [c], interpretable=False, recipe=recipe).fingerprint()
            for c in ("eyes", "nose")
        }
        assert len(controls) == 1
    with pytest.raises(ValueError, match="unknown recipe 'papers': choose one of book, paper"):
        runs.finetune_config("cpu", ["nose"], recipe="papers")
    with pytest.raises(ValueError, match="at least one concept"):
        runs.ie_settings([])
