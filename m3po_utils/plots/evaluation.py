"""Figures of notebook 06 (evaluation)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from m3po_utils.comparison import HEADLINE
from m3po_utils.stats import Bootstrap


def long_frame(boot: Bootstrap, metrics: Sequence[str]):
    """Long table (method, metric, mean, lo, hi) for bar charts."""
    import pandas as pd

    return pd.DataFrame([{"method": m, "metric": k, "mean": boot.point[m][k], "lo": boot.interval(m, k)[0],
                          "hi": boot.interval(m, k)[1]} for m in boot.point for k in metrics])


def plot_bars(boot: Bootstrap, metrics: Sequence[str], ncols: int = 4):
    """One panel per metric: a bar per method with its interval."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = long_frame(boot, metrics)
    methods = list(boot.point)
    colors = dict(zip(methods, sns.color_palette(n_colors=len(methods)), strict=True))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.9 * nrows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        part = df[df.metric == metric].set_index("method").loc[methods]
        x = np.arange(len(methods))
        ax.bar(x, part["mean"], color=[colors[m] for m in methods])
        ax.errorbar(x, part["mean"], yerr=[part["mean"] - part["lo"], part["hi"] - part["mean"]], fmt="none",
                    ecolor="black", capsize=3, lw=1)
        lo, hi = float(part["lo"].min()), float(part["hi"].max())
        pad = max(hi - lo, 1e-6) * 0.6
        ax.set_ylim(max(0.0, lo - pad), hi + pad)
        ax.set_xticks(x, [m.replace("_", "\n") for m in methods], fontsize=8)
        ax.set_title(metric + (" (lower is better)" if not HEADLINE.get(metric, True) else ""), fontsize=9)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    return fig
