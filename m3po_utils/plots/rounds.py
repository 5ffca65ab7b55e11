"""Figures of notebook 07 (iterative rounds and the adaptive candidate budget)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from m3po_utils.plots.curves import plot_curves
from m3po_utils.rounds import spend_sentence

PANELS = (("val_yes_ratio", "POPE-adversarial yes-ratio (validation)"), ("kl_to_base", "KL to the base (nats/answer)"),
          ("hard_negative_rate", "hard-negative rate of the pairs"), ("val_score", "validation score (verifier)"))


def round_curves(frame: pd.DataFrame) -> pd.DataFrame:
    """The per-round table as the tidy frame :func:`plot_curves` draws: every rule's line starts at the base
    (round 0), which has no pairs (its hard-negative rate is that of the rule's round-1 pairs' pool: left out)."""
    base = frame[frame["round"] == 0]
    rows = []
    for rule, g in frame[frame["round"] > 0].groupby("rule", sort=False):
        rows.append(base.assign(rule=rule))
        rows.append(g)
    out = pd.concat(rows, ignore_index=True).sort_values(["rule", "round"], kind="stable")
    return out.rename(columns={"round": "x", "rule": "series"})


def rounds_title(frame: pd.DataFrame, strategy_label: str) -> str:
    """The figure's point, from its data: where the rule's yes-ratio and KL went over the rounds."""
    g = frame[frame["rule"] == strategy_label].sort_values("round")
    base = frame[frame["round"] == 0].iloc[0]
    if g.empty:
        return "Per-round measurements of every rule"
    last = g.iloc[-1]
    return (f"{strategy_label}: validation yes-ratio {base['val_yes_ratio']:.3f} (base) → {last['val_yes_ratio']:.3f} "
            f"after {int(last['round'])} rounds; KL to the base reaches {last['kl_to_base']:.2f} nats")


def plot_rounds(frame: pd.DataFrame, title: str):
    return plot_curves(round_curves(frame), "round (0 = the base)", PANELS, title)


def plot_spend(families: pd.DataFrame, pass1: dict[str, float] | None = None):
    """Mean candidates per prompt, per instruction family, of the adaptive and the fixed pool; families ordered by
    the base's pass@1 (hardest first) when given. The title names where the adaptive rule spent most and least."""
    import matplotlib.pyplot as plt

    fam = families[["adaptive", "fixed"]].copy()
    if pass1:
        fam = fam.loc[sorted(fam.index, key=lambda f: pass1.get(f, np.inf))]
    fig, ax = plt.subplots(figsize=(9, 3.4))
    pos = np.arange(len(fam))
    ax.bar(pos - 0.2, fam["adaptive"], width=0.4, label="adaptive N")
    ax.bar(pos + 0.2, fam["fixed"], width=0.4, label="fixed N, same total")
    ax.set_xticks(pos, fam.index, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("candidates per prompt", fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    order = " (families from the lowest base pass@1 to the highest)" if pass1 else ""
    ax.set_title(spend_sentence(fam["adaptive"].to_dict()).removesuffix(".") + order, fontsize=9)
    fig.tight_layout()
    return fig
