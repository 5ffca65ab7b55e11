"""The α/δ explorer of notebook 04: sliders that re-select pairs live and show what changed.

``PairExplorer.update(alpha, delta, strategy, prompt, family, changed_only)`` returns an :class:`ExplorerState`:
the statistics over all prompts, the focus prompt's candidates with Rw / Rl marked (and their ground-truth
verdicts), and a few example pairs. ``family`` keeps only one benchmark family's prompts for the focus and the
examples; ``changed_only`` keeps only the prompts whose pair at this α differs from α = 0 (best vs worst by MAS),
the pairs the confidence term changes. The statistics always cover every prompt.
"""

from __future__ import annotations

import html as _html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from m3po_utils import rules
from m3po_utils.rules import Selection, select, selection_stats
from m3po_utils.widgets.base import Widget, dropdown, labelled, short

ALL = "all"


@dataclass(frozen=True)
class ExplorerState:
    alpha: float
    delta: float
    strategy: str
    stats: dict[str, float]
    focus: dict = field(default_factory=dict)       # prompt_id, family, instruction, mas, logp, truth, w, l, skip
    examples: list[dict] = field(default_factory=list)
    shown: tuple[str, ...] = ()                     # the prompts that pass the filters, in display order


class PairExplorer(Widget):
    """Interactive view of how α and δ change the selected negatives.

    ``groups`` come from :func:`selection.group_candidates`; ``truth`` (optional) maps prompt id to the
    ground-truth score of each candidate; ``instructions`` maps prompt id to its instruction text;
    ``families`` maps prompt id to its family; ``load_image(prompt_id)`` (optional) returns the prompt's image.
    ``example_prompts`` orders the prompts the examples are drawn from (default: the groups' order).
    """

    css = "m3po-explorer"

    def __init__(self, groups: dict[str, dict], instructions: dict[str, str], truth: dict | None = None,
                 load_image: Callable[[str], object] | None = None, focus: str | None = None,
                 example_prompts: Sequence[str] | None = None, min_margin: float = 0.0, seed: int = 0,
                 families: dict[str, str] | None = None, n_examples: int = 5):
        if not groups:
            raise ValueError("the explorer needs at least one prompt with candidates")
        self.groups, self.instructions, self.truth = groups, instructions, truth
        self.instruction_of = instructions
        self.load_image, self.min_margin, self.seed = load_image, min_margin, seed
        self.families = families or {}
        self.focus = focus if focus is not None else next(iter(groups))
        if self.focus not in groups:
            raise ValueError(f"focus prompt {self.focus!r} is not among the explorer's prompts")
        self.example_prompts = list(example_prompts or list(groups)[:n_examples])
        self.order = self.example_prompts + [p for p in groups if p not in set(self.example_prompts)]
        self.n_examples = n_examples

    def _reference(self, delta: float) -> Selection:
        return select(self.groups, "best_worst", 0.0, delta, self.min_margin, seed=self.seed)

    def family_options(self) -> list[str]:
        return [ALL] + sorted(set(self.families.get(p, "") for p in self.groups) - {""})

    def update(self, alpha: float = 0.5, delta: float = 0.1, strategy: str = "m3po", prompt: str | None = None,
               family: str = ALL, changed_only: bool = False) -> ExplorerState:
        """Select with these settings and summarise (pure: same inputs, same state)."""
        if family != ALL and family not in self.family_options():
            raise ValueError(f"family={family!r} is not among this run's families {self.family_options()}")
        if prompt is not None and prompt not in self.groups:
            raise ValueError(f"prompt={prompt!r} is not among the explorer's prompts")
        sel = select(self.groups, strategy, alpha, delta, self.min_margin, seed=self.seed)
        ref = self._reference(delta)
        stats = selection_stats(self.groups, sel, reference=ref, truth=self.truth)
        chosen = {c.prompt_id: c for c in sel.choices}
        before = {c.prompt_id: c.pairs for c in ref.choices}
        filtered = family != ALL or changed_only
        shown = tuple(p for p in self.order
                      if (family == ALL or self.families.get(p) == family)
                      and (not changed_only or (chosen[p].pairs and chosen[p].pairs != before.get(p))))
        if prompt is not None and (prompt in shown or not filtered):
            focus_id = prompt
        else:
            focus_id = shown[0] if filtered and shown else self.focus
        g, c = self.groups[focus_id], chosen[focus_id]
        w, lo = (c.pairs[0] if c.pairs else (None, None))
        focus = {"prompt_id": focus_id, "family": self.families.get(focus_id, ""),
                 "instruction": self.instructions.get(focus_id, ""), "mas": g["mas"].tolist(),
                 "logp": g["logp"].tolist(), "w": w, "l": lo, "skip": c.skip,
                 "truth": None if self.truth is None else [float(x) for x in self.truth[focus_id]],
                 "before_l": before.get(focus_id, [(None, None)])[0][1] if before.get(focus_id) else None}
        pool = shown if filtered else tuple(self.example_prompts)
        examples = [self._example(pid, chosen[pid]) for pid in pool[: self.n_examples]]
        return ExplorerState(float(alpha), float(delta), strategy, stats, focus, examples, shown)

    def _example(self, pid: str, c) -> dict:
        g = self.groups[pid]
        if not c.pairs:
            return {"prompt_id": pid, "instruction": self.instructions.get(pid, ""), "skip": c.skip}
        w, lo = c.pairs[0]
        ex = {"prompt_id": pid, "family": self.families.get(pid, ""), "instruction": self.instructions.get(pid, ""),
              "chosen": g["text"][w], "mas_chosen": float(g["mas"][w]), "logp_chosen": float(g["logp"][w])}
        if self.truth is not None:
            ex["chosen_truth"] = float(self.truth[pid][w])
        if lo is not None:
            ex |= {"rejected": g["text"][lo], "mas_rejected": float(g["mas"][lo]),
                   "logp_rejected": float(g["logp"][lo])}
            if self.truth is not None:
                ex["rejected_truth"] = float(self.truth[pid][lo])
        return ex

    # ------------------------------------------------------------------ rendering
    def figure(self, state: ExplorerState):
        import matplotlib.pyplot as plt

        f = state.focus
        image = self.load_image(f["prompt_id"]) if self.load_image is not None else None
        ratios = ([0.7] if image is not None else []) + [1.3, 1.0]
        fig, axes = plt.subplots(1, len(ratios), figsize=(4.2 * sum(ratios) + 1, 5.0),
                                 gridspec_kw={"width_ratios": ratios})
        if image is not None:
            axes[0].imshow(image)
            axes[0].set_xticks([])
            axes[0].set_yticks([])
            axes[0].set_title(f"{f['prompt_id']} ({f['family']})", fontsize=9)
        ax, ax2 = axes[-2], axes[-1]
        mas, logp = np.array(f["mas"]), np.array(f["logp"])
        ax.scatter(logp, mas, c="0.6", s=30, label="candidates")

        def verdict(i):
            return "" if f["truth"] is None else f", truth {f['truth'][i]:.2f}"

        if f["w"] is not None:
            ax.scatter(logp[f["w"]], mas[f["w"]], c="tab:green", s=140, marker="*", label="Rw (chosen)" + verdict(f["w"]))
            if f["l"] is not None:
                ax.scatter(logp[f["l"]], mas[f["l"]], c="tab:red", s=90, marker="X",
                           label="Rl (rejected)" + verdict(f["l"]))
                ax.axvline(logp[f["w"]] - state.delta, color="tab:red", lw=0.8, ls="--", label="log P(Rw) − δ")
            if f["before_l"] is not None and f["before_l"] != f["l"]:
                ax.scatter(logp[f["before_l"]], mas[f["before_l"]], facecolors="none", edgecolors="tab:blue",
                           s=140, label="Rl at α = 0" + verdict(f["before_l"]))
        ax.set_xlabel("log P(R | I, Q) under the base model (nats)")
        ax.set_ylabel("MAS")
        ax.set_title(short(f["instruction"], 55), fontsize=9)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)  # off the data
        ax2.axis("off")
        lines = [f"{state.strategy}: α = {state.alpha:.2f}, δ = {state.delta:.2f}", "over every prompt:", ""]
        lines += [f"{short(k, 22):>22} {v:6.3f}" for k, v in state.stats.items()]
        ax2.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8)
        fig.suptitle("Which negative does this α pick? Rw is the best by MAS; Rl maximises MAS gap + α·confidence",
                     fontsize=10)
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
            truth_w = f", truth {ex['chosen_truth']:.2f}" if "chosen_truth" in ex else ""
            truth_l = f", truth {ex['rejected_truth']:.2f}" if "rejected_truth" in ex else ""
            ex_rows.append(
                f"<tr class='m3po-example'><td>{_html.escape(ex['instruction'])}</td>"
                f"<td>{_html.escape(ex['chosen'])}<br><small>MAS {ex['mas_chosen']:.2f}, "
                f"log P {ex['logp_chosen']:.1f}{truth_w}</small></td>"
                f"<td class='m3po-rejected'>{_html.escape(rej)}<br><small>"
                + (f"MAS {ex['mas_rejected']:.2f}, log P {ex['logp_rejected']:.1f}{truth_l}"
                   if "mas_rejected" in ex else "")
                + "</small></td></tr>")
        return (f"<div class='m3po-explorer'><b>{_html.escape(state.strategy)}</b> at α = {state.alpha:.2f}, "
                f"δ = {state.delta:.2f} — {len(state.shown)} prompts pass the filters<table>{rows}</table>"
                "<table><tr><th>instruction</th><th>chosen (Rw)</th><th>rejected (Rl)</th></tr>"
                + "".join(ex_rows) + "</table></div>")

    def controls(self, alpha: float = 0.5, delta: float = 0.1, strategy: str = "m3po", prompt: str | None = None,
                 family: str = ALL, changed_only: bool = False) -> dict:
        import ipywidgets as w

        return {
            "alpha": w.FloatSlider(value=alpha, min=0.0, max=2.0, step=0.05, description="α",
                                   continuous_update=False),
            "delta": w.FloatSlider(value=delta, min=0.0, max=2.0, step=0.05, description="δ",
                                   continuous_update=False),
            "strategy": dropdown([x for x in rules.names() if not (rules.rule(x).sft_only or rules.rule(x).needs_truth)], strategy,
                                 "strategy"),
            "family": dropdown(self.family_options(), family, "family"),
            "changed_only": w.Checkbox(value=changed_only, description="only pairs α changes"),
            "prompt": dropdown(self.order, prompt if prompt is not None else self.focus, "prompt", self.prompt_label),
        }

    def link(self, controls: dict) -> None:
        def follow(change):
            moved_filter = change["owner"] in (controls["family"], controls["changed_only"])
            if not (moved_filter or controls["changed_only"].value):
                return          # α, δ and strategy change the prompt list only under "only pairs α changes"
            st = self.update(**{k: c.value for k, c in controls.items()})
            options = list(st.shown) or self.order
            items = labelled(options, self.prompt_label)
            if list(controls["prompt"].options) != items:
                controls["prompt"].options = items         # resets the value to the first: the redraw follows
        for key in ("family", "changed_only", "alpha", "delta", "strategy"):
            controls[key].observe(follow, names="value")


def contrasting_prompts(groups: dict[str, dict], alpha: float, delta: float, min_margin: float = 0.0, seed: int = 0,
                        k: int = 5) -> list[str]:
    """Up to ``k`` prompts whose M3PO pair at (α, δ) differs from the α = 0 pair (best vs worst), then others:
    the examples that show what the confidence term changes."""
    m3 = {c.prompt_id: c.pairs for c in select(groups, "m3po", alpha, delta, min_margin, seed=seed).choices}
    ref = {c.prompt_id: c.pairs for c in select(groups, "best_worst", 0.0, delta, min_margin, seed=seed).choices}
    differ = [p for p in groups if m3.get(p) and m3.get(p) != ref.get(p)]
    return (differ + [p for p in groups if p not in differ])[:k]
