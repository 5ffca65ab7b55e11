"""Figures of notebook 03 (confidence)."""

from __future__ import annotations

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from m3po_utils import wording
from m3po_utils.stats import spearman


def logprob_agreement_plot(agree: pd.DataFrame):
    """Generation-time vs teacher-forced log P(R) (left) and the distribution of the differences (right)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.scatter(agree["gen_sum"], agree["tf_sum"], s=8, alpha=0.6)
    lo, hi = float(min(agree["gen_sum"].min(), agree["tf_sum"].min())), 0.0
    ax1.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
    ax1.set_xlabel("log P(R) captured while generating")
    ax1.set_ylabel("log P(R), teacher-forced pass")
    diffs = np.maximum(agree["abs_sum_diff"].to_numpy(), 1e-12)
    ax2.hist(np.log10(diffs), bins=30, color="tab:green")
    ax2.axvline(-4, color="tab:red", ls="--", lw=1, label="1e-4 tolerance")
    ax2.set_xlabel("log10 |difference| per sequence")
    ax2.set_ylabel("sequences")
    ax2.legend()
    worst = float(agree["abs_sum_diff"].max()) if len(agree) else float("nan")
    within = float((agree["abs_sum_diff"] <= 1e-4).mean()) if len(agree) else float("nan")
    fig.suptitle(f"Captured and re-scored log P agree: largest difference {worst:.1e} nats, "
                 f"{wording.share(within)} of {len(agree)} sequences within 1e-4", fontsize=10)
    fig.tight_layout()
    return fig


def confidence_distributions(table: pd.DataFrame):
    """Summed and mean log-prob and self-consistency, per family."""
    import seaborn as sns

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    order = sorted(table["family"].unique())
    for ax, col, label in zip(axes, ("conf_sum", "conf_mean", "self_consistency"),
                              ("summed log P(R)", "mean log P per token", "self-consistency"), strict=True):
        sns.violinplot(data=table, x="family", y=col, order=order, ax=ax, cut=0, density_norm="width",
                       color="#c6dbef", inner="quartile")
        ax.set_ylabel(label)
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=40)
    med = table.groupby("family")["conf_sum"].median()
    fig.suptitle(f"Confidence depends on the family: median summed log P from {med.min():.1f} ({med.idxmin()}) to "
                 f"{med.max():.1f} ({med.idxmax()}) nats", fontsize=10)
    fig.tight_layout()
    return fig


def sum_vs_mean(table: pd.DataFrame, per_class: int = 1500, seed: int = 0):
    """Length against the summed (left) and the mean (right) log-prob, coloured by correctness if known.

    Thousands of candidates share a few integer lengths, so the points are thinned to at most ``per_class`` per
    verdict (a seeded sample, said in the title), jittered across their length, and the smaller class is drawn on
    top: neither class hides the other."""
    rng = np.random.default_rng(seed)
    groups = ([(k, g) for k, g in table.groupby("correct")] if "correct" in table else [(None, table)])
    groups.sort(key=lambda kg: -len(kg[1]))                     # the larger class first, the smaller on top
    colours = {True: "tab:green", False: "tab:red", None: "tab:blue"}
    names = {True: "correct", False: "not fully correct", None: "candidates"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    shown = 0
    for ax, col, label in ((ax1, "conf_sum", "summed log P(R)"), (ax2, "conf_mean", "mean log P per token")):
        for key, g in groups:
            g = g.sample(n=per_class, random_state=seed) if len(g) > per_class else g
            x = g["length"].to_numpy(float) + rng.uniform(-0.3, 0.3, len(g))
            ax.scatter(x, g[col], s=6, alpha=0.35, color=colours.get(key, "tab:blue"),
                       label=f"{names.get(key, key)} ({len(g)} shown)")
            shown += len(g) if ax is ax1 else 0
        ax.set_ylabel(label)
        ax.set_xlabel("tokens (jittered)")
    ax2.legend(fontsize=8, markerscale=2)
    rho = {c: spearman(table["length"], table[c]) for c in ("conf_sum", "conf_mean")}
    fig.suptitle(f"Length against log P: Spearman ρ {rho['conf_sum']:+.2f} for the sum, {rho['conf_mean']:+.2f} for "
                 f"the per-token mean ({shown} of {len(table)} candidates shown, at most {per_class} per verdict)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def calibration_plot(rel: pd.DataFrame, table: pd.DataFrame, bins: int = 5):
    """Left: reliability of P(R) for short answers. Right: share correct by within-prompt confidence rank."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    if not rel.empty:
        ax1.scatter(rel["p_mean"], rel["accuracy"], s=20 + 200 * rel["n"] / rel["n"].max(), alpha=0.7)
    ax1.set_xlabel("P(R | I, Q) of short answers (binned)")
    ax1.set_ylabel("share correct")
    ax1.set_xlim(0, 1)
    ax1.set_ylim(-0.02, 1.02)
    t = table.copy()
    t["rank_bin"] = np.minimum((t["conf_rank"] * bins).astype(int), bins - 1)
    t["group"] = np.where(t["family"].isin(("describe", "fmt_start", "fmt_list", "fmt_max_words")),
                          "long answers", "short answers")
    curve = t.groupby(["group", "rank_bin"])["correct"].mean().reset_index()
    for group, g in curve.groupby("group"):
        ax2.plot((g["rank_bin"] + 0.5) / bins, g["correct"], marker="o", label=group)
    ax2.set_xlabel("confidence rank within the prompt (0 = least, 1 = most sure)")
    ax2.set_ylabel("share correct")
    ax2.set_ylim(-0.02, 1.02)
    ax2.legend()
    ends = t.groupby("rank_bin")["correct"].mean()
    if len(ends) >= 2:
        fig.suptitle(f"Share correct from the least to the most confident fifth of a prompt's candidates: "
                     f"{wording.share(ends.iloc[0])} → {wording.share(ends.iloc[-1])}", fontsize=10)
    fig.tight_layout()
    return fig


def quadrant_heatmap(q: pd.DataFrame):
    """Candidates by (confident?, correct?), counts and row shares."""
    import seaborn as sns

    share = q.div(q.sum(axis=1).replace(0, 1), axis=0)
    labels = np.array([[f"{q.iloc[i, j]}\n({wording.share(share.iloc[i, j])})" for j in range(q.shape[1])]
                       for i in range(q.shape[0])])
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    sns.heatmap(share, annot=labels, fmt="", cmap="Reds", vmin=0, vmax=1, cbar=False, ax=ax)
    ax.set_xlabel("verifier")
    ax.set_ylabel("model (upper / lower half by log P)")
    if {"confident", "unsure"} <= set(share.index) and "wrong" in share.columns:
        ax.set_title(f"Wrong: {wording.share(share.loc['confident', 'wrong'])} of confident, "
                     f"{wording.share(share.loc['unsure', 'wrong'])} of unsure candidates", fontsize=9)
    fig.tight_layout()
    return fig


def self_consistency_plot(table: pd.DataFrame):
    """Self-consistency against the verifier score, per family group."""
    import seaborn as sns

    t = table.copy()
    t["sc_bin"] = pd.cut(t["self_consistency"], [-0.01, 0.25, 0.5, 0.75, 1.0],
                         labels=["0–.25", ".25–.5", ".5–.75", ".75–1"])
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    sns.barplot(data=t, x="sc_bin", y="verifier_score", ax=ax, errorbar=None, color="#74c476")
    ax.set_xlabel("self-consistency with the other candidates")
    ax.set_ylabel("mean verifier score")
    ax.set_ylim(0, 1)
    by = t.groupby("sc_bin", observed=True)["verifier_score"].mean()
    if len(by) >= 2:
        ax.set_title(f"Mean verifier score {by.iloc[0]:.2f} at the lowest self-consistency, {by.iloc[-1]:.2f} at "
                     "the highest", fontsize=9)
    fig.tight_layout()
    return fig
