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


def test_the_cpu_book_records_the_comparison_models_it_does_not_teach() -> None:
    """book/data/runs-cpu also holds the fine-tunes chapter 5 shows for comparison (the paper's
    recipe, the K = 4 model, the control), each for exactly the cpu profile's config (bf16),
    final checkpoint only, no optimizer: a recipe change without recording them again fails
    here instead of training them silently in every cold book. The K = 2 models of the book's
    recipe stay trained in chapter 5, which teaches them."""
    from interpddpm.training import list_checkpoints, read_checkpoint

    profile = dataclasses.replace(PROFILES["cpu"], mixed_precision="bf16")
    folder = runs.recorded_source(profile)
    concepts = ["eyes", "nose", "mouth"]
    wanted = [runs.finetune_config(profile, [c], recipe="paper") for c in concepts]
    wanted += [
        runs.finetune_config(profile, concepts),
        runs.finetune_config(profile, ["nose"], interpretable=False),
    ]
    taught = {Path(runs.finetune_config(profile, [c]).output_dir).name for c in concepts}
    names = {Path(c.output_dir).name for c in wanted} | {
        Path(runs.baseline_config(profile).output_dir).name
    }
    assert {p.name for p in (folder / "runs").iterdir()} == names
    assert not names & taught
    for config in wanted:
        (checkpoint,) = list_checkpoints(folder / "runs" / Path(config.output_dir).name)
        state = read_checkpoint(checkpoint)  # every digest verifies
        assert set(state["sha256"]) == {"model.safetensors", "ema.safetensors"}
        assert state["step"] == config.steps
        assert TrainConfig.from_dict(state["config"]).fingerprint() == config.fingerprint()


def test_the_recorded_parser_is_adopted_only_when_trained_as_the_profile_trains(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """runs.recorded_parser: the cpu record's parser matches the cpu profile (size, steps,
    seed 0); a sidecar that says other steps is not used; adopt_recorded_parser copies it into
    an empty cache (digest kept, so get_parser verifies it) and never over a parser already
    there."""
    import json as json_module

    from interpddpm.parsing import load_parser

    cpu = PROFILES["cpu"]
    found = runs.recorded_parser(cpu)
    assert found is not None and found.name == f"parser-{cpu.image_size}.safetensors"
    assert load_parser(found, "cpu", require_digest=True).size == cpu.image_size
    assert runs.recorded_parser(dataclasses.replace(cpu, parser_steps=17)) is None
    assert runs.recorded_parser("smoke") is None  # no recorded runs
    other = tmp_path / "record"
    other.mkdir()
    for f in (found, found.with_suffix(".json"), Path(f"{found}.sha256")):
        (other / f.name).write_bytes(f.read_bytes())
    meta = json_module.loads((other / found.with_suffix(".json").name).read_text())
    (other / found.with_suffix(".json").name).write_text(json_module.dumps({**meta, "seed": 3}))
    monkeypatch.setattr(runs, "recorded_source", lambda p: other)
    assert runs.recorded_parser(cpu) is None  # another seed's parser
    monkeypatch.setattr(runs, "recorded_source", lambda p: found.parent)
    monkeypatch.setattr(runs, "cache_dir", lambda p: tmp_path / "cache")
    assert runs.adopt_recorded_parser(cpu)
    copied = tmp_path / "cache" / found.name
    assert copied.read_bytes() == found.read_bytes()
    assert load_parser(copied, "cpu", require_digest=True).size == cpu.image_size
    assert "using the recorded face parser" in capsys.readouterr().out
    copied.write_bytes(b"a parser trained here")
    assert not runs.adopt_recorded_parser(cpu)  # the cache's own parser stays
    assert copied.read_bytes() == b"a parser trained here"


def test_the_recorded_cpu_baseline_is_the_cpu_profile_s_run(tmp_path: Path) -> None:
    """book/data/runs-cpu holds the cpu profile's baseline (bf16, as trained on a CPU with
    native bf16): a recipe change without recording the run again fails here."""
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
    assert name in {p.name for p in (folder / "runs").iterdir()}
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


def test_the_cpu_book_records_its_comparison_models_measurements(tmp_path: Path) -> None:
    """book/data/runs-cpu/measurements holds, for every recorded model, the FID sample set of
    chapters 5 and 8 and the locality pairs and results of chapter 7, keyed exactly as those
    chapters ask (the cpu profile's settings, the recorded weights, the recorded parser), and
    nothing that depends on another network: a cold cpu book measures none of its recorded
    models again, and an entry can only ever answer the request it was measured for. A
    retrained record without new measurements fails here instead of silently costing the
    book its minutes; ``interpddpm record-measurements`` after a book build fixes it."""
    import json as json_module

    from interpddpm import memo
    from interpddpm.parsing import load_parser
    from interpddpm.training.codec import load_run_model

    cpu = dataclasses.replace(PROFILES["cpu"], mixed_precision="bf16")
    folder = runs.recorded_source(cpu)
    measured = folder / "measurements"
    parser = memo.weights_digest(load_parser(runs.recorded_parser(cpu), "cpu"))
    models = {
        run.name: memo.weights_digest(load_run_model(run, device="cpu"))
        for run in sorted((folder / "runs").iterdir())
    }
    assert len(models) == 6
    sides = [
        json_module.loads(p.read_text())
        for sub in runs.MEASUREMENT_FOLDERS
        for p in (measured / sub).glob(f"*{memo.KEY_SUFFIX}")
    ]
    for side in sides:
        assert set(side["digests"]) <= {parser, *models.values()}, side["parts"]
    for name, digest in models.items():
        samples = [digest, cpu.fid_samples, 5, cpu.fid_steps]  # chapters 5 and 8
        assert memo.entry_path(measured / "samples", "samples", samples).is_file(), name
        pairs = ["pairs", digest, parser, cpu.n_pairs, 0, cpu.ddim_steps, 0.0]  # chapter 7
        assert memo.entry_path(measured / "locality", "pairs", pairs).is_file(), name
        assert any(
            s["kind"] == "locality" and s["digests"] == sorted({digest, parser}) for s in sides
        ), name
    # adoption copies them into an empty cache, where the chapters' requests find them
    cache = tmp_path / "cache"
    for sub in runs.MEASUREMENT_FOLDERS:
        assert memo.adopt(measured / sub, cache / sub) > 0
    assert len(list(cache.glob("*/*.pt"))) == len(sides)
