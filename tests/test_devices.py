"""Where models run (interpddpm.devices): the device choice, and that the library's GPU code
paths keep every tensor on the model's device.

No GPU here, so the "other device" is PyTorch's ``meta`` device: it computes shapes only, and
any op that mixes a real CPU tensor with a meta one fails exactly as a CPU/CUDA mix fails on a
GPU ("Expected all tensors to be on the same device"). A function that passes with a meta model
keeps its work on the model's device.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from interpddpm import devices
from interpddpm.devices import DeviceError, default_device, place, placed_on

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_default_device_reads_the_environment(monkeypatch) -> None:
    monkeypatch.delenv(devices.ENV_DEVICE, raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert default_device().type == expected
    monkeypatch.setenv(devices.ENV_DEVICE, "cpu")
    assert default_device() == torch.device("cpu")
    monkeypatch.setenv(devices.ENV_DEVICE, "mps")
    with pytest.raises(DeviceError, match="only 'cpu' and 'cuda"):
        default_device()
    monkeypatch.setenv(devices.ENV_DEVICE, "not a device")
    with pytest.raises(DeviceError, match="is not a device name"):
        default_device()


def test_a_missing_gpu_is_refused_with_the_fix(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(devices.ENV_DEVICE, "cuda")
    with pytest.raises(DeviceError, match="no CUDA GPU.*unset INTERPDDPM_DEVICE"):
        default_device()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv(devices.ENV_DEVICE, "cuda:1")
    with pytest.raises(DeviceError, match="only 1 GPU"):
        default_device()
    monkeypatch.delenv(devices.ENV_DEVICE)
    assert default_device() == torch.device("cuda")  # a visible GPU is the default


def test_gpu_profiles_warn_on_a_cpu(monkeypatch) -> None:
    from interpddpm.profiles import get_profile

    monkeypatch.delenv(devices.ENV_DEVICE, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="sized for a GPU"):
        get_profile("gpu")
    monkeypatch.setenv(devices.ENV_DEVICE, "cpu")  # asked for explicitly: no warning
    with warnings_as_errors():
        get_profile("gpu")
        get_profile("cpu")


class warnings_as_errors:
    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def _meta_unet() -> torch.nn.Module:
    from interpddpm.models import make_unet

    torch.manual_seed(0)
    model = make_unet("smoke", 16)
    model.scheduler_config = DDPMScheduler(num_train_timesteps=1000).config
    return place(model.eval(), "meta")


def test_place_moves_and_marks() -> None:
    model = torch.nn.Linear(2, 2)
    assert placed_on(model) is None
    assert place(model, "meta") is model
    assert placed_on(model) == "meta" and model.weight.device.type == "meta"


def test_sampling_inversion_and_edits_stay_on_the_model_device() -> None:
    """CPU inputs (noise from a CPU generator, parser masks, photographs) with a model on
    another device: every result is on the model's device, and no op mixes the two."""
    from interpddpm.editing import blended_edit, edit_region, reconstruct
    from interpddpm.sampling import ddim_invert, ddim_sample, model_noise

    model = _meta_unet()
    x_T = model_noise(model, 2, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[:, 4:8, 4:8] = True
    photo = torch.zeros(2, 3, 16, 16)
    outputs = {
        "ddim_sample": ddim_sample(model, x_T, num_inference_steps=3),
        "ddim_invert": ddim_invert(model, photo, num_inference_steps=3),
        "reconstruct": reconstruct(model, photo, num_inference_steps=3)[1],
        "edit_region": edit_region(
            model, x_T, mask, num_inference_steps=3, generator=torch.Generator()
        )[1],
        "edit_region eta": edit_region(
            model, x_T, mask, num_inference_steps=3, eta=0.5, seeds=[1, 2]
        )[1],
        "blended_edit": blended_edit(model, photo, mask, x_T, num_inference_steps=3),
    }
    for name, out in outputs.items():
        assert out.shape == (2, 3, 16, 16), name
    assert {name: out.device.type for name, out in outputs.items()} == dict.fromkeys(
        outputs, "meta"
    )


def test_the_denoiser_game_runs_on_the_model_device() -> None:
    """CPU x_t, masks and coalitions with a model elsewhere: the game is played there."""
    from interpddpm.denoiser_game import DenoiserGame
    from interpddpm.games import all_coalitions

    model = _meta_unet()
    masks = torch.zeros(1, 2, 16, 16, dtype=torch.bool)
    masks[0, 0, :8], masks[0, 1, 8:] = True, True
    game = DenoiserGame(model, torch.zeros(1, 3, 16, 16), 500, masks)
    values = game(all_coalitions(2))
    assert values.shape == (4, 1, 2) and values.device.type == "meta"


def test_run_models_and_the_parser_land_on_the_default_device(monkeypatch, tmp_path) -> None:
    """TrainResult.model() and runs.parser() put what they load on default_device() (a GPU
    when there is one) and mark it placed; the stand-in device here is ``meta``."""
    from interpddpm import runs

    monkeypatch.setenv("INTERPDDPM_CACHE", str(tmp_path))
    monkeypatch.setenv("INTERPDDPM_PROFILE", "smoke")
    result = runs.baseline("smoke", progress=False)
    runs.parser("smoke", progress=False)  # trained (on the CPU) and cached
    monkeypatch.setattr(devices, "default_device", lambda: torch.device("meta"))
    model = result.model()
    parser = runs.parser("smoke", progress=False)
    for module in (model, parser):
        assert placed_on(module) == "meta"
        assert {p.device.type for p in module.parameters()} == {"meta"}
    assert result.model(device="cpu").conv_in.weight.device.type == "cpu"


def test_training_selects_the_asked_gpu(monkeypatch) -> None:
    """INTERPDDPM_DEVICE=cuda:1: one process trains on cuda:1 (accelerate takes the current
    device), a launched process keeps its rank's device; cpu and plain cuda change nothing."""
    from interpddpm.training import select_cuda_device

    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for device in ("cpu", "cuda", "cuda:1"):
        select_cuda_device(device)
    assert chosen == [1]
    monkeypatch.setenv("LOCAL_RANK", "0")
    select_cuda_device("cuda:1")
    assert chosen == [1]
