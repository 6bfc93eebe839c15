"""interpddpm: interpretable diffusion models through game theory.

Theory (no diffusion code): :mod:`interpddpm.games`, :mod:`interpddpm.shapley`,
:mod:`interpddpm.theorem`. Diffusion side: regions, the denoiser game, training, DDIM sampling
and inversion, editing and metrics.

Serves every chapter (the map: docs/architecture.md).
"""

__version__ = "0.1.0"
