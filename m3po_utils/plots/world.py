"""Figures for the notebooks. Every helper returns a matplotlib Figure and writes nothing."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

from m3po_utils import shapes as W
from m3po_utils.config import WorldConfig

matplotlib.use(matplotlib.get_backend())  # keep the notebook's backend; headless runs fall back to Agg
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def scene_grid(scenes: Sequence[W.Scene], cfg: WorldConfig, instructions: Sequence[Sequence[W.Instruction]],
               cols: int = 4, max_lines: int = 4):
    """Scenes with a few of their instructions and reference answers underneath (each in its own text panel, sized
    to its text, so one row's answers never run under the next row's images)."""
    rows = int(np.ceil(len(scenes) / cols))
    texts = ["\n".join(_wrap(f"Q: {i.text}\nA: {i.reference}", 46) for i in ins[:max_lines]) for ins in instructions]
    n_lines = max((t.count("\n") + 1 for t in texts), default=1)
    text_h = 0.13 * n_lines + 0.1
    fig, axes = plt.subplots(2 * rows, cols, figsize=(3.4 * cols, (3.2 + text_h) * rows), squeeze=False,
                             gridspec_kw={"height_ratios": [3.2, text_h] * rows})
    for ax in axes.flat:
        ax.axis("off")
    for k, (scene, text) in enumerate(zip(scenes, texts, strict=False)):
        r, c = divmod(k, cols)
        ax, tax = axes[2 * r, c], axes[2 * r + 1, c]
        ax.imshow(W.render(scene, cfg))
        ax.set_title(scene.scene_id, fontsize=8)
        tax.text(0.0, 1.0, text, transform=tax.transAxes, fontsize=6.5, va="top", family="monospace")
    fig.suptitle("The shapes world: every image comes with instructions whose reference answers a verifier checks",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.fill(part, width, subsequent_indent="   ") for part in text.split("\n"))


def cooccurrence_heatmap(matrix: np.ndarray, shapes: Sequence[str], title: str = "P(column present | row present)"):
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(6.2, 5.2))
    sns.heatmap(pd.DataFrame(matrix, index=list(shapes), columns=list(shapes)), annot=True, fmt=".2f",
                cmap="viridis", vmin=0, vmax=1, ax=ax, cbar_kws={"shrink": 0.8})
    ax.set_title(title)
    fig.tight_layout()
    return fig


def training_curves(history: Sequence[dict], metrics: Sequence[str] | None = None, title: str = ""):
    """Loss curves (left) and held-out accuracies recorded during training (right)."""
    import seaborn as sns

    df = pd.DataFrame(history)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    for col in ("loss", "aux_loss"):
        if col in df:
            smooth = df[col].rolling(max(1, len(df) // 50), min_periods=1).mean()
            ax1.plot(df["step"], smooth, label=col)
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss (smoothed)")
    ax1.set_yscale("log")
    ax1.legend()
    acc_cols = [c for c in (metrics or df.columns) if str(c).startswith("acc_") and c in df]
    if acc_cols:
        long = df.dropna(subset=acc_cols)[["step", *acc_cols]].melt("step", var_name="family", value_name="acc")
        long["family"] = long["family"].str.removeprefix("acc_")
        sns.lineplot(data=long, x="step", y="acc", hue="family", marker="o", ax=ax2)
        ax2.set_ylim(-0.02, 1.02)
        ax2.set_ylabel("held-out accuracy (verifier)")
        ax2.legend(fontsize=7, ncol=2)
    else:
        ax2.axis("off")
    if "loss" in df and len(df) > 1:             # the curve's point: where the (smoothed) loss started and ended
        k = max(1, len(df) // 20)
        start, end = df["loss"].iloc[:k].mean(), df["loss"].iloc[-k:].mean()
        title = f"{title + ': ' if title else ''}loss {start:.3g} → {end:.3g} over {int(df['step'].iloc[-1])} steps"
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def metric_bars(table: pd.DataFrame, value: str, by: str, hue: str | None = None, title: str = "",
                ylim: tuple[float, float] | None = (0, 1)):
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(7, 3.6))
    sns.barplot(data=table, x=by, y=value, hue=hue, ax=ax, errorbar=("pi", 100) if hue else None)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def image_strip(images: Sequence, captions: Sequence[str], cols: int = 6, width: int = 40):
    """Images in rows of ``cols``, each with its caption in a text panel underneath sized to the longest caption
    (long model answers wrap there instead of running into the row above)."""
    rows = int(np.ceil(len(images) / cols))
    texts = [_wrap(cap, width // 2 + 6) for cap in captions]
    n_lines = max((t.count("\n") + 1 for t in texts), default=1)
    text_h = 0.12 * n_lines + 0.1
    fig, axes = plt.subplots(2 * rows, cols, figsize=(2.6 * cols, (2.4 + text_h) * rows), squeeze=False,
                             gridspec_kw={"height_ratios": [2.4, text_h] * rows})
    for ax in axes.flat:
        ax.axis("off")
    for k, (img, text) in enumerate(zip(images, texts, strict=False)):
        r, c = divmod(k, cols)
        axes[2 * r, c].imshow(img)
        axes[2 * r + 1, c].text(0.0, 1.0, text, transform=axes[2 * r + 1, c].transAxes, fontsize=6.5, va="top",
                                family="monospace")
    fig.tight_layout()
    return fig
