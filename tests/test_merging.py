"""Weight-space merging (task arithmetic, issue 28): exact at its ends, refuses missing
sources, and a merged variant's record key follows its alphas and sources."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from interpddpm import ablations
from interpddpm.errors import UserError
from interpddpm.merging import merge_models, task_arithmetic
from interpddpm.models import make_unet


def _tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return make_unet("tiny")


def _fine_tune(base: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``base`` with every weight moved a little (a stand-in for a fine-tune of it)."""
    out = _tiny(0)
    out.load_state_dict(base.state_dict())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(1e-2 * torch.randn(p.shape, generator=gen))
    return out


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_all_alphas_zero_give_the_vanilla_weights_exactly() -> None:
    base = _tiny(0)
    sources = [_fine_tune(base, s) for s in (1, 2, 3)]
    assert not _equal(base, sources[0])  # the sources really differ from the base
    assert _equal(merge_models(base, sources, [0.0, 0.0, 0.0]), base)


def test_one_source_at_alpha_one_gives_that_source_exactly() -> None:
    base = _tiny(0)
    source = _fine_tune(base, 1)
    assert _equal(merge_models(base, [source], [1.0]), source)
    # and the merge is the task-vector sum (float64 reference), not a copy of one model
    other = _fine_tune(base, 2)
    merged = merge_models(base, [source, other], [0.5, 0.7]).state_dict()
    b, s, o = base.state_dict(), source.state_dict(), other.state_dict()
    for k, w in merged.items():
        want = b[k].double() + 0.5 * (s[k].double() - b[k].double())
        want = want + 0.7 * (o[k].double() - b[k].double())
        assert torch.allclose(w.double(), want, atol=1e-6), k
    assert not _equal(base, merge_models(base, [source, other], [0.5, 0.7]))


def test_sources_of_another_architecture_or_count_are_refused() -> None:
    base = _tiny(0)
    other = make_unet("tiny", block_out_channels=(8, 16), norm_num_groups=4)
    with pytest.raises(ValueError, match="same architecture|fine-tune"):
        task_arithmetic(base.state_dict(), [other.state_dict()], [1.0])
    with pytest.raises(ValueError, match="one alpha per source"):
        task_arithmetic(base.state_dict(), [base.state_dict()], [1.0, 1.0])


def test_a_missing_source_run_is_refused_with_the_command_that_trains_it(
    tmp_path, monkeypatch
) -> None:
    """Nothing is trained: the refusal names the run and the command, and no run folder
    appears in the (empty) cache."""
    monkeypatch.setenv("INTERPDDPM_CACHE", str(tmp_path))
    name = next(n for n, v in ablations.VARIANTS.items() if v.merge_of is not None)
    with pytest.raises(UserError, match=r"interp-eyes-.*is missing.*runs\.interpretable"):
        ablations.run_variant("smoke", name, progress=False)
    assert not list(tmp_path.rglob("checkpoint-*"))


def test_the_merged_record_key_follows_the_alphas_and_the_sources(monkeypatch) -> None:
    merged = [v for v in ablations.VARIANTS.values() if v.merge_of is not None]
    assert {v.merge_recipe for v in merged} == {"book", "paper"}
    book = next(v for v in merged if v.merge_recipe == "book")
    key = ablations.variant_record_key("cpu", book)
    alphas = dataclasses.replace(book, merge_of=tuple((c, 0.7) for c, _ in book.merge_of))
    fewer = dataclasses.replace(book, merge_of=book.merge_of[:2])
    paper = dataclasses.replace(book, merge_recipe="paper")
    keys = {key, *(ablations.variant_record_key("cpu", v) for v in (alphas, fewer, paper))}
    assert len(keys) == 4
    # the sources' own recipes count: another single-concept recipe is another merged model
    sources = ablations.merge_sources("cpu", book)
    assert [c for c, _, _ in sources] == list(ablations.CONCEPTS)
    assert all(list(cfg.concepts) == [c] and cfg.ie_outside == "split" for c, _, cfg in sources)
    from interpddpm import runs

    monkeypatch.setattr(runs, "SINGLE_IE", {**runs.SINGLE_IE, "lambda_floor": 10.0})
    assert ablations.variant_record_key("cpu", book) not in keys
    monkeypatch.undo()
    assert ablations.variant_record_key("cpu", book) == key
    # a merged variant trains nothing: no config of its own
    with pytest.raises(ValueError, match="trains no run of its own"):
        ablations.variant_config("cpu", book)
