"""Held-out faces (issue 26): the last rows of a real dataset, which no run trains on.

The stand-in CelebAMask-HQ of ``tests/gpu_standins.py`` is in the hub copy's real format (a
parquet snapshot in the hub cache, read offline); the check runs in a subprocess because
``huggingface_hub`` reads ``HF_HOME`` when it is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
import gpu_standins  # noqa: E402  (a helper module of this folder, not a test module)


@pytest.mark.parametrize("total", [0, 1, 7, 520, 3999, 4000, 30_000])
def test_parts_are_disjoint_and_cover_the_rows(total: int) -> None:
    from interpddpm.datasets import HELD_OUT_ROWS, part_rows

    train, held = set(part_rows(total, "train")), set(part_rows(total, "held-out"))
    assert not train & held
    assert train | held == set(part_rows(total, "all")) == set(range(total))
    if train and held:
        assert max(train) < min(held)  # held-out rows come last
    if total >= 2 * HELD_OUT_ROWS:
        assert len(held) == HELD_OUT_ROWS  # the hub copy's 30,000 rows: the last 2,000


def test_unknown_part_is_refused() -> None:
    from interpddpm.datasets import part_rows

    with pytest.raises(ValueError, match="held-out"):
        part_rows(10, "test")


def test_no_run_trains_on_held_out_faces(tmp_path: Path) -> None:
    """What the trainer reads (``training.training_dataset``) and what every held-out use reads
    (``runs.faces``) share no face, on the stand-in hub dataset; together they are the whole."""
    n = 24
    gpu_standins.build_dataset(tmp_path / "hf", n=n, prepared=False)
    code = f"""
import dataclasses, hashlib, json
from interpddpm import runs
from interpddpm.datasets import get_dataset
from interpddpm.profiles import PROFILES
from interpddpm.training import TrainConfig, training_dataset

def digests(images):
    return [hashlib.sha256(x.numpy().tobytes()).hexdigest() for x in images]

train = training_dataset(TrainConfig(dataset="celebamask-hq", image_size=32))
every = get_dataset("celebamask-hq", 32)
p = dataclasses.replace(PROFILES["smoke"], name="held-out-test", dataset="celebamask-hq")
held, labels = runs.faces(p, {n // 2}, seed=0)
print(json.dumps({{
    "train": digests(train.batch(range(len(train)))[0]),
    "held": digests(held),
    "all": digests(every.batch(range(len(every)))[0]),
    "labels": labels is not None,
}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "INTERPDDPM_"))}
    env.update(
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        INTERPDDPM_CACHE=str(tmp_path / "cache"),
        INTERPDDPM_PROFILE="smoke",
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert len(set(found["all"])) == n  # the stand-in faces are all different
    assert len(found["train"]) == n // 2 and len(found["held"]) == n // 2
    assert not set(found["train"]) & set(found["held"])
    assert set(found["train"]) | set(found["held"]) == set(found["all"])
    assert found["held"] and found["labels"]
