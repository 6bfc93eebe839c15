"""Real photographs for real-image editing (chapter 09): load, crop to the face, find regions.

A photograph enters the method through DDIM inversion (eq. 10): :func:`load_photo` crops it to
a face box, resizes the crop to the model's resolution and maps it to ``[1, 3, S, S]`` in
[-1, 1], ready for :func:`interpddpm.sampling.ddim_invert` / :func:`interpddpm.editing.reconstruct`.

Two offline examples ship inside installed packages (no download):

- ``"astronaut"``: ``skimage.data.astronaut()`` (512x512, Eileen Collins, NASA);
- ``"grace_hopper"``: matplotlib's sample ``grace_hopper.jpg`` (512x600).

Editing needs the region of a concept (eyes, nose, mouth) in the cropped photo.
:func:`photo_region` takes, in this order: (a) a mask or box the user passes, (b) the default
concept box of a bundled example (:data:`CONCEPT_BOXES`), (c) the face parser's prediction when
it finds the concept. The toy-face parser has never seen a photograph, so (c) is a last resort
whose labels may be wrong or missing; when nothing gives a region, the error says how to pass a
box.

Boxes are ``(left, top, right, bottom)`` in the pixels of the ORIGINAL photograph (right and
bottom exclusive, as PIL's ``Image.crop``), so they can be read off the photo itself.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import UserError
from .regions import concept_ids, concept_name, dilate

__all__ = [
    "CONCEPT_BOXES",
    "EXAMPLES",
    "FACE_BOXES",
    "NoRegionError",
    "Photo",
    "Region",
    "load_photo",
    "load_rgb",
    "photo_region",
]

Box = tuple[int, int, int, int]  # (left, top, right, bottom), original pixels, right/bottom excl.

#: The bundled example photographs (offline).
EXAMPLES: tuple[str, ...] = ("astronaut", "grace_hopper")

#: Default face crops of the examples: square, head and shoulders with the head about half the
#: width, as the toy faces and CelebA-HQ crops are framed.
FACE_BOXES: dict[str, Box] = {
    "astronaut": (72, 0, 372, 300),
    "grace_hopper": (62, 30, 462, 430),
}

#: Default concept boxes of the examples (drawn by hand on the photographs; generous, like the
#: dilated parser masks the method uses on generated faces).
CONCEPT_BOXES: dict[str, dict[str, Box]] = {
    "astronaut": {
        "eyes": (188, 98, 262, 128),
        "nose": (210, 108, 238, 140),
        "mouth": (196, 138, 252, 162),
    },
    "grace_hopper": {
        "eyes": (180, 168, 350, 218),
        "nose": (238, 200, 292, 260),
        "mouth": (228, 260, 302, 292),
    },
}


class NoRegionError(UserError):
    """No region of a concept could be found (no mask, no box, and the parser found none)."""


# PIL modes that are colour images and convert to RGB without inventing colour.
_COLOUR_MODES = ("RGB", "RGBA", "RGBX", "P", "CMYK", "YCbCr", "LAB", "HSV")


def _example(name: str) -> np.ndarray:
    if name == "astronaut":
        try:
            from skimage import data
        except ImportError as err:  # scikit-image is in the `book` extra
            raise ImportError(
                "the 'astronaut' example needs scikit-image: pip install scikit-image"
            ) from err
        return np.asarray(data.astronaut())
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as file:
        return np.asarray(Image.open(file).convert("RGB"))


def load_rgb(source: Any) -> np.ndarray:
    """A photograph as a uint8 array ``[H, W, 3]``.

    ``source``: an example name (:data:`EXAMPLES`), a path to an image file, a PIL image, or an
    array ``[H, W, 3]`` (uint8, or float in [0, 1]). Grayscale images and arrays of other
    shapes are refused (the models are RGB), and so are float arrays with NaN or infinite
    values. A photo with transparency (RGBA, or a palette with a transparent colour) is
    composited on white, with a warning: the models know no transparency.
    """
    from PIL import Image

    if isinstance(source, str) and source in EXAMPLES:
        return _example(source)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"no photo file {str(path)!r}; give a path to an image, a PIL image, an array "
                f"[H, W, 3], or one of the bundled examples {', '.join(EXAMPLES)}."
            )
        with Image.open(path) as img:
            img.load()
            return load_rgb(img)
    if isinstance(source, Image.Image):
        if source.mode not in _COLOUR_MODES:
            raise ValueError(
                f"the photo is not an RGB colour image (PIL mode {source.mode!r}); the models "
                "generate RGB faces. Convert it with image.convert('RGB') if that is intended."
            )
        if source.mode == "RGBA" or (source.mode == "P" and "transparency" in source.info):
            rgba = source.convert("RGBA")
            if rgba.getextrema()[3][0] < 255:  # some pixel is (partly) transparent
                warnings.warn(
                    f"the photo has transparency (PIL mode {source.mode!r}); it is composited "
                    "on a white background. Composite it yourself (e.g. Image.alpha_composite) "
                    "for another background.",
                    UserWarning,
                    stacklevel=2,
                )
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
            return np.asarray(rgba.convert("RGB"))
        return np.asarray(source.convert("RGB"))
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[-1] != 3:
            raise ValueError(
                f"a photo array must be RGB [H, W, 3], got shape {list(source.shape)}"
                + (" (grayscale?)" if source.ndim == 2 or source.shape[-1:] == (1,) else "")
                + "."
            )
        if source.dtype == np.uint8:
            return source
        if np.issubdtype(source.dtype, np.floating):
            if not np.isfinite(source).all():
                bad = int((~np.isfinite(source)).sum())
                raise ValueError(
                    f"a float photo array has {bad} NaN or infinite value(s); a photo's values "
                    "must be finite, in [0, 1]. Fix or mask them first (e.g. np.nan_to_num)."
                )
            if source.size and (source.min() < 0 or source.max() > 1):
                raise ValueError("a float photo array must have values in [0, 1].")
            return (source * 255).round().astype(np.uint8)
        raise ValueError(f"a photo array must be uint8 or float in [0, 1], got {source.dtype}.")
    raise TypeError(
        f"cannot read a photo from {type(source).__name__}; give an example name "
        f"({', '.join(EXAMPLES)}), a path, a PIL image or an array [H, W, 3]."
    )


def _check_box(box: Any, width: int, height: int, what: str) -> Box:
    try:
        left, top, right, bottom = (int(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(
            f"{what} must be (left, top, right, bottom) in pixels, got {box!r}."
        ) from None
    if not (left < right and top < bottom):
        raise ValueError(f"{what} {box} is empty: need left < right and top < bottom.")
    if left < 0 or top < 0 or right > width or bottom > height:
        raise ValueError(
            f"{what} {tuple(box)} lies outside the {width}x{height} photo: need "
            f"0 <= left < right <= {width} and 0 <= top < bottom <= {height}."
        )
    return left, top, right, bottom


@dataclasses.dataclass(frozen=True, eq=False)
class Photo:
    """A photograph cropped to a face and resized for a model."""

    name: str
    image: Tensor  # [1, 3, S, S] in [-1, 1]
    box: Box  # the face crop, in the original photo's pixels
    original_size: tuple[int, int]  # (width, height) of the original photo
    concept_boxes: Mapping[str, Box]  # default concept boxes (original pixels); {} if none

    @property
    def size(self) -> int:
        """The model resolution S."""
        return int(self.image.shape[-1])

    def box_mask(self, box: Any) -> Tensor:
        """The pixels ``[1, S, S]`` (bool) of the crop covered by ``box`` (original pixels).

        A pixel belongs to the box when any part of it does, so a small box still covers at
        least one pixel.
        """
        width, height = self.original_size
        left, top, right, bottom = _check_box(box, width, height, "the concept box")
        l0, t0, r0, b0 = self.box
        sx, sy = self.size / (r0 - l0), self.size / (b0 - t0)
        x0, x1 = (left - l0) * sx, (right - l0) * sx
        y0, y1 = (top - t0) * sy, (bottom - t0) * sy
        if x1 <= 0 or y1 <= 0 or x0 >= self.size or y0 >= self.size:
            raise ValueError(
                f"the concept box {tuple(box)} does not overlap the face crop {self.box} of "
                f"{self.name!r}."
            )
        mask = torch.zeros(1, self.size, self.size, dtype=torch.bool)
        c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), self.size)
        r0_, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), self.size)
        mask[:, r0_:r1, c0:c1] = True
        return mask


def load_photo(source: Any, size: int, *, box: Any = None, name: str | None = None) -> Photo:
    """Load a photograph, crop it to ``box`` and resize it to ``size`` x ``size``.

    ``box`` (original pixels) defaults to :data:`FACE_BOXES` for the examples and to the largest
    centred square otherwise; a non-square box is stretched to a square. The crop must have at
    least ``size`` x ``size`` pixels (photos are never upsampled: the model would see blur).
    Resizing is antialiased bilinear, as for the datasets.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (the model's resolution), got {size!r}.")
    rgb = load_rgb(source)
    height, width = rgb.shape[:2]
    if name is None:
        name = source if isinstance(source, str) and source in EXAMPLES else "photo"
        if isinstance(source, str | os.PathLike) and name == "photo":
            name = Path(source).stem
    if min(height, width) < size:
        raise ValueError(
            f"the photo {name!r} is {width}x{height} pixels; the model works at {size}x{size}, "
            f"so a photo needs at least {size}x{size} pixels."
        )
    is_example = isinstance(source, str) and source in EXAMPLES
    if box is None:
        if is_example:
            box = FACE_BOXES[source]
        else:
            side = min(height, width)
            left, top = (width - side) // 2, (height - side) // 2
            box = (left, top, left + side, top + side)
    left, top, right, bottom = _check_box(box, width, height, "the face box")
    if right - left < size or bottom - top < size:
        raise ValueError(
            f"the face box {(left, top, right, bottom)} is {right - left}x{bottom - top} pixels, "
            f"smaller than the model's {size}x{size}; use a box of at least {size}x{size}."
        )
    crop = torch.from_numpy(np.array(rgb[top:bottom, left:right]))  # a writable copy
    x = crop.permute(2, 0, 1).unsqueeze(0).float() / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    image = (x.clamp(0, 1) * 2 - 1).contiguous()
    defaults = CONCEPT_BOXES.get(source, {}) if is_example else {}
    return Photo(name, image, (left, top, right, bottom), (width, height), dict(defaults))


@dataclasses.dataclass(frozen=True, eq=False)
class Region:
    """The region of one concept in a photo: ``mask [1, S, S]`` (bool) and where it came from
    (``"mask"``, ``"box"``, ``"default box"`` or ``"parser"``)."""

    concept: str
    mask: Tensor
    source: str


def photo_region(
    photo: Photo,
    concept: str,
    *,
    mask: Tensor | None = None,
    box: Any = None,
    parser: Any = None,
    dilation: int = 1,
) -> Region:
    """The region of ``concept`` in ``photo``: the user's ``mask`` or ``box``, else the
    example's default box, else the parser's (dilated) prediction when it finds the concept.

    ``mask``: bool/0-1 tensor ``[S, S]`` or ``[1, S, S]`` at the model resolution; ``box``:
    ``(left, top, right, bottom)`` in the original photo's pixels. Raises ``ValueError`` naming
    the concept when none of them gives a non-empty region (:class:`NoRegionError`, with how to
    pass a box, when there is simply none; plain ``ValueError`` for a malformed mask or box).
    """
    name = concept_name(concept)
    ids = concept_ids(concept)  # validates the concept
    size = photo.size
    if mask is not None:
        m = torch.as_tensor(mask)
        if m.ndim == 2:
            m = m.unsqueeze(0)
        if m.shape != (1, size, size):
            raise ValueError(
                f"the mask of {name!r} must be [{size}, {size}] or [1, {size}, {size}] (the "
                f"model resolution), got {list(torch.as_tensor(mask).shape)}."
            )
        if not ((m == 0) | (m == 1)).all():
            raise ValueError(f"the mask of {name!r} must hold 0/1 or bool values.")
        m = m.bool()
        if not m.any():
            raise ValueError(f"the mask given for {name!r} is empty.")
        return Region(name, m.cpu(), "mask")
    if box is not None:
        return Region(name, photo.box_mask(box), "box")
    if isinstance(concept, str) and concept in photo.concept_boxes:
        return Region(name, photo.box_mask(photo.concept_boxes[concept]), "default box")
    found = ""
    if parser is not None:
        labels = parser.predict(photo.image).cpu()
        m = dilate(torch.isin(labels, torch.tensor(ids)), dilation)
        if m.any():
            return Region(name, m, "parser")
        found = f"the parser found no {name} pixels in it, and "
    else:
        found = "no parser was given, and "
    raise NoRegionError(
        f"no region for the concept {name!r} in the photo {photo.name!r}: {found}it has no "
        f"default {name} box. Pass one: photo_region(photo, {name!r}, box=(left, top, right, "
        f"bottom)) in the pixels of the original {photo.original_size[0]}x"
        f"{photo.original_size[1]} photo, or mask=<bool tensor [{size}, {size}]>."
    )
