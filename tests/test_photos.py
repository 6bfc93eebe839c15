"""Real photographs: loading, cropping, regions, and clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from interpddpm.photos import (
    CONCEPT_BOXES,
    EXAMPLES,
    FACE_BOXES,
    load_photo,
    load_rgb,
    photo_region,
)


class NoseParser:
    """A stand-in parser that labels a fixed square as nose (label 5)."""

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        labels = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long)
        labels[:, 7:9, 7:9] = 5
        return labels


class BlindParser:
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long)


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_load_offline(name: str) -> None:
    photo = load_photo(name, 32)
    assert photo.image.shape == (1, 3, 32, 32) and photo.image.dtype == torch.float32
    assert -1 <= float(photo.image.min()) < float(photo.image.max()) <= 1
    assert photo.box == FACE_BOXES[name] and photo.name == name
    # the default concept boxes fall inside the face crop and give separate regions
    masks = {c: photo_region(photo, c).mask for c in ("eyes", "nose", "mouth")}
    for concept, mask in masks.items():
        assert mask.shape == (1, 32, 32) and 0 < int(mask.sum()) < 32 * 32 // 8, concept
        assert photo_region(photo, concept).source == "default box"
    assert set(CONCEPT_BOXES[name]) == {"eyes", "nose", "mouth"}


def test_sources_agree_and_crop_maps_boxes() -> None:
    rgb = np.zeros((80, 100, 3), np.uint8)
    rgb[20:40, 30:50] = 255  # a white square
    arr = load_photo(rgb, 16, box=(20, 10, 60, 50))
    pil = load_photo(Image.fromarray(rgb), 16, box=(20, 10, 60, 50))
    torch.testing.assert_close(arr.image, pil.image)
    # the white square is pixels 10..30 x 10..30 of the 40x40 crop: 4..12 of the 16x16 image
    white = arr.image[0].mean(0) > 0
    assert white[5:11, 5:11].all() and not white[:3].any() and not white[:, 13:].any()
    box_mask = arr.box_mask((30, 20, 50, 40))[0]
    assert box_mask[4:12, 4:12].all() and int(box_mask.sum()) == 64
    # float arrays in [0, 1] and files work too; no box: the centred square
    assert load_photo(rgb.astype(np.float32) / 255, 16).box == (10, 0, 90, 80)


def test_load_from_file(tmp_path) -> None:
    path = tmp_path / "face.png"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(path)
    photo = load_photo(path, 32)
    assert photo.name == "face" and photo.image.shape == (1, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match="no photo file"):
        load_photo(tmp_path / "missing.png", 32)


def test_not_rgb_is_refused() -> None:
    with pytest.raises(ValueError, match="not an RGB"):
        load_rgb(Image.new("L", (40, 40)))
    with pytest.raises(ValueError, match=r"RGB \[H, W, 3\].*grayscale"):
        load_photo(np.zeros((40, 40), np.uint8), 32)
    with pytest.raises(ValueError, match=r"RGB \[H, W, 3\]"):
        load_photo(np.zeros((40, 40, 4), np.uint8), 32)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_photo(np.full((40, 40, 3), 2.0), 32)
    with pytest.raises(TypeError, match="cannot read a photo"):
        load_photo(torch.zeros(3, 40, 40), 32)
    # RGBA / palette images are colour images: accepted (transparency composited on white)
    with pytest.warns(UserWarning, match="transparency"):
        assert load_rgb(Image.new("RGBA", (4, 4))).shape == (4, 4, 3)


def test_crop_box_outside_the_image() -> None:
    rgb = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="outside the 64x64 photo"):
        load_photo(rgb, 32, box=(40, 0, 104, 64))
    with pytest.raises(ValueError, match="empty"):
        load_photo(rgb, 32, box=(10, 10, 10, 50))
    with pytest.raises(ValueError, match=r"\(left, top, right, bottom\)"):
        load_photo(rgb, 32, box=(1, 2, 3))


def test_image_too_small_names_the_minimum() -> None:
    with pytest.raises(ValueError, match="needs at least 32x32 pixels"):
        load_photo(np.zeros((20, 60, 3), np.uint8), 32)
    with pytest.raises(ValueError, match="smaller than the model's 32x32"):
        load_photo(np.zeros((64, 64, 3), np.uint8), 32, box=(0, 0, 20, 20))


def test_region_order_user_then_default_then_parser() -> None:
    photo = load_photo("astronaut", 16)
    user = torch.zeros(16, 16, dtype=torch.bool)
    user[2, 3] = True
    assert photo_region(photo, "nose", mask=user).source == "mask"
    assert torch.equal(photo_region(photo, "nose", mask=user).mask[0], user)
    by_box = photo_region(photo, "nose", box=(72, 0, 122, 50), parser=NoseParser())
    assert by_box.source == "box" and by_box.mask[0, :3, :3].all()
    assert photo_region(photo, "nose", parser=NoseParser()).source == "default box"
    plain = load_photo(np.zeros((40, 40, 3), np.uint8), 16)
    found = photo_region(plain, "nose", parser=NoseParser(), dilation=0)
    assert found.source == "parser" and int(found.mask.sum()) == 4


def test_concept_without_region_says_how_to_pass_a_box() -> None:
    plain = load_photo(np.zeros((40, 40, 3), np.uint8), 16, name="mine")
    with pytest.raises(ValueError, match=r"'mouth'.*'mine'.*parser found no mouth.*box=\("):
        photo_region(plain, "mouth", parser=BlindParser())
    with pytest.raises(ValueError, match=r"no region for the concept 'eyes'.*no parser"):
        photo_region(plain, "eyes")
    with pytest.raises(ValueError, match="unknown concept"):
        photo_region(plain, "ears")
    with pytest.raises(ValueError, match="is empty"):
        photo_region(plain, "nose", mask=torch.zeros(16, 16))
    with pytest.raises(ValueError, match=r"must be \[16, 16\]"):
        photo_region(plain, "nose", mask=torch.ones(8, 8))
    photo = load_photo("grace_hopper", 16)
    with pytest.raises(ValueError, match="does not overlap the face crop"):
        photo_region(photo, "nose", box=(0, 500, 40, 560))


def test_transparent_photos_are_composited_on_white(recwarn) -> None:
    """RGBA used to lose its alpha silently (a transparent pixel kept its hidden colour)."""
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 10, 10)  # red, hidden where transparent
    rgba[0, :, 3] = 255  # first row opaque
    rgba[1, 0, 3] = 0  # transparent -> white
    rgba[1, 1:, 3] = 128  # half transparent -> half-way to white
    with pytest.warns(UserWarning, match="composited on a white background"):
        rgb = load_rgb(Image.fromarray(rgba, "RGBA"))
    assert rgb[0].tolist() == [[200, 10, 10]] * 3
    assert rgb[1, 0].tolist() == [255, 255, 255]
    assert np.abs(rgb[1, 1].astype(int) - [227, 132, 132]).max() <= 1
    opaque = rgba.copy()
    opaque[..., 3] = 255
    recwarn.clear()
    assert load_rgb(Image.fromarray(opaque, "RGBA"))[1, 0].tolist() == [200, 10, 10]
    assert not [w for w in recwarn if "transparency" in str(w.message)]  # nothing to warn


def test_float_photos_with_nan_are_refused() -> None:
    photo = np.full((8, 8, 3), 0.5)
    photo[2, 3, 1] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite value"):
        load_rgb(photo)
    photo[2, 3, 1] = np.inf
    with pytest.raises(ValueError, match="must be finite"):
        load_photo(photo, 32)
