"""A hybrid denoiser: the interpretable model for the noisy steps, the vanilla model for the rest.

Beyond the paper (issue 13). ``L_IE`` (eq. 9) makes each concept's region of ``x_T`` control
only the same region of ``x_0``; that layout is decided in the noisy steps of the reverse
process, while the nearly clean steps mostly draw texture, where the fine-tuned model is worst
(chapter 8's region denoising error). :class:`HybridDenoiser` predicts ``eps`` with the
interpretable model for ``t >= switch_t`` and with the frozen vanilla model for ``t < switch_t``.

What it changes about the method's claim: ``x_0`` is still a deterministic function of ``x_T``
(DDIM, eta 0), so editing a region of ``x_T`` is still an edit of that concept; but the last
``switch_t`` steps are taken by a model that was never asked to keep regions apart. Those steps
denoise from a nearly clean image, whose layout they refine rather than redraw, so the edit
should stay local; chapter 12 measures how local, and what it buys in realism, for a range of
``switch_t``. ``switch_t = 0`` is the interpretable model alone, ``switch_t >= T`` the vanilla
model alone. No training is needed: the trade-off over ``switch_t`` is free.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .denoiser_game import predict_noise

__all__ = ["HybridDenoiser"]


def _noise_schedule(model: Any) -> dict[str, Any]:
    config = getattr(model, "scheduler_config", None)
    return dict(config) if config is not None else {}


class HybridDenoiser(nn.Module):
    """``eps(x_t, t)`` of ``high`` for ``t >= switch_t`` and of ``low`` below.

    Both models must take the same inputs (``config.in_channels``, ``config.sample_size``) and
    share the training noise schedule (``scheduler_config``), or the two halves of the reverse
    process would disagree on what ``x_t`` means; anything else is refused with a clear error.
    ``switch_t`` is a buffer, so :func:`interpddpm.memo.weights_digest` (the key of cached
    sample sets) tells two switches apart. Use it wherever a UNet is sampled, edited or
    inverted (:mod:`interpddpm.sampling`, :mod:`interpddpm.editing`, :mod:`interpddpm.metrics`).
    """

    def __init__(self, high: nn.Module, low: nn.Module, switch_t: int) -> None:
        super().__init__()
        if isinstance(switch_t, bool) or not isinstance(switch_t, int) or switch_t < 0:
            raise ValueError(f"switch_t must be an int >= 0 (a timestep), got {switch_t!r}.")
        for name in ("in_channels", "sample_size"):
            a, b = getattr(high.config, name, None), getattr(low.config, name, None)
            if a != b:
                raise ValueError(
                    f"the two models of a hybrid must take the same inputs, but their {name} "
                    f"differ ({a} and {b}); pair models trained on the same data."
                )
        high_s, low_s = _noise_schedule(high), _noise_schedule(low)
        keys = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end")
        if high_s and low_s and any(high_s.get(k) != low_s.get(k) for k in keys):
            diff = {k: (high_s.get(k), low_s.get(k)) for k in keys if high_s.get(k) != low_s.get(k)}
            raise ValueError(
                f"the two models of a hybrid were trained with different noise schedules {diff}; "
                "pair a fine-tuned model with the model it was fine-tuned from."
            )
        self.high, self.low = high, low
        self.register_buffer("switch_t", torch.tensor(switch_t, dtype=torch.long))
        self.config = high.config
        self.scheduler_config = getattr(high, "scheduler_config", None)

    def forward(self, sample: Tensor, timestep: Tensor | int) -> Any:
        t = torch.as_tensor(timestep, device=sample.device)
        if t.ndim == 0:
            t = t.expand(sample.shape[0])
        use_high = t >= self.switch_t
        if bool(use_high.all()):
            return self.high(sample, t)
        if not bool(use_high.any()):
            return self.low(sample, t)
        # a batch of mixed timesteps: each model on its own samples, merged
        eps = predict_noise(self.low, sample, t).clone()
        eps[use_high] = predict_noise(self.high, sample[use_high], t[use_high])
        return (eps,)

    def extra_repr(self) -> str:
        return f"switch_t={int(self.switch_t)}"
