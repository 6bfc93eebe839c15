"""The configuration of a training run (chapter 5): :class:`TrainConfig`, its coercion and
validation, the key sets (:data:`BOOKKEEPING`, the ``L_IE`` keys, the keys added later) and the
rules for resuming a run under a changed config (:func:`check_resumable`).

A config is what a run learns plus where and how often it is saved; every checkpoint stores it
(:mod:`interpddpm.training.checkpoints`), and its :meth:`TrainConfig.fingerprint` names the run
folders of :mod:`interpddpm.runs`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..artifacts import json_digest
from ..devices import resolve_mixed_precision
from ..errors import UserError
from ..regions import BASELINES, DEFAULT_BASELINE, OUTSIDES
from ..toyfaces import CONCEPTS
from ..toyfaces import MIN_SIZE as TOY_MIN_SIZE

#: Largest K for which the trainer will enumerate all 2**K coalitions per sample.
MAX_EXACT_REGIONS = 10
#: The most steps a count of steps may say (``steps``, ``lr_warmup_steps``, ...): a billion
#: steps is years of training, and larger counts overflow the trainer's int64 data positions.
MAX_STEPS = 10**9
#: The most diffusion timesteps (``num_train_timesteps``; DDPM uses 1000).
MAX_TIMESTEPS = 10**6
#: Seeds are those torch accepts: ints in [0, 2**64).
SEED_LIMIT = 2**64
IE_CONSTRAINTS = ("two_sided", "one_sided")
IE_T_WEIGHTS = ("uniform", "noise")
#: What a run trains: every weight, or only the UNet's decoder (its up blocks and output head).
TRAINABLE = ("all", "decoder")


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
_LATER_IN_DICT: dict[str, Any] = {**_LATER_BOOKKEEPING, "ie_outside": "one", "ie_rows": None}


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
    if kind == "int | None":
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        return _coerce_field(key, "int", value)
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
    # coalition rows per L_IE sample besides the grand one (issue 29): None, all 2**K - 1 of
    # the exact design (or the pooled estimator's past ie_exact_max_players); m in
    # [2, 2**K - 1], m of them drawn per sample (theorem.row_subsample), the loss unbiased
    # (theorem.row_subsample_loss): more samples for the same rows, a cheaper step
    ie_rows: int | None = None
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
        self._validate_limits()
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
        if self.ie_rows is not None:
            if self.ie_rows < 2:
                raise ConfigError(
                    f"ie_rows must be None or at least 2 (a term of L_IE compares two "
                    f"coalitions), got {self.ie_rows}."
                )
            if self.interpretable and self.ie_rows > 2**k - 1:
                raise ConfigError(
                    f"ie_rows={self.ie_rows} but K = {k} players have only 2**K - 1 = "
                    f"{2**k - 1} coalitions besides the grand one; use at most {2**k - 1} "
                    "(or None: all of them)."
                )
            if self.interpretable and k > self.ie_exact_max_players:
                raise ConfigError(
                    f"ie_rows draws its rows from the exact design, but K = {k} > "
                    f"ie_exact_max_players = {self.ie_exact_max_players}; raise "
                    "ie_exact_max_players to K, or set ie_rows=None (pooled ie_samples)."
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

    def _validate_limits(self) -> None:
        """Upper bounds of counts (a typo such as ``steps=1e30`` is refused, not run)."""
        counts = ("steps", "lr_warmup_steps", "lambda_decay_steps", "checkpoint_every", "log_every")
        for name in counts:
            v = getattr(self, name)
            if v > MAX_STEPS:
                raise ConfigError(
                    f"{name}={v:.4g} is more than the limit of {MAX_STEPS:,} steps (years of "
                    "training); use a smaller count."
                )
        if self.num_train_timesteps > MAX_TIMESTEPS:
            raise ConfigError(
                f"num_train_timesteps={self.num_train_timesteps:.4g} is more than the limit of "
                f"{MAX_TIMESTEPS:,} (the noise schedule holds one value per step; DDPM uses 1000)."
            )
        for name in ("seed", "data_seed"):
            if getattr(self, name) >= SEED_LIMIT:
                raise ConfigError(
                    f"{name} must be an int in [0, 2**64) (the seeds torch takes), got "
                    f"{getattr(self, name)}."
                )

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
        from ..datasets import DATASET_NAMES

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
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as err:
            detail = " ".join(str(err).split())
            raise ConfigError(
                f"{path} is not valid YAML or JSON ({detail}); write one `key: value` per line, "
                "or a JSON object."
            ) from err
        if data is None:  # an empty file would silently train the default run
            raise ConfigError(
                f"{path} holds no config keys (it is empty or only comments); write one "
                "`key: value` per line, e.g. `steps: 500`."
            )
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path}: expected a mapping of config keys, got {type(data).__name__}."
            )
        return cls.from_dict(data)

    def ie_rows_per_sample(self) -> int:
        """Coalition rows one ``L_IE`` sample adds to the forward pass besides its grand
        coalition (the batch row): ``ie_rows``, else ``2**K - 1`` (exact) or ``C + K + 1``
        (pooled, past ``ie_exact_max_players``); 0 for a plain run."""
        if not self.interpretable:
            return 0
        k = len(self.concepts) + 1
        if self.ie_rows is not None:
            return self.ie_rows
        return 2**k - 1 if k <= self.ie_exact_max_players else self.ie_samples + k + 1

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
# The key sets and the resume rules
# ------------------------------------------------------------------------------------------
_MAY_CHANGE_ON_RESUME = {"steps", *BOOKKEEPING}


#: Keys added after runs and records were made, with the default that reproduces those runs.
_LATER_KEYS: dict[str, Any] = {
    "snr_gamma": None,
    "teacher_weight": 0.0,
    "trainable": "all",
    "ie_outside": "one",
    "ie_rows": None,
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
    "ie_rows",
    "ie_constraint",
    "ie_outside",
    "ie_t_min",
    "ie_t_weight",
}


def check_resumable(saved: dict[str, Any], config: TrainConfig, where: Path) -> None:
    """Refuse to resume the run saved at ``where`` (its config ``saved``) with ``config`` when
    they differ in anything but ``steps`` and the bookkeeping keys (and, between two plain runs,
    the ``L_IE`` keys): a :class:`ConfigError` lists each key with both values."""
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
