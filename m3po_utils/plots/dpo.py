"""Figures of notebook 05 (DPO-LoRA)."""

from __future__ import annotations

from collections.abc import Sequence

from m3po_utils.dpo import CURVE_METRICS, SFT_ONLY


def curves_frame(logs: dict[str, list[dict]]):
    """Long table (strategy, step, metric, value) of the per-step training logs, for seaborn."""
    import pandas as pd

    rows = []
    for s, log in logs.items():
        for r in log:
            for m in CURVE_METRICS:
                if m in r:
                    rows.append({"strategy": s, "step": r["step"], "metric": m, "value": r[m]})
    return pd.DataFrame(rows)


def plot_training_curves(logs: dict[str, list[dict]], smooth: int = 5, sft_only: Sequence[str] = (SFT_ONLY,)):
    """One panel per metric (loss, chosen / rejected reward, margin, reward accuracy), one line per strategy.

    ``smooth``: rolling mean over this many steps (1 = raw). The ``sft_only`` runs appear in the loss and
    chosen-reward panels only (their rejected column is a copy of the chosen one). Returns the matplotlib figure;
    writes nothing.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    df = curves_frame(logs)
    if smooth > 1 and len(df):
        df["value"] = df.groupby(["strategy", "metric"])["value"].transform(
            lambda v: v.rolling(smooth, min_periods=1).mean())
    only_chosen = df.strategy.isin(list(sft_only)) & df.metric.isin(CURVE_METRICS[2:])
    df = df[~only_chosen]
    palette = dict(zip(logs, sns.color_palette(n_colors=len(logs)), strict=True))
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.4))
    for ax, metric in zip(axes.flat, CURVE_METRICS, strict=False):
        part = df[df.metric == metric]
        if len(part):
            sns.lineplot(data=part, x="step", y="value", hue="strategy", palette=palette, ax=ax, legend=False)
        ax.set_title(metric)
        ax.set_ylabel("")
        if metric.startswith("rewards/") and metric != "rewards/accuracies":
            ax.axhline(0, color="0.6", lw=0.8, ls="--")
        if metric == "rewards/accuracies":
            ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
    legend_ax = axes.flat[-1]
    legend_ax.axis("off")
    handles = [plt.Line2D([], [], color=c, label=s + (" (SFT only)" if s in sft_only else "")) for s, c in palette.items()]
    legend_ax.legend(handles=handles, title="strategy", loc="center")
    fig.tight_layout()
    return fig
