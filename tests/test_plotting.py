"""Figure helpers (interpddpm.plotting)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from interpddpm.plotting import plain_log_axis  # noqa: E402


@pytest.mark.parametrize("lo, hi", [(0.9, 9.5), (1.3, 1.6), (0.02, 40.0), (1.38, 1.39)])
def test_plain_log_axis_labels_round_numbers_in_range(lo: float, hi: float) -> None:
    fig, ax = plt.subplots()
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    plain_log_axis(ax)
    ticks = ax.get_yticks()
    labels = [ax.yaxis.get_major_formatter()(v, i) for i, v in enumerate(ticks)]
    plt.close(fig)
    assert 2 <= len(ticks) <= 7
    assert all(lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9) for t in ticks)
    assert all("e" not in s and "^" not in s for s in labels)  # 1.5, not 1.5x10^0 or 1.5e+00
    assert list(ticks) == sorted(ticks)


def test_face_rows_draws_each_face_at_its_page_size() -> None:
    import io

    import torch
    from PIL import Image

    from interpddpm.plotting import FACE_PX, PAGE_PX, face_rows, use_book_style

    use_book_style()
    faces = torch.rand(6, 3, 32, 32) * 2 - 1
    fig = face_rows({"real": faces, "model": faces[:3]})
    fig.canvas.draw()
    for ax, shown in zip(fig.axes, (4, 3), strict=True):
        image = ax.get_images()[0]
        grid_w = image.get_array().shape[1]  # faces plus 1-pixel gaps
        per_face = image.get_window_extent().width * 32 / grid_w
        assert per_face == pytest.approx(FACE_PX, abs=0.5)
        assert grid_w == shown * 33 + 1
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")  # as the inline backend does
    plt.close(fig)
    width, _ = Image.open(buffer).size
    assert 4 * FACE_PX <= width <= PAGE_PX


def test_face_rows_refuses_a_figure_wider_than_the_page() -> None:
    import torch

    from interpddpm.plotting import face_rows

    with pytest.raises(ValueError, match="lower per_row"):
        face_rows({"x": torch.zeros(8, 3, 32, 32)}, per_row=8)
    with pytest.raises(ValueError, match="rows is empty"):
        face_rows({})


@pytest.mark.parametrize("width_in", [3.0, 12.0])
def test_face_widths_match_the_saved_png(width_in: float) -> None:
    """face_widths measures faces as the page shows them: in the PNG the inline backend saves
    (tight box, the figure's dpi), shrunk to PAGE_PX when wider. Checked on pixels: faces of
    one flat colour each, separated by white 1-px gaps, counted in the saved image."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    from interpddpm.plotting import PAGE_PX, face_widths, show_grid, use_book_style

    use_book_style()
    faces = torch.full((4, 3, 16, 16), -1.0)  # black faces
    fig, ax = plt.subplots(figsize=(width_in, 2.0))
    show_grid(ax, faces, nrow=4)
    ax2 = fig.add_axes((0, 0, 0.1, 0.1))
    ax2.imshow(np.zeros((4, 4)))  # an unmarked image (a heat map): not a face grid
    (measured,) = face_widths(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", dpi=fig.dpi)
    plt.close(fig)
    png = np.asarray(Image.open(buffer).convert("L"))
    row = png[np.argmax((png < 60).sum(axis=1))]  # a row through the faces
    dark = (row < 60).astype(int)
    starts = np.flatnonzero(np.diff(dark) == 1)
    ends = np.flatnonzero(np.diff(dark) == -1)
    runs = [e - s for s, e in zip(starts, ends, strict=False) if e > s]
    assert len(runs) >= 4
    on_page = float(np.median(runs)) * min(1.0, PAGE_PX / png.shape[1])
    assert measured == pytest.approx(on_page, rel=0.08)


def test_value_range_reads_as_prose() -> None:
    from interpddpm.plotting import value_range

    assert value_range([1.17, 1.09, 1.12]) == "1.09 to 1.17"
    assert value_range([0.681, 0.684]) == "0.68"  # alike once printed: one value
    assert value_range([0.7], ".0%") == "70%"
    assert value_range([]) == "-" and value_range([], none="not trained") == "not trained"


def test_spread_norm_tops_at_the_percentile_and_says_so() -> None:
    from interpddpm.plotting import spread_norm

    maps = torch.arange(1000, dtype=torch.float32).reshape(10, 10, 10)
    norm, label = spread_norm(maps, percentile=90)
    assert norm.vmin == 0 and abs(norm.vmax - float(torch.quantile(maps.flatten(), 0.9))) < 1e-3
    assert "square-root" in label and "90th percentile" in label
    # an outside change 1% of the top is visible (10% of the colour range), not black
    assert 0.09 < float(norm(0.01 * norm.vmax)) < 0.11
    zero_mostly = torch.zeros(1000)
    zero_mostly[0] = 5.0
    assert spread_norm(zero_mostly)[0].vmax == 5.0  # percentile 0: falls back to the max


def test_edit_panels_show_the_untinted_original_and_the_outside_change() -> None:
    from interpddpm.plotting import MIN_FACE_PX, edit_panels, face_widths

    x0 = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = torch.zeros(2, 32, 32, dtype=torch.bool)
    mask[:, 12:18, 14:19] = True
    x1 = torch.where(mask[:, None], -x0, x0)
    change = (x1 - x0).pow(2).sum(1)
    change[:, 0, 0] = 0.5  # an outside change
    fig = edit_panels({"model": (x0, x1, mask, change)})
    first = fig.axes[0].images[0].get_array()
    expected = ((x0[0] + 1) / 2).permute(1, 2, 0).numpy()
    assert abs(first - expected).max() < 1e-6  # the original, not tinted
    titles = [ax.get_title() for ax in fig.axes]
    outside = 0.5 / (32 * 32 - 30)
    assert any(f"mean out {outside:.3g}" in t for t in titles), titles
    assert all(w >= MIN_FACE_PX for w in face_widths(fig)[:2])
    plt.close(fig)


def test_no_change_is_grey_not_black() -> None:
    """An edit that changes nothing (outside, or at all) is drawn in the neutral grey
    NO_CHANGE and says so; magma's black stays for a small change."""
    from matplotlib.colors import to_rgba

    from interpddpm.plotting import NO_CHANGE, edit_panels, spread_norm

    x0 = torch.rand(1, 3, 16, 16) * 2 - 1
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[:, 5:9, 5:9] = True
    nothing = torch.zeros(1, 16, 16)
    norm, label = spread_norm(nothing)
    assert label == "no change: every value is 0" and norm.vmax > 0
    fig = edit_panels({"model": (x0, x0, mask, nothing)})
    panel = fig.axes[4]
    assert "no change (all 0)" in panel.get_title()
    image = panel.images[0]
    rgba = image.to_rgba(image.get_array())
    assert (abs(rgba - to_rgba(NO_CHANGE)) < 1e-6).all(), "all-zero map not grey"
    plt.close(fig)
    # a change inside only: the untouched outside is grey, the inside coloured
    inside_only = torch.where(mask, 1.0, 0.0)
    fig = edit_panels({"model": (x0, -x0, mask, inside_only)})
    image = fig.axes[4].images[0]
    rgba = image.to_rgba(image.get_array())
    assert (abs(rgba[0, 0] - to_rgba(NO_CHANGE)) < 1e-6).all()
    assert (abs(rgba[6, 6] - to_rgba(NO_CHANGE)) > 0.05).any()
    assert "grey: no change" in fig.axes[-1].get_xlabel()
    plt.close(fig)


def test_a_map_with_no_change_has_no_colour_ramp() -> None:
    """Nothing changed anywhere: the colour bar is one grey patch that says "no change", not a
    magma ramp over made-up values (horizontal in the edit figures, vertical in a panel)."""
    from matplotlib.colors import to_rgba

    from interpddpm.plotting import (
        NO_CHANGE,
        NOTHING_CHANGED,
        change_colorbar,
        change_image,
        edit_panels,
        spread_norm,
    )

    x0 = torch.rand(1, 3, 16, 16) * 2 - 1
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[:, 5:9, 5:9] = True
    fig = edit_panels({"model": (x0, x0, mask, torch.zeros(1, 16, 16))})
    bar = fig.axes[-1]
    assert not bar.images and not bar.collections, "a ramp on the bar of an unchanged map"
    assert bar.get_facecolor() == to_rgba(NO_CHANGE)
    assert "no change" in bar.get_xlabel() and "scale" not in bar.get_xlabel()
    plt.close(fig)
    # some change: the ramp is back, and the bar states the scale
    change = torch.zeros(1, 16, 16)
    change[0, 6, 6] = 1.0
    fig = edit_panels({"model": (x0, -x0, mask, change)})
    assert fig.axes[-1].collections or fig.axes[-1].images
    assert "square-root" in fig.axes[-1].get_xlabel()
    plt.close(fig)
    # the same helper in a vertical bar (chapter 6's panels of faces)
    fig, (ax, cax) = plt.subplots(1, 2)
    norm, scale = spread_norm(torch.zeros(3, 8, 8))
    assert scale == NOTHING_CHANGED
    image = change_image(ax, torch.zeros(3, 8, 8), norm, nrow=3)
    assert change_colorbar(image, cax, scale, "Lab MSE") is None
    assert cax.get_ylabel() == "no change" and not cax.collections
    plt.close(fig)


def test_a_grid_of_change_maps_draws_zeros_grey_and_gaps_white() -> None:
    """Chapter 6's panels of several faces (change_image on a batch): an exactly-zero pixel is
    the NO_CHANGE grey (as in the edit figures), not magma's black; the gaps between the faces
    are white; a changed pixel is coloured; an all-zero batch is grey throughout."""
    import numpy as np
    from matplotlib.colors import to_rgba

    from interpddpm.plotting import NO_CHANGE, change_image, spread_norm

    maps = torch.zeros(2, 4, 4)
    maps[1, 2, 2] = 3.0
    norm, _ = spread_norm(maps)
    fig, ax = plt.subplots()
    image = change_image(ax, maps, norm, nrow=2, pad=1)
    fig.canvas.draw()
    rgba = image.to_rgba(image.get_array())  # the maps: [1 + 4 + 1 + 4 + 1 = 11] wide
    assert rgba.shape[:2] == (6, 11)
    grey, black = np.array(to_rgba(NO_CHANGE)), np.array(to_rgba("black"))
    assert np.allclose(rgba[1, 1], grey) and not np.allclose(rgba[1, 1], black)
    assert not np.allclose(rgba[1 + 2, 6 + 2], grey)  # the changed pixel of map 2
    gaps = ax.images[1].get_array()  # the white layer drawn over the gaps
    assert gaps[0, 0, 3] == 1 and gaps[1, 1, 3] == 0 and gaps[1, 5, 3] == 1
    plt.close(fig)
    fig, ax = plt.subplots()
    image = change_image(ax, torch.zeros(3, 4, 4), spread_norm(torch.zeros(1))[0], nrow=3)
    rgba = image.to_rgba(image.get_array())
    inside = rgba[1:5, 1:5].reshape(-1, 4)
    assert np.allclose(inside, grey), "an all-zero map drawn black, not grey"
    plt.close(fig)


def test_place_labels_do_not_overlap() -> None:
    from interpddpm.plotting import place_labels

    fig, ax = plt.subplots(figsize=(4, 3))
    points = [(0.5, 0.5), (0.505, 0.5), (0.5, 0.505), (0.51, 0.51)]
    ax.scatter(*zip(*points, strict=True))
    texts = place_labels(ax, points, ["first label", "second label", "third", "fourth one"])
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    plt.close(fig)
