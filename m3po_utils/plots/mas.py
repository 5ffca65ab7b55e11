"""Figures of notebook 02 (MAS). Every helper returns a matplotlib Figure and writes nothing."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use(matplotlib.get_backend())  # keep the notebook's backend; headless runs fall back to Agg
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

LABELS = {"clip_score": "CLIP score", "judge_score": "judge score", "mas": "MAS"}


def scatter_vs_truth(table: pd.DataFrame, agreement: pd.DataFrame | None = None,
                     cols: Sequence[str] = ("clip_score", "judge_score", "mas"), truth: str = "truth",
                     seed: int = 0, max_points: int = 6000):
    """One panel per score: the score against the ground-truth verifier score (x jittered: truth is discrete)."""
    rng = np.random.default_rng(seed)
    df = table if len(table) <= max_points else table.sample(max_points, random_state=seed)
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.8), squeeze=False, sharey=True)
    x = df[truth].to_numpy(float) + rng.uniform(-0.02, 0.02, len(df))
    for ax, col in zip(axes[0], cols, strict=True):
        ax.scatter(x, df[col], s=6, alpha=0.25, color="C0", linewidths=0)
        means = table.groupby(truth)[col].mean()
        ax.plot(means.index, means.to_numpy(), "o-", color="C3", ms=4, lw=1.2, label="mean per truth value")
        title = LABELS.get(col, col)
        if agreement is not None and col in agreement.index:
            title += f"   Spearman ρ = {agreement.loc[col, 'spearman']:.2f}"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("ground-truth verifier score")
        ax.set_xlim(-0.06, 1.06)
        ax.set_ylim(-0.04, 1.04)
    axes[0][0].set_ylabel("score in [0, 1]")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def contrast_bars(accuracy: pd.DataFrame, title: str = "right vs wrong answer: how often is the right one scored higher?"):
    """Grouped bars: rows = families, columns = scorers (share of pairs where the right answer wins)."""
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    k = accuracy.shape[1]
    width = 0.8 / k
    pos = np.arange(len(accuracy))
    for i, col in enumerate(accuracy.columns):
        ax.bar(pos + (i - (k - 1) / 2) * width, accuracy[col].to_numpy(float), width, label=str(col))
    ax.axhline(0.5, color="grey", lw=1, ls="--", label="chance (coin flip)")
    ax.set_xticks(pos, list(accuracy.index))
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("pairwise accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4, frameon=False)
    fig.tight_layout()
    return fig


def noise_curve(sweep: pd.DataFrame, metric: str = "spearman"):
    """Agreement with the truth of the judge and of MAS as the judge gets noisier (CLIP as a flat reference)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, m, name in ((axes[0], metric, "Spearman ρ with the truth (all candidates)"),
                        (axes[1], "top1", "top-1: the candidate ranked first is truly best")):
        for col, style in (("judge", "o-"), ("mas", "s-"), ("clip", "--")):
            key = f"{col}_{m}"
            if key in sweep:
                ax.plot(sweep["noise"], sweep[key], style, label=LABELS.get(f"{col}_score", col.upper() if col == "mas"
                                                                             else col))
        ax.set_xlabel("judge noise (std on the 1-10 scale)")
        ax.set_title(name, fontsize=10)
        ax.set_ylim(min(0.0, float(np.nanmin(sweep.filter(like=m).to_numpy(float))) - 0.05), 1.02)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
