"""DDIM sampling equals diffusers' DDIMPipeline; DDIM inversion inverts it."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from interpddpm.models import make_unet
from interpddpm.sampling import ddim_invert, ddim_sample, ddim_scheduler

SIZE = 8


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models run faster on one thread, and far faster on a busy machine (thread spinning).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return make_unet("tiny", SIZE)


def _x(batch=2, seed=0, low=-1.0, high=1.0):
    g = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(batch, 3, SIZE, SIZE, generator=g)


class TimeOnlyModel(torch.nn.Module):
    """eps_theta(x, t) = f(t): a predicted noise that does not depend on x."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(in_channels=3, sample_size=SIZE)
        self.w = torch.nn.Parameter(torch.randn(3, SIZE, SIZE, generator=torch.Generator()))

    def forward(self, x, t):
        return torch.sin(self.w * (1 + t.float() / 100)).expand_as(x)


class ScaledModel(torch.nn.Module):
    """A random UNet whose output is scaled down: a smooth, slowly varying eps_theta."""

    def __init__(self, unet, scale):
        super().__init__()
        self.unet, self.scale, self.config = unet, scale, unet.config

    def forward(self, x, t):
        return self.unet(x, t).sample * self.scale


SCHEDULERS = {
    # DDPM defaults: 1000 linear betas, clip_sample=True, "leading" spacing.
    "ddpm-default": lambda: DDPMScheduler(),
    # No clipping, another beta schedule, "trailing" spacing, final alpha not set to one.
    "ddim-scaled-trailing": lambda: DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        timestep_spacing="trailing",
    ),
}


@pytest.mark.parametrize("steps", [10, 50])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_equals_ddim_pipeline(unet, name, steps):
    scheduler = SCHEDULERS[name]()
    pipe = DDIMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    last = {}
    step = pipe.scheduler.step

    def recording_step(*args, **kwargs):  # keeps the sample before the [0, 1] conversion
        out = step(*args, **kwargs)
        last["x"] = out.prev_sample
        return out

    pipe.scheduler.step = recording_step
    images = pipe(
        batch_size=2,
        generator=torch.Generator().manual_seed(1),
        num_inference_steps=steps,
        output_type="pt",
    ).images
    # The pipeline's x_T, drawn the way it draws it.
    x_T = randn_tensor((2, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(1))
    x0 = ddim_sample(unet, x_T, num_inference_steps=steps, scheduler=scheduler)
    assert (x0 - last["x"]).abs().max().item() <= 1e-5
    assert ((x0 / 2 + 0.5).clamp(0, 1) - images).abs().max().item() <= 1e-5


def test_default_scheduler_is_ddpm_default_and_model_attribute_wins(unet):
    x_T = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    ref = ddim_sample(unet, x_T, num_inference_steps=5, scheduler=DDPMScheduler())
    assert torch.equal(ddim_sample(unet, x_T, num_inference_steps=5), ref)
    config = dict(DDPMScheduler(beta_schedule="squaredcos_cap_v2").config)
    # A config mapping is accepted like a scheduler.
    ref_cos = ddim_sample(unet, x_T, num_inference_steps=5, scheduler=config)
    assert not torch.allclose(ref_cos, ref)
    unet.scheduler_config = config
    try:
        assert torch.equal(ddim_sample(unet, x_T, num_inference_steps=5), ref_cos)
    finally:
        del unet.scheduler_config
    assert ddim_scheduler(unet).config.beta_schedule == "linear"


@pytest.mark.parametrize(
    "scheduler",
    [
        None,
        DDPMScheduler(timestep_spacing="trailing"),
        DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        DDIMScheduler(steps_offset=1, set_alpha_to_one=False),
    ],
    ids=["linear-leading", "linear-trailing", "cosine-leading", "offset1"],
)
@pytest.mark.parametrize("steps", [1, 10, 50])
def test_inversion_is_exact_when_eps_does_not_depend_on_x(scheduler, steps):
    # With eta = 0 and no clipping a DDIM step is affine in x: x' = a x + b eps(t). Sampling
    # step t_i -> t_{i-1} uses eps(t_i); the inversion step t_{i-1} -> t_i also uses eps at
    # t_i, so it is exactly the inverse map (x = (x' - b eps) / a). If eps ignores x, the
    # composition is the identity up to float rounding, for every schedule and step count.
    model = TimeOnlyModel()
    x0 = _x(seed=3)
    x_T = ddim_invert(model, x0, num_inference_steps=steps, scheduler=scheduler)
    rec = ddim_sample(model, x_T, num_inference_steps=steps, scheduler=scheduler, clip_sample=False)
    assert (rec - x0).abs().max().item() <= 1e-4


def test_reconstruction_improves_with_more_steps(unet):
    # For an x-dependent eps, inversion evaluates eps(x_{t_{i-1}}, t_i) where sampling uses
    # eps(x_{t_i}, t_i); the mismatch shrinks as the step count grows (first-order method).
    model = ScaledModel(unet, 0.01)
    x0 = _x(seed=4)

    def error(steps):
        x_T = ddim_invert(model, x0, num_inference_steps=steps)
        rec = ddim_sample(model, x_T, num_inference_steps=steps, clip_sample=False)
        return (rec - x0).pow(2).mean().sqrt().item()

    coarse, fine = error(10), error(100)
    assert fine < 0.5 * coarse
    assert fine < 0.05


def test_clipping_breaks_the_round_trip():
    # The documented pitfall: clip_sample=True (the default) clamps x0_hat, not invertible.
    model = TimeOnlyModel()
    x0 = _x(seed=5)
    x_T = ddim_invert(model, x0, num_inference_steps=10)
    clipped = ddim_sample(model, x_T, num_inference_steps=10)
    assert (clipped - x0).abs().max().item() > 1e-2


def test_deterministic_batched_and_grad_free(unet):
    x_T = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    unet.train()
    a = ddim_sample(unet, x_T, num_inference_steps=4)
    b = ddim_sample(unet, x_T, num_inference_steps=4)
    assert unet.training  # mode restored
    unet.eval()
    assert torch.equal(a, b)
    assert not a.requires_grad and a.shape == x_T.shape and a.dtype == torch.float32
    # One sample alone equals its row of the batch. float32 kernels pick other reduction orders
    # for other batch shapes (seen: 1.8e-5 apart after 4 steps), so compare in float64.
    unet64 = copy.deepcopy(unet).double()
    batch64 = ddim_sample(unet64, x_T.double(), num_inference_steps=4)
    one64 = ddim_sample(unet64, x_T[1:2].double(), num_inference_steps=4)
    torch.testing.assert_close(one64, batch64[1:2], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(batch64.float(), a, atol=1e-4, rtol=1e-4)  # float32 tolerance
    inv = ddim_invert(unet, a, num_inference_steps=4)
    assert torch.equal(inv, ddim_invert(unet, a, num_inference_steps=4))
    assert inv.shape == a.shape and not inv.requires_grad
    # Outputs are ordinary tensors (not inference-mode ones): in-place edits and autograd work.
    inv[:, :, :2] = 0.0
    assert (inv.requires_grad_() * 2).sum().grad_fn is not None
    # Input dtype follows the model.
    assert ddim_sample(unet, x_T.double(), num_inference_steps=2).dtype == torch.float32


def test_callback_and_progress(unet, capsys):
    seen = []
    x_T = torch.randn(1, 3, SIZE, SIZE)
    ddim_sample(
        unet,
        x_T,
        num_inference_steps=3,
        progress=True,
        callback=lambda i, t, x: seen.append((i, int(t), x.shape, x.mul_(1.0))),
    )
    assert [s[:2] for s in seen] == [(0, 666), (1, 333), (2, 0)]
    assert "DDIM sampling" in capsys.readouterr().err
    seen.clear()
    ddim_invert(unet, x_T, num_inference_steps=3, callback=lambda i, t, x: seen.append(int(t)))
    assert seen == [0, 333, 666]


@pytest.mark.parametrize("fn", [ddim_sample, ddim_invert])
def test_bad_inputs(unet, fn):
    good = torch.zeros(1, 3, SIZE, SIZE)
    for bad in (
        torch.zeros(3, SIZE, SIZE),
        torch.zeros(1, 1, SIZE, SIZE),
        torch.zeros(1, 3, SIZE * 2, SIZE * 2),
        torch.zeros(0, 3, SIZE, SIZE),
    ):
        with pytest.raises(ValueError, match=rf"\[B, 3, {SIZE}, {SIZE}\]"):
            fn(unet, bad, num_inference_steps=2)
    for steps in (0, -1, 1001, 2.5, True):
        with pytest.raises(ValueError, match="num_inference_steps"):
            fn(unet, good, num_inference_steps=steps)
    with pytest.raises(TypeError):
        fn(unet, good.numpy(), num_inference_steps=2)
    with pytest.raises(TypeError, match="scheduler"):
        fn(unet, good, num_inference_steps=2, scheduler=42)
    # "leading" spacing + steps_offset=1 would index timestep 1000 of a 1000-step schedule.
    with pytest.raises(ValueError, match="steps_offset"):
        fn(unet, good, num_inference_steps=1000, scheduler=DDIMScheduler(steps_offset=1))


def test_model_without_sample_size_accepts_any_size(unet):
    model = ScaledModel(unet, 1.0)
    model.config = SimpleNamespace(in_channels=3, sample_size=None)
    assert ddim_sample(model, torch.zeros(1, 3, 16, 16), num_inference_steps=2).shape[-1] == 16
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        ddim_sample(model, torch.zeros(1, 4, 16, 16), num_inference_steps=2)


def test_invert_refuses_linspace_spacing(unet):
    with pytest.raises(ValueError, match="linspace"):
        ddim_invert(
            unet,
            torch.zeros(1, 3, SIZE, SIZE),
            num_inference_steps=2,
            scheduler=DDIMScheduler(timestep_spacing="linspace"),
        )
