"""The installed package carries what the chapters read (issue 26).

Builds the wheel, installs it with ``pip install --no-deps`` into a fresh virtual environment
OUTSIDE the checkout (no ``book/`` beside it) whose dependencies come from this interpreter's
site-packages (a ``.pth`` file computed here, so the test stays offline), and checks from there:
``profiles.book_data`` finds the records in the package (chapter 12's sweep, the single-concept
record, the cpu profile's recorded baseline), chapter 12's sweep loads its record on the gpu
path, and with the record removed it REFUSES (the cost and ``recompute``) instead of training.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

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
Path(profiles.book_data("ablations-cpu.json")).unlink()  # a package without its record
try:
    ablations.sweep(gpu)
    out["refused"] = None
except UserError as error:
    out["refused"] = str(error)
print(json.dumps(out))
"""


def test_the_wheel_carries_the_records_and_refuses_without_them(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("interpddpm-*.whl")

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # the dependencies: this interpreter's site-packages, but not the checkout (an editable
    # install's path hook or finder would import the checkout's interpddpm)
    ours = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    (Path(purelib) / "deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
         "--target", purelib, str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]

    work = tmp_path / "elsewhere"  # no book/, no pyproject.toml above it
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(INTERPDDPM_PROFILE="smoke", INTERPDDPM_CACHE=str(tmp_path / "cache"))
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
