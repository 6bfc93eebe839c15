"""Measurements cached under a key of what they measure (interpddpm.memo), and recorded."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from interpddpm import memo, metrics
from interpddpm.metrics import generate_pairs, locality_protocol
from interpddpm.models import make_unet
from interpddpm.realism import sample_images


class ModuleParser(torch.nn.Module):
    """A parser with weights (so its output can be keyed): the 'nose' is a fixed square whose
    side grows with its one parameter."""

    def __init__(self, side: float = 4.0) -> None:
        super().__init__()
        self.side = torch.nn.Parameter(torch.tensor(side))

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        labels = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long)
        s = int(self.side)
        labels[:, 6 : 6 + s, 6 : 6 + s] = 5
        return labels


def _unet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return make_unet("tiny", sample_size=16).eval()


def _fail(*_: object, **__: object) -> None:
    raise AssertionError("a cached request was computed again")


def test_cached_computes_once_and_recomputes_a_corrupted_entry(tmp_path: Path) -> None:
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(3.0)}

    first = memo.cached(tmp_path, "k", ["a", 1], compute, digests=["d1"], what="test entry")
    again = memo.cached(tmp_path, "k", ["a", 1], compute, digests=["d1"], what="test entry")
    assert len(calls) == 1 and torch.equal(first["x"], again["x"])
    entry = memo.entry_path(tmp_path, "k", ["a", 1])
    side = json.loads(Path(f"{entry}{memo.KEY_SUFFIX}").read_text())
    assert side == {"kind": "k", "parts": ["a", 1], "digests": ["d1"]}
    memo.cached(tmp_path, "k", ["a", 2], compute, digests=["d1"], what="test entry")
    assert len(calls) == 2  # another key is another measurement
    entry.write_bytes(b"not a tensor file")  # the digest no longer matches
    with pytest.warns(RuntimeWarning, match="unusable"):
        memo.cached(tmp_path, "k", ["a", 1], compute, digests=["d1"], what="test entry")
    assert len(calls) == 3


def test_cached_locality_equals_the_measured_one_and_is_not_measured_again(
    tmp_path: Path, monkeypatch
) -> None:
    """generate_pairs and locality_protocol with a cache: the same values as without, a
    second request answered from the cache (sampling disabled), and a model or parser with
    other weights measured anew."""
    unet, parser = _unet(), ModuleParser()
    kw = dict(num_inference_steps=3, dilation=1)
    plain = locality_protocol(unet, parser, ["nose"], n_pairs=3, **kw)
    first = locality_protocol(unet, parser, ["nose"], n_pairs=3, cache=tmp_path, **kw)
    pairs = generate_pairs(unet, parser, 3, num_inference_steps=3, cache=tmp_path)
    repaint = locality_protocol(
        unet, parser, ["nose"], generated=pairs.head(2), method="repaint", cache=tmp_path, **kw
    )
    with monkeypatch.context() as m:
        m.setattr(metrics, "_sample", _fail)
        m.setattr(metrics, "repaint_edit", _fail)
        again = locality_protocol(unet, parser, ["nose"], n_pairs=3, cache=tmp_path, **kw)
        cached_pairs = generate_pairs(unet, parser, 3, num_inference_steps=3, cache=tmp_path)
        cached_repaint = locality_protocol(
            unet,
            parser,
            ["nose"],
            generated=pairs.head(2),
            method="repaint",
            cache=tmp_path,
            **kw,
        )
        with pytest.raises(AssertionError, match="computed again"):  # other weights
            locality_protocol(_unet(1), parser, ["nose"], n_pairs=3, cache=tmp_path, **kw)
        with pytest.raises(AssertionError, match="computed again"):  # another parser
            locality_protocol(unet, ModuleParser(5.0), ["nose"], n_pairs=3, cache=tmp_path, **kw)
    for a, b, c in zip(plain, first, again, strict=True):
        for field in dataclasses.fields(a):
            va, vb, vc = (getattr(r, field.name) for r in (a, b, c))
            if isinstance(va, torch.Tensor):
                assert torch.equal(va, vb) and torch.equal(vb, vc), field.name
            else:
                assert va == vb == vc or (va != va and vb != vb and vc != vc), field.name
    assert plain[0].n_pairs == 3 and plain[0].ratio_of_sums > 0
    assert torch.equal(cached_pairs.x0, pairs.x0) and torch.equal(cached_pairs.labels, pairs.labels)
    assert torch.equal(cached_pairs.x_T, pairs.x_T) and torch.equal(cached_pairs.donor, pairs.donor)
    assert torch.equal(cached_repaint[0].per_pair, repaint[0].per_pair)


def test_a_parser_without_weights_is_measured_every_time(tmp_path: Path) -> None:
    class Plain:  # not a torch module: its output has no key
        def predict(self, images):
            return ModuleParser().predict(images)

    locality_protocol(_unet(), Plain(), ["nose"], n_pairs=2, num_inference_steps=2, cache=tmp_path)
    assert not list(tmp_path.glob("*.pt"))


def test_record_keeps_only_the_recorded_networks_entries_and_adopt_serves_them(
    tmp_path: Path, monkeypatch
) -> None:
    """memo.record copies the entries whose every network is in the given digests; memo.adopt
    copies them into another cache, which then answers without sampling, and never replaces
    an entry the cache has."""
    cache, dest, other = tmp_path / "cache", tmp_path / "record", tmp_path / "elsewhere"
    kept, dropped, parser = _unet(0), _unet(1), ModuleParser()
    for model in (kept, dropped):
        locality_protocol(model, parser, ["nose"], n_pairs=2, num_inference_steps=2, cache=cache)
        sample_images(model, 2, num_inference_steps=2, cache=cache)
    assert len(list(cache.glob("*.pt"))) == 6  # pairs, locality, samples, for each model
    recorded = {memo.weights_digest(kept), memo.weights_digest(parser)}
    made = memo.record(cache, dest, recorded)
    assert sorted(p.name.split("-")[0] for p in made) == ["locality", "pairs", "samples"]
    assert memo.record(cache, dest, recorded) == []  # already there
    assert memo.record(cache, tmp_path / "none", {memo.weights_digest(kept)}) != []  # samples
    assert memo.adopt(dest, other) == 3 and memo.adopt(dest, other) == 0
    with monkeypatch.context() as m:
        m.setattr(metrics, "_sample", _fail)
        m.setattr("interpddpm.realism._sample", _fail)
        locality_protocol(kept, parser, ["nose"], n_pairs=2, num_inference_steps=2, cache=other)
        sample_images(kept, 2, num_inference_steps=2, cache=other)
        with pytest.raises(AssertionError, match="computed again"):
            sample_images(dropped, 2, num_inference_steps=2, cache=other)
    # an entry measured here is never replaced by a recorded one
    entry = next(other.glob("samples-*.pt"))
    before = entry.read_bytes()
    (dest / entry.name).write_bytes(b"another recording")
    assert memo.adopt(dest, other) == 0 and entry.read_bytes() == before


def test_a_cached_c2st_and_reconstruction_equal_the_computed_ones(tmp_path: Path, monkeypatch):
    """c2st(cache=) and editing.reconstruct(cache=): the same results as without a cache, the
    second request read back (training and inversion disabled), other images computed anew;
    a C2ST entry names no network, so it is never recorded."""
    from interpddpm import c2st as c2st_module
    from interpddpm import editing

    gen = torch.Generator().manual_seed(0)
    real = torch.rand(32, 3, 8, 8, generator=gen)
    fake = (torch.rand(32, 3, 8, 8, generator=gen) * 1.5).clamp(max=1)
    kw = dict(folds=2, epochs=2, device="cpu")
    plain = c2st_module.c2st(real, fake, **kw)
    first = c2st_module.c2st(real, fake, cache=tmp_path, **kw)
    unet = _unet()
    x0 = torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1
    rec_plain = editing.reconstruct(unet, x0, num_inference_steps=3)
    rec_first = editing.reconstruct(unet, x0, num_inference_steps=3, cache=tmp_path)
    with monkeypatch.context() as m:
        m.setattr(c2st_module, "c2st_classifier", _fail)
        m.setattr(editing, "ddim_invert", _fail)
        again = c2st_module.c2st(real, fake, cache=tmp_path, **kw)
        rec_again = editing.reconstruct(unet, x0, num_inference_steps=3, cache=tmp_path)
        with pytest.raises(AssertionError, match="computed again"):
            c2st_module.c2st(real, fake.flip(0), cache=tmp_path, **kw)
        with pytest.raises(AssertionError, match="computed again"):
            editing.reconstruct(unet, x0, num_inference_steps=4, cache=tmp_path)
    assert plain == first == again
    for a, b, c in zip(rec_plain, rec_first, rec_again, strict=True):
        assert torch.equal(a, b) and torch.equal(b, c)
    assert memo.record(tmp_path, tmp_path / "rec", {memo.weights_digest(unet)}) == [
        tmp_path
        / "rec"
        / memo.entry_path(
            tmp_path,
            "reconstruct",
            ["reconstruct", memo.weights_digest(unet), memo.tensors_digest(x0), 3],
        ).name
    ]
