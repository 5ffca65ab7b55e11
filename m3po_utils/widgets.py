"""The α/δ explorer of notebook 04: sliders that re-select pairs live and show what changed.

``PairExplorer.update(alpha, delta, strategy)`` is a pure function of its inputs (and of the candidate data the
explorer was built with): it returns an :class:`ExplorerState` with the statistics over all prompts, the focus
prompt's candidates with Rw / Rl marked, and a few example pairs. Rendering is separate: :meth:`figure` draws a
state with matplotlib, :meth:`html` writes its statistics and examples as HTML, and :meth:`show` wires both to
ipywidgets sliders in JupyterLab. Where no widget frontend is attached (papermill, the series runner, which sets
``M3PO_STATIC_WIDGETS=1``), :meth:`show` draws the static figure for the current settings instead.
"""

from __future__ import annotations

import html as _html
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from m3po_utils.config import STRATEGIES, TRUTH_STRATEGIES
from m3po_utils.selection import Selection, select, selection_stats

STATIC_ENV = "M3PO_STATIC_WIDGETS"


@dataclass(frozen=True)
class ExplorerState:
    alpha: float
    delta: float
    strategy: str
    stats: dict[str, float]
    focus: dict = field(default_factory=dict)       # prompt_id, mas, logp, w, l
    examples: list[dict] = field(default_factory=list)


class PairExplorer:
    """Interactive view of how α and δ change the selected negatives.

    ``groups`` come from :func:`selection.group_candidates`; ``truth`` (optional) maps prompt id to the
    ground-truth score of each candidate; ``instructions`` maps prompt id to its instruction text;
    ``load_image(prompt_id)`` (optional) returns the prompt's image for the example strip.
    """

    def __init__(self, groups: dict[str, dict], instructions: dict[str, str], truth: dict | None = None,
                 load_image: Callable[[str], object] | None = None, focus: str | None = None,
                 example_prompts: Sequence[str] | None = None, min_margin: float = 0.0, seed: int = 0):
        if not groups:
            raise ValueError("the explorer needs at least one prompt with candidates")
        self.groups, self.instructions, self.truth = groups, instructions, truth
        self.load_image, self.min_margin, self.seed = load_image, min_margin, seed
        self.focus = focus if focus is not None else next(iter(groups))
        if self.focus not in groups:
            raise ValueError(f"focus prompt {self.focus!r} is not among the explorer's prompts")
        self.example_prompts = list(example_prompts or list(groups)[:4])
        self._baseline: Selection | None = None

    def _reference(self, delta: float) -> Selection:
        return select(self.groups, "best_worst", 0.0, delta, self.min_margin, seed=self.seed)

    def update(self, alpha: float = 0.5, delta: float = 0.1, strategy: str = "m3po") -> ExplorerState:
        """Select with these settings and summarise (pure: same inputs, same state)."""
        sel = select(self.groups, strategy, alpha, delta, self.min_margin, seed=self.seed)
        stats = selection_stats(self.groups, sel, reference=self._reference(delta), truth=self.truth)
        chosen = {c.prompt_id: c for c in sel.choices}
        g = self.groups[self.focus]
        c = chosen[self.focus]
        w, lo = (c.pairs[0] if c.pairs else (None, None))
        focus = {"prompt_id": self.focus, "mas": g["mas"].tolist(), "logp": g["logp"].tolist(), "w": w, "l": lo,
                 "skip": c.skip, "instruction": self.instructions.get(self.focus, "")}
        examples = []
        for pid in self.example_prompts:
            c, g = chosen[pid], self.groups[pid]
            if not c.pairs:
                examples.append({"prompt_id": pid, "instruction": self.instructions.get(pid, ""), "skip": c.skip})
                continue
            w, lo = c.pairs[0]
            ex = {"prompt_id": pid, "instruction": self.instructions.get(pid, ""), "chosen": g["text"][w],
                  "mas_chosen": float(g["mas"][w]), "logp_chosen": float(g["logp"][w])}
            if lo is not None:
                ex |= {"rejected": g["text"][lo], "mas_rejected": float(g["mas"][lo]),
                       "logp_rejected": float(g["logp"][lo])}
                if self.truth is not None:
                    ex["rejected_truth"] = float(self.truth[pid][lo])
            examples.append(ex)
        return ExplorerState(float(alpha), float(delta), strategy, stats, focus, examples)

    # ------------------------------------------------------------------ rendering
    def figure(self, state: ExplorerState):
        import matplotlib.pyplot as plt

        f = state.focus
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.2, 1]})
        mas, logp = np.array(f["mas"]), np.array(f["logp"])
        ax.scatter(logp, mas, c="0.6", s=30, label="candidates")
        if f["w"] is not None:
            ax.scatter(logp[f["w"]], mas[f["w"]], c="tab:green", s=120, marker="*", label="Rw (chosen)")
            if f["l"] is not None:
                ax.scatter(logp[f["l"]], mas[f["l"]], c="tab:red", s=90, marker="X", label="Rl (rejected)")
                ax.axvline(logp[f["w"]] - state.delta, color="tab:red", lw=0.8, ls="--",
                           label="log P(Rw) − δ")
        ax.set_xlabel("log P(R | I, Q) under the base model")
        ax.set_ylabel("MAS")
        ax.set_title(_short(f"{f['prompt_id']}: {f['instruction']}", 70), fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
        ax2.axis("off")
        lines = [f"strategy {state.strategy}   α = {state.alpha:.2f}   δ = {state.delta:.2f}", ""]
        lines += [f"{k:>24}: {v:.3f}" for k, v in state.stats.items()]
        ax2.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8.5)
        fig.tight_layout()
        return fig

    def html(self, state: ExplorerState) -> str:
        rows = "".join(f"<tr><td>{_html.escape(k)}</td><td class='m3po-stat' data-key='{_html.escape(k)}'>"
                       f"{v:.3f}</td></tr>" for k, v in state.stats.items())
        ex_rows = []
        for ex in state.examples:
            if "chosen" not in ex:
                ex_rows.append(f"<tr><td>{_html.escape(ex['instruction'])}</td><td colspan=2>skipped: "
                               f"{_html.escape(str(ex.get('skip')))}</td></tr>")
                continue
            rej = ex.get("rejected", "—")
            ex_rows.append(
                f"<tr class='m3po-example'><td>{_html.escape(ex['instruction'])}</td>"
                f"<td>{_html.escape(ex['chosen'])}<br><small>MAS {ex['mas_chosen']:.2f}, "
                f"log P {ex['logp_chosen']:.1f}</small></td>"
                f"<td class='m3po-rejected'>{_html.escape(rej)}<br><small>"
                + (f"MAS {ex['mas_rejected']:.2f}, log P {ex['logp_rejected']:.1f}" if "mas_rejected" in ex else "")
                + "</small></td></tr>")
        return (f"<div class='m3po-explorer'><b>{_html.escape(state.strategy)}</b> at α = {state.alpha:.2f}, "
                f"δ = {state.delta:.2f}<table>{rows}</table>"
                "<table><tr><th>instruction</th><th>chosen (Rw)</th><th>rejected (Rl)</th></tr>"
                + "".join(ex_rows) + "</table></div>")

    def show(self, alpha: float = 0.5, delta: float = 0.1, strategy: str = "m3po", static: bool | None = None):
        """Sliders in JupyterLab; a static figure under papermill (or when ``static=True``)."""
        from IPython.display import display

        if static is None:
            static = os.environ.get(STATIC_ENV) == "1"
        state = self.update(alpha, delta, strategy)
        if static:
            return self.figure(state)
        import ipywidgets as w
        import matplotlib.pyplot as plt

        a = w.FloatSlider(value=alpha, min=0.0, max=2.0, step=0.05, description="α", continuous_update=False)
        d = w.FloatSlider(value=delta, min=0.0, max=2.0, step=0.05, description="δ", continuous_update=False)
        s = w.Dropdown(options=[x for x in STRATEGIES if x not in ("best_of_n", *TRUTH_STRATEGIES)], value=strategy, description="strategy")
        p = w.Dropdown(options=list(self.groups), value=self.focus, description="prompt")
        out, info = w.Output(), w.HTML()

        def redraw(*_):
            self.focus = p.value
            st = self.update(a.value, d.value, s.value)
            with out:
                out.clear_output(wait=True)
                fig = self.figure(st)
                display(fig)
                plt.close(fig)
            info.value = self.html(st)      # last: when the statistics show the new α, the figure does too

        for ctl in (a, d, s, p):
            ctl.observe(redraw, names="value")
        redraw()
        box = w.VBox([w.HBox([a, d]), w.HBox([s, p]), out, info])
        box.add_class("m3po-explorer-box")
        display(box)
        return None


def contrasting_prompts(groups: dict[str, dict], alpha: float, delta: float, min_margin: float = 0.0, seed: int = 0,
                        k: int = 5) -> list[str]:
    """Up to ``k`` prompts whose M3PO pair at (α, δ) differs from the α = 0 pair (best vs worst), then others:
    the examples that show what the confidence term changes."""
    m3 = {c.prompt_id: c.pairs for c in select(groups, "m3po", alpha, delta, min_margin, seed=seed).choices}
    ref = {c.prompt_id: c.pairs for c in select(groups, "best_worst", 0.0, delta, min_margin, seed=seed).choices}
    differ = [p for p in groups if m3.get(p) and m3.get(p) != ref.get(p)]
    return (differ + [p for p in groups if p not in differ])[:k]


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
