"""Chapters 04-12 on the gpu profile's code path, on a CPU, with tiny stand-ins (issue 11), run
from the INSTALLED wheel (issue 26): what a Colab user's kernels import.

The gpu profile differs from cpu/smoke in what it reads (CelebAMask-HQ from the hub, BiSeNet's
``79999_iter.pth``, the ``CompVis/ldm-celebahq-256`` pipeline, Inception FID features), in its
UNet (self-attention), mixed precision and wall-time checkpoints. This module runs the chapters
once, through the installed package's own executor (:func:`interpddpm.book.execute`,
papermill), in the fresh virtual environment of the session's ``installed`` fixture
(``wheel_env.py``: the wheel of this checkout, outside it), from a folder that holds only the
notebooks and the table of contents (no ``interpddpm/``, no ``book/``: the records come from the
wheel), with the profile ``gpu-standin``: ``PROFILES["gpu"]`` with the smoke sizes, 32 px images
(at 64 px the module took 9 minutes on two busy cores), a tiny UNet preset of the gpu preset's
block types, and an offline Hugging Face cache of stand-ins in the hub's formats
(:mod:`gpu_standins`, which also installs, in every kernel, a small FID feature network, a
256 px BiSeNet input and a device audit). It asserts, chapter by chapter (one test each), that
the chapter runs, that its kernel imported the installed package, that every model it calls
went through :func:`interpddpm.devices.place`, that the Inception path was taken, that
locality and FID numbers are finite, or marked undefined by the library where no pair showed a
concept, and that every figure of faces draws them at least ``MIN_FACE_PX`` wide on the page
(:func:`interpddpm.plotting.face_widths`: the layout of a figure does not depend on the
profile's image size); and that chapter 12 without its record refuses (its cost and
``recompute``) instead of training every variant.

On a machine without a GPU the device is the CPU (``INTERPDDPM_DEVICE=cpu``): a model left on
the wrong device cannot be seen, only one that never went through ``place``.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pytest
import torch

from interpddpm import book
from interpddpm.metrics import UNDEFINED
from interpddpm.plotting import MIN_FACE_PX

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))
import gpu_standins  # noqa: E402  (a helper module of this folder, not a test module)
from wheel_env import Installed, clean_env  # noqa: E402  (idem)

CHAPTERS = [nb.stem for nb in book.toc_notebooks(ROOT) if 4 <= int(nb.stem[:2]) <= 12]
#: Chapter 12's glued cut of a variant where no pair showed the concept (the notebook's text).
UNDEFINED_CUT = "undefined on this profile (no pair showed the concept)"
_PERCENT = re.compile(r"-?\d+(\.\d+)?%")
_NAN = re.compile(r"\b(nan|inf)\b", re.IGNORECASE)

#: Run by the fresh environment's interpreter: chapters 04-12 on the stand-ins through the
#: INSTALLED package's executor, from a book folder that holds only the notebooks and the table
#: of contents (no interpddpm/, no book/), each chapter on its own (a failure is recorded and the
#: next chapter runs), then chapter 12 once more with its record moved away. Prints one JSON line.
WHEEL_RUN = r"""
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
    "del gpu_standins, sys, interpddpm, json, os, f\n"
)
os.environ.update(
    IPYTHONDIR=str(root / "ipython"), HF_HOME=str(hf), HF_HUB_CACHE=str(hf / "hub"),
    HF_DATASETS_CACHE=str(hf / "datasets"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
    TORCH_HOME=str(root / "torch"),  # nothing may be downloaded there either
    INTERPDDPM_DEVICE="cpu", **{gpu_standins.ENV_AUDIT: str(audit)},
)
os.environ.pop("INTERPDDPM_RUNS_FROM", None)
gpu_standins.register_profile()
chapters = [nb.stem for nb in book.toc_notebooks(bookroot) if 4 <= int(nb.stem[:2]) <= 12]
seconds, failed = {}, {}
for chapter in chapters:
    os.environ["INTERPDDPM_TEST_NOTEBOOK"] = chapter  # the audit's label
    start = time.perf_counter()
    try:
        book.execute(gpu_standins.PROFILE_NAME, [chapter], force=True, root=bookroot,
                     out=root / "out", cache=root / "cache")
    except book.NotebookExecutionError as error:
        failed[chapter] = str(error)[-3000:]
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
print(json.dumps({"seconds": seconds, "failed": failed, "refused": refused,
                  "chapters": chapters}))
"""


@dataclasses.dataclass
class GpuPath:
    """Where the run kept its files, and what it reported."""

    out: Path  # receives _build/staged (the executed notebooks)
    cache: Path  # the artifact cache (INTERPDDPM_CACHE)
    audit: Path  # the device audit's JSON lines
    hub: Path  # the offline Hugging Face hub cache of the stand-ins
    purelib: Path  # where the wheel was installed
    chapters: list[str]  # the chapters the installed executor found in the book-only toc
    seconds: dict[str, float]  # wall time per chapter
    failed: dict[str, str]  # chapter -> the executor's error message
    refused: str | None  # chapter 12 without its record: the error it stopped with

    def executed(self, chapter: str) -> Any:
        staged = book.staging_dir(self.out) / "notebooks" / f"{chapter}.ipynb"
        return nbformat.read(staged, as_version=4)

    def audit_entries(self, chapter: str) -> list[dict[str, Any]]:
        if not self.audit.is_file():
            return []
        entries = [json.loads(line) for line in self.audit.read_text().splitlines() if line]
        return [e for e in entries if e["notebook"] == chapter]


@pytest.fixture(scope="module")
def gpu_path(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Chapters 04-12 executed once on the stand-ins by the installed package (``WHEEL_RUN``);
    the tests below read what they left."""
    root = tmp_path_factory.mktemp("gpu-path")
    done = subprocess.run(
        [str(installed.python), "-c", WHEEL_RUN, str(TESTS), str(root), str(ROOT)],
        cwd=root, env=clean_env(), capture_output=True, text=True, timeout=3000,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    run = GpuPath(
        out=root / "out",
        cache=root / "cache",
        audit=root / "device-audit.jsonl",
        hub=root / "hf" / "hub",
        purelib=installed.purelib,
        **found,
    )
    yield run
    print("\ngpu code path on the CPU, from the installed wheel: seconds and model rows")
    for chapter, seconds in run.seconds.items():
        rows = next((e["rows"] for e in run.audit_entries(chapter) if e["event"] == "rows"), {})
        print(f"  {chapter}: {seconds:6.1f} s  {rows}")


@pytest.mark.slow
def test_standin_hub_reads_offline(gpu_path: GpuPath) -> None:
    """The dataset's ``id2label.json`` is where ``hf_hub_download`` finds it offline, so the
    kernels read the stand-in's, not the library's fallback copy (which would hide a miss)."""
    from huggingface_hub import hf_hub_download

    from interpddpm.datasets import CELEBAMASK_HQ_ID2LABEL, CELEBAMASK_HQ_REPO

    path = hf_hub_download(
        CELEBAMASK_HQ_REPO,
        "id2label.json",
        repo_type="dataset",
        cache_dir=str(gpu_path.hub),
        local_files_only=True,
    )
    assert json.loads(Path(path).read_text()) == CELEBAMASK_HQ_ID2LABEL
    assert CELEBAMASK_HQ_ID2LABEL["4"] == "skin"  # the hub copy's order, not BiSeNet's


@pytest.mark.slow
def test_the_installed_executor_finds_the_chapters(gpu_path: GpuPath) -> None:
    """The book-only folder's table of contents lists this checkout's chapters 04-12."""
    assert gpu_path.chapters == CHAPTERS


@pytest.mark.slow
def test_chapter_12_without_its_record_refuses(gpu_path: GpuPath) -> None:
    """The installed package without chapter 12's record refuses (its cost and ``recompute``)
    instead of training every variant."""
    refused = gpu_path.refused
    assert refused is not None, "chapter 12 trained every variant instead of refusing"
    assert "recompute = True" in refused and "ablations-cpu.json" in refused


def _glued(nb: Any) -> dict[str, Any]:
    """The values a chapter glued (myst_nb.glue), by name."""
    found = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            name = output.get("metadata", {}).get("scrapbook", {}).get("name")
            if name is not None:
                text = output["data"]["application/papermill.record/text/plain"]
                try:
                    found[name] = ast.literal_eval(text)
                except (ValueError, SyntaxError):  # a glued figure: "<Figure size ...>"
                    found[name] = text
    return found


def _text_outputs(nb: Any) -> str:
    """Everything a chapter printed or displayed as text or Markdown (glued values aside)."""
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if "scrapbook" in output.get("metadata", {}):
                continue
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                parts.append(output["text"])
            for mime in ("text/markdown", "text/plain"):
                parts.append(str(output.get("data", {}).get(mime, "")))
    return "\n".join(parts)


def _markdown_tables(nb: Any) -> list[list[dict[str, str]]]:
    """The tables a chapter displayed (``plotting.markdown_table``), as rows of cells."""
    tables = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            text = output.get("data", {}).get("text/markdown", "")
            lines = [line for line in text.splitlines() if line.startswith("|")]
            if len(lines) < 2:
                continue
            split = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
            tables.append([dict(zip(split[0], row, strict=True)) for row in split[2:]])
    return tables


def _is_cut(value: Any, *undefined: str) -> bool:
    """A percentage as the library prints one, or one of the ``undefined`` texts."""
    return value in undefined or (isinstance(value, str) and _PERCENT.fullmatch(value))


def _finite(value: Any) -> bool:
    return math.isfinite(float(value))


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_on_gpu_path(gpu_path: GpuPath, chapter: str) -> None:
    assert chapter not in gpu_path.failed, gpu_path.failed[chapter]
    assert chapter in gpu_path.seconds, f"{chapter} was not executed: {gpu_path.chapters}"

    entries = gpu_path.audit_entries(chapter)
    assert any(e["event"] == "installed" for e in entries), "the stand-ins were not installed"
    modules = {e["file"] for e in entries if e["event"] == "module"}
    assert modules, f"{chapter}: the kernel did not say which interpddpm it imported"
    for module in modules:  # the wheel's package, not the checkout
        assert Path(module).is_relative_to(gpu_path.purelib), (chapter, module)
    wrong = [e for e in entries if e["event"] == "device"]
    assert not wrong, f"{chapter}: models not placed on the profile's device: {wrong[:5]}"

    # every figure of faces shows them at least MIN_FACE_PX wide on the page
    small = [e for e in entries if e["event"] == "faces" and e["min_px"] < MIN_FACE_PX]
    assert not small, f"{chapter}: faces drawn under {MIN_FACE_PX} px on the page: {small}"

    nb = gpu_path.executed(chapter)
    text = _text_outputs(nb)
    bad = sorted({m.group(0) for m in _NAN.finditer(text)})
    assert not bad, f"{chapter} shows {bad} (an undefined value must read as such)"
    glued = _glued(nb)
    check = CHECKS.get(chapter[:2])
    if check is not None:
        check(gpu_path, glued, entries)


def _check_parser(gpu_path: GpuPath, glued: dict[str, Any], entries: list) -> None:
    """Chapter 06: the BiSeNet stand-in, scored on the dataset's own masks, finds each concept
    (ids merged by name on both sides: the dataset's hub order, BiSeNet's order)."""
    table = _text_outputs(gpu_path.executed("06_editing"))
    assert "celebamask-hq faces (annotated masks)" in table, "not scored on the dataset"
    for concept in ("eyes", "nose", "mouth"):
        found = re.search(rf"\| IoU {concept} \| ([0-9.]+) \|", table)
        assert found and float(found.group(1)) > 0.4, (concept, found)


def _check_locality(gpu_path: GpuPath, glued: dict[str, Any], entries: list) -> None:
    """Chapter 07: the cuts are percentages or UNDEFINED; every row of the saved table is a
    finite locality over at least one pair, or NaN (undefined) over none; and the
    colour-prototype parser found each concept in some generated pair."""
    concepts = ("eyes", "nose", "mouth")
    for kind in ("k2", "control"):
        for c in concepts:
            assert _is_cut(glued[f"cut_{kind}_{c}"], UNDEFINED), (kind, c, glued)
    table = json.loads(
        (gpu_path.cache / gpu_standins.PROFILE_NAME / "results" / "locality.json").read_text()
    )
    for row in table["rows"]:
        defined = row["pairs"] > 0
        assert defined == _finite(row["locality"]), row
        assert row["pairs"] + row["skipped"] > 0, row
    for c in concepts:
        assert any(r["pairs"] > 0 for r in table["rows"] if r["concept"] == c), c


def _check_realism(gpu_path: GpuPath, glued: dict[str, Any], entries: list) -> None:
    """Chapter 08: Inception's path (its stand-in) and finite FIDs and ratios."""
    assert any(e["event"] == "inception-standin" for e in entries), "Inception FID not used"
    for name in ("fid_floor", "fid_vanilla", "ratio_k2_lo", "ratio_k2_hi", "ratio_k4"):
        assert _finite(glued[name]), (name, glued[name])


def _check_latent(gpu_path: GpuPath, glued: dict[str, Any], entries: list) -> None:
    """Chapter 10: each LDM's locality is a finite number over some pairs, or the library's
    UNDEFINED over none (the random stand-in decoder draws no parsable nose)."""
    nb = gpu_path.executed("10_latent_diffusion")
    (table,) = [t for t in _markdown_tables(nb) if t and "locality (nose)" in t[0]]
    models = [row for row in table if not row["model"].startswith("paper:")]
    assert len(models) == 3, table
    for row in models:
        value = row["locality (nose)"]
        if int(row["pairs"]) == 0:
            assert value == UNDEFINED, row
        else:
            assert _finite(value), row


def _check_tradeoffs(gpu_path: GpuPath, glued: dict[str, Any], entries: list) -> None:
    """Chapter 12: every variant's worst cut is a percentage or undefined, FID ratios finite,
    and the live measurement of the default took Inception's path."""
    assert any(e["event"] == "inception-standin" for e in entries), "Inception FID not used"
    mins = {k: v for k, v in glued.items() if k.endswith("_min")}
    assert mins, sorted(glued)
    for name, value in mins.items():
        assert _is_cut(value, UNDEFINED_CUT), (name, value)
        assert _finite(glued[name.replace("_min", "_fid")]), name


CHECKS = {
    "06": _check_parser,
    "07": _check_locality,
    "08": _check_realism,
    "10": _check_latent,
    "12": _check_tradeoffs,
}


# --------------------------------------------------------------------------- the library's fixes
# Fast checks of what the gpu path needed from the library (no notebooks, no hub cache).


def test_parser_iou_on_a_real_dataset_uses_its_masks(tmp_path: Path) -> None:
    """A profile of a real dataset scores its parser on the dataset's annotated masks, merged
    by name on both sides: the file's own id order (skin is 4) and BiSeNet's (skin is 1)."""
    import datasets as hf
    from PIL import Image

    from interpddpm import runs
    from interpddpm.datasets import CELEBAMASK_HQ_ID2LABEL
    from interpddpm.parsing import BiSeNetParser
    from interpddpm.profiles import PROFILES

    rng = np.random.default_rng(0)
    rows = []
    for _ in range(8):
        parts = gpu_standins.face_parts(rng)
        rows.append({"image": Image.fromarray(gpu_standins.face_image(parts, rng)), "mask": parts})
    file = tmp_path / "faces.parquet"
    features = hf.Features({"image": hf.Image(), "mask": hf.Image()})
    masks = [Image.fromarray(r["mask"]) for r in rows]
    hf.Dataset.from_dict(
        {"image": [r["image"] for r in rows], "mask": masks}, features=features
    ).to_parquet(str(file))
    (tmp_path / "id2label.json").write_text(json.dumps(CELEBAMASK_HQ_ID2LABEL))
    profile = dataclasses.replace(
        PROFILES["smoke"], name="parquet-faces", dataset=f"parquet:{file}"
    )
    parser = BiSeNetParser(gpu_standins.colour_prototype_bisenet(), gpu_standins.PARSER_INPUT)
    found = runs.parser_iou(profile, parser)
    assert found["faces"] == f"{profile.dataset} faces (annotated masks)" and found["n"] == 8
    for concept in ("eyes", "nose", "mouth"):
        assert found["concept_iou"][concept] > 0.4, found["concept_iou"]


def test_parser_iou_on_toy_faces() -> None:
    """Toy profiles score on held-out toy faces, one FID set of them at the smoke sizes."""
    from interpddpm import runs
    from interpddpm.profiles import PROFILES

    class Background:
        def predict(self, images: torch.Tensor) -> torch.Tensor:
            return torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long)

    found = runs.parser_iou("smoke", Background())
    assert found["faces"] == "held-out toy faces"
    assert found["n"] == PROFILES["smoke"].fid_samples
    assert found["concept_iou"]["nose"] == 0 and found["class_iou"]["background"] > 0


def test_region_denoising_error_takes_given_faces() -> None:
    """Given the toy faces it draws by default, the same numbers (the cpu book is unchanged);
    without label maps, a clear error."""
    from interpddpm import ablations
    from interpddpm.models import make_unet
    from interpddpm.toyfaces import ToyFaces

    torch.manual_seed(0)
    model = make_unet("tiny", 32)
    faces = ToyFaces(32, 4, seed=4242).batch(range(4))
    steps = (50, 500)
    default = ablations.region_denoising_error(model, n_images=4, timesteps=steps)
    assert ablations.region_denoising_error(model, faces=faces, timesteps=steps) == default
    with pytest.raises(ValueError, match="label maps"):
        ablations.region_denoising_error(model, faces=(faces[0], None), timesteps=steps)


def test_placing_a_latent_codec_marks_its_autoencoder() -> None:
    """Device audits look at the VQModel that runs: placing its codec marks it."""
    from interpddpm import devices, latent

    codec = latent.LatentCodec(latent.make_autoencoder())
    assert devices.placed_on(codec.vqvae) is None
    assert devices.place(codec, "cpu") is codec
    assert devices.placed_on(codec.vqvae) == "cpu"


def test_a_hub_download_alone_loads_offline(tmp_path: Path) -> None:
    """``hf download`` fills only the hub cache, and offline ``datasets`` reads only the copy
    it prepared in an online ``load_dataset``: the library reads the hub copy as a folder
    (what its error message tells offline users to do)."""
    import subprocess

    gpu_standins.build_dataset(tmp_path / "hf", n=8, prepared=False)
    code = (
        "from interpddpm.datasets import get_dataset\n"
        f"faces = get_dataset('celebamask-hq', 32, cache_dir={str(tmp_path / 'faces')!r})\n"
        "print(len(faces), tuple(faces.labels.shape))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "8 (8, 32, 32)"
