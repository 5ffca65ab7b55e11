"""The candidate inspector of notebook 01: one prompt's image, its N sampled answers, their log P and verdicts.

``CandidateInspector.update(family, prompt)`` returns a :class:`CandidateState`: the prompt, its candidates sorted
by log P (most likely first) with the verifier's score where the world has one, and the prompt's summary — how many
distinct answers, the share fully correct, whether any is (pass@N) and whether the most likely one is.
"""

from __future__ import annotations

import html as _html
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from m3po_utils.widgets.base import Widget, dropdown, labelled, short

ALL = "all"


@dataclass(frozen=True)
class CandidateState:
    prompt_id: str
    family: str
    instruction: str
    reference: str
    rows: tuple[dict, ...]          # text, logp, length, score (NaN without a verifier), correct
    summary: dict[str, float]
    prompts: tuple[str, ...]        # the prompts of the chosen family


class CandidateInspector(Widget):
    """``frame``: one row per candidate with ``prompt_id, family, instruction, cand_idx, text, logprob_sum,
    length`` and optionally ``reference``, ``verifier_score``, ``correct``; ``load_image(prompt_id)`` optional."""

    css = "m3po-candidates"

    def __init__(self, frame: pd.DataFrame, load_image: Callable[[str], object] | None = None):
        need = {"prompt_id", "family", "instruction", "cand_idx", "text", "logprob_sum"}
        if missing := need - set(frame.columns):
            raise ValueError(f"the candidate frame lacks the columns {sorted(missing)}")
        if frame.empty:
            raise ValueError("the inspector needs at least one candidate")
        self.frame = frame.sort_values(["prompt_id", "cand_idx"], kind="stable")
        self.load_image = load_image
        self.by_prompt = {p: g for p, g in self.frame.groupby("prompt_id", sort=False)}
        self.family_of = self.frame.groupby("prompt_id", sort=False)["family"].first().to_dict()
        self.instruction_of = self.frame.groupby("prompt_id", sort=False)["instruction"].first().astype(str).to_dict()

    def families(self) -> list[str]:
        return [ALL] + sorted(set(self.family_of.values()))

    def prompts(self, family: str = ALL) -> list[str]:
        if family != ALL and family not in self.family_of.values():
            raise ValueError(f"family={family!r} is not among this run's families {self.families()[1:]}")
        return [p for p, f in self.family_of.items() if family == ALL or f == family]

    def teaching_prompt(self, family: str = ALL) -> str:
        """The first prompt of ``family`` whose most likely candidate is wrong while a less likely one is right (the
        prompts preference training can fix); without verdicts, or where no prompt is like that, the first one."""
        prompts = self.prompts(family)
        if "correct" not in self.frame:
            return prompts[0]
        for p in prompts:
            g = self.by_prompt[p].sort_values(["logprob_sum", "cand_idx"], ascending=[False, True], kind="stable")
            ok = g["correct"].astype(bool).to_numpy()
            if not ok[0] and ok.any():
                return p
        return prompts[0]

    @staticmethod
    def title(state: CandidateState) -> str:
        """The figure's point for this prompt: where the first correct candidate is, or that there is none."""
        n = len(state.rows)
        if not state.rows or state.rows[0]["correct"] is None:
            return f"{n} samples of one prompt, most likely first"
        ranks = [i for i, r in enumerate(state.rows, 1) if r["correct"]]
        if not ranks:
            return f"{n} samples of one prompt, most likely first: none of them is correct"
        if ranks[0] == 1:
            return f"{n} samples of one prompt, most likely first: the most likely one is correct"
        return (f"{n} samples of one prompt, most likely first: the first correct one is number {ranks[0]} — "
                "a pair preference training can learn from")

    def update(self, family: str = ALL, prompt: str | None = None) -> CandidateState:
        prompts = self.prompts(family)
        if prompt is None or prompt not in prompts:
            if prompt is not None and prompt not in self.by_prompt:
                raise ValueError(f"prompt={prompt!r} has no candidates in this run")
            prompt = prompts[0]
        g = self.by_prompt[prompt].sort_values(["logprob_sum", "cand_idx"], ascending=[False, True], kind="stable")
        has_score = "verifier_score" in g
        rows = tuple({"cand_idx": int(r.cand_idx), "text": str(r.text), "logp": float(r.logprob_sum),
                      "length": int(getattr(r, "length", len(str(r.text).split()))),
                      "score": float(r.verifier_score) if has_score else float("nan"),
                      "correct": bool(r.correct) if "correct" in g else None} for r in g.itertuples())
        summary = {"candidates": float(len(rows)), "distinct": float(len({r["text"] for r in rows}))}
        if has_score:
            correct = np.array([bool(r["correct"]) for r in rows])
            summary |= {"share_correct": float(correct.mean()), "pass_at_n": float(correct.any()),
                        "most_likely_correct": float(correct[0])}
        first = g.iloc[0]
        return CandidateState(prompt, str(first["family"]), str(first["instruction"]),
                              str(first["reference"]) if "reference" in g else "", rows, summary, tuple(prompts))

    def figure(self, state: CandidateState):
        import matplotlib.pyplot as plt

        image = self.load_image(state.prompt_id) if self.load_image is not None else None
        ratios = ([0.8] if image is not None else []) + [2.2]
        fig, axes = plt.subplots(1, len(ratios), figsize=(4.0 * sum(ratios) + 1, 0.5 + 0.28 * len(state.rows) + 1.2),
                                 gridspec_kw={"width_ratios": ratios}, squeeze=False)
        axes = list(axes.flat)
        if image is not None:
            axes[0].imshow(image)
            axes[0].set_xticks([])
            axes[0].set_yticks([])
            axes[0].set_title(f"{state.prompt_id} ({state.family})", fontsize=9)
        ax = axes[-1]
        y = np.arange(len(state.rows))[::-1]
        colours = ["0.6" if r["correct"] is None else "tab:green" if r["correct"] else
                   "tab:orange" if r["score"] > 0 else "tab:red" for r in state.rows]
        ax.barh(y, [r["logp"] for r in state.rows], color=colours)
        ax.set_yticks(y, [short(r["text"], 48) for r in state.rows], fontsize=7)
        ax.set_xlabel("log P(candidate | image, instruction), nats (0 = certain)")
        verdict = "" if state.rows[0]["correct"] is None else \
            "   green: correct · orange: partly · red: wrong"
        ax.set_title(short(f"{state.instruction}  (reference: {state.reference})", 80) + verdict, fontsize=8)
        fig.suptitle(self.title(state), fontsize=10)
        fig.tight_layout()
        return fig

    def html(self, state: CandidateState) -> str:
        def verdict(r):
            mark = "" if r["correct"] is None else ("✓" if r["correct"] else "✗")
            return mark + ("" if np.isnan(r["score"]) else f" {r['score']:.2f}")

        rows = "".join(
            f"<tr class='m3po-candidate'><td>{_html.escape(r['text'])}</td><td>{r['logp']:.2f}</td>"
            f"<td>{verdict(r)}</td></tr>" for r in state.rows)
        summary = ", ".join(f"{k} <span class='m3po-stat' data-key='{k}'>{v:g}</span>"
                            for k, v in state.summary.items())
        return (f"<div class='m3po-candidates'><b>{_html.escape(state.instruction)}</b> "
                f"<small>({_html.escape(state.family)}, reference: {_html.escape(state.reference)})</small>"
                f"<br>{summary}<table><tr><th>candidate</th><th>log P</th><th>verdict</th></tr>{rows}</table></div>")

    def controls(self, family: str = ALL, prompt: str | None = None) -> dict:
        fam = dropdown(self.families(), family, "family")
        return {"family": fam, "prompt": dropdown(self.prompts(fam.value), prompt, "prompt", self.prompt_label)}

    def link(self, controls: dict) -> None:
        def follow(change):
            controls["prompt"].options = labelled(self.prompts(change["new"]), self.prompt_label)
        controls["family"].observe(follow, names="value")
