import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from m3po_utils.rules import group_candidates  # noqa: E402
from m3po_utils.widgets import PairExplorer  # noqa: E402


@pytest.fixture()
def explorer():
    df = pd.DataFrame({
        "prompt_id": ["p1"] * 4 + ["p2"] * 3,
        "cand_idx": [0, 1, 2, 3, 0, 1, 2],
        "text": ["right", "confident wrong", "meh", "unlikely wrong", "A", "B", "C"],
        "mas": [0.9, 0.2, 0.5, 0.1, 0.8, 0.3, 0.2],
        "logprob_sum": [-5.0, -4.0, -20.0, -30.0, -2.0, -2.5, -40.0],
    })
    truth = {"p1": np.array([1.0, 0.0, 0.5, 0.0]), "p2": np.array([1.0, 0.0, 0.0])}
    return PairExplorer(group_candidates(df), {"p1": "Is there a star?", "p2": "Describe."}, truth=truth)


def test_update_is_pure_and_follows_alpha(explorer):
    s1 = explorer.update(0.5, 0.1, "m3po")
    assert explorer.update(0.5, 0.1, "m3po") == s1
    assert s1.focus["w"] == 0 and s1.focus["l"] == 1                  # the confident mistake
    s0 = explorer.update(0.0, 0.1, "m3po")
    assert s0.focus["l"] == 3                                            # α = 0: the worst by MAS
    # p1: log P(Rl) = -4 >= -5 - 0.1 (hard); p2: Rl = "B" with -2.5 < -2 - 0.1 (not hard)
    assert s1.stats["hard_negative_rate"] == 0.5 and s0.stats["hard_negative_rate"] == 0.0
    assert s1.stats["differs_from_reference"] == 1.0 and s0.stats["differs_from_reference"] == 0.0
    assert s1.examples[0]["rejected"] == "confident wrong" and s0.examples[0]["rejected"] == "unlikely wrong"
    assert s1.stats["mean_mas_gap"] == pytest.approx(((0.9 - 0.2) + (0.8 - 0.3)) / 2)


def test_strategy_switch(explorer):
    st = explorer.update(0.5, 0.1, "best_worst")
    assert st.focus["l"] == 3 and st.stats["differs_from_reference"] == 0.0


def test_rendering_without_a_browser(explorer):
    st = explorer.update(0.5, 0.1, "m3po")
    fig = explorer.figure(st)
    assert len(fig.axes) == 2
    html = explorer.html(st)
    assert "confident wrong" in html and "hard_negative_rate" in html
    assert explorer.show(static=True) is None           # papermill path displays the figure itself


def test_a_still_widget_lists_what_live_mode_would_and_says_how_to_open_it(explorer, monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    explorer.show(static=True, alpha=0.5, delta=0.1)
    kinds = [type(o).__name__ for o in shown]
    assert kinds[1:] == ["HTML", "Markdown"]                      # the figure, then the example table, the caption
    assert "m3po-explorer" in shown[1].data and "<th>rejected (Rl)</th>" in shown[1].data
    caption = shown[2].data
    assert "shown here as a still for alpha = 0.5, delta = 0.1" in caption
    assert "Its controls: α, δ, strategy, family, only pairs α changes, prompt." in caption
    assert "`./m3po lab`" in caption and "run it from the top" in caption


def test_bad_focus():
    df = pd.DataFrame({"prompt_id": ["p"] * 2, "cand_idx": [0, 1], "text": ["a", "b"], "mas": [0.1, 0.2],
                       "logprob_sum": [-1.0, -2.0]})
    with pytest.raises(ValueError, match="focus prompt 'zz'"):
        PairExplorer(group_candidates(df), {}, focus="zz")


def test_contrasting_prompts_put_the_pairs_alpha_changes_first(explorer):
    from m3po_utils.widgets import contrasting_prompts

    g = explorer.groups
    g3 = dict(g) | {"p0": {k: v for k, v in g["p2"].items()}}   # a prompt whose pair α does not change
    g3["p0"] = {**g["p2"], "logp": np.array([-2.0, -40.0, -2.5])}  # the worst is also the least likely: same pair
    order = contrasting_prompts({"p0": g3["p0"], **g}, 0.5, 0.1, k=3)
    assert order == ["p1", "p2", "p0"]
    assert contrasting_prompts({"p0": g3["p0"], **g}, 0.5, 0.1, k=1) == ["p1"]
    assert contrasting_prompts({"p0": g3["p0"], **g}, 0.0, 0.1, k=3) == ["p0", "p1", "p2"]   # α = 0: nothing differs


# ---------------------------------------------------------------------------------------------- the new widgets
from m3po_utils.config import MasConfig  # noqa: E402
from m3po_utils.plots.audit import problems  # noqa: E402
from m3po_utils.widgets import CandidateInspector, MasWeights, TokenViewer  # noqa: E402


def _candidates():
    return pd.DataFrame({
        "prompt_id": ["p1"] * 3 + ["p2"] * 2,
        "family": ["count"] * 3 + ["existence"] * 2,
        "instruction": ["How many?"] * 3 + ["Is there a star?"] * 2,
        "reference": ["2"] * 3 + ["No, there is no star."] * 2,
        "cand_idx": [0, 1, 2, 0, 1],
        "text": ["3", "2", "2", "Yes, there is a star.", "No, there is no star."],
        "logprob_sum": [-0.5, -1.5, -1.5, -0.2, -2.0],
        "length": [1, 1, 1, 6, 6],
        "verifier_score": [0.0, 1.0, 1.0, 0.0, 1.0],
        "correct": [False, True, True, False, True],
        "token_ids": ["[5]", "[6]", "[6]", "[7, 8, 9]", "[10, 11]"],
        "token_logprobs": ["[-0.5]", "[-1.5]", "[-1.5]", "[-0.1, -0.05, -0.05]", "[-1.5, -0.5]"],
    })


def test_candidate_inspector_sorts_by_confidence_and_summarises():
    ins = CandidateInspector(_candidates(), load_image=lambda p: np.zeros((8, 8, 3)))
    st = ins.update()
    assert st.prompt_id == "p1" and [r["text"] for r in st.rows] == ["3", "2", "2"]   # most likely first
    assert st.summary == {"candidates": 3.0, "distinct": 2.0, "share_correct": pytest.approx(2 / 3),
                          "pass_at_n": 1.0, "most_likely_correct": 0.0}
    assert ins.update() == st                                                       # pure
    ex = ins.update(family="existence")
    assert ex.prompt_id == "p2" and ex.prompts == ("p2",) and ex.summary["most_likely_correct"] == 0.0
    assert ins.update(family="existence", prompt="p1").prompt_id == "p2"            # the filter wins
    with pytest.raises(ValueError, match="family='colour'"):
        ins.update(family="colour")
    with pytest.raises(ValueError, match="prompt='zz'"):
        ins.update(prompt="zz")
    fig = ins.figure(st)
    assert problems(fig) == [] and len(fig.axes) == 2                               # image + candidates
    assert "How many?" in ins.html(st) and "✓" in ins.html(st)
    assert ins.show(static=True) is None


def test_the_inspector_opens_on_a_prompt_it_can_teach_with_and_its_title_is_true_of_it():
    df = _candidates()
    df.loc[df.prompt_id == "p1", "correct"] = [True, False, False]       # p1: the most likely answer is right
    df.loc[df.prompt_id == "p1", "logprob_sum"] = [-0.5, -1.5, -1.6]
    ins = CandidateInspector(df)
    assert ins.teaching_prompt() == "p2"                                   # wrong first, right below
    assert ins.title(ins.update(prompt="p2")).endswith("the first correct one is number 2 — a pair preference "
                                                       "training can learn from")
    assert ins.title(ins.update(prompt="p1")).endswith("the most likely one is correct")
    df["correct"] = False
    ins = CandidateInspector(df)
    assert ins.teaching_prompt() == "p1"                                   # none like that: the first prompt
    assert ins.title(ins.update()).endswith("none of them is correct")     # no question asked of a missing answer
    assert CandidateInspector(df.drop(columns=["correct"])).teaching_prompt("existence") == "p2"


def test_mas_weights_recombine_the_recorded_scores():
    df = _candidates().assign(clip_score=[0.9, 0.2, 0.3, 0.8, 0.1], judge_score=[0.0, 1.0, 1.0, 0.0, 1.0],
                              judge_ok=True, truth=[0.0, 1.0, 1.0, 0.0, 1.0])
    mw = MasWeights(df, MasConfig(clip_weight=0.3, judge_weight=0.7))
    assert mw.default == pytest.approx(0.3)
    st = mw.update()
    assert st.clip_weight == pytest.approx(0.3)
    # truth-sorted rows of p1; MAS = 0.3·clip + 0.7·judge
    assert [r["mas"] for r in st.rows] == pytest.approx([0.3 * 0.2 + 0.7, 0.3 * 0.3 + 0.7, 0.3 * 0.9])
    assert st.stats["top1"] == 1.0
    clip_only = mw.update(clip_weight=1.0)       # CLIP alone puts the wrong answers first in both prompts
    assert clip_only.stats["top1"] == 0.0 and clip_only.stats["spearman"] < 0 < st.stats["spearman"]
    assert mw.curve.loc[1.0, "top1"] == 0.0 and mw.curve.loc[0.0, "top1"] == 1.0
    with pytest.raises(ValueError, match="clip_weight=1.5"):
        mw.update(clip_weight=1.5)
    fig = mw.figure(clip_only)
    assert problems(fig) == []
    assert "m3po-stat" in mw.html(st)


def test_token_viewer_shows_where_the_sum_goes():
    tv = TokenViewer(_candidates(), decode=lambda t: f"t{t}", correct={("p2", 0): False})
    st = tv.update("p2", 0)
    assert st.tokens == ("t7", "t8", "t9") and st.logprobs == (-0.1, -0.05, -0.05)
    assert st.stats["logp_sum"] == pytest.approx(-0.2) and st.stats["logp_mean"] == pytest.approx(-0.2 / 3)
    assert st.stats["least_likely_logp"] == -0.1 and st.stats["share_of_sum_in_least_likely"] == pytest.approx(0.5)
    assert st.stats["correct"] == 0.0 and st.candidates == (0, 1)
    with pytest.raises(ValueError, match="cand_idx=5"):
        tv.update("p2", 5)
    assert problems(tv.figure(st)) == []
    assert tv.html(st).count("m3po-token'") == 3


def test_pair_explorer_filters_by_family_and_by_what_alpha_changes(explorer):
    explorer.families = {"p1": "existence", "p2": "describe"}
    st = explorer.update(0.5, 0.1, family="describe")
    assert st.shown == ("p2",) and st.focus["prompt_id"] == "p2"
    assert [ex["prompt_id"] for ex in st.examples] == ["p2"]
    changed = explorer.update(0.5, 0.1, changed_only=True)
    assert changed.shown == ("p1", "p2")                          # both negatives move with α = 0.5 …
    assert explorer.update(0.5, 0.1, family="existence", changed_only=True).shown == ("p1",)   # … filters combine
    assert changed.focus["before_l"] == 3 and changed.focus["l"] == 1
    assert changed.examples[0]["rejected_truth"] == 0.0 and changed.examples[0]["chosen_truth"] == 1.0
    assert explorer.update(0.0, 0.1, changed_only=True).shown == ()  # α = 0 changes nothing
    assert changed.stats == explorer.update(0.5, 0.1).stats        # the statistics cover every prompt
    with pytest.raises(ValueError, match="family='color'"):
        explorer.update(family="color")
    assert problems(explorer.figure(changed)) == []


def test_prompt_drop_downs_name_prompts_by_their_instruction(explorer):
    ins = CandidateInspector(_candidates())
    c = ins.controls(family="existence")
    assert c["prompt"].value == "p2" and c["prompt"].label == "Is there a star? · p2"
    ins.link(c)
    c["family"].value = "count"                                   # the list follows the family, still labelled
    assert list(c["prompt"].options) == [("How many? · p1", "p1")]
    ctl = explorer.controls()
    assert sorted(ctl["prompt"].options) == [("Describe. · p2", "p2"), ("Is there a star? · p1", "p1")]
    assert "only pairs α changes" in explorer.control_names()
