"""Profiles and the artifact cache: Google Drive on Colab (issue 11)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from interpddpm import profiles, runs
from interpddpm.errors import UserError
from interpddpm.profiles import cache_dir, cache_root


@pytest.fixture
def colab(monkeypatch, tmp_path: Path) -> Path:
    """A Colab runtime whose Drive would be mounted at ``tmp_path/drive`` (not mounted yet),
    with no INTERPDDPM_CACHE and no artifact folder announced yet; returns MyDrive."""
    drive = tmp_path / "drive" / "MyDrive"
    monkeypatch.setattr(profiles, "DRIVE_ROOT", drive)
    monkeypatch.setattr(profiles, "on_colab", lambda: True)
    monkeypatch.setattr(profiles, "_announced", set())
    monkeypatch.delenv(profiles.ENV_CACHE, raising=False)
    return drive


def test_colab_is_detected_by_module_or_variable(monkeypatch) -> None:
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert not profiles.on_colab()
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20250101-060000_RC00")
    assert profiles.on_colab()
    monkeypatch.delenv("COLAB_RELEASE_TAG")
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert profiles.on_colab()


def test_colab_with_drive_mounted_keeps_artifacts_on_drive(colab: Path, capsys) -> None:
    colab.mkdir(parents=True)  # drive.mount() done
    out = cache_dir("smoke")
    assert out == colab / "interpddpm" / "_artifacts" / "smoke" and out.is_dir()
    assert cache_dir("cpu").parent == out.parent
    lines = capsys.readouterr().out.splitlines()  # named once per process, not per call
    assert lines == [f"interpddpm artifacts (runs, checkpoints): {out.parent} (on Google Drive)"]


def test_colab_without_drive_keeps_the_old_folder(colab: Path, monkeypatch, capsys) -> None:
    base = cache_root()
    assert not base.is_relative_to(colab.parent)
    assert "mount Google Drive to keep them" in capsys.readouterr().out
    monkeypatch.setattr(profiles, "on_colab", lambda: False)
    assert cache_root() == base  # the folder used away from Colab
    assert capsys.readouterr().out == ""


def test_cache_on_an_unmounted_drive_is_refused(colab: Path, monkeypatch) -> None:
    monkeypatch.setenv(profiles.ENV_CACHE, str(colab / "interpddpm"))
    with pytest.raises(UserError, match="not mounted") as err:
        cache_dir("smoke")
    drive = colab.parent
    assert f'from google.colab import drive; drive.mount("{drive}")' in str(err.value)
    assert "unset INTERPDDPM_CACHE" in str(err.value)
    assert not drive.exists()  # nothing written where the mount would go
    colab.mkdir(parents=True)  # mounted: the same setting works
    assert cache_dir("smoke") == colab / "interpddpm" / "smoke"


def test_cache_set_elsewhere_is_unchanged(colab: Path, monkeypatch, tmp_path, capsys) -> None:
    colab.mkdir(parents=True)
    monkeypatch.setenv(profiles.ENV_CACHE, str(tmp_path / "elsewhere"))
    assert cache_dir("smoke") == tmp_path / "elsewhere" / "smoke"
    assert capsys.readouterr().out == ""


def test_long_profiles_checkpoint_on_the_clock(monkeypatch, tmp_path) -> None:
    """gpu and paper runs checkpoint every 10 minutes too; it is bookkeeping: the run folders
    (fingerprints) are those of the same config without it."""
    monkeypatch.setenv(profiles.ENV_CACHE, str(tmp_path))
    for name, minutes in (("smoke", None), ("cpu", None), ("gpu", 10.0), ("paper", 10.0)):
        p = profiles.PROFILES[name]  # not get_profile: it warns of a gpu profile on a CPU
        assert p.checkpoint_minutes == minutes
        for config in (runs.baseline_config(p), runs.finetune_config(p, ["nose"])):
            assert config.checkpoint_minutes == minutes
            untimed = config.replace(checkpoint_minutes=None)
            assert untimed.fingerprint() == config.fingerprint()


def test_faces_line_names_what_a_profile_reads() -> None:
    """The line at the top of chapters 04-12: toy faces on cpu; on gpu the dataset, BiSeNet,
    Inception and how to read the cpu-written prose."""
    import warnings

    from interpddpm.profiles import get_profile

    cpu = get_profile("cpu")
    assert not cpu.real_faces and "toy faces, 32 px" in cpu.faces_line()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gpu sizes on a CPU warn
        gpu = get_profile("gpu")
    line = gpu.faces_line(gpu.ldm_image_size)
    assert gpu.real_faces
    for part in ("celebamask-hq, 256 px", "BiSeNet", "Inception", "means these faces"):
        assert part in line, part
