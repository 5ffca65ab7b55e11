"""The token log-prob viewer of notebook 03: where in an answer the base model's confidence is spent.

``TokenViewer.update(prompt, cand_idx)`` returns a :class:`TokenState`: the candidate's tokens (decoded one by one)
with the log-probability the base model gave each while sampling it, their sum (the confidence M3PO uses), their
mean (the length-normalised one) and the least likely token. A summed log P is the sum of these bars, so every
extra token can only lower it: the reason long answers look less confident.
"""

from __future__ import annotations

import html as _html
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from m3po_utils.widgets.base import Widget, dropdown, short


@dataclass(frozen=True)
class TokenState:
    prompt_id: str
    cand_idx: int
    instruction: str
    text: str
    tokens: tuple[str, ...]
    logprobs: tuple[float, ...]
    stats: dict[str, float]
    candidates: tuple[int, ...]     # the prompt's candidate indices


def _ids(x) -> list:
    return json.loads(x) if isinstance(x, str) else list(x)


class TokenViewer(Widget):
    """``frame``: candidates with ``prompt_id, cand_idx, instruction, text, token_ids, token_logprobs``;
    ``decode(token_id) -> str`` turns one token id into its text (the processor's tokenizer)."""

    css = "m3po-tokens"

    def __init__(self, frame: pd.DataFrame, decode: Callable[[int], str], correct: dict | None = None):
        need = {"prompt_id", "cand_idx", "text", "token_ids", "token_logprobs"}
        if missing := need - set(frame.columns):
            raise ValueError(f"the candidate frame lacks the columns {sorted(missing)}")
        if frame.empty:
            raise ValueError("the token viewer needs at least one candidate")
        self.frame = frame.assign(cand_idx=frame["cand_idx"].astype(int)).set_index(["prompt_id", "cand_idx"])
        self.decode, self.correct = decode, correct or {}
        self.prompts = list(dict.fromkeys(self.frame.index.get_level_values(0)))
        if "instruction" in self.frame:
            self.instruction_of = self.frame.groupby(level=0, sort=False)["instruction"].first().astype(str).to_dict()

    def candidates(self, prompt: str) -> list[int]:
        return sorted(int(c) for c in self.frame.loc[prompt].index)

    def update(self, prompt: str | None = None, cand_idx: int = 0) -> TokenState:
        prompt = self.prompts[0] if prompt is None else prompt
        if prompt not in self.prompts:
            raise ValueError(f"prompt={prompt!r} has no candidates in this run")
        cands = self.candidates(prompt)
        if int(cand_idx) not in cands:
            raise ValueError(f"cand_idx={cand_idx} is not a candidate of {prompt} (it has {cands[0]}..{cands[-1]})")
        r = self.frame.loc[(prompt, int(cand_idx))]
        ids, lps = _ids(r["token_ids"]), [float(x) for x in _ids(r["token_logprobs"])]
        if len(ids) != len(lps):
            raise ValueError(f"{prompt}/{cand_idx}: {len(ids)} token ids but {len(lps)} log-probs")
        tokens = tuple(self.decode(int(t)) for t in ids)
        lp = np.array(lps)
        low = int(np.argmin(lp)) if lp.size else -1
        stats = {"tokens": float(lp.size), "logp_sum": float(lp.sum()), "logp_mean": float(lp.mean()) if lp.size else 0.0,
                 "least_likely_logp": float(lp[low]) if lp.size else 0.0,
                 "share_of_sum_in_least_likely": float(lp[low] / lp.sum()) if lp.size and lp.sum() < 0 else 0.0}
        if (prompt, int(cand_idx)) in self.correct:
            stats["correct"] = float(self.correct[(prompt, int(cand_idx))])
        return TokenState(prompt, int(cand_idx), str(r.get("instruction", "")), str(r["text"]), tokens,
                          tuple(lps), stats, tuple(cands))

    def figure(self, state: TokenState):
        import matplotlib.pyplot as plt

        n = max(len(state.tokens), 1)
        fig, ax = plt.subplots(figsize=(min(2.5 + 0.45 * n, 14), 3.6))
        x = np.arange(len(state.tokens))
        colours = plt.cm.RdYlGn(np.exp(np.array(state.logprobs))) if state.tokens else []
        ax.bar(x, state.logprobs, color=colours, edgecolor="0.3", lw=0.5)
        ax.set_xticks(x, [repr(t)[1:-1] or "·" for t in state.tokens], rotation=60, ha="right", fontsize=7)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylabel("log P(token), nats")
        s = state.stats
        ax.set_title(short(f"{state.instruction} → {state.text}", 90) + f"\nsum {s['logp_sum']:.2f} nats, mean "
                     f"{s['logp_mean']:.2f} over {int(s['tokens'])} tokens", fontsize=8)
        fig.suptitle("Where the answer's log P goes: the summed confidence is the total height of these bars",
                     fontsize=10)
        fig.tight_layout()
        return fig

    def html(self, state: TokenState) -> str:
        spans = "".join(
            f"<span class='m3po-token' data-logp='{lp:.4f}' title='log P {lp:.2f}' style='background: "
            f"rgba(220, 60, 40, {min(1.0, -lp / 5.0):.2f})'>{_html.escape(t)}</span>"
            for t, lp in zip(state.tokens, state.logprobs, strict=True))
        stats = "".join(f"<tr><td>{k}</td><td class='m3po-stat' data-key='{k}'>{v:.3f}</td></tr>"
                        for k, v in state.stats.items())
        return (f"<div class='m3po-tokens'><b>{_html.escape(state.prompt_id)} / candidate {state.cand_idx}</b>: "
                f"{_html.escape(state.instruction)}<p style='font-family: monospace'>{spans}</p>"
                f"<table>{stats}</table></div>")

    def controls(self, prompt: str | None = None, cand_idx: int = 0) -> dict:
        import ipywidgets as w

        p = dropdown(self.prompts, prompt, "prompt", self.prompt_label)
        cands = self.candidates(p.value)
        return {"prompt": p, "cand_idx": w.Dropdown(options=cands, value=cand_idx if cand_idx in cands else cands[0],
                                                   description="candidate")}

    def link(self, controls: dict) -> None:
        def follow(change):
            controls["cand_idx"].options = self.candidates(change["new"])
        controls["prompt"].observe(follow, names="value")
