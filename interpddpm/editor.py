"""The interactive region editor (chapter 11): one edit at a time, in a widget or a figure.

Pick an image source, a model, a concept and an operation; see the original, the edited image
and the Lab MSE map with the concept's region outlined, and the edit's locality ratio
(:func:`interpddpm.metrics.locality`, smaller is more local).

- Sources: a face *generated* from the noise of a seed; a *held-out toy face* (a seed no model
  trained on) or a *photo* (:mod:`interpddpm.photos`), both turned into a noise by DDIM
  inversion (eq. 10) and regenerated without clipping, so that the edit is compared with the
  reconstruction (the inversion error is not counted as part of the edit).
- Operations on the noise ``x_T`` inside the region: *resample* it with the noise of a new
  seed, or *swap* it with the noise of a donor seed (:func:`interpddpm.editing.edit_region`).

All the work is in the pure function :func:`edit_once` (tensors and numbers in an
:class:`EditResult`); :func:`render_static` draws results with matplotlib (the book's figure)
and :class:`EditorApp` is a thin ipywidgets shell over both (live in JupyterLab and Colab).
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from . import editing
from .metrics import concept_mask, locality
from .photos import EXAMPLES, NoRegionError, Photo, load_photo, photo_region
from .regions import concept_ids
from .sampling import ddim_sample, model_noise
from .toyfaces import CONCEPTS, ToyFaces

__all__ = [
    "HELDOUT_TOY_SEED",
    "MODEL_KINDS",
    "OPERATIONS",
    "SOURCE_KINDS",
    "EditResult",
    "EditorApp",
    "Prepared",
    "Source",
    "edit_many",
    "edit_once",
    "models_from_runs",
    "plot_result",
    "prepare",
    "region_of",
    "render_static",
]

SOURCE_KINDS = ("generated", "toyface", "photo")
OPERATIONS = ("resample", "swap")
MODEL_KINDS = ("vanilla", "interpretable")
#: The held-out toy faces of chapter 09: ToyFaces(seed=4242), a seed no model trained on.
HELDOUT_TOY_SEED = 4242


@dataclasses.dataclass(frozen=True)
class Source:
    """An image to edit: ``kind`` in :data:`SOURCE_KINDS` and its ``key``: the noise seed
    (generated), the index of a held-out toy face (toyface), or an example name or a loaded
    :class:`~interpddpm.photos.Photo` (photo)."""

    kind: str
    key: Any

    @classmethod
    def parse(cls, spec: Source | Photo | str) -> Source:
        """A :class:`Source` from itself, a Photo, or ``"generated:3"`` / ``"toyface:0"`` /
        ``"photo:astronaut"``."""
        if isinstance(spec, Source):
            src = spec
        elif isinstance(spec, Photo):
            src = cls("photo", spec)
        elif isinstance(spec, str) and ":" in spec:
            kind, key = spec.split(":", 1)
            src = cls(kind, key if kind == "photo" else _int_key(key, spec))
        else:
            raise ValueError(
                f"unknown image source {spec!r}; use 'generated:<seed>', 'toyface:<index>', "
                f"'photo:<name>' (one of {', '.join(EXAMPLES)}) or a Source / Photo."
            )
        if src.kind not in SOURCE_KINDS:
            raise ValueError(
                f"unknown source kind {src.kind!r}; choose one of {', '.join(SOURCE_KINDS)}."
            )
        if src.kind in ("generated", "toyface"):
            if isinstance(src.key, bool) or not isinstance(src.key, int) or src.key < 0:
                raise ValueError(f"a {src.kind} source needs an int >= 0, got {src.key!r}.")
        elif not isinstance(src.key, Photo) and src.key not in EXAMPLES:
            raise ValueError(
                f"unknown photo {src.key!r}; choose one of {', '.join(EXAMPLES)} or pass a "
                "Photo from interpddpm.photos.load_photo."
            )
        return src

    @property
    def label(self) -> str:
        if self.kind == "generated":
            return f"generated face, seed {self.key}"
        if self.kind == "toyface":
            return f"held-out toy face {self.key}"
        return f"photo: {self.key.name if isinstance(self.key, Photo) else self.key}"


def _int_key(text: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"source {spec!r}: {text!r} is not an integer.") from None


def _size(model: Any) -> int:
    size = model.config.sample_size
    return int(size if isinstance(size, int) else size[0])


@dataclasses.dataclass(eq=False)
class Prepared:
    """A source turned into a noise: ``x_T`` and its image ``x0 = G(x_T)`` (``[1, 3, S, S]``,
    CPU). For inverted sources ``x_input`` is the image that was inverted, ``x0`` its
    reconstruction and ``psnr`` the reconstruction's PSNR in dB."""

    source: Source
    x_T: Tensor
    x0: Tensor
    num_inference_steps: int
    x_input: Tensor | None = None
    labels: Tensor | None = None  # exact label map [1, S, S] (toy faces)
    photo: Photo | None = None
    psnr: float | None = None

    @property
    def inverted(self) -> bool:
        return self.x_input is not None


def prepare(model: Any, source: Source | Photo | str, *, num_inference_steps: int = 50) -> Prepared:
    """Noise and image of ``source`` for ``model``: sample it (generated) or invert it with
    DDIM (eq. 10, :func:`interpddpm.editing.reconstruct`)."""
    src = Source.parse(source)
    size = _size(model)
    if src.kind == "generated":
        x_T = model_noise(model, 1, generator=torch.Generator().manual_seed(src.key))
        x0 = ddim_sample(model, x_T, num_inference_steps=num_inference_steps).cpu()
        return Prepared(src, x_T, x0, num_inference_steps)
    photo = labels = None
    if src.kind == "toyface":
        image, lab = ToyFaces(size, src.key + 1, seed=HELDOUT_TOY_SEED)[src.key]
        x_input, labels = image.unsqueeze(0), lab.unsqueeze(0)
    else:
        photo = src.key if isinstance(src.key, Photo) else load_photo(src.key, size)
        if photo.size != size:
            raise ValueError(f"the photo is {photo.size}x{photo.size}, the model {size}x{size}.")
        x_input = photo.image
    x_T, x0 = editing.reconstruct(model, x_input, num_inference_steps=num_inference_steps)
    x_T, x0 = x_T.cpu(), x0.cpu()
    psnr = float(editing.psnr(x0, x_input)[0])
    return Prepared(src, x_T, x0, num_inference_steps, x_input, labels, photo, psnr)


def region_of(
    prepared: Prepared, concept: str, *, parser: Any = None, dilation: int = 1
) -> tuple[Tensor, str]:
    """The region ``[1, S, S]`` (bool) of ``concept`` and where it came from: the exact labels
    of a toy face, :func:`interpddpm.photos.photo_region` for a photo, the parser's mask of the
    generated image otherwise (as the paper's protocol)."""
    if prepared.labels is not None:
        return concept_mask(prepared.labels, concept, dilation), "exact labels"
    if prepared.photo is not None:
        region = photo_region(prepared.photo, concept, parser=parser, dilation=dilation)
        return region.mask, region.source
    if parser is None:
        raise ValueError(f"a generated face needs a parser to find its {concept} region.")
    mask = concept_mask(parser.predict(prepared.x0).cpu(), concept, dilation)
    if not mask.any():
        raise NoRegionError(
            f"the parser found no {concept} in the {prepared.source.label}; try another seed "
            "or pass region=<bool mask>."
        )
    return mask, "parser"


@dataclasses.dataclass(eq=False)
class EditResult:
    """One edit: images ``[1, 3, S, S]`` in [-1, 1] and maps ``[1, S, S]`` (CPU), and numbers.

    ``x0`` is the image before the edit (the reconstruction for an inverted source), ``x_edit``
    after it; ``locality`` is MSE(out) / MSE(in) over the region (NaN for an empty region);
    ``lab_mse_in`` / ``lab_mse_out`` are the mean Lab MSE inside / outside it; ``psnr`` the
    reconstruction's PSNR (inverted sources only)."""

    source: str
    model: str
    concept: str
    operation: str
    seed: int
    num_inference_steps: int
    x_input: Tensor | None
    x0: Tensor
    x_edit: Tensor
    x_T: Tensor
    x_T_edit: Tensor
    mask: Tensor
    region_from: str
    lab_mse: Tensor
    locality: float
    lab_mse_in: float
    lab_mse_out: float
    psnr: float | None

    def row(self) -> dict[str, Any]:
        """The numbers, for a "What was measured" table."""
        op = "resample, seed" if self.operation == "resample" else "swap, donor seed"
        return {
            "source": self.source,
            "model": self.model,
            "concept": self.concept,
            "edit": f"{op} {self.seed}",
            "region": self.region_from,
            "locality": self.locality,
            "Lab MSE inside": self.lab_mse_in,
            "Lab MSE outside": self.lab_mse_out,
            "reconstruction PSNR (dB)": self.psnr,
        }


def _check_choices(concept: str, operation: str, seed: int) -> None:
    if not isinstance(concept, str) or concept not in CONCEPTS:
        concept_ids(concept)  # raises "unknown concept ..., known: ..." for unknown names
        raise ValueError(f"choose the concept by name: one of {', '.join(CONCEPTS)}.")
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}; choose one of {', '.join(OPERATIONS)}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}.")


def edit_once(
    model: Any,
    parser: Any,
    source: Source | Photo | str,
    concept: str,
    operation: str,
    seed: int,
    *,
    num_inference_steps: int = 50,
    dilation: int = 1,
    region: Tensor | None = None,
    prepared: Prepared | None = None,
    model_name: str = "",
) -> EditResult:
    """Edit ``concept`` of ``source`` with ``model`` and measure the edit.

    ``operation="resample"``: the noise inside the region becomes that of ``seed``;
    ``"swap"``: it is taken from the donor noise of ``seed`` (for a generated source, the same
    seed as the source is the identity). A held-out toy face or a photo is edited in the noise
    that DDIM inversion (eq. 10) finds for it, regenerated without clipping, and compared with
    its reconstruction. ``region`` (bool ``[S, S]`` or ``[1, S, S]``)
    overrides the automatic region (:func:`region_of`; ``parser`` may be None for toy faces and
    for photos with default boxes). ``prepared`` reuses :func:`prepare`'s inversion (the
    widget caches it). Deterministic: the same arguments give the same result.
    """
    _check_choices(concept, operation, seed)
    src = Source.parse(source)
    if prepared is None:
        prepared = prepare(model, src, num_inference_steps=num_inference_steps)
    elif prepared.source != src:
        raise ValueError(f"prepared for {prepared.source.label}, not for {src.label}.")
    elif prepared.num_inference_steps != num_inference_steps:
        raise ValueError(
            f"prepared with {prepared.num_inference_steps} steps, asked for {num_inference_steps}."
        )
    size = prepared.x0.shape[-1]
    if region is not None:
        mask = torch.as_tensor(region).cpu()
        mask = mask.unsqueeze(0) if mask.ndim == 2 else mask
        if mask.shape != (1, size, size) or not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"region must be a 0/1 mask [{size}, {size}] or [1, {size}, {size}].")
        mask, region_from = mask.bool(), "given"
    else:
        mask, region_from = region_of(prepared, concept, parser=parser, dilation=dilation)
    gen = torch.Generator().manual_seed(seed)
    donor = model_noise(model, 1, generator=gen) if operation == "swap" else None
    x_T_edit, x_edit = editing.edit_region(
        model,
        prepared.x_T,
        mask,
        mode=operation,
        donor=donor,
        generator=gen,
        num_inference_steps=num_inference_steps,
        clip_sample=False if prepared.inverted else None,  # as the reconstruction
    )
    x0, x_edit = prepared.x0, x_edit.cpu()
    mse = editing.lab_mse_map(x0, x_edit)
    m = mask.float()
    inside = float((mse * m).sum() / m.sum()) if m.any() else float("nan")
    outside = float((mse * (1 - m)).sum() / (1 - m).sum().clamp_min(1))
    return EditResult(
        source=src.label,
        model=model_name,
        concept=concept,
        operation=operation,
        seed=seed,
        num_inference_steps=num_inference_steps,
        x_input=prepared.x_input,
        x0=x0,
        x_edit=x_edit,
        x_T=prepared.x_T,
        x_T_edit=x_T_edit.cpu(),
        mask=mask,
        region_from=region_from,
        lab_mse=mse,
        locality=float(locality(x0, x_edit, m)[0]),
        lab_mse_in=inside,
        lab_mse_out=outside,
        psnr=prepared.psnr,
    )


#: One fixed choice of the editor: (source, model kind, concept, operation, seed).
Choice = tuple[str, str, str, str, int]


def edit_many(
    get_model: Callable[[str, str], Any],
    parser: Any,
    choices: Sequence[Choice],
    *,
    num_inference_steps: int = 50,
    dilation: int = 1,
) -> tuple[list[EditResult], list[str]]:
    """:func:`edit_once` for each choice, with ``get_model(kind, concept)`` (see
    :func:`models_from_runs`). A choice whose concept has no region (the parser found none) is
    skipped and its reason returned, so that a figure of fixed choices survives a weak parser."""
    results, skipped = [], []
    for source, kind, concept, operation, seed in choices:
        try:
            results.append(
                edit_once(
                    get_model(kind, concept),
                    parser,
                    source,
                    concept,
                    operation,
                    seed,
                    num_inference_steps=num_inference_steps,
                    dilation=dilation,
                    model_name=kind,
                )
            )
        except NoRegionError as err:
            skipped.append(f"{source} / {kind} / {concept}: {err}")
    return results, skipped


# ---- figures ----------------------------------------------------------------------------------
def plot_result(axes: Sequence[Any], result: EditResult, *, vmax: float | None = None) -> None:
    """Draw ``result`` on 3 axes (original, edited, Lab MSE) or 4 (the inverted input first),
    the region outlined on each."""
    from .plotting import outline, show_image, show_map

    axes = list(axes)
    if len(axes) == 4:
        ax = axes.pop(0)
        if result.x_input is not None:
            show_image(ax, result.x_input, "input")
            outline(ax, result.mask)
            ax.title.set_fontsize(9)
        else:
            ax.axis("off")
    show_image(axes[0], result.x0, "reconstruction" if result.x_input is not None else "original")
    done = {"resample": "resampled", "swap": "swapped"}[result.operation]
    show_image(axes[1], result.x_edit, f"{result.concept} {done}")
    loc = "n/a" if math.isnan(result.locality) else f"{result.locality:.3g}"
    show_map(axes[2], result.lab_mse, f"Lab MSE (locality {loc})", vmax=vmax)
    for ax in axes:
        outline(ax, result.mask)
        ax.title.set_fontsize(9)


def _row_label(result: EditResult) -> str:
    return "\n".join(filter(None, [result.source, result.model]))


def render_static(results: Sequence[EditResult], *, shared_scale: bool = False) -> Any:
    """A matplotlib figure with one row per result (the panels of :func:`plot_result`), each
    row labelled with its source and model."""
    from .plotting import new_figure

    if not results:
        raise ValueError("render_static needs at least one EditResult.")
    ncols = 4 if any(r.x_input is not None for r in results) else 3
    fig, axes = new_figure(ncols=ncols, nrows=len(results), width=2.2, height=2.3)
    vmax = max(float(r.lab_mse.max()) for r in results) if shared_scale else None
    for i, result in enumerate(results):
        row = axes[i * ncols : (i + 1) * ncols]
        plot_result(row, result, vmax=vmax)
        label = _row_label(result)
        row[0].text(
            -0.06,
            0.5,
            label,
            transform=row[0].transAxes,
            rotation=90,
            ha="right",
            va="center",
            fontsize=8,
        )
    fig.tight_layout()
    return fig


# ---- models and the widget --------------------------------------------------------------------
def models_from_runs(
    profile: Any = "auto", *, progress: bool = True, device: str | None = None
) -> Callable[[str, str], Any]:
    """``get_model(kind, concept)`` over the cached runs of ``profile``: ``"vanilla"`` is the
    plain model (``runs.baseline``), ``"interpretable"`` the model fine-tuned for that concept
    (trained if missing, with a progress bar unless ``progress=False``). Each model is loaded
    once, onto ``device`` (default :func:`interpddpm.devices.default_device`; results always
    come back on the CPU)."""
    from . import runs

    loaded: dict[tuple[str, str], Any] = {}

    def get_model(kind: str, concept: str) -> Any:
        if kind not in MODEL_KINDS:
            raise ValueError(f"unknown model {kind!r}; choose one of {', '.join(MODEL_KINDS)}.")
        key = (kind, "" if kind == "vanilla" else concept)
        if key not in loaded:
            if kind == "vanilla":
                run = runs.baseline(profile, progress=progress)
            else:
                run = runs.interpretable(profile, [concept], progress=progress)
            loaded[key] = run.model(device=device)
        return loaded[key]

    return get_model


class EditorApp:
    """The ipywidgets editor: controls, an "Edit" button, the figure and the numbers.

    A thin shell: the button calls :func:`edit_once` (inversions are cached per model, source
    and steps) and draws :func:`plot_result` into a PNG. Display it as the last expression of a
    cell (or ``display(app)``); ``app.run()`` does what the button does.
    """

    def __init__(
        self,
        get_model: Callable[[str, str], Any],
        parser: Any,
        *,
        num_inference_steps: int = 50,
        dilation: int = 1,
        photos: Sequence[str] = EXAMPLES,
    ) -> None:
        import ipywidgets as w

        self.get_model, self.parser = get_model, parser
        self.num_inference_steps, self.dilation = num_inference_steps, dilation
        self._prepared: dict[tuple[int, Any], Prepared] = {}
        self.result: EditResult | None = None
        self.error: str | None = None
        wide = {"description_width": "initial"}
        self.source_kind = w.Dropdown(
            options=[
                ("generated face", "generated"),
                ("held-out toy face (inverted)", "toyface"),
                ("photo (inverted)", "photo"),
            ],
            description="image",
            style=wide,
        )
        self.source_key = w.BoundedIntText(0, min=0, max=10**6, description="seed / index")
        self.photo = w.Dropdown(options=list(photos), description="photo")
        self.model_kind = w.Dropdown(options=list(MODEL_KINDS), description="model")
        self.concept = w.Dropdown(options=list(CONCEPTS), value="nose", description="concept")
        self.operation = w.ToggleButtons(
            options=[("resample", "resample"), ("swap with donor", "swap")], description="edit"
        )
        self.seed = w.BoundedIntText(1, min=0, max=10**6, description="edit seed", style=wide)
        self.button = w.Button(description="Edit", button_style="primary", icon="magic")
        self.image = w.Image(format="png")
        self.numbers = w.HTML()
        self.button.on_click(self.run)
        self.source_kind.observe(self._toggle_source, names="value")
        self._toggle_source()
        self.widget = w.VBox(
            [
                w.HBox([self.source_kind, self.source_key, self.photo]),
                w.HBox([self.model_kind, self.concept]),
                w.HBox([self.operation, self.seed, self.button]),
                self.image,
                self.numbers,
            ]
        )

    def _toggle_source(self, *_: Any) -> None:
        photo = self.source_kind.value == "photo"
        self.photo.layout.display = None if photo else "none"
        self.source_key.layout.display = "none" if photo else None

    def source(self) -> Source:
        kind = self.source_kind.value
        return Source(kind, self.photo.value if kind == "photo" else int(self.source_key.value))

    def run(self, *_: Any) -> EditResult | None:
        """Make the chosen edit and show it (errors are shown, not raised)."""
        import matplotlib.pyplot as plt

        from .plotting import new_figure

        self.button.disabled, self.numbers.value = True, "<i>editing ...</i>"
        try:
            kind, concept = self.model_kind.value, self.concept.value
            model = self.get_model(kind, concept)
            src = self.source()
            key = (id(model), src)
            if key not in self._prepared:
                self._prepared[key] = prepare(
                    model, src, num_inference_steps=self.num_inference_steps
                )
            result = edit_once(
                model,
                self.parser,
                src,
                concept,
                self.operation.value,
                int(self.seed.value),
                num_inference_steps=self.num_inference_steps,
                dilation=self.dilation,
                prepared=self._prepared[key],
                model_name=kind,
            )
            ncols = 4 if result.x_input is not None else 3
            fig, axes = new_figure(ncols=ncols, width=2.4, height=2.5)
            plot_result(axes, result)
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="png")
            plt.close(fig)
            self.image.value = buf.getvalue()
            self.result, self.error = result, None
            self.numbers.value = _numbers_html(result)
        except Exception as err:  # show the message in the widget, keep the UI alive
            self.result, self.error = None, f"{type(err).__name__}: {err}"
            self.numbers.value = f"<b style='color:#C44E52'>{_escape(self.error)}</b>"
        finally:
            self.button.disabled = False
        return self.result

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def _escape(text: str) -> str:
    import html

    return html.escape(text)


def _numbers_html(result: EditResult) -> str:
    row = result.row()
    cells = "".join(
        f"<tr><td>{_escape(k)}</td><td>{v:.4g}</td></tr>"
        if isinstance(v, float)
        else f"<tr><td>{_escape(k)}</td><td>{_escape(str(v))}</td></tr>"
        for k, v in row.items()
        if v is not None
    )
    return f"<table>{cells}</table>"
