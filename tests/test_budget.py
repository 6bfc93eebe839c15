"""The cost model behind every chapter's time and memory estimate (interpddpm.budget)."""

from __future__ import annotations

import dataclasses

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
    """Issue 26's budget, at the LIKELY rate (dataset preparation and host-side work
    included): chapters 04 + 05 in at most 90 minutes on a T4, every other chapter (10 with
    its autoencoder's encodes and decodes) in at most 20, each within the T4's memory, and
    the runs within a free 15 GB Drive."""
    gpu = PROFILES["gpu"]
    est = {f"{i:02d}": budget.chapter_estimate(gpu, f"{i:02d}", "T4") for i in range(1, 13)}
    assert est["04"].seconds + est["05"].seconds <= 90 * 60
    assert all(e.seconds <= 20 * 60 for c, e in est.items() if c not in ("04", "05"))
    assert all(e.optimistic_seconds < e.seconds for e in est.values() if e.seconds)
    assert all(e.fits for e in est.values()), {c: e.peak_bytes / 2**30 for c, e in est.items()}
    assert sum(e.disk_bytes for e in est.values()) < 15e9
    # the sizes before issue 26 (13 GFLOP preset, 20,000 + 1,500 steps) took over 4 hours
    old = dataclasses.replace(gpu, preset="colab", baseline_steps=20_000, finetune_steps=1_500)
    assert budget.chapter_estimate(old, "04", "T4").seconds > 2.5 * 3600


def test_each_precision_at_its_own_rate() -> None:
    """fp32 work on a T4 (no TF32) runs at the fp32 peak, several times slower than fp16
    autocast; an A100 runs fp32 convolutions on TF32 tensor cores. The rates follow the
    published ResNet-50 measurements (budget.PUBLISHED)."""
    t4, a100 = budget.GPUS["T4"], budget.GPUS["A100"]
    half, fp32 = (budget.flops_per_second(t4, p, "optimistic") for p in ("half", "fp32"))
    assert 2.5 < half / fp32 < 3.0  # 1190 / 428 images/s published
    t4_amp = next(r for r in budget.PUBLISHED if r[0] == "T4" and r[3] == "amp")
    assert half == pytest.approx(t4_amp[5] * budget.RESNET50_FLOPS, rel=0.01)
    for rate in budget.RATES:
        assert budget.flops_per_second(a100, "fp32", rate) > budget.flops_per_second(
            t4, "half", rate
        )
    likely = budget.flops_per_second(t4, "half", "likely")
    assert likely == pytest.approx(half * budget.LIKELY_FACTOR)


def test_estimate_line_names_each_gpu() -> None:
    line = budget.estimate_line(PROFILES["gpu"], "05")
    assert "T4 ~" in line and "A100 ~" in line and "GiB" in line
    assert "at best" in line and "disk:" in line
    assert "seconds on any machine" in budget.estimate_line(PROFILES["gpu"], "02")
    with pytest.raises(ValueError, match="unknown chapter"):
        budget.chapter_work(PROFILES["gpu"], "13")


def test_gpu_names_match_whole_words() -> None:
    assert budget.gpu_key("Tesla T4") == ("T4",)
    assert budget.gpu_key("NVIDIA A100-SXM4-40GB") == ("A100",)
    assert budget.gpu_key("NVIDIA H200") == ("H200",)
    assert budget.gpu_key("NVIDIA L40S") == () and budget.gpu_key("NVIDIA L4") == ("L4",)


#: Chapter 10's knobs and the general fields it read before it had its own.
LDM_KNOBS = {"ldm_grid": "n_grid", "ldm_pairs": "n_pairs", "ldm_ddim_steps": "ddim_steps"}


def test_chapter_10_reads_its_own_knobs() -> None:
    """The notebook samples, edits and measures with ``ldm_grid``, ``ldm_pairs`` and
    ``ldm_ddim_steps`` (not the pixel chapters' fields), and each of them, and each run size,
    moves chapter 10's estimate: the estimate is the chapter's work."""
    import json
    from pathlib import Path

    nb = Path(__file__).resolve().parent.parent / "notebooks" / "10_latent_diffusion.ipynb"
    code = "".join(
        "".join(c["source"])
        for c in json.loads(nb.read_text())["cells"]
        if c["cell_type"] == "code"
    )
    for knob, general in LDM_KNOBS.items():
        assert f"P.{knob}" in code and f"P.{general}" not in code, knob
    gpu = PROFILES["gpu"]
    base = budget.chapter_estimate(gpu, "10", "T4")
    for knob in [*LDM_KNOBS, "ldm_finetune_steps", "ldm_dataset_length"]:
        bigger = dataclasses.replace(gpu, **{knob: 2 * getattr(gpu, knob)})
        assert budget.chapter_estimate(bigger, "10", "T4").seconds > base.seconds, knob
        assert budget.chapter_estimate(bigger, "10", "T4").flops >= base.flops, knob


def test_chapter_10_sizes_unchanged_off_the_gpu() -> None:
    """On the smoke and cpu profiles chapter 10's new knobs hold what the chapter used
    before (the pixel chapters' values): their runs and glued numbers do not move. Except
    the cpu profile's DDIM steps (issue 28): its larger latent UNet samples at the realism
    sets' ``fid_steps`` to stay within the chapter's time."""
    for name in ("smoke", "cpu"):
        p = PROFILES[name]
        for knob, general in LDM_KNOBS.items():
            if (name, knob) == ("cpu", "ldm_ddim_steps"):
                general = "fid_steps"
            assert getattr(p, knob) == getattr(p, general), (name, knob)


def test_the_pretrained_autoencoder_is_charged() -> None:
    """The VQ-f4 of CompVis/ldm-celebahq-256 at 256 px costs more to encode (about 345
    GFLOP) and to decode (about 671) than one LDM UNet forward (202): chapter 10 charges an
    encode per training face and run and a decode per sample, and the small CPU autoencoder
    measured on the meta device costs what a real forward counts."""
    from torch.utils.flop_counter import FlopCounterMode

    from interpddpm.latent import make_autoencoder

    gpu = PROFILES["gpu"]
    enc, dec = budget.autoencoder_flops(gpu)
    unet = budget.latent_model(gpu).flops
    assert 1.5 * unet < enc < dec < 4 * unet
    work = {w.what: w for w in budget.chapter_work(gpu, "10")}
    encodes = next(w for k, w in work.items() if k.startswith("training batches encoded"))
    per_run = min(gpu.ldm_dataset_length, gpu.ldm_finetune_steps * gpu.ldm_batch_size)
    assert encodes.sample_rows == 2 * per_run + min(budget.LDM_SHOWN, gpu.ldm_grid)
    cpu = PROFILES["cpu"]
    real = make_autoencoder(cpu.ldm_latent_channels, cpu.ldm_image_size).eval()
    x = torch.zeros(1, 3, cpu.ldm_image_size, cpu.ldm_image_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        real.encode(x)
    assert budget.autoencoder_flops(cpu)[0] == counter.get_total_flops()


def test_realism_sets_charged_at_their_own_precision() -> None:
    """With ``realism_half`` the FID/KID/C2ST sets are charged at the half-precision rate, the
    locality pairs stay fp32: chapters 05 and 12 on a T4 cost less by exactly the sets' FLOPs
    at the fp32 rate less the same FLOPs at the half rate."""
    gpu = PROFILES["gpu"]
    assert gpu.realism_half and not PROFILES["cpu"].realism_half
    fp32 = dataclasses.replace(gpu, realism_half=False)
    t4 = budget.GPUS["T4"]
    for chapter in ("05", "12"):
        work = budget.chapter_work(gpu, chapter)
        sets = [w for w in work if "FID" in w.what]
        assert sets and {w.precision for w in sets} == {"half"}
        assert {w.precision for w in work if w not in sets} == {"fp32"}
        flops = sum(w.sample_rows for w in sets) * budget.pixel_model(gpu).flops
        rates = [budget.flops_per_second(t4, p) for p in ("fp32", "half")]
        saved = flops / rates[0] - flops / rates[1]
        e_half = budget.chapter_estimate(gpu, chapter, "T4")
        e_fp32 = budget.chapter_estimate(fp32, chapter, "T4")
        assert e_half.flops == e_fp32.flops  # the same work, at another rate
        assert e_fp32.seconds - e_half.seconds == pytest.approx(saved) and saved > 0
    locality = next(w for w in budget.chapter_work(gpu, "07") if w.what == "locality protocol")
    assert locality.precision == "fp32"
