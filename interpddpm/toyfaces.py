"""Toy faces: an embedded procedural face dataset with exact label maps.

Each item is a cartoon face (background, cloth, neck, ears, face, hair, optional hat, eyebrows,
eyes, nose, mouth) drawn in painter's order on a supersampled grid and box-filtered down, so edges
are antialiased, together with its per-pixel label map in the label set shared with
CelebAMask-HQ (:data:`LABELS`). Nothing is stored on disk: items are generated on the fly.

Reproducibility. The random parameters of item ``i`` come from a CPU ``torch.Generator`` seeded
with a SHA-256 hash of ``(seed, i)`` (independent of Python's hash randomisation and of ``size``:
the same face at every resolution). Only ``torch.rand`` is drawn, parameters are derived with
plain Python float arithmetic, and the geometry on the subpixel grid uses only ``+ - * /``,
``floor``, comparisons and ``where`` in float32 (no ``sin``/``exp``, whose last bits vary between
CPUs and SIMD paths). IEEE 754 makes those operations bit-exact, so label maps are identical on
every machine and independent of how items are batched; image values can differ in the last
bits only (the box filter's summation order is up to the backend).

Serves chapters 4 to 12: the data of the cpu profiles.
"""

from __future__ import annotations

import colorsys
import hashlib
import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = [
    "CONCEPTS",
    "LABELS",
    "LABEL_COLORS",
    "N_CLASSES",
    "ToyFaces",
    "colorize_labels",
    "render_faces",
    "sample_grid",
    "sample_params",
]

LABELS: tuple[str, ...] = (
    "background",
    "skin",
    "eyebrows",
    "eyes",
    "ears",
    "nose",
    "mouth",
    "lips",
    "neck",
    "cloth",
    "hair",
    "hat",
)
N_CLASSES = 12
BACKGROUND, SKIN, EYEBROWS, EYES, EARS, NOSE, MOUTH, LIPS, NECK, CLOTH, HAIR, HAT = range(N_CLASSES)

# Visual concepts as sets of label ids (the regions the method edits).
CONCEPTS: dict[str, tuple[int, ...]] = {
    "eyes": (EYES,),
    "nose": (NOSE,),
    "mouth": (MOUTH, LIPS),
    "eyebrows": (EYEBROWS,),
    "hair": (HAIR,),
}

# A fixed colour per label id, RGB in [0, 1], for plotting label maps.
LABEL_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 0.0),  # background
    (0.95, 0.78, 0.62),  # skin
    (0.0, 0.9, 0.9),  # eyebrows
    (0.1, 0.45, 1.0),  # eyes
    (0.85, 0.55, 0.85),  # ears
    (1.0, 0.85, 0.0),  # nose
    (0.45, 0.0, 0.1),  # mouth
    (1.0, 0.15, 0.25),  # lips
    (0.7, 0.6, 0.45),  # neck
    (0.2, 0.7, 0.3),  # cloth
    (0.55, 0.35, 0.2),  # hair
    (0.6, 0.6, 1.0),  # hat
)

MIN_SIZE = 16
SUPERSAMPLE = 3  # subpixels per pixel side (9 per pixel); odd, so pixel centres are subpixels
_N_DRAWS = 128  # uniforms drawn per item (a fixed budget so the stream never shifts)
_MAX_SUBPIXELS = 1 << 19  # subpixels per render chunk: bounds peak memory (~300 B each)

# Skin tones from light to dark; a face interpolates between neighbours.
_SKIN_TONES = (
    (1.00, 0.87, 0.77),
    (0.96, 0.80, 0.69),
    (0.91, 0.72, 0.58),
    (0.80, 0.58, 0.43),
    (0.64, 0.44, 0.30),
    (0.47, 0.31, 0.21),
    (0.33, 0.22, 0.15),
)
_HAIR_COLOURS = (
    (0.08, 0.07, 0.07),  # black
    (0.24, 0.15, 0.09),  # dark brown
    (0.45, 0.29, 0.16),  # brown
    (0.58, 0.24, 0.10),  # auburn
    (0.86, 0.72, 0.44),  # blonde
    (0.62, 0.62, 0.62),  # grey
    (0.90, 0.89, 0.86),  # white
    (0.25, 0.35, 0.75),  # dyed blue
    (0.85, 0.40, 0.65),  # dyed pink
)
_HAIR_WEIGHTS = (0.26, 0.22, 0.16, 0.08, 0.12, 0.06, 0.04, 0.03, 0.03)
_IRIS_COLOURS = (
    (0.30, 0.17, 0.08),  # brown
    (0.15, 0.09, 0.05),  # dark brown
    (0.25, 0.50, 0.85),  # blue
    (0.25, 0.55, 0.30),  # green
    (0.45, 0.50, 0.55),  # grey
    (0.55, 0.40, 0.15),  # hazel
)
# Hair styles; the back layer (drawn behind the head) depends on the style.
_BALD, _SHORT, _BOB, _LONG, _AFRO, _BUN = range(6)
_STYLE_WEIGHTS = (0.06, 0.34, 0.15, 0.25, 0.10, 0.10)
# Mouth styles.
_CLOSED, _OPEN, _ROUND = range(3)
_MOUTH_WEIGHTS = (0.5, 0.35, 0.15)


# --------------------------------------------------------------------------- parameters


def _item_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed from (seed, index), the same in every process and machine."""
    digest = hashlib.sha256(f"interpddpm.toyfaces:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class _Draws:
    """Hands out the item's uniforms in order; all parameters derive from them arithmetically."""

    def __init__(self, generator: torch.Generator) -> None:
        self._u = torch.rand(_N_DRAWS, generator=generator, dtype=torch.float64).tolist()
        self._k = 0

    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        if self._k >= len(self._u):  # a programming error: raise _N_DRAWS
            raise RuntimeError("toyfaces: parameter draw budget exhausted")
        x = self._u[self._k]
        self._k += 1
        return lo + (hi - lo) * x

    def choice(self, weights: Sequence[float]) -> int:
        x = self.uniform() * sum(weights)
        for k, w in enumerate(weights):
            x -= w
            if x < 0:
                return k
        return len(weights) - 1

    def sign(self) -> float:
        return 1.0 if self.uniform() < 0.5 else -1.0


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> tuple[float, float, float]:
    return (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]), a[2] + t * (b[2] - a[2]))


def _scale(c: Sequence[float], f: float) -> tuple[float, float, float]:
    return (min(1.0, c[0] * f), min(1.0, c[1] * f), min(1.0, c[2] * f))


def _hsv(d: _Draws, s: tuple[float, float], v: tuple[float, float]) -> tuple[float, float, float]:
    return colorsys.hsv_to_rgb(d.uniform(), d.uniform(*s), d.uniform(*v))


def sample_params(seed: int, index: int) -> dict[str, Any]:
    """The random parameters of face ``index`` of dataset ``seed`` (floats and RGB triples).

    Lengths are in image half-widths (the image spans [-1, 1]); face-local coordinates ``u``
    (right) and ``v`` (down) are centred on the face and follow its rotation and scale.
    """
    g = torch.Generator(device="cpu")
    g.manual_seed(_item_seed(seed, index))
    d = _Draws(g)
    p: dict[str, Any] = {}

    # Pose: centre, scale, in-plane rotation (rational cos/sin of the half-angle tangent keep
    # the geometry to + - * /), and yaw, which shifts the features sideways.
    p["cx"] = d.uniform(-0.07, 0.07)
    p["cy"] = d.uniform(-0.1, 0.0)
    p["scale"] = d.uniform(1.0, 1.2)
    t = d.uniform(-0.06, 0.06)  # tan(angle / 2): up to about 7 degrees
    p["cos"] = (1 - t * t) / (1 + t * t)
    p["sin"] = 2 * t / (1 + t * t)
    yaw = d.uniform(-1.0, 1.0)
    p["yaw"] = yaw
    p["shift"] = 0.05 * yaw

    # Head shape.
    p["a"] = d.uniform(0.40, 0.50)
    p["b"] = d.uniform(0.52, 0.62)
    p["chin"] = d.uniform(0.92, 1.08)
    p["jaw"] = d.uniform(0.0, 0.3)

    # Colours.
    tone = d.uniform(0.0, len(_SKIN_TONES) - 1.0)
    k = min(int(tone), len(_SKIN_TONES) - 2)
    skin = _scale(_mix(_SKIN_TONES[k], _SKIN_TONES[k + 1], tone - k), d.uniform(0.95, 1.05))
    p["skin"] = skin
    hair = _scale(_HAIR_COLOURS[d.choice(_HAIR_WEIGHTS)], d.uniform(0.85, 1.15))
    p["hair_col"] = hair
    p["bg0"] = _hsv(d, (0.05, 0.5), (0.35, 0.95))
    p["bg1"] = _hsv(d, (0.05, 0.5), (0.35, 0.95))
    p["bg_gx"] = d.uniform(-0.5, 0.5)
    p["bg_gy"] = d.uniform(-0.5, 0.5)
    p["cloth_col"] = _hsv(d, (0.2, 0.85), (0.25, 0.9))
    p["collar_col"] = _hsv(d, (0.0, 0.4), (0.6, 1.0))
    p["iris_col"] = _scale(_IRIS_COLOURS[d.choice((3, 2, 2, 1.5, 1, 1))], d.uniform(0.85, 1.15))
    lip_t = d.uniform(0.45, 0.75)
    lipstick = d.uniform() < 0.15
    # Lipstick hues stay in the reds, pinks and purples so lips always read as lips.
    hue = d.uniform(0.8, 1.04) % 1.0
    lipstick_col = colorsys.hsv_to_rgb(hue, d.uniform(0.5, 0.8), d.uniform(0.5, 0.85))
    lip_target = lipstick_col if lipstick else (0.75, 0.22, 0.27)
    if lipstick:
        lip_t = 0.85
    p["lip_col"] = _mix(skin, lip_target, lip_t)
    p["mouth_col"] = _scale((0.38, 0.06, 0.09), d.uniform(0.7, 1.2))
    p["brow_col"] = _mix(hair, (0.1, 0.07, 0.05), d.uniform(0.2, 0.7))
    p["hat_col"] = _hsv(d, (0.3, 0.9), (0.3, 0.95))
    p["band_col"] = _hsv(d, (0.0, 0.8), (0.2, 1.0))

    # Cloth and neck.
    p["shoulder_y"] = d.uniform(0.62, 0.8)
    p["shoulder_k"] = d.uniform(0.15, 0.45)
    p["neckline"] = 1.0 if d.uniform() < 0.5 else 0.0  # 1: V neck, 0: round
    p["neckline_depth"] = d.uniform(0.08, 0.22)
    p["collar"] = 1.0 if d.uniform() < 0.4 else 0.0
    p["neck_w"] = d.uniform(0.19, 0.25)

    # Ears.
    p["ear_w"] = d.uniform(0.06, 0.09)
    p["ear_h"] = d.uniform(0.10, 0.14)
    p["ear_v"] = d.uniform(0.0, 0.08)

    # Hair.
    p["style"] = float(d.choice(_STYLE_WEIGHTS))
    p["hair_side"] = d.uniform(0.03, 0.09)
    p["hair_top"] = d.uniform(0.05, 0.18)
    p["hairline"] = d.uniform(0.52, 0.72)  # fraction of b above the face centre
    p["part"] = d.uniform(-0.5, 0.5) if d.uniform() < 0.5 else 0.0
    p["temple"] = d.uniform(0.0, 0.6)
    p["fringe_zig"] = d.uniform(0.02, 0.05) if d.uniform() < 0.2 else 0.0
    p["fringe_period"] = d.uniform(0.1, 0.16)
    p["sideburn"] = d.uniform(-0.1, 0.05)
    p["back_w"] = d.uniform(0.08, 0.22)
    p["back_len"] = d.uniform(0.25, 0.45) if p["style"] == _BOB else d.uniform(0.6, 1.3)
    p["bun_r"] = d.uniform(0.14, 0.2)

    # Hat.
    p["hat"] = 1.0 if d.uniform() < 0.2 else 0.0
    p["hat_brim"] = 1.0 if d.uniform() < 0.5 else 0.0
    p["hat_v"] = d.uniform(0.4, 0.6)  # fraction of b above the face centre
    p["hat_dir"] = d.sign()

    # Eyes and eyebrows.
    p["eye_v"] = d.uniform(-0.12, -0.04)
    p["eye_x"] = d.uniform(0.16, 0.21)
    p["eye_w"] = d.uniform(0.095, 0.13)
    p["eye_h"] = d.uniform(0.06, 0.09)
    p["iris_r"] = d.uniform(0.8, 1.0)
    p["gaze"] = d.uniform(-0.35, 0.35)
    p["brow_gap"] = d.uniform(0.05, 0.09)
    p["brow_len"] = d.uniform(0.09, 0.14)
    p["brow_th"] = d.uniform(0.018, 0.035)
    p["brow_arch"] = d.uniform(-0.01, 0.04)
    p["brow_tilt"] = d.uniform(-0.25, 0.25)

    # Nose.
    p["nose_v"] = d.uniform(0.14, 0.22)
    p["nose_w"] = d.uniform(0.095, 0.125)
    p["nose_h"] = d.uniform(0.06, 0.085)
    p["nose_top_w"] = d.uniform(0.025, 0.045)
    # Darken dark skin a little more so that the nose stays visible in absolute terms.
    luminance = 0.3 * skin[0] + 0.59 * skin[1] + 0.11 * skin[2]
    p["nose_dark"] = min(d.uniform(0.66, 0.8), 1 - 0.09 / luminance)
    p["nose_pink"] = 1.0 if d.uniform() < 0.2 else 0.0
    p["nose_light"] = d.sign()  # the lit side of the nose

    # Mouth.
    p["mouth_style"] = float(d.choice(_MOUTH_WEIGHTS))
    p["mouth_v"] = d.uniform(0.31, 0.39)
    p["mouth_w"] = d.uniform(0.17, 0.24)
    p["mouth_h"] = d.uniform(0.055, 0.08) if p["mouth_style"] == _CLOSED else d.uniform(0.07, 0.1)
    p["smile"] = d.uniform(-0.015, 0.07)
    p["blush"] = 1.0 if d.uniform() < 0.25 else 0.0
    return p


# --------------------------------------------------------------------------- rendering


def _ell(u: torch.Tensor, v: torch.Tensor, u0: Any, v0: Any, a: Any, b: Any) -> torch.Tensor:
    """Normalised squared radius of an axis-aligned ellipse (<= 1 inside)."""
    du = (u - u0) / a
    dv = (v - v0) / b
    return du * du + dv * dv


def _zigzag(t: torch.Tensor) -> torch.Tensor:
    """Triangle wave in [0, 1] with period 2, from floor and basic arithmetic only."""
    return (t - 2 * torch.floor(t / 2) - 1).abs()


class _Canvas:
    """Painter's-order canvas (later layers win) on the supersampled grid.

    Instead of RGB planes it keeps a layer id and a brightness factor per subpixel; colours
    are looked up once at the end. Every layer's colour is a per-face RGB times that factor,
    so a paint costs two single-plane writes rather than three RGB ones.
    """

    def __init__(self, n: int, side: int) -> None:
        self.n = n
        self.layer = torch.zeros(n, side, side, dtype=torch.uint8)  # 0: background
        self.shade = torch.ones(n, side, side, dtype=torch.float32)
        self.colours: list[torch.Tensor] = [torch.zeros(n, 3)]  # per layer id: [n, 3]
        self.classes: list[int] = [BACKGROUND]

    def paint(
        self,
        mask: torch.Tensor,
        colour: torch.Tensor,
        label: int,
        shade: torch.Tensor | None = None,
    ) -> None:
        self.colours.append(colour.reshape(self.n, 3).to(torch.float32))
        self.classes.append(label)
        self.layer.masked_fill_(mask, len(self.classes) - 1)
        if shade is None:
            self.shade.masked_fill_(mask, 1.0)
        else:
            self.shade = torch.where(mask, shade, self.shade)


def _render_chunk(params: Sequence[dict[str, Any]], size: int, ss: int) -> tuple[torch.Tensor, ...]:
    n = len(params)
    f32 = torch.float32

    # Parameters are rounded once from float64 to float32; everything on the grid then uses
    # IEEE-exact operations only (see the module docstring).
    def scalar(key: str) -> torch.Tensor:
        return torch.tensor([p[key] for p in params], dtype=f32).view(n, 1, 1)

    def rgb(key: str) -> torch.Tensor:
        return torch.tensor([p[key] for p in params], dtype=f32).view(n, 3)

    def flag(key: str, value: float = 1.0) -> torch.Tensor:
        return torch.tensor([p[key] == value for p in params]).view(n, 1, 1)

    side = size * ss
    # Subpixel centres (2j + 1) / side - 1: exact, symmetric about 0.
    coords = (2 * torch.arange(side, dtype=f32) + 1) / side - 1
    x = coords.view(1, 1, side)
    y = coords.view(1, side, 1)

    cx, cy, sc = scalar("cx"), scalar("cy"), scalar("scale")
    cs, sn = scalar("cos"), scalar("sin")
    px, py = x - cx, y - cy
    u = (cs * px + sn * py) / sc  # face-local coordinates: rotate and scale about the centre
    v = (cs * py - sn * px) / sc

    a, b = scalar("a"), scalar("b")
    shift, yaw = scalar("shift"), scalar("yaw")
    skin = rgb("skin")
    style = torch.tensor([p["style"] for p in params]).view(n, 1, 1)
    canvas = _Canvas(n, side)

    # Cloth: shoulders below a parabola in image coordinates (the body does not tilt with the
    # head), with a V or round neckline cut out so the neck shows.
    xo = x - cx
    sy = scalar("shoulder_y")
    shoulders = y > sy + scalar("shoulder_k") * xo * xo
    neck_w = scalar("neck_w") * sc
    depth = scalar("neckline_depth")
    v_neck = flag("neckline")
    v_cut = (y - sy) < depth * (1 - xo.abs() / (1.15 * neck_w))
    round_cut = _ell(xo, y, 0.0, sy, 1.1 * neck_w, depth) < 1
    cloth = shoulders & ~torch.where(v_neck, v_cut, round_cut)
    canvas.paint(cloth, rgb("cloth_col"), CLOTH)
    collar_cut = torch.where(
        v_neck,
        (y - sy) < (depth + 0.06) * (1 - xo.abs() / (1.15 * neck_w + 0.12)),
        _ell(xo, y, 0.0, sy, 1.1 * neck_w + 0.05, depth + 0.05) < 1,
    )
    canvas.paint(cloth & collar_cut & flag("collar"), rgb("collar_col"), CLOTH)

    # Hair behind the head: shoulder-length, long, afro volume or a bun. Slightly darker
    # vertical strands give the hair some texture at 64x64.
    top = scalar("hair_top")
    back_w = a + scalar("back_w")
    back_top = _ell(u, v, 0.0, -0.02, back_w, b + top) < 1
    ub = u / back_w
    straight = (ub.abs() < 1) & (v >= -0.02) & (v < scalar("back_len") - 0.25 * ub * ub)
    long_back = (style == _BOB) | (style == _LONG)
    afro = _ell(u, v, 0.0, -0.12, a + 0.25, b + 0.2) < 1
    bun = _ell(u, v, 0.0, -b - top - 0.08, scalar("bun_r"), scalar("bun_r")) < 1
    back = (long_back & (back_top | straight)) | ((style == _AFRO) & afro) | ((style == _BUN) & bun)
    strands = 0.85 + 0.12 * _zigzag(u * 12.0)
    canvas.paint(back, rgb("hair_col") * 0.88, HAIR, strands)

    # Neck, darker under the chin; it stops at the cloth.
    neck = (u.abs() < scalar("neck_w")) & (v > 0.0) & ~cloth
    canvas.paint(neck, skin, NECK, 0.72 + 0.16 * ((v - b) / 0.3).clamp(0.0, 1.0))

    # Ears, drawn before the face so it covers their inner half; yaw makes the far ear bigger.
    ear_w, ear_h, ear_v = scalar("ear_w"), scalar("ear_h"), scalar("ear_v")
    ears = torch.zeros_like(neck)
    inner_ears = torch.zeros_like(neck)
    for sgn in (-1.0, 1.0):
        grow = 1 + 0.35 * sgn * yaw
        ue = sgn * (a - 0.02) + shift * 0.5
        ears |= _ell(u, v, ue, ear_v, ear_w * grow, ear_h) < 1
        inner_ears |= _ell(u, v, ue + sgn * 0.015, ear_v, 0.5 * ear_w * grow, 0.6 * ear_h) < 1
    canvas.paint(ears, skin * 0.93, EARS)
    canvas.paint(inner_ears, skin * 0.78, EARS)

    # Face: an egg (longer chin below) with a narrowing jaw, shaded darker towards the rim.
    vb = torch.where(v > 0, b * scalar("chin"), b)
    vj = (v / vb).clamp(0.0, 1.0)
    r2 = _ell(u, v, 0.0, 0.0, a * (1 - scalar("jaw") * vj * vj), vb)
    face = r2 < 1
    canvas.paint(face, skin, SKIN, 1.04 - 0.14 * r2)
    cheeks = (_ell(u.abs(), v, 0.26, 0.13, 0.08, 0.05) < 1) & face & flag("blush")
    canvas.paint(cheeks, skin + 0.3 * (rgb("lip_col") - skin), SKIN, 1.04 - 0.14 * r2)

    # Hair in front: a cap over the top of the head down to a hairline (straight, side part,
    # receding temples or a zigzag fringe), plus sideburns.
    cap = _ell(u, v, 0.0, -0.02, a + scalar("hair_side"), b + top) < 1
    hairline = (
        -b * scalar("hairline")
        + scalar("part") * b * 0.35 * u
        - scalar("temple") * u * u
        + scalar("fringe_zig") * _zigzag(u / scalar("fringe_period"))
    )
    sideburn = (u.abs() > 0.8 * a) & (v < scalar("sideburn"))
    front = cap & ((v < hairline) | sideburn) & (style != _BALD)
    canvas.paint(front, rgb("hair_col"), HAIR, strands)

    # Hat: a dome over the head cut at a band line low on the forehead but above the
    # eyebrows, with a band and sometimes a brim.
    eye_x, eye_v = scalar("eye_x"), scalar("eye_v")
    eye_w, eye_h = scalar("eye_w"), scalar("eye_h")
    brow_top = eye_v - eye_h - scalar("brow_gap") - scalar("brow_th")
    hat_v = torch.minimum(-b * scalar("hat_v"), brow_top - 0.03)
    has_hat = flag("hat")
    dome = (_ell(u, v, 0.0, -0.02, a + 0.1, b + top + 0.04) < 1) & (v < hat_v) & has_hat
    brim = (_ell(u, v, scalar("hat_dir") * 0.12, hat_v, a + 0.22, 0.045) < 1) & has_hat
    brim &= flag("hat_brim")
    band = (u.abs() < a + 0.11) & (v < hat_v) & (v > hat_v - 0.08) & (dome | brim)
    canvas.paint(dome, rgb("hat_col"), HAT)
    canvas.paint(band, rgb("band_col"), HAT)
    canvas.paint(brim & (v > hat_v - 0.01), rgb("hat_col") * 0.8, HAT)

    # Eyebrows: arched, tilted bars above the eyes.
    blen, bth = scalar("brow_len"), scalar("brow_th")
    brows = torch.zeros_like(neck)
    for sgn in (-1.0, 1.0):
        rel = (u - sgn * eye_x - shift) / blen
        centre = eye_v - eye_h - scalar("brow_gap") + scalar("brow_arch") * (rel * rel - 1)
        centre = centre - sgn * scalar("brow_tilt") * 0.1 * rel
        brows |= (rel.abs() < 1) & ((v - centre).abs() < bth * (1 - 0.35 * rel * sgn))
    canvas.paint(brows, rgb("brow_col"), EYEBROWS)

    # Eyes: a dark lash outline, the white, the iris (clipped to the white), the pupil and a
    # highlight. All of it is the eyes class.
    parts = {k: torch.zeros_like(neck) for k in ("outline", "white", "iris", "pupil", "glint")}
    iris_shade = torch.ones_like(u)
    for sgn in (-1.0, 1.0):
        ue = sgn * eye_x + shift
        ew = eye_w * (1 + 0.15 * sgn * yaw)
        parts["outline"] |= _ell(u, v, ue, eye_v - 0.008, ew + 0.018, eye_h + 0.02) < 1
        white = _ell(u, v, ue, eye_v, ew, eye_h) < 1
        parts["white"] |= white
        ri = torch.minimum(eye_h * scalar("iris_r"), 0.65 * ew)
        ui = ue + scalar("gaze") * ew * 0.45
        iris = _ell(u, v, ui, eye_v, ri, ri)
        parts["iris"] |= white & (iris < 1)
        iris_shade = torch.where(iris < 1, 1.1 - 0.35 * iris, iris_shade)
        parts["pupil"] |= white & (iris < 0.25)
        glint = _ell(u, v, ui - 0.35 * ri, eye_v - 0.35 * ri, 0.25 * ri, 0.25 * ri) < 1
        parts["glint"] |= white & glint
    grey = torch.ones(n, 3)
    canvas.paint(parts["outline"], skin * 0.25, EYES)
    canvas.paint(parts["white"], grey * 0.96, EYES)
    canvas.paint(parts["iris"], rgb("iris_col"), EYES, iris_shade)
    canvas.paint(parts["pupil"], grey * 0.05, EYES)
    canvas.paint(parts["glint"], grey, EYES)

    # Nose: a bridge widening into a bulb, darker (or pinker) than the skin and lit on one
    # side, with two nostrils.
    un = 1.6 * shift
    nv, nw, nh = scalar("nose_v"), scalar("nose_w"), scalar("nose_h")
    bulb_v = nv - nh
    bulb = _ell(u, v, un, bulb_v, nw, nh) < 1
    top_v = eye_v + 0.01
    frac = ((v - top_v) / (bulb_v - top_v)).clamp(0.0, 1.0)
    half = scalar("nose_top_w") + frac * (0.75 * nw - scalar("nose_top_w"))
    bridge = ((u - un).abs() < half) & (v > top_v) & (v < bulb_v)
    dark = skin * scalar("nose_dark").view(n, 1)
    pink = dark * torch.tensor([[1.15, 0.92, 0.92]])
    base = torch.where(flag("nose_pink").view(n, 1), pink, dark)
    lit = ((u - un) / nw * scalar("nose_light")).clamp(-1.0, 1.0)
    canvas.paint(bulb | bridge, base, NOSE, 1 + 0.1 * lit)
    nostrils = _ell((u - un).abs(), v, 0.45 * nw, nv - 0.45 * nh, 0.24 * nw, 0.3 * nh) < 1
    canvas.paint(nostrils, skin * 0.45, NOSE)

    # Mouth: lips (class 7) around the inner mouth (class 6), bent along a smile curve.
    mw, mh = scalar("mouth_w"), scalar("mouth_h")
    um = u - 1.2 * shift
    rel = um / mw
    w = v - (scalar("mouth_v") - scalar("smile") * rel * rel)  # distance below the smile curve
    mstyle = torch.tensor([p["mouth_style"] for p in params]).view(n, 1, 1)
    lip_w = torch.where(mstyle == _ROUND, 0.75 * mw, mw)
    lips = _ell(um, w, 0.0, 0.0, lip_w, mh) < 1
    canvas.paint(lips, rgb("lip_col"), LIPS, 1.0 - 0.12 * (w / mh).clamp(-1.0, 0.0))
    inner = (_ell(um, w, 0.0, 0.0, 0.75 * lip_w, 0.55 * mh) < 1) & (mstyle != _CLOSED)
    line = (w.abs() < 0.014) & (rel.abs() < 0.85) & (mstyle == _CLOSED)
    canvas.paint(inner | line, rgb("mouth_col"), MOUTH)
    teeth = inner & (w < -0.12 * mh) & (mstyle == _OPEN)
    canvas.paint(teeth, torch.tensor([[0.95, 0.94, 0.88]]).expand(n, 3), MOUTH)

    # Colours: per-face palette by layer id, times the shade; the background is a gradient.
    palette = torch.stack(canvas.colours, dim=1)  # [n, layers, 3]
    n_layers = palette.shape[1]
    layer = canvas.layer.long()
    rows = layer + (torch.arange(n) * n_layers).view(n, 1, 1)  # row of the flat palette
    rgb_sub = F.embedding(rows, palette.view(n * n_layers, 3)) * canvas.shade[..., None]
    t = (0.5 + scalar("bg_gx") * x + scalar("bg_gy") * y).clamp(0.0, 1.0)[..., None]
    bg0, bg1 = rgb("bg0").view(n, 1, 1, 3), rgb("bg1").view(n, 1, 1, 3)
    rgb_sub = torch.where((layer == 0)[..., None], bg0 + t * (bg1 - bg0), rgb_sub)

    # Box filter: each pixel averages its ss x ss subpixels (clamped first, so the filter
    # averages displayable colours); two single-axis sums are much faster than one over two
    # strided axes.
    rgb_sub = rgb_sub.clamp(0.0, 1.0).view(n * size, ss, side * 3).sum(dim=1)
    img = rgb_sub.view(n, size, size, ss, 3).sum(dim=3) / (ss * ss)
    img = (img.permute(0, 3, 1, 2) * 2 - 1).contiguous()

    # Labels: the majority class of each pixel's subpixels, ties to the higher id (usually the
    # smaller, later-painted feature). One bincount over (pixel, class) keys gives all counts.
    cls = torch.tensor(canvas.classes)[layer]
    sub_row = torch.arange(side) // ss
    pixel = (sub_row.view(side, 1) * size + sub_row.view(1, side)).view(1, side, side)
    pixel = pixel + (torch.arange(n) * size * size).view(n, 1, 1)
    counts = torch.bincount(
        (pixel * N_CLASSES + cls).view(-1), minlength=n * size * size * N_CLASSES
    )
    score = counts.view(n, size, size, N_CLASSES) * N_CLASSES + torch.arange(N_CLASSES)
    return img, score.argmax(dim=-1)


def render_faces(
    params: Sequence[dict[str, Any]], size: int = 32, supersample: int = SUPERSAMPLE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render faces from :func:`sample_params` dicts.

    Returns images float32 [B, 3, size, size] in [-1, 1] and labels int64 [B, size, size].
    ``supersample`` subpixels per pixel side (1 = no antialiasing); rendering at ``size`` with
    ``supersample=s`` equals box-filtering the ``size * s`` render with ``supersample=1``.
    """
    size = _check_size(size)
    if isinstance(supersample, bool) or not isinstance(supersample, int) or supersample < 1:
        raise ValueError(f"supersample must be a positive int, got {supersample!r}")
    if len(params) == 0:
        return (torch.zeros(0, 3, size, size), torch.zeros(0, size, size, dtype=torch.int64))
    # Items are rendered independently, so chunking bounds memory without changing results.
    per_item = (size * supersample) ** 2
    chunk = max(1, _MAX_SUBPIXELS // per_item)
    parts = [
        _render_chunk(params[i : i + chunk], size, supersample)
        for i in range(0, len(params), chunk)
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


# --------------------------------------------------------------------------- dataset


def _check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise ValueError(f"size must be an int, got {type(size).__name__} {size!r}")
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    return size


class ToyFaces(Dataset):
    """Procedural cartoon faces with exact label maps, generated on the fly.

    ``dataset[i] -> (image float32 [3, size, size] in [-1, 1], labels int64 [size, size])``
    with label ids from :data:`LABELS`. Item ``i`` depends only on ``(seed, i)`` (and ``size``
    for its resolution), so it is the same in every process, worker and machine.
    """

    def __init__(self, size: int = 32, length: int = 10_000, seed: int = 0) -> None:
        self.size = _check_size(size)
        if isinstance(length, bool) or not isinstance(length, int):
            raise ValueError(f"length must be an int, got {type(length).__name__} {length!r}")
        if length <= 0:
            raise ValueError(f"length must be positive, got {length}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
        self.length = length
        self.seed = seed

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"ToyFaces(size={self.size}, length={self.length}, seed={self.seed})"

    def _index(self, index: Any) -> int:
        if isinstance(index, bool):
            raise TypeError(f"ToyFaces indices must be integers, got bool {index!r}")
        try:
            i = operator.index(index)
        except TypeError:
            raise TypeError(
                f"ToyFaces indices must be integers, got {type(index).__name__}"
            ) from None
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for ToyFaces of length {self.length}")
        return i + self.length if i < 0 else i

    def params(self, index: int) -> dict[str, Any]:
        """The random parameters of item ``index`` (see :func:`sample_params`)."""
        return sample_params(self.seed, self._index(index))

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``indices`` rendered together: images [B, 3, S, S], labels [B, S, S]."""
        if isinstance(indices, torch.Tensor):
            indices = indices.reshape(-1).tolist()
        return render_faces([self.params(i) for i in indices], self.size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.batch([index])
        return images[0], labels[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # DataLoader's batched fetch: one vectorised render per batch instead of one per item.
        images, labels = self.batch(indices)
        return list(zip(images, labels, strict=True))


def sample_grid(n: int = 16, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` faces of ``ToyFaces(size, seed=seed)`` as a batch (for figures)."""
    return ToyFaces(size=size, length=max(n, 1), seed=seed).batch(range(n))


def colorize_labels(labels: torch.Tensor) -> torch.Tensor:
    """Label ids [..., H, W] -> RGB float [..., H, W, 3] in [0, 1] using :data:`LABEL_COLORS`."""
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= N_CLASSES):
        raise ValueError(f"label ids must lie in 0..{N_CLASSES - 1}")
    return torch.tensor(LABEL_COLORS, dtype=torch.float32)[labels.long()]
