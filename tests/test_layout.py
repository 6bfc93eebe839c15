"""The library's layout: the trainer package keeps every name the single module had, and the
wheel ships every module of the library (subpackages included)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import interpddpm
from interpddpm import training

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = Path(interpddpm.__file__).parent

#: Every public name of ``interpddpm/training.py`` before it became a package, and the private
#: ones other modules, benchmarks or tests imported from it.
OLD_TRAINING_NAMES = (
    "BETA_SCHEDULES BOOKKEEPING CHECKPOINT_PREFIX IE_CONSTRAINTS IE_T_WEIGHTS MAX_EXACT_REGIONS "
    "TRAINABLE CheckpointError Codec ConfigError LockedError MetricsLogError PixelCodec "
    "RunDirError StepLosses TrainConfig TrainResult batch_indices check_codec check_init_from "
    "check_init_size check_precision check_preset_size check_startable drop_later_defaults "
    "ie_design ie_sample_weights interruption_report json_digest lambda_at "
    "latest_verified_checkpoint list_checkpoints load_run_model lr_at min_snr_weights "
    "native_bf16 precision_label read_checkpoint read_metrics read_verified_record "
    "resolve_mixed_precision save_checkpoint select_cuda_device step_seed train "
    "trainable_parameters training_dataset training_losses "
    "_HUB_MODEL_ID _fetch _initial_model _noise_scheduler _sha256"
).split()

#: Where each part of the trainer lives now.
HOMES = {
    "config": ("TrainConfig", "ConfigError", "BOOKKEEPING", "drop_later_defaults"),
    "losses": ("training_losses", "lambda_at", "lr_at", "step_seed", "ie_design"),
    "checkpoints": ("save_checkpoint", "read_checkpoint", "read_metrics", "CheckpointError"),
    "codec": ("Codec", "PixelCodec", "load_run_model", "check_startable", "training_dataset"),
    "loop": ("train", "TrainResult", "interruption_report"),
}


def test_every_name_of_the_old_module_imports_from_the_package() -> None:
    missing = [name for name in OLD_TRAINING_NAMES if not hasattr(training, name)]
    assert not missing, f"interpddpm.training lost {missing}"
    assert set(training.__all__) <= set(dir(training))
    assert {n for n in OLD_TRAINING_NAMES if not n.startswith("_")} <= set(training.__all__)


@pytest.mark.parametrize("module", sorted(HOMES))
def test_the_package_re_exports_the_objects_of_their_home_module(module: str) -> None:
    home = getattr(training, module)
    for name in HOMES[module]:
        obj = getattr(home, name)
        if callable(obj):  # a function or class: defined there, not imported there
            assert obj.__module__ == f"interpddpm.training.{module}", name
        assert getattr(training, name) is getattr(home, name), name


def test_the_wheel_ships_every_library_module(tmp_path: Path) -> None:
    """``make dist``'s wheel holds every ``.py`` of ``interpddpm/``, its subpackages included
    (built from a copy, so that the checkout gets no build folders)."""
    pytest.importorskip("setuptools", reason="make dist builds with the venv's setuptools")
    src = tmp_path / "src"
    shutil.copytree(LIBRARY, src / "interpddpm", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    # the records the wheel carries as interpddpm/_data (pyproject.toml's package-dir)
    shutil.copytree(ROOT / "book" / "data", src / "book" / "data")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(tmp_path / "dist"), str(src)], check=True)
    (wheel,) = (tmp_path / "dist").glob("interpddpm-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    expected = {p.relative_to(src).as_posix() for p in (src / "interpddpm").rglob("*.py")}
    assert "interpddpm/training/losses.py" in expected
    assert expected == shipped, f"missing {sorted(expected - shipped)}"
