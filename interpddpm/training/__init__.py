"""One trainer for plain DDPM training and interpretable fine-tuning, eq. (9) (chapter 5; the
latent runs of chapter 10 train through it too).

The package, one idea a module:

- :mod:`~interpddpm.training.config`: :class:`TrainConfig` (every key of a run, coerced and
  validated), :class:`ConfigError`, the key sets and the rules for resuming a run;
- :mod:`~interpddpm.training.losses`: the loss of one step, ``L = L_DDPM + lambda(step) * L_IE``
  (eq. 9, with ``L_IE`` eq. 8 on the denoiser game), its lambda and lr schedules, the per-step
  seeds, the coalition design and the min-SNR weights;
- :mod:`~interpddpm.training.checkpoints`: a run's files: checkpoints (save, list, verify, read,
  resume) and the training log ``metrics.jsonl``;
- :mod:`~interpddpm.training.codec`: what a run trains on: the :class:`Codec` protocol,
  :class:`PixelCodec`, the dataset, the checks before anything loads, :func:`load_run_model`;
- :mod:`~interpddpm.training.loop`: :func:`train` (the accelerate loop, with EMA and exact
  resume) and :func:`interruption_report`.

Every public name is importable from here (``from interpddpm.training import train``), and
so are the names this package re-exported before it was split (the precision helpers of
:mod:`interpddpm.devices`, ``json_digest``, ``RunDirError``, ``LockedError``). Code that patches
a name for a test patches it in the module that holds it (``interpddpm.training.loop``), not
here: the trainer does not look names up through this package.
"""

from ..artifacts import json_digest
from ..devices import check_precision, native_bf16, precision_label, resolve_mixed_precision
from ..errors import RunDirError
from ..locks import LockedError
from .checkpoints import (
    CHECKPOINT_FILES,
    CHECKPOINT_PREFIX,
    TMP_PREFIX,
    CheckpointError,
    MetricsLogError,
    append_metrics,
    checkpoint_step,
    latest_verified_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    read_checkpoint,
    read_metrics,
    read_verified_record,
    remove_stale_temps,
    resume,
    save_checkpoint,
)
from .codec import (
    HUB_MODEL_ID,
    Codec,
    PixelCodec,
    check_codec,
    check_init_from,
    check_init_size,
    check_memory,
    check_preset_size,
    check_startable,
    fetch_batch,
    host_memory,
    load_run_model,
    run_noise_scheduler,
    training_dataset,
)
from .config import (
    BETA_SCHEDULES,
    BOOKKEEPING,
    IE_CONSTRAINTS,
    IE_T_WEIGHTS,
    MAX_EXACT_REGIONS,
    MAX_STEPS,
    MAX_TIMESTEPS,
    SEED_LIMIT,
    TRAINABLE,
    ConfigError,
    TrainConfig,
    check_resumable,
    drop_later_defaults,
)
from .loop import DivergedError, TrainResult, interruption_report, select_cuda_device, train
from .losses import (
    StepLosses,
    batch_indices,
    ie_design,
    ie_sample_weights,
    lambda_at,
    lr_at,
    min_snr_weights,
    step_seed,
    trainable_parameters,
    training_losses,
)

__all__ = [
    "BETA_SCHEDULES",
    "BOOKKEEPING",
    "CHECKPOINT_FILES",
    "CHECKPOINT_PREFIX",
    "HUB_MODEL_ID",
    "IE_CONSTRAINTS",
    "IE_T_WEIGHTS",
    "MAX_EXACT_REGIONS",
    "MAX_STEPS",
    "MAX_TIMESTEPS",
    "SEED_LIMIT",
    "TMP_PREFIX",
    "TRAINABLE",
    "CheckpointError",
    "Codec",
    "ConfigError",
    "DivergedError",
    "LockedError",
    "MetricsLogError",
    "PixelCodec",
    "RunDirError",
    "StepLosses",
    "TrainConfig",
    "TrainResult",
    "append_metrics",
    "batch_indices",
    "check_codec",
    "check_init_from",
    "check_init_size",
    "check_memory",
    "check_precision",
    "check_preset_size",
    "check_resumable",
    "check_startable",
    "checkpoint_step",
    "drop_later_defaults",
    "fetch_batch",
    "host_memory",
    "ie_design",
    "ie_sample_weights",
    "interruption_report",
    "json_digest",
    "lambda_at",
    "latest_verified_checkpoint",
    "list_checkpoints",
    "load_run_model",
    "lr_at",
    "min_snr_weights",
    "native_bf16",
    "precision_label",
    "prune_checkpoints",
    "read_checkpoint",
    "read_metrics",
    "read_verified_record",
    "remove_stale_temps",
    "resolve_mixed_precision",
    "resume",
    "run_noise_scheduler",
    "save_checkpoint",
    "select_cuda_device",
    "step_seed",
    "train",
    "trainable_parameters",
    "training_dataset",
    "training_losses",
]
