"""The wheel of this checkout, installed into a fresh virtual environment outside it (issue 26).

A helper module of this folder (not a test module): ``conftest.py`` builds one such environment
per session (the ``installed`` fixture), which ``test_wheel.py`` (the records the package
carries) and ``test_gpu_path.py`` (chapters 04-12 on the gpu path's stand-ins, each kernel
importing the installed package, as a Colab user's does) share.

``pip install --no-deps`` puts the wheel into the environment; its dependencies come from this
interpreter's site-packages (a ``.pth`` file computed here), so the tests stay offline.
"""

from __future__ import annotations

import dataclasses
import os
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Installed:
    python: Path  # the fresh environment's interpreter
    purelib: Path  # where the wheel went
    wheel: Path  # the wheel itself (``make dist``'s command)


def install_wheel(tmp: Path) -> Installed:
    """Build the wheel of this checkout into ``tmp`` and install it with ``--no-deps`` into a
    fresh virtual environment there, whose dependencies are this interpreter's."""
    wheels = tmp / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("interpddpm-*.whl")

    env_dir = tmp / "venv"
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
    return Installed(python, Path(purelib), wheel)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without ``PYTHONPATH`` (which may name the checkout)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env
