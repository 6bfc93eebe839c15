"""The trainer: exact resume, checkpoints, config validation, the loss of one batch."""

from __future__ import annotations

import json

import pytest
import torch

from interpddpm.training import (
    CheckpointError,
    ConfigError,
    TrainConfig,
    batch_indices,
    lambda_at,
    list_checkpoints,
    load_run_model,
    precision_label,
    read_checkpoint,
    read_metrics,
    resolve_mixed_precision,
    run_noise_scheduler,
    train,
    training_losses,
)

TINY = dict(
    preset="tiny",
    image_size=16,
    batch_size=4,
    dataset_length=40,
    log_every=1,
    checkpoint_every=2,
    lr=1e-3,
)


def weights(path, ema: bool) -> dict[str, torch.Tensor]:
    return load_run_model(path, ema=ema).state_dict()


@pytest.mark.parametrize(
    ("interpretable", "mixed_precision"), [(False, "no"), (True, "no"), (True, "bf16")]
)
def test_resume_is_exact(tmp_path, interpretable: bool, mixed_precision: str) -> None:
    """A run stopped after 3 steps and resumed ends with exactly the uninterrupted weights."""
    cfg = dict(
        TINY,
        steps=5,
        interpretable=interpretable,
        concepts=["nose"],
        ie_sub_batch=2,
        mixed_precision=mixed_precision,
    )
    train(TrainConfig(**cfg, output_dir=str(tmp_path / "a")), progress=False)
    train(TrainConfig(**cfg, output_dir=str(tmp_path / "b")), stop_after=3, progress=False)
    assert read_checkpoint(list_checkpoints(tmp_path / "b")[-1])["step"] == 3
    train(TrainConfig(**cfg, output_dir=str(tmp_path / "b")), progress=False)
    for ema in (False, True):
        a, b = weights(tmp_path / "a", ema), weights(tmp_path / "b", ema)
        assert all(torch.equal(a[k], b[k]) for k in a)
    # the resumed run's log has each step once
    assert [r["step"] for r in read_metrics(tmp_path / "b")] == [1, 2, 3, 4, 5]
    # and training changed the weights
    init = load_run_model(tmp_path / "a", ema=False)
    assert init is not None


def test_precisions_alternate_in_one_process(tmp_path) -> None:
    """accelerate's state refuses a second precision in a process; train() resets it, so one
    kernel trains fp32 and bf16 runs in turn. bf16 autocast really runs (other weights, still
    stored in fp32) and a repeated fp32 run is bit-identical to the first."""
    for name, precision in (("a", "no"), ("b", "bf16"), ("c", "no")):
        cfg = TrainConfig(
            **TINY, steps=2, mixed_precision=precision, output_dir=str(tmp_path / name)
        )
        train(cfg, progress=False)
    a, b, c = (weights(tmp_path / name, ema=False) for name in "abc")
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype == torch.float32 for v in b.values())


def test_auto_precision_follows_the_hardware(monkeypatch, tmp_path) -> None:
    from interpddpm import devices, runs

    monkeypatch.setenv("INTERPDDPM_CACHE", str(tmp_path))
    assert [resolve_mixed_precision(v) for v in ("no", "bf16", "fp16")] == ["no", "bf16", "fp16"]
    monkeypatch.setattr(devices, "native_bf16", lambda device=None: True)
    assert resolve_mixed_precision("auto") == "bf16"
    fast = runs.baseline_config("cpu")
    assert fast.mixed_precision == "bf16"
    assert runs.finetune_config("cpu", ["nose"]).mixed_precision == "bf16"  # fine-tunes follow
    monkeypatch.setattr(devices, "native_bf16", lambda device=None: False)
    slow = runs.baseline_config("cpu")
    assert slow.mixed_precision == "no"
    assert slow.output_dir != fast.output_dir  # each precision trains into its own folder
    assert runs.baseline_config("smoke").mixed_precision == "no"  # tests: fp32 everywhere
    with pytest.raises(ConfigError, match="resolve_mixed_precision"):
        TrainConfig(mixed_precision="auto")
    # config files and `interpddpm train --set mixed_precision=auto` resolve it on this machine
    assert TrainConfig.from_dict({"mixed_precision": "auto"}).mixed_precision == "no"
    monkeypatch.setattr(devices, "native_bf16", lambda device=None: True)
    assert TrainConfig.from_dict({"mixed_precision": "auto"}).mixed_precision == "bf16"
    assert [precision_label(v) for v in ("no", "bf16")] == ["fp32", "bf16 autocast"]


def test_finished_run_is_not_retrained(tmp_path) -> None:
    cfg = TrainConfig(**TINY, steps=2, output_dir=str(tmp_path))
    train(cfg, progress=False)
    before = weights(tmp_path, ema=False)
    result = train(cfg, progress=False)
    assert result.step == 2
    after = weights(tmp_path, ema=False)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_interpretable_finetuning_reduces_the_loss(tmp_path) -> None:
    """L_IE falls when it is trained on (a real effect, not just 'it runs')."""
    cfg = TrainConfig(
        **dict(TINY, lr=2e-3, log_every=1),
        steps=12,
        interpretable=True,
        concepts=["nose"],
        ie_sub_batch=4,
        lambda_start=100.0,
        lambda_floor=100.0,
        output_dir=str(tmp_path),
    )
    train(cfg, progress=False)
    ie = [r["loss_ie"] for r in read_metrics(tmp_path)]
    assert sum(ie[-3:]) < 0.5 * sum(ie[:3])


def test_checkpoints_are_verified(tmp_path) -> None:
    train(TrainConfig(**TINY, steps=2, output_dir=str(tmp_path)), progress=False)
    ckpt = list_checkpoints(tmp_path)[-1]
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        read_checkpoint(ckpt)
    (ckpt / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing|sha256"):
        train(TrainConfig(**TINY, steps=4, output_dir=str(tmp_path)), progress=False)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_run_model(tmp_path / "nothing")
    (ckpt / "state.json").unlink()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        read_checkpoint(ckpt)


def test_resume_with_a_different_config_is_refused(tmp_path) -> None:
    train(TrainConfig(**TINY, steps=2, output_dir=str(tmp_path)), progress=False)
    with pytest.raises(ConfigError, match="lr"):
        train(TrainConfig(**dict(TINY, lr=5e-4), steps=4, output_dir=str(tmp_path)), progress=False)


def test_config_validation_and_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown config keys: lerning_rate"):
        TrainConfig.from_dict({"lerning_rate": 1e-3})
    with pytest.raises(ConfigError, match="batch_size must be a positive int"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="baseline must be one of"):
        TrainConfig(baseline="mean")
    path = tmp_path / "run.yaml"
    path.write_text("steps: 7\nconcepts: [eyes, mouth]\ninterpretable: true\n")
    cfg = TrainConfig.from_file(path)
    assert cfg.steps == 7 and cfg.concepts == ("eyes", "mouth")
    path.write_text("stpes: 7\n")
    with pytest.raises(ConfigError, match="stpes"):
        TrainConfig.from_file(path)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


class _Elementwise(torch.nn.Module):
    """A stand-in denoiser made of ops that autocast leaves in fp32, so its output is the same
    with and without autocast: any difference in the losses comes from the losses' own ops.
    The image mean couples the regions, so L_IE is not zero."""

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        coupling = x.mean(dim=(-3, -2, -1), keepdim=True)
        return torch.sin(3 * x) + coupling + 1e-3 * t.float().view(-1, 1, 1, 1)


@pytest.mark.parametrize(
    ("constraint", "game"), [("two_sided", "region_mean"), ("one_sided", "pixel")]
)
def test_losses_are_computed_in_fp32_under_autocast(constraint: str, game: str) -> None:
    """Under bf16 autocast only the network's forward may lose precision: region means are an
    einsum, which autocast would run in bf16 and so round away the small differences of game
    values that L_IE is made of."""
    from interpddpm.toyfaces import ToyFaces

    images, labels = ToyFaces(16, 8).batch(range(4))
    cfg = TrainConfig(
        interpretable=True,
        concepts=("eyes", "nose"),
        ie_sub_batch=2,
        ie_constraint=constraint,
        game_value=game,
    )
    sched = run_noise_scheduler(cfg)
    exact = training_losses(
        _Elementwise(), sched, images, labels, cfg, 0, torch.Generator().manual_seed(0)
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = training_losses(
            _Elementwise(), sched, images, labels, cfg, 0, torch.Generator().manual_seed(0)
        )
    assert float(exact.ie) > 0
    assert mixed.total.dtype == torch.float32
    assert float(mixed.ie) == pytest.approx(float(exact.ie), rel=1e-6)
    assert float(mixed.ddpm) == pytest.approx(float(exact.ddpm), rel=1e-6)


def test_lambda_schedule() -> None:
    cfg = TrainConfig(lambda_start=1e3, lambda_floor=10.0, lambda_decay_steps=100)
    assert lambda_at(0, cfg) == pytest.approx(1e3)
    assert lambda_at(50, cfg) == pytest.approx(100.0)  # exponential: geometric midpoint
    assert lambda_at(100, cfg) == pytest.approx(10.0)
    assert lambda_at(10_000, cfg) == pytest.approx(10.0)


def test_batch_indices_cover_each_epoch_once() -> None:
    cfg = TrainConfig(batch_size=4, dataset_length=12)
    epoch = torch.cat([batch_indices(s, cfg, 12, 0, 1) for s in range(3)])
    assert sorted(epoch.tolist()) == list(range(12))
    two = torch.cat([batch_indices(0, cfg, 12, p, 2) for p in range(2)])
    assert len(set(two.tolist())) == 8  # two processes see different samples


def test_exact_ie_reuses_the_full_forward() -> None:
    """K = 2 exact: batch rows + 3 extra rows per sub-batch sample, one forward pass."""
    from interpddpm.models import make_unet
    from interpddpm.toyfaces import ToyFaces
    from interpddpm.training import run_noise_scheduler

    model = make_unet("tiny", sample_size=16)
    images, labels = ToyFaces(16, 8).batch(range(6))
    cfg = TrainConfig(interpretable=True, concepts=["nose"], ie_sub_batch=2)
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    out = training_losses(
        model, run_noise_scheduler(cfg), images, labels, cfg, 0, torch.Generator().manual_seed(0)
    )
    assert calls == [6 + 2 * 3] and out.rows == 12
    assert out.ie is not None and out.ie >= 0
    cfg4 = cfg.replace(concepts=["eyes", "nose", "mouth", "hair"], ie_samples=5)  # K = 5: pooled
    calls.clear()
    out = training_losses(
        model, run_noise_scheduler(cfg4), images, labels, cfg4, 0, torch.Generator().manual_seed(0)
    )
    assert calls == [6 + 2 * (5 + 5 + 1)]


def test_cli_train(tmp_path, capsys) -> None:
    from interpddpm.cli import main

    cfg = tmp_path / "run.yaml"
    cfg.write_text("preset: tiny\nimage_size: 16\nbatch_size: 2\ndataset_length: 8\n")
    out = tmp_path / "run"
    assert (
        main(["train", "--config", str(cfg), "--quiet", "--set", "steps=2", f"output_dir={out}"])
        == 0
    )
    assert read_checkpoint(list_checkpoints(out)[-1])["step"] == 2
    assert main(["train", "--quiet", "--set", "stepz=2"]) == 2
    assert "unknown config keys: stepz" in capsys.readouterr().err


def test_images_outside_range_are_refused(tmp_path) -> None:
    from interpddpm.training import fetch_batch

    class Bright:
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int):
            return torch.full((3, 16, 16), 200.0), torch.zeros(16, 16, dtype=torch.long)

    with pytest.raises(ValueError, match=r"must be in \[-1, 1\].*x / 127.5 - 1"):
        fetch_batch(Bright(), torch.arange(2))


def test_exact_loss_with_too_many_regions_is_refused() -> None:
    with pytest.raises(ConfigError, match="pooled sampled estimator"):
        TrainConfig(ie_exact_max_players=16)


def test_one_sided_and_timestep_options() -> None:
    """One-sided L_IE is the part of L_IE on the concept's outside; t options act on L_IE only."""
    from interpddpm.models import make_unet
    from interpddpm.toyfaces import ToyFaces
    from interpddpm.training import ie_sample_weights, run_noise_scheduler

    torch.manual_seed(0)
    model = make_unet("tiny", sample_size=16)
    images, labels = ToyFaces(16, 8).batch(range(6))
    cfg = TrainConfig(interpretable=True, concepts=["nose"], ie_sub_batch=3, lambda_start=1.0)
    sched = run_noise_scheduler(cfg)

    def losses(c):
        return training_losses(model, sched, images, labels, c, 0, torch.Generator().manual_seed(0))

    two, one = losses(cfg), losses(cfg.replace(ie_constraint="one_sided"))
    # K = 2: one-sided keeps the two terms of output "rest", a strict part of the four terms
    assert 0 < one.ie < two.ie and torch.equal(two.ddpm, one.ddpm)
    # timestep weights average to 1 over all t and grow with the noise level
    w = ie_sample_weights(sched, torch.arange(1000), cfg.replace(ie_t_weight="noise"))
    assert abs(float(w.mean()) - 1) < 1e-4 and bool((w.diff() >= 0).all())
    assert ie_sample_weights(sched, torch.arange(3), cfg) is None
    # ie_t_min moves only the L_IE samples' timesteps
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(i[1].clone()))
    losses(cfg.replace(ie_t_min=900))
    t = seen[-1][:6]
    assert bool((t[:3] >= 900).all()) and bool((seen[-1][6:] >= 900).all())
    with pytest.raises(ConfigError, match="ie_constraint"):
        cfg.replace(ie_constraint="both")
    with pytest.raises(ConfigError, match="ie_t_min"):
        cfg.replace(ie_t_min=1000)
    with pytest.raises(ConfigError, match="exact design"):
        cfg.replace(concepts=["eyes", "nose", "mouth", "hair"], ie_constraint="one_sided")


def test_runs_saved_before_new_keys_still_resume(tmp_path) -> None:
    """A checkpoint whose config predates a key resumes when the key has its default value."""
    cfg = TrainConfig(**TINY, steps=2, output_dir=str(tmp_path))
    train(cfg, progress=False)
    state_file = list_checkpoints(tmp_path)[-1] / "state.json"
    state = json.loads(state_file.read_text())
    for key in ("ie_constraint", "ie_t_min", "ie_t_weight"):
        del state["config"][key]
    del state["record_sha256"]  # an old checkpoint: saved before state.json had its own digest
    state_file.write_text(json.dumps(state))
    with pytest.warns(RuntimeWarning, match="no record_sha256"):
        train(cfg.replace(steps=3), progress=False)
    assert read_checkpoint(list_checkpoints(tmp_path)[-1])["step"] == 3
    with pytest.raises(ConfigError, match="ie_constraint"):
        train(cfg.replace(steps=4, interpretable=True, ie_constraint="one_sided"), progress=False)


def test_run_killed_before_its_first_checkpoint_restarts_with_a_clean_log(tmp_path) -> None:
    cfg = TrainConfig(**TINY, steps=3, output_dir=str(tmp_path))
    tmp_path.mkdir(exist_ok=True)
    lost = [{"step": s, "loss": 1.0} for s in (1, 2)]  # logged, then killed: no checkpoint
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lost))
    train(cfg, progress=False)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    assert all(r["loss"] != 1.0 for r in read_metrics(tmp_path))


# ---- inputs: a clear error or a correct result (issue 14) ------------------------------------
def test_config_values_are_coerced_by_field_type(tmp_path) -> None:
    """PyYAML reads ``2e-4`` as a string; numeric strings become numbers by the field's type."""
    yaml_file, json_file = tmp_path / "a.yaml", tmp_path / "a.json"
    yaml_file.write_text("lr: 2e-4\nsteps: 1e3\nconcepts: nose\ninterpretable: true\n")
    json_file.write_text('{"lr": "2e-4", "steps": 1000.0, "concepts": "nose"}')
    for cfg in (TrainConfig.from_file(yaml_file), TrainConfig.from_file(json_file)):
        assert cfg.lr == 2e-4 and isinstance(cfg.lr, float)
        assert cfg.steps == 1000 and isinstance(cfg.steps, int)
        assert cfg.concepts == ("nose",)  # one concept, not ('n', 'o', 's', 'e')
    assert TrainConfig.from_dict({"interpretable": "false", "grad_clip": 0}).grad_clip == 0.0
    assert TrainConfig(concepts="eyes").concepts == ("eyes",)
    assert TrainConfig(adam_betas=[0, "0.99"]).adam_betas == (0.0, 0.99)


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({"seed": 1.5}, "seed: expected an int (a whole number), got 1.5"),
        ({"steps": "many"}, "steps: expected an int, got 'many'"),
        ({"lr": "fast"}, "lr: expected a float (a number like 2e-4), got 'fast'"),
        ({"lr": float("nan")}, "lr must be a positive finite number, got nan"),
        ({"lr": "inf"}, "lr must be a positive finite number, got inf"),
        ({"lambda_start": float("nan")}, "lambda_start must be a finite number >= 0, got nan"),
        ({"lambda_floor": float("inf")}, "lambda_floor must be a finite number >= 0, got inf"),
        ({"grad_clip": -1}, "grad_clip must be a finite number >= 0, got -1.0"),
        ({"lr_warmup_steps": -5}, "lr_warmup_steps must be an int >= 0, got -5"),
        ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0, got -0.1"),
        ({"adam_betas": [0.9]}, "adam_betas: expected two numbers"),
        ({"adam_betas": [0.9, 1.0]}, "adam_betas must be two numbers in [0, 1)"),
        ({"adam_betas": [-0.1, 0.9]}, "adam_betas must be two numbers in [0, 1)"),
        ({"interpretable": 1}, "interpretable: expected a bool (true or false), got 1"),
        ({"output_dir": 7}, "output_dir: expected a string"),
        ({"concepts": ["nose", "nose"]}, "concepts lists 'nose' more than once"),
        ({"concepts": ["nsoe"]}, "unknown concept(s) 'nsoe' in concepts; valid names: eyes"),
        ({"dataset": "celebb"}, "unknown dataset 'celebb'; valid: toyfaces, celeba"),
        ({"dataset": "folder:"}, "unknown dataset 'folder:'"),
        ({"beta_schedule": "cosine"}, "unknown beta_schedule 'cosine'; valid: linear"),
        ({"image_size": 8}, "toy faces are drawn at 16 px or more"),
    ],
)
def test_bad_config_values_are_refused(changes: dict, phrase: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(changes)
    assert phrase in str(info.value)


def test_malformed_config_files_are_refused(tmp_path) -> None:
    bad_yaml, bad_json = tmp_path / "a.yaml", tmp_path / "a.json"
    bad_yaml.write_text("steps: [1, 2\nlr: 2e-4\n")
    bad_json.write_text('{"steps": 2,}')
    for path in (bad_yaml, bad_json):
        with pytest.raises(ConfigError, match="is not valid YAML or JSON"):
            TrainConfig.from_file(path)
    with pytest.raises(ConfigError, match="does not exist"):
        TrainConfig.from_file(tmp_path / "missing.yaml")


def test_unknown_preset_and_sizes_the_unet_cannot_halve_fail_at_start(tmp_path) -> None:
    from interpddpm.training import check_preset_size

    with pytest.raises(ConfigError, match="unknown preset 'huge'; valid presets: tiny, smoke"):
        train(TrainConfig(preset="huge", output_dir=str(tmp_path)), progress=False)
    # smoke halves 32 px twice: sizes must be multiples of 4
    with pytest.raises(ConfigError, match="a multiple of 4; nearest valid sizes: 16 or 20"):
        train(TrainConfig(preset="smoke", image_size=18, output_dir=str(tmp_path)), progress=False)
    with pytest.raises(ConfigError, match="multiple of 8; nearest valid sizes: 32 or 40"):
        check_preset_size("gpu", 36)
    with pytest.raises(ConfigError, match="4x smaller latent grid"):
        check_preset_size("smoke", 24, scale=4)  # a 6 px latent grid, halved twice
    check_preset_size("smoke", 32, scale=4)
    assert list_checkpoints(tmp_path) == []


def test_init_from_of_another_size_is_refused(tmp_path) -> None:
    """A 16 px run as init_from of a 32 px run would train, then save sample_size=16."""
    train(TrainConfig(**dict(TINY, steps=1), output_dir=str(tmp_path / "small")), progress=False)
    cfg = TrainConfig(
        **dict(TINY, image_size=32, steps=1),
        init_from=str(tmp_path / "small"),
        output_dir=str(tmp_path / "big"),
    )
    with pytest.raises(ConfigError) as info:
        train(cfg, progress=False)
    message = str(info.value)
    assert "(sample_size=16) but image_size=32" in message
    assert "set image_size=16" in message and "init_from=null" in message
    assert list_checkpoints(tmp_path / "big") == []


def test_misspelt_init_from_fails_at_once_with_a_suggestion(tmp_path, monkeypatch) -> None:
    import interpddpm.models as models

    def no_hub(*args, **kwargs):
        raise AssertionError("a local-looking init_from must not reach the hub loader")

    monkeypatch.setattr(models, "load_pretrained", no_hub)
    (tmp_path / "runs" / "baseline").mkdir(parents=True)
    (tmp_path / "runs" / "notes").mkdir()
    monkeypatch.chdir(tmp_path)
    for init_from in ("runs/baselin", "./runs/baselin", str(tmp_path / "runs" / "baselin")):
        with pytest.raises(ConfigError) as info:
            train(TrainConfig(**TINY, init_from=init_from, output_dir="out"), progress=False)
        message = str(info.value)
        assert f"init_from {init_from!r} is neither a run folder" in message
        assert "runs/baseline?" in message  # did you mean ...
    with pytest.raises(ConfigError, match="did you mean runs/baseline\\?"):
        train(TrainConfig(**TINY, init_from="runs/baselin", output_dir="out"), progress=False)
    with pytest.raises(ConfigError, match="is a folder but not a run folder"):
        train(TrainConfig(**TINY, init_from="runs/notes", output_dir="out"), progress=False)
    with pytest.raises(ConfigError, match="no such path"):
        train(TrainConfig(**TINY, init_from="zzz/qqq/www", output_dir="out"), progress=False)


def test_unusable_output_dir_fails_before_training(tmp_path, monkeypatch) -> None:
    import interpddpm.errors as errors
    from interpddpm.training import RunDirError

    a_file = tmp_path / "taken"
    a_file.write_text("x")
    with pytest.raises(RunDirError, match="is an existing file, not a folder"):
        train(TrainConfig(**TINY, output_dir=str(a_file)), progress=False)
    with pytest.raises(RunDirError, match="cannot be created: a part of it is a file"):
        train(TrainConfig(**TINY, output_dir=str(a_file / "run")), progress=False)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro"))

    monkeypatch.setattr(errors.tempfile, "mkstemp", read_only)
    with pytest.raises(RunDirError, match="is not writable \\(Permission denied\\)"):
        train(TrainConfig(**TINY, output_dir=str(tmp_path / "ro")), progress=False)
    assert isinstance(RunDirError("x"), ValueError)  # a UserError


def test_stop_after_must_be_positive(tmp_path) -> None:
    for bad in (0, -3):
        with pytest.raises(ConfigError, match="stop_after must be a positive number of steps"):
            train(TrainConfig(**TINY, output_dir=str(tmp_path)), stop_after=bad, progress=False)


class _FakeCuda:
    """Stand-in for torch.cuda on a machine with one GPU of a given compute capability."""

    def __init__(self, capability: tuple[int, int], name: str) -> None:
        self.capability, self.name = capability, name

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: self.capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: self.name)
        # what torch says on a T4 too (emulated bf16): the choice must not rest on it
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_gpu_precision_follows_the_compute_capability(monkeypatch) -> None:
    from interpddpm.devices import DeviceError, check_precision, native_bf16

    _FakeCuda((7, 5), "Tesla T4").install(monkeypatch)
    assert not native_bf16("cuda") and not native_bf16()
    assert resolve_mixed_precision("auto") == "fp16"  # with accelerate's GradScaler
    assert resolve_mixed_precision("auto", "cuda:0") == "fp16"
    with pytest.raises(
        DeviceError, match=r"Tesla T4, compute capability 7\.5.*use mixed_precision='fp16'"
    ):
        check_precision("bf16", "cuda")
    check_precision("fp16", "cuda")
    check_precision("bf16", "cpu")  # a CPU may emulate it: slower, not wrong

    _FakeCuda((8, 0), "NVIDIA A100").install(monkeypatch)
    assert native_bf16("cuda") and resolve_mixed_precision("auto") == "bf16"
    check_precision("bf16", "cuda")


def test_min_snr_weighting_of_the_ddpm_loss() -> None:
    """snr_gamma weights each sample's noise MSE by min(SNR_t, gamma) / SNR_t: by hand from the
    same draws, and equal to the plain loss when gamma exceeds every SNR."""
    from interpddpm.models import make_unet
    from interpddpm.toyfaces import ToyFaces
    from interpddpm.training import min_snr_weights

    torch.manual_seed(0)
    model = make_unet("tiny", sample_size=16)
    images, _ = ToyFaces(16, 8).batch(range(6))
    plain = TrainConfig()
    sched = run_noise_scheduler(plain)

    def loss(cfg):
        return training_losses(model, sched, images, None, cfg, 0, torch.Generator().manual_seed(3))

    gen = torch.Generator().manual_seed(3)  # the draws of training_losses, in its order
    noise = torch.randn(images.shape, generator=gen)
    t = torch.randint(0, 1000, (6,), generator=gen)
    with torch.no_grad():
        eps = model(sched.add_noise(images, noise, t), t).sample
        snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
        weights = snr.clamp(max=5.0) / snr
        by_hand = ((eps - noise).pow(2).flatten(1).mean(1) * weights).mean()
        assert torch.allclose(min_snr_weights(sched, t, 5.0), weights)
        assert float(loss(plain.replace(snr_gamma=5.0)).ddpm) == pytest.approx(float(by_hand))
        assert float(loss(plain.replace(snr_gamma=1e9)).ddpm) == pytest.approx(
            float(loss(plain).ddpm), rel=1e-6
        )
    assert plain.replace(snr_gamma=5.0).fingerprint() != plain.fingerprint()
    with pytest.raises(ConfigError, match="snr_gamma must be positive"):
        TrainConfig(snr_gamma=0)


def test_teacher_term_pulls_eps_towards_the_frozen_model() -> None:
    """teacher_weight adds w * mean_i w_i ||eps - eps_teacher||^2 (w_i: the L_DDPM weights): by
    hand from the same draws; zero when the teacher is the model itself."""
    import copy

    from interpddpm.models import make_unet
    from interpddpm.toyfaces import ToyFaces

    torch.manual_seed(0)
    model = make_unet("tiny", sample_size=16)
    torch.manual_seed(1)
    other = make_unet("tiny", sample_size=16)
    images, labels = ToyFaces(16, 8).batch(range(6))
    cfg = TrainConfig(
        init_from="runs/base", teacher_weight=0.5, snr_gamma=5.0, interpretable=True,
        concepts=["nose"], ie_sub_batch=2,
    )  # fmt: skip
    sched = run_noise_scheduler(cfg)

    def loss(c, teacher):
        gen = torch.Generator().manual_seed(3)
        return training_losses(model, sched, images, labels, c, 0, gen, teacher=teacher)

    with torch.no_grad():
        plain = loss(cfg.replace(teacher_weight=0.0), None)
        same = loss(cfg, copy.deepcopy(model))
        assert float(same.teacher) == pytest.approx(0.0, abs=1e-12)
        assert float(same.total) == pytest.approx(float(plain.total), rel=1e-6)
        taught = loss(cfg, other)
        gen = torch.Generator().manual_seed(3)  # the draws of training_losses, in its order
        noise = torch.randn(images.shape, generator=gen)
        t = torch.randint(0, 1000, (6,), generator=gen)
        x_t = sched.add_noise(images, noise, t)
        snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
        gap = (model(x_t, t).sample - other(x_t, t).sample).pow(2).flatten(1).mean(1)
        by_hand = (gap * snr.clamp(max=5.0) / snr).mean()
        assert float(taught.teacher) == pytest.approx(float(by_hand), rel=1e-5)
        assert float(taught.total) == pytest.approx(
            float(plain.total) + 0.5 * float(by_hand), rel=1e-5
        )
    with pytest.raises(ValueError, match="needs the frozen teacher"):
        loss(cfg, None)
    with pytest.raises(ConfigError, match="teacher_weight > 0 needs init_from"):
        TrainConfig(teacher_weight=1.0)
    with pytest.raises(ConfigError, match="teacher_weight must be"):
        TrainConfig(init_from="runs/base", teacher_weight=-1.0)


def test_teacher_and_decoder_only_finetuning(tmp_path) -> None:
    """A decoder-only run changes only the up blocks and the output head; a run with a teacher
    logs its term and resumes exactly; both keep the fingerprints of runs made before them."""
    base = TrainConfig(**TINY, steps=2, output_dir=str(tmp_path / "base"))
    train(base, progress=False)
    tune = dict(TINY, init_from=str(tmp_path / "base"), steps=3, lr=1e-2)
    dec = TrainConfig(**tune, trainable="decoder", output_dir=str(tmp_path / "dec"))
    train(dec, progress=False)
    before, after = weights(tmp_path / "base", ema=True), weights(tmp_path / "dec", ema=False)
    head = ("up_blocks.", "conv_norm_out.", "conv_out.")
    for name, value in after.items():
        moved = not torch.equal(value, before[name])
        assert moved == name.startswith(head) or not moved and "norm" in name, name
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("up_blocks."))
    taught = TrainConfig(**tune, teacher_weight=1.0, output_dir=str(tmp_path / "t1"))
    train(taught, progress=False)
    assert all(r["loss_teacher"] >= 0 for r in read_metrics(tmp_path / "t1"))
    train(taught.replace(output_dir=str(tmp_path / "t2")), stop_after=2, progress=False)
    train(taught.replace(output_dir=str(tmp_path / "t2")), progress=False)
    a, b = weights(tmp_path / "t1", ema=True), weights(tmp_path / "t2", ema=True)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the teacher is the init, not a checkpoint
    plain = TrainConfig(**tune, output_dir="x")
    assert plain.replace(teacher_weight=0.0, trainable="all").fingerprint() == plain.fingerprint()
    assert dec.fingerprint() != plain.fingerprint() != taught.fingerprint()
    with pytest.raises(ConfigError, match="trainable must be one of"):
        TrainConfig(trainable="encoder")


def test_a_moved_artifact_cache_still_loads_its_runs(tmp_path) -> None:
    """A fine-tuned run whose init_from folder moved with the cache (same run folder name)
    loads instead of being refused; a different run folder is still refused."""
    import shutil

    base = TrainConfig(**TINY, steps=2, output_dir=str(tmp_path / "a" / "base"))
    train(base, progress=False)
    tune = TrainConfig(
        **TINY,
        steps=2,
        init_from=str(tmp_path / "a" / "base"),
        output_dir=str(tmp_path / "a" / "t"),
    )
    train(tune, progress=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = tune.replace(
        init_from=str(tmp_path / "b" / "base"), output_dir=str(tmp_path / "b" / "t")
    )
    assert train(moved, progress=False).step == 2  # loaded, not refused or retrained
    (tmp_path / "b" / "other").mkdir()
    shutil.copytree(tmp_path / "b" / "base", tmp_path / "b" / "other" / "base2")
    with pytest.raises(ConfigError, match="init_from"):
        train(moved.replace(init_from=str(tmp_path / "b" / "other" / "base2")), progress=False)


# ---- wall-time checkpoints (issue 11: nothing lost on a disconnect) -------------------------
class Disconnect(Exception):
    """The runtime went away mid-training."""


class FakeClock:
    """A wall clock one minute later at each read; read number ``cut`` raises Disconnect."""

    def __init__(self, cut: int | None = None, minutes: float = 1.0) -> None:
        self.reads, self.cut, self.minutes = 0, cut, minutes

    def __call__(self) -> float:
        self.reads += 1
        if self.reads == self.cut:
            raise Disconnect
        return 60.0 * self.minutes * self.reads


def record_saves(monkeypatch) -> list[int]:
    """The steps of every checkpoint the trainer writes (pruned ones included), in order."""
    from interpddpm import training

    saved: list[int] = []
    save = training.loop.save_checkpoint  # patched where the loop looks it up

    def spy(folder, step, *args, **kwargs):
        saved.append(step)
        return save(folder, step, *args, **kwargs)

    monkeypatch.setattr(training.loop, "save_checkpoint", spy)
    return saved


def checkpoint_steps(folder) -> list[int]:
    return [read_checkpoint(c)["step"] for c in list_checkpoints(folder)]


def test_wall_time_checkpoint_resumes_exactly(tmp_path, monkeypatch, capsys) -> None:
    """The clock, not the step count, writes a checkpoint at step 3 (checkpoint_every=100); a
    disconnect at step 5 loses steps 4-5 only, and the resumed run ends with the weights of an
    uninterrupted one. The clock reads 1 minute apart: at the start, after each step and after
    each save, so with checkpoint_minutes=2.5 the third step is the first one past 2.5 minutes."""
    from interpddpm import training

    cfg = TrainConfig(**dict(TINY, checkpoint_every=100, keep_checkpoints=10), steps=7)
    train(cfg.replace(output_dir=str(tmp_path / "a")), progress=False)
    assert checkpoint_steps(tmp_path / "a") == [7]  # no clock: only the last step
    timed = cfg.replace(output_dir=str(tmp_path / "b"), checkpoint_minutes=2.5)
    saved = record_saves(monkeypatch)
    monkeypatch.setattr(training.loop, "_clock", FakeClock(cut=7))  # read 7: after step 5
    with pytest.raises(Disconnect):
        train(timed, progress=False)
    assert saved == [3] and checkpoint_steps(tmp_path / "b") == [3]
    # resumed with the clock off (checkpoint_minutes may change on resume) and a fast clock
    monkeypatch.setattr(training.loop, "_clock", FakeClock(minutes=60.0))
    capsys.readouterr()
    train(timed.replace(checkpoint_minutes=None), progress=False)
    assert f"resuming {tmp_path / 'b'} from step 3 of 7" in capsys.readouterr().out
    assert saved == [3, 7]
    for ema in (False, True):
        a, b = weights(tmp_path / "a", ema), weights(tmp_path / "b", ema)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_metrics(tmp_path / "b")] == list(range(1, 8))
    # uninterrupted, the clock saves at steps 3 and 6; keep_checkpoints still prunes
    monkeypatch.setattr(training.loop, "_clock", FakeClock())
    c = timed.replace(output_dir=str(tmp_path / "c"), keep_checkpoints=2)
    train(c, progress=False)
    assert saved == [3, 7, 3, 6, 7] and checkpoint_steps(tmp_path / "c") == [6, 7]
    assert not list(tmp_path.glob("*/.tmp-*"))  # every save completed its atomic rename
    a, c_weights = weights(tmp_path / "a", False), weights(tmp_path / "c", False)
    assert all(torch.equal(a[k], c_weights[k]) for k in a)


def test_without_checkpoint_minutes_only_steps_save(tmp_path, monkeypatch, capsys) -> None:
    """checkpoint_minutes=None: checkpoints every checkpoint_every steps and at the end, however
    much time passes; a fresh run prints no resume line."""
    from interpddpm import training

    saved = record_saves(monkeypatch)
    monkeypatch.setattr(training.loop, "_clock", FakeClock(minutes=60.0))
    train(TrainConfig(**TINY, steps=5, output_dir=str(tmp_path)), progress=False)
    assert saved == [2, 4, 5] and checkpoint_steps(tmp_path) == [4, 5]
    assert "resuming" not in capsys.readouterr().out


def test_checkpoint_minutes_is_bookkeeping() -> None:
    """It changes neither the fingerprint nor the config dict of runs that leave it unset
    (cache keys that hash the whole dict stay valid); configs saved without it still load."""
    cfg = TrainConfig(**TINY, steps=7)
    timed = cfg.replace(checkpoint_minutes=10)
    assert timed.checkpoint_minutes == 10.0
    assert timed.fingerprint() == cfg.fingerprint()
    assert "checkpoint_minutes" not in cfg.to_dict()
    assert timed.to_dict()["checkpoint_minutes"] == 10.0
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # an old saved config: no such key
    assert TrainConfig.from_dict(json.loads(json.dumps(timed.to_dict()))) == timed
    assert TrainConfig.from_dict({"checkpoint_minutes": "null"}).checkpoint_minutes is None
    for bad in (0, -1.0, float("nan"), float("inf"), "soon"):
        with pytest.raises(ConfigError, match="checkpoint_minutes"):
            cfg.replace(checkpoint_minutes=bad)


def test_a_given_dataset_is_what_the_run_trains_on(tmp_path) -> None:
    """``train(dataset=...)`` reads the given data: the config's own dataset passed in gives
    the weights of a run that builds it; other faces give other weights; an empty one fails."""
    from interpddpm.toyfaces import ToyFaces
    from interpddpm.training import ConfigError, training_dataset

    cfg = dict(TINY, steps=2)
    ref = TrainConfig(**cfg, output_dir=str(tmp_path / "ref"))
    train(ref, progress=False)
    same = TrainConfig(**cfg, output_dir=str(tmp_path / "same"))
    train(same, progress=False, dataset=training_dataset(same))
    other = TrainConfig(**cfg, output_dir=str(tmp_path / "other"))
    train(other, progress=False, dataset=ToyFaces(16, 40, seed=123))
    a, b, c = (weights(tmp_path / n, ema=False) for n in ("ref", "same", "other"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    with pytest.raises(ConfigError, match="dataset is empty"):
        train(TrainConfig(**cfg, output_dir=str(tmp_path / "e")), dataset=[])


def test_split_outside_refines_the_one_sided_loss_on_the_same_rows() -> None:
    """ie_outside="split": the same forward rows and L_DDPM, L_IE over finer output regions
    (hand-computed from the model's own predictions), and an unchanged fingerprint at the
    default so that runs recorded before the key keep their folders."""
    from interpddpm.denoiser_game import game_values
    from interpddpm.models import make_unet
    from interpddpm.regions import output_masks
    from interpddpm.theorem import concept_null_pairs, null_player_loss_from_values
    from interpddpm.toyfaces import ToyFaces
    from interpddpm.training import run_noise_scheduler

    torch.manual_seed(0)
    model = make_unet("tiny", sample_size=16)
    images, labels = ToyFaces(16, 8).batch(range(6))
    cfg = TrainConfig(
        interpretable=True,
        concepts=["eyes", "nose"],
        ie_sub_batch=2,
        ie_constraint="one_sided",
        lambda_start=1.0,
    )
    split = cfg.replace(ie_outside="split")
    sched = run_noise_scheduler(cfg)
    seen: list[torch.Tensor] = []
    model.register_forward_hook(lambda m, i, o: seen.append(o.sample.detach()))

    def losses(c: TrainConfig):
        gen = torch.Generator().manual_seed(0)
        return training_losses(model, sched, images, labels, c, 0, gen)

    one, fine = losses(cfg), losses(split)
    assert torch.equal(seen[0], seen[1]) and one.rows == fine.rows == 6 + 2 * 7
    assert torch.equal(one.ddpm, fine.ddpm) and float(fine.ie) > 0
    # by hand: the rows in exact_design order (the grand coalition is the batch row)
    eps = seen[1]
    rows = torch.cat([eps[6:].view(2, 7, 3, 16, 16), eps[:2, None]], 1)
    out = output_masks(labels[:2], ["eyes", "nose"], dilation=1, outside="split")
    values = game_values(rows, out)
    pairs = concept_null_pairs(3, n_outputs=out.shape[1])
    assert len(pairs) == 2 * 5  # eyes, nose: each against the 5 other outputs
    want = null_player_loss_from_values(values, pairs, n_players=3)
    assert torch.allclose(fine.ie, want, rtol=1e-5)
    # the fingerprint and the saved dict ignore the key at its default
    assert "ie_outside" not in cfg.to_dict() and split.to_dict()["ie_outside"] == "split"
    assert cfg.replace(ie_outside="one").fingerprint() == cfg.fingerprint()
    assert split.fingerprint() != cfg.fingerprint()
    with pytest.raises(ConfigError, match="ie_outside must be one of"):
        cfg.replace(ie_outside="halves")
    with pytest.raises(ConfigError, match="set ie_constraint='one_sided' too"):
        split.replace(ie_constraint="two_sided")
