"""Latent diffusion: the VQ autoencoder and its cache, training on latents with latent-grid
regions, the pretrained-pipeline path (offline, tiny random models), and latent DDIM sampling
checked against diffusers' LDMPipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, LDMPipeline, VQModel

from interpddpm import latent, metrics
from interpddpm.denoiser_game import DenoiserGame
from interpddpm.models import load_latent_pretrained, make_unet, save_pipeline
from interpddpm.regions import downsample_labels, player_masks
from interpddpm.toyfaces import NOSE, SKIN, ToyFaces
from interpddpm.training import (
    CheckpointError,
    TrainConfig,
    load_run_model,
    read_metrics,
    train,
    training_losses,
)

SIZE = 16  # toy faces 16x16 -> latents 3x8x8


@pytest.fixture(scope="module")
def ae_dir(tmp_path_factory):
    """A tiny trained autoencoder folder (a few steps: shapes and plumbing, not quality)."""
    vq, record = latent.train_autoencoder(
        image_size=SIZE, steps=6, batch_size=4, pool=16, plain_fraction=0.5, progress=False
    )
    return latent.save_autoencoder(vq, tmp_path_factory.mktemp("ae") / "autoencoder", record)


def tiny_vqvae() -> VQModel:
    torch.manual_seed(0)
    return VQModel(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=3,
        num_vq_embeddings=16,
        vq_embed_dim=3,
        sample_size=SIZE,
    )


# --------------------------------------------------------------------------- autoencoder
def test_autoencoder_round_trip(ae_dir) -> None:
    codec = latent.LatentCodec.load(ae_dir)
    assert codec.factor == 2 and codec.latent_channels == 3
    assert codec.record["steps"] == 6 and np.isfinite(codec.record["psnr_held_out"])
    images, labels = ToyFaces(SIZE, 4, seed=1).batch(range(4))
    z = codec.encode(images)
    assert z.shape == (4, 3, SIZE // 2, SIZE // 2)
    x = codec.decode(z)
    assert x.shape == images.shape and x.min() >= -1 and x.max() <= 1
    assert latent.reconstruction_psnr(codec, images).shape == (4,)
    # the scaling factor makes the latents of the training faces about unit variance
    train_faces, _ = ToyFaces(SIZE, 16, seed=0).batch(range(16))
    assert 0.5 < float(codec.encode(train_faces).std()) < 2.0
    # a plain diffusers VQModel folder: VQModel.from_pretrained reads it
    assert isinstance(VQModel.from_pretrained(ae_dir), VQModel)
    # the trainer's hook: latents and latent-grid labels, memoised by dataset index
    batch = [0, 1, 0, 2]  # dataset items 3, 5, 3, 7
    zz, small = codec.encode_batch(images[batch], labels[batch], ["nose"], keys=[3, 5, 3, 7])
    assert zz.shape == (4, 3, 8, 8) and small.shape == (4, 8, 8)
    assert torch.allclose(zz[0], z[0], atol=1e-6) and sorted(codec._cache) == [3, 5, 7]
    again, _ = codec.encode_batch(images[[3]], None, keys=[5])  # key 5 is served from the cache
    assert torch.equal(again[0], zz[1])


def test_autoencoder_integrity(ae_dir, tmp_path) -> None:
    import shutil

    broken = tmp_path / "ae"
    shutil.copytree(ae_dir, broken)
    weights = broken / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        latent.LatentCodec.load(broken)
    (broken / latent.RECORD).unlink()  # no record: an incomplete folder, not our autoencoder
    with pytest.raises(CheckpointError, match="not a complete"):
        latent.read_autoencoder(broken)


def test_profile_autoencoder_is_cached(monkeypatch) -> None:
    first = latent.autoencoder("smoke", progress=False)
    assert (latent.autoencoder_dir("smoke") / latent.RECORD).is_file()

    def no_training(**kwargs):
        raise AssertionError("a cached autoencoder was retrained")

    monkeypatch.setattr(latent, "train_autoencoder", no_training)
    second = latent.autoencoder("smoke", progress=False)
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.vqvae.parameters(), second.vqvae.parameters(), strict=True)
    )


# --------------------------------------------------------------------------- regions
def test_downsample_labels_keeps_small_concepts() -> None:
    labels = torch.full((1, 4, 4), SKIN)
    labels[0, 0, 0] = NOSE  # one nose pixel in the top-left 2x2 cell
    assert downsample_labels(labels, 2)[0, 0, 0] == SKIN  # majority
    small = downsample_labels(labels, 2, prefer=["nose"])
    assert small[0, 0, 0] == NOSE and (small[0].flatten()[1:] == SKIN).all()
    with pytest.raises(ValueError, match="divide"):
        downsample_labels(labels, 3)


# --------------------------------------------------------------------------- training
TINY = dict(
    preset="tiny",
    image_size=SIZE,
    batch_size=4,
    dataset_length=8,
    steps=2,
    log_every=1,
    checkpoint_every=2,
    interpretable=True,
    concepts=["nose"],
    ie_sub_batch=2,
)


def test_training_on_latents(ae_dir, tmp_path, monkeypatch) -> None:
    import interpddpm.training as training

    shapes = []
    real_game_values = training.losses.game_values  # patched where the loss looks it up

    def spy(eps, masks, value):
        shapes.append((tuple(eps.shape), tuple(masks.shape)))
        return real_game_values(eps, masks, value)

    monkeypatch.setattr(training.losses, "game_values", spy)
    cfg = TrainConfig(**TINY, autoencoder=str(ae_dir), output_dir=str(tmp_path / "run"))
    latent.train(cfg, progress=False)
    unet = load_run_model(tmp_path / "run")
    assert unet.config.in_channels == 3 and unet.config.sample_size == SIZE // 2
    # DDIM clamps its z_0 estimate to the latents' recorded range (pixels: to [-1, 1])
    clip = latent.LatentCodec.load(ae_dir).record["latent_clip"]
    assert unet.scheduler_config["clip_sample"] and clip > 1
    assert unet.scheduler_config["clip_sample_range"] == pytest.approx(clip)
    # L_IE ran on the latent grid: [sub, 2**K coalitions, C, 8, 8] and masks [sub, K, 8, 8]
    assert shapes and all(e == (2, 4, 3, 8, 8) and m == (2, 2, 8, 8) for e, m in shapes)
    assert all(r["loss_ie"] is not None for r in read_metrics(tmp_path / "run"))


def test_image_resolution_masks_on_a_latent_model_fail_clearly(ae_dir) -> None:
    codec = latent.LatentCodec.load(ae_dir)
    images, labels = ToyFaces(SIZE, 4, seed=0).batch(range(4))
    z = codec.encode(images)
    unet = make_unet("tiny", SIZE // 2, in_channels=3)
    cfg = TrainConfig(**TINY)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="latent grid"):
        training_losses(unet, DDPMScheduler(), z, labels, cfg, 0, gen)
    ok = training_losses(unet, DDPMScheduler(), z, codec.labels(labels, ["nose"]), cfg, 0, gen)
    assert ok.ie is not None
    masks = player_masks(labels, ["nose"])
    with pytest.raises(ValueError, match="resize_masks"):
        DenoiserGame(unet, z, 10, masks)


# --------------------------------------------------------------------------- pretrained LDM
@pytest.fixture
def ldm_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(1)
    unet = make_unet("tiny", SIZE // 2, in_channels=3)
    sched = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195, clip_sample=False
    )
    LDMPipeline(vqvae=tiny_vqvae(), unet=unet, scheduler=sched).save_pretrained(tmp_path / "ldm")
    return tmp_path / "ldm"


def test_pretrained_pipeline_path(ldm_folder, tmp_path) -> None:
    codec = latent.LatentCodec.load(ldm_folder)
    assert codec.scaling_factor == 1.0  # the CompVis/ldm-celebahq-256 pitfall is handled
    assert codec.scheduler_config["beta_start"] == pytest.approx(0.0015)
    # fine-tune the pipeline's UNet on its own latents: its noise schedule is kept
    cfg = TrainConfig(
        **TINY,
        autoencoder=str(ldm_folder),
        init_from=str(ldm_folder),
        output_dir=str(tmp_path / "run"),
    )
    latent.train(cfg, progress=False)
    unet = load_run_model(tmp_path / "run")
    assert unet.scheduler_config["beta_schedule"] == "scaled_linear"
    assert unet.scheduler_config["beta_start"] == pytest.approx(0.0015)
    # a pixel-space pipeline is not an autoencoder
    save_pipeline(make_unet("tiny", SIZE), DDPMScheduler(), tmp_path / "pixel")
    with pytest.raises(ValueError, match="not a latent diffusion pipeline"):
        latent.LatentCodec.load(tmp_path / "pixel")


def test_latent_sampling_equals_ldm_pipeline(ldm_folder) -> None:
    unet, sched, vq = load_latent_pretrained(ldm_folder)
    vq.register_to_config(scaling_factor=0.5)  # exercise the scaling on both sides
    pipe = LDMPipeline(vqvae=vq, unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        batch_size=3,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=6,
        eta=0.0,
        output_type="np",
    ).images
    model = latent.LatentModel(unet, latent.LatentCodec(vq))
    z_T = torch.randn((3, 3, SIZE // 2, SIZE // 2), generator=torch.Generator().manual_seed(0))
    ours = (model.sample(z_T, num_inference_steps=6) / 2 + 0.5).clamp(0, 1)
    np.testing.assert_allclose(ours.permute(0, 2, 3, 1).numpy(), expected, atol=1e-5)


# --------------------------------------------------------------------------- editing, locality
class _FixedParser:
    """Every image has its nose in the same 4x4 square."""

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        labels = torch.full((images.shape[0], *images.shape[-2:]), SKIN)
        labels[:, 6:10, 6:10] = NOSE
        return labels


def test_latent_edit_and_locality(ldm_folder) -> None:
    unet, _, vq = load_latent_pretrained(ldm_folder)
    model = latent.LatentModel(unet, latent.LatentCodec(vq))
    labels = _FixedParser().predict(torch.zeros(2, 3, SIZE, SIZE))
    region = model.region(labels, "nose", dilation=0)
    assert region.shape == (2, 8, 8) and int(region[0].sum()) == 4  # the 2x2 latent cells
    z_T = model.noise(2, generator=torch.Generator().manual_seed(0))
    z_edit, x_edit = model.edit(
        z_T, labels, "nose", dilation=0, generator=torch.Generator(), num_inference_steps=3
    )
    assert x_edit.shape == (2, 3, SIZE, SIZE)
    assert torch.equal(z_edit[:, :, ~region[0]], z_T[:, :, ~region[0]])  # only the region moved
    (res,) = latent.locality(model, _FixedParser(), ["nose"], n_pairs=3, num_inference_steps=3)
    assert res.n_pairs == 3 and np.isfinite(res.ratio_of_sums) and res.ratio_of_sums >= 0
    with pytest.raises(ValueError, match="latent models support only 'swap'"):
        metrics.locality_protocol(
            unet, _FixedParser(), ["nose"], n_pairs=2, method="repaint", decode=model.codec.decode
        )


def test_latent_sizes_are_checked_before_training(ldm_folder, tmp_path) -> None:
    """An image size the autoencoder or the latent UNet cannot divide: a ConfigError naming the
    nearest valid sizes; a pipeline UNet of another latent size: both shapes named."""
    from interpddpm.training import ConfigError, list_checkpoints

    base = dict(TINY, autoencoder=str(ldm_folder))
    cases = [
        (dict(image_size=17), "not a multiple of the autoencoder's downsampling factor 2 ("),
        (dict(image_size=18), "halves the 2x smaller latent grid 1 times, so image_size must "),
        (dict(image_size=20, preset="smoke"), "a multiple of 8; nearest valid sizes: 16 or 24"),
        (dict(image_size=32, init_from=str(ldm_folder)), "takes [3, 8, 8] inputs"),
    ]
    for changes, phrase in cases:
        cfg = TrainConfig(**{**base, **changes}, output_dir=str(tmp_path / "run"))
        with pytest.raises(ConfigError) as info:
            latent.train(cfg, progress=False)
        assert phrase in str(info.value)
    assert list_checkpoints(tmp_path / "run") == []


def test_the_trainer_takes_its_codec_and_never_imports_latent(ae_dir, tmp_path) -> None:
    """No file of the trainer (the package interpddpm.training) imports latent.py (the codec
    comes in as an argument); a latent config without its codec, or a codec of the wrong kind,
    is refused before any work."""
    import ast
    from pathlib import Path

    from interpddpm import training
    from interpddpm.training import ConfigError, PixelCodec, list_checkpoints

    files = sorted(Path(training.__file__).parent.rglob("*.py"))
    assert {f.name for f in files} >= {"__init__.py", "config.py", "losses.py", "loop.py"}
    for file in files:
        imported = set()  # every module named, and every name imported (from .. import latent)
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                imported |= {node.module or ""} | {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
        assert not {m for m in imported if "latent" in m.split(".")}, (file.name, imported)

    lat = TrainConfig(**TINY, autoencoder=str(ae_dir), output_dir=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"interpddpm\.latent\.train\(config\)"):
        train(lat, progress=False)
    with pytest.raises(ConfigError, match="pass a latent codec"):
        train(lat, progress=False, codec=PixelCodec())
    pix = TrainConfig(**TINY, output_dir=str(tmp_path / "b"))
    codec = latent.LatentCodec.load(ae_dir)
    with pytest.raises(ConfigError, match=r"pass PixelCodec\(\)"):
        train(pix, progress=False, codec=codec)
    with pytest.raises(ConfigError, match="must have initial_model"):
        train(pix, progress=False, codec=object())
    with pytest.raises(ConfigError, match="autoencoder set"):
        latent.train(pix, progress=False)
    assert list_checkpoints(tmp_path / "a") == list_checkpoints(tmp_path / "b") == []


def test_checkpoints_carry_their_noise_schedule(ae_dir, tmp_path) -> None:
    """A latent checkpoint loads with its clipped latent schedule without a codec (it is saved
    with the weights); a checkpoint written before that needs the codec, and says so."""
    import json

    from interpddpm.artifacts import seal_record
    from interpddpm.training import ConfigError, list_checkpoints

    cfg = TrainConfig(**TINY, autoencoder=str(ae_dir), output_dir=str(tmp_path / "run"))
    codec = latent.LatentCodec.load(ae_dir)
    result = latent.train(cfg, progress=False, codec=codec)
    expected = dict(latent.noise_scheduler(cfg).config)
    loaded = dict(load_run_model(tmp_path / "run").scheduler_config)
    assert loaded == {**expected, "_use_default_values": loaded["_use_default_values"]}
    assert sorted(loaded["_use_default_values"]) == loaded["_use_default_values"]
    assert loaded["clip_sample"] and loaded["clip_sample_range"] > 1
    assert dict(result.model().scheduler_config) == loaded
    # an older checkpoint: no schedule inside; rebuilt from the codec, refused without it
    for checkpoint in list_checkpoints(tmp_path / "run"):
        state = json.loads((checkpoint / "state.json").read_text())
        state.pop("scheduler_config")
        (checkpoint / "state.json").write_text(seal_record(state))
    with pytest.raises(ConfigError, match="latent space"):
        load_run_model(tmp_path / "run")
    old = load_run_model(tmp_path / "run", codec=codec).scheduler_config
    assert old["clip_sample_range"] == pytest.approx(loaded["clip_sample_range"])
