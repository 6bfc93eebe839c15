"""Named parameter sets ("profiles") that size every chapter of the book.

``smoke`` proves the code paths in seconds (tests, CI); ``cpu`` gives meaningful results on a
2-core laptop; ``gpu`` targets one Colab GPU; ``paper`` the paper's scale. ``auto`` resolves to
``gpu`` when CUDA is available and ``cpu`` otherwise; the environment variable
``INTERPDDPM_PROFILE`` overrides ``auto``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

ENV_PROFILE = "INTERPDDPM_PROFILE"
ENV_CACHE = "INTERPDDPM_CACHE"
#: Google Drive as Colab mounts it (``drive.mount("/content/drive")``): where the artifact
#: cache goes on Colab, so runs and checkpoints outlive a disconnected runtime.
DRIVE_ROOT = Path("/content/drive/MyDrive")


@dataclasses.dataclass(frozen=True)
class Profile:
    """A named set of sizes. Fields are grouped by the chapter that reads them."""

    name: str
    # 01-03: theory
    n_random_games: int  # random games checked for Theorem 1 (chapter 02)
    max_players_timing: int  # largest K timed in chapter 03
    estimator_repeats: int  # repeated estimates per budget C (chapter 03)
    budgets: tuple[int, ...]  # sample budgets C (chapter 03)
    # 04-07: the diffusion side
    dataset: str = "toyfaces"
    image_size: int = 32
    preset: str = "cpu"  # models.UNET_PRESETS
    batch_size: int = 32
    # training autocast: "no", "bf16", "fp16" or "auto" (bf16 where the device has it natively,
    # see training.resolve_mixed_precision); sampling and every measurement stay fp32
    mixed_precision: str = "no"
    # training also checkpoints after this many minutes of wall time (a Colab disconnect
    # loses at most that much); None: only every few thousand steps
    checkpoint_minutes: float | None = None
    baseline_steps: int = 2000  # plain DDPM training from scratch
    # the plain DDPM's recipe (issue 16, benchmarks/base_recipe.py): learning rate, noise
    # schedule (a diffusers beta_schedule) and min-SNR-gamma loss weighting (None: plain MSE);
    # fine-tuned models inherit the schedule and the weighting from their baseline
    baseline_lr: float = 2e-4
    beta_schedule: str = "linear"
    snr_gamma: float | None = None
    finetune_steps: int = 150  # interpretable fine-tuning (and the plain control)
    finetune_lr: float = 2e-4  # the paper's fine-tuning learning rate
    lambda_decay_steps: int = 100
    # the concepts whose single-concept models chapters 05-08 also fine-tune with the paper's
    # recipe (runs.PAPER_IE), beside the book's (runs.SINGLE_IE): the paper's models, reproduced
    paper_recipe_concepts: tuple[str, ...] = ("eyes", "nose", "mouth")
    ie_sub_batch: int = 4  # samples per batch that get L_IE (K = 2)
    ie_sub_batch_multi: int = 2  # ... for the K = 4 model (16 coalitions per sample)
    dilation: int = 1
    parser_steps: int = 2000  # ~2 min on one CPU thread; held-out IoU >= 0.9 for the concepts
    ddim_steps: int = 50
    n_pairs: int = 100  # locality protocol pairs (the paper: 100)
    baseline_pairs: int = 32  # of those, the pairs the RePaint and blended rows edit (chapter 07)
    n_grid: int = 16  # samples in figure grids
    audit_samples: int = 8
    # how generated faces are parsed (locality, editing masks): "toy" trains a small parser on
    # toy faces' exact masks; "bisenet" is the paper's pretrained BiSeNet for real faces
    parser: str = "toy"
    # FID features: "parser" (the toy parser's encoder: offline, toy faces only) or "inception"
    # (torchmetrics' Inception-v3: real photographs, needs its weights once)
    fid_feature: str = "parser"
    fid_samples: int = 300  # generated and real images per FID (chapter 08)
    fid_steps: int = 25  # DDIM steps for the FID samples
    # the realism sets (FID, KID, C2ST samples) under half-precision autocast on a CUDA device
    # (realism.sample_images); locality pairs and edits stay fp32; on a CPU nothing changes
    realism_half: bool = False
    inversion_images: int = 16  # held-out faces inverted in chapter 09
    # 12: ablations (one K = 4 model per variant, a reduced budget on the CPU)
    ablation_steps: int = 150
    ablation_decay_steps: int = 100
    ablation_pairs: int = 48
    ablation_fid_samples: int = 256
    ablation_ddim_steps: int = 25
    # a profile without a recorded sweep of its own shows this profile's record in chapter 12
    # (and measures only its own default live); None: run every variant now
    ablation_record: str | None = None
    # runs trained once by the project and kept with the book (book/data/<recorded_runs>/runs/,
    # interpddpm.runs.recorded_source): the baseline is loaded from there instead of trained,
    # when this machine's config of it is exactly the recorded one; None: train every run
    recorded_runs: str | None = None
    # 10: latent diffusion (interpddpm.latent)
    ldm_pretrained: str | None = None  # an LDM pipeline: its VQ autoencoder and vanilla UNet
    ldm_image_size: int = 32
    ldm_latent_channels: int = 3  # of our own autoencoder (the pretrained one has 3)
    ldm_dataset_length: int = 4096  # toy faces the latent runs train on
    ldm_autoencoder_steps: int = 800  # our VQ autoencoder (batch 8)
    ldm_preset: str = "smoke"  # the latent UNet (models.UNET_PRESETS) trained from scratch
    ldm_batch_size: int = 32
    ldm_baseline_steps: int = 1000  # 0: the vanilla LDM is ldm_pretrained's UNet
    ldm_baseline_lr: float = 1e-3  # of that baseline (a small CPU UNet learns faster at 1e-3)
    ldm_finetune_steps: int = 300
    # chapter 10's samples and measurements (interpddpm.budget charges them): samples per
    # model in its grid (it shows and edits up to 8), pairs of its locality protocol, DDIM
    # steps of every latent sample
    ldm_grid: int = 16
    ldm_pairs: int = 100
    ldm_ddim_steps: int = 50
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.extra[key]

    @property
    def real_faces(self) -> bool:
        """Whether the profile trains on real photographs (not the embedded toy faces)."""
        return self.dataset != "toyfaces"

    def faces_line(self, size: int | None = None) -> str:
        """One line for the top of a chapter: which faces (at ``size`` px, default
        ``image_size``), parser and FID features this profile uses. The chapters' prose is
        written for the book's ``cpu`` profile (toy faces); on real faces the line says how
        to read it."""
        size = self.image_size if size is None else size
        if not self.real_faces:
            return f"faces: the embedded procedural toy faces, {size} px, exact label maps"
        parser = "pretrained BiSeNet" if self.parser == "bisenet" else "toy-face parser"
        fid = "Inception" if self.fid_feature == "inception" else "parser"
        # short lines: the book shows outputs in a fixed-width box
        return (
            f"faces: {self.dataset}, {size} px; parser: {parser}; FID: {fid} features\n"
            f"(the text, written for the cpu profile's toy faces, means these faces;\n"
            f"held-out faces are {self.dataset} images no run trained on)"
        )


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        n_random_games=300,
        max_players_timing=6,
        estimator_repeats=50,
        budgets=(4, 16, 64),
        preset="smoke",
        batch_size=8,
        baseline_steps=30,
        baseline_lr=5e-4,
        finetune_steps=10,
        lambda_decay_steps=10,
        paper_recipe_concepts=("nose",),
        ie_sub_batch=2,
        ie_sub_batch_multi=1,
        parser_steps=30,
        ddim_steps=5,
        n_pairs=6,
        baseline_pairs=4,
        n_grid=8,
        audit_samples=2,
        fid_samples=16,
        fid_steps=5,
        inversion_images=4,
        ablation_steps=4,
        ablation_decay_steps=4,
        ablation_pairs=4,
        ablation_fid_samples=8,
        ablation_ddim_steps=3,
        ldm_dataset_length=64,
        ldm_autoencoder_steps=10,
        ldm_batch_size=8,
        ldm_baseline_steps=10,
        ldm_finetune_steps=4,
        ldm_grid=8,  # n_grid, n_pairs and ddim_steps: what chapter 10 used before
        ldm_pairs=6,
        ldm_ddim_steps=5,
    ),
    "cpu": Profile(
        name="cpu",
        n_random_games=10_000,
        max_players_timing=12,
        estimator_repeats=400,
        budgets=(4, 8, 16, 32, 64, 128, 256, 512),
        # the cold cpu book must fit in 45 minutes on 2 cores: fewer protocol pairs and FID
        # images than the paper's (the gpu and paper profiles keep 100 pairs). With
        # fid_samples = ablation_fid_samples and fid_steps = ablation_ddim_steps, chapter 12
        # reuses chapter 08's cached FID sets of the vanilla and K = 4 models.
        n_pairs=64,
        fid_samples=256,
        # measured in benchmarks/base_recipe.py (chapter 8 shows the record): a CNN tells the
        # first recipe's DDIM-50 samples (2000 steps, plain MSE, lr 5e-4) from toy faces 0.90
        # of the time; min-SNR-5 weighting, lr 1e-3 and 4000 steps bring it to 0.68, with
        # DDIM 250 and DPM-Solver++ no longer washed out or diverging
        baseline_steps=4000,
        baseline_lr=1e-3,
        snr_gamma=5.0,
        # bf16 autocast where the CPU has AVX512-BF16/AMX: training 25-35% faster
        mixed_precision="auto",
        # the 4000-step baseline (13 of a cold book's 34 minutes on 2 cores) is recorded in
        # book/data/runs-cpu and loaded where this machine's config of it is the recorded one
        # (bf16); chapter 12's sweep was fine-tuned from that very run
        recorded_runs="runs-cpu",
        ldm_dataset_length=4096,
        ldm_autoencoder_steps=800,
        # issue 28: the "smoke" UNet (0.27M parameters) draws blobs on these latents whatever
        # the lever (C2ST of 256 DDIM-25 samples: 0.70 at 1000 steps, 0.69 at 2000, 0.70 with
        # min-SNR-5, 0.71 with per-channel unit latents); the "cpu" UNet (1.06M) draws faces
        # (0.65 [0.61, 0.69] at 1000 steps). It costs 2.5x per step: fewer fine-tuning steps
        # and DDIM-25 samples pay for part of it.
        ldm_preset="cpu",
        ldm_batch_size=32,
        ldm_baseline_steps=1000,
        ldm_finetune_steps=100,
        ldm_grid=16,  # n_grid, n_pairs and ddim_steps: what chapter 10 used before
        ldm_pairs=64,
        ldm_ddim_steps=25,
    ),
    "gpu": Profile(
        name="gpu",
        n_random_games=20_000,
        max_players_timing=12,
        estimator_repeats=400,
        budgets=(4, 8, 16, 32, 64, 128, 256, 512, 1024),
        dataset="celebamask-hq",
        image_size=64,
        # sized for one free Colab T4 at interpddpm.budget's LIKELY rate (issue 26: measured
        # ResNet-50 shares of peak, two thirds of them for a UNet; training under fp16 autocast,
        # sampling in fp32 at the T4's 8.1 TFLOPS fp32 peak, the realism sets in fp16; the
        # dataset's download and conversion counted): chapters 04 + 05 about 83 minutes (52 at
        # the optimistic rate), every other chapter under 20. The 64 px baseline is trained
        # once (chapter 04) and shared: `interpddpm publish` and INTERPDDPM_RUNS_FROM skip it.
        preset="t4",
        batch_size=64,
        mixed_precision="auto",  # bf16 on sm80+ (A100, L4), fp16 + GradScaler on a T4
        checkpoint_minutes=10.0,
        baseline_steps=7_500,  # 32 minutes of a T4 (likely rate); 20,000 took 2.4 hours
        snr_gamma=5.0,  # min-SNR weighting: faster convergence for a short budget
        finetune_steps=600,
        lambda_decay_steps=400,
        # the paper's recipe for the nose only (its showcase, floor 10): three more fine-tunes
        # would take chapters 04 + 05 past 90 minutes on a T4
        paper_recipe_concepts=("nose",),
        ie_sub_batch=8,
        ie_sub_batch_multi=4,  # 64 + 4 x 15 rows a K = 4 step: about 9 GiB under fp16
        parser_steps=3_000,
        ddim_steps=50,
        n_pairs=100,
        baseline_pairs=100,
        n_grid=36,
        audit_samples=16,
        parser="bisenet",
        fid_feature="inception",
        # 1,000 images a FID/KID set (2,000 before issue 26): intervals about 1.4x wider
        # (1/sqrt(n)); two disjoint sets fit the 2,000 held-out faces (datasets.HELD_OUT_ROWS)
        fid_samples=1_000,
        fid_steps=20,
        realism_half=True,  # fp16 on a T4: about 2.8x its fp32 rate (interpddpm.budget)
        ablation_steps=2_000,
        ablation_decay_steps=1_000,
        ablation_pairs=100,
        ablation_fid_samples=1_000,
        ablation_ddim_steps=20,
        ablation_record="cpu",
        ldm_pretrained="CompVis/ldm-celebahq-256",
        ldm_image_size=256,
        ldm_autoencoder_steps=0,
        ldm_preset="gpu",
        ldm_batch_size=4,  # the 274M-parameter LDM UNet: 4 + 3 x 2 rows fit a T4 (13 GiB)
        ldm_baseline_steps=0,
        ldm_baseline_lr=2e-4,  # a baseline trained here (ldm_baseline_steps > 0) at GPU size
        # chapter 10 in 20 minutes of a T4 at the likely rate (issue 26; 68 min, 81 with the
        # autoencoder's encodes and decodes counted, at 500 steps, 4,096 faces, 100 pairs and
        # DDIM 50): each 256 px face costs 345 GFLOP to encode and 671 to decode in fp32, a
        # sampling step of the LDM UNet 202. 250 steps of batch 4 see 500 faces twice; 36
        # pairs at DDIM 20 (the FID sets' steps) for each of the three models
        ldm_dataset_length=500,
        ldm_finetune_steps=250,
        ldm_grid=8,  # the faces chapter 10 shows and edits
        ldm_pairs=36,
        ldm_ddim_steps=20,
    ),
    "paper": Profile(
        name="paper",
        n_random_games=50_000,
        max_players_timing=14,
        estimator_repeats=1000,
        budgets=(4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
        dataset="celebamask-hq",
        image_size=64,
        preset="paper",
        batch_size=128,
        mixed_precision="auto",
        checkpoint_minutes=10.0,
        baseline_steps=500_000,
        finetune_steps=20_000,
        lambda_decay_steps=10_000,
        ie_sub_batch=32,
        ie_sub_batch_multi=16,
        parser_steps=10_000,
        ddim_steps=50,
        n_pairs=100,
        baseline_pairs=100,
        n_grid=36,
        audit_samples=32,
        parser="bisenet",
        fid_feature="inception",
        fid_samples=10_000,
        fid_steps=50,
        realism_half=True,
        ablation_steps=10_000,
        ablation_decay_steps=5_000,
        ablation_pairs=100,
        ablation_fid_samples=10_000,
        ablation_ddim_steps=50,
        ablation_record="cpu",
        ldm_pretrained="CompVis/ldm-celebahq-256",
        ldm_image_size=256,
        ldm_autoencoder_steps=0,
        ldm_preset="paper",
        ldm_batch_size=32,
        ldm_baseline_steps=0,
        ldm_baseline_lr=2e-4,  # a baseline trained here (ldm_baseline_steps > 0) at GPU size
        ldm_finetune_steps=10_000,
        ldm_grid=36,
        ldm_pairs=100,
        ldm_ddim_steps=50,
    ),
}


def resolve_profile_name(name: str = "auto") -> str:
    """Turn ``"auto"`` into a concrete profile name and validate any other name."""
    if name == "auto":
        env = os.environ.get(ENV_PROFILE)
        if env:
            name = env
        else:
            import torch  # local: keep the import of this module cheap

            name = "gpu" if torch.cuda.is_available() else "cpu"
    if name not in PROFILES:
        valid = ", ".join(["auto", *PROFILES])
        from .errors import UserError  # a ValueError the command line prints on one line

        raise UserError(f"Unknown profile {name!r}. Valid profiles: {valid}.")
    return name


def get_profile(name: str = "auto") -> Profile:
    """Return the :class:`Profile` called ``name`` (``"auto"`` resolved as documented above);
    warns when a GPU-sized profile is asked for on a machine without a GPU."""
    profile = PROFILES[resolve_profile_name(name)]
    from .devices import check_profile_device  # local: keep the import of this module cheap

    check_profile_device(profile.name)
    return profile


def _repo_root(start: Path) -> Path | None:
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "interpddpm").is_dir():
            return folder
    return None


#: Where an installed package keeps ``book/data`` (pyproject.toml maps the folder to the
#: package ``interpddpm._data``): the records reach a pip install without a checkout.
PACKAGE_DATA = Path(__file__).resolve().parent / "_data"


def book_data(filename: str) -> Path:
    """``book/data/<filename>``, the benchmark and sweep records (and recorded runs) the book
    reads: in the folder of the repository the code runs in, else in the copy an installed
    wheel carries (:data:`PACKAGE_DATA`). The path may name a missing file (callers test it);
    FileNotFoundError when there is no such folder at all."""
    base = _repo_root(Path.cwd().resolve()) or _repo_root(Path(__file__).resolve().parent)
    if base is not None and (base / "book" / "data").is_dir():
        return base / "book" / "data" / filename
    if PACKAGE_DATA.is_dir():
        return PACKAGE_DATA / filename
    raise FileNotFoundError(
        f"no book/data/{filename}: not inside the interpddpm repository, and the installed "
        f"package carries no records ({PACKAGE_DATA}); reinstall interpddpm from its wheel "
        "(`make dist`) or run from a clone of the repository."
    )


def on_colab() -> bool:
    """Whether this process runs in a Colab runtime (whose local disk goes with it)."""
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


_announced: set[Path] = set()  # artifact roots already named to the user in this process


def cache_root() -> Path:
    """The folder that holds every profile's artifacts (see :func:`cache_dir`).

    A ``$INTERPDDPM_CACHE`` on Google Drive that is not mounted is refused: the runs would go
    to the runtime's local disk (lost on a disconnect) and block the later mount.
    """
    env = os.environ.get(ENV_CACHE)
    if env:
        base = Path(env)
        drive = DRIVE_ROOT.parent
        if base.absolute().is_relative_to(drive) and not DRIVE_ROOT.is_dir():
            from .errors import UserError

            raise UserError(
                f"{ENV_CACHE}={env} is on Google Drive, but Drive is not mounted at {drive}: "
                f'run `from google.colab import drive; drive.mount("{drive}")` first, or '
                f"unset {ENV_CACHE} to keep artifacts on the runtime's disk."
            )
        return base
    if on_colab() and DRIVE_ROOT.is_dir():
        base = DRIVE_ROOT / "interpddpm" / "_artifacts"
    else:
        root = _repo_root(Path.cwd().resolve()) or _repo_root(Path(__file__).resolve().parent)
        base = root / "_artifacts" if root else Path.home() / ".cache" / "interpddpm"
    if on_colab() and base not in _announced:
        _announced.add(base)
        where = (
            "on Google Drive"
            if base.is_relative_to(DRIVE_ROOT)
            else "on this runtime's disk, lost on a disconnect: mount Google Drive to keep them"
        )
        print(f"interpddpm artifacts (runs, checkpoints): {base} ({where})", flush=True)
    return base


def cache_dir(profile: str | Profile = "auto") -> Path:
    """The artifact folder of one profile (checkpoints, samples, tables), created if missing.

    ``$INTERPDDPM_CACHE/<profile>`` when the variable is set; on Colab with Google Drive
    mounted, ``MyDrive/interpddpm/_artifacts/<profile>``; otherwise ``_artifacts/<profile>``
    at the root of the repository the code runs in, or ``~/.cache/interpddpm/<profile>``.
    """
    name = profile.name if isinstance(profile, Profile) else resolve_profile_name(profile)
    out = cache_root() / name
    out.mkdir(parents=True, exist_ok=True)
    return out
