"""Lines over a setting with their intervals, one panel per measure: the curves of notebooks 07 and 11."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def plot_curves(frame: pd.DataFrame, xlabel: str, panels: Sequence[tuple[str, str]], title: str):
    """One panel per ``(column, panel title)`` of ``frame`` (tidy: ``x``, ``series`` and per column its value with
    ``<column>_lo`` / ``<column>_hi`` where known), one line per series over ``x`` (in the frame's order)."""
    import matplotlib.pyplot as plt

    xs = list(dict.fromkeys(frame["x"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels), 3.4), squeeze=False)
    for ax, (col, name) in zip(axes[0], panels, strict=True):
        for series, g in frame.groupby("series", sort=False):
            g = g.set_index("x").reindex(xs)
            pos = np.arange(len(xs))
            y = g[col].to_numpy(dtype=float)
            if f"{col}_lo" in g:
                err = [y - g[f"{col}_lo"].to_numpy(dtype=float), g[f"{col}_hi"].to_numpy(dtype=float) - y]
                ax.errorbar(pos, y, yerr=err, marker="o", capsize=3, label=series)
            else:
                ax.plot(pos, y, marker="o", label=series)
        ax.set_xticks(np.arange(len(xs)), [str(x) for x in xs], fontsize=7)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_title(name, fontsize=9)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
