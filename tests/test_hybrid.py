"""The hybrid denoiser: the interpretable model above switch_t, the vanilla model below."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from interpddpm.editing import edit_region
from interpddpm.hybrid import HybridDenoiser
from interpddpm.memo import weights_digest
from interpddpm.models import make_unet
from interpddpm.sampling import ddim_sample, ddim_scheduler

SIZE = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _unet(seed: int, size: int = SIZE):
    torch.manual_seed(seed)
    return make_unet("tiny", size).eval()


@pytest.fixture(scope="module")
def pair():
    return _unet(0), _unet(1)


def _x_T(n=2, seed=0):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _manual_ddim(high, low, switch_t, x, steps):
    """DDIM (eta 0) with diffusers' scheduler, picking the model per step by hand."""
    sched = DDIMScheduler.from_config(ddim_scheduler(high).config)
    sched.set_timesteps(steps)
    with torch.no_grad():
        for t in sched.timesteps:
            model = high if int(t) >= switch_t else low
            x = sched.step(model(x, t).sample, t, x).prev_sample
    return x


@pytest.mark.parametrize("switch_t", [0, 300, 700, 1000])
def test_hybrid_sampling_switches_models_at_switch_t(pair, switch_t):
    high, low = pair
    x_T = _x_T()
    got = ddim_sample(HybridDenoiser(high, low, switch_t), x_T, num_inference_steps=10)
    want = _manual_ddim(high, low, switch_t, x_T, 10)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_hybrid_ends_are_the_two_models(pair):
    high, low = pair
    x_T = _x_T()
    alone_high = ddim_sample(high, x_T, num_inference_steps=10)
    alone_low = ddim_sample(low, x_T, num_inference_steps=10)
    for switch_t, alone in ((0, alone_high), (1000, alone_low)):
        got = ddim_sample(HybridDenoiser(high, low, switch_t), x_T, num_inference_steps=10)
        torch.testing.assert_close(got, alone)
    # and the switch matters: the middle is neither
    mid = ddim_sample(HybridDenoiser(high, low, 500), x_T, num_inference_steps=10)
    assert (mid - alone_high).abs().max() > 1e-3
    assert (mid - alone_low).abs().max() > 1e-3


def test_mixed_timestep_batch_is_per_sample(pair):
    high, low = pair
    hybrid = HybridDenoiser(high, low, 500)
    x = _x_T(4)
    t = torch.tensor([100, 600, 499, 500])
    with torch.no_grad():
        got = hybrid(x, t)[0]
        for i in range(4):
            model = high if int(t[i]) >= 500 else low
            want = model(x[i : i + 1], t[i : i + 1]).sample
            torch.testing.assert_close(got[i : i + 1], want, rtol=1e-4, atol=1e-5)


def test_edits_run_through_the_hybrid(pair):
    high, low = pair
    x_T = _x_T(1)
    mask = torch.zeros(1, 1, SIZE, SIZE, dtype=torch.bool)
    mask[..., 2:5, 2:5] = True
    hybrid = HybridDenoiser(high, low, 400)
    gen = torch.Generator().manual_seed(3)
    x_T_edit, x0_edit = edit_region(hybrid, x_T, mask, generator=gen, num_inference_steps=5)
    assert torch.equal(x_T_edit[..., ~mask[0, 0]], x_T[..., ~mask[0, 0]])
    torch.testing.assert_close(x0_edit, ddim_sample(hybrid, x_T_edit, num_inference_steps=5))


def test_switch_is_part_of_the_weights_digest(pair):
    high, low = pair
    assert weights_digest(HybridDenoiser(high, low, 200)) != weights_digest(
        HybridDenoiser(high, low, 300)
    )


def test_refuses_what_cannot_be_paired(pair):
    high, low = pair
    with pytest.raises(ValueError, match="switch_t must be an int"):
        HybridDenoiser(high, low, -1)
    with pytest.raises(ValueError, match="switch_t must be an int"):
        HybridDenoiser(high, low, 2.5)
    with pytest.raises(ValueError, match="sample_size differ"):
        HybridDenoiser(high, _unet(2, size=16), 100)
    other = _unet(3)
    other.scheduler_config = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2"}
    high.scheduler_config = {"num_train_timesteps": 1000, "beta_schedule": "linear"}
    try:
        with pytest.raises(ValueError, match="different noise schedules"):
            HybridDenoiser(high, other, 100)
    finally:
        del high.scheduler_config
