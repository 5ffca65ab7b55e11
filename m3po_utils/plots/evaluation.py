"""Figures of notebook 06 (evaluation)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from m3po_utils import wording
from m3po_utils.evaluation import signed_delta
from m3po_utils.scoring import HEADLINE
from m3po_utils.stats import Bootstrap


def difference_frame(boot: Bootstrap, metrics: Sequence[str], control: str = "base", method: str = "m3po"):
    """The paired differences notebook 06 plots, turned so that positive is better: every method − ``control``,
    then ``method`` − every other trained method. One row per (comparison, metric) with delta, lo, hi."""
    import pandas as pd

    others = [m for m in boot.point if m not in (control, method)]
    pairs = [(m, control) for m in boot.point if m != control] + \
            [(method, m) for m in others if method in boot.point and m != "oracle"]
    rows = []
    for a, b in pairs:
        if a not in boot.point or b not in boot.point:
            continue
        for k in metrics:
            d = signed_delta(k, boot.delta(a, b, k))
            rows.append({"comparison": f"{a} − {b}", "metric": k, "delta": d["delta"], "lo": d["lo"], "hi": d["hi"]})
    return pd.DataFrame(rows)


def plot_differences(boot: Bootstrap, metrics: Sequence[str], control: str = "base", method: str = "m3po",
                     ncols: int = 3):
    """One panel per metric: each paired difference with its interval and a zero line (right of 0 = better)."""
    import matplotlib.pyplot as plt

    df = difference_frame(boot, metrics, control, method)
    comparisons = list(dict.fromkeys(df["comparison"]))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 0.6 + 0.32 * len(comparisons) * nrows + 0.9 * nrows),
                             squeeze=False)
    y = np.arange(len(comparisons))[::-1]
    for i, (ax, metric) in enumerate(zip(axes.flat, metrics, strict=False)):
        part = df[df.metric == metric].set_index("comparison").loc[comparisons]
        colours = ["tab:green" if lo > 0 else "tab:red" if hi < 0 else "0.45"
                   for lo, hi in zip(part["lo"], part["hi"], strict=True)]
        ax.hlines(y, part["lo"], part["hi"], colors=colours, lw=1.6)       # the interval, then the estimate
        ax.scatter(part["delta"], y, c=colours, s=22, zorder=3)
        ax.axvline(0, color="black", lw=0.8)
        ax.axhline(y[0] - (len([c for c in comparisons if c.endswith(" − " + control)]) - 0.5), color="0.8", lw=0.6)
        ax.set_yticks(y, comparisons if i % ncols == 0 else [""] * len(comparisons), fontsize=7)
        better = "lower is better: turned so right = lower" if not HEADLINE.get(metric, True) else "right = better"
        ax.set_title(f"{metric}\n({better})", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(f"Paired differences with {wording.share(boot.ci)} intervals: green = the interval excludes 0 in the better "
                 "direction, red = worse, grey = not distinguishable", fontsize=9)
    fig.tight_layout()
    return fig
