"""Session-wide test settings.

Every test, and every notebook kernel that nbval or papermill starts during the session,
runs with the ``smoke`` profile and a fresh temporary artifact cache. The variables are set
when pytest imports this file (before any kernel starts) so the kernels inherit them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_CACHE = tempfile.mkdtemp(prefix="interpddpm-test-cache-")
atexit.register(shutil.rmtree, _CACHE, True)
os.environ["INTERPDDPM_PROFILE"] = "smoke"
os.environ["INTERPDDPM_CACHE"] = _CACHE
os.environ.pop("INTERPDDPM_RUNS_FROM", None)  # runs are trained here, never fetched
# jobs keep torch's thread count (no per-job choice from the load): tiny jobs, bit-equal reruns
os.environ["INTERPDDPM_THREADS"] = "keep"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository under test."""
    return ROOT


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run faster on one thread, and far faster on a busy machine (thread
    spinning); a module opts in with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory):
    """The wheel of this checkout in a fresh virtual environment outside it (``wheel_env``),
    built once per session: ``test_wheel.py`` and ``test_gpu_path.py`` share it."""
    import wheel_env

    return wheel_env.install_wheel(tmp_path_factory.mktemp("wheel"))
