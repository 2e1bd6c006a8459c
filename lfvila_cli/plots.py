"""PNG figures with matplotlib on the Agg backend (files only, never a display): the training
loss curves every trained model carries (``loss.png``); the report figures of ``evaluate``
draw with ``pyplot()`` too."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(
    series: dict[str, tuple[list[float], list[float]]], path: str | Path, width: int = 640, panel_height: int = 140,
    mark: Optional[tuple[float, str]] = None,
) -> None:
    """One labelled panel per named series ``{name: (steps, values)}`` (non-finite values
    dropped), stacked vertically with a shared step axis, each scaled to its own range, the zero
    line drawn when in range; ``mark`` = (step, label): a dashed line at that step on every
    panel, labelled on the first (the selected step of a fine-tune); ``width`` × (panels ·
    ``panel_height`` + 50) pixels."""
    plt = pyplot()
    names = [n for n, (xs, ys) in series.items() if any(np.isfinite(ys))] or ["(no data)"]
    height = len(names) * panel_height + 50
    fig, axes = plt.subplots(len(names), 1, figsize=(width / 100, height / 100), dpi=100, sharex=True, squeeze=False)
    for p, (ax, name) in enumerate(zip(axes[:, 0], names)):
        ax.set_title(name, fontsize=8, loc="left", pad=2)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if name not in series:
            continue
        xs, ys = (np.asarray(v, np.float64) for v in series[name])
        ok = np.isfinite(ys) & np.isfinite(xs)
        ax.plot(xs[ok], ys[ok], color=f"C{p}", marker="o" if ok.sum() == 1 else None, linewidth=1.2)
        if ok.any() and ys[ok].min() < 0 < ys[ok].max():
            ax.axhline(0, color="0.7", linewidth=0.8)
        if mark is not None:
            ax.axvline(mark[0], color="0.35", linestyle="--", linewidth=0.9, label=mark[1] if p == 0 else None)
            at = ok & (xs == mark[0])
            if at.any():
                ax.plot(xs[at], ys[at], "o", color=f"C{p}", markersize=5)
    if mark is not None:
        axes[0, 0].legend(fontsize=7, loc="best", frameon=False)
    axes[-1, 0].set_xlabel("step", fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.98, top=1 - 16 / height, bottom=42 / height, hspace=0.4)
    fig.savefig(str(path), dpi=100)
    plt.close(fig)

