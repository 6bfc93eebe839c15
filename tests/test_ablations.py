"""Ablation variants: each changes exactly its own settings; scores are cached; Pareto front.

The tests that train share one artifact cache (``ablation_cache``): the smoke baseline, the
parser and the vanilla scores are made once for the module, and the record's round trip reuses
the two runs the hybrid test scored. Each test names the variants it needs, so it also passes
alone (then it trains them).
"""

from __future__ import annotations

import json

import pytest
import torch

from interpddpm import ablations, runs
from interpddpm.profiles import get_profile

#: The hybrid sampler variant the tests score, and the run it samples (the book's default).
HYBRID = "default, vanilla below t = 250"


@pytest.fixture(scope="module")
def ablation_cache(tmp_path_factory: pytest.TempPathFactory):
    """One artifact cache for the module's trained runs and scores."""
    return tmp_path_factory.mktemp("ablation-cache")


def test_each_variant_changes_only_its_settings() -> None:
    ref = ablations.variant_config("cpu", "reference").to_dict()
    assert ref["concepts"] == list(ablations.CONCEPTS) and ref["interpretable"]
    p = get_profile("cpu")
    assert ref["steps"] == p.ablation_steps and ref["lambda_decay_steps"] == p.ablation_decay_steps
    dirs = set()
    trained = {
        n: v for n, v in ablations.VARIANTS.items() if v.model_of is None and v.merge_of is None
    }
    for name, v in trained.items():
        cfg = ablations.variant_config("cpu", name).to_dict()
        dirs.add(cfg["output_dir"])
        # keys added later are left out of to_dict at their default (ie_outside)
        changed = {k for k in cfg.keys() | ref.keys() if cfg.get(k) != ref.get(k)} - {"output_dir"}
        expected = set(v.overrides) | ({"interpretable"} if not v.interpretable else set())
        if v.budget != 1:
            expected |= {"steps", "lambda_decay_steps", "checkpoint_every"}
            assert cfg["steps"] == v.budget * ref["steps"], name
        assert changed == expected, name
    assert len(dirs) == len(trained)  # no two trained variants share a run folder
    # a sampler variant trains nothing: it samples its model_of's run, with its own record key
    hybrids = [v for v in ablations.VARIANTS.values() if v.model_of is not None]
    assert hybrids and all(v.model_of in trained and v.switch_t > 0 for v in hybrids)
    keys = {ablations.variant_record_key("cpu", n) for n in ablations.VARIANTS}
    assert len(keys) == len(ablations.VARIANTS)
    for v in hybrids:
        assert ablations.variant_config("cpu", v) == ablations.variant_config("cpu", v.model_of)
    doubled = ablations.variant_config("cpu", "sub-batch x2")
    assert doubled.ie_sub_batch == 2 * ablations.variant_config("cpu", "reference").ie_sub_batch


def test_pareto_front() -> None:
    rows = [
        {"variant": "a", "min cut": 0.9, "FID ratio": 2.0},
        {"variant": "b", "min cut": 0.8, "FID ratio": 1.1},
        {"variant": "c", "min cut": 0.7, "FID ratio": 1.5},  # beaten by b on both
        {"variant": "d", "min cut": 0.9, "FID ratio": 2.5},  # beaten by a
    ]
    assert ablations.pareto_front(rows) == ["a", "b"]
    nan = float("nan")
    undefined = [{"variant": "e", "min cut": nan, "FID ratio": 1.0}]  # no concept measured
    assert ablations.pareto_front(rows + undefined) == ["a", "b"]


def test_the_cpu_record_still_matches_its_recipes() -> None:
    """A config key added later (at its default) must not invalidate the recorded sweep."""
    assert len(ablations.load_sweep("cpu")["rows"]) == len(ablations.VARIANTS)


def test_run_variant_smoke_is_cached(ablation_cache, monkeypatch) -> None:
    """Scored, then read back: the same numbers and grid (one-sided: no other test scores it,
    so the first call computes)."""
    monkeypatch.setenv("INTERPDDPM_CACHE", str(ablation_cache))
    first = ablations.run_variant("smoke", "one-sided", progress=False)
    again = ablations.run_variant("smoke", "one-sided", progress=False)
    assert first["FID"] == again["FID"] and first["FID ratio"] > 0
    assert (first["grid"] == again["grid"]).all()
    assert {f"cut {c}" for c in ablations.CONCEPTS} <= set(first)
    with pytest.raises(ValueError, match="unknown ablation variants"):
        ablations.run_all("smoke", ["nope"])


def test_hybrid_variant_samples_its_model_with_the_vanilla_model_below_switch(
    ablation_cache, monkeypatch
) -> None:
    from interpddpm.hybrid import HybridDenoiser
    from interpddpm.realism import sample_images

    monkeypatch.setenv("INTERPDDPM_CACHE", str(ablation_cache))
    name = HYBRID
    v = ablations.VARIANTS[name]
    hybrid = ablations.run_variant("smoke", name, progress=False)
    alone = ablations.run_variant("smoke", v.model_of, progress=False)
    # the same training (cost columns), another sampler: the last smoke DDIM step is t < 250
    assert hybrid["rows per step"] == alone["rows per step"]
    assert not (hybrid["grid"] == alone["grid"]).all()
    p = get_profile("smoke")
    model = HybridDenoiser(
        runs.ensure(ablations.variant_config(p, name)).model(),
        runs.baseline(p).model(),
        v.switch_t,
    )
    n = p.ablation_fid_samples
    want = sample_images(model, n, seed=5, num_inference_steps=p.ablation_ddim_steps)
    assert torch.equal(hybrid["grid"], want[:16])


def test_default_variant_is_the_books_default() -> None:
    from interpddpm import runs

    assert ablations.VARIANTS[ablations.DEFAULT_VARIANT].overrides == runs.DEFAULT_IE
    # single-concept models: the one-sided form with the outside split (runs.SINGLE_IE)
    single = runs.finetune_config("cpu", ["nose"])
    assert (single.ie_constraint, single.ie_outside) == ("one_sided", "split")
    paper = runs.finetune_config("cpu", ["nose"], recipe="paper")
    assert (paper.ie_constraint, paper.lambda_start, paper.ie_outside) == ("two_sided", 1e3, "one")
    assert runs.finetune_config("cpu", ["eyes", "mouth"]).ie_constraint == "one_sided"
    main = runs.finetune_config("cpu", ablations.CONCEPTS).to_dict()
    variant = ablations.variant_config("cpu", ablations.DEFAULT_VARIANT).to_dict()
    # on the CPU chapter 5's K = 4 model IS the default variant (so chapter 12 re-measures it)
    assert ablations.same_training(main, variant)
    assert not ablations.same_training(main, {**variant, "lambda_start": 1e3})


def test_recorded_sweep_round_trip_and_staleness(ablation_cache, tmp_path, monkeypatch) -> None:
    """The record's round trip, keys and partial re-measuring on a sweep of two variants (the
    book's default run and a hybrid sampler of it, which the hybrid test scored in this module's
    cache): every check is about the record, none needs more variants, whose runs cost minutes
    (the whole sweep is `make book`'s). Two rows are enough for each role of a partial
    re-measure: named, stale, and kept as recorded, in either position."""
    from interpddpm.cli import main

    small = [ablations.DEFAULT_VARIANT, HYBRID]
    monkeypatch.setattr(ablations, "VARIANTS", {n: ablations.VARIANTS[n] for n in small})
    monkeypatch.setenv("INTERPDDPM_CACHE", str(ablation_cache))
    out = tmp_path / "ablations-smoke.json"
    assert main(["ablations", "--profile", "smoke", "--out", str(out), "--quiet"]) == 0
    record = ablations.load_sweep("smoke", path=out)
    assert [r["variant"] for r in record["rows"]] == list(ablations.VARIANTS)
    fresh = {r["variant"]: r for r in ablations.run_all("smoke", progress=False)}
    for row in record["rows"]:  # the record holds exactly what the runs measure
        assert row["FID ratio"] == fresh[row["variant"]]["FID ratio"]
        side = 4 * (get_profile("smoke").image_size + 1) + 1
        assert ablations.grid_image(row).shape[1:] == (side, 3)
    # a record does not depend on where a checkout keeps its runs
    monkeypatch.setenv("INTERPDDPM_CACHE", str(tmp_path / "elsewhere"))
    assert ablations.load_sweep("smoke", path=out)["rows"] == record["rows"]
    monkeypatch.setenv("INTERPDDPM_CACHE", str(ablation_cache))
    # ... nor on the training precision ("auto" differs by machine; the record names its own)
    assert record["mixed_precision"] == "no"
    cfg = ablations.variant_config("smoke", ablations.DEFAULT_VARIANT).to_dict()
    key = ablations._record_key
    assert key({**cfg, "mixed_precision": "bf16"}) == key(cfg)
    assert key({**cfg, "lambda_start": 1.0}) != key(cfg)
    # ... but does depend on the recipe of the baseline the variants start from
    base = runs.baseline_config("smoke").to_dict()
    assert key(cfg, base) != key(cfg, {**base, "snr_gamma": 5.0})
    assert key(cfg, base) == key(cfg, {**base, "output_dir": "elsewhere"})
    assert ablations.variant_record_key("smoke", ablations.DEFAULT_VARIANT) == key(cfg, base)
    assert ablations.variant_record_key("smoke", HYBRID) != key(cfg, base)  # its sampler counts
    assert all(
        0 <= row["C2ST low"] <= row["C2ST"] <= row["C2ST high"] <= 1 for row in fresh.values()
    )

    # re-measuring some variants keeps the others' rows as recorded. The scores are cached,
    # so a re-measured row differs from a kept one only by its stamp: the record's stamps are
    # set to a date long past, which only the kept rows keep.
    merged = tmp_path / "merged.json"
    past = "2000-01-01T00:00:00+00:00"

    def remeasure(names: list[str], stale: int | None) -> None:
        data = json.loads(out.read_text())
        data["created"] = past
        for row in data["rows"]:
            row["measured"] = {**row["measured"], "created": past}
        if stale is not None:  # recorded with other settings: re-measured although not named
            data["rows"][stale]["config_key"] = "0" * 64
        merged.write_text(json.dumps(data))
        ablations.record_sweep("smoke", path=merged, progress=False, names=names)
        again = ablations.load_sweep("smoke", path=merged)
        assert [r["variant"] for r in again["rows"]] == small
        remeasured = set(names) | ({small[stale]} if stale is not None else set())
        if remeasured == set(small):  # nothing kept: a new record, with today's stamp
            assert again["created"] != past and "updated" not in again
            again["updated"] = again["created"]
        else:  # the record keeps its vanilla scores and stamp; new rows say when they came
            assert again["created"] == past and again["updated"] != past
            assert again["vanilla"] == data["vanilla"]
        for old, new in zip(data["rows"], again["rows"], strict=True):
            if old["variant"] in remeasured:
                assert new["measured"]["created"] == again["updated"], old["variant"]
                assert new["vanilla locality"] == record["vanilla"]["locality"]  # the same run
            else:
                assert new["measured"]["created"] == past, old["variant"]
                assert {k: new[k] for k in old} == old
            assert new["vanilla FID"] == record["vanilla"]["fid"]  # the same vanilla run here

    remeasure([HYBRID], stale=None)  # the default's row kept
    remeasure([], stale=0)  # the hybrid's row kept
    remeasure([HYBRID], stale=0)  # both re-measured: one named, one stale
    with pytest.raises(ValueError, match="unknown ablation variants"):
        ablations.record_sweep("smoke", path=merged, names=["nope"])
    data = json.loads(merged.read_text())
    data["rows"] = data["rows"][:-1]
    merged.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="has no row for"):
        ablations.load_sweep("smoke", path=merged)
    # a record made with other settings is refused
    data = json.loads(out.read_text())
    data["rows"][0]["config_key"] = "0" * 64
    out.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="re-record"):
        ablations.load_sweep("smoke", path=out)
    with pytest.raises(FileNotFoundError, match="interpddpm ablations"):
        ablations.load_sweep("smoke", path=tmp_path / "missing.json")


def test_grid_faces_untile_the_recorded_grids() -> None:
    from interpddpm.toyfaces import ToyFaces

    faces, _ = ToyFaces(32, 16, seed=1).batch(range(16))
    image = ablations._grid_uint8(faces)
    back = ablations.grid_faces(image)
    assert back.shape == faces.shape
    # uint8 rounding: within half a level of 255 on [-1, 1]
    assert (back - faces.clamp(-1, 1)).abs().max() <= 1 / 255 + 1e-6


def test_a_gpu_profile_shows_the_cpu_record_labelled_as_such() -> None:
    """The full sweep at gpu sizes is hours on an A100: chapter 12 on gpu shows the cpu
    profile's record (named in its source line), not a silent or partial recomputation."""
    from interpddpm.profiles import PROFILES

    gpu = PROFILES["gpu"]
    assert gpu.ablation_record == "cpu"
    shown = ablations.sweep(gpu)
    assert shown["profile"] == "cpu"
    assert shown["source"].startswith("the cpu profile's record, recorded ")
    assert {r["variant"] for r in shown["rows"]} == set(ablations.VARIANTS)
    assert ablations.sweep("cpu")["profile"] == "cpu"
