"""Real-data loaders, offline: fake datasets in the same on-disk and parquet formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from interpddpm.datasets import (
    DatasetNotAvailableError,
    center_crop_resize,
    get_dataset,
    image_folder,
)
from interpddpm.parsing import CELEBAMASK_TO_TOY


def fake_faces(n: int, h: int = 40, w: int = 50) -> tuple[list[Image.Image], list[Image.Image]]:
    rng = np.random.default_rng(0)
    images, masks = [], []
    for _ in range(n):
        images.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        m = np.zeros((h, w), dtype=np.uint8)
        m[10:30, 15:35] = 10  # CelebAMask-HQ "nose"
        m[:5] = 17  # hair
        masks.append(Image.fromarray(m))
    return images, masks


def test_center_crop_resize() -> None:
    x = torch.zeros(3, 40, 60)
    x[:, :, 10:50] = 1.0  # the central square is all ones
    out = center_crop_resize(x, 16)
    assert out.shape == (3, 16, 16) and torch.allclose(out, torch.ones_like(out))
    lab = torch.randint(0, 12, (40, 60))
    assert center_crop_resize(lab, 20, labels=True).dtype == torch.int64


def test_parquet_with_19_class_masks(tmp_path) -> None:
    import datasets as hf

    images, masks = fake_faces(5)
    ds = hf.Dataset.from_dict(
        {"image": images, "mask": masks},
        features=hf.Features({"image": hf.Image(), "mask": hf.Image()}),
    )
    file = tmp_path / "faces.parquet"
    ds.to_parquet(str(file))
    faces = get_dataset(f"parquet:{file}", 32, cache_dir=tmp_path / "cache")
    assert len(faces) == 5
    x, y = faces[0]
    assert x.shape == (3, 32, 32) and -1 <= x.min() and x.max() <= 1
    assert set(y.unique().tolist()) <= {0, int(CELEBAMASK_TO_TOY[10]), int(CELEBAMASK_TO_TOY[17])}
    assert (y == 5).any()  # nose merged to the book's id 5
    # the second call reads the preprocessed cache
    cached = list((tmp_path / "cache").glob("*.safetensors"))
    assert len(cached) == 1
    again = get_dataset(f"parquet:{file}", 32, cache_dir=tmp_path / "cache")
    assert torch.equal(again.images, faces.images)


def test_folder_with_and_without_masks(tmp_path) -> None:
    images, masks = fake_faces(3)
    (tmp_path / "masks").mkdir()
    for i, (img, m) in enumerate(zip(images, masks, strict=True)):
        img.save(tmp_path / f"{i}.png")
        Image.fromarray(np.asarray(m) // 2).save(tmp_path / "masks" / f"{i}.png")  # ids 0, 5, 8
    faces = image_folder(tmp_path, 16, masks=tmp_path / "masks")
    images_b, labels_b = faces.batch([0, 2])
    assert images_b.shape == (2, 3, 16, 16) and labels_b.shape == (2, 16, 16)
    plain = image_folder(tmp_path, 16)
    assert plain.batch([0])[1] is None
    with pytest.raises(FileNotFoundError, match="no label map for 0.png"):
        image_folder(tmp_path, 16, masks=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        image_folder(tmp_path / "empty", 16)


def test_bad_masks_and_missing_data(tmp_path, monkeypatch) -> None:
    images, _ = fake_faces(1)
    bad = Image.fromarray(np.full((40, 50), 30, dtype=np.uint8))
    from interpddpm.datasets import from_records

    with pytest.raises(ValueError, match="CelebAMask-HQ"):
        from_records([{"image": images[0], "mask": bad}], 16, mask_column="mask")
    with pytest.raises(KeyError, match="no mask column"):
        from_records([{"image": images[0]}], 16, mask_column="mask")
    with pytest.raises(ValueError, match="unknown dataset"):
        get_dataset("imagenet", 32, cache_dir=tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetNotAvailableError, match="celebamask_hq"):
        get_dataset("celebamask-hq", 32, cache_dir=tmp_path)


def test_training_needs_masks_for_interpretable_runs(tmp_path) -> None:
    images, _ = fake_faces(4, 16, 16)
    for i, img in enumerate(images):
        img.save(tmp_path / f"{i}.png")
    from interpddpm.training import TrainConfig, train

    cfg = TrainConfig(
        dataset=f"folder:{tmp_path}",
        image_size=16,
        preset="tiny",
        batch_size=2,
        steps=1,
        interpretable=True,
        output_dir=str(tmp_path / "run"),
    )
    with pytest.raises(ValueError, match="needs label maps"):
        train(cfg, progress=False)
