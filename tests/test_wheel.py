"""The installed package carries what the chapters read (issue 26).

The session's ``installed`` fixture (``conftest.py``, ``wheel_env.py``) builds the wheel and
installs it with ``pip install --no-deps`` into a fresh virtual environment OUTSIDE the checkout
(no ``book/`` beside it) whose dependencies come from this interpreter's site-packages (so the
test stays offline). From there: ``profiles.book_data`` finds the records in the package
(chapter 12's sweep, the single-concept record, the cpu profile's recorded baseline), chapter
12's sweep loads its record on the gpu path, and with the record removed it REFUSES (the cost
and ``recompute``) instead of training. Chapters 04-12 run from the same installed package in
``test_gpu_path.py`` (each kernel imports it; chapter 12 without its record refuses there).
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

from wheel_env import Installed, clean_env

import interpddpm

CHECK = r"""
import json, sys
from pathlib import Path
import interpddpm
from interpddpm import ablations, profiles
from interpddpm.errors import UserError

out = {"module": interpddpm.__file__}
for name in ("ablations-cpu.json", "single-concept-cpu.json", "runs-cpu"):
    path = profiles.book_data(name)
    out[name] = [str(path), path.exists()]
gpu = profiles.PROFILES["gpu"]
out["sweep"] = ablations.sweep(gpu)["source"]
record = Path(profiles.book_data("ablations-cpu.json"))
record.rename(record.with_suffix(".away"))  # a package without its record
try:
    ablations.sweep(gpu)
    out["refused"] = None
except UserError as error:
    out["refused"] = str(error)
finally:
    record.with_suffix(".away").rename(record)
print(json.dumps(out))
"""


def test_the_wheel_carries_the_records_and_refuses_without_them(
    installed: Installed, tmp_path: Path
) -> None:
    python, purelib = installed.python, installed.purelib
    work = tmp_path / "elsewhere"  # no book/, no pyproject.toml above it
    work.mkdir()
    env = clean_env(INTERPDDPM_PROFILE="smoke", INTERPDDPM_CACHE=str(tmp_path / "cache"))
    done = subprocess.run(
        [str(python), "-c", CHECK], cwd=work, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert Path(found["module"]).is_relative_to(purelib), found["module"]  # not the checkout
    for name in ("ablations-cpu.json", "single-concept-cpu.json", "runs-cpu"):
        path, exists = found[name]
        assert exists and Path(path).is_relative_to(purelib), (name, path)
    assert "the cpu profile's record" in found["sweep"]
    refused = found["refused"]
    assert refused is not None, "the sweep trained instead of refusing"
    assert "recompute = True" in refused and " h on a T4" in refused


def test_the_wheel_ships_every_library_module(installed: Installed) -> None:
    """``make dist``'s wheel holds every ``.py`` of ``interpddpm/``, its subpackages included:
    the session's wheel, built from this checkout with ``make dist``'s command (``pip wheel
    --no-deps --no-build-isolation``, ``wheel_env``)."""
    library = Path(interpddpm.__file__).parent
    shipped = {n for n in zipfile.ZipFile(installed.wheel).namelist() if n.endswith(".py")}
    expected = {p.relative_to(library.parent).as_posix() for p in library.rglob("*.py")}
    assert "interpddpm/training/losses.py" in expected
    assert expected == shipped, f"missing {sorted(expected - shipped)}"
