"""Weight-space merging of fine-tuned models (task arithmetic): one model of several concepts
from the single-concept models, without training.

Beyond the paper (issue 28). The paper trains one model per concept, each with ``K = 2``
(the concept against the rest, eq. 9). Each such fine-tune ``theta_c`` starts from the same
vanilla model ``theta_0``; its *task vector* ``theta_c - theta_0`` is what learning concept
``c``'s locality changed. Task arithmetic (Ilharco et al. 2023) adds the task vectors:

    theta = theta_0 + sum_c alpha_c (theta_c - theta_0),

a model that is asked to keep every concept's edits local at once (a ``K = 4`` model for the
eyes, the nose and the mouth) at the cost of one UNet forward per step. Whether the task
vectors add without interfering is an empirical question: chapter 12 measures it.

Computed as ``(1 - sum_c alpha_c) theta_0 + sum_c alpha_c theta_c`` in float64 and rounded
back to the weights' dtype, so that all alphas 0 give ``theta_0`` and a single source at
alpha 1 gives that source, bit for bit.

Serves chapter 12.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["merge_models", "task_arithmetic"]


def task_arithmetic(
    base: Mapping[str, Tensor],
    sources: Sequence[Mapping[str, Tensor]],
    alphas: Sequence[float],
) -> dict[str, Tensor]:
    """``theta_0 + sum_c alpha_c (theta_c - theta_0)`` for state dicts: ``base`` is
    ``theta_0``, ``sources[c]`` is ``theta_c`` (a fine-tune of ``base``), ``alphas[c]`` its
    weight. Every source must have exactly ``base``'s names, shapes and dtypes (fine-tunes of
    the same architecture); non-floating tensors (counters) must agree and are kept."""
    if len(sources) != len(alphas):
        raise ValueError(
            f"task_arithmetic needs one alpha per source: {len(sources)} sources, "
            f"{len(alphas)} alphas."
        )
    if not sources:
        raise ValueError("task_arithmetic needs at least one source model to merge.")
    bad = [a for a in alphas if not isinstance(a, (int, float)) or a != a]
    if bad:
        raise ValueError(f"alphas must be numbers, got {bad}.")
    for i, src in enumerate(sources):
        if set(src) != set(base):
            extra, missing = sorted(set(src) - set(base)), sorted(set(base) - set(src))
            raise ValueError(
                f"source {i} is not a fine-tune of the base model's architecture: "
                f"{len(extra)} tensors the base lacks {extra[:3]}, {len(missing)} missing "
                f"{missing[:3]}; merge models fine-tuned from the same vanilla model."
            )
        for name, t in base.items():
            if src[name].shape != t.shape or src[name].dtype != t.dtype:
                raise ValueError(
                    f"source {i}'s {name} is {tuple(src[name].shape)} {src[name].dtype}, the "
                    f"base's {tuple(t.shape)} {t.dtype}; merge models of the same architecture."
                )
    keep = 1.0 - float(sum(alphas))
    out: dict[str, Tensor] = {}
    for name, t in base.items():
        if not t.is_floating_point():
            if any(not torch.equal(src[name], t) for src in sources):
                raise ValueError(f"the sources disagree with the base on {name} (not a weight).")
            out[name] = t.clone()
            continue
        acc = t.detach().to(torch.float64) * keep
        for src, alpha in zip(sources, alphas, strict=True):
            acc = acc + src[name].detach().to(device=t.device, dtype=torch.float64) * alpha
        out[name] = acc.to(t.dtype)
    return out


def merge_models(base: nn.Module, sources: Sequence[nn.Module], alphas: Sequence[float]) -> Any:
    """A copy of ``base`` (e.g. the vanilla UNet) with :func:`task_arithmetic`'s weights of
    ``sources`` (its fine-tunes, e.g. the single-concept EMA models) at ``alphas``; the
    copy keeps ``base``'s config and ``scheduler_config`` (what sampling uses)."""
    merged = copy.deepcopy(base)
    state = task_arithmetic(
        base.state_dict(), [s.state_dict() for s in sources], [float(a) for a in alphas]
    )
    merged.load_state_dict(state)
    return merged.eval()
