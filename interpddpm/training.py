"""One trainer for plain DDPM training and interpretable fine-tuning (eq. 9).

``L = L_DDPM + lambda(step) * L_IE`` where ``L_DDPM = ||eps - eps_theta(x_t, t)||^2`` (Ho et al.)
and ``L_IE`` is eq. (8) on the denoiser game of :mod:`interpddpm.denoiser_game`, computed on the
first ``ie_sub_batch`` samples of each batch:

- exact (``2**K`` coalitions) when ``K <= ie_exact_max_players``: the grand coalition is the
  ordinary forward pass that ``L_DDPM`` already makes, so only ``2**K - 1`` extra rows per sample;
- otherwise the pooled unbiased estimator with ``ie_samples`` coalitions (``C + K + 1`` rows).

All coalition rows and the batch go through the network in ONE forward pass. ``lambda`` decays
exponentially from ``lambda_start`` (the paper: 1e3) to ``lambda_floor`` (10 for the nose, 1 for
eyes and mouth) over ``lambda_decay_steps``, then stays there.

What the trainer trains on comes in as arguments: a *codec* (:class:`Codec`) that builds the
initial UNet and the noise schedule and maps each batch into the diffusion space, and a dataset.
Pixel runs use :class:`PixelCodec` (the identity). Latent diffusion (``autoencoder`` set) passes
:class:`interpddpm.latent.LatentCodec`: each batch is encoded by the frozen autoencoder and its
label maps are moved to the latent grid, so ``L_DDPM`` and ``L_IE`` run on latents. This module
never imports :mod:`interpddpm.latent` (``interpddpm.latent.train`` builds the codec and calls
:func:`train`).

Runs through accelerate (mixed precision on GPU, several processes without code changes), keeps
an EMA of the weights with diffusers' ``EMAModel`` and saves atomic safetensors checkpoints
(every ``checkpoint_every`` steps and, with ``checkpoint_minutes``, after that much wall time).
Every random draw of step ``s`` (batch indices, noise, timesteps, baseline, dropout) is derived
from ``(seed, s, process)``, so a run resumed from a checkpoint ends with exactly the weights of
an uninterrupted run. With several processes, each draws the noise, timesteps, coalitions and
fills of the whole global batch (as process 0) and keeps its slice (:func:`training_losses`):
the run then matches a one-process run of the same global batch up to float32 rounding (dropout
alone stays per process).

EMA: ``EMAModel`` always warms its decay up; with ``ema_warmup=True`` (default) the decay is
``1 - (1 + step)^(-2/3)`` capped at ``ema_decay`` (about 0.999 after 30k steps), so short CPU
runs still get a useful average; ``ema_warmup=False`` gives diffusers' other ramp
``(1 + step) / (10 + step)``, also capped at ``ema_decay``: a constant 0.9999 never happens early.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import math
import numbers
import os
import re
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from .artifacts import atomic_write, quarantine, seal_record, sha256_file, verify_record
from .artifacts import json_digest as json_digest  # re-exported: the cache key function
from .denoiser_game import game_values, predict_noise
from .devices import (  # re-exported: the trainer's precision and device choices live there
    check_precision as check_precision,
)
from .devices import default_device, place
from .devices import native_bf16 as native_bf16
from .devices import precision_label as precision_label
from .devices import resolve_mixed_precision as resolve_mixed_precision
from .errors import RunDirError as RunDirError  # re-exported: train() raises it
from .errors import UserError, check_writable_dir
from .locks import LockedError as LockedError  # re-exported: train() raises it
from .locks import locked
from .regions import (
    BASELINES,
    DEFAULT_BASELINE,
    OUTSIDES,
    apply_coalitions,
    baseline_fill,
    output_masks,
    player_masks,
)
from .theorem import (
    CoalitionDesign,
    concept_null_pairs,
    dummy_loss_from_values,
    exact_design,
    null_player_loss_from_values,
    sampled_design,
)
from .toyfaces import CONCEPTS
from .toyfaces import MIN_SIZE as TOY_MIN_SIZE

CHECKPOINT_PREFIX = "checkpoint-"
#: Largest K for which the trainer will enumerate all 2**K coalitions per sample.
MAX_EXACT_REGIONS = 10
IE_CONSTRAINTS = ("two_sided", "one_sided")
IE_T_WEIGHTS = ("uniform", "noise")
#: What a run trains: every weight, or only the UNet's decoder (its up blocks and output head).
TRAINABLE = ("all", "decoder")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, incomplete or corrupted."""


#: Config keys that say where and how often a run is saved, not what it learns.
BOOKKEEPING = frozenset(
    {"output_dir", "checkpoint_every", "checkpoint_minutes", "keep_checkpoints", "log_every"}
)
#: Bookkeeping keys added after runs and cache keys were made: :meth:`TrainConfig.to_dict`
#: leaves them out at their default, so hashes of a whole config dict (the ablation scores'
#: cache keys) stay valid.
_LATER_BOOKKEEPING: dict[str, Any] = {"checkpoint_minutes": None}
#: Learning keys added after the ablation record's score keys (hashes of whole config dicts)
#: were made: :meth:`TrainConfig.to_dict` leaves them out at their default as well.
_LATER_IN_DICT: dict[str, Any] = {**_LATER_BOOKKEEPING, "ie_outside": "one"}
#: The wall clock of :func:`train`'s timed checkpoints (tests replace it).
_clock = time.monotonic


class ConfigError(UserError):
    """A training configuration is invalid."""


#: The beta schedules of diffusers' ``DDPMScheduler`` (``beta_schedule``).
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")


def _bad_value(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{key}: expected {expected}, got {value!r} ({type(value).__name__}).")


def _as_number(key: str, value: Any, expected: str) -> float | int:
    """An int or float from a number or a numeric string (PyYAML reads ``2e-4`` as a string)."""
    if isinstance(value, bool):
        raise _bad_value(key, value, expected)
    if isinstance(value, numbers.Real):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            pass
    raise _bad_value(key, value, expected)


def _coerce_field(key: str, kind: str, value: Any) -> Any:
    """``value`` as the type ``kind`` (the field's annotation) asks for, or a ConfigError that
    names the key, the value and the expected type."""
    if kind == "int":
        number = _as_number(key, value, "an int")
        if isinstance(number, numbers.Integral):
            return int(number)
        if math.isfinite(number) and float(number).is_integer():
            return int(number)
        raise _bad_value(key, value, "an int (a whole number)")
    if kind == "float":
        return float(_as_number(key, value, "a float (a number like 2e-4)"))
    if kind == "float | None":
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        return float(_as_number(key, value, "a float or null"))
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise _bad_value(key, value, "a bool (true or false)")
    if kind in ("str", "str | None"):
        if isinstance(value, str) or (value is None and kind == "str | None"):
            return value
        expected = "a string" + (" or null" if kind == "str | None" else "")
        raise _bad_value(key, value, f"{expected} (quote it in YAML)")
    if kind == "tuple[float, float]":
        if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
            raise _bad_value(key, value, "two numbers, e.g. [0.9, 0.999]")
        return tuple(_coerce_field(key, "float", v) for v in value)
    if kind == "tuple[str, ...]":
        if isinstance(value, str):  # `concepts: nose` is one concept, not four letters
            return (value,)
        if not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
            raise _bad_value(key, value, "a list of names, e.g. [eyes, nose]")
        return tuple(value)
    raise TypeError(f"TrainConfig field {key} has an annotation ({kind}) with no coercion rule.")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs; saved in every checkpoint.

    Load from YAML/JSON with :meth:`from_file` (unknown keys are rejected).
    """

    # data
    dataset: str = "toyfaces"  # "toyfaces" (embedded) or any name datasets.get_dataset knows
    image_size: int = 32
    dataset_length: int = 10_000
    data_seed: int = 0
    # model
    preset: str = "cpu"  # a models.UNET_PRESETS name, used when init_from is None
    init_from: str | None = None  # a run folder, a checkpoint, a pipeline folder or a hub id
    # latent diffusion (interpddpm.latent): a saved VQ autoencoder folder, or an LDM pipeline
    # (folder or hub id) whose vqvae is used; None = diffusion on pixels
    autoencoder: str | None = None
    # optimisation
    steps: int = 2000
    batch_size: int = 32  # per process
    lr: float = 2e-4
    lr_warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    # min-SNR-gamma weighting of L_DDPM (Hang et al. 2023): each sample's noise MSE is weighted
    # by min(SNR_t, gamma) / SNR_t, which takes weight off the low-noise steps; None: plain MSE
    snr_gamma: float | None = None
    # "no", "fp16" or "bf16": autocast for the forward pass, weights and optimizer stay fp32
    # (profiles may say "auto"; :func:`resolve_mixed_precision` turns that into one of these)
    mixed_precision: str = "no"
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    seed: int = 0
    # interpretability (eq. 8-9)
    interpretable: bool = False
    concepts: tuple[str, ...] = ("nose",)
    dilation: int = 1
    baseline: str = DEFAULT_BASELINE
    game_value: str = "region_mean"
    lambda_start: float = 1e3
    lambda_floor: float = 10.0
    lambda_decay_steps: int = 1000
    ie_sub_batch: int = 8
    ie_exact_max_players: int = 4
    ie_samples: int = 16
    # "two_sided" (eq. 8: no region's output reads another region's input) or "one_sided" (only
    # the outside of each concept must ignore the concept's input; needs the exact design)
    ie_constraint: str = "two_sided"
    # the one-sided constraint's outputs: "one" (the outside of the concepts is one region, the
    # paper's "rest") or "split" (the other paper concepts, hair, skin and background each:
    # regions.output_masks); the players, and so the forward rows, stay the same
    ie_outside: str = "one"
    ie_t_min: int = 0  # L_IE samples draw t from [ie_t_min, T): only the noisier steps
    ie_t_weight: str = "uniform"  # "uniform" or "noise": weight (1 - alpha_bar_t) / its mean
    # fine-tuning aids beyond the paper (issue 13): a teacher term keeps eps near the frozen
    # init_from model's on the batch, teacher_weight * E w_t ||eps - eps_teacher||^2 (w_t the
    # L_DDPM weights), a low-variance target beside L_DDPM's noisy one; "decoder" trains only
    # the up blocks and the output head, so the constraint cannot rewrite the encoder
    teacher_weight: float = 0.0
    trainable: str = "all"
    # bookkeeping
    output_dir: str = "runs/default"
    checkpoint_every: int = 500
    # also save after this many minutes of wall time since the last checkpoint (a Colab
    # session that disconnects loses at most that much); None: steps only
    checkpoint_minutes: float | None = None
    keep_checkpoints: int = 2
    log_every: int = 10

    def __post_init__(self) -> None:
        # Every value as its field's type: numeric strings ("2e-4", as PyYAML reads it) become
        # numbers, whole floats ints, a single concept name a 1-tuple; anything else is refused.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            setattr(self, field.name, _coerce_field(field.name, str(field.type), value))
        self.validate()

    def validate(self) -> None:
        positive = (
            "image_size",
            "dataset_length",
            "steps",
            "batch_size",
            "num_train_timesteps",
            "checkpoint_every",
            "keep_checkpoints",
            "log_every",
            "ie_sub_batch",
            "ie_samples",
            "lambda_decay_steps",
        )
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name} must be a positive int, got {v!r}.")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive finite number, got {self.lr}.")
        self._validate_ranges()
        if self.baseline not in BASELINES:
            raise ConfigError(f"baseline must be one of {BASELINES}, got {self.baseline!r}.")
        if self.game_value not in ("region_mean", "pixel"):
            raise ConfigError(
                f"game_value must be 'region_mean' or 'pixel', got {self.game_value!r}."
            )
        if self.ie_constraint not in IE_CONSTRAINTS:
            raise ConfigError(
                f"ie_constraint must be one of {IE_CONSTRAINTS}, got {self.ie_constraint!r}."
            )
        if self.ie_outside not in OUTSIDES:
            raise ConfigError(f"ie_outside must be one of {OUTSIDES}, got {self.ie_outside!r}.")
        if self.ie_outside != "one" and self.ie_constraint != "one_sided":
            raise ConfigError(
                f"ie_outside={self.ie_outside!r} splits the outputs of the one-sided constraint; "
                "set ie_constraint='one_sided' too (the two-sided L_IE pairs every player with "
                "its own output region)."
            )
        if self.ie_t_weight not in IE_T_WEIGHTS:
            raise ConfigError(
                f"ie_t_weight must be one of {IE_T_WEIGHTS}, got {self.ie_t_weight!r}."
            )
        if not 0 <= self.ie_t_min < self.num_train_timesteps:
            raise ConfigError(
                f"ie_t_min must be in [0, num_train_timesteps={self.num_train_timesteps}), "
                f"got {self.ie_t_min}."
            )
        k = len(self.concepts) + 1
        if (
            self.interpretable
            and self.ie_constraint == "one_sided"
            and (k > self.ie_exact_max_players)
        ):
            raise ConfigError(
                f"ie_constraint='one_sided' needs the exact design (all 2**K coalitions), but "
                f"K = {k} > ie_exact_max_players = {self.ie_exact_max_players}. Raise "
                "ie_exact_max_players (at most 10) or use ie_constraint='two_sided'."
            )
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(
                f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r} "
                '("auto" is resolved by TrainConfig.from_dict, config files and the CLI, or by '
                "resolve_mixed_precision)."
            )
        if self.interpretable and not self.concepts:
            raise ConfigError("interpretable training needs at least one concept, e.g. ['nose'].")
        for name in ("lambda_start", "lambda_floor"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {v}.")
        if not 1 <= self.ie_exact_max_players <= MAX_EXACT_REGIONS:
            raise ConfigError(
                f"ie_exact_max_players={self.ie_exact_max_players}: the exact L_IE needs 2**K "
                f"forward rows per sample; above K = {MAX_EXACT_REGIONS} that is unaffordable. "
                "Use a smaller value: larger K then uses the pooled sampled estimator "
                "(ie_samples coalitions)."
            )
        if not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in (0, 1), got {self.ema_decay}.")
        if self.checkpoint_minutes is not None and not (
            math.isfinite(self.checkpoint_minutes) and self.checkpoint_minutes > 0
        ):
            raise ConfigError(
                f"checkpoint_minutes must be a positive number or None, got "
                f"{self.checkpoint_minutes}."
            )
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            raise ConfigError(f"snr_gamma must be positive or None, got {self.snr_gamma}.")
        if not (math.isfinite(self.teacher_weight) and self.teacher_weight >= 0):
            raise ConfigError(
                f"teacher_weight must be a finite number >= 0, got {self.teacher_weight}."
            )
        if self.teacher_weight > 0 and self.init_from is None:
            raise ConfigError(
                "teacher_weight > 0 needs init_from (the frozen model the teacher term keeps "
                "eps close to); set init_from to the run or model being fine-tuned."
            )
        if self.trainable not in TRAINABLE:
            raise ConfigError(f"trainable must be one of {TRAINABLE}, got {self.trainable!r}.")

    def _validate_ranges(self) -> None:
        """Non-negative counts and rates, the Adam betas, the names of concepts, datasets and
        beta schedules (the UNet preset is checked where the model is built)."""
        for name in ("lr_warmup_steps", "dilation", "seed", "data_seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be an int >= 0, got {getattr(self, name)}.")
        for name in ("weight_decay", "grad_clip"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(
                    f"{name} must be a finite number >= 0, got {v}"
                    + (" (0 turns clipping off)." if name == "grad_clip" else ".")
                )
        if not all(math.isfinite(b) and 0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(
                f"adam_betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got "
                f"{list(self.adam_betas)}."
            )
        unknown = [c for c in self.concepts if c not in CONCEPTS]
        if unknown:
            raise ConfigError(
                f"unknown concept(s) {', '.join(map(repr, unknown))} in concepts; valid names: "
                f"{', '.join(CONCEPTS)}."
            )
        doubled = sorted({c for c in self.concepts if self.concepts.count(c) > 1})
        if doubled:
            raise ConfigError(
                f"concepts lists {', '.join(map(repr, doubled))} more than once; a repeated "
                "concept would be a player with an always-empty region. List each once."
            )
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(
                f"unknown beta_schedule {self.beta_schedule!r}; valid: {', '.join(BETA_SCHEDULES)}."
            )
        from .datasets import DATASET_NAMES

        forms = ("toyfaces", *DATASET_NAMES)
        prefixes = tuple(f.split("<")[0] for f in forms if "<" in f)
        name = self.dataset
        if not (name in forms or (name.startswith(prefixes) and name.split(":", 1)[1].strip())):
            raise ConfigError(
                f"unknown dataset {name!r}; valid: {', '.join(forms)} "
                "(see interpddpm.datasets.get_dataset)."
            )
        if name == "toyfaces" and self.image_size < TOY_MIN_SIZE:
            raise ConfigError(
                f"image_size={self.image_size}: toy faces are drawn at {TOY_MIN_SIZE} px or more."
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            valid = ", ".join(sorted(known))
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}. Valid keys: {valid}.")
        data = dict(data)
        if data.get("mixed_precision") == "auto":  # config files and the CLI: this machine's
            data["mixed_precision"] = resolve_mixed_precision("auto")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        """Read a YAML or JSON file of keys from this class; a missing or malformed file is a
        :class:`ConfigError`."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist (or is not a file).")
        try:  # a .json file is read as strict JSON, anything else as YAML (a superset)
            text = path.read_text()
            data = (json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)) or {}
        except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as err:
            detail = " ".join(str(err).split())
            raise ConfigError(
                f"{path} is not valid YAML or JSON ({detail}); write one `key: value` per line, "
                "or a JSON object."
            ) from err
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: expected a mapping of config keys, got {type(data).__name__}."
            )
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["concepts"], d["adam_betas"] = list(self.concepts), list(self.adam_betas)
        later = _LATER_IN_DICT
        return {k: v for k, v in d.items() if not (k in later and v == later[k])}

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def fingerprint(self, length: int = 8) -> str:
        """A short hash of what this config trains, for naming run folders.

        Bookkeeping keys (:data:`BOOKKEEPING`) are left out, and so are the ``L_IE`` keys of a
        plain run. An absolute ``init_from`` or ``autoencoder`` path counts by its last part
        only (a run folder that carries its own fingerprint), so the hash is the same in every
        checkout. Any change to what is learned gives a new fingerprint.
        """
        data = {k: v for k, v in self.to_dict().items() if k not in BOOKKEEPING}
        # keys added after runs were recorded count only away from their default, so the runs
        # trained before them keep their folders
        data = drop_later_defaults(data)
        if not self.interpretable:
            data = {k: v for k, v in data.items() if k not in _IE_KEYS}
        for key in ("init_from", "autoencoder"):
            if data.get(key) and os.path.isabs(data[key]):
                data[key] = Path(data[key]).name
        return json_digest(data, length)


# ------------------------------------------------------------------------------------------
# Training precision (mixed_precision): decided in interpddpm.devices, re-exported here
# ------------------------------------------------------------------------------------------
def _accelerator(mixed_precision: str, cpu: bool) -> Any:
    """An :class:`accelerate.Accelerator`. Its state is a per-process singleton that refuses a
    second precision, yet one notebook kernel may train runs of several; the precision part is
    then reset (the distributed part, ``PartialState``, is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    current = AcceleratorState._shared_state.get("_mixed_precision")
    if current is not None and current != mixed_precision:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


# ------------------------------------------------------------------------------------------
# Schedules and per-step randomness
# ------------------------------------------------------------------------------------------
def lambda_at(step: int, config: TrainConfig) -> float:
    """``lambda(step)``: exponential decay from ``lambda_start`` to ``lambda_floor`` (eq. 9)."""
    if config.lambda_start == 0 or config.lambda_floor == 0:
        start, floor = config.lambda_start, config.lambda_floor
        frac = min(step / config.lambda_decay_steps, 1.0)
        return start + (floor - start) * frac
    frac = min(step / config.lambda_decay_steps, 1.0)
    return config.lambda_start * (config.lambda_floor / config.lambda_start) ** frac


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``lr_warmup_steps``, then constant."""
    if config.lr_warmup_steps and step < config.lr_warmup_steps:
        return config.lr * (step + 1) / config.lr_warmup_steps
    return config.lr


def step_seed(seed: int, step: int, process: int = 0, stream: int = 0) -> int:
    """A 63-bit seed for one (run, step, process, stream): independent of Python's hash salt."""
    digest = hashlib.sha256(f"{seed}:{step}:{process}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def batch_indices(
    step: int, config: TrainConfig, n_items: int, process: int, n_processes: int
) -> Tensor:
    """Indices of this process's batch at ``step``: epochs of random permutations of the data."""
    global_batch = config.batch_size * n_processes
    start = step * global_batch + process * config.batch_size
    positions = torch.arange(start, start + config.batch_size)
    epochs = positions // n_items
    out = torch.empty_like(positions)
    for epoch in epochs.unique().tolist():
        perm = torch.randperm(
            n_items,
            generator=torch.Generator().manual_seed(step_seed(config.seed, epoch, stream=1)),
        )
        sel = epochs == epoch
        out[sel] = perm[positions[sel] % n_items]
    return out


# ------------------------------------------------------------------------------------------
# The loss of one batch
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class StepLosses:
    total: Tensor
    ddpm: Tensor
    ie: Tensor | None
    lam: float
    rows: int
    teacher: Tensor | None = None  # the teacher term (unweighted), when teacher_weight > 0


def trainable_parameters(model: torch.nn.Module, trainable: str = "all") -> list[Tensor]:
    """The parameters a run trains. ``"decoder"`` freezes everything but a UNet2DModel's up
    blocks and output head (``up_blocks``, ``conv_norm_out``, ``conv_out``): the encoder, the
    middle block and the time embedding keep their pretrained weights."""
    if trainable == "all":
        return list(model.parameters())
    if trainable != "decoder":
        raise ConfigError(f"trainable must be one of {TRAINABLE}, got {trainable!r}.")
    if not hasattr(model, "up_blocks"):
        raise ConfigError(
            f"trainable='decoder' needs a UNet with up_blocks (a diffusers UNet2DModel), not a "
            f"{type(model).__name__}; use trainable='all'."
        )
    decoder = ("up_blocks.", "conv_norm_out.", "conv_out.")
    params = []
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(decoder))
        if param.requires_grad:
            params.append(param)
    return params


def ie_design(config: TrainConfig, generator: torch.Generator) -> CoalitionDesign:
    """The coalitions of this step: exact for small K, pooled sampling otherwise."""
    k = len(config.concepts) + 1
    if k <= config.ie_exact_max_players:
        return exact_design(k)
    return sampled_design(k, config.ie_samples, generator=generator)


def ie_sample_weights(noise_scheduler: Any, t: Tensor, config: TrainConfig) -> Tensor | None:
    """Per-sample weights of ``L_IE``: ``None`` (uniform) or ``(1 - alpha_bar_t)`` divided by its
    mean over all timesteps, so that the average weight stays 1 and lambda keeps its meaning."""
    if config.ie_t_weight == "uniform":
        return None
    noise_level = 1 - noise_scheduler.alphas_cumprod.to(torch.float64)
    return (noise_level[t.cpu()] / noise_level.mean()).float().to(t.device)


def min_snr_weights(noise_scheduler: Any, t: Tensor, gamma: float) -> Tensor:
    """Min-SNR-gamma weights of an epsilon-prediction loss, ``min(SNR_t, gamma) / SNR_t`` with
    ``SNR_t = abar_t / (1 - abar_t)`` (Hang et al. 2023; diffusers' ``compute_snr``)."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, t).float()
    return snr.clamp(max=gamma) / snr


def training_losses(
    model: Any,
    noise_scheduler: Any,
    images: Tensor,
    labels: Tensor | None,
    config: TrainConfig,
    step: int,
    generator: torch.Generator,
    *,
    rank: int = 0,
    world: int = 1,
    neighbour: Tensor | None = None,
    teacher: Any = None,
) -> StepLosses:
    """``L_DDPM`` and (when interpretable) ``lambda * L_IE`` of one batch, one forward pass.

    Several processes (``world > 1``) share a global batch of ``world * b`` samples, process
    ``rank`` holding the global positions ``[rank * b, (rank + 1) * b)`` (:func:`batch_indices`).
    Every process then passes the same ``generator`` (seeded as process 0's), draws the
    randomness of the WHOLE global batch in the single-process order (noise, t, the ``ie_t_min``
    redraw, the coalition design, the baseline fill) and keeps its own slice: a run does not
    depend on how many processes share its batch. The ``L_IE`` sub-batch is the first
    ``ie_sub_batch`` samples of the global batch (the first ones of this process's slice, maybe
    none). ``neighbour`` (``[1, C, H, W]``) is the clean image (or latent) at global position
    ``rank * b - 1`` (mod ``world * b``): the ``"shuffle"`` baseline of this process's first sample
    reads it, as ``images.roll(1, 0)`` does in one process; it defaults to ``images[-1:]``.
    The losses returned are then this process's SHARE: their mean over the processes (what DDP's
    gradient averaging computes) is the loss of the global batch.

    ``teacher`` (the frozen initial model, needed when ``config.teacher_weight > 0``) adds
    ``teacher_weight * mean_i w_i ||eps_theta(x_t) - eps_teacher(x_t)||^2`` over the batch, with
    the ``w_i`` of ``L_DDPM`` (min-SNR or 1).
    """
    if config.teacher_weight > 0 and teacher is None:
        raise ValueError("config.teacher_weight > 0 needs the frozen teacher model (teacher=).")
    b = images.shape[0]
    n = b * world  # the global batch
    lo = rank * b  # this process's first global position
    device = images.device
    noise_all = torch.randn((n, *images.shape[1:]), generator=generator)
    noise = noise_all[lo : lo + b].to(device)
    n_t = noise_scheduler.config.num_train_timesteps
    t = torch.randint(0, n_t, (n,), generator=generator)
    if config.interpretable and config.ie_t_min > 0:  # the L_IE samples: only noisier steps
        sub = min(config.ie_sub_batch, n)
        t[:sub] = torch.randint(config.ie_t_min, n_t, (sub,), generator=generator)
    t = t[lo : lo + b].to(device)
    x_t = noise_scheduler.add_noise(images, noise, t)
    inputs, times = [x_t], [t]
    design = masks = None
    sub = own = 0
    if config.interpretable:
        if labels is None:
            raise ValueError("interpretable training needs label maps for the regions.")
        sub = min(config.ie_sub_batch, n)  # the global L_IE sub-batch: positions [0, sub)
        own = min(max(sub - lo, 0), b)  # those of them this process holds: its first `own`
    if own > 0:
        design = ie_design(config, generator)
        masks = player_masks(labels[:own], config.concepts, dilation=config.dilation).to(device)
        if masks.shape[-2:] != x_t.shape[-2:]:
            raise ValueError(
                f"region masks are {tuple(masks.shape[-2:])} but x_t is {tuple(x_t.shape[-2:])}: "
                "a latent model needs label maps on its latent grid. Downsample them with "
                "regions.downsample_labels(labels, latent_size, prefer=concepts), or set "
                "TrainConfig.autoencoder and the trainer does it."
            )
        keep = torch.ones(design.n_rows, dtype=torch.bool)
        if design.full_row is not None:
            keep[design.full_row] = False  # the grand coalition IS the L_DDPM forward
        others = None
        if config.baseline == "shuffle":  # another sample's x_t at this sample's own t
            if neighbour is None and world > 1:
                raise ValueError("with several processes the 'shuffle' baseline needs neighbour.")
            before = images[-1:] if neighbour is None else neighbour.to(images)
            previous = torch.cat([before, images[:-1]])  # images.roll(1, 0) of the global batch
            previous_noise = noise_all.roll(1, 0)[lo : lo + b].to(device)
            others = noise_scheduler.add_noise(previous, previous_noise, t)[:own]
        if world == 1 or others is not None:
            fill = baseline_fill(x_t[:own], config.baseline, generator=generator, others=others)
        else:  # "zero" and "noise" read only x's shape: draw the global sub-batch's, keep ours
            ghost = x_t.new_zeros((sub, *x_t.shape[1:]))
            fill = baseline_fill(ghost, config.baseline, generator=generator)[lo : lo + own]
        rows = apply_coalitions(x_t[:own], masks, design.coalitions[keep], fill)
        inputs.append(rows.reshape(-1, *x_t.shape[1:]))
        times.append(t[:own].repeat_interleave(int(keep.sum())))
    eps = predict_noise(model, torch.cat(inputs), torch.cat(times))
    eps_teacher = None
    if config.teacher_weight > 0:
        with torch.no_grad():
            eps_teacher = predict_noise(teacher, x_t, t)
    # Only the forward pass may run in reduced precision (mixed_precision): the losses are
    # computed in fp32, since L_IE compares game values that differ by little (region means
    # are an einsum, which autocast would otherwise run in bf16).
    with torch.autocast(eps.device.type, enabled=False):
        eps_batch = eps[:b]
        snr_w = None
        if config.snr_gamma is None:
            loss_ddpm = F.mse_loss(eps_batch.float(), noise.float())
        else:
            snr_w = min_snr_weights(noise_scheduler, t, config.snr_gamma)
            per_sample = (eps_batch.float() - noise.float()).pow(2).flatten(1).mean(1)
            loss_ddpm = (per_sample * snr_w).mean()
        main, loss_teacher = loss_ddpm, None
        if eps_teacher is not None:
            gap = (eps_batch.float() - eps_teacher.float()).pow(2).flatten(1).mean(1)
            loss_teacher = (gap if snr_w is None else gap * snr_w).mean()
            main = loss_ddpm + config.teacher_weight * loss_teacher
            loss_teacher = loss_teacher.detach()
        if design is None:
            if config.interpretable:  # none of the global L_IE sub-batch is this process's
                zero = loss_ddpm.detach().new_zeros(())
                lam = lambda_at(step, config)
                return StepLosses(main, loss_ddpm.detach(), zero, lam, eps.shape[0], loss_teacher)
            return StepLosses(main, loss_ddpm.detach(), None, 0.0, eps.shape[0], loss_teacher)
        eps_rows = eps[b:].reshape(own, -1, *eps.shape[1:])  # [own, R', C, H, W]
        if design.full_row is not None:
            full = eps_batch[:own].unsqueeze(1)
            eps_rows = torch.cat(
                [eps_rows[:, : design.full_row], full, eps_rows[:, design.full_row :]], 1
            )
        weights = ie_sample_weights(noise_scheduler, t[:own], config)
        if config.ie_constraint == "one_sided":
            k = masks.shape[1]
            outputs = masks
            if config.ie_outside != "one":  # finer output regions, the same K players
                outputs = output_masks(
                    labels[:own], config.concepts, dilation=config.dilation, outside="split"
                ).to(device)
            values = game_values(eps_rows.float(), outputs, config.game_value)
            pairs = concept_null_pairs(k, n_outputs=outputs.shape[1])
            loss_ie = null_player_loss_from_values(values, pairs, weights, n_players=k)
        else:
            values = game_values(eps_rows.float(), masks, config.game_value)
            loss_ie = dummy_loss_from_values(values, design, weights)
        if world > 1:  # L_IE is a mean over its samples: with world * own / sub, the mean of
            loss_ie = loss_ie * (world * own / sub)  # the processes' shares is the global L_IE
        lam = lambda_at(step, config)
        return StepLosses(
            main + lam * loss_ie,
            loss_ddpm.detach(),
            loss_ie.detach(),
            lam,
            eps.shape[0],
            loss_teacher,
        )


# ------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------
_sha256 = sha256_file  # the old name (interpddpm.artifacts holds the digest functions)


def _flatten_optimizer(state: dict) -> tuple[dict[str, Tensor], dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "scalars": {}}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                meta["scalars"][f"{idx}.{key}"] = value
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    folder: Path,
    step: int,
    model: Any,
    optimizer: Any,
    ema: Any,
    config: TrainConfig,
    *,
    scheduler_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``folder/checkpoint-<step>`` atomically (a temp folder renamed when complete),
    with the run's noise schedule (``scheduler_config``) when given."""
    final = folder / f"{CHECKPOINT_PREFIX}{step:07d}"
    tmp = folder / f".tmp-{CHECKPOINT_PREFIX}{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names = [n for n, _ in model.named_parameters()]
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        tmp / "model.safetensors",
    )
    ema_state = ema.state_dict()
    shadow = ema_state.pop("shadow_params")
    save_file(
        {n: p.detach().cpu().contiguous() for n, p in zip(names, shadow, strict=True)},
        tmp / "ema.safetensors",
    )
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    files = ["model.safetensors", "ema.safetensors", "optimizer.safetensors"]
    state = {
        "step": step,
        "config": config.to_dict(),
        "model_config": dict(model.config),
        "ema": ema_state,
        "optimizer": opt_meta,
        "sha256": {f: _sha256(tmp / f) for f in files},
    }
    if scheduler_config is not None:  # a set in diffusers' config: sorted, so files are stable
        state["scheduler_config"] = {
            k: sorted(v) if isinstance(v, set | frozenset) or k == "_use_default_values" else v
            for k, v in scheduler_config.items()
        }
    # sealed: a digest of state.json's own values (step, config, optimizer settings) inside it
    (tmp / "state.json").write_text(seal_record(state, default=_json_default))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _json_default(o: Any) -> Any:
    if isinstance(o, (tuple, set)):
        return list(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run folder, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
    )


def read_verified_record(
    path: str | os.PathLike, record: str, remedy: str, what: str = "checkpoint"
) -> dict[str, Any]:
    """Read the JSON ``record`` of a saved folder and check it (checkpoints, the latent
    autoencoder): its own digest (:func:`interpddpm.artifacts.seal_record`; a record saved
    before that digest existed loads with one warning) and every file it lists, present with
    its recorded sha256. Raises :class:`CheckpointError`; ``remedy`` ends the messages."""
    return verify_record(path, record, remedy, what, error=CheckpointError)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and verify a checkpoint: state.json's own digest, every file with its sha256."""
    path = Path(path)
    state = read_verified_record(
        path,
        "state.json",
        "training and load_run_model use the newest older checkpoint that verifies",
    )
    state["tensors"] = {name: load_file(path / name) for name in state["sha256"]}
    return state


def latest_verified_checkpoint(
    folder: str | os.PathLike, *, quarantine_bad: bool = False
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of run folder ``folder`` that verifies, with its loaded state
    (:func:`read_checkpoint`); ``None`` when the folder has no checkpoint at all.

    Each newer checkpoint that fails (corrupted, edited, or a stray empty or partial
    ``checkpoint-*`` folder) is reported with a warning naming it and why; with
    ``quarantine_bad=True`` (the trainer, which holds the run's lock) it is also renamed to
    ``corrupt-checkpoint-...`` so that the run continues past it; nothing is deleted. When no
    checkpoint verifies, :class:`CheckpointError` lists each one and why.
    """
    folder = Path(folder)
    bad: list[tuple[Path, str]] = []
    for checkpoint in reversed(list_checkpoints(folder)):
        try:
            state = read_checkpoint(checkpoint)
        except Exception as err:  # CheckpointError, or bytes safetensors cannot parse
            if not checkpoint.exists():  # pruned by a trainer meanwhile: not a fault
                continue
            bad.append((checkpoint, str(err)))
            continue
        for path, why in bad:
            moved = f"; renamed to {quarantine(path).name}" if quarantine_bad else ""
            warnings.warn(
                f"checkpoint {path} is unusable ({why}); using {checkpoint.name} instead{moved}",
                RuntimeWarning,
                stacklevel=2,
            )
        return checkpoint, state
    if bad:
        details = "\n".join(f"  {path.name}: {why}" for path, why in bad)
        raise CheckpointError(
            f"no checkpoint of {folder} verifies:\n{details}\nRestore one from a copy, or move "
            "these folders away to train from the start."
        )
    return None


# ------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------
class _RenderCache:
    """Keeps every rendered toy face in memory: rendering costs ~15% of a CPU training step,
    and a run draws each of its ``length`` faces many times."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.images: dict[int, Tensor] = {}
        self.labels: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        missing = sorted({i for i in indices if i not in self.images})
        if missing:
            images, labels = self.dataset.batch(missing)
            self.images.update(zip(missing, images, strict=True))
            self.labels.update(zip(missing, labels, strict=True))
        return (
            torch.stack([self.images[i] for i in indices]),
            torch.stack([self.labels[i] for i in indices]),
        )


def training_dataset(config: TrainConfig) -> Any:
    """The data ``config.dataset`` names at ``config.image_size`` (what :func:`train` reads when
    it is given no dataset): toy faces rendered once and memoised, or a real dataset through
    :func:`interpddpm.datasets.get_dataset` (Colab / GPU)."""
    if config.dataset == "toyfaces":
        from .toyfaces import ToyFaces

        faces = ToyFaces(
            size=config.image_size, length=config.dataset_length, seed=config.data_seed
        )
        return _RenderCache(faces) if config.dataset_length <= 20_000 else faces
    from . import datasets  # real data (Colab / GPU); imported only when asked for

    return datasets.get_dataset(config.dataset, size=config.image_size)


def _fetch(dataset: Any, indices: Tensor) -> tuple[Tensor, Tensor | None]:
    if hasattr(dataset, "batch"):
        images, labels = dataset.batch(indices.tolist())
    else:
        items = [dataset[int(i)] for i in indices]
        images = torch.stack([it[0] for it in items])
        labels = torch.stack([it[1] for it in items]) if len(items[0]) > 1 else None
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.001 or hi > 1.001:  # a [0, 255] or [0, 1]-shifted dataset would train on garbage
        raise ValueError(
            f"training images must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]; "
            "map [0, 1] images with x * 2 - 1 (and [0, 255] with x / 127.5 - 1)."
        )
    return images, labels


#: A Hugging Face Hub model id as ``init_from`` takes it: ``owner/name``.
_HUB_MODEL_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def check_preset_size(preset: str, image_size: int, scale: int = 1) -> None:
    """Refuse an unknown UNet preset, or an ``image_size`` whose grid (``image_size / scale``:
    the latent grid of an autoencoder that downsamples ``scale`` times) the preset's UNet cannot
    halve ``len(block_out_channels) - 1`` times; the error names the nearest valid sizes."""
    from .models import UNET_PRESETS

    if preset not in UNET_PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; valid presets: {', '.join(UNET_PRESETS)}.")
    halvings = len(UNET_PRESETS[preset]["block_out_channels"]) - 1
    step = 2**halvings * scale
    if image_size % step:
        lo, hi = image_size // step * step, (image_size // step + 1) * step
        nearest = f"{lo} or {hi}" if lo >= max(step, TOY_MIN_SIZE) else str(hi)
        grid = "the image" if scale == 1 else f"the {scale}x smaller latent grid"
        raise ConfigError(
            f"image_size={image_size} does not fit preset {preset!r}: its UNet halves {grid} "
            f"{halvings} times, so image_size must be a multiple of {step}; nearest valid "
            f"sizes: {nearest}."
        )


def check_init_from(init_from: str, *, latent: bool = False) -> None:
    """Fail at once when ``init_from`` is neither a local model nor a plausible hub id.

    A local folder must be a run folder (``checkpoint-*``), a checkpoint (``state.json``) or a
    diffusers folder (``model_index.json`` or ``config.json``). A missing path is sent to the
    Hugging Face Hub only when it reads as an ``owner/name`` id whose first part is not a local
    folder; otherwise (``runs/baselin``, ``./x``, ``/abs/path``) the error names the closest
    siblings instead of spending seconds on hub retries.
    """
    src = Path(init_from).expanduser()
    what = "a run folder (with checkpoint-* folders), a checkpoint (state.json), a " + (
        "latent diffusion pipeline folder" if latent else "pipeline folder (model_index.json)"
    )
    if src.is_dir():
        markers = ("state.json", "model_index.json", "config.json")
        if list_checkpoints(src) or any((src / m).is_file() for m in markers):
            return
        hint = ""
        if (src / "metrics.jsonl").is_file():
            hint = " It looks like a run that has not saved a checkpoint yet: train it first."
        raise ConfigError(f"init_from {init_from!r} is a folder but not {what}.{hint}")
    if src.exists():
        raise ConfigError(f"init_from {init_from!r} is a file; give {what} or a hub id.")
    parts = Path(init_from).parts
    hub_like = (
        _HUB_MODEL_ID.fullmatch(init_from) is not None
        and not init_from.startswith((".", "~"))
        and not Path(parts[0]).exists()
    )
    if hub_like:
        return  # the loader asks the hub (fast offline; its errors say how to get the model)
    parent = src.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    try:
        siblings = sorted(p.name for p in parent.iterdir())
    except OSError:
        siblings = []
    close = difflib.get_close_matches(src.name, siblings, n=3, cutoff=0.6)
    base = "" if str(parent) == "." else str(parent)
    guesses = [os.path.join(base, name) for name in close]
    hint = (
        f"did you mean {' or '.join(guesses)}?"
        if guesses
        else f"no such path (nothing similar in {parent})."
    )
    raise ConfigError(
        f"init_from {init_from!r} is neither {what}, nor a Hugging Face Hub id (owner/name); {hint}"
    )


def check_init_size(unet: Any, config: TrainConfig, size: int, channels: int) -> None:
    """Refuse an ``init_from`` model whose inputs are not ``[channels, size, size]``: it would
    train, but its saved ``sample_size`` would disagree with the run's ``image_size``."""
    s, c = unet.config.sample_size, unet.config.in_channels
    s = tuple(s) if isinstance(s, list | tuple) else (s, s)
    if c == channels and s == (size, size):
        return
    got, want = f"[{c}, {s[0]}, {s[1]}]", f"[{channels}, {size}, {size}]"
    if config.autoencoder is None:
        fix = (
            f"set image_size={s[0]} to fine-tune it at its own size, or set init_from=null to "
            f"train a new model at {config.image_size} px"
            if c == channels
            else "it is not a pixel-space model (a latent run needs autoencoder set)"
        )
        raise ConfigError(
            f"init_from {config.init_from!r} takes {got} inputs (sample_size={s[0]}) but "
            f"image_size={config.image_size} gives {want} images; {fix}."
        )
    raise ConfigError(
        f"the UNet of init_from {config.init_from!r} takes {got} inputs, but the autoencoder "
        f"{config.autoencoder!r} gives {want} latents at image_size={config.image_size}; use a "
        "matching image_size or autoencoder."
    )


def check_startable(config: TrainConfig, stop_after: int | None = None) -> Path:
    """What :func:`train` checks before it loads anything: ``stop_after``, the model source
    (the preset and size of a new pixel model, or that ``init_from`` exists) and the run folder,
    created and probed for writing (:class:`RunDirError` when it is a file or read-only).
    Returns the run folder."""
    if stop_after is not None and (
        isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after <= 0
    ):
        raise ConfigError(f"stop_after must be a positive number of steps, got {stop_after!r}.")
    if config.init_from is not None:
        check_init_from(config.init_from, latent=config.autoencoder is not None)
    elif config.autoencoder is None:  # a latent grid's size is checked with its autoencoder
        check_preset_size(config.preset, config.image_size)
    return check_writable_dir(config.output_dir, "output_dir")


@runtime_checkable
class Codec(Protocol):
    """What :func:`train` needs to know about the space a run diffuses in.

    ``initial_model(config)`` builds the UNet the run starts from (before any resume);
    ``noise_scheduler(config)`` the ``DDPMScheduler`` of the run (saved with each checkpoint,
    so that :func:`load_run_model` needs no codec); ``encode_batch(images, labels, concepts,
    keys=)`` maps a batch of images in [-1, 1] and its label maps into that space (CPU tensors);
    ``to(device)`` moves what the codec computes with. ``latent`` says whether
    ``config.autoencoder`` must be set for it.
    """

    latent: bool

    def initial_model(self, config: TrainConfig) -> Any: ...

    def noise_scheduler(self, config: TrainConfig) -> Any: ...

    def encode_batch(
        self,
        images: Tensor,
        labels: Tensor | None,
        concepts: Sequence[Any] = (),
        *,
        keys: Tensor | Sequence[int] | None = None,
    ) -> tuple[Tensor, Tensor | None]: ...

    def to(self, device: str | torch.device) -> Codec: ...


class PixelCodec:
    """The codec of a pixel-space DDPM: the images are the diffusion space."""

    latent = False

    def initial_model(self, config: TrainConfig) -> Any:
        """A new UNet of ``config.preset``, a run folder's EMA weights, or a pretrained
        diffusers model (folder or hub id), checked against ``config.image_size``."""
        from .models import load_pretrained, make_unet

        if config.init_from is None:
            check_preset_size(config.preset, config.image_size)
            return make_unet(config.preset, sample_size=config.image_size)
        check_init_from(config.init_from)
        src = Path(config.init_from)
        if src.is_dir() and (list_checkpoints(src) or (src / "state.json").is_file()):
            unet = load_run_model(src, ema=True)
        else:
            unet, _ = load_pretrained(config.init_from)
        check_init_size(unet, config, config.image_size, 3)
        return unet

    def noise_scheduler(self, config: TrainConfig) -> Any:
        from diffusers import DDPMScheduler

        return DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule
        )

    def encode_batch(
        self,
        images: Tensor,
        labels: Tensor | None,
        concepts: Sequence[Any] = (),
        *,
        keys: Tensor | Sequence[int] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        return images, labels

    def to(self, device: str | torch.device) -> PixelCodec:
        return self


def check_codec(config: TrainConfig, codec: Any) -> Any:
    """The codec a run of ``config`` trains with: ``codec``, or :class:`PixelCodec` for a
    pixel run. A latent run (``autoencoder`` set) without one, or a codec of the other kind,
    is refused with the call that builds the right one."""
    if codec is None:
        if config.autoencoder is None:
            return PixelCodec()
        raise ConfigError(
            f"this config diffuses in the latent space of autoencoder={config.autoencoder!r}: "
            "train it with interpddpm.latent.train(config) (or pass "
            "codec=interpddpm.latent.LatentCodec.load(config.autoencoder)); the CLI "
            "`interpddpm train` does this itself."
        )
    if not isinstance(codec, Codec):
        raise ConfigError(
            f"codec must have initial_model, noise_scheduler, encode_batch and to "
            f"(interpddpm.training.Codec), got {type(codec).__name__}."
        )
    if bool(codec.latent) != (config.autoencoder is not None):
        want = "a latent codec (its autoencoder)" if config.autoencoder else "PixelCodec()"
        raise ConfigError(
            f"codec {type(codec).__name__} does not match the config "
            f"(autoencoder={config.autoencoder!r}): pass {want}."
        )
    return codec


def _initial_model(config: TrainConfig, codec: Any = None) -> Any:
    """The UNet a run of ``config`` starts from (see :meth:`Codec.initial_model`)."""
    return check_codec(config, codec).initial_model(config)


def load_run_model(
    path: str | os.PathLike,
    *,
    ema: bool = True,
    device: str | torch.device | None = None,
    codec: Any = None,
) -> Any:
    """The UNet of a run folder (its newest checkpoint that verifies: a corrupted newer one is
    skipped with a warning, see :func:`latest_verified_checkpoint`) or of one checkpoint folder,
    in eval mode on ``device`` (default :func:`interpddpm.devices.default_device`: the GPU when
    there is one).

    ``ema=True`` returns the EMA weights (what to sample from), else the raw weights. The
    model's ``scheduler_config`` (what sampling uses) is the one saved with the checkpoint;
    checkpoints written before it was saved take it from ``codec`` (default
    :class:`PixelCodec`; a latent run of that age needs its :class:`Codec`).
    """
    from diffusers import UNet2DModel

    path = Path(path)
    if (path / "state.json").is_file():
        state = read_checkpoint(path)
    else:
        found = latest_verified_checkpoint(path)
        if found is None:
            raise CheckpointError(f"no checkpoint in {path}; train first (interpddpm train ...).")
        state = found[1]
    model = UNet2DModel.from_config(state["model_config"])
    weights = state["tensors"]["model.safetensors"]
    if ema:
        weights = {**weights, **state["tensors"]["ema.safetensors"]}
    model.load_state_dict(weights)
    saved = state.get("scheduler_config")
    if saved is None:  # a checkpoint from before the schedule was saved with it
        config = TrainConfig.from_dict(state["config"])
        saved = dict(check_codec(config, codec).noise_scheduler(config).config)
    model.scheduler_config = saved
    return place(model.eval(), device)


def _noise_scheduler(config: TrainConfig, codec: Any = None) -> Any:
    """The ``DDPMScheduler`` a run of ``config`` trains with (see :class:`Codec`)."""
    return check_codec(config, codec).noise_scheduler(config)


@dataclasses.dataclass
class TrainResult:
    output_dir: Path
    step: int
    metrics_file: Path
    seconds: float
    #: the codec the run was trained with (None: pixels)
    codec: Any = dataclasses.field(default=None, repr=False, compare=False)

    def model(self, ema: bool = True, device: str | torch.device | None = None) -> Any:
        """The run's UNet on ``device`` (default: the GPU when there is one), see
        :func:`load_run_model`."""
        return load_run_model(self.output_dir, ema=ema, device=device, codec=self.codec)

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics_file)


class MetricsLogError(UserError, RuntimeError):
    """A line of a run's ``metrics.jsonl`` that is not a JSON record, before its last line."""


def _metrics_records(path: Path) -> list[tuple[int, str, dict[str, Any] | None]]:
    """``(line number, line, record or None when undecodable)`` of each non-empty line."""
    out = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            record = None
        out.append((number, line, record))
    return out


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (a run folder or the file), oldest first.

    A torn LAST line (a write cut short by a crash, or one still being written) is left out
    with a warning naming the file and line; an undecodable line before it raises
    :class:`MetricsLogError` naming the file and line (resuming the run repairs both).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = _metrics_records(path)
    for i, (number, line, record) in enumerate(rows):
        if record is not None:
            continue
        if i < len(rows) - 1:
            raise MetricsLogError(
                f"{path}, line {number}: not a JSON record ({line[:80]!r}); the log is "
                "corrupted. Resuming the run (train) drops such lines; or delete that line."
            )
        warnings.warn(
            f"{path}, line {number}: dropping a torn last line ({line[:80]!r})",
            RuntimeWarning,
            stacklevel=2,
        )
    return [record for _, _, record in rows if record is not None]


def select_cuda_device(device: str | torch.device) -> None:
    """Make ``cuda:N`` the current CUDA device of a single process, so that accelerate trains
    where sampling runs (it takes the current device; ``INTERPDDPM_DEVICE=cuda:1`` would
    otherwise train on cuda:0). Launched processes keep accelerate's per-rank choice."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is not None and "LOCAL_RANK" not in os.environ:
        torch.cuda.set_device(device.index)


def train(
    config: TrainConfig,
    *,
    stop_after: int | None = None,
    progress: bool = True,
    device: str | None = None,
    codec: Codec | None = None,
    dataset: Any = None,
) -> TrainResult:
    """Train (or resume) the run in ``config.output_dir`` up to ``config.steps`` steps.

    ``codec`` (:class:`Codec`) is the diffusion space: None for pixels (:class:`PixelCodec`);
    a latent run passes its autoencoder's (:func:`interpddpm.latent.train` does). ``dataset``
    is the data ``config.dataset`` names, already built (indexable, or with ``batch(indices)``,
    giving images in [-1, 1] and label maps); None builds it (:func:`training_dataset`).
    ``device`` defaults to :func:`interpddpm.devices.default_device`.

    Resumes from the newest valid checkpoint there, if any, after checking that its config
    matches (only ``steps`` and bookkeeping keys may change). ``stop_after`` ends this call after
    that many steps (a checkpoint is written), e.g. to split a long run.

    The run folder is locked while training (:mod:`interpddpm.locks`): a second trainer on it
    fails at once with :class:`~interpddpm.locks.LockedError` naming the first one's pid.
    """
    out = check_startable(config, stop_after)  # fails fast on what the user can fix
    codec = check_codec(config, codec)
    if dataset is not None and len(dataset) == 0:
        raise ConfigError("dataset is empty: give the run at least one image.")
    # under `accelerate launch` the processes of one run share the folder: rank 0 holds the lock
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    guard = locked(out, wait=False, what="training run") if rank == 0 else contextlib.nullcontext()
    with guard:
        return _train_locked(
            config,
            out,
            stop_after=stop_after,
            progress=progress,
            device=device,
            codec=codec,
            dataset=dataset,
        )


def _train_locked(
    config: TrainConfig,
    out: Path,
    *,
    stop_after: int | None,
    progress: bool,
    device: str | None,
    codec: Codec,
    dataset: Any,
) -> TrainResult:
    """The body of :func:`train`, run while it holds the lock of the run folder ``out``."""
    from diffusers.training_utils import EMAModel

    device = str(default_device()) if device is None else device
    cpu = torch.device(device).type == "cpu"
    check_precision(config.mixed_precision, device)
    select_cuda_device(device)
    accelerator = _accelerator(config.mixed_precision, cpu)
    rank, world = accelerator.process_index, accelerator.num_processes
    dataset = training_dataset(config) if dataset is None else dataset
    noise_scheduler = codec.noise_scheduler(config)
    codec = codec.to(accelerator.device)  # a latent codec encodes where the model trains

    with torch.random.fork_rng(devices=[]):  # keep the caller's global RNG untouched
        torch.manual_seed(config.seed)
        model = codec.initial_model(config)
    # a new or pretrained UNet through devices.place too (accelerate's device is the same)
    model = place(model, accelerator.device)
    teacher = None
    if config.teacher_weight > 0:  # the frozen initial model (loaded before any resume)
        import copy

        teacher = copy.deepcopy(model).eval().requires_grad_(False).to(accelerator.device)
    model.train()
    optimizer = torch.optim.AdamW(
        trainable_parameters(model, config.trainable),
        lr=config.lr,
        betas=config.adam_betas,
        weight_decay=config.weight_decay,
    )
    ema = EMAModel(
        model.parameters(),
        decay=config.ema_decay,
        use_ema_warmup=config.ema_warmup,
        model_cls=type(model),
        model_config=model.config,
    )
    start = 0
    # the newest checkpoint that verifies; newer bad ones are renamed corrupt-checkpoint-*
    found = latest_verified_checkpoint(out, quarantine_bad=accelerator.is_main_process)
    if found is not None:
        checkpoint, state = found
        _check_resumable(state["config"], config, checkpoint)
        model.load_state_dict(state["tensors"]["model.safetensors"])
        if "optimizer.safetensors" in state["tensors"]:
            optimizer.load_state_dict(
                _unflatten_optimizer(state["tensors"]["optimizer.safetensors"], state["optimizer"])
            )
        elif state["step"] < config.steps:  # a recorded run keeps what loading needs only
            raise CheckpointError(
                f"{checkpoint} holds weights without optimizer state (a recorded run, "
                f"hub.record_run): it loads at step {state['step']} but cannot train on to "
                f"{config.steps}. Train into another output_dir, or keep steps={state['step']}."
            )
        names = [n for n, _ in model.named_parameters()]
        ema_tensors = state["tensors"]["ema.safetensors"]
        ema.load_state_dict({**state["ema"], "shadow_params": [ema_tensors[n] for n in names]})
        start = state["step"]
    # lines past the resumed step (or all, with no checkpoint) belong to a lost part of a run;
    # only the main process writes the log (two rewriting it at once race on its temp file)
    if accelerator.is_main_process:
        _truncate_metrics(out / "metrics.jsonl", start)
    accelerator.wait_for_everyone()
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(accelerator.device)
    end = config.steps if stop_after is None else min(config.steps, start + stop_after)
    if accelerator.is_main_process and 0 < start < end:
        print(f"resuming {out} from step {start} of {config.steps}", flush=True)

    bar = None
    if progress and accelerator.is_main_process:
        from tqdm import tqdm  # plain tqdm renders in the static book

        bar = tqdm(total=config.steps, initial=start, desc="train", dynamic_ncols=True)
    metrics_file = out / "metrics.jsonl"
    t0 = t_log = time.perf_counter()
    saved_at = _clock()  # wall time of the last checkpoint, or of this call's start
    step = step_log = start
    while step < end:
        # every process seeds as process 0 and draws the whole global batch's randomness
        # (training_losses keeps its slice): the run does not depend on the number of processes
        gen = torch.Generator().manual_seed(step_seed(config.seed, step))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        idx = batch_indices(step, config, len(dataset), rank, world)
        images, labels = _fetch(dataset, idx)
        # into the diffusion space (latents and latent-grid labels; pixels pass through)
        images, labels = codec.encode_batch(images, labels, config.concepts, keys=idx)
        images = images.to(accelerator.device)
        labels = labels.to(accelerator.device) if labels is not None else None
        neighbour = None  # the "shuffle" baseline of our first L_IE sample reads the sample
        if (  # before it in the global batch: the previous process's last one
            world > 1
            and config.interpretable
            and config.baseline == "shuffle"
            and rank * config.batch_size < config.ie_sub_batch
        ):
            nb_idx = batch_indices(step, config, len(dataset), (rank - 1) % world, world)[-1:]
            neighbour, _ = _fetch(dataset, nb_idx)
            neighbour, _ = codec.encode_batch(neighbour, None, keys=nb_idx)
            neighbour = neighbour.to(accelerator.device)
        with torch.random.fork_rng(devices=[]):
            # dropout stays per process: runs with dropout > 0 (the "paper" preset) are equal
            # across process counts only in distribution
            torch.manual_seed(step_seed(config.seed, step, rank, stream=2))
            with accelerator.autocast():
                losses = training_losses(
                    model,
                    noise_scheduler,
                    images,
                    labels,
                    config,
                    step,
                    gen,
                    rank=rank,
                    world=world,
                    neighbour=neighbour,
                    teacher=teacher,
                )
            accelerator.backward(losses.total)
        grad_norm = None
        if accelerator.sync_gradients and config.grad_clip > 0:
            grad_norm = accelerator.clip_grad_norm_(
                [q for q in model.parameters() if q.requires_grad], config.grad_clip
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(accelerator.unwrap_model(model).parameters())
        step += 1
        loss, loss_ddpm = float(losses.total.detach()), float(losses.ddpm)
        loss_ie, rows = (None if losses.ie is None else float(losses.ie)), losses.rows
        if world > 1:  # the global batch's losses: the processes' shares average to them
            shares = torch.tensor([loss, loss_ddpm, loss_ie or 0.0, rows], dtype=torch.float64)
            shares = accelerator.reduce(shares.to(accelerator.device), "sum").cpu()
            loss, loss_ddpm = float(shares[0]) / world, float(shares[1]) / world
            loss_ie = None if loss_ie is None else float(shares[2]) / world
            rows = int(shares[3])  # forward rows of the whole global batch
        if not math.isfinite(loss):  # the same on every process: all stop together
            raise FloatingPointError(
                f"loss became {loss} at step {step}; lower lr or lambda_start "
                f"(last checkpoint in {out} is intact)."
            )
        if accelerator.is_main_process and (step % config.log_every == 0 or step == end):
            record = {
                "step": step,
                "loss": loss,
                "loss_ddpm": loss_ddpm,
                "loss_ie": loss_ie,
                **({} if losses.teacher is None else {"loss_teacher": float(losses.teacher)}),
                "lambda": losses.lam,
                "lr": lr_at(step - 1, config),
                "grad_norm": None if grad_norm is None else float(grad_norm),
                "rows": rows,
                "seconds": time.perf_counter() - t0,
                "sec_per_step": (time.perf_counter() - t_log) / (step - step_log),
            }
            t_log, step_log = time.perf_counter(), step
            with open(metrics_file, "a") as f:
                f.write(json.dumps(record) + "\n")
        if bar is not None:
            bar.update(1)
            postfix = {"ddpm": f"{loss_ddpm:.4f}"}
            if loss_ie is not None:
                postfix["ie"] = f"{loss_ie:.2e}"
            bar.set_postfix(postfix, refresh=False)
        due = step % config.checkpoint_every == 0 or step == end
        if not due and config.checkpoint_minutes is not None and accelerator.is_main_process:
            # a checkpoint holds the state after a whole step: resuming from it is exact too
            due = _clock() - saved_at >= 60 * config.checkpoint_minutes
        if accelerator.is_main_process and due:
            save_checkpoint(
                out,
                step,
                accelerator.unwrap_model(model),
                optimizer,
                ema,
                config,
                scheduler_config=noise_scheduler.config,
            )
            for old in list_checkpoints(out)[: -config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
            saved_at = _clock()  # the interval counts from the written checkpoint
        accelerator.wait_for_everyone()
    if bar is not None:
        bar.close()
    codec = None if isinstance(codec, PixelCodec) else codec
    return TrainResult(out, step, metrics_file, time.perf_counter() - t0, codec)


_MAY_CHANGE_ON_RESUME = {"steps", *BOOKKEEPING}


#: Keys added after runs and records were made, with the default that reproduces those runs.
_LATER_KEYS: dict[str, Any] = {
    "snr_gamma": None,
    "teacher_weight": 0.0,
    "trainable": "all",
    "ie_outside": "one",
}


def drop_later_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a config as a dict) without the keys added after runs and records were made
    (:data:`_LATER_KEYS`) where they hold their default: hashes of old recipes stay valid."""
    return {k: v for k, v in data.items() if not (k in _LATER_KEYS and v == _LATER_KEYS[k])}


_IE_KEYS = {
    "concepts",
    "dilation",
    "baseline",
    "game_value",
    "lambda_start",
    "lambda_floor",
    "lambda_decay_steps",
    "ie_sub_batch",
    "ie_exact_max_players",
    "ie_samples",
    "ie_constraint",
    "ie_outside",
    "ie_t_min",
    "ie_t_weight",
}


def _check_resumable(saved: dict[str, Any], config: TrainConfig, where: Path) -> None:
    now = config.to_dict()
    # keys added after a run was saved take their defaults (the behaviour the run was trained with)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    ignore = set(_MAY_CHANGE_ON_RESUME)
    if not now["interpretable"] and not saved.get("interpretable"):
        ignore |= _IE_KEYS
    # an absolute init_from / autoencoder counts by its last part, as in the fingerprint: an
    # artifact cache moved to another folder (or machine) still loads its finished runs
    for key in ("init_from", "autoencoder"):
        a, b = saved.get(key), now.get(key)
        if a and b and os.path.isabs(a) and os.path.isabs(b) and Path(a).name == Path(b).name:
            ignore.add(key)
    diff = sorted(k for k in now if k not in ignore and saved.get(k) != now[k])
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in diff)
        raise ConfigError(
            f"{where} was trained with a different config ({details}). Use another output_dir, "
            "or restore those values to resume."
        )


def _truncate_metrics(path: Path, step: int) -> None:
    """Repair the log for a run resumed at ``step``: drop the lines past it (they belong to the
    lost part of the run) and every undecodable line (a write torn by a crash), the latter with
    a warning naming the file and line number."""
    if not path.is_file():
        return
    keep = []
    for number, line, record in _metrics_records(path):
        if record is None or not isinstance(record.get("step"), int):
            warnings.warn(
                f"{path}, line {number}: dropping an undecodable line (a torn write?): "
                f"{line[:80]!r}",
                RuntimeWarning,
                stacklevel=3,
            )
        elif record["step"] <= step:
            keep.append(line)
    text = "".join(line + "\n" for line in keep)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def interruption_report(error: BaseException, config: TrainConfig) -> str:
    """One line for a :func:`train` call stopped by ``error`` (Ctrl-C: ``KeyboardInterrupt``):
    the step it had reached and the checkpoint a new call resumes from.

    No checkpoint is written on interrupt: the signal may land between the optimizer's and the
    EMA's updates of a step, and a checkpoint of that state would break the exact resume. The
    step is read from the frame of train's body (``_train_locked``) in the traceback (its local
    ``step``: the steps done).
    """
    step = None
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is _train_locked.__code__:  # train's body (it holds the lock)
            step = tb.tb_frame.f_locals.get("step")
        tb = tb.tb_next
    checkpoints = list_checkpoints(config.output_dir)
    where = (
        f"last checkpoint {checkpoints[-1]}"
        if checkpoints
        else f"no checkpoint yet in {config.output_dir}"
    )
    reached = f"stopped at step {step}" if isinstance(step, int) else "stopped before training"
    return f"{reached}, {where} (run the same command again to resume from it)"
