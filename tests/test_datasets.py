"""Real-data loaders, offline: fake datasets in the same on-disk and parquet formats."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from interpddpm.datasets import (
    CELEBAMASK_HQ_ID2LABEL,
    DatasetNotAvailableError,
    center_crop_resize,
    check_merged_areas,
    get_dataset,
    image_folder,
)
from interpddpm.parsing import BISENET_CLASSES, merge_table
from interpddpm.toyfaces import LABELS

#: Hub order (v-xchen-v/celebamask_hq's id2label.json) as a list of names in id order.
HUB_ORDER = [CELEBAMASK_HQ_ID2LABEL[str(i)] for i in range(19)]
#: Where fake_faces draws each part (rows, cols) on a 40 x 50 canvas, and the book id it becomes.
PARTS = {
    "hair": ((0, 5), (0, 50), 10),
    "skin": ((5, 40), (8, 42), 1),
    "l_eye": ((14, 18), (14, 20), 3),
    "r_eye": ((14, 18), (30, 36), 3),
    "nose": ((20, 27), (22, 28), 5),
    "u_lip": ((30, 32), (19, 31), 7),
    "mouth": ((32, 34), (19, 31), 6),
}


def fake_faces(
    n: int, h: int = 40, w: int = 50, order: list[str] | tuple[str, ...] = BISENET_CLASSES
) -> tuple[list[Image.Image], list[Image.Image]]:
    """Random images with face-shaped part masks, numbered in ``order`` (names in id order)."""
    rng = np.random.default_rng(0)
    images, masks = [], []
    for _ in range(n):
        images.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        m = np.zeros((h, w), dtype=np.uint8)
        for part, ((r0, r1), (c0, c1), _) in PARTS.items():
            m[r0 * h // 40 : r1 * h // 40, c0 * w // 50 : c1 * w // 50] = order.index(part)
        masks.append(Image.fromarray(m))
    return images, masks


def _parquet(path, order, n: int = 5) -> None:
    import datasets as hf

    images, masks = fake_faces(n, order=order)
    ds = hf.Dataset.from_dict(
        {"image": images, "label": masks},
        features=hf.Features({"image": hf.Image(), "label": hf.Image()}),
    )
    ds.to_parquet(str(path))


def _offline(monkeypatch) -> None:
    """Offline for real: huggingface_hub and datasets read HF_HUB_OFFLINE at import, so setting
    the variable alone leaves them trying the network (23 s of timeouts per test)."""
    import datasets as hf
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf.config, "HF_HUB_OFFLINE", True)


def test_merge_by_name_follows_each_sources_ids() -> None:
    hub, bisenet = merge_table(CELEBAMASK_HQ_ID2LABEL), merge_table(BISENET_CLASSES)
    eyes, skin, ear, hair = (LABELS.index(k) for k in ("eyes", "skin", "ears", "hair"))
    # the hub copy: 4 skin, 7/8 eyes, 9 glasses, 17/18 ears, 1 hair (its id2label.json)
    assert hub[4] == skin and hub[7] == hub[8] == hub[9] == eyes and hub[1] == hair
    assert hub[17] == hub[18] == hub[3] == ear
    # BiSeNet: 1 skin, 4/5 eyes; the same id means another part in the other source
    assert bisenet[1] == skin and bisenet[4] == bisenet[5] == eyes and hub[4] != bisenet[4]
    with pytest.raises(ValueError, match="unknown part names"):
        merge_table(["background", "sknn"])
    with pytest.raises(ValueError, match="every id"):
        merge_table({"0": "background", "2": "skin"})


def test_center_crop_resize() -> None:
    x = torch.zeros(3, 40, 60)
    x[:, :, 10:50] = 1.0  # the central square is all ones
    out = center_crop_resize(x, 16)
    assert out.shape == (3, 16, 16) and torch.allclose(out, torch.ones_like(out))
    lab = torch.randint(0, 12, (40, 60))
    assert center_crop_resize(lab, 20, labels=True).dtype == torch.int64


@pytest.mark.parametrize("order", ["bisenet", "hub"])
def test_parquet_with_19_class_masks(tmp_path, order) -> None:
    file = tmp_path / "faces.parquet"
    _parquet(file, BISENET_CLASSES if order == "bisenet" else HUB_ORDER)
    if order == "hub":  # the file's own ids, beside it
        (tmp_path / "id2label.json").write_text(json.dumps(CELEBAMASK_HQ_ID2LABEL))
    faces = get_dataset(f"parquet:{file}", 40, cache_dir=tmp_path / "cache")
    assert len(faces) == 5
    x, y = faces[0]
    assert x.shape == (3, 40, 40) and -1 <= x.min() and x.max() <= 1
    for part, ((r0, r1), (c0, c1), book_id) in PARTS.items():  # every part lands on its class
        row, col = r0 + 1 if part == "skin" else (r0 + r1) // 2, (c0 + c1) // 2 - 5  # crop: -5
        assert y[row, col] == book_id, part
    # the second call reads the preprocessed cache
    cached = list((tmp_path / "cache").glob("*.safetensors"))
    assert len(cached) == 1
    again = get_dataset(f"parquet:{file}", 40, cache_dir=tmp_path / "cache")
    assert torch.equal(again.images, faces.images)


def test_hub_order_read_in_bisenet_order_is_caught(tmp_path) -> None:
    """The bug this guards against: hub ids merged in BiSeNet's order (skin became eyes)."""
    file = tmp_path / "faces.parquet"
    _parquet(file, HUB_ORDER)  # no id2label.json: BiSeNet's order is assumed
    with pytest.raises(ValueError, match="largest face class is eyes, not skin"):
        get_dataset(f"parquet:{file}", 40, cache_dir=tmp_path / "cache")


def test_celebamask_hq_rows_in_the_hubs_format(tmp_path, monkeypatch) -> None:
    """Rows shaped like v-xchen-v/celebamask_hq (columns image, label; its ids), offline: the
    id2label.json fetch fails and the verified copy stands in."""
    import datasets as hf

    from interpddpm import datasets as dsets

    images, masks = fake_faces(6, order=HUB_ORDER)
    rows = hf.Dataset.from_dict(
        {"image": images, "label": masks},
        features=hf.Features({"image": hf.Image(), "label": hf.Image()}),
    )
    monkeypatch.setattr(dsets, "_load_hub", lambda repo, split: rows)
    _offline(monkeypatch)
    faces = get_dataset("celebamask-hq", 40, cache_dir=tmp_path)
    share = check_merged_areas(faces.labels, "test")
    assert max(("skin", "eyes", "nose", "mouth"), key=share.get) == "skin"
    _, y = faces[0]
    assert (y[15:17, 10:14] == LABELS.index("eyes")).all()  # l_eye (hub id 7), cols shifted by 5
    assert (y[6:13, 5:30] == LABELS.index("skin")).all()


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

    with pytest.raises(ValueError, match="mask ids must be in 0..18"):
        from_records([{"image": images[0], "mask": bad}], 16, mask_column="mask")
    with pytest.raises(KeyError, match="no mask column"):
        from_records([{"image": images[0]}], 16, mask_column="mask")
    with pytest.raises(ValueError, match="unknown dataset"):
        get_dataset("imagenet", 32, cache_dir=tmp_path)
    _offline(monkeypatch)
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


# --------------------------------------------------------------------- streamed cache files


def _hub_parquet(tmp_path, n: int = 12):
    """``n`` hub-ordered rows with their id2label.json, as the parquet: name expects them."""
    file = tmp_path / "src" / "faces.parquet"
    file.parent.mkdir()
    _parquet(file, HUB_ORDER, n)
    (file.parent / "id2label.json").write_text(json.dumps(CELEBAMASK_HQ_ID2LABEL))
    return f"parquet:{file}"


def _count_conversions(monkeypatch) -> list[int]:
    """Wrap the row converter; the list grows by one per converted row."""
    from interpddpm import datasets as dsets

    calls: list[int] = []
    convert = dsets._convert_row

    def counted(*args, **kwargs):
        calls.append(1)
        return convert(*args, **kwargs)

    monkeypatch.setattr(dsets, "_convert_row", counted)
    return calls


def test_streamed_cache_equals_an_independent_per_row_computation(tmp_path) -> None:
    from safetensors.torch import load_file

    from interpddpm.datasets import from_records

    size, n = 24, 12
    faces = get_dataset(_hub_parquet(tmp_path, n), size, cache_dir=tmp_path / "cache")
    (cached,) = (tmp_path / "cache").glob("*.safetensors")
    assert faces.path == cached and len(faces) == n
    assert faces.images.dtype == faces.labels.dtype == torch.uint8
    images, masks = fake_faces(n, order=HUB_ORDER)  # the same rows (stored as lossless PNG)
    merge = merge_table(CELEBAMASK_HQ_ID2LABEL)
    for i in (0, 5, n - 1):
        x = torch.from_numpy(np.array(images[i])).permute(2, 0, 1).float() / 127.5 - 1
        expected = ((center_crop_resize(x, size) + 1) * 127.5).round().clamp(0, 255)
        assert torch.equal(faces.images[i], expected.to(torch.uint8)), i
        ids = merge[torch.from_numpy(np.asarray(masks[i]).astype(np.int64))]
        assert torch.equal(faces.labels[i], center_crop_resize(ids, size, labels=True).byte()), i
        x_i, y_i = faces[i]
        assert torch.allclose(x_i, expected / 127.5 - 1) and y_i.dtype == torch.int64
    # the file is plain safetensors, and the in-memory path (no file) gives the same bytes
    stored = load_file(str(cached))
    assert torch.equal(stored["images"], faces.images)
    assert torch.equal(stored["labels"], faces.labels)
    rows = [{"image": im, "label": m} for im, m in zip(images, masks, strict=True)]
    held = from_records(rows, size, mask_column="label", id2label=CELEBAMASK_HQ_ID2LABEL)
    assert held.path is None and torch.equal(held.images, faces.images)
    assert torch.equal(held.labels, faces.labels)
    assert sorted(p.name for p in cached.parent.iterdir()) == [
        cached.name,
        cached.name + ".sha256",
    ]  # no temporary file left behind


def test_the_cache_is_reused_without_preprocessing(tmp_path, monkeypatch) -> None:
    import pickle

    name = _hub_parquet(tmp_path)
    first = get_dataset(name, 16, cache_dir=tmp_path / "cache")
    calls = _count_conversions(monkeypatch)
    again = get_dataset(name, 16, cache_dir=tmp_path / "cache")
    assert calls == [] and again.path == first.path
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    # a mapped dataset pickles (to DataLoader workers) as its path, not as its pixels
    blob = pickle.dumps(again)
    assert len(blob) < 1000 and torch.equal(pickle.loads(blob).images, first.images)


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "no digest"])
def test_a_damaged_cache_is_detected_and_rebuilt(tmp_path, monkeypatch, damage) -> None:
    from interpddpm.artifacts import digest_file

    name = _hub_parquet(tmp_path)
    first = get_dataset(name, 16, cache_dir=tmp_path / "cache")
    expected = first.images.clone(), first.labels.clone()  # `first` maps the damaged file
    del first
    (cached,) = (tmp_path / "cache").glob("*.safetensors")
    data = cached.read_bytes()
    if damage == "truncated":  # e.g. a full disk: the file ends inside the labels
        cached.write_bytes(data[: len(data) - 100])
    elif damage == "flipped byte":
        cached.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    else:
        digest_file(cached).unlink()
    calls = _count_conversions(monkeypatch)
    with pytest.warns(RuntimeWarning, match="cached dataset .*unusable"):
        again = get_dataset(name, 16, cache_dir=tmp_path / "cache")
    assert len(calls) == 12  # every row converted again
    assert torch.equal(again.images, expected[0]) and torch.equal(again.labels, expected[1])
    assert cached.read_bytes() == data  # the same file as the first build


def test_a_faces_file_whose_data_ends_early_is_refused(tmp_path) -> None:
    """The header check, without the digest: a file cut short never maps past its end."""
    from interpddpm.datasets import TensorFaces

    faces = TensorFaces(torch.zeros(3, 3, 8, 8, dtype=torch.uint8), None)
    faces.save(tmp_path / "f.safetensors")
    data = (tmp_path / "f.safetensors").read_bytes()
    (tmp_path / "f.safetensors").write_bytes(data[:-1])
    with pytest.raises(ValueError, match="not uint8 data inside the file"):
        TensorFaces.load(tmp_path / "f.safetensors")
    (tmp_path / "f.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match="is not a faces file"):
        TensorFaces.load(tmp_path / "f.safetensors")


def test_caches_written_by_safetensors_itself_still_map(tmp_path) -> None:
    """Caches of the previous version (``safetensors.torch.save_file``) keep their key and load."""
    from safetensors.torch import save_file

    from interpddpm.datasets import TensorFaces

    images = torch.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4).to(torch.uint8)
    labels = torch.arange(2 * 4 * 4).reshape(2, 4, 4).remainder(12).to(torch.uint8)
    save_file({"images": images, "labels": labels}, str(tmp_path / "old.safetensors"))
    faces = TensorFaces.load(tmp_path / "old.safetensors")
    assert torch.equal(faces.images, images) and torch.equal(faces.labels, labels)
    x, y = faces[1]
    assert torch.equal(y, labels[1].long()) and torch.allclose(x, images[1] / 127.5 - 1)


def test_limit_keeps_the_first_rows_in_a_cache_of_its_own(tmp_path, monkeypatch) -> None:
    name = _hub_parquet(tmp_path)
    full = get_dataset(name, 16, cache_dir=tmp_path / "cache")
    calls = _count_conversions(monkeypatch)
    head = get_dataset(name, 16, cache_dir=tmp_path / "cache", limit=4)
    assert len(calls) == 4 and len(head) == 4 and head.path != full.path
    assert torch.equal(head.images, full.images[:4]) and torch.equal(head.labels, full.labels[:4])
    assert len(get_dataset(name, 16, cache_dir=tmp_path / "cache", limit=100)) == 12


def test_a_wrong_id_order_fails_before_the_rest_is_converted(tmp_path, monkeypatch) -> None:
    from interpddpm import datasets as dsets

    file = tmp_path / "faces.parquet"
    _parquet(file, HUB_ORDER, 12)  # no id2label.json: BiSeNet's order is assumed (wrongly)
    monkeypatch.setattr(dsets, "CHECK_ROWS", 4)
    calls = _count_conversions(monkeypatch)
    with pytest.raises(ValueError, match="largest face class is eyes"):
        get_dataset(f"parquet:{file}", 16, cache_dir=tmp_path / "cache")
    assert len(calls) == 4  # checked on the first CHECK_ROWS rows, the other 8 never decoded
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-written is left


def test_folder_datasets_stream_to_the_cache_too(tmp_path) -> None:
    images, masks = fake_faces(5)
    (tmp_path / "masks").mkdir()
    for i, (img, m) in enumerate(zip(images, masks, strict=True)):
        img.save(tmp_path / f"{i}.png")
        Image.fromarray(np.asarray(m) // 2).save(tmp_path / "masks" / f"{i}.png")
    faces = get_dataset(f"folder:{tmp_path}", 16, cache_dir=tmp_path / "cache", limit=3)
    assert len(faces) == 3 and faces.path is not None and faces.path.is_file()
    in_memory = image_folder(tmp_path, 16, masks=tmp_path / "masks")
    assert torch.equal(faces.images, in_memory.images[:3])
    assert torch.equal(faces.labels, in_memory.labels[:3])
