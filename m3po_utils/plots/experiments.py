"""Figures of notebook 10 (experiments)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from m3po_utils import evaluation as C
from m3po_utils import scoring as E
from m3po_utils.experiments import METRICS, grid_label


def plot_heatmaps(boot: C.Bootstrap, alphas: Sequence[float], deltas: Sequence[float], default: tuple[float, float],
                  metrics: Sequence[str] = METRICS):
    """One heatmap per metric over the α/δ grid (mean over seeds), the default cell outlined."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, k in zip(axes[0], metrics, strict=True):
        m = pd.DataFrame([[boot.point[grid_label(a, d)][k] for d in deltas] for a in alphas],
                         index=[f"{a:g}" for a in alphas], columns=[f"{d:g}" for d in deltas])
        sns.heatmap(m, annot=True, fmt=".1f" if k == "mme_total" else ".3f", cmap="viridis" if E.HEADLINE.get(k, True)
                    else "viridis_r", ax=ax, cbar=False)
        ax.set_xlabel("δ")
        ax.set_ylabel("α")
        ax.set_title(k + ("" if E.HEADLINE.get(k, True) else " (lower is better)"), fontsize=9)
        if default[0] in alphas and default[1] in deltas:
            ax.add_patch(Rectangle((list(deltas).index(default[1]), list(alphas).index(default[0])), 1, 1,
                                   fill=False, edgecolor="red", lw=2.5))
    fig.tight_layout()
    return fig


def plot_curve(frame: pd.DataFrame, x: Sequence[float], labels: Sequence[str], xlabel: str,
               metrics: Sequence[str] = METRICS, extra: dict[str, pd.Series] | None = None):
    """Metric (with interval) against a numeric setting ``x`` (rows ``labels`` of ``frame``); ``extra``: other
    per-setting series (shares) drawn in an additional panel."""
    import matplotlib.pyplot as plt

    n = len(metrics) + (1 if extra else 0)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    for ax, k in zip(axes[0], metrics, strict=False):
        f = frame.loc[list(labels)]
        ax.errorbar(x, f[k], yerr=[f[k] - f[f"{k}_lo"], f[f"{k}_hi"] - f[k]], marker="o", capsize=3)
        ax.set_title(k + ("" if E.HEADLINE.get(k, True) else " (lower is better)"), fontsize=9)
        ax.set_xlabel(xlabel)
    if extra:
        ax = axes[0][-1]
        for name, series in extra.items():
            ax.plot(x, series.loc[list(labels)].to_numpy(), marker="o", label=name)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_title("selection (share)", fontsize=9)
    fig.tight_layout()
    return fig
