"""Figures shared by the chapters (matplotlib only; no diffusion imports at module level).

Serves every chapter: the figures.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

#: The colour of "no change": a pixel (or a whole map) whose change is exactly zero. Magma's
#: own zero is black, which reads as a dark change rather than none.
NO_CHANGE = "#9e9e9e"
#: What :func:`spread_norm` says of maps that did not change at all (its colour bar's text).
NOTHING_CHANGED = "no change: every value is 0"
PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3")


def use_book_style() -> None:
    """Readable defaults for the book's figures."""
    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 110,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.titleweight": "bold",
            "font.size": 10,
        }
    )


def attribution_bars(
    ax: Axes, phi: torch.Tensor, labels: Sequence[str] | None = None, title: str = ""
) -> Axes:
    """Horizontal bars of one Shapley vector ``phi[n]`` (positive blue, negative red)."""
    phi = phi.detach().double().flatten()
    labels = list(labels) if labels is not None else [f"player {i}" for i in range(len(phi))]
    colors = [PALETTE[0] if v >= 0 else PALETTE[3] for v in phi.tolist()]
    ax.barh(range(len(phi)), phi.tolist(), color=colors)
    ax.set_yticks(range(len(phi)), labels)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("Shapley value")
    ax.set_title(title)
    return ax


def interaction_heatmap(
    ax: Axes,
    matrix: torch.Tensor,
    labels: Sequence[str] | None = None,
    title: str = "",
    *,
    annotate: bool = True,
    symmetric: bool = True,
) -> Axes:
    """Heatmap of ``matrix[j, k] = phi_{v_k}(j)``: input region j (rows) -> output region k."""
    m = matrix.detach().double().cpu()
    vmax = float(m.abs().max()) or 1.0
    im = ax.imshow(
        m.numpy(),
        cmap="RdBu_r" if symmetric else "viridis",
        vmin=-vmax if symmetric else None,
        vmax=vmax,
    )
    n_in, n_out = m.shape
    labels = list(labels) if labels is not None else [str(i) for i in range(max(n_in, n_out))]
    ax.set_xticks(range(n_out), labels[:n_out], rotation=30, ha="right")
    ax.set_yticks(range(n_in), labels[:n_in])
    ax.set_xlabel("output region k (game $v_k$)")
    ax.set_ylabel("input region j (player)")
    ax.grid(False)
    if annotate and n_in * n_out <= 64:
        for j in range(n_in):
            for k in range(n_out):
                v = float(m[j, k])
                ax.text(
                    k,
                    j,
                    f"{v:.2g}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if abs(v) > 0.6 * vmax else "black",
                )
    ax.set_title(title)
    plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


def loglog_error(
    ax: Axes,
    budgets: Sequence[int],
    curves: dict[str, Sequence[float]],
    *,
    xlabel: str = "budget",
    reference: bool = True,
) -> Axes:
    """Error curves on log-log axes with a ``1/sqrt(budget)`` reference line."""
    for (name, errs), color in zip(curves.items(), PALETTE, strict=False):
        ax.loglog(budgets, errs, "o-", label=name, color=color)
    if reference and curves:
        first = next(iter(curves.values()))
        ref = [first[0] * (budgets[0] / b) ** 0.5 for b in budgets]
        ax.loglog(budgets, ref, "k--", lw=1, label=r"$\propto 1/\sqrt{\mathrm{budget}}$")
    ax.set_xticks(list(budgets), [str(b) for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("RMS error")
    ax.legend()
    return ax


def plain_log_axis(ax: Axes) -> Axes:
    """Label a log-scale y axis with plain numbers (0.5, 1, 1.5, 2, ...), not ``1.4x10^0``:
    at most seven ticks, from the densest set of round mantissas that fits the range."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    lo, hi = ax.get_ylim()
    dense = (1, 1.1, 1.2, 1.3, 1.5, 1.7, 2, 2.5, 3, 4, 5, 6, 7, 8)
    ticks: list[float] = []
    for mantissas in (dense, (1, 1.5, 2, 3, 5, 7), (1, 2, 3, 5), (1, 2, 5), (1, 3), (1,)):
        ticks = [m * 10.0**e for e in range(-6, 7) for m in mantissas if lo <= m * 10.0**e <= hi]
        if len(ticks) <= 7:
            break
    if len(ticks) < 2:  # a range narrower than two round numbers: four log-spaced ticks
        ticks = sorted({lo * (hi / lo) ** (i / 3) for i in range(4)})
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    return ax


def new_figure(
    ncols: int = 1, nrows: int = 1, width: float = 4.2, height: float = 3.2
) -> tuple[Figure, list[Axes]]:
    """A figure with ``nrows * ncols`` axes returned as a flat list."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, [ax for row in axes for ax in row]


def value_range(values: Sequence[float], fmt: str = ".2f", *, none: str = "-") -> str:
    """Values as prose gives them: "1.09 to 1.17", one value when they print alike, and
    ``none`` when there are none (a profile that trains no such model)."""
    if not len(values):
        return none
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return lo if lo == hi else f"{lo} to {hi}"


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None, *, digits: int = 4):
    """Render a list of dicts as a Markdown table (an ``IPython.display.Markdown`` object)."""
    from IPython.display import Markdown

    if columns is None:  # the union of the rows' keys, in order of appearance
        columns = list(dict.fromkeys(k for r in rows for k in r))
    columns = list(columns)

    def fmt(v) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.{digits}g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return Markdown("\n".join(lines))


# ---- images -----------------------------------------------------------------------------------
def to_uint8_grid(images: torch.Tensor, nrow: int = 8, pad: int = 1) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in [-1, 1] tiled into one ``[H', W', 3]`` float image in [0, 1]."""
    x = (images.detach().float().cpu().clamp(-1, 1) + 1) / 2
    b, c, h, w = x.shape
    ncol = min(nrow, b)
    nrows = (b + ncol - 1) // ncol
    grid = torch.ones(c, nrows * (h + pad) + pad, ncol * (w + pad) + pad)
    for i in range(b):
        r, col = divmod(i, ncol)
        grid[
            :,
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + col * (w + pad) : pad + col * (w + pad) + w,
        ] = x[i]
    return grid.permute(1, 2, 0)


def show_grid(ax: Axes, images: torch.Tensor, nrow: int = 8, title: str = "") -> Axes:
    """Draw an image grid on ``ax`` (no ticks); :func:`face_widths` measures its faces."""
    im = ax.imshow(to_uint8_grid(images, nrow).numpy(), interpolation="nearest")
    mark_faces(im, images.shape[-1])
    ax.set_title(title)
    ax.axis("off")
    return ax


def mark_faces(image: AxesImage, face_w: int) -> AxesImage:
    """Mark a drawn grid of faces ``face_w`` pixels wide, so :func:`face_widths` finds it."""
    image.set_gid(f"{_FACES}{int(face_w)}")
    return image


def face_widths(fig: Figure) -> list[float]:
    """The on-page width in pixels of one face in each face grid of ``fig``
    (:func:`show_grid`, :func:`face_rows`, or any image marked with :func:`mark_faces`), as the
    book shows it: saved at the figure's dpi with a tight bounding box, then shrunk by the
    browser to :data:`PAGE_PX` when wider."""
    fig.canvas.draw()  # lays out the axes (tight_layout, aspect) as printing does
    renderer = fig.canvas.get_renderer()
    page = fig.get_tightbbox(renderer).width * fig.dpi  # inches -> saved pixels
    shrink = min(1.0, PAGE_PX / page)
    out = []
    for ax in fig.axes:
        for im in ax.get_images():
            gid = im.get_gid() or ""
            if gid.startswith(_FACES):
                face_w = int(gid[len(_FACES) :])
                grid_w = im.get_array().shape[1]
                shown = im.get_window_extent(renderer).width  # display px = saved px
                out.append(shown * face_w / grid_w * shrink)
    return out


#: On-page width of one face in the book's sample figures, in pixels. Figures wider than the
#: text column are shrunk by the browser, so :func:`face_rows` also keeps within
#: :data:`PAGE_PX`: the widest image the rendered book shows at its own size (sphinx-book-theme
#: in a 1200 px window, measured in Chromium: a cell's output images are at most 596 px wide).
FACE_PX = 112
PAGE_PX = 590
#: The narrowest a face may be drawn on the page, in pixels (smaller and a reader sees
#: thumbnails, not faces; the gpu-path test measures every chapter's figures against it).
MIN_FACE_PX = 96
_FACES = "interpddpm-faces:"


def _figure_dpi() -> float:
    dpi = plt.rcParams["savefig.dpi"]
    return float(plt.rcParams["figure.dpi"] if dpi == "figure" else dpi)


def face_rows(
    rows: dict[str, torch.Tensor],
    *,
    per_row: int = 4,
    face_px: int = FACE_PX,
    title_px: int = 24,
    gap_px: int = 8,
) -> Figure:
    """One titled row of faces per entry of ``rows`` (name -> images ``[B, 3, H, W]`` in
    [-1, 1], the first ``per_row`` shown), every face exactly ``face_px`` pixels wide in the
    saved figure (nearest-neighbour upscaling), so a reader sees faces, not thumbnails.

    Raises ValueError when the figure would be wider than :data:`PAGE_PX` (the page would
    shrink it): show fewer faces a row or use a smaller ``face_px``.
    """
    if not rows:
        raise ValueError("rows is empty: pass {name: images} with at least one entry.")
    dpi = _figure_dpi()
    grids = {name: to_uint8_grid(x[:per_row], nrow=per_row) for name, x in rows.items()}
    face_w = next(iter(rows.values())).shape[-1]
    scale = face_px / face_w  # grid pixels -> figure pixels
    width = max(g.shape[1] for g in grids.values()) * scale
    if width > PAGE_PX:
        raise ValueError(
            f"{per_row} faces of {face_px} px make a figure {width:.0f} px wide, more than "
            f"the book's column ({PAGE_PX} px): lower per_row or face_px."
        )
    heights = [g.shape[0] * scale for g in grids.values()]
    total = sum(heights) + len(grids) * (title_px + gap_px)
    fig = plt.figure(figsize=(width / dpi, total / dpi), dpi=dpi)
    top = total
    for (name, grid), h in zip(grids.items(), heights, strict=True):
        top -= title_px
        w = grid.shape[1] * scale
        ax = fig.add_axes((0, (top - h) / total, w / width, h / total))
        im = ax.imshow(grid.numpy(), interpolation="nearest", aspect="auto")
        mark_faces(im, face_w)
        ax.set_title(name, fontsize=9, loc="left")
        ax.axis("off")
        top -= h + gap_px
    return fig


def labels_to_rgb(labels: torch.Tensor) -> torch.Tensor:
    """Label maps ``[B, H, W]`` as colour images ``[B, 3, H, W]`` in [-1, 1] (for grids)."""
    from .toyfaces import LABEL_COLORS

    palette = torch.tensor(LABEL_COLORS, dtype=torch.float32)
    return palette[labels.long().cpu()].permute(0, 3, 1, 2) * 2 - 1


def mask_overlay(
    images: torch.Tensor, masks: torch.Tensor, color=(1.0, 0.1, 0.1), alpha: float = 0.55
) -> torch.Tensor:
    """Images ``[B, 3, H, W]`` in [-1, 1] with a bool mask ``[B, H, W]`` tinted in ``color``."""
    x = (images.detach().float().cpu() + 1) / 2
    m = masks.float().cpu().unsqueeze(1)
    tint = torch.tensor(color).view(1, 3, 1, 1)
    return ((1 - alpha * m) * x + alpha * m * tint) * 2 - 1


def heat_grid(
    ax: Axes, maps: torch.Tensor, nrow: int = 8, title: str = "", vmax: float | None = None
) -> Axes:
    """Non-negative maps ``[B, H, W]`` tiled and drawn with one colour scale (e.g. Lab MSE)."""
    m = maps.detach().float().cpu()
    vmax = float(m.max()) if vmax is None else vmax
    normed = (m / max(vmax, 1e-12)).clamp(0, 1).unsqueeze(1).expand(-1, 3, -1, -1) * 2 - 1
    grid = to_uint8_grid(normed, nrow)[..., 0]
    im = ax.imshow(grid.numpy() * vmax, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
    plt.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    return ax


def training_curves(axes: Sequence[Axes], runs: dict[str, list[dict]]) -> None:
    """Loss curves (L_DDPM, L_IE) and the lambda schedule of several runs' metrics logs."""
    for (name, log), color in zip(runs.items(), PALETTE, strict=False):
        steps = [r["step"] for r in log]
        axes[0].plot(steps, [r["loss_ddpm"] for r in log], color=color, label=name, lw=1)
        ie = [(r["step"], r["loss_ie"]) for r in log if r.get("loss_ie") is not None]
        if ie and len(axes) > 1:
            axes[1].semilogy(*zip(*ie, strict=True), color=color, label=name, lw=1)
        lam = [(r["step"], r["lambda"]) for r in log if r.get("loss_ie") is not None]
        if lam and len(axes) > 2:
            axes[2].semilogy(*zip(*lam, strict=True), color=color, label=name, lw=1)
    axes[0].set_ylabel(r"$L_{DDPM}$")
    if len(axes) > 1:
        axes[1].set_ylabel(r"$L_{IE}$")
    if len(axes) > 2:
        axes[2].set_ylabel(r"$\lambda$")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)


def show_image(ax: Axes, image: torch.Tensor, title: str = "") -> Axes:
    """Draw one image ``[3, H, W]`` or ``[1, 3, H, W]`` in [-1, 1], pixel-aligned (no ticks)."""
    x = image.detach().float().cpu().reshape(-1, *image.shape[-3:])[0]
    rgb = ((x.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    mark_faces(ax.imshow(rgb, interpolation="nearest"), x.shape[-1])
    ax.set_title(title)
    ax.axis("off")
    return ax


def show_map(ax: Axes, values: torch.Tensor, title: str = "", vmax: float | None = None) -> Axes:
    """Draw one non-negative map ``[H, W]`` or ``[1, H, W]`` (e.g. Lab MSE) with a colour bar."""
    m = values.detach().float().cpu().reshape(-1, *values.shape[-2:])[0]
    vmax = float(m.max()) if vmax is None else vmax
    im = ax.imshow(m.numpy(), cmap="magma", vmin=0, vmax=max(vmax, 1e-12), interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
    plt.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    return ax


def outline(ax: Axes, mask: torch.Tensor, color: str = "#00E5FF", lw: float = 1.2) -> Axes:
    """Outline the pixels of a mask ``[H, W]`` or ``[1, H, W]`` on an image drawn by
    :func:`show_image` or :func:`show_map` (the boundary runs along pixel edges)."""
    m = mask.detach().cpu().reshape(-1, *mask.shape[-2:])[0].bool()
    h, w = m.shape
    segments = []
    for y, x in m.nonzero().tolist():  # draw each pixel side that borders a pixel outside
        if y == 0 or not m[y - 1, x]:
            segments.append([(x - 0.5, y - 0.5), (x + 0.5, y - 0.5)])
        if y == h - 1 or not m[y + 1, x]:
            segments.append([(x - 0.5, y + 0.5), (x + 0.5, y + 0.5)])
        if x == 0 or not m[y, x - 1]:
            segments.append([(x - 0.5, y - 0.5), (x - 0.5, y + 0.5)])
        if x == w - 1 or not m[y, x + 1]:
            segments.append([(x + 0.5, y - 0.5), (x + 0.5, y + 0.5)])
    if segments:
        from matplotlib.collections import LineCollection

        ax.add_collection(LineCollection(segments, colors=color, linewidths=lw))
    return ax


def spread_norm(
    maps: torch.Tensor | Sequence[torch.Tensor], percentile: float = 99.0, gamma: float = 0.5
) -> tuple[object, str]:
    """A colour scale for non-negative change maps (Lab MSE, squared change) that shows their
    spread: a power (``gamma = 0.5``: square-root) scale whose top is the ``percentile``-th
    percentile of all their values (the brightest pixels clip), instead of a linear scale up to
    the single brightest pixel, on which a small outside change is black.

    Returns the :class:`matplotlib.colors.PowerNorm` and the text for the colour bar, which
    states the scale and its top (or that nothing changed, when every value is zero)."""
    from matplotlib.colors import PowerNorm

    parts = [maps] if isinstance(maps, torch.Tensor) else list(maps)
    values = torch.cat([m.detach().float().cpu().flatten() for m in parts])
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    top = float(torch.quantile(values, percentile / 100)) if len(values) else 0.0
    if top <= 0:  # mostly unchanged pixels: fall back to the largest change
        top = float(values.max()) if len(values) else 0.0
    if top <= 0:  # nothing changed anywhere: a scale would only stretch zeros
        return PowerNorm(gamma, vmin=0.0, vmax=1.0), NOTHING_CHANGED
    scale = "square-root" if gamma == 0.5 else f"power {gamma:g}"
    where = "max" if percentile == 100 else f"{percentile:g}th percentile"
    return PowerNorm(gamma, vmin=0.0, vmax=top), f"{scale} scale, top = {where} ({_short(top)})"


def change_image(
    ax: Axes, change: torch.Tensor, norm: object, *, nrow: int = 8, pad: int = 1
) -> AxesImage:
    """Draw a non-negative change map ``[H, W]`` with magma on ``norm`` (:func:`spread_norm`),
    the pixels whose change is exactly zero in the neutral grey :data:`NO_CHANGE` (not magma's
    black). A batch ``[B, H, W]`` is tiled like :func:`to_uint8_grid` (``nrow`` maps a row,
    white gaps of ``pad`` pixels). Returns the image, for :func:`change_colorbar`."""
    import numpy as np

    values = change.detach().float().cpu()
    gaps = None
    if values.dim() == 3:  # tiled as to_uint8_grid tiles images; the gaps drawn white on top
        b, h, w = values.shape
        ncol = min(nrow, b)
        nrows = (b + ncol - 1) // ncol
        grid = torch.zeros(nrows * (h + pad) + pad, ncol * (w + pad) + pad)
        gaps = np.ones(grid.shape, dtype=bool)
        for i in range(b):
            r, c = divmod(i, ncol)
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y : y + h, x : x + w] = values[i]
            gaps[y : y + h, x : x + w] = False
        values = grid
    shown = values.numpy()
    cmap = plt.get_cmap("magma").with_extremes(bad=NO_CHANGE)
    image = ax.imshow(
        np.ma.masked_where(shown == 0, shown), cmap=cmap, norm=norm, interpolation="nearest"
    )
    if gaps is not None:
        white = np.zeros((*gaps.shape, 4))
        white[gaps] = 1.0  # opaque white between the maps, transparent on them
        ax.imshow(white, interpolation="nearest")
        mark_faces(image, change.shape[-1])
    return image


def change_colorbar(
    image: AxesImage,
    cax: Axes,
    scale: str,
    label: str,
    *,
    orientation: str = "vertical",
    zeros: bool = False,
    on_bar: bool = True,
) -> object | None:
    """The colour bar of change maps drawn by :func:`change_image` on :func:`spread_norm`'s
    scale (``scale`` is its text): magma's ramp labelled ``label (scale)``, which adds "grey:
    no change" when ``zeros`` (some pixel is exactly 0). When nothing changed anywhere
    (``scale`` is :data:`NOTHING_CHANGED`) a ramp would stretch zeros over made-up values:
    the bar is one grey patch labelled "no change" instead, and this returns None.
    ``on_bar=False`` leaves the scale off the label (a short vertical bar: the caller states
    it, e.g. in the panel's title)."""
    if scale == NOTHING_CHANGED:
        cax.set_facecolor(NO_CHANGE)
        cax.set_xticks([])
        cax.set_yticks([])
        if orientation == "horizontal":
            cax.set_xlabel(f"{label}: no change (every value is 0)")
        else:  # a bar as tall as one row of faces: the panel's title names the quantity
            cax.set_ylabel("no change")
        return None
    grey = "; grey: no change (exactly 0)" if zeros else ""
    text = f"{label} ({scale}){grey}" if on_bar else label
    return cax.figure.colorbar(image, cax=cax, orientation=orientation, extend="max", label=text)


def _short(value: float) -> str:
    """3 significant digits without an exponent for the sizes a change map has."""
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _crop_box(mask: torch.Tensor, pad: int) -> tuple[int, int, int, int]:
    """A square box ``(y0, y1, x0, x1)`` around a mask's pixels, ``pad`` pixels wider."""
    h, w = mask.shape
    ys, xs = mask.nonzero(as_tuple=True)
    if not len(ys):
        return 0, h, 0, w
    y0, y1 = int(ys.min()) - pad, int(ys.max()) + pad + 1
    x0, x1 = int(xs.min()) - pad, int(xs.max()) + pad + 1
    side = min(max(y1 - y0, x1 - x0), h, w)
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    y0 = min(max(cy - side // 2, 0), h - side)
    x0 = min(max(cx - side // 2, 0), w - side)
    return y0, y0 + side, x0, x0 + side


def edit_panels(
    edits: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    *,
    n_faces: int = 2,
    percentile: float = 99.0,
    pad: int = 3,
    label: str = "Lab MSE",
    panel_in: float = 1.15,
    before: str = "original",
) -> Figure:
    """Edits a reader can judge at page size: per model (``name -> (x0, x0_edit, mask, change)``
    with images ``[B, 3, H, W]`` in [-1, 1], bool masks ``[B, H, W]`` and change maps
    ``[B, H, W]``) and face, one row: the untinted original and the edit with the region
    outlined, both zoomed on the region, and the change map on :func:`spread_norm`'s scale
    (shared by the whole figure, stated on its colour bar). Each change panel's title gives the
    mean change outside and inside the region, the two numbers of the locality ratio.
    ``before`` names the unedited image (``"reconstruction"`` after DDIM inversion). Pixels
    that did not change at all are grey (:data:`NO_CHANGE`), and a map with no change at all
    says so in its title."""
    if not edits:
        raise ValueError("edits is empty: pass {name: (x0, x0_edit, mask, change)}.")
    shown = {n: tuple(t[:n_faces] for t in e) for n, e in edits.items()}
    norm, scale = spread_norm([e[3] for e in shown.values()], percentile)
    rows = [(n, i) for n, e in shown.items() for i in range(len(e[0]))]
    bar_in = 0.75  # room below the rows for a horizontal colour bar and its label
    height = (panel_in + 0.32) * len(rows) + bar_in
    fig, axes = plt.subplots(
        len(rows), 5, figsize=(5 * panel_in + 0.3, height), squeeze=False
    )  # fmt: skip
    heads = (before, "edited", f"zoom: {before}", "zoom: edited", f"{label} of the change")
    im, zeros = None, False
    for r, (name, i) in enumerate(rows):
        x0, x1, mask, change = (t[i] for t in shown[name])
        mask = mask.detach().cpu().bool()
        y0, y1, c0, c1 = _crop_box(mask, pad)
        panels = [(x0, mask), (x1, mask)]
        panels += [(x[:, y0:y1, c0:c1], mask[y0:y1, c0:c1]) for x in (x0, x1)]
        for c, ((img, m), head) in enumerate(zip(panels, heads[:4], strict=True)):
            ax = axes[r][c]
            show_image(ax, img, head if r == 0 else "")
            outline(ax, m, lw=1.0)
            ax.title.set_fontsize(8)
        ax = axes[r][4]
        ch = change.detach().float().cpu()
        m = mask.float()
        inside = float((ch * m).sum() / m.sum().clamp_min(1))
        outside = float((ch * (1 - m)).sum() / (1 - m).sum().clamp_min(1))
        im = change_image(ax, ch, norm)
        zeros = zeros or bool((ch == 0).any())
        outline(ax, mask, lw=1.0)
        head = f"{heads[4]}\n" if r == 0 else ""
        if not bool((ch != 0).any()):
            text = "no change (all 0)"
        else:
            text = f"mean out {_short(outside)}\nmean in {_short(inside)}"
        ax.set_title(f"{head}{text}", fontsize=7)
        ax.axis("off")
        axes[r][0].text(
            -0.08, 0.5, f"{name}\nface {i + 1}", transform=axes[r][0].transAxes,
            rotation=90, ha="right", va="center", fontsize=8,
        )  # fmt: skip
    bottom = bar_in / height
    fig.subplots_adjust(left=0.05, right=0.99, top=1 - 0.3 / height, bottom=bottom)
    fig.subplots_adjust(wspace=0.06, hspace=0.3)
    left, right = axes[-1][0], axes[-1][4]
    for ax in (left, right):
        ax.apply_aspect()  # the drawn box, not the slot (images keep their aspect)
    x0, x1 = left.get_position().x0, right.get_position().x1
    cax = fig.add_axes((x0, 0.45 * bottom, x1 - x0, 0.12 * bottom))
    change_colorbar(im, cax, scale, label, orientation="horizontal", zeros=zeros)
    return fig


def place_labels(
    ax: Axes, points: Sequence[tuple[float, float]], labels: Sequence[str], fontsize: float = 7
) -> list:
    """Label scatter points so that no two labels overlap: each label takes the first of a
    few offsets around its point (right, left, above, below, then further out) whose box
    overlaps no label placed before it (greedy, in the order given). Returns the texts."""
    offsets = [(4, 3, "left"), (4, -10, "left"), (-4, 3, "right"), (-4, -10, "right")]
    offsets += [(4, 13, "left"), (4, -20, "left"), (-4, 13, "right"), (-4, -20, "right")]
    offsets += [(4, 23, "left"), (4, -30, "left"), (-4, 23, "right"), (-4, -30, "right")]
    renderer = ax.figure.canvas.get_renderer()
    placed, texts = [], []
    for (x, y), label in zip(points, labels, strict=True):
        text = None
        for dx, dy, ha in offsets:
            if text is not None:
                text.remove()
            text = ax.annotate(
                label, (x, y), xytext=(dx, dy), textcoords="offset points",
                fontsize=fontsize, ha=ha,
            )  # fmt: skip
            box = text.get_window_extent(renderer).expanded(1.02, 1.1)
            if not any(box.overlaps(other) for other in placed):
                break
        placed.append(text.get_window_extent(renderer))
        texts.append(text)
    return texts
