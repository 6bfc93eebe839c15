"""The interactive editor: the pure edit function, the static figure and the widget shell."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch

from interpddpm.editor import (
    EditorApp,
    Source,
    edit_many,
    edit_once,
    models_from_runs,
    prepare,
    render_static,
)
from interpddpm.models import make_unet

matplotlib.use("Agg")
STEPS = 3


class SquareParser:
    """A stand-in parser: a fixed square labelled nose (5) and one labelled eyes (3)."""

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        labels = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long)
        labels[:, 7:9, 7:9] = 5
        labels[:, 4:6, 3:13] = 3
        return labels


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return make_unet("tiny", sample_size=16).eval()


@pytest.mark.parametrize("source", ["generated:1", "toyface:0", "photo:astronaut"])
@pytest.mark.parametrize("operation", ["resample", "swap"])
def test_deterministic_for_a_seed(model, source: str, operation: str) -> None:
    kw = dict(num_inference_steps=STEPS)
    a = edit_once(model, SquareParser(), source, "nose", operation, 5, **kw)
    b = edit_once(model, SquareParser(), source, "nose", operation, 5, **kw)
    assert torch.equal(a.x_edit, b.x_edit) and torch.equal(a.x0, b.x0)
    assert a.locality == b.locality and not math.isnan(a.locality)
    assert a.x_edit.shape == (1, 3, 16, 16) and a.mask.shape == (1, 16, 16)
    assert a.lab_mse.shape == (1, 16, 16) and a.lab_mse_in > 0
    # the noise changed only inside the region
    outside = ~a.mask.unsqueeze(1).expand_as(a.x_T)
    assert torch.equal(a.x_T_edit[outside], a.x_T[outside])
    c = edit_once(model, SquareParser(), source, "nose", operation, 6, **kw)
    assert not torch.equal(c.x_edit, a.x_edit)
    assert (a.psnr is None) == source.startswith("generated")


@pytest.mark.parametrize("source", ["generated:2", "toyface:1"])
def test_empty_region_changes_nothing(model, source: str) -> None:
    empty = torch.zeros(16, 16, dtype=torch.bool)
    r = edit_once(model, None, source, "mouth", "resample", 3, region=empty, num_inference_steps=3)
    assert torch.equal(r.x_edit, r.x0) and float(r.lab_mse.max()) == 0
    assert math.isnan(r.locality) and r.region_from == "given"


def test_swap_with_the_source_seed_is_the_identity(model) -> None:
    r = edit_once(model, SquareParser(), "generated:7", "nose", "swap", 7, num_inference_steps=3)
    assert torch.equal(r.x_T_edit, r.x_T) and torch.equal(r.x_edit, r.x0)


def test_prepared_inversion_is_reused(model) -> None:
    prep = prepare(model, "toyface:2", num_inference_steps=STEPS)
    assert prep.inverted and prep.labels is not None and prep.psnr is not None
    a = edit_once(model, None, "toyface:2", "eyes", "swap", 1, prepared=prep, num_inference_steps=3)
    b = edit_once(model, None, "toyface:2", "eyes", "swap", 1, num_inference_steps=STEPS)
    assert torch.equal(a.x_edit, b.x_edit) and a.region_from == "exact labels"
    with pytest.raises(ValueError, match="not for held-out toy face 3"):
        edit_once(model, None, "toyface:3", "eyes", "swap", 1, prepared=prep, num_inference_steps=3)
    with pytest.raises(ValueError, match="prepared with 3 steps"):
        edit_once(model, None, "toyface:2", "eyes", "swap", 1, prepared=prep, num_inference_steps=4)


def test_bad_choices_raise_clear_errors(model) -> None:
    parser = SquareParser()
    with pytest.raises(ValueError, match="unknown concept 'ears'.*eyes, nose, mouth"):
        edit_once(model, parser, "generated:0", "ears", "swap", 1)
    with pytest.raises(ValueError, match="unknown operation 'blur'.*resample, swap"):
        edit_once(model, parser, "generated:0", "nose", "blur", 1)
    with pytest.raises(ValueError, match="seed must be an int"):
        edit_once(model, parser, "generated:0", "nose", "swap", -1)
    with pytest.raises(ValueError, match="unknown source kind 'video'"):
        edit_once(model, parser, "video:1", "nose", "swap", 1)
    with pytest.raises(ValueError, match="unknown photo 'mona_lisa'"):
        Source.parse("photo:mona_lisa")
    with pytest.raises(ValueError, match="not an integer"):
        Source.parse("generated:x")
    with pytest.raises(ValueError, match="needs a parser"):
        edit_once(model, None, "generated:0", "nose", "swap", 1, num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="found no mouth"):
        edit_once(model, parser, "generated:0", "mouth", "swap", 1, num_inference_steps=STEPS)


def test_edit_many_skips_choices_without_a_region(model) -> None:
    choices = [
        ("generated:0", "vanilla", "mouth", "swap", 1),  # the parser finds no mouth
        ("toyface:0", "x", "eyes", "swap", 1),
    ]
    results, skipped = edit_many(lambda k, c: model, SquareParser(), choices, num_inference_steps=2)
    assert [r.model for r in results] == ["x"] and results[0].concept == "eyes"
    assert len(skipped) == 1 and "generated:0 / vanilla / mouth" in skipped[0]
    with pytest.raises(ValueError, match="unknown model 'gan'.*vanilla, interpretable"):
        models_from_runs("smoke")("gan", "nose")  # refused before anything is trained


def test_render_static_draws_every_result(model) -> None:
    results = [
        edit_once(
            model, SquareParser(), "generated:1", "eyes", "resample", 2, num_inference_steps=2
        ),
        edit_once(model, None, "photo:grace_hopper", "nose", "swap", 2, num_inference_steps=2),
    ]
    fig = render_static(results)
    assert len(fig.axes) >= 2 * 4  # 4 panels per row (the photo has an input), plus colour bars
    assert set(results[0].row()) >= {"source", "model", "concept", "locality"}
    with pytest.raises(ValueError, match="at least one"):
        render_static([])


def test_widget_builds_and_its_callback_draws(model) -> None:
    asked = []

    def get_model(kind: str, concept: str) -> torch.nn.Module:
        asked.append((kind, concept))
        return model

    app = EditorApp(get_model, SquareParser(), num_inference_steps=2)
    assert app.widget.children and "application/vnd.jupyter.widget-view+json" in (
        app._repr_mimebundle_() or {}
    )
    app.button.click()
    assert app.error is None and app.result is not None
    assert app.image.value[:8] == b"\x89PNG\r\n\x1a\n" and "locality" in app.numbers.value
    app.source_kind.value, app.model_kind.value, app.operation.value = (
        "photo",
        "interpretable",
        "swap",
    )
    assert app.photo.layout.display is None and app.source_key.layout.display == "none"
    assert app.run() is not None and app.result.x_input is not None
    assert asked[-1] == ("interpretable", "nose")
    app.concept.value, app.source_kind.value = "mouth", "generated"  # the parser finds no mouth
    assert (
        app.run() is None
        and "found no mouth" in app.error
        and "found no mouth" in (app.numbers.value)
    )
