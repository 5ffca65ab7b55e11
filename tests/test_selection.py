import math

import numpy as np
import pandas as pd
import pytest

from m3po_utils import mas
from m3po_utils import selection as S
from m3po_utils.rules import choose, group_candidates, m3p_scores, select, select_pair, selection_stats
from m3po_utils.rundir import RunDir

MAS = [0.9, 0.2, 0.5, 0.1]
LOGP = [-5.0, -4.0, -20.0, -30.0]
TEXTS = ["a", "b", "c", "d"]


def test_hand_computed_scores():
    s = m3p_scores(MAS, LOGP, alpha=0.5, delta=0.1)
    # S1 = 0.7 - 0.5*max(0, -5+4-0.1) = 0.7 ; S2 = 0.4 - 0.5*(15-0.1) = -7.05 ; S3 = 0.8 - 0.5*(25-0.1) = -11.65
    assert s[0] == -math.inf
    np.testing.assert_allclose(s[1:], [0.7, -7.05, -11.65])
    assert select_pair(MAS, LOGP) == (0, 1)          # the confident mistake


def test_alpha_zero_is_best_vs_worst():
    assert select_pair(MAS, LOGP, alpha=0.0) == (0, 3)
    rng = np.random.default_rng(5)
    for _ in range(200):
        n = rng.integers(2, 12)
        mas, logp = rng.random(n), -rng.random(n) * 30
        w, lo = select_pair(mas, logp, alpha=0.0, delta=rng.random())
        assert w == int(np.argmax(mas)) and lo == int(np.argmin(mas))


def test_delta_shifts_where_the_penalty_starts():
    mas, logp = [0.9, 0.5, 0.4], [-5.0, -5.5, -5.0]
    # delta 0: S1 = 0.4 - 0.5*0.5 = 0.15, S2 = 0.5 -> picks 2; delta 1: S1 = 0.4 -> still 2 (0.5 > 0.4)
    np.testing.assert_allclose(m3p_scores(mas, logp, 0.5, 0.0)[1:], [0.15, 0.5])
    np.testing.assert_allclose(m3p_scores(mas, logp, 0.5, 1.0)[1:], [0.4, 0.5])


def test_ties_are_deterministic():
    # two equally good best answers: the more confident is Rw; two equal S: the more confident is Rl
    assert select_pair([0.8, 0.8, 0.1, 0.1], [-9.0, -3.0, -7.0, -2.0], alpha=0.0) == (1, 3)
    assert select_pair([0.8, 0.1, 0.1], [-3.0, -2.0, -2.0], alpha=0.0) == (0, 1)


def test_duplicate_of_best_text_is_not_a_negative():
    s = m3p_scores([0.9, 0.9, 0.1], [-1.0, -2.0, -3.0], texts=["x", "x", "y"])
    assert s[0] == -math.inf and s[1] == -math.inf and np.isfinite(s[2])


@pytest.mark.parametrize("alpha, delta", [(-0.1, 0.1), (0.5, -1), (float("nan"), 0.1), (0.5, float("inf"))])
def test_invalid_alpha_delta(alpha, delta):
    with pytest.raises(ValueError, match="alpha|delta"):
        m3p_scores(MAS, LOGP, alpha, delta)


def test_degenerate_inputs():
    with pytest.raises(ValueError, match="at least 2"):
        m3p_scores([0.5], [-1.0])
    with pytest.raises(ValueError, match="equal length"):
        m3p_scores([0.5, 0.4], [-1.0])
    with pytest.raises(ValueError, match="NaN"):
        m3p_scores([0.5, float("nan")], [-1.0, -2.0])
    assert choose("p", np.array([0.5, 0.5]), np.array([-1.0, -2.0]), ["x", "x"], "m3po").skip == \
        "fewer_than_two_distinct"
    assert choose("p", np.array([0.5, 0.5]), np.array([-1.0, -2.0]), ["x", "y"], "m3po").skip == "all_mas_equal"
    assert choose("p", np.array([0.5, 0.45]), np.array([-1.0, -2.0]), ["x", "y"], "m3po",
                  min_margin=0.1).skip == "margin_below_min"
    assert choose("p", np.array([0.5, np.nan]), np.array([-1.0, -2.0]), ["x", "y"], "m3po").skip == "mas_missing"
    with pytest.raises(ValueError, match="strategy"):
        choose("p", np.array([0.5, 0.4]), np.array([-1.0, -2.0]), ["x", "y"], "nope")


def test_k_pairs_use_distinct_rejected_texts():
    texts = ["a", "b", "b", "c", "d"]
    c = choose("p", np.array([0.9, 0.2, 0.2, 0.5, 0.1]), np.array([-5.0, -4.0, -4.0, -6.0, -30.0]),
               texts, "m3po", k=3)
    rejected = [lo for _, lo in c.pairs]
    assert len(rejected) == 3 and len({texts[i] for i in rejected}) == 3
    assert c.pairs[0] == (0, 1)


def test_random_orders_by_mas_and_is_seeded():
    mas, logp = np.array([0.1, 0.9, 0.4, 0.6]), np.array([-1.0, -2.0, -3.0, -4.0])
    seen = set()
    for seed in range(40):
        c = choose("p", mas, logp, ["a", "b", "c", "d"], "random", rng=np.random.default_rng(seed))
        (hi, lo), = c.pairs
        assert mas[hi] > mas[lo]
        seen.add((hi, lo))
    assert len(seen) == 6                               # every pair of 4 candidates shows up
    a = choose("p", mas, logp, list("abcd"), "random", rng=np.random.default_rng(3)).pairs
    b = choose("p", mas, logp, list("abcd"), "random", rng=np.random.default_rng(3)).pairs
    assert a == b


def test_table_selection_and_stats():
    df = pd.DataFrame({
        "prompt_id": ["p1"] * 4 + ["p2"] * 3,
        "cand_idx": [0, 1, 2, 3, 0, 1, 2],
        "text": ["a", "b", "c", "d", "x", "x", "x"],
        "mas": MAS + [0.3, 0.3, 0.3],
        "logprob_sum": LOGP + [-1.0, -1.0, -1.0],
    })
    groups = group_candidates(df)
    m3po = select(groups, "m3po")
    bw = select(groups, "best_worst")
    assert m3po.n_pairs == 1 and m3po.skipped["fewer_than_two_distinct"] == 1
    assert m3po.choices[0].pairs == [(0, 1)] and bw.choices[0].pairs == [(0, 3)]
    truth = {"p1": np.array([1.0, 0.0, 1.0, 0.0]), "p2": np.zeros(3)}
    st = selection_stats(groups, m3po, reference=bw, truth=truth)
    assert st["hard_negative_rate"] == 1.0          # -4 >= -5 - 0.1
    assert st["mean_mas_gap"] == pytest.approx(0.7)
    assert st["differs_from_reference"] == 1.0
    assert st["rejected_wrong"] == 1.0 and st["chosen_right"] == 1.0
    assert selection_stats(groups, bw, reference=bw)["differs_from_reference"] == 0.0
    assert select(groups, "best_of_n").choices[0].pairs == [(0, None)]


def test_pairs_round_trip_in_trl_layout(tmp_path):
    from PIL import Image

    from m3po_utils.selection import write_pairs

    df = pd.DataFrame({"prompt_id": ["p1"] * 4, "cand_idx": [0, 1, 2, 3], "image": ["scene:a"] * 4,
                       "family": ["describe"] * 4, "instruction": ["Describe the image."] * 4, "text": TEXTS,
                       "token_ids": [[1, 2], [3], [4, 5], [6]], "logprob_sum": LOGP, "mas": MAS,
                       "truth": [1.0, 0.0, 0.5, 0.0]})
    groups = group_candidates(df)
    write_pairs(tmp_path, select(groups, "m3po"), df, lambda ref: Image.new("RGB", (96, 96), "red"))
    write_pairs(tmp_path, select(groups, "best_of_n"), df, lambda ref: Image.new("RGB", (96, 96), "red"))
    pairs = RunDir(tmp_path).load_pairs("m3po")
    row = pairs[0]
    assert row["images"][0].getpixel((5, 5)) == (255, 0, 0)
    assert row["prompt"][0]["content"][1]["text"] == "Describe the image."
    assert row["chosen"][0]["content"][0]["text"] == "a" and row["rejected"][0]["content"][0]["text"] == "b"
    assert (row["chosen_token_ids"], row["rejected_token_ids"]) == ([1, 2], [3])
    assert (row["logp_chosen"], row["logp_rejected"], row["truth_rejected"]) == (-5.0, -4.0, 0.0)
    assert RunDir(tmp_path).load_pairs("best_of_n")[0]["rejected"] == []
    with pytest.raises(FileNotFoundError, match="run notebook 04"):
        RunDir(tmp_path).load_pairs("random")


def test_oracle_ranks_by_truth_not_mas():
    df = pd.DataFrame({"prompt_id": ["p1"] * 4, "cand_idx": [0, 1, 2, 3], "text": TEXTS, "mas": MAS,
                       "logprob_sum": LOGP})
    groups = group_candidates(df)
    truth = {"p1": np.array([0.5, 1.0, 0.0, 0.0])}       # MAS prefers 0; the truth prefers 1
    sel = select(groups, "oracle", truth=truth)
    # chosen: truth 1.0 (index 1); rejected: truth 0 with the higher log P (index 2 at -20 beats -30)
    assert sel.choices[0].pairs == [(1, 2)] and sel.alpha == 0.0
    assert select(groups, "best_worst").choices[0].pairs == [(0, 3)]
    with pytest.raises(ValueError, match="ground truth"):
        select(groups, "oracle")
    from m3po_utils.selection import select_all
    assert "oracle" not in select_all(groups, 0.5, 0.1, 0.0)
    assert select_all(groups, 0.5, 0.1, 0.0, truth=truth)["oracle"].choices[0].pairs == [(1, 2)]


def _lengths_table():
    # p1: Rw is long; a short wrong answer is confident by the sum, a long wrong one only per token
    return pd.DataFrame({
        "prompt_id": ["p1"] * 3 + ["p2"] * 3, "cand_idx": [0, 1, 2] * 2,
        "text": ["a long right answer", "no", "a long wrong answer here", "x", "y", "z"],
        "mas": [0.9, 0.2, 0.1, 0.8, 0.5, 0.1],
        "logprob_sum": [-8.0, -1.0, -12.0, -1.0, -1.05, -9.0],
        "length": [8, 1, 10, 2, 2, 2],
        "truth": [1.0, 0.0, 0.0, 1.0, 0.5, 0.0],
    }).assign(logprob_mean=lambda d: d["logprob_sum"] / d["length"])


def test_confidence_option_picks_the_summed_or_the_per_token_log_p():
    df = _lengths_table()
    g_sum, g_mean = group_candidates(df), group_candidates(df, "mean")
    assert g_sum["p1"]["logp"].tolist() == [-8.0, -1.0, -12.0] and g_mean["p1"]["logp"].tolist() == [-1.0, -1.0, -1.2]
    assert g_sum["p1"]["length"].tolist() == [8, 1, 10]
    with pytest.raises(ValueError, match="confidence='median'"):
        group_candidates(df, "median")
    from m3po_utils.config import ConfigError, load_preset
    assert load_preset("smoke", {"selection.confidence": "mean"}).selection.confidence == "mean"
    with pytest.raises(ConfigError, match="selection.confidence"):
        load_preset("smoke", {"selection.confidence": "median"})


def test_unit_scales_put_the_penalty_in_nats_beside_the_mas_gap():
    from m3po_utils.selection import unit_scales

    sc = unit_scales(group_candidates(_lengths_table()), delta=0.1)
    # non-preferred candidates: p1 gaps 0.7, 0.8 with excess max(0, -8+1-0.1) = 0 and -8+12-0.1 = 3.9;
    # p2 gaps 0.3, 0.7 with excess max(0, -1+1.05-0.1) = 0 and -1+9-0.1 = 7.9
    assert sc["median_mas_gap"] == pytest.approx(0.7) and sc["share_penalised"] == 0.5
    assert sc["median_excess_nats"] == pytest.approx((3.9 + 7.9) / 2)
    assert sc["alpha_balance"] == pytest.approx(0.7 / 5.9)


def test_confidence_kinds_show_the_length_bias():
    from m3po_utils.selection import confidence_kinds

    out = confidence_kinds(_lengths_table(), alpha=0.5, delta_sum=0.1, delta_mean=0.1)
    bw, s, m = (out.loc[k] for k in ("best_worst (α = 0)", "m3po, summed log P", "m3po, mean log P per token"))
    # α = 0 rejects the worst by MAS (lengths 10, 2); the sum penalises p1's long wrong answer (3.9 nats) and
    # rejects the short "no"; per token that answer is only 0.2 − δ behind Rw, so it is rejected again
    assert bw["len_rejected"] == pytest.approx(6.0)
    assert s["len_rejected"] == pytest.approx(1.5) and s["rejected_shorter"] == 0.5
    assert m["len_rejected"] == pytest.approx(6.0) and m["rejected_shorter"] == 0.0
    assert s["rejected_wrong"] == 1.0 and m["rejected_wrong"] == 1.0      # "y" is half right: not fully correct
    assert out.attrs["length_logp_spearman"] == pytest.approx(-1.0)      # p1 only: p2's lengths do not vary


def test_worked_example_marks_both_negatives():
    from m3po_utils.selection import worked_example

    g = group_candidates(_lengths_table())["p1"]
    ex = worked_example(g, 0.5, 0.1, truth=[1.0, 0.0, 0.0])
    assert ex["role"].tolist() == ["Rw", "Rl (M3PO)", "Rl at α = 0"]
    assert ex.index.tolist() == [0, 1, 2] and ex.loc[2, "penalty"] == pytest.approx(0.5 * 3.9)
    assert ex["truth"].tolist() == [1.0, 0.0, 0.0]


def test_weight_sweep_selects_m3po_pairs_under_each_weight_and_scores_them_by_the_truth():
    from m3po_utils.config import SelectionConfig

    def prompt(pid, judge, clip, truth):
        return [{"prompt_id": pid, "cand_idx": k, "text": f"{pid}{k}", "logprob_sum": -1.0, "logprob_mean": -0.5,
                 "judge_score": j, "clip_score": c, "truth": t}
                for k, (j, c, t) in enumerate(zip(judge, clip, truth, strict=True))]
    # a: the judge is right and CLIP backwards; b: the judge ties (no pair at w = 0), CLIP right;
    # c: its judge call failed, so it is left out at every weight
    table = pd.DataFrame(prompt("a", [1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [1.0, 0.0, 0.5])
                         + prompt("b", [0.5, 0.5], [0.9, 0.1], [1.0, 0.0])
                         + prompt("c", [np.nan, 0.0], [1.0, 0.0], [1.0, 0.0]))
    sw = mas.weight_sweep(table, SelectionConfig(), clip_weights=(0.0, 0.5, 1.0)).set_index("clip_weight")
    assert sw["pairs"].tolist() == [1, 1, 2]            # w = 0.5: a's MAS all 0.5, below min_margin, skipped
    assert sw.loc[0.0, "ordered"] == 1.0 and sw.loc[0.0, "truth_gap"] == 1.0        # a: truth 1 over truth 0
    assert sw.loc[0.5, "ordered"] == 1.0 and sw.loc[0.5, "chosen_right"] == 1.0     # b only
    assert sw.loc[1.0, "ordered"] == 0.5 and sw.loc[1.0, "truth_gap"] == 0.0        # a backwards, b right
    assert sw.loc[1.0, "rejected_wrong"] == 0.5
    assert mas.best_weights(sw.reset_index()) == [0.0, 0.5]                           # a tie chooses nothing
    assert mas.best_weights(sw.reset_index().assign(truth_gap=[1.0, 0.5, 0.0])) == [0.0]   # the gap breaks it
    with pytest.raises(ValueError, match="clip weight"):
        mas.weight_sweep(table, SelectionConfig(), clip_weights=(1.5,))


def test_yes_no_leads_count_which_verdict_each_strategy_rejects():
    df = pd.DataFrame({
        "prompt_id": ["e1"] * 3 + ["c1"] * 2 + ["d1"] * 2,
        "cand_idx": [0, 1, 2, 0, 1, 0, 1],
        "text": ["No, there is no star; there is a circle.", "Yes, there is a star.",
                 "No, there is no star; there is a square.",
                 "Yes, the star is red.", "No, the star is blue.", "A red star.", "A blue star."],
        "mas": [0.9, 0.2, 0.1, 0.8, 0.3, 0.9, 0.1],
        "logprob_sum": [-5.0, -4.5, -30.0, -3.0, -3.05, -2.0, -9.0],
    })
    groups = group_candidates(df)
    sels = {s: select(groups, s) for s in ("m3po", "best_worst", "best_of_n")}
    fams = {"e1": "existence", "c1": "yn_color", "d1": "describe"}
    t = S.yes_no_leads(groups, sels, fams)
    assert list(t.index) == [("m3po", "existence"), ("m3po", "yn_color"),
                             ("best_worst", "existence"), ("best_worst", "yn_color")]   # no best_of_n, no describe
    # M3PO rejects the confident hallucinated "Yes", best-vs-worst the unlikely "No" with a wrong justification
    assert t.loc[("m3po", "existence")].to_dict() == {"pairs": 1, "chosen_yes": 0.0, "rejected_yes": 1.0,
                                                      "push_to_no": 1.0, "same_answer": 0.0}
    assert t.loc[("best_worst", "existence")].to_dict() == {"pairs": 1, "chosen_yes": 0.0, "rejected_yes": 0.0,
                                                            "push_to_no": 0.0, "same_answer": 1.0}
    assert t.loc[("m3po", "yn_color"), "push_to_no"] == -1.0          # chosen "Yes", rejected "No"
    assert S.yes_no_leads(groups, sels, {"e1": "describe"}).empty


def _sel(name, pairs):
    from m3po_utils.rules import PromptChoice, Selection
    return Selection(name, 0.5, 0.1, [PromptChoice(p, [pr]) if pr else PromptChoice(p, skip="no_spread")
                                      for p, pr in pairs.items()])


def test_pair_agreement_by_hand():
    # three prompts: two existence (yes/no read), one description; texts by candidate index
    groups = {"a": {"text": ["No.", "Yes, a red circle.", "Yes, a blue circle."]},
              "b": {"text": ["Yes.", "No.", "Yes, two."]},
              "c": {"text": ["A red square.", "A blue disc.", "A square."]}}
    fam = {"a": "existence", "b": "existence", "c": "description"}
    sels = {"best_worst": _sel("best_worst", {"a": (0, 1), "b": (0, 1), "c": (0, 1)}),
            "m3po": _sel("m3po", {"a": (0, 2), "b": (0, 1), "c": (2, 1)}),
            "random": _sel("random", {"a": (0, 1), "b": None, "c": (0, 1)})}
    df = S.pair_agreement(groups, sels, fam)
    ex = df.loc[("m3po", "existence")]
    # a: same chosen, rejected text differs but says "yes" like best-vs-worst's; b: the same pair
    assert ex["prompts"] == 2 and ex["same_chosen"] == 1.0 and ex["same_rejected"] == 0.5
    assert ex["same_pair"] == 0.5 and ex["same_rejected_verdict"] == 1.0
    de = df.loc[("m3po", "description")]
    assert de["same_chosen"] == 0.0 and de["same_rejected"] == 1.0 and math.isnan(de["same_rejected_verdict"])
    assert df.loc[("random", "existence")]["prompts"] == 1              # only prompts where both have a pair
    # over all families, weighted by prompts; the verdict share over the yes/no prompts only
    rows = {r["reference"]: r for r in S.agreement_with(groups, sels, fam, references=("best_worst", "random",
                                                                                       "oracle"))}
    assert set(rows) == {"best_worst", "random"}                        # no oracle selection: left out
    bw = rows["best_worst"]
    assert bw["prompts"] == 3 and bw["yes_no_prompts"] == 2
    assert bw["same_chosen"] == pytest.approx(2 / 3) and bw["same_pair"] == pytest.approx(1 / 3)
    assert bw["same_rejected"] == pytest.approx(2 / 3) and bw["same_rejected_verdict"] == 1.0
    assert rows["random"]["prompts"] == 2 and rows["random"]["same_pair"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="reference='oracle'"):
        S.pair_agreement(groups, sels, fam, reference="oracle")
