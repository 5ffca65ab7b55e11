"""The MAS weight slider of notebook 02: how the CLIP / judge mix ranks one prompt's answers, and all of them.

``MasWeights.update(clip_weight, prompt)`` recombines the recorded CLIP and judge scores with
MAS = w·CLIP + (1 − w)·judge (the stage's own :func:`mas.combine`) and returns a :class:`MasState`: the focus
prompt's candidates with their CLIP, judge, MAS and ground-truth scores, and how well MAS at this weight agrees
with the truth over every prompt (Spearman over all candidates, mean within-prompt Spearman, top-1 agreement).
No judge is called: the slider only re-weighs what notebook 02 scored.
"""

from __future__ import annotations

import dataclasses
import html as _html
from dataclasses import dataclass

import numpy as np
import pandas as pd

from m3po_utils.config import MasConfig
from m3po_utils.mas import combine, top1_agreement, within_prompt_spearman
from m3po_utils.stats import spearman
from m3po_utils.widgets.base import Widget, dropdown, short

GRID = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


@dataclass(frozen=True)
class MasState:
    clip_weight: float
    prompt_id: str
    instruction: str
    rows: tuple[dict, ...]          # text, clip, judge, mas, truth
    stats: dict[str, float]


class MasWeights(Widget):
    """``frame``: notebook 02's table (``prompt_id, clip_score, judge_score, judge_ok, truth``) joined with the
    candidates' ``text`` and ``instruction``; ``cfg``: the run's MAS settings (the default weight is read there)."""

    css = "m3po-mas"

    def __init__(self, frame: pd.DataFrame, cfg: MasConfig):
        need = {"prompt_id", "clip_score", "judge_score", "judge_ok", "truth", "text"}
        if missing := need - set(frame.columns):
            raise ValueError(f"the MAS frame lacks the columns {sorted(missing)}")
        if frame.empty:
            raise ValueError("the MAS slider needs at least one scored candidate")
        self.frame, self.cfg = frame.reset_index(drop=True), cfg
        self.default = cfg.clip_weight / (cfg.clip_weight + cfg.judge_weight)
        self.prompts = list(dict.fromkeys(self.frame["prompt_id"]))
        if "instruction" in self.frame:
            self.instruction_of = self.frame.groupby("prompt_id", sort=False)["instruction"].first().astype(str).to_dict()
        self.curve = pd.DataFrame([self._stats(w) | {"clip_weight": w} for w in GRID]).set_index("clip_weight")

    def _mas(self, w: float) -> np.ndarray:
        c = dataclasses.replace(self.cfg, clip_weight=float(w), judge_weight=float(1.0 - w))
        return combine(self.frame["clip_score"], self.frame["judge_score"], self.frame["judge_ok"], c)[0]

    def _stats(self, w: float, mas: np.ndarray | None = None) -> dict[str, float]:
        df = self.frame.assign(m=self._mas(w) if mas is None else mas)
        return {"spearman": spearman(df["m"], df["truth"]), "within_prompt_spearman": within_prompt_spearman(df, "m"),
                "top1": top1_agreement(df, "m")}

    def update(self, clip_weight: float | None = None, prompt: str | None = None) -> MasState:
        w = self.default if clip_weight is None else float(clip_weight)
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"clip_weight={w} must be in [0, 1] (the judge gets 1 − clip_weight)")
        if prompt is not None and prompt not in self.prompts:
            raise ValueError(f"prompt={prompt!r} has no scored candidates in this run")
        prompt = prompt or self.prompts[0]
        m = self._mas(w)
        part = self.frame.assign(mas=m)[self.frame["prompt_id"] == prompt].sort_values("truth", ascending=False,
                                                                                      kind="stable")
        rows = tuple({"text": str(r.text), "clip": float(r.clip_score), "judge": float(r.judge_score),
                      "mas": float(r.mas), "truth": float(r.truth)} for r in part.itertuples())
        instruction = str(part["instruction"].iloc[0]) if "instruction" in part else ""
        return MasState(w, prompt, instruction, rows, self._stats(w, m))

    def figure(self, state: MasState):
        import matplotlib.pyplot as plt

        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 0.9 + max(2.6, 0.3 * len(state.rows))),
                                      gridspec_kw={"width_ratios": [1.5, 1]})
        y = np.arange(len(state.rows))[::-1]
        for k, (key, colour, marker) in enumerate((("truth", "black", "s"), ("clip", "tab:blue", "o"),
                                                   ("judge", "tab:orange", "^"), ("mas", "tab:green", "*"))):
            ax.scatter([r[key] for r in state.rows], y + (k - 1.5) * 0.12, c=colour, marker=marker,
                       s=70 if key == "mas" else 30, label=key if key != "mas" else f"MAS at w = {state.clip_weight:.2f}")
        ax.set_yticks(y, [short(r["text"], 42) for r in state.rows], fontsize=7)
        ax.set_xlim(-0.05, 1.05)
        ax.set_xlabel("score in [0, 1]")
        ax.set_title(short(state.instruction or state.prompt_id, 60), fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        for key in self.curve.columns:
            ax2.plot(self.curve.index, self.curve[key], marker="o", ms=3, label=key.replace("_", " "))
        ax2.axvline(state.clip_weight, color="tab:green", lw=1.2, label=f"w = {state.clip_weight:.2f}")
        ax2.axvline(self.default, color="0.5", lw=0.8, ls="--", label=f"preset w = {self.default:.2f}")
        ax2.set_xlabel("CLIP weight w (judge gets 1 − w)")
        ax2.set_ylabel("agreement of MAS with the truth")
        ax2.set_title("over every prompt of the run", fontsize=9)
        ax2.legend(fontsize=7)
        fig.suptitle("MAS = w·CLIP + (1 − w)·judge: which mix ranks the answers as the truth does?", fontsize=10)
        fig.tight_layout()
        return fig

    def html(self, state: MasState) -> str:
        stats = "".join(f"<tr><td>{k}</td><td class='m3po-stat' data-key='{k}'>{v:.3f}</td></tr>"
                        for k, v in state.stats.items())
        rows = "".join(f"<tr class='m3po-mas-row'><td>{_html.escape(r['text'])}</td><td>{r['clip']:.2f}</td>"
                       f"<td>{r['judge']:.2f}</td><td>{r['mas']:.2f}</td><td>{r['truth']:.2f}</td></tr>"
                       for r in state.rows)
        return (f"<div class='m3po-mas'>CLIP weight {state.clip_weight:.2f}<table>{stats}</table>"
                f"<table><tr><th>candidate</th><th>CLIP</th><th>judge</th><th>MAS</th><th>truth</th></tr>{rows}"
                "</table></div>")

    def controls(self, clip_weight: float | None = None, prompt: str | None = None) -> dict:
        import ipywidgets as w

        return {"clip_weight": w.FloatSlider(value=self.default if clip_weight is None else clip_weight, min=0.0,
                                             max=1.0, step=0.05, description="CLIP w", continuous_update=False),
                "prompt": dropdown(self.prompts, prompt, "prompt", self.prompt_label)}
