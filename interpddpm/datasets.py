"""Real face datasets for the gpu and paper profiles: CelebA, CelebAMask-HQ, image folders.

Every dataset here returns what :class:`interpddpm.toyfaces.ToyFaces` returns: ``item i ->
(image float [3, S, S] in [-1, 1], labels int64 [S, S] in 0..11)`` (labels are ``None`` for
datasets without masks), centre-cropped and resized to ``size``. Masks in the 19 CelebAMask-HQ
parts are merged to the book's 12 classes BY NAME (:func:`interpddpm.parsing.merge_table`): the
ids come from the dataset's own ``id2label`` (the hub copy numbers its parts in another order
than BiSeNet), and the merged areas are checked for plausibility (:func:`check_merged_areas`).

Hub datasets go through the ``datasets`` library (its own download cache), and the resized
uint8 tensors are cached once per ``(source, size, limit, split)`` as one safetensors file in
the profile's cache folder, so training never decodes a JPEG twice. Host memory stays bounded
at any dataset size (Colab has about 12 GB, CelebAMask-HQ at 256 px is 7.9 GB of uint8): rows
are converted one at a time and written straight into the cache file, and the file is read
back as a memory map (:class:`TensorFaces`), so a batch reads only its own rows from disk.
``benchmarks/dataset_memory.py`` measures the peak. Offline, a dataset that is not cached
raises :class:`DatasetNotAvailableError` naming it and how to get it.

Serves chapters 4 to 12 on the gpu and paper profiles (the cpu profiles use toy faces).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import struct
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .artifacts import read_cached, write_artifact

#: Hub mirrors used by the gpu and paper profiles (see DESIGN.md).
CELEBA_REPO = "nielsr/CelebA-faces"
CELEBAMASK_HQ_REPO = "v-xchen-v/celebamask_hq"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
#: ``id2label.json`` of the hub copy of CelebAMask-HQ (``v-xchen-v/celebamask_hq`` at commit
#: 79e5ac2), copied from the repository: the fallback when the file cannot be fetched.
CELEBAMASK_HQ_ID2LABEL: dict[str, str] = {
    "0": "background",
    "1": "hair",
    "2": "hat",
    "3": "ear_r",
    "4": "skin",
    "5": "l_brow",
    "6": "r_brow",
    "7": "l_eye",
    "8": "r_eye",
    "9": "eye_g",
    "10": "nose",
    "11": "u_lip",
    "12": "l_lip",
    "13": "mouth",
    "14": "cloth",
    "15": "neck",
    "16": "neck_l",
    "17": "l_ear",
    "18": "r_ear",
}
#: Rows at the END of a real dataset that no run trains on: the held-out faces (issue 26). The
#: hub copy of CelebAMask-HQ has one split of 30,000 rows; runs train on its first 28,000
#: (``get_dataset(..., part="train")``, what ``training.training_dataset`` reads) and every
#: "held-out" use (``runs.faces``: FID/C2ST reference sets, chapter 08's denoising error,
#: chapter 09's inversions, chapter 12's held-out set) reads the last 2,000
#: (``part="held-out"``). A dataset under 4,000 rows (a test's stand-in) holds out its last half.
HELD_OUT_ROWS = 2000
#: On Colab, dataset caches at this size or larger go to the runtime's disk (COLAB_LOCAL_CACHE).
LOCAL_CACHE_SIZE = 128
COLAB_LOCAL_CACHE = Path("/content/interpddpm-datasets")
#: What :func:`get_dataset` returns of a dataset: every row, the training rows or the held-out.
PARTS = ("all", "train", "held-out")
#: The names :func:`get_dataset` knows (``<path>``, ``<file>``: a local path after the colon).
DATASET_NAMES = ("celeba", "celebamask-hq", "folder:<path>", "parquet:<file>")


def held_out_rows(total: int) -> int:
    """How many rows at the end of a dataset of ``total`` rows are held out
    (:data:`HELD_OUT_ROWS`, or half of a dataset under twice that)."""
    return min(HELD_OUT_ROWS, total // 2)


def part_rows(total: int, part: str) -> range:
    """The rows of ``part`` (:data:`PARTS`) in a dataset of ``total`` rows: training rows and
    held-out rows are disjoint and together every row."""
    if part not in PARTS:
        raise ValueError(f"unknown dataset part {part!r}: use one of {', '.join(PARTS)}.")
    cut = total - held_out_rows(total)
    return {"all": range(total), "train": range(cut), "held-out": range(cut, total)}[part]


class DatasetNotAvailableError(OSError):
    """A hub dataset that cannot be downloaded (offline) and is not cached."""


def center_crop_resize(image: Tensor, size: int, *, labels: bool = False) -> Tensor:
    """Centre-crop ``[C, H, W]`` (or ``[H, W]`` labels) to a square and resize to ``size``.

    Images use antialiased bilinear resizing; label maps use nearest neighbour (ids stay ids).
    """
    x = image if image.ndim == 3 else image[None]
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = x[..., top : top + s, left : left + s]
    if labels:
        out = F.interpolate(x[None].float(), size=(size, size), mode="nearest")[0]
        return out[0].long()
    out = F.interpolate(
        x[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )[0]
    return out


def _to_image_tensor(img: Any) -> Tensor:
    """PIL image / array ``[H, W, 3]`` uint8 -> float ``[3, H, W]`` in [-1, 1]."""
    arr = np.asarray(img.convert("RGB") if hasattr(img, "convert") else img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got an array of shape {arr.shape}.")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1


def _to_label_tensor(mask: Any, merge: Tensor | None) -> Tensor:
    arr = np.asarray(mask)
    if arr.ndim == 3:  # a colour-coded or replicated mask: its first channel holds the ids
        arr = arr[..., 0]
    labels = torch.from_numpy(arr.astype(np.int64))
    if merge is not None:
        if labels.max() >= len(merge) or labels.min() < 0:
            raise ValueError(
                f"mask ids must be in 0..{len(merge) - 1} (the parts of the dataset's "
                f"id2label), got {int(labels.min())}..{int(labels.max())}."
            )
        labels = merge[labels]
    elif labels.max() >= 12 or labels.min() < 0:
        raise ValueError(
            "label maps must hold the 12 book classes (0..11); pass merge_19=True "
            "for the 19 CelebAMask-HQ classes."
        )
    return labels


#: Rows whose merged labels :func:`check_merged_areas` checks before the rest is preprocessed.
CHECK_ROWS = 256
#: The largest header a faces file may declare (a corrupted length must not allocate gigabytes).
_MAX_HEADER = 1 << 20


def _to_uint8(image: Tensor) -> Tensor:
    """Float ``[-1, 1]`` -> uint8 ``[0, 255]``: the storage form (4x smaller than float32)."""
    return ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _convert_row(
    row: Mapping[str, Any],
    size: int,
    *,
    image_column: str,
    mask_column: str | None,
    merge: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """One record -> (uint8 image ``[3, S, S]``, uint8 book labels ``[S, S]`` or ``None``).

    The only full-resolution tensors live here, one row at a time: the float and int64 copies
    of a 1024 px CelebAMask-HQ row are 20 MB, which must never accumulate over 30,000 rows.
    """
    if image_column not in row:
        raise KeyError(
            f"no column {image_column!r} in the dataset (columns: {sorted(row)}); "
            "pass image_column=..."
        )
    image = _to_uint8(center_crop_resize(_to_image_tensor(row[image_column]), size))
    if mask_column is None:
        return image, None
    if mask_column not in row:
        raise KeyError(
            f"no mask column {mask_column!r} (columns: {sorted(row)}); this "
            "dataset has no masks for the regions: pass mask_column=... or "
            "use a dataset with masks (interpretable training needs them)."
        )
    labels = center_crop_resize(_to_label_tensor(row[mask_column], merge), size, labels=True)
    return image, labels.to(torch.uint8)


def _faces_header(n: int, size: int, has_labels: bool) -> bytes:
    """The safetensors header of ``n`` faces: uint8 ``images [n, 3, S, S]`` then ``labels
    [n, S, S]``. Any safetensors reader opens the file; :meth:`TensorFaces.load` maps it."""
    pixels = n * size * size
    entries: dict[str, Any] = {
        "images": {"dtype": "U8", "shape": [n, 3, size, size], "data_offsets": [0, 3 * pixels]}
    }
    if has_labels:
        entries["labels"] = {
            "dtype": "U8",
            "shape": [n, size, size],
            "data_offsets": [3 * pixels, 4 * pixels],
        }
    blob = json.dumps(entries, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors pads its header to 8 bytes with spaces
    return struct.pack("<Q", len(blob)) + blob


def _write_faces_file(
    file: Path, n: int, size: int, rows: Iterable[tuple[Tensor, Tensor | None]]
) -> None:
    """Write ``n`` converted rows into a faces file, each at its place as it arrives.

    Positioned writes, not a writable memory map: the pages of a map count as the writer's
    resident memory until the kernel flushes them, written pages only sit in the page cache.
    Labels are stored when the first row has them.
    """
    image_bytes, label_bytes = 3 * size * size, size * size
    has_labels: bool | None = None
    count = 0
    with open(file, "wb") as f:
        for i, (image, labels) in enumerate(rows):
            if has_labels is None:  # the layout is known with the first row
                has_labels = labels is not None
                header = _faces_header(n, size, has_labels)
                images_at, labels_at = len(header), len(header) + n * image_bytes
                f.write(header)
                f.truncate(labels_at + (n * label_bytes if has_labels else 0))
            if i >= n:
                raise ValueError(f"the records hold more than the {n} rows they announced.")
            f.seek(images_at + i * image_bytes)
            f.write(image.contiguous().numpy().data)
            if has_labels:
                f.seek(labels_at + i * label_bytes)
                f.write(labels.contiguous().numpy().data)
            count = i + 1
    if count != n:
        raise ValueError(f"the records announced {n} rows but held {count}.")


def _map_uint8(path: Path, offset: int, shape: tuple[int, ...]) -> Tensor:
    """A uint8 tensor over ``shape`` bytes of ``path`` at ``offset``, read from disk on use."""
    try:  # copy-on-write: writable, and writes never reach the cache file
        return torch.from_numpy(np.memmap(path, np.uint8, mode="c", offset=offset, shape=shape))
    except OSError:  # a private map larger than the kernel's commit limit (about the RAM size)
        array = np.memmap(path, np.uint8, mode="r", offset=offset, shape=shape)
        with warnings.catch_warnings():  # "not writable": such tensors are read-only
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(array)


class TensorFaces(torch.utils.data.Dataset):
    """Preprocessed faces as uint8 tensors (``images [N, 3, S, S]``, ``labels [N, S, S]``).

    Loaded from a cache file (:meth:`load`), both tensors are memory maps of it: a batch reads
    its rows from disk (through the page cache, which the kernel reclaims when memory is short),
    so a dataset larger than the RAM trains. Writes into them stay private to the process.
    """

    def __init__(self, images: Tensor, labels: Tensor | None, *, path: Path | None = None) -> None:
        self.images, self.labels = images, labels
        self.size = int(images.shape[-1])
        self.path = path  # the file the tensors map, if any
        self.rows: tuple[int, int] | None = None  # the file's rows this view holds (None: all)

    def part(self, part: str) -> TensorFaces:
        """The rows of ``part`` (:func:`part_rows`) as a view of the same memory map."""
        r = part_rows(len(self), part)
        if part == "all":
            return self
        labels = None if self.labels is None else self.labels[r.start : r.stop]
        view = TensorFaces(self.images[r.start : r.stop], labels, path=self.path)
        first = 0 if self.rows is None else self.rows[0]
        view.rows = (first + r.start, first + r.stop)
        return view

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # a mapped dataset travels (to DataLoader workers, say) as its path, not as gigabytes
        if self.path is not None:
            return _load_rows, (self.path, self.rows)
        return type(self), (self.images, self.labels)

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor | None]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        images = self.images[idx].float() / 127.5 - 1
        return images, None if self.labels is None else self.labels[idx].long()

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor | None]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} faces")
        images, labels = self.batch([index])
        return images[0], None if labels is None else labels[0]

    def save(self, path: Path) -> None:
        """Write a cache file (atomic, with a digest that :func:`get_dataset` checks)."""
        n = len(self)
        rows = ((self.images[i], None if self.labels is None else self.labels[i]) for i in range(n))
        write_artifact(path, lambda tmp: _write_faces_file(tmp, n, self.size, rows))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TensorFaces:
        """Map a faces file (a safetensors file of uint8 ``images`` and optional ``labels``);
        reads its header only. Raises ``ValueError`` for a header that does not fit the file."""
        path = Path(path)
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > _MAX_HEADER:
                raise ValueError(f"{path}: a header of {length} bytes is not a faces file.")
            header = json.loads(f.read(length))
        start, file_size = 8 + length, path.stat().st_size
        tensors = {}
        for name in ("images", "labels"):
            info = header.get(name)
            if info is None:
                continue
            shape, (begin, end) = tuple(info["shape"]), info["data_offsets"]
            if info["dtype"] != "U8" or end - begin != math.prod(shape) or start + end > file_size:
                raise ValueError(f"{path}: {name} {info} is not uint8 data inside the file.")
            tensors[name] = _map_uint8(path, start + begin, shape)
        if "images" not in tensors:
            raise ValueError(f"{path} holds no images.")
        return cls(tensors["images"], tensors.get("labels"), path=path)


def _load_rows(path: Path, rows: tuple[int, int] | None) -> TensorFaces:
    faces = TensorFaces.load(path)
    if rows is None:
        return faces
    labels = None if faces.labels is None else faces.labels[rows[0] : rows[1]]
    view = TensorFaces(faces.images[rows[0] : rows[1]], labels, path=path)
    view.rows = rows
    return view


def from_records(
    records: Iterable[Mapping[str, Any]],
    size: int,
    *,
    image_column: str = "image",
    mask_column: str | None = None,
    merge_19: bool = True,
    limit: int | None = None,
    id2label: Mapping[int | str, str] | Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    check: Callable[[Tensor], Any] | None = None,
    progress: bool | None = None,
) -> TensorFaces:
    """Preprocess rows of a ``datasets.Dataset`` (or any iterable of dicts) into TensorFaces.

    With ``merge_19``, mask ids are parts named by ``id2label`` (default: BiSeNet's order,
    :data:`interpddpm.parsing.BISENET_CLASSES`, as face-parsing.PyTorch numbers CelebAMask-HQ),
    merged by name to the book's 12 classes.

    Rows are converted one at a time (a ``datasets.Dataset`` or a sequence is never
    materialised; other iterables are, up to ``limit``). With ``path``, each row goes straight
    into that cache file (written atomically, with its digest) and the result maps it, so memory
    stays bounded at any dataset size; without it, the uint8 tensors are held in memory (small
    folders, tests). ``check`` gets the first :data:`CHECK_ROWS` label maps as soon as they are
    converted (a wrong id order fails in seconds, not after an hour). ``progress``: a plain tqdm
    bar (``None``: for 1,000 rows or more).
    """
    from tqdm import tqdm

    from .parsing import BISENET_CLASSES, merge_table

    merge = merge_table(BISENET_CLASSES if id2label is None else id2label) if merge_19 else None
    if not hasattr(records, "__len__"):  # a plain iterable: its length must be known first
        records = list(itertools.islice(records, limit))
    n = len(records) if limit is None else min(len(records), max(limit, 0))
    if n == 0:
        raise ValueError("the dataset is empty.")

    def converted() -> Iterator[tuple[Tensor, Tensor | None]]:
        first: list[Tensor] = []
        for row in itertools.islice(records, n):
            image, labels = _convert_row(
                row, size, image_column=image_column, mask_column=mask_column, merge=merge
            )
            if check is not None and labels is not None and len(first) < CHECK_ROWS:
                first.append(labels)
                if len(first) == min(CHECK_ROWS, n):
                    check(torch.stack(first))
            yield image, labels

    show = n >= 1000 if progress is None else progress
    rows = tqdm(converted(), total=n, desc=f"faces at {size} px", unit="row", disable=not show)
    if path is not None:
        write_artifact(path, lambda tmp: _write_faces_file(tmp, n, size, rows))
        return TensorFaces.load(path)
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    labels: Tensor | None = None
    count = 0
    for i, (image, label) in enumerate(rows):
        images[i] = image
        if label is not None:
            if labels is None:
                labels = torch.empty((n, size, size), dtype=torch.uint8)
            labels[i] = label
        count = i + 1
    if count != n:
        raise ValueError(f"the records announced {n} rows but held {count}.")
    return TensorFaces(images, labels)


class _FolderRows(Sequence[dict[str, Any]]):
    """The rows of an image folder, each opened when it is read (never all files at once)."""

    def __init__(self, files: list[Path], masks: list[Path] | None) -> None:
        self.files, self.masks = files, masks

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        from PIL import Image

        row: dict[str, Any] = {"image": Image.open(self.files[i])}
        if self.masks is not None:
            row["mask"] = Image.open(self.masks[i])
        return row


def image_folder(
    root: str | os.PathLike,
    size: int,
    *,
    masks: str | os.PathLike | None = None,
    merge_19: bool = False,
    limit: int | None = None,
    path: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> TensorFaces:
    """Images of a folder (sorted by name) with optional label maps of the same file stems
    (``limit``, ``path``, ``progress``: as for :func:`from_records`)."""
    root = Path(root)
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}.")
    mask_files = None
    if masks is not None:
        by_stem: dict[str, Path] = {}
        for p in sorted(Path(masks).iterdir()) if Path(masks).is_dir() else []:
            by_stem.setdefault(p.stem, p)
        missing = next((f for f in files if f.stem not in by_stem), None)
        if missing is not None:
            raise FileNotFoundError(
                f"no label map for {missing.name} in {masks} (same stem expected)."
            )
        mask_files = [by_stem[f.stem] for f in files]
    return from_records(
        _FolderRows(files, mask_files),
        size,
        mask_column="mask" if masks is not None else None,
        merge_19=merge_19,
        limit=limit,
        path=path,
        progress=progress,
    )


def check_merged_areas(labels: Tensor, source: str) -> dict[str, float]:
    """Fail loudly when merged label maps ``[N, H, W]`` (book ids) are implausible for faces.

    Skin must be the largest face class, and the eyes, nose and mouth/lips must each appear on
    most faces: a merge by the wrong id order (e.g. BiSeNet's order on the hub copy, where id 4
    is skin, not an eye) breaks both. Returns each class's share of the pixels.
    """
    from .toyfaces import LABELS

    flat = labels.reshape(-1)  # uint8 maps are counted as they are (no int64 copy: 134 MB)
    flat = flat if flat.dtype == torch.uint8 else flat.long()
    counts = torch.bincount(flat, minlength=len(LABELS)).double()
    share = {name: float(c / counts.sum()) for name, c in zip(LABELS, counts, strict=True)}
    face = {name: share[name] for name in ("skin", "eyebrows", "eyes", "ears", "nose", "mouth")}
    present = {
        name: float(torch.stack([(m == LABELS.index(name)).any() for m in labels]).double().mean())
        for name in ("eyes", "nose")
    }
    problems = []
    if max(face, key=face.get) != "skin":
        problems.append(f"the largest face class is {max(face, key=face.get)}, not skin")
    problems += [f"{n} appear on only {p:.0%} of faces" for n, p in present.items() if p < 0.5]
    if problems:
        shares = ", ".join(f"{k} {v:.1%}" for k, v in share.items())
        raise ValueError(
            f"{source}: the merged label maps look wrong ({'; '.join(problems)}; pixel shares: "
            f"{shares}). The dataset's part ids probably follow another order: pass its "
            "id2label (parquet: an id2label.json beside the file)."
        )
    return share


def hub_id2label(repo: str) -> dict[str, str]:
    """The ``id2label.json`` of a hub dataset (fetched once, then from the hub cache); falls back
    to the verified copy :data:`CELEBAMASK_HQ_ID2LABEL` for that repository when offline."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo, "id2label.json", repo_type="dataset")
        return json.loads(Path(path).read_text())
    except Exception as error:  # offline or missing: only our verified copy may stand in
        if repo == CELEBAMASK_HQ_REPO:
            return dict(CELEBAMASK_HQ_ID2LABEL)
        raise DatasetNotAvailableError(
            f"could not read id2label.json of {repo!r} ({type(error).__name__}: {error}); "
            "its mask ids cannot be merged without it."
        ) from error


def _hub_snapshot(repo: str) -> Path | None:
    """The hub cache's copy of a dataset repository (``hf download``), or None."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, repo_type="dataset", local_files_only=True))
    except Exception:  # not in the hub cache
        return None


def _load_hub(repo: str, split: str) -> Any:
    import datasets as hf

    try:
        return hf.load_dataset(repo, split=split)
    except Exception as error:  # offline, missing, or renamed mirror
        # offline, `datasets` reads only the copy it prepared in an online load_dataset; files
        # fetched with `hf download` sit in the hub cache: read them as a local folder
        snapshot = _hub_snapshot(repo)
        if snapshot is not None:
            return hf.load_dataset(str(snapshot), split=split)
        raise DatasetNotAvailableError(
            f"could not load the dataset {repo!r} ({type(error).__name__}: {error}). It needs "
            "network access once (then it is cached in HF_HOME); on an offline machine download "
            f"it elsewhere with `hf download {repo} --repo-type dataset` and copy HF_HOME, or "
            "use a local folder: get_dataset('folder:<path>', size)."
        ) from error


def get_dataset(
    name: str,
    size: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    split: str = "train",
    part: str = "all",
) -> TensorFaces:
    """``"celeba"`` (no masks), ``"celebamask-hq"`` (19-class masks merged to 12),
    ``"folder:<path>"`` (images, masks in ``<path>/masks`` when present) or ``"parquet:<file>"``
    (columns ``image`` and optionally ``mask``), preprocessed once and cached.

    The cache file is written row by row and read back as a memory map (bounded memory at any
    size); a cache that fails its digest or header check is rebuilt with a warning.

    ``part``: every row (``"all"``), the rows runs train on (``"train"``) or the held-out rows
    at the end (``"held-out"``, :data:`HELD_OUT_ROWS`), views of one cache file."""
    if part not in PARTS:
        raise ValueError(f"unknown dataset part {part!r}: use one of {', '.join(PARTS)}.")
    if cache_dir is None:
        from .profiles import cache_dir as profile_cache
        from .profiles import on_colab

        cache_dir = profile_cache() / "datasets"
        if on_colab() and size >= LOCAL_CACHE_SIZE:
            # CelebAMask-HQ at 256 px is 7.9 GB: on the runtime's own disk, rebuilt when a new
            # runtime lacks it, not on a free 15 GB Drive (64 px: 0.5 GB, kept on Drive)
            cache_dir = COLAB_LOCAL_CACHE
    # "merge-by-name": caches made before label ids were read from the dataset are not reused
    key = hashlib.sha256(f"{name}|{size}|{limit}|{split}|merge-by-name".encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{name.split(':')[0]}-{size}-{key}.safetensors"
    cached = read_cached(path, TensorFaces.load, what="dataset")  # None: missing or corrupted
    if cached is not None:
        return cached.part(part)

    def check(labels: Tensor) -> None:  # the first CHECK_ROWS merged maps, before the rest
        check_merged_areas(labels, name)

    if name == "celeba":
        faces = from_records(_load_hub(CELEBA_REPO, split), size, limit=limit, path=path)
    elif name == "celebamask-hq":
        ds = _load_hub(CELEBAMASK_HQ_REPO, split)
        mask_column = next(
            (c for c in ("label", "mask", "annotation") if c in ds.column_names), None
        )
        faces = from_records(
            ds,
            size,
            mask_column=mask_column,
            merge_19=True,
            limit=limit,
            id2label=hub_id2label(CELEBAMASK_HQ_REPO),
            path=path,
            check=check,
        )
    elif name.startswith("folder:"):
        root = Path(name.split(":", 1)[1])
        masks = root / "masks" if (root / "masks").is_dir() else None
        faces = image_folder(root, size, masks=masks, limit=limit, path=path)
    elif name.startswith("parquet:"):
        import datasets as hf

        file = Path(name.split(":", 1)[1])
        ds = hf.load_dataset("parquet", data_files=str(file), split="train")
        mask_column = next((c for c in ("mask", "label") if c in ds.column_names), None)
        names = file.parent / "id2label.json"  # the file's own ids, else BiSeNet's order
        id2label = json.loads(names.read_text()) if names.is_file() else None
        faces = from_records(
            ds,
            size,
            mask_column=mask_column,
            merge_19=True,
            limit=limit,
            id2label=id2label,
            path=path,
            check=check,
        )
    else:
        raise ValueError(
            f"unknown dataset {name!r}: use 'toyfaces', 'celeba', 'celebamask-hq', "
            "'folder:<path>' or 'parquet:<file>'."
        )
    return faces.part(part)
