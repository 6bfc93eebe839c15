"""Real face datasets for the gpu and paper profiles: CelebA, CelebAMask-HQ, image folders.

Every dataset here returns what :class:`interpddpm.toyfaces.ToyFaces` returns: ``item i ->
(image float [3, S, S] in [-1, 1], labels int64 [S, S] in 0..11)`` (labels are ``None`` for
datasets without masks), centre-cropped and resized to ``size``. Masks in the 19 CelebAMask-HQ
parts are merged to the book's 12 classes BY NAME (:func:`interpddpm.parsing.merge_table`): the
ids come from the dataset's own ``id2label`` (the hub copy numbers its parts in another order
than BiSeNet), and the merged areas are checked for plausibility (:func:`check_merged_areas`).

Hub datasets go through the ``datasets`` library (its own download cache), and the resized
tensors are cached once per ``(source, size)`` as safetensors in the profile's cache folder, so
training never decodes a JPEG twice. Offline, a dataset that is not cached raises
:class:`DatasetNotAvailableError` naming it and how to get it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
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
#: The names :func:`get_dataset` knows (``<path>``, ``<file>``: a local path after the colon).
DATASET_NAMES = ("celeba", "celebamask-hq", "folder:<path>", "parquet:<file>")


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
        # atomic (a crash never leaves a half-written cache), with a digest that loading checks
        write_artifact(path, lambda tmp: save_file(tensors, str(tmp)))

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
    id2label: Mapping[int | str, str] | Sequence[str] | None = None,
) -> TensorFaces:
    """Preprocess rows of a ``datasets.Dataset`` (or any iterable of dicts) into TensorFaces.

    With ``merge_19``, mask ids are parts named by ``id2label`` (default: BiSeNet's order,
    :data:`interpddpm.parsing.BISENET_CLASSES`, as face-parsing.PyTorch numbers CelebAMask-HQ),
    merged by name to the book's 12 classes.
    """
    from .parsing import BISENET_CLASSES, merge_table

    merge = merge_table(BISENET_CLASSES if id2label is None else id2label) if merge_19 else None
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
                center_crop_resize(_to_label_tensor(row[mask_column], merge), size, labels=True)
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


def check_merged_areas(labels: Tensor, source: str) -> dict[str, float]:
    """Fail loudly when merged label maps ``[N, H, W]`` (book ids) are implausible for faces.

    Skin must be the largest face class, and the eyes, nose and mouth/lips must each appear on
    most faces: a merge by the wrong id order (e.g. BiSeNet's order on the hub copy, where id 4
    is skin, not an eye) breaks both. Returns each class's share of the pixels.
    """
    from .toyfaces import LABELS

    counts = torch.bincount(labels.reshape(-1).long(), minlength=len(LABELS)).double()
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
    import json

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
    # "merge-by-name": caches made before label ids were read from the dataset are not reused
    key = hashlib.sha256(f"{name}|{size}|{limit}|{split}|merge-by-name".encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{name.split(':')[0]}-{size}-{key}.safetensors"
    cached = read_cached(path, TensorFaces.load, what="dataset")  # None: missing or corrupted
    if cached is not None:
        return cached
    if name == "celeba":
        faces = from_records(_load_hub(CELEBA_REPO, split), size, limit=limit)
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
        )
    elif name.startswith("folder:"):
        root = Path(name.split(":", 1)[1])
        masks = root / "masks" if (root / "masks").is_dir() else None
        faces = image_folder(root, size, masks=masks)
    elif name.startswith("parquet:"):
        import json

        import datasets as hf

        file = Path(name.split(":", 1)[1])
        ds = hf.load_dataset("parquet", data_files=str(file), split="train")
        mask_column = next((c for c in ("mask", "label") if c in ds.column_names), None)
        names = file.parent / "id2label.json"  # the file's own ids, else BiSeNet's order
        id2label = json.loads(names.read_text()) if names.is_file() else None
        faces = from_records(
            ds, size, mask_column=mask_column, merge_19=True, limit=limit, id2label=id2label
        )
    else:
        raise ValueError(
            f"unknown dataset {name!r}: use 'toyfaces', 'celeba', 'celebamask-hq', "
            "'folder:<path>' or 'parquet:<file>'."
        )
    if faces.labels is not None and not name.startswith("folder:"):
        check_merged_areas(faces.labels[:256], name)
    path.parent.mkdir(parents=True, exist_ok=True)
    faces.save(path)
    return faces
