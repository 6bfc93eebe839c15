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
