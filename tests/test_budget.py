"""The cost model behind every chapter's time and memory estimate (interpddpm.budget)."""

from __future__ import annotations

import pytest
import torch

from interpddpm import budget
from interpddpm.models import make_unet, unet_preset
from interpddpm.profiles import PROFILES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_meta_measurement_equals_a_real_forward() -> None:
    """The meta-device measurement against the same measurement of a real CPU model, which
    allocates and computes everything."""
    torch.manual_seed(0)
    real = budget.unet_cost(make_unet("smoke", 32), 32)
    cost = budget.measure_model(unet_preset("smoke", 32), 32)
    # the meta device decomposes a few ops (group norm: a small bmm and extra saved tensors)
    # that the CPU kernels fuse: its counts run high, never low (a conservative estimate)
    assert real.flops <= cost.flops <= 1.02 * real.flops
    assert real.act_bytes <= cost.act_bytes <= 1.5 * real.act_bytes
    assert cost.params == real.params == sum(p.numel() for p in make_unet("smoke").parameters())


def test_flops_grow_with_the_pixels() -> None:
    """Convolutions dominate: four times the pixels, about four times the FLOPs and the
    activations (the time embedding does not grow; the meta device's group-norm
    decomposition grows a little faster)."""
    small = budget.measure_model(unet_preset("smoke", 32), 32)
    large = budget.measure_model(unet_preset("smoke", 64), 64)
    assert 3.9 < large.flops / small.flops < 4.1
    assert 3.9 < large.act_bytes / small.act_bytes < 4.5


def test_fine_tune_rows_match_the_trainer() -> None:
    """The rows one fine-tuning step sends through the UNet, counted by a forward hook on the
    real trainer's loss, equal the cost model's batch + sub-batch x (2^K - 1)."""
    from diffusers import DDPMScheduler

    from interpddpm import runs
    from interpddpm.toyfaces import ToyFaces
    from interpddpm.training import training_losses

    p = PROFILES["smoke"]
    for concepts in (["nose"], ["eyes", "nose", "mouth"]):
        cfg = runs.finetune_config(p, concepts).replace(interpretable=True)
        model = make_unet(cfg.preset, cfg.image_size)
        rows: list[int] = []
        model.register_forward_hook(lambda m, args, out, rows=rows: rows.append(len(args[0])))
        images, labels = ToyFaces(cfg.image_size, cfg.batch_size).batch(range(cfg.batch_size))
        training_losses(
            model,
            DDPMScheduler(num_train_timesteps=1000),
            images,
            labels,
            cfg,
            1,
            torch.Generator().manual_seed(0),
        )
        expected, _ = budget._finetune_rows(p, len(concepts) + 1, 1)
        assert sum(rows) == expected, (concepts, rows)


def test_the_gpu_profile_fits_a_free_colab_t4() -> None:
    """Issue 11's budget: chapters 04 + 05 in at most 90 minutes on a T4, every other
    chapter in at most 20, each within the T4's memory."""
    gpu = PROFILES["gpu"]
    est = {f"{i:02d}": budget.chapter_estimate(gpu, f"{i:02d}", "T4") for i in range(1, 13)}
    assert est["04"].seconds + est["05"].seconds <= 90 * 60
    assert all(e.seconds <= 20 * 60 for c, e in est.items() if c not in ("04", "05"))
    assert all(e.fits for e in est.values()), {c: e.peak_bytes / 2**30 for c, e in est.items()}
    # the old sizes (the 35.8M-parameter preset, 60,000 steps) did not
    old = PROFILES["gpu"].__class__(**{**gpu.__dict__, "preset": "gpu", "baseline_steps": 60_000})
    assert budget.chapter_estimate(old, "04", "T4").seconds > 6 * 3600


def test_estimate_line_names_each_gpu() -> None:
    line = budget.estimate_line(PROFILES["gpu"], "05")
    assert "T4 ~" in line and "A100 ~" in line and "GiB" in line
    assert "seconds on any machine" in budget.estimate_line(PROFILES["gpu"], "02")
    with pytest.raises(ValueError, match="unknown chapter"):
        budget.chapter_work(PROFILES["gpu"], "13")


def test_gpu_names_match_whole_words() -> None:
    assert budget.gpu_key("Tesla T4") == ("T4",)
    assert budget.gpu_key("NVIDIA A100-SXM4-40GB") == ("A100",)
    assert budget.gpu_key("NVIDIA H200") == ("H200",)
    assert budget.gpu_key("NVIDIA L40S") == () and budget.gpu_key("NVIDIA L4") == ("L4",)
