"""Figures of notebook 11 (where hard negatives help)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from m3po_utils.hardneg import F1, HELPS, MME
from m3po_utils.plots.curves import plot_curves  # noqa: F401  (notebook 11 draws its curves through this module)


def plot_map(df: pd.DataFrame, title: str):
    """The map as a forest plot: per condition, M3PO − best-vs-worst on POPE-adversarial F1 (points) and MME with
    its 95 % interval, one marker per base; dashed lines at the "helps" / "hurts" thresholds."""
    import matplotlib.pyplot as plt

    rows = list(dict.fromkeys(zip(df["experiment"], df["setting"], df["method"], strict=True)))
    bases = list(dict.fromkeys(df["base"]))
    height = max(3.0, 0.32 * len(rows) + 1.2)
    fig, axes = plt.subplots(1, 2, figsize=(12, height), sharey=True)
    offsets = np.linspace(-0.18, 0.18, len(bases)) if len(bases) > 1 else [0.0]
    for ax, (col, scale, name, thr) in zip(axes, ((("f1"), 100.0, "POPE-adversarial F1 (points)", HELPS[F1] * 100),
                                                  ("mme", 1.0, "MME total", HELPS[MME])), strict=True):
        for off, base in zip(offsets, bases, strict=True):
            d = df[df["base"] == base].set_index(["experiment", "setting", "method"])
            pos = [i + off for i, r in enumerate(rows) if r in d.index]
            sub = d.loc[[r for r in rows if r in d.index]]
            y = sub[col].to_numpy(dtype=float) * scale
            err = [y - sub[f"{col}_lo"].to_numpy(dtype=float) * scale, sub[f"{col}_hi"].to_numpy(dtype=float) * scale - y]
            ax.errorbar(y, pos, xerr=err, fmt="o", capsize=2, ms=4, label=base)
        ax.axvline(0, color="black", lw=0.8)
        for t in (-thr, thr):
            ax.axvline(t, color="grey", lw=0.8, ls="--")
        ax.set_title(f"M3PO − best-vs-worst: {name}", fontsize=9)
    axes[0].set_yticks(range(len(rows)), [f"{e} · {s}" + ("" if m == "M3PO" else f" · {m}") for e, s, m in rows],
                       fontsize=7)
    axes[0].invert_yaxis()
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
