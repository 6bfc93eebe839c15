"""Peak host memory of preprocessing CelebAMask-HQ: the old in-RAM path vs the streamed one.

Colab has about 12 GB of host RAM. The old ``from_records`` kept a float32 image and an int64
label map per row in Python lists and quantised them at the end (then serialised a full copy
for safetensors); the current one converts each row to uint8 and writes it straight into the
cache file, which it then memory-maps. This script builds synthetic parquet files laid out like
the hub copy ``v-xchen-v/celebamask_hq`` (``image``: JPEG RGB, ``label``: PNG masks with its 19
part ids, face-like, skin the largest part; ``id2label.json`` beside them), runs each approach
in a fresh process per row count, records the child's peak resident memory, fits
``peak = a + b * N`` over the counts and extrapolates to the full 30,000 rows. The fixed part
varies by about 0.1 GB from run to run (the allocator keeps what converting the first rows
used), so, as a check that noise spares, the per-row growth is also measured inside the
largest run (over its second half of rows) and added to that run's peak for the rows missing.

    python benchmarks/dataset_memory.py [--counts 300 1200] [--source 512] [--size 256]

Two peaks per run: ``VmHWM`` (all resident pages, including file pages the process maps: the
``datasets`` Arrow cache, torch's libraries; not ``ru_maxrss``, which on Linux also holds the
parent's peak: the kernel carries it over the child's ``exec``) and the sampled peak of
``RssAnon`` (memory nothing but the process can free: what runs a machine out of RAM; mapped
file pages are reclaimed by the kernel under pressure). The target: at most 6 GB for 30,000
rows at 256 px. After the peaks are taken, the new path's mapped dataset serves 20 random
batches of 64 (timed, warm page cache: the rows were just written), and a second call times a
cache hit (its digest check reads the whole file).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TARGET_GB = 6.0

#: The child: one preprocessing run; prints its peaks as JSON on the last line.
CHILD = r"""
import json, os, resource, sys, threading, time

def status():  # resident set of this process from /proc (Linux), in bytes
    try:
        text = open("/proc/self/status").read()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out

peak, done, trace = {}, [0], []  # done: rows converted; trace: (done, VmRSS, RssAnon)
def sample():
    while True:
        now = status()
        for k, v in now.items():
            peak[k] = max(peak.get(k, 0), v)
        if done[0]:
            trace.append((done[0], now.get("VmRSS", 0), now.get("RssAnon", 0)))
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()

mode, file, size, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
from pathlib import Path
import torch
import datasets as hf
import interpddpm.datasets as dsets
from interpddpm.datasets import get_dataset
imported = status().get("VmRSS", 0)
start = time.perf_counter()
if mode == "new":
    convert = dsets._convert_row
    def counted(*args, **kwargs):
        done[0] += 1
        return convert(*args, **kwargs)
    dsets._convert_row = counted
    faces = get_dataset(f"parquet:{file}", size, cache_dir=cache)
    dsets._convert_row = convert
else:  # the list-based loop of interpddpm/datasets.py before streaming, inline
    from safetensors.torch import save_file
    from interpddpm.artifacts import write_artifact
    from interpddpm.datasets import (
        _to_image_tensor, _to_label_tensor, center_crop_resize, check_merged_areas)
    from interpddpm.parsing import merge_table
    ds = hf.load_dataset("parquet", data_files=file, split="train")
    merge = merge_table(json.loads((Path(file).parent / "id2label.json").read_text()))
    images, labels = [], []
    for row in ds:
        images.append(center_crop_resize(_to_image_tensor(row["image"]), size))
        labels.append(center_crop_resize(_to_label_tensor(row["label"], merge), size, labels=True))
        done[0] += 1
    images = torch.stack(
        [((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8) for x in images])
    labels = torch.stack(labels).to(torch.uint8)
    check_merged_areas(labels[:256], "old")
    tensors = {"images": images, "labels": labels}
    write_artifact(Path(cache) / "old.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    faces = None
seconds = time.perf_counter() - start
time.sleep(0.02)  # one more sample
result = {
    # this process's own peak (ru_maxrss, the fallback off Linux, includes the parent's)
    "hwm": status().get("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "anon": peak.get("RssAnon"), "imported": imported, "seconds": seconds,
}
import numpy as np  # memory per converted row over the second half of the rows (warmed up)
half = [t for t in list(trace) if done[0] / 2 <= t[0] < done[0]]
if len({t[0] for t in half}) > 2:
    x = np.array([t[0] for t in half], float)
    result["slope_hwm"] = float(np.polyfit(x, [t[1] for t in half], 1)[0])
    result["slope_anon"] = float(np.polyfit(x, [t[2] for t in half], 1)[0])
if faces is not None:  # then random batches of 64: from the mapped file (warm page cache) and
    from interpddpm.datasets import TensorFaces  # from a copy in memory
    held = TensorFaces(faces.images.clone(), faces.labels.clone())
    for key, source in (("batch_ms", faces), ("held_batch_ms", held)):
        g = torch.Generator().manual_seed(0)
        source.batch([0])
        t0 = time.perf_counter()
        for _ in range(20):
            source.batch(torch.randint(len(source), (64,), generator=g).tolist())
        result[key] = (time.perf_counter() - t0) / 20 * 1e3
    t0 = time.perf_counter()  # a cache hit: the digest check reads the whole file
    get_dataset(f"parquet:{file}", size, cache_dir=cache)
    result["reload_s"] = time.perf_counter() - t0
    result["file_bytes"] = sum(p.stat().st_size for p in Path(cache).glob("*.safetensors"))
print(json.dumps(result))
"""


def hub_ids() -> dict[str, int]:
    """Part name -> id in the hub copy's numbering (its id2label.json)."""
    from interpddpm.datasets import CELEBAMASK_HQ_ID2LABEL

    return {name: int(i) for i, name in CELEBAMASK_HQ_ID2LABEL.items()}


def synthetic_face(rng: np.random.Generator, s: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth face-like RGB image ``[s, s, 3]`` and its part ids ``[s, s]`` (hub numbering).

    Parts are ellipses and boxes at jittered places (skin the largest face part, as in the
    real masks); colours are shaded with a little noise, so the JPEGs are photo-like in size.
    """
    ids = hub_ids()
    y, x = np.mgrid[0:s, 0:s] / s
    cy, cx = 0.5 + rng.normal(0, 0.02), 0.5 + rng.normal(0, 0.02)
    mask = np.zeros((s, s), dtype=np.uint8)

    def ellipse(name: str, py: float, px: float, ry: float, rx: float) -> None:
        mask[((y - py) / ry) ** 2 + ((x - px) / rx) ** 2 <= 1] = ids[name]

    mask[y > 0.85] = ids["cloth"]
    mask[(y > 0.7) & (y <= 0.85) & (abs(x - cx) < 0.14)] = ids["neck"]
    ellipse("hair", cy - 0.08, cx, 0.4, 0.34)
    ellipse("l_ear", cy, cx - 0.29, 0.07, 0.035)
    ellipse("r_ear", cy, cx + 0.29, 0.07, 0.035)
    ellipse("skin", cy + 0.03, cx, 0.33, 0.27)
    for side, sx in (("l", -0.1), ("r", 0.1)):
        ellipse(f"{side}_brow", cy - 0.1, cx + sx, 0.012, 0.055)
        ellipse(f"{side}_eye", cy - 0.04, cx + sx, 0.022, 0.045)
    ellipse("nose", cy + 0.08, cx, 0.07, 0.035)
    ellipse("u_lip", cy + 0.19, cx, 0.018, 0.08)
    ellipse("mouth", cy + 0.21, cx, 0.008, 0.07)
    ellipse("l_lip", cy + 0.23, cx, 0.02, 0.075)
    palette = rng.integers(30, 226, (19, 3)).astype(np.float32)
    shade = 0.75 + 0.25 * (1 - y)[..., None]  # light from above
    image = palette[mask] * shade + rng.normal(0, 4, (s, s, 3))
    return image.clip(0, 255).astype(np.uint8), mask


def write_parquet(folder: Path, n: int, source: int, row_group: int) -> Path:
    """``n`` synthetic rows as ``folder/faces.parquet`` (+ ``id2label.json``); returns the file.

    ``row_group`` rows per parquet row group: ``datasets`` converts one row group at a time, so
    a single group spanning the whole file would make its conversion buffer grow with ``n``
    (``push_to_hub`` writes 100-row groups for images, datasets 4 up to 100 MB per group).
    """
    import datasets as hf
    from PIL import Image

    from interpddpm.datasets import CELEBAMASK_HQ_ID2LABEL

    hf.disable_progress_bars()
    rng = np.random.default_rng(n)
    images, labels = [], []
    for _ in range(n):
        rgb, mask = synthetic_face(rng, source)
        jpg, png = io.BytesIO(), io.BytesIO()
        Image.fromarray(rgb).save(jpg, format="JPEG", quality=90)
        Image.fromarray(mask).save(png, format="PNG")
        images.append({"bytes": jpg.getvalue(), "path": None})
        labels.append({"bytes": png.getvalue(), "path": None})
    ds = hf.Dataset.from_dict(
        {"image": images, "label": labels},
        features=hf.Features({"image": hf.Image(), "label": hf.Image()}),
    )
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "faces.parquet"
    ds.to_parquet(str(file), batch_size=row_group)
    (folder / "id2label.json").write_text(json.dumps(CELEBAMASK_HQ_ID2LABEL))
    return file


def run_child(mode: str, file: Path, size: int, work: Path) -> dict:
    """One preprocessing run in a fresh process, with fresh datasets and interpddpm caches."""
    cache = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=work))
    env = dict(os.environ, HF_DATASETS_CACHE=str(cache / "hf"), HF_HUB_OFFLINE="1")
    env["HF_DATASETS_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(file), str(size), str(cache / "faces")],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit(counts: list[int], peaks: list[float]) -> tuple[float, float]:
    """``a, b`` of ``peak = a + b * N`` (least squares; exact through two counts). A negative
    slope is measurement noise around a flat peak: then ``b = 0`` and ``a`` = the largest peak."""
    b, a = np.polyfit(np.asarray(counts, float), np.asarray(peaks, float), 1)
    if b < 0:
        return max(peaks), 0.0
    return float(a), float(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--counts", type=int, nargs="+", default=[300, 1200])
    ap.add_argument("--source", type=int, default=512, help="side of the synthetic sources")
    ap.add_argument("--size", type=int, default=256, help="preprocessed side")
    ap.add_argument("--rows", type=int, default=30_000, help="rows to extrapolate to")
    ap.add_argument("--row-group", type=int, default=100, help="rows per parquet row group")
    args = ap.parse_args()
    modes = {"old": "old (float lists)", "new": "new (streamed to disk)"}
    results: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory(prefix="dataset-memory-") as tmp:
        work = Path(tmp)
        for n in args.counts:
            file = write_parquet(work / f"src-{n}", n, args.source, args.row_group)
            per_row = file.stat().st_size / n / 1e3
            print(f"{n} synthetic rows, {args.source} px sources: {per_row:.0f} kB/row parquet")
            for mode in modes:
                results[mode, n] = run_child(mode, file, args.size, work)
    gb = 1e9
    last = args.counts[-1]
    rows: list[tuple[str, list[str]]] = []
    worst: dict[str, float] = {m: 0.0 for m in modes}  # the larger VmHWM extrapolation
    for metric, label in (("hwm", "peak RSS (VmHWM)"), ("anon", "peak RssAnon")):
        fits = {m: fit(args.counts, [results[m, n][metric] for n in args.counts]) for m in modes}
        for n in args.counts:
            rows.append(
                (f"{label}, {n} rows", [f"{results[m, n][metric] / gb:.2f} GB" for m in modes])
            )
        rows.append(("  fit over counts: fixed a", [f"{fits[m][0] / gb:.2f} GB" for m in modes]))
        rows.append(("  fit over counts: per row b", [f"{fits[m][1] / 1e6:.3f} MB" for m in modes]))
        by_fit = {m: (fits[m][0] + fits[m][1] * args.rows) / gb for m in modes}
        rows.append(
            (f"  => {args.rows:,} rows at {args.size} px", [f"{by_fit[m]:.2f} GB" for m in modes])
        )
        # the same from one run: the peak at the largest count plus the remaining rows at the
        # slope measured inside it (second half of its rows), which run-to-run noise spares
        slope = {m: max(results[m, last].get(f"slope_{metric}", 0.0), 0.0) for m in modes}
        in_run = {m: (results[m, last][metric] + slope[m] * (args.rows - last)) / gb for m in modes}
        rows.append(
            (f"  in-run per row ({last} rows)", [f"{slope[m] / 1e6:.3f} MB" for m in modes])
        )
        rows.append(
            (f"  => {args.rows:,} rows at {args.size} px", [f"{in_run[m]:.2f} GB" for m in modes])
        )
        if metric == "hwm":
            worst = {m: max(by_fit[m], in_run[m]) for m in modes}
    rows.append(("after imports", [f"{results[m, last]['imported'] / gb:.2f} GB" for m in modes]))
    rows.append((f"seconds, {last} rows", [f"{results[m, last]['seconds']:.1f}" for m in modes]))
    new = results["new", last]
    rows.append(("then: a batch of 64, mapped", ["-", f"{new['batch_ms']:.1f} ms"]))
    rows.append(("then: a batch of 64, in memory", ["-", f"{new['held_batch_ms']:.1f} ms"]))
    gb_s = new["file_bytes"] / new["reload_s"] / gb
    full = args.rows * 4 * args.size**2 / gb  # uint8 images and labels
    rows.append(("then: cache hit (digest check)", ["-", f"{new['reload_s']:.2f} s"]))
    rows.append((f"  same for {args.rows:,} rows ({full:.1f} GB)", ["-", f"{full / gb_s:.0f} s"]))
    width = max(len(r[0]) for r in rows) + 2
    print(f"\n{'':{width}s}" + "".join(f"{v:>26s}" for v in modes.values()))
    for name, cells in rows:
        print(f"{name:{width}s}" + "".join(f"{c:>26s}" for c in cells))
    ok = worst["new"] <= TARGET_GB
    print(
        f"\ntarget: peak RSS <= {TARGET_GB:.0f} GB for {args.rows:,} rows at {args.size} px "
        f"(the larger extrapolation): {'met' if ok else 'NOT met'} (new {worst['new']:.2f} GB, "
        f"old {worst['old']:.2f} GB)"
    )


if __name__ == "__main__":
    main()
