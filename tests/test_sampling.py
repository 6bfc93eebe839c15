"""DDIM sampling equals diffusers' DDIMPipeline; DDIM inversion inverts it."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor

from interpddpm.models import make_unet
from interpddpm.sampling import (
    ddim_invert,
    ddim_sample,
    ddim_sample_batched,
    ddim_scheduler,
    derive_seed,
    step_noise,
)

SIZE = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


# ---- stochastic DDIM with fixed per-step noise (eta > 0) -------------------------------------


@pytest.mark.parametrize("eta", [0.3, 1.0])
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_stochastic_equals_a_hand_loop_of_diffusers_steps(unet, name, eta):
    scheduler = SCHEDULERS[name]()
    steps = 6
    x_T = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    noise = step_noise(steps, x_T.shape, [3, 8])
    x0 = ddim_sample(
        unet, x_T, num_inference_steps=steps, scheduler=scheduler, eta=eta, noise=noise
    )
    sched = DDIMScheduler.from_config(scheduler.config)
    sched.set_timesteps(steps)
    x = x_T
    with torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            eps = unet(x, t).sample
            x = sched.step(eps, t, x, eta=eta, variance_noise=noise[i]).prev_sample
    torch.testing.assert_close(x0, x, atol=1e-6, rtol=1e-6)
    deterministic = ddim_sample(unet, x_T, num_inference_steps=steps, scheduler=scheduler)
    assert (x0 - deterministic).abs().max() > 1e-2  # the noise does enter


def test_step_noise_depends_only_on_the_seed():
    batch = step_noise(4, (3, 3, SIZE, SIZE), [5, 6, 7])
    assert batch.shape == (4, 3, 3, SIZE, SIZE) and batch.dtype == torch.float32
    alone = step_noise(4, (3, SIZE, SIZE), [6])  # a sample's shape works too
    assert torch.equal(alone[:, 0], batch[:, 1])
    assert torch.equal(
        step_noise(4, torch.Size([3, 3, SIZE, SIZE]), torch.tensor([5, 6, 7])), batch
    )
    assert not torch.equal(batch[:, 0], batch[:, 2])  # other seeds, other noise
    assert not torch.equal(batch[0], batch[1])  # and other steps
    # Not the x_T that torch.Generator().manual_seed(seed) draws (a seed often makes x_T too).
    x_T = torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    assert not torch.allclose(alone[0, 0], x_T)
    big = step_noise(50, (3, SIZE, SIZE), [0])
    assert abs(big.mean().item()) < 0.05 and abs(big.std().item() - 1) < 0.05
    assert step_noise(2, (1, 2, 2), [0], dtype=torch.float64).dtype == torch.float64
    # The seed derivation is pinned: the same noise on every machine and Python.
    assert derive_seed("step_noise", 0) == 8832860326612696583
    assert derive_seed("a", 1) != derive_seed("a1") and 0 <= derive_seed(-5) < 2**63


def test_stochastic_result_does_not_depend_on_the_batch(unet):
    eta, steps, seeds = 0.7, 4, [11, 12, 13]
    x_T = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(8))
    full = ddim_sample_batched(unet, x_T, num_inference_steps=steps, eta=eta, seeds=seeds)
    for batch_size in (1, 2):
        chunked = ddim_sample_batched(
            unet, x_T, num_inference_steps=steps, batch_size=batch_size, eta=eta, seeds=seeds
        )
        torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    one = ddim_sample(
        unet,
        x_T[1:2],
        num_inference_steps=steps,
        eta=eta,
        noise=step_noise(steps, (1, 3, SIZE, SIZE), [12]),
    )
    torch.testing.assert_close(one, full[1:2], atol=1e-5, rtol=1e-5)
    # In float64 the rows agree to rounding: the noise itself is the same.
    unet64 = copy.deepcopy(unet).double()
    full64 = ddim_sample_batched(unet64, x_T, num_inference_steps=steps, eta=eta, seeds=seeds)
    one64 = ddim_sample_batched(
        unet64, x_T[1:2], num_inference_steps=steps, eta=eta, seeds=seeds[1:2]
    )
    torch.testing.assert_close(one64, full64[1:2], atol=1e-10, rtol=1e-10)
    # The same seeds in another order follow their samples.
    perm = [2, 0, 1]
    permuted = ddim_sample_batched(
        unet64, x_T[perm], num_inference_steps=steps, eta=eta, seeds=[seeds[i] for i in perm]
    )
    torch.testing.assert_close(permuted, full64[perm], atol=1e-10, rtol=1e-10)


def test_eta_zero_ignores_noise_and_seeds(unet):
    x_T = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(9))
    ref = ddim_sample(unet, x_T, num_inference_steps=4)
    noise = step_noise(4, x_T.shape, [1, 2])
    assert torch.equal(ddim_sample(unet, x_T, num_inference_steps=4, eta=0.0, noise=noise), ref)
    assert torch.equal(ddim_sample(unet, x_T, num_inference_steps=4, eta=0), ref)
    batched = ddim_sample_batched(unet, x_T, num_inference_steps=4)
    assert torch.equal(ddim_sample_batched(unet, x_T, num_inference_steps=4, seeds=[1, 2]), batched)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_shared_noise_keeps_an_edit_affine_when_eps_ignores_x(eta):
    # With eps_theta independent of x and no clipping, each step is x' = a_i x + c_i + sigma_i z_i
    # with a_i = sqrt(alpha_bar_prev / alpha_bar_t): with the same noise z, two samples differ
    # by their x_T difference times prod a_i = sqrt(alpha_bar_final / alpha_bar_{t_first}), at
    # every pixel. So an edit of a region of x_T changes only that region, at any eta.
    model, steps = TimeOnlyModel(), 5
    x_T = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(10))
    d = torch.zeros_like(x_T)
    d[..., :3, :3] = 1.0
    noise = step_noise(steps, x_T.shape, [4])

    def sample(x, z=noise):
        return ddim_sample(model, x, num_inference_steps=steps, clip_sample=False, eta=eta, noise=z)

    sched = ddim_scheduler(model, clip_sample=False)
    sched.set_timesteps(steps)
    gain = (sched.final_alpha_cumprod / sched.alphas_cumprod[sched.timesteps[0]]).sqrt()
    torch.testing.assert_close(sample(x_T + d) - sample(x_T), gain * d, atol=1e-4, rtol=1e-4)
    if eta > 0:  # other noise for the edit: the whole image changes
        other = sample(x_T + d, step_noise(steps, x_T.shape, [5])) - sample(x_T)
        assert (other[..., 3:, 3:]).abs().mean() > 1e-2


def test_stochastic_bad_inputs(unet):
    x_T = torch.zeros(3, 3, SIZE, SIZE)
    noise = step_noise(2, x_T.shape, [0, 1, 2])
    for eta in (-0.1, 1.5, float("nan"), float("inf"), True, "0.5"):
        with pytest.raises(ValueError, match=r"eta must be a finite number in \[0, 1\]"):
            ddim_sample(unet, x_T, num_inference_steps=2, eta=eta, noise=noise)
        with pytest.raises(ValueError, match="eta must be"):
            ddim_sample_batched(unet, x_T, num_inference_steps=2, eta=eta, seeds=[0, 1, 2])
    with pytest.raises(ValueError, match=r"noise=step_noise\(num_inference_steps, x_T.shape"):
        ddim_sample(unet, x_T, num_inference_steps=2, eta=0.5)
    with pytest.raises(ValueError, match=r"\[2, 3, 3, 8, 8\], got \[3, 3, 3, 8, 8\]"):
        ddim_sample(
            unet, x_T, num_inference_steps=2, eta=0.5, noise=step_noise(3, x_T.shape, [0, 1, 2])
        )
    with pytest.raises(ValueError, match="noise must have shape"):  # checked at eta = 0 too
        ddim_sample(unet, x_T, num_inference_steps=2, noise=noise[:, :2])
    with pytest.raises(TypeError, match="noise must be a torch.Tensor"):
        ddim_sample(unet, x_T, num_inference_steps=2, eta=0.5, noise=noise.numpy())
    with pytest.raises(ValueError, match=r"pass seeds=\[one int per sample\]"):
        ddim_sample_batched(unet, x_T, num_inference_steps=2, eta=0.5)
    with pytest.raises(ValueError, match="2 seeds for 3 samples"):
        ddim_sample_batched(unet, x_T, num_inference_steps=2, eta=0.5, seeds=[0, 1])
    with pytest.raises(ValueError, match="batch_size"):
        ddim_sample_batched(unet, x_T, num_inference_steps=2, batch_size=0)
    for seeds in ([0, 1.5, 2], [0, True, 2], "abc", 3, torch.zeros(3, 1, dtype=torch.long)):
        with pytest.raises(ValueError, match="seeds must"):
            step_noise(2, x_T.shape, seeds)
    with pytest.raises(ValueError, match="one int per sample; got none"):
        step_noise(2, (3, SIZE, SIZE), [])
    with pytest.raises(ValueError, match="B = 3 samples but 2 seeds"):
        step_noise(2, x_T.shape, [0, 1])
    with pytest.raises(ValueError, match=r"\[B, C, H, W\] or one sample's \[C, H, W\]"):
        step_noise(2, (SIZE, SIZE), [0])
    for n_steps in (0, 2.0, True):
        with pytest.raises(ValueError, match="n_steps must be a positive int"):
            step_noise(n_steps, x_T.shape, [0, 1, 2])
    with pytest.raises(ValueError, match="floating"):
        step_noise(2, x_T.shape, [0, 1, 2], dtype=torch.long)
