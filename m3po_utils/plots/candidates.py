"""Figures of notebooks 01 (candidates) and 03 (confidence). Every helper returns a matplotlib Figure and
writes nothing."""


from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from m3po_utils import wording  # noqa: E402

matplotlib.use(matplotlib.get_backend())  # keep the notebook's backend; headless runs fall back to Agg


def printable(text: str) -> str:
    """``text`` for a figure: control characters and characters outside Latin script (which a badly trained
    byte-level model can sample, and the figure font may lack) shown as ``·``."""
    return "".join(ch if ch.isprintable() and (ord(ch) < 0x250 or ch in "✓✗") else "·" for ch in str(text))


def _wrap(text: str, width: int) -> str:
    text = "\n".join(printable(line) for line in str(text).split("\n"))
    return "\n".join(textwrap.fill(part, width, subsequent_indent="   ") or " " for part in str(text).split("\n"))


def candidates_gallery(images: Sequence, prompts: Sequence[dict], candidates: Sequence[Sequence[dict]],
                       max_candidates: int = 6, width: int = 70):
    """One row per prompt: the image, then instruction, reference and sampled candidates with their log P
    (and a ✓ / ✗ from the verifier when the candidate dicts carry ``correct``)."""
    n = len(prompts)
    fig, axes = plt.subplots(n, 2, figsize=(12, 2.9 * n), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 4.2]})
    for (ax_img, ax_txt), img, p, cands in zip(axes, images, prompts, candidates, strict=True):
        ax_img.imshow(img)
        ax_img.axis("off")
        ax_img.set_title(p.get("prompt_id", ""), fontsize=8)
        ax_txt.axis("off")
        lines = [f"Q: {p['instruction']}", f"truth: {p.get('reference', '')}", ""]
        for c in list(cands)[:max_candidates]:
            mark = "" if "correct" not in c else ("✓ " if c["correct"] else "✗ ")
            lines.append(f"{mark}[{c['logprob_sum']:7.2f}] {c['text']}")
        ax_txt.text(0, 1, "\n".join(_wrap(line, width) for line in lines), va="top", family="monospace",
                    fontsize=7.5, transform=ax_txt.transAxes)
    fig.tight_layout()
    return fig


def temperature_effect(summary: pd.DataFrame, n: int):
    """Distinct answers out of ``n`` and the mean model log P per sampling temperature."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    ax1.plot(summary["temperature"], summary["distinct_answers"], marker="o")
    ax1.axhline(n, color="grey", lw=0.8, ls="--")
    ax1.set_ylim(0, n * 1.08)                     # from 0: a change of one or two answers is not inflated
    ax1.set_xlabel("temperature")
    ax1.set_ylabel(f"distinct answers (of {n})")
    d = summary["distinct_answers"].to_numpy()
    fig.suptitle(f"From T = {summary['temperature'].iloc[0]:g} to {summary['temperature'].iloc[-1]:g}: distinct "
                 f"answers {d[0]:g} → {d[-1]:g} of {n}, the model's own log P of its samples "
                 f"{summary['mean_logprob_sum'].iloc[0]:.1f} → {summary['mean_logprob_sum'].iloc[-1]:.1f} nats",
                 fontsize=10)
    ax2.plot(summary["temperature"], summary["mean_logprob_sum"], marker="o", color="tab:red")
    ax2.set_xlabel("temperature")
    ax2.set_ylabel("mean log P(R | I, Q) under the model")
    fig.tight_layout()
    return fig


def diversity_by_family(div: pd.DataFrame, n: int):
    """Per family: distinct answers per prompt (left) and the verifier-score spread within a prompt (right)."""
    import seaborn as sns

    has_scores = "score_spread" in div
    fig, axes = plt.subplots(1, 2 if has_scores else 1, figsize=(12 if has_scores else 6.5, 3.8), squeeze=False)
    order = sorted(div["family"].unique())
    sns.boxplot(data=div, x="family", y="distinct", order=order, ax=axes[0, 0], color="#9ecae1")
    sns.stripplot(data=div, x="family", y="distinct", order=order, ax=axes[0, 0], size=3, color="k", alpha=0.5)
    axes[0, 0].set_ylim(0, n + 0.5)
    axes[0, 0].set_ylabel(f"distinct answers (of {n})")
    if has_scores:
        sns.boxplot(data=div, x="family", y="score_spread", order=order, ax=axes[0, 1], color="#fdae6b")
        sns.stripplot(data=div, x="family", y="score_spread", order=order, ax=axes[0, 1], size=3, color="k",
                      alpha=0.5)
        axes[0, 1].set_ylabel("verifier score: max − min")
        axes[0, 1].set_ylim(-0.03, 1.03)
    for ax in axes.flat:
        ax.tick_params(axis="x", rotation=35)
        ax.set_xlabel("")
    med = div.groupby("family")["distinct"].median()
    title = (f"Distinct answers per prompt (of {n}): median {med.min():g} ({med.idxmin()}) to {med.max():g} "
             f"({med.idxmax()})")
    if has_scores:
        title += (f"; {wording.share((div['score_spread'] <= 0).mean())} of prompts have no score spread, so no "
                  "pair")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def coverage_curve(cov: pd.DataFrame):
    """Distinct answers (left) and, when known, the share of prompts with a correct candidate / with both a
    correct and a wrong one (right), among the first k candidates."""
    has = "share_with_pair" in cov
    fig, axes = plt.subplots(1, 2 if has else 1, figsize=(11 if has else 5.5, 3.6), squeeze=False)
    axes[0, 0].plot(cov["k"], cov["mean_distinct"], marker="o")
    axes[0, 0].set_xlabel("candidates sampled (k)")
    axes[0, 0].set_ylabel("distinct answers (mean over prompts)")
    if has:
        axes[0, 1].plot(cov["k"], cov["share_with_correct"], marker="o", label="≥ 1 correct")
        axes[0, 1].plot(cov["k"], cov["share_with_pair"], marker="s", label="a correct and a wrong one")
        axes[0, 1].set_xlabel("candidates sampled (k)")
        axes[0, 1].set_ylabel("share of prompts")
        axes[0, 1].set_ylim(-0.02, 1.02)
        axes[0, 1].legend()
    first, last = cov.iloc[0], cov.iloc[-1]
    title = (f"From k = {int(first['k'])} to {int(last['k'])} candidates: distinct answers {first['mean_distinct']:.1f} "
             f"→ {last['mean_distinct']:.1f}")
    if has:
        title += (f", prompts with a correct and a wrong one {wording.share(first['share_with_pair'])} → "
                  f"{wording.share(last['share_with_pair'])}")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def length_histogram(table: pd.DataFrame, max_new_tokens: int):
    """Candidate lengths per family; the bar at ``max_new_tokens`` is candidates cut off before EOS."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(8, 3.4))
    sns.histplot(data=table, x="length", hue="family", multiple="stack", discrete=True, ax=ax)
    ax.axvline(max_new_tokens + 0.5, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("tokens (incl. EOS)")
    cut = float((table["length"] >= max_new_tokens).mean()) if len(table) else float("nan")
    ax.set_title(f"Median length {table['length'].median():g} tokens; {wording.share(cut)} of candidates reach the "
                 f"{max_new_tokens}-token limit", fontsize=9)
    fig.tight_layout()
    return fig
