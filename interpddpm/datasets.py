"""Real face datasets for the gpu and paper profiles: CelebA, CelebAMask-HQ, image folders.

Every dataset here returns what :class:`interpddpm.toyfaces.ToyFaces` returns: ``item i ->
(image float [3, S, S] in [-1, 1], labels int64 [S, S] in 0..11)`` (labels are ``None`` for
datasets without masks), centre-cropped and resized to ``size``. Masks in the 19 CelebAMask-HQ
classes are merged to the book's 12 with :data:`interpddpm.parsing.CELEBAMASK_TO_TOY`.

Hub datasets go through the ``datasets`` library (its own download cache), and the resized
tensors are cached once per ``(source, size)`` as safetensors in the profile's cache folder, so
training never decodes a JPEG twice. Offline, a dataset that is not cached raises
:class:`DatasetNotAvailableError` naming it and how to get it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: Hub mirrors used by the gpu and paper profiles (see DESIGN.md).
CELEBA_REPO = "nielsr/CelebA-faces"
CELEBAMASK_HQ_REPO = "v-xchen-v/celebamask_hq"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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


def _to_label_tensor(mask: Any, merge_19: bool) -> Tensor:
    arr = np.asarray(mask)
    if arr.ndim == 3:  # a colour-coded or replicated mask: its first channel holds the ids
        arr = arr[..., 0]
    labels = torch.from_numpy(arr.astype(np.int64))
    if merge_19:
        from .parsing import CELEBAMASK_TO_TOY

        if labels.max() >= len(CELEBAMASK_TO_TOY) or labels.min() < 0:
            raise ValueError(
                f"mask ids must be in 0..{len(CELEBAMASK_TO_TOY) - 1} (CelebAMask-HQ "
                f"classes), got {int(labels.min())}..{int(labels.max())}."
            )
        labels = CELEBAMASK_TO_TOY[labels]
    elif labels.max() >= 12 or labels.min() < 0:
        raise ValueError(
            "label maps must hold the 12 book classes (0..11); pass merge_19=True "
            "for the 19 CelebAMask-HQ classes."
        )
    return labels


class TensorFaces(torch.utils.data.Dataset):
    """Preprocessed faces held as uint8 tensors (``images [N, 3, S, S]``, ``labels [N, S, S]``)."""

    def __init__(self, images: Tensor, labels: Tensor | None) -> None:
        self.images, self.labels = images, labels
        self.size = int(images.shape[-1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

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
        from safetensors.torch import save_file

        tensors = {"images": self.images.contiguous()}
        if self.labels is not None:
            tensors["labels"] = self.labels.contiguous()
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache

    @classmethod
    def load(cls, path: Path) -> TensorFaces:
        from safetensors.torch import load_file

        t = load_file(str(path))
        return cls(t["images"], t.get("labels"))


def _quantize(images: list[Tensor]) -> Tensor:
    return torch.stack([((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8) for x in images])


def from_records(
    records: Any,
    size: int,
    *,
    image_column: str = "image",
    mask_column: str | None = None,
    merge_19: bool = True,
    limit: int | None = None,
) -> TensorFaces:
    """Preprocess rows of a ``datasets.Dataset`` (or any iterable of dicts) into TensorFaces."""
    images, labels = [], []
    for i, row in enumerate(records):
        if limit is not None and i >= limit:
            break
        if image_column not in row:
            raise KeyError(
                f"no column {image_column!r} in the dataset (columns: {sorted(row)}); "
                "pass image_column=..."
            )
        images.append(center_crop_resize(_to_image_tensor(row[image_column]), size))
        if mask_column is not None:
            if mask_column not in row:
                raise KeyError(
                    f"no mask column {mask_column!r} (columns: {sorted(row)}); this "
                    "dataset has no masks for the regions: pass mask_column=... or "
                    "use a dataset with masks (interpretable training needs them)."
                )
            labels.append(
                center_crop_resize(_to_label_tensor(row[mask_column], merge_19), size, labels=True)
            )
    if not images:
        raise ValueError("the dataset is empty.")
    return TensorFaces(_quantize(images), torch.stack(labels).to(torch.uint8) if labels else None)


def image_folder(
    root: str | os.PathLike,
    size: int,
    *,
    masks: str | os.PathLike | None = None,
    merge_19: bool = False,
) -> TensorFaces:
    """Images of a folder (sorted by name) with optional label maps of the same file stems."""
    from PIL import Image

    root = Path(root)
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}.")
    rows = []
    for f in files:
        row: dict[str, Any] = {"image": Image.open(f)}
        if masks is not None:
            candidates = [p for p in Path(masks).glob(f.stem + ".*")]
            if not candidates:
                raise FileNotFoundError(
                    f"no label map for {f.name} in {masks} (same stem expected)."
                )
            row["mask"] = Image.open(candidates[0])
        rows.append(row)
    return from_records(
        rows, size, mask_column="mask" if masks is not None else None, merge_19=merge_19
    )


def _load_hub(repo: str, split: str) -> Any:
    import datasets as hf

    try:
        return hf.load_dataset(repo, split=split)
    except Exception as error:  # offline, missing, or renamed mirror
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
) -> TensorFaces:
    """``"celeba"`` (no masks), ``"celebamask-hq"`` (19-class masks merged to 12),
    ``"folder:<path>"`` (images, masks in ``<path>/masks`` when present) or ``"parquet:<file>"``
    (columns ``image`` and optionally ``mask``), preprocessed once and cached."""
    if cache_dir is None:
        from .profiles import cache_dir as profile_cache

        cache_dir = profile_cache() / "datasets"
    key = hashlib.sha256(f"{name}|{size}|{limit}|{split}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{name.split(':')[0]}-{size}-{key}.safetensors"
    if path.is_file():
        return TensorFaces.load(path)
    if name == "celeba":
        faces = from_records(_load_hub(CELEBA_REPO, split), size, limit=limit)
    elif name == "celebamask-hq":
        ds = _load_hub(CELEBAMASK_HQ_REPO, split)
        mask_column = next(
            (c for c in ("label", "mask", "annotation") if c in ds.column_names), None
        )
        faces = from_records(ds, size, mask_column=mask_column, merge_19=True, limit=limit)
    elif name.startswith("folder:"):
        root = Path(name.split(":", 1)[1])
        masks = root / "masks" if (root / "masks").is_dir() else None
        faces = image_folder(root, size, masks=masks)
    elif name.startswith("parquet:"):
        import datasets as hf

        ds = hf.load_dataset("parquet", data_files=name.split(":", 1)[1], split="train")
        mask_column = "mask" if "mask" in ds.column_names else None
        faces = from_records(ds, size, mask_column=mask_column, merge_19=True, limit=limit)
    else:
        raise ValueError(
            f"unknown dataset {name!r}: use 'toyfaces', 'celeba', 'celebamask-hq', "
            "'folder:<path>' or 'parquet:<file>'."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    faces.save(path)
    return faces
