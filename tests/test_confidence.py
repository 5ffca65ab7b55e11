"""Confidence signals: summed / mean log-prob, self-consistency, calibration tables, the saved table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from m3po_utils import confidence as C
from m3po_utils import stats as ST
from m3po_utils.config import load_preset
from m3po_utils.rundir import RunDir

WC = load_preset("smoke").world


def test_sum_and_mean():
    lp = [-0.5, -1.25, -0.25]
    assert C.sequence_confidence(lp) == pytest.approx(-2.0)
    assert C.sequence_confidence(lp, "mean") == pytest.approx(-2.0 / 3)
    with pytest.raises(ValueError, match="kind='median'"):
        C.sequence_confidence(lp, "median")
    with pytest.raises(ValueError, match="empty"):
        C.sequence_confidence([])


@pytest.mark.parametrize("family,text,key", [
    ("existence", "Yes", "yes"), ("existence", "No, there is not.", "no"), ("existence", "yes.", "yes"),
    ("color", "The circle is red.", "red"), ("color", "red", "red"), ("color", "There is no star.", "none"),
    ("fmt_one_word", "Blue", "blue"), ("count", "3", "3"), ("count", "three shapes", "3"),
    ("position", "at the top left", "top left"), ("position", "upper left", "top left"),
    ("position", "at the center", "center"),
])
def test_answer_key(family, text, key):
    assert C.answer_key(text, family, WC) == key


def test_answer_key_without_world_is_normalised_text():
    assert C.answer_key("The Circle is RED!", "free") == "circle red"


def test_claim_sets():
    d = C.claim_set("a red circle at the top left, a blue star at the center.", "describe", WC)
    assert d == {"circle", "circle color=red", "circle at=top left", "star", "star color=blue", "star at=center"}
    assert C.claim_set("There is no star, only a square.", "describe", WC) == {"square"}
    assert C.claim_set("circle, square, star", "fmt_list", WC) == {"circle", "square", "star"}
    assert C.claim_set("A big dog!", "free") == {"big", "dog"}


def test_jaccard():
    assert C.jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)
    assert C.jaccard(set(), set()) == 1.0
    assert C.jaccard({1}, set()) == 0.0


def test_self_consistency_short_answers_is_share_of_others_agreeing():
    sc = C.self_consistency(["Yes", "yes.", "No", "Yes, there is a star."], "existence", WC)
    np.testing.assert_allclose(sc, [2 / 3, 2 / 3, 0.0, 2 / 3])
    sc = C.self_consistency(["red", "The square is red.", "blue"], "color", WC)
    np.testing.assert_allclose(sc, [0.5, 0.5, 0.0])


def test_self_consistency_descriptions_is_mean_jaccard_of_claims():
    texts = ["a red circle at the top left.", "a red circle at the center.", "a blue star."]
    sc = C.self_consistency(texts, "describe", WC)
    # claims: {circle, circle red, circle top left} / {circle, circle red, circle center} / {star, star blue}
    j01, j02, j12 = 2 / 4, 0.0, 0.0
    np.testing.assert_allclose(sc, [(j01 + j02) / 2, (j01 + j12) / 2, (j02 + j12) / 2])
    hub = C.self_consistency(["a big dog", "a big cat"], "free")
    np.testing.assert_allclose(hub, [1 / 3, 1 / 3])
    with pytest.raises(ValueError, match="at least 2"):
        C.self_consistency(["only one"], "describe", WC)


def _table():
    # two prompts x 3 candidates; log-probs chosen so ranks and sums are known
    rows = []
    for pid, fam, texts, lps in [
        ("p0", "existence", ["Yes", "Yes", "No"], [[-0.1, -0.1], [-0.2, -0.1], [-2.0, -0.1]]),
        ("p1", "describe", ["a red circle.", "a red circle.", "a blue star at the top."],
         [[-1.0, -1.0, -1.0], [-0.5, -0.5, -0.5, -0.5], [-3.0]]),
    ]:
        for i, (t, lp) in enumerate(zip(texts, lps, strict=True)):
            rows.append({"prompt_id": pid, "cand_idx": i, "family": fam, "text": t, "length": len(lp),
                         "ended_eos": True, "token_logprobs": lp, "logprob_sum": sum(lp)})
    return pd.DataFrame(rows)


def test_confidence_table_ranks_and_signals():
    verdicts = pd.DataFrame({"verifier_score": [1.0, 1.0, 0.0, 0.2, 0.2, 1.0],
                             "correct": [True, True, False, False, False, True]})
    t = C.confidence_table(_table(), WC, verdicts)
    np.testing.assert_allclose(t["conf_sum"], [-0.2, -0.3, -2.1, -3.0, -2.0, -3.0])
    np.testing.assert_allclose(t["conf_mean"], [-0.1, -0.15, -1.05, -1.0, -0.5, -3.0])
    np.testing.assert_allclose(t["conf_rank"], [1.0, 0.5, 0.0, 0.25, 1.0, 0.25])  # ties share the rank
    assert t["confident"].tolist() == [True, True, False, False, True, False]
    np.testing.assert_allclose(t["self_consistency"][:3], [0.5, 0.5, 0.0])
    assert t["self_consistency"][3] == pytest.approx(0.5)   # identical to one, disjoint from the other
    q = C.quadrants(t)
    assert q.loc["confident", "wrong"] == 1 and q.loc["confident", "correct"] == 2
    assert q.loc["unsure", "wrong"] == 2 and q.loc["unsure", "correct"] == 1
    s = C.calibration_summary(t)
    assert s["p_wrong_given_confident"] == pytest.approx(1 / 3)
    assert s["p_wrong_given_unsure"] == pytest.approx(2 / 3)
    assert s["prompts_with_confident_wrong"] == pytest.approx(0.5)
    assert s["top1_accuracy"] == pytest.approx(0.5) and s["mean_accuracy"] == pytest.approx(0.5)


def test_reliability_and_ece():
    t = pd.DataFrame({"family": ["existence"] * 4, "conf_sum": np.log([0.95, 0.95, 0.15, 0.15]),
                      "correct": [True, False, False, False]})
    rel = C.reliability(t, bins=10)
    assert rel["bin"].tolist() == [1, 9]
    np.testing.assert_allclose(rel["accuracy"], [0.0, 0.5])
    assert C.ece(rel) == pytest.approx(0.5 * 0.15 + 0.5 * 0.45)


def test_spearman_and_length_effect():
    assert ST.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert ST.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(ST.spearman([1, 1, 1], [1, 2, 3]))
    t = pd.DataFrame({"family": ["describe"] * 4, "length": [2, 4, 6, 8], "conf_sum": [-1, -2, -3, -4],
                      "conf_mean": [-0.5, -0.5, -0.5, -0.5]})
    eff = C.length_effect(t)
    assert eff.loc[0, "length_vs_sum"] == pytest.approx(-1.0) and math.isnan(eff.loc[0, "length_vs_mean"])


def test_correlations_skip_uninformative_prompts():
    t = C.confidence_table(_table(), WC, pd.DataFrame({"verifier_score": [1, 1, 0, 0.5, 0.5, 0.5],
                                                       "correct": [True, True, False, False, False, False]}))
    corr = C.confidence_correlations(t)
    assert corr["family"].tolist() == ["existence"] and corr.loc[0, "prompts"] == 1
    assert corr.loc[0, "conf_sum"] == pytest.approx(ST.spearman([-0.2, -0.3, -2.1], [1, 1, 0]))


def test_save_and_load_confidence(tmp_path):
    t = C.confidence_table(_table(), WC)
    C.save_confidence(tmp_path, t.drop(columns=["text"]), {"max_abs_logprob_diff": 1e-6})
    back = RunDir(tmp_path).load_confidence()
    assert len(back) == 6 and back["conf_sum"].tolist() == pytest.approx(t["conf_sum"].tolist())
    with pytest.raises(FileNotFoundError, match="run notebook 03"):
        RunDir(tmp_path / "elsewhere").load_confidence()


def test_table_dict_is_strict_json():
    import json

    d = C.table_dict(pd.DataFrame({"family": ["a", "b"], "x": [0.123456, float("nan")]}))
    assert d == {"a": {"x": 0.1235}, "b": {"x": None}}
    json.dumps(d, allow_nan=False)


def test_headroom_counts_reachable_and_confident_wrong_prompts():
    import pandas as pd
    t = pd.DataFrame({
        "prompt_id": ["a", "a", "a", "b", "b", "c", "c"],
        "family": ["existence"] * 5 + ["color"] * 2,
        "verifier_score": [1.0, 0.0, 0.0, 0.0, 0.5, 1.0, 1.0],
        "correct": [True, False, False, False, False, True, True],
        "conf_sum": [-1.0, -1.05, -3.0, -2.0, -0.5, -1.0, -2.0],
    })
    room = C.headroom(t, delta=0.1, greedy={"existence": 0.25, "color": 1.0})
    ex = room.loc["existence"]
    assert ex["prompts"] == 2 and ex["pass@1"] == pytest.approx(1 / 5) and ex["pass@N"] == pytest.approx(0.5)
    # prompt a: Rw (-1.0) has a wrong candidate at -1.05 >= -1.1 -> confident wrong; prompt b: Rw is the 0.5
    # candidate at -0.5 and the other wrong one is at -2.0 -> not
    assert ex["confident_wrong"] == pytest.approx(0.5)
    assert ex["pass@N − greedy"] == pytest.approx(0.25)
    assert np.isnan(room.loc["color", "confident_wrong"])    # no wrong candidate at all
