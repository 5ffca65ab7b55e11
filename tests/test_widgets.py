import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from m3po_utils.selection import group_candidates  # noqa: E402
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
    assert explorer.show(static=True) is not None       # papermill path returns a figure


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
