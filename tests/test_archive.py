"""Sharing trained models: a packed cache holds each run's newest verified checkpoint (not the
older ones, locks or quarantined files), unpacks into another cache where the run loads with
the same weights, and never overwrites a file that differs."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch
from test_training import TINY  # the tiny run of the training tests

from interpddpm import archive, cli
from interpddpm.profiles import ENV_CACHE, cache_dir
from interpddpm.training import TrainConfig, list_checkpoints, load_run_model, train


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A smoke cache with one run (checkpoints at steps 2 and 4), a lock and a result."""
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))
    profile = cache_dir("smoke")
    run = profile / "runs" / "tiny"
    train(TrainConfig(**TINY, steps=4, output_dir=str(run)), progress=False)
    assert [c.name for c in list_checkpoints(run)] == ["checkpoint-0000002", "checkpoint-0000004"]
    (profile / "runs" / "tiny.lock").write_text("")
    (profile / "results").mkdir()
    (profile / "results" / "table.json").write_text('{"fid": 1.5}')
    return profile


def test_pack_keeps_the_newest_verified_checkpoint(cache: Path, tmp_path: Path) -> None:
    # the newest checkpoint is corrupt: the one a chapter would load is the older one
    newest = list_checkpoints(cache / "runs" / "tiny")[-1]
    model = next(p for p in newest.rglob("*.safetensors") if "optimizer" not in p.name)
    model.write_bytes(model.read_bytes()[:-8] + b"corrupt!")
    with pytest.warns(RuntimeWarning, match="unusable"):
        out = archive.pack("smoke", tmp_path / "cache.tar.gz")
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert "smoke/results/table.json" in names and "smoke/runs/tiny/metrics.jsonl" in names
    assert any(n.startswith("smoke/runs/tiny/checkpoint-0000002/") for n in names)
    assert not any("checkpoint-0000004" in n or n.endswith(".lock") for n in names), names


def test_unpacked_run_loads_the_same_weights(cache: Path, tmp_path: Path) -> None:
    out = archive.pack("smoke", tmp_path / "cache.tar.gz")
    other = tmp_path / "other"
    profile = archive.unpack(out, other)
    assert profile == other / "smoke"
    a = load_run_model(cache / "runs" / "tiny").state_dict()
    b = load_run_model(profile / "runs" / "tiny").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert archive.unpack(out, other) == profile  # same files again: nothing to do


def test_unpack_never_overwrites_a_different_file(cache: Path, tmp_path: Path) -> None:
    out = archive.pack("smoke", tmp_path / "cache.tar.gz")
    other = tmp_path / "other"
    mine = other / "smoke" / "results" / "table.json"
    mine.parent.mkdir(parents=True)
    mine.write_text('{"fid": 9.9}')
    with pytest.raises(archive.ArchiveError, match="differ from files already in"):
        archive.unpack(out, other)
    assert mine.read_text() == '{"fid": 9.9}'
    assert not (other / "smoke" / "runs").exists(), "nothing is written when a file clashes"


def test_cli_reports_a_missing_archive_or_an_empty_cache(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "empty"))
    assert cli.main(["artifacts", "unpack", str(tmp_path / "nope.tar.gz")]) == 2
    assert "no archive" in capsys.readouterr().err
    assert cli.main(["artifacts", "pack", "--profile", "smoke"]) == 2
    assert "holds nothing to pack" in capsys.readouterr().err
