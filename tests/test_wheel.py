"""The installed package carries what the chapters read (issue 26).

Builds the wheel, installs it with ``pip install --no-deps`` into a fresh virtual environment
OUTSIDE the checkout (no ``book/`` beside it) whose dependencies come from this interpreter's
site-packages (a ``.pth`` file computed here, so the test stays offline), and checks from there:
``profiles.book_data`` finds the records in the package (chapter 12's sweep, the single-concept
record, the cpu profile's recorded baseline), chapter 12's sweep loads its record on the gpu
path, and with the record removed it REFUSES (the cost and ``recompute``) instead of training.
"""

from __future__ import annotations

import dataclasses
import json
import os
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

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


@dataclasses.dataclass
class Installed:
    python: Path  # the fresh environment's interpreter
    purelib: Path  # where the wheel went


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel of this checkout, installed with ``--no-deps`` into a fresh virtual
    environment outside the checkout, whose dependencies are this interpreter's."""
    tmp = tmp_path_factory.mktemp("wheel")
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
    return Installed(python, Path(purelib))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


def test_the_wheel_carries_the_records_and_refuses_without_them(
    installed: Installed, tmp_path: Path
) -> None:
    python, purelib = installed.python, installed.purelib
    work = tmp_path / "elsewhere"  # no book/, no pyproject.toml above it
    work.mkdir()
    env = _env(INTERPDDPM_PROFILE="smoke", INTERPDDPM_CACHE=str(tmp_path / "cache"))
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


#: Run in the fresh environment: chapters 04-12 on the gpu path's stand-ins (as
#: tests/test_gpu_path.py runs them) through the INSTALLED package's executor, from a book
#: folder that holds only the notebooks and the table of contents (no interpddpm/, no book/),
#: then chapter 12 once more with its record moved away. Prints one JSON line.
CHAPTERS = r"""
import json, os, shutil, sys, time
from pathlib import Path

tests, root, src = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
sys.path.insert(0, str(tests))
import gpu_standins
from interpddpm import book, profiles

bookroot = root / "book-only"
shutil.copytree(src / "notebooks", bookroot / "notebooks")
shutil.copy(src / "_config.yml", bookroot / "_config.yml")
import yaml  # the table of contents without the prose pages of book/
toc = yaml.safe_load((src / "_toc.yml").read_text())
parts = [{**part, "chapters": [c for c in part["chapters"] if c["file"].startswith("notebooks/")]}
         for part in toc["parts"]]
toc["parts"] = [part for part in parts if part["chapters"]]
toc["root"] = toc["parts"][0]["chapters"].pop(0)["file"]
(bookroot / "_toc.yml").write_text(yaml.safe_dump(toc))
hf = root / "hf"
gpu_standins.build_hub(hf, root)
startup = root / "ipython" / "profile_default" / "startup" / "00-gpu-standins.py"
startup.parent.mkdir(parents=True)
audit = root / "device-audit.jsonl"
startup.write_text(
    f"import sys\nsys.path.insert(0, {str(tests)!r})\nimport gpu_standins\n"
    "gpu_standins.install()\nimport interpddpm, json, os\n"
    f"with open({str(audit)!r}, 'a') as f:\n"
    "    f.write(json.dumps({'notebook': os.environ.get('INTERPDDPM_TEST_NOTEBOOK', ''),"
    " 'event': 'module', 'file': interpddpm.__file__}) + '\\n')\n"
)
os.environ.update(
    IPYTHONDIR=str(root / "ipython"), HF_HOME=str(hf), HF_HUB_CACHE=str(hf / "hub"),
    HF_DATASETS_CACHE=str(hf / "datasets"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
    TORCH_HOME=str(root / "torch"), INTERPDDPM_DEVICE="cpu",
    **{gpu_standins.ENV_AUDIT: str(audit)},
)
os.environ.pop("INTERPDDPM_RUNS_FROM", None)
gpu_standins.register_profile()
chapters = [nb.stem for nb in book.toc_notebooks(bookroot) if 4 <= int(nb.stem[:2]) <= 12]
seconds, failed = {}, {}
for chapter in chapters:
    os.environ["INTERPDDPM_TEST_NOTEBOOK"] = chapter
    start = time.perf_counter()
    try:
        book.execute(gpu_standins.PROFILE_NAME, [chapter], force=True, root=bookroot,
                     out=root / "out", cache=root / "cache")
    except book.NotebookExecutionError as error:
        failed[chapter] = str(error)[-1500:]
    seconds[chapter] = round(time.perf_counter() - start, 1)
record = profiles.book_data("ablations-cpu.json")
record.rename(record.with_suffix(".away"))
os.environ["INTERPDDPM_TEST_NOTEBOOK"] = "12-without-record"
try:
    book.execute(gpu_standins.PROFILE_NAME, [chapters[-1]], force=True, root=bookroot,
                 out=root / "out-norecord", cache=root / "cache")
    refused = None
except book.NotebookExecutionError as error:
    refused = str(error)
finally:
    record.with_suffix(".away").rename(record)
entries = [json.loads(line) for line in audit.read_text().splitlines() if line]
print(json.dumps({"seconds": seconds, "failed": failed, "refused": refused,
                  "entries": entries, "chapters": chapters}))
"""


@pytest.mark.slow
def test_chapters_run_from_the_installed_wheel(installed: Installed, tmp_path: Path) -> None:
    """Chapters 04-12 on the gpu path's stand-ins, every kernel importing the INSTALLED
    package (outside the checkout: the records come from the wheel), models on the profile's
    device; chapter 12 without its record refuses (its cost and ``recompute``) instead of
    training every variant."""
    done = subprocess.run(
        [str(installed.python), "-c", CHAPTERS, str(ROOT / "tests"), str(tmp_path), str(ROOT)],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=3000,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    print("\nchapters from the installed wheel (seconds):", found["seconds"])
    assert not found["failed"], found["failed"]
    assert len(found["chapters"]) == 9, found["chapters"]
    entries = found["entries"]
    modules = {e["file"] for e in entries if e["event"] == "module"}
    assert modules and all(Path(m).is_relative_to(installed.purelib) for m in modules), modules
    for chapter in found["chapters"]:
        mine = [e for e in entries if e["notebook"] == chapter]
        assert any(e["event"] == "installed" for e in mine), chapter
        assert not [e for e in mine if e["event"] == "device"], chapter
    refused = found["refused"]
    assert refused is not None, "chapter 12 trained every variant instead of refusing"
    assert "recompute = True" in refused and "ablations-cpu.json" in refused
