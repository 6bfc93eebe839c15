"""Nothing lost, nothing mixed: torn and corrupted files are caught, and what happens then.

Cached results (interpddpm.artifacts) are recomputed with a warning; a corrupted checkpoint
makes training and loading fall back to an older one that verifies (never deleted, never
recomputed silently); a torn metrics log is repaired on resume. Each test injects the fault.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import TINY  # the tiny run of the training tests

from interpddpm import ablations, artifacts
from interpddpm.training import (
    CheckpointError,
    MetricsLogError,
    TrainConfig,
    list_checkpoints,
    load_run_model,
    read_checkpoint,
    read_metrics,
    train,
)


def flip_byte(path: Path, offset: int = -10) -> None:
    """Flip every bit of one byte (by default near the end: tensor data, not a header)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- cached artifacts


def test_artifacts_detect_changed_bytes_and_missing_digests(tmp_path) -> None:
    path = tmp_path / "scores.json"
    artifacts.write_json(path, {"fid": 0.37})
    assert artifacts.digest_file(path).read_text().split() == [
        artifacts.sha256_file(path),
        "scores.json",
    ]  # sha256sum format: `sha256sum -c scores.json.sha256` checks it too
    assert artifacts.read_cached(path, artifacts.read_json, what="scores") == {"fid": 0.37}
    path.write_text(path.read_text().replace("0.37", "5.37"))
    with pytest.warns(RuntimeWarning, match=r"cached scores .*scores\.json is unusable .*sha256"):
        assert artifacts.read_cached(path, artifacts.read_json, what="scores") is None
    with pytest.raises(artifacts.ArtifactError, match="does not match its recorded sha256"):
        artifacts.read_artifact(path, artifacts.read_json)
    artifacts.digest_file(path).unlink()  # e.g. written by an older interpddpm
    with pytest.warns(RuntimeWarning, match="has no digest"):
        assert artifacts.read_cached(path, artifacts.read_json, what="scores") is None
    assert artifacts.read_cached(tmp_path / "missing.pt", artifacts.read_tensors, what="x") is None

    grid = tmp_path / "grid.pt"
    artifacts.write_tensors(grid, torch.arange(64.0))
    loaded = artifacts.read_cached(grid, artifacts.read_tensors, what="g")
    assert torch.equal(loaded, torch.arange(64.0))
    flip_byte(grid, -300)
    with pytest.warns(RuntimeWarning, match="recomputing it"):
        assert artifacts.read_cached(grid, artifacts.read_tensors, what="g") is None
    assert not list(tmp_path.glob("*.tmp"))  # temporary files never stay behind


def test_ablation_scores_with_a_changed_digit_are_recomputed(tmp_path) -> None:
    """vanilla.json with FID 0.37 edited to 5.37 used to be read as 5.37."""
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"fid": 0.37, "locality": {"nose": 0.5}, "grid": torch.linspace(-1, 1, 48)}

    path = tmp_path / "ablations" / "vanilla.pt"
    first = ablations._cached(path, "key-1", compute)
    again = ablations._cached(path, "key-1", compute)
    assert calls == [1] and again["fid"] == 0.37 and torch.equal(again["grid"], first["grid"])
    meta = path.with_suffix(".json")
    meta.write_text(meta.read_text().replace("0.37", "5.37"))
    with pytest.warns(RuntimeWarning, match=r"vanilla\.json is unusable"):
        fixed = ablations._cached(path, "key-1", compute)
    assert len(calls) == 2 and fixed["fid"] == 0.37
    assert json.loads(meta.read_text())["result"]["fid"] == 0.37  # rewritten, verified again
    flip_byte(path, -20)
    with pytest.warns(RuntimeWarning, match=r"vanilla\.pt is unusable"):
        ablations._cached(path, "key-1", compute)
    assert len(calls) == 3
    assert ablations._cached(path, "key-1", compute)["fid"] == 0.37 and len(calls) == 3


def test_a_sample_set_with_flipped_bits_is_sampled_again(tmp_path, monkeypatch) -> None:
    import interpddpm.realism as realism
    from interpddpm.models import make_unet

    torch.manual_seed(0)
    unet = make_unet("tiny", sample_size=16)
    first = realism.sample_images(unet, 3, seed=5, num_inference_steps=2, cache=tmp_path)
    (cached,) = tmp_path.glob("samples-*.pt")
    flip_byte(cached, -40)
    calls = []
    sampler = realism.ddim_sample_batched
    monkeypatch.setattr(
        realism, "ddim_sample_batched", lambda *a, **k: calls.append(1) or sampler(*a, **k)
    )
    with pytest.warns(RuntimeWarning, match=r"cached sample set .*samples-.*unusable"):
        again = realism.sample_images(unet, 3, seed=5, num_inference_steps=2, cache=tmp_path)
    assert calls == [1] and torch.equal(again, first)
    realism.sample_images(unet, 3, seed=5, num_inference_steps=2, cache=tmp_path)
    assert calls == [1]  # the rewritten set verifies


def test_a_parser_file_with_flipped_bits_is_caught(tmp_path) -> None:
    from interpddpm import parsing

    kwargs = dict(steps=2, n_train=8, eval_n=0, progress=False)
    first = parsing.get_parser(32, tmp_path, **kwargs)
    path = tmp_path / "parser-32.safetensors"
    flip_byte(path, -8)  # in the last tensor's data: safetensors itself would load it
    with pytest.raises(parsing.ParserFileError, match="does not match its recorded sha256"):
        parsing.load_parser(path)
    with pytest.warns(RuntimeWarning, match="retraining"):
        again = parsing.get_parser(32, tmp_path, **kwargs)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(again(x), first(x))  # same seed: the same parser, now intact
    artifacts.digest_file(path).unlink()  # a file saved without a digest (by hand, or older)
    parsing.load_parser(path)  # an explicit path still loads
    with pytest.warns(RuntimeWarning, match="has no digest.*retraining"):
        parsing.get_parser(32, tmp_path, **kwargs)  # the cache does not trust it


def test_a_dataset_cache_with_flipped_bits_is_rebuilt(tmp_path) -> None:
    from PIL import Image

    from interpddpm.datasets import get_dataset

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
    first = get_dataset(f"folder:{tmp_path}", 16, cache_dir=tmp_path / "cache")
    expected = first.images.clone()  # `first` maps the file that is corrupted next
    (cached,) = (tmp_path / "cache").glob("*.safetensors")
    flip_byte(cached, -5)
    with pytest.warns(RuntimeWarning, match="cached dataset .*unusable"):
        again = get_dataset(f"folder:{tmp_path}", 16, cache_dir=tmp_path / "cache")
    assert torch.equal(again.images, expected)


def test_the_autoencoder_record_is_sealed(tmp_path) -> None:
    from interpddpm.latent import RECORD, make_autoencoder, read_autoencoder, save_autoencoder

    path = save_autoencoder(make_autoencoder(image_size=16), tmp_path / "ae", {"psnr": 20.5})
    assert read_autoencoder(path)[1]["psnr"] == 20.5
    record = path / RECORD
    record.write_text(record.read_text().replace("20.5", "30.5"))
    with pytest.raises(CheckpointError, match="record_sha256"):
        read_autoencoder(path)


# --------------------------------------------------------------------------- checkpoints


def test_an_edited_state_json_is_caught_and_training_falls_back(tmp_path) -> None:
    ref = train(TrainConfig(**TINY, steps=6, output_dir=str(tmp_path / "ref")), progress=False)
    cfg = TrainConfig(**TINY, steps=4, output_dir=str(tmp_path / "run"))
    train(cfg, progress=False)
    good, latest = list_checkpoints(cfg.output_dir)
    state_file = latest / "state.json"
    state = json.loads(state_file.read_text())
    state["step"] = 40  # read back as another step: resumes silently at the wrong place
    state_file.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"state\.json does not match its record_sha256"):
        read_checkpoint(latest)
    state["step"] = 4
    state["optimizer"]["param_groups"][0]["betas"] = [0.5, 0.999]  # other optimizer settings
    state_file.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="record_sha256"):
        read_checkpoint(latest)

    pattern = (
        r"checkpoint .*checkpoint-0000004 is unusable .*record_sha256.*; using "
        r"checkpoint-0000002 instead; renamed to corrupt-checkpoint-0000004"
    )
    with pytest.warns(RuntimeWarning, match=pattern):
        result = train(cfg.replace(steps=6), progress=False)
    assert result.step == 6
    corrupt = Path(cfg.output_dir) / "corrupt-checkpoint-0000004"
    assert json.loads((corrupt / "state.json").read_text())["optimizer"]["param_groups"][0][
        "betas"
    ] == [0.5, 0.999]  # kept as it was, out of the way
    # resumed from step 2: the same weights as the run that was never interrupted
    a, b = weights(ref.model(ema=False)), weights(result.model(ema=False))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_metrics(cfg.output_dir)] == [1, 2, 3, 4, 5, 6]


def test_loading_falls_back_to_the_newest_verified_checkpoint(tmp_path) -> None:
    train(TrainConfig(**TINY, steps=4, output_dir=str(tmp_path)), progress=False)
    good, latest = list_checkpoints(tmp_path)
    flip_byte(latest / "model.safetensors")
    with pytest.warns(RuntimeWarning, match=r"checkpoint-0000004 is unusable .*model\.safetensors"):
        model = load_run_model(tmp_path, ema=False)
    expected = weights(load_run_model(good, ema=False))
    assert all(torch.equal(v, expected[k]) for k, v in weights(model).items())
    assert latest.is_dir()  # a reader renames nothing


def test_a_stray_empty_checkpoint_folder_does_not_block_resume(tmp_path) -> None:
    cfg = TrainConfig(**TINY, steps=2, output_dir=str(tmp_path))
    train(cfg, progress=False)
    stray = tmp_path / "checkpoint-0000009"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.warns(RuntimeWarning, match=r"checkpoint-0000009 is unusable .*no state\.json"):
        result = train(cfg.replace(steps=3), progress=False)
    assert result.step == 3
    assert (tmp_path / "corrupt-checkpoint-0000009" / "notes.txt").read_text() == "mine"
    names = [c.name for c in list_checkpoints(tmp_path)]
    assert names == ["checkpoint-0000002", "checkpoint-0000003"]


def test_without_any_verified_checkpoint_training_stops_and_renames_nothing(tmp_path) -> None:
    cfg = TrainConfig(**TINY, steps=2, output_dir=str(tmp_path))
    train(cfg, progress=False)
    (only,) = list_checkpoints(tmp_path)
    flip_byte(only / "ema.safetensors")
    listing = r"no checkpoint of .* verifies:\n  checkpoint-0000002: .*ema\.safetensors"
    with pytest.raises(CheckpointError, match=listing):
        train(cfg.replace(steps=4), progress=False)
    with pytest.raises(CheckpointError, match="ema.safetensors does not match"):
        load_run_model(tmp_path)
    assert list_checkpoints(tmp_path) == [only]


# --------------------------------------------------------------------------- the metrics log


def test_a_torn_metrics_line_is_repaired_on_resume(tmp_path) -> None:
    cfg = TrainConfig(**TINY, steps=2, output_dir=str(tmp_path))
    train(cfg, progress=False)
    log = tmp_path / "metrics.jsonl"
    with open(log, "a") as f:
        f.write('{"step": 3, "loss": 0.')  # killed in the middle of a write
    with pytest.warns(RuntimeWarning, match=r"metrics\.jsonl, line 3: dropping a torn last line"):
        assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    with pytest.warns(RuntimeWarning, match=r"metrics\.jsonl, line 3: dropping an undecodable"):
        train(cfg.replace(steps=3), progress=False)
    lines = log.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]  # every line decodes

    lines[0] = "#garbage"
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(MetricsLogError, match=r"metrics\.jsonl, line 1: not a JSON record"):
        read_metrics(tmp_path)
    with pytest.warns(RuntimeWarning, match=r"line 1: dropping an undecodable"):
        train(cfg.replace(steps=4), progress=False)
    assert [r["step"] for r in read_metrics(tmp_path)] == [2, 3, 4]
