"""Several processes: a run does not depend on how many processes share its global batch.

Every process draws the randomness of the WHOLE global batch (seeded as process 0) and keeps its
slice; ``L_IE``'s share is scaled so that DDP's average over processes is the global loss. One
process must draw exactly what it drew before (the book's recorded numbers depend on it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from interpddpm.denoiser_game import game_values, predict_noise
from interpddpm.regions import apply_coalitions, baseline_fill, player_masks
from interpddpm.theorem import (
    concept_null_pairs,
    dummy_loss_from_values,
    null_player_loss_from_values,
)
from interpddpm.toyfaces import ToyFaces
from interpddpm.training import (
    PixelCodec,
    TrainConfig,
    ie_design,
    ie_sample_weights,
    lambda_at,
    list_checkpoints,
    load_run_model,
    read_checkpoint,
    read_metrics,
    run_noise_scheduler,
    train,
    training_losses,
)

IE = dict(interpretable=True, concepts=["nose"], ie_sub_batch=6)
CASES = {  # name: config keys (batch 8 in one process, 4 + 4 in two)
    "plain": dict(),
    "shuffle": dict(IE, baseline="shuffle", ie_t_min=100, ie_t_weight="noise"),
    "noise": dict(IE, baseline="noise"),
    "zero_rank1_has_no_ie": dict(IE, baseline="zero", ie_sub_batch=3),
    "pooled_k5_one_sided": dict(
        IE, baseline="noise", concepts=["eyes", "nose", "mouth", "hair"], ie_samples=5
    ),
    "exact_k3_one_sided": dict(IE, concepts=["eyes", "nose"], ie_constraint="one_sided"),
}
#: ... and the row subsample (issue 29; no reference from before it existed): each sample's own
#: rows are drawn for the global sub-batch and sliced like the fills
SLICED = {
    **CASES,
    "rows_k3_split": dict(
        IE, concepts=["eyes", "nose"], ie_constraint="one_sided", ie_outside="split", ie_rows=3
    ),
}


def _reference_losses(model, sched, images, labels, config, step, generator):
    """The one-process ``training_losses`` as it was before several processes were supported
    (its draws, their order and shapes): ``(total, ddpm, ie, rows)``."""
    b = images.shape[0]
    noise = torch.randn(images.shape, generator=generator)
    n_t = sched.config.num_train_timesteps
    t = torch.randint(0, n_t, (b,), generator=generator)
    if config.interpretable and config.ie_t_min > 0:
        sub = min(config.ie_sub_batch, b)
        t[:sub] = torch.randint(config.ie_t_min, n_t, (sub,), generator=generator)
    x_t = sched.add_noise(images, noise, t)
    inputs, times = [x_t], [t]
    design = None
    if config.interpretable:
        sub = min(config.ie_sub_batch, b)
        design = ie_design(config, generator)
        masks = player_masks(labels[:sub], config.concepts, dilation=config.dilation)
        keep = torch.ones(design.n_rows, dtype=torch.bool)
        if design.full_row is not None:
            keep[design.full_row] = False
        others = None
        if config.baseline == "shuffle":
            others = sched.add_noise(images.roll(1, 0), noise.roll(1, 0), t)[:sub]
        fill = baseline_fill(x_t[:sub], config.baseline, generator=generator, others=others)
        rows = apply_coalitions(x_t[:sub], masks, design.coalitions[keep], fill)
        inputs.append(rows.reshape(-1, *x_t.shape[1:]))
        times.append(t[:sub].repeat_interleave(int(keep.sum())))
    eps = predict_noise(model, torch.cat(inputs), torch.cat(times))
    loss_ddpm = F.mse_loss(eps[:b].float(), noise.float())
    if design is None:
        return loss_ddpm, loss_ddpm, None, eps.shape[0]
    eps_rows = eps[b:].reshape(sub, -1, *eps.shape[1:])
    if design.full_row is not None:
        full = eps[:b][:sub].unsqueeze(1)
        eps_rows = torch.cat(
            [eps_rows[:, : design.full_row], full, eps_rows[:, design.full_row :]], 1
        )
    values = game_values(eps_rows.float(), masks, config.game_value)
    weights = ie_sample_weights(sched, t[:sub], config)
    if config.ie_constraint == "one_sided":
        loss_ie = null_player_loss_from_values(values, concept_null_pairs(masks.shape[1]), weights)
    else:
        loss_ie = dummy_loss_from_values(values, design, weights)
    return loss_ddpm + lambda_at(step, config) * loss_ie, loss_ddpm, loss_ie, eps.shape[0]


@pytest.fixture(scope="module")
def faces() -> tuple[torch.Tensor, torch.Tensor]:
    return ToyFaces(size=16, length=8, seed=0).batch(list(range(8)))


@pytest.mark.parametrize("case", CASES)
def test_one_process_draws_exactly_as_before(case: str, faces) -> None:
    """World size 1: the same draws in the same order and shapes, bit-identical losses."""
    from interpddpm.models import make_unet

    torch.manual_seed(0)
    model = make_unet("tiny", sample_size=16)
    images, labels = faces
    cfg = TrainConfig(preset="tiny", image_size=16, **CASES[case])
    sched = run_noise_scheduler(cfg)
    new = training_losses(model, sched, images, labels, cfg, 3, torch.Generator().manual_seed(5))
    old = _reference_losses(model, sched, images, labels, cfg, 3, torch.Generator().manual_seed(5))
    assert torch.equal(new.total, old[0]) and torch.equal(new.ddpm, old[1])
    assert (new.ie is None) == (old[2] is None)
    if new.ie is not None:
        assert torch.equal(new.ie, old[2])
    assert new.rows == old[3]


class _Pointwise(torch.nn.Module):
    """A per-pixel denoiser that records its inputs: its outputs do not depend on the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.9, -0.5, 0.3]).view(3, 1, 1))
        self.c = torch.nn.Parameter(torch.tensor(0.1))
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.seen.append((x.detach().clone(), t.detach().clone()))
        return torch.tanh(x * self.w) + self.c * t.view(-1, 1, 1, 1) / 1000


@pytest.mark.parametrize("case", SLICED)
def test_two_processes_take_their_slice_of_the_global_draws(case: str, faces) -> None:
    """Two processes of batch 4 see the forward rows of one process of batch 8, sample by
    sample, and the mean of their loss shares and gradients is the one-process loss/gradient."""
    images, labels = faces
    cfg = TrainConfig(preset="tiny", image_size=16, **SLICED[case])
    sched = run_noise_scheduler(cfg)

    def run(rank: int, world: int):
        model = _Pointwise()
        b = 8 // world
        part = slice(rank * b, (rank + 1) * b)
        nb = images[(rank * b - 1) % 8].unsqueeze(0) if world > 1 else None
        gen = torch.Generator().manual_seed(11)
        kw = dict(rank=rank, world=world, neighbour=nb)
        out = training_losses(model, sched, images[part], labels[part], cfg, 2, gen, **kw)
        out.total.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        ((x, t),) = model.seen
        return out, grads, x, t

    one, g1, x1, t1 = run(0, 1)
    shares = [run(r, 2) for r in range(2)]
    sub = min(cfg.ie_sub_batch, 8) if cfg.interpretable else 0
    extra = (x1.shape[0] - 8) // sub if sub else 0  # L_IE rows per sub-batch sample
    for rank, (_, _, x, t) in enumerate(shares):
        part = slice(rank * 4, rank * 4 + 4)
        assert torch.equal(x[:4], x1[:8][part]) and torch.equal(t[:4], t1[:8][part])
        own = min(max(sub - rank * 4, 0), 4)
        assert x.shape[0] == 4 + own * extra
        ref_rows = x1[8:].reshape(max(sub, 1), -1, *x1.shape[1:])[rank * 4 : rank * 4 + own]
        assert torch.equal(x[4:], ref_rows.reshape(-1, *x1.shape[1:]))
    mean = lambda f: sum(f(s[0]) for s in shares) / 2  # noqa: E731
    assert torch.allclose(mean(lambda o: o.total.detach()), one.total.detach(), rtol=1e-5)
    assert torch.allclose(mean(lambda o: o.ddpm), one.ddpm, rtol=1e-5)
    if cfg.interpretable:
        assert torch.allclose(mean(lambda o: o.ie), one.ie, rtol=1e-5, atol=1e-12)
    assert torch.allclose((shares[0][1] + shares[1][1]) / 2, g1, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------------------
# Real runs: `python -m torch.distributed.run --nproc_per_node 2` (gloo on CPU) vs one process
# ------------------------------------------------------------------------------------------
RUN = dict(
    preset="tiny",
    image_size=16,
    dataset_length=40,
    steps=20,
    lr=1e-3,
    log_every=5,
    checkpoint_every=10,
)
#: max |w_2proc - w_1proc| after 20 steps. Both runs see the same samples, noise, t and fills;
#: they differ only in float32 summation order (DDP's allreduce of two half-batch gradients vs
#: one full-batch gradient, convolutions over batches of 4 vs 8), which Adam, normalising each
#: step by sqrt(v), carries into the weights. Measured for "shuffle": 4.6e-5 (1 thread) to
#: 5.9e-5 (2 threads in the 1-process run), against a max |update| of 2.0e-2 (0.2-0.3%; 6.7e-5
#: of the update in L2); "plain": 1.6e-5 to 2.0e-5. Before, with per-process noise, "shuffle"
#: differed by 2.8e-2, 143% of the update. The tolerance is ~10x the measurement and 40x below
#: the update.
ATOL = 5e-4


def _torchrun(config: dict, tmp_path, name: str, *extra: str) -> None:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "interpddpm.cli", "train", "--config", str(path), "--quiet", *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """``run(case)``: the folder of a 2-process x batch 4 run of ``case`` (its config in
    ``config``), trained once for the module (the two tests below read it)."""
    done: dict[str, tuple[dict, Path]] = {}

    def run(case: str) -> tuple[dict, Path]:
        if case not in done:
            tmp = tmp_path_factory.mktemp(f"two-{case}")
            two = dict(RUN, **CASES[case], batch_size=4, output_dir=str(tmp / "two"))
            _torchrun(two, tmp, "two")
            done[case] = two, tmp
        return done[case]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("case", ["shuffle", "plain"])
def test_two_processes_train_like_one(case: str, two_process_runs, tmp_path) -> None:
    """2 processes x batch 4 end (after 20 steps) with the weights of 1 process x batch 8, and
    log the same global losses."""
    cfg = dict(RUN, **CASES[case])
    two, _ = two_process_runs(case)
    train(TrainConfig(**cfg, batch_size=8, output_dir=str(tmp_path / "one")), progress=False)
    w1 = load_run_model(tmp_path / "one", ema=False).state_dict()
    w2 = load_run_model(Path(two["output_dir"]), ema=False).state_dict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        w0 = PixelCodec().initial_model(TrainConfig(**cfg)).state_dict()
    diff = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    update = max(float((w1[k] - w0[k]).abs().max()) for k in w1)
    print(f"{case}: max|w2 - w1| = {diff:.2e}, max|w1 - w0| = {update:.2e}")
    assert diff < ATOL
    assert update > 20 * ATOL  # per-process noise (a difference of ~the update) would fail
    m1, m2 = read_metrics(tmp_path / "one"), read_metrics(Path(two["output_dir"]))
    assert [m["step"] for m in m1] == [m["step"] for m in m2] == [5, 10, 15, 20]
    for a, b in zip(m1, m2, strict=True):  # the log shows the global batch
        assert a["rows"] == b["rows"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
        assert a["loss_ddpm"] == pytest.approx(b["loss_ddpm"], rel=1e-3)
        assert (a["loss_ie"] is None) == (b["loss_ie"] is None)
        if a["loss_ie"] is not None:
            assert a["loss_ie"] == pytest.approx(b["loss_ie"], rel=1e-3)


@pytest.mark.slow
def test_a_two_process_run_resumes_exactly(two_process_runs) -> None:
    """A 2-process run (shuffle) stopped after 10 steps and resumed ends with the weights, EMA
    included, of the same run made in one go."""
    two, tmp = two_process_runs("shuffle")
    split = dict(two, output_dir=str(tmp / "split"))
    _torchrun(split, tmp, "split", "--stop-after", "10")
    assert read_checkpoint(list_checkpoints(tmp / "split")[-1])["step"] == 10
    _torchrun(split, tmp, "split")
    for ema in (False, True):
        a = load_run_model(Path(two["output_dir"]), ema=ema).state_dict()
        b = load_run_model(tmp / "split", ema=ema).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
