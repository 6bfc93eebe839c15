"""Session-wide test settings.

Every test, and every notebook kernel that nbval or papermill starts during the session,
runs with the ``smoke`` profile and a fresh temporary artifact cache. The variables are set
when pytest imports this file (before any kernel starts) so the kernels inherit them.

``make test`` runs the suite in two pytest-xdist workers (``-n 2 --dist loadscope``). Each
worker imports this file, so each has its own artifact cache, and each runs
``OMP_NUM_THREADS`` = cores / workers torch threads (two 2-thread jobs on two cores wait on
each other's descheduled threads: :mod:`interpddpm.threads`). :func:`xdist_scope` keeps
together, in one worker, what shares an expensive fixture or a cache: the smoke book and the
notebooks (nbval reuses the runs the book trained), the installed wheel's tests, each module's
tests (its module fixtures); the expensive groups are queued first (:data:`HEAVY_SCOPES`).
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
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:  # before torch is imported here or in a kernel; a user's setting wins
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

#: Scopes queued first, one worker each, while the other worker takes the rest.
HEAVY_SCOPES = ("book", "wheel")
#: Test files of the heavy scopes: the smoke book (``built_book``), the installed wheel
#: (``installed``, which ``test_gpu_path.py`` runs chapters 04-12 from).
_SCOPE_FILES = {
    "tests/test_book.py": "book",
    "tests/test_wheel.py": "wheel",
    "tests/test_gpu_path.py": "wheel",
}


def xdist_scope(nodeid: str) -> str:
    """The pytest-xdist scope (one worker runs a scope's tests, in order) of a test id
    (``tests/test_book.py::test_x[a]``, ``notebooks/05_training.ipynb::Cell 3``): ``book``
    for the book's tests and every notebook (nbval executes them with the runs the book
    trained in this worker's cache, and a notebook's cells share one kernel), ``wheel`` for the
    installed wheel's, else the test's file (its module fixtures are built once)."""
    path = nodeid.split("::", 1)[0]
    if path.startswith("notebooks/") and path.endswith(".ipynb"):
        return "book"
    return _SCOPE_FILES.get(path, path)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, which may be absent
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``--dist loadscope`` with :func:`xdist_scope`'s scopes, in the workers' collection order
    (:func:`pytest_collection_modifyitems` puts the heavy scopes first). (``--dist loadgroup``
    with ``xdist_group`` marks does not group on pytest 9.2: pytest-xdist 3.8 marks a group by
    rewriting ``item._nodeid``, which pytest no longer reads; pytest-xdist issue 1386.)"""
    if config.getoption("dist", "no") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    config.option.loadscopereorder = False  # keep the heavy scopes first
    return Scheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist worker (whose collection the scheduler queues in order), the heavy scopes
    first, each test's order within its scope kept."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: i for i, name in enumerate(HEAVY_SCOPES)}
        items.sort(key=lambda item: rank.get(xdist_scope(item.nodeid), len(rank)))  # stable


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
