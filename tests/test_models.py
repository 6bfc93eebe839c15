"""UNet presets, saving and loading pipelines (offline, with tiny random models)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    LDMPipeline,
    UNet2DModel,
    VQModel,
)

from interpddpm.models import (
    UNET_PRESETS,
    PretrainedNotAvailableError,
    count_parameters,
    load_latent_pretrained,
    load_pretrained,
    make_unet,
    save_pipeline,
    unet_preset,
)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return make_unet("tiny", 8)


def test_presets_shapes_and_sizes():
    expected = {"tiny": 16, "smoke": 32, "cpu": 32, "gpu": 64, "colab": 64, "t4": 64, "paper": 64}
    assert set(UNET_PRESETS) == set(expected)
    with torch.device("meta"):  # no memory, no init time for the big ones
        for name, size in expected.items():
            unet = make_unet(name)
            assert unet.config.sample_size == size
            assert unet.config.in_channels == unet.config.out_channels == 3
    with torch.device("meta"):
        assert 1.0e6 < count_parameters(make_unet("cpu")) < 1.1e6  # the probe's 1.06M model
        assert count_parameters(make_unet("tiny")) < count_parameters(make_unet("smoke"))
        assert count_parameters(make_unet("gpu")) < count_parameters(make_unet("paper"))
        assert 17.0e6 < count_parameters(make_unet("colab")) < 17.5e6  # half the gpu widths
        assert 9.5e6 < count_parameters(make_unet("t4")) < 9.9e6  # the gpu profile on a T4 (9.7M)
    unet = make_unet("tiny", 8, in_channels=1)
    out = unet(torch.randn(2, 1, 8, 8), torch.tensor(5)).sample
    assert out.shape == (2, 1, 8, 8)
    assert make_unet("smoke", 16, layers_per_block=2).config.layers_per_block == 2
    assert unet_preset("gpu", 32)["sample_size"] == 32
    unet_preset("tiny")["sample_size"] = 99  # a fresh dict: presets are not mutated
    assert UNET_PRESETS["tiny"]["sample_size"] == 16
    with pytest.raises(ValueError, match="tiny, smoke, cpu, gpu, colab, t4, paper"):
        make_unet("huge")


def test_save_and_load_pipeline(tmp_path, tiny):
    scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=False)
    folder = save_pipeline(tiny, scheduler, tmp_path / "pipe")
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    unet, sched = load_pretrained(folder)
    assert isinstance(unet, UNet2DModel) and not unet.training
    assert _same_weights(unet, tiny)
    assert type(sched) is DDPMScheduler
    assert sched.config.beta_schedule == "squaredcos_cap_v2" and not sched.config.clip_sample
    assert unet.scheduler_config == dict(sched.config)
    # The folder is an ordinary diffusers pipeline.
    assert _same_weights(DDPMPipeline.from_pretrained(folder).unet, tiny)
    # A scheduler of another class keeps its class; subfolder selects a pipeline inside.
    save_pipeline(tiny, DDIMScheduler(), tmp_path / "run" / "ema")
    unet2, sched2 = load_pretrained(str(tmp_path / "run"), subfolder="ema")
    assert type(sched2) is DDIMScheduler and _same_weights(unet2, tiny)


def test_load_bare_unet_folder(tmp_path, tiny):
    tiny.save_pretrained(tmp_path / "bare")
    with pytest.warns(UserWarning, match="DDPMScheduler"):
        unet, sched = load_pretrained(tmp_path / "bare")
    assert _same_weights(unet, tiny)
    assert type(sched) is DDPMScheduler and sched.config.num_train_timesteps == 1000
    # A scheduler_config.json beside the UNet is used.
    tiny.save_pretrained(tmp_path / "with_sched")
    DDIMScheduler(beta_schedule="scaled_linear").save_pretrained(tmp_path / "with_sched")
    _, sched = load_pretrained(tmp_path / "with_sched")
    assert type(sched) is DDIMScheduler and sched.config.beta_schedule == "scaled_linear"


def test_missing_local_path(tmp_path):
    missing = tmp_path / "nope" / "model"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_pretrained(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_pretrained(tmp_path / "empty")


def test_offline_hub_id_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = "interpddpm-tests/no-such-model"
    with pytest.raises(PretrainedNotAvailableError, match=repo) as err:
        load_pretrained(repo)
    message = str(err.value)
    assert "network" in message and "HF_HOME" in message and "--local-dir" in message
    assert isinstance(err.value, OSError)
    with pytest.raises(PretrainedNotAvailableError, match=repo):
        load_latent_pretrained(repo, local_files_only=True)


def _tiny_vqvae():
    return VQModel(
        block_out_channels=(8,),
        norm_num_groups=4,
        latent_channels=3,
        num_vq_embeddings=16,
        vq_embed_dim=3,
        sample_size=16,
    )


def test_latent_pipeline(tmp_path, tiny):
    torch.manual_seed(0)
    vqvae = _tiny_vqvae()
    LDMPipeline(vqvae=vqvae, unet=tiny, scheduler=DDIMScheduler()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="load_latent_pretrained"):
        load_pretrained(tmp_path)
    unet, sched, vq = load_latent_pretrained(tmp_path)
    assert _same_weights(unet, tiny) and _same_weights(vq, vqvae)
    assert type(sched) is DDIMScheduler
    assert vq.config.scaling_factor == 1.0  # the CompVis/ldm-celebahq-256 pitfall
    assert vqvae.config.scaling_factor == pytest.approx(0.18215)  # diffusers' default
    _, _, kept = load_latent_pretrained(tmp_path, scaling_factor=None)
    assert kept.config.scaling_factor == pytest.approx(0.18215)
    save_pipeline(tiny, DDPMScheduler(), tmp_path / "pixel")
    with pytest.raises(ValueError, match="load_pretrained"):
        load_latent_pretrained(tmp_path / "pixel")


def test_pipeline_without_unet(tmp_path):
    (tmp_path / "model_index.json").write_text(
        json.dumps(
            {"_class_name": "DiTPipeline", "transformer": ["diffusers", "DiTTransformer2DModel"]}
        )
    )
    with pytest.raises(ValueError, match="without a 'unet'"):
        load_pretrained(tmp_path)


def test_unknown_preset_is_a_user_error() -> None:
    """The command line prints a UserError on one line (exit 2); it stays a ValueError."""
    from interpddpm.errors import UserError

    with pytest.raises(UserError, match="Unknown UNet preset 'huge'. Valid presets: tiny"):
        unet_preset("huge")
