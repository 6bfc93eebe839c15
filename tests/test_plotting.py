"""Figure helpers (interpddpm.plotting)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

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
