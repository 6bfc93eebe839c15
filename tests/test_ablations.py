"""Ablation variants: each changes exactly its own settings; scores are cached; Pareto front."""

from __future__ import annotations

import pytest

from interpddpm import ablations
from interpddpm.profiles import get_profile


def test_each_variant_changes_only_its_settings() -> None:
    ref = ablations.variant_config("cpu", "reference").to_dict()
    assert ref["concepts"] == list(ablations.CONCEPTS) and ref["interpretable"]
    p = get_profile("cpu")
    assert ref["steps"] == p.ablation_steps and ref["lambda_decay_steps"] == p.ablation_decay_steps
    dirs = set()
    for name, v in ablations.VARIANTS.items():
        cfg = ablations.variant_config("cpu", name).to_dict()
        dirs.add(cfg["output_dir"])
        changed = {k for k in cfg if cfg[k] != ref[k]} - {"output_dir"}
        expected = set(v.overrides) | ({"interpretable"} if not v.interpretable else set())
        assert changed == expected, name
    assert len(dirs) == len(ablations.VARIANTS)  # no two variants share a run folder
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


def test_run_variant_smoke_is_cached(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("INTERPDDPM_CACHE", str(tmp_path))
    first = ablations.run_variant("smoke", "one-sided", progress=False)
    again = ablations.run_variant("smoke", "one-sided", progress=False)
    assert first["FID"] == again["FID"] and first["FID ratio"] > 0
    assert (first["grid"] == again["grid"]).all()
    assert {f"cut {c}" for c in ablations.CONCEPTS} <= set(first)
    with pytest.raises(ValueError, match="unknown ablation variants"):
        ablations.run_all("smoke", ["nope"])
