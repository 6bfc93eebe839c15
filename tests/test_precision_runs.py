"""One run, any GPU (issue 26): a finished run trained under one precision is loaded, not
retrained, where the machine would train another (an A100's bf16 baseline on a T4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from interpddpm import runs
from interpddpm.training import TrainConfig, list_checkpoints, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(tmp_path: Path, precision: str) -> TrainConfig:
    return TrainConfig(
        preset="tiny",
        image_size=16,
        dataset_length=8,
        batch_size=2,
        steps=2,
        checkpoint_every=1,
        log_every=1,
        mixed_precision=precision,
        output_dir=str(tmp_path / "unnamed"),
    )


def test_a_finished_run_loads_under_another_precision(monkeypatch, tmp_path: Path) -> None:
    import dataclasses

    from interpddpm.profiles import PROFILES

    monkeypatch.setenv("INTERPDDPM_CACHE", str(tmp_path / "cache"))
    gpu = dataclasses.replace(PROFILES["gpu"], name="gpu-any")  # a profile of real faces
    monkeypatch.setitem(PROFILES, gpu.name, gpu)
    fp32 = runs.named(_config(tmp_path, "no"), gpu, "base")
    bf16 = runs.named(_config(tmp_path, "bf16"), gpu, "base")
    assert fp32.output_dir != bf16.output_dir  # the precision is in the fingerprint
    assert {c.mixed_precision for c in runs.precision_siblings(bf16)} == {"no", "fp16"}

    # an unfinished fp32 run is not adopted: a bf16 machine starts its own
    train(fp32, stop_after=1, progress=False)
    assert list_checkpoints(fp32.output_dir)
    assert runs.named(_config(tmp_path, "bf16"), gpu, "base").output_dir == bf16.output_dir

    # finished, it is the bf16 machine's run too: loaded as it is, nothing trained
    train(fp32, progress=False)
    adopted = runs.named(_config(tmp_path, "fp16"), gpu, "base")
    assert adopted.output_dir == fp32.output_dir and adopted.mixed_precision == "no"
    result = runs.ensure(adopted, progress=False)
    assert result.output_dir == Path(fp32.output_dir) and result.step == 2
    assert not Path(bf16.output_dir).exists()
    assert result.model(device="cpu") is not None
    # the toy profiles keep their own runs (the cpu book's numbers come from its precision's)
    train(runs.named(_config(tmp_path, "no"), "smoke", "base"), progress=False)
    smoke = runs.named(_config(tmp_path, "fp16"), "smoke", "base")
    assert smoke.mixed_precision == "fp16" and not list_checkpoints(smoke.output_dir)


def test_fp16_resume_is_exact_with_the_scaler_state(monkeypatch, tmp_path: Path) -> None:
    """The GradScaler's state is in the checkpoint: a run stopped and resumed scales, steps and
    ends exactly as the uninterrupted one. The stand-in scaler is a real GradScaler on the CPU
    whose scale grows every step (growth_interval 1), so a resume that started it afresh would
    end on another scale and, through the clipped-then-unscaled gradients, other weights."""
    import torch

    from interpddpm import training
    from interpddpm.training import loop

    made: list[torch.amp.GradScaler] = []
    real = loop._accelerator

    def with_scaler(mixed_precision: str, cpu: bool):
        accelerator = real(mixed_precision, cpu)
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=1)
        made.append(accelerator.scaler)
        return accelerator

    monkeypatch.setattr(loop, "_accelerator", with_scaler)  # the module that looks it up
    whole = _config(tmp_path, "no").replace(steps=4, output_dir=str(tmp_path / "whole"))
    parts = whole.replace(output_dir=str(tmp_path / "parts"))
    train(whole, progress=False)
    end_whole = made[-1].state_dict()
    train(parts, stop_after=2, progress=False)
    state = training.read_checkpoint(list_checkpoints(parts.output_dir)[-1])
    assert state["scaler"]["scale"] == made[-1].get_scale() == 2.0**6  # grown twice
    train(parts, progress=False)
    assert made[-1].state_dict() == end_whole
    a, b = (training.load_run_model(c.output_dir, device="cpu") for c in (whole, parts))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_chapter_refuses_runs_its_estimate_leaves_out(monkeypatch, tmp_path: Path) -> None:
    """Chapter 07 opened alone on a GPU profile would train chapter 04's baseline (an hour on a
    T4): it refuses with the chapter that trains it, its cost and the variable that allows it;
    chapter 04 itself, the cpu profile, and INTERPDDPM_TRAIN_MISSING=1 go ahead."""
    import dataclasses

    from interpddpm import budget
    from interpddpm.errors import UserError
    from interpddpm.profiles import PROFILES

    monkeypatch.setenv("INTERPDDPM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(runs.ENV_TRAIN_MISSING, raising=False)
    gpu = dataclasses.replace(PROFILES["gpu"], name="gpu-guard")
    monkeypatch.setitem(PROFILES, gpu.name, gpu)
    config = runs.named(_config(tmp_path, "no"), gpu, "baseline")
    monkeypatch.setattr(budget, "CURRENT", {"profile": gpu.name, "chapter": "07"})
    with pytest.raises(UserError, match=r"chapter 04 trains .* min on a T4.*TRAIN_MISSING=1"):
        runs.ensure(config, progress=False)
    assert not list_checkpoints(config.output_dir)  # nothing trained
    monkeypatch.setattr(budget, "CURRENT", {"profile": gpu.name, "chapter": "04"})
    runs.check_training_allowed(config)
    monkeypatch.setattr(budget, "CURRENT", {"profile": gpu.name, "chapter": "07"})
    monkeypatch.setenv(runs.ENV_TRAIN_MISSING, "1")
    runs.check_training_allowed(config)
    monkeypatch.setattr(budget, "CURRENT", {"profile": "cpu", "chapter": "07"})
    monkeypatch.delenv(runs.ENV_TRAIN_MISSING)
    runs.check_training_allowed(runs.named(_config(tmp_path, "no"), "cpu", "baseline"))
