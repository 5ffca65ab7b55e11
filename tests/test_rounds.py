"""Notebook 07's pieces without a model: the adaptive budget, the kept round, the predictions' outcomes, the
settings (the notebook itself runs in tests/test_nb07_rounds.py)."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from m3po_utils import preflight
from m3po_utils import rounds as R
from m3po_utils.config import ConfigError, RoundsConfig, load_preset


def _pool(rows):
    """rows: (prompt, cand_idx, mas, logp)."""
    return pd.DataFrame(rows, columns=["prompt_id", "cand_idx", "mas", "logprob_sum"])


def test_informative_needs_a_good_answer_and_a_confident_bad_one():
    # best 0.9 at log P -5; a 0.4 answer at -5.05 is a hard negative (gap 0.5 >= 0.3, within delta 0.1)
    assert R.informative(np.array([0.9, 0.4]), np.array([-5.0, -5.05]), 0.8, 0.3, 0.1)
    # the bad answer is much less likely: not a hard negative
    assert not R.informative(np.array([0.9, 0.4]), np.array([-5.0, -9.0]), 0.8, 0.3, 0.1)
    # no answer reaches the bar
    assert not R.informative(np.array([0.7, 0.1]), np.array([-5.0, -5.0]), 0.8, 0.3, 0.1)
    # too close in MAS
    assert not R.informative(np.array([0.9, 0.7]), np.array([-5.0, -4.0]), 0.8, 0.3, 0.1)
    # an unscored answer counts for nothing
    assert not R.informative(np.array([0.9, np.nan]), np.array([-5.0, -5.0]), 0.8, 0.3, 0.1)


def test_adaptive_spend_stops_at_the_first_informative_wave_and_at_n_max():
    rows = []
    # p1: informative within its first wave of 2
    rows += [("p1", 0, 0.9, -5.0), ("p1", 1, 0.2, -5.0), ("p1", 2, 0.9, -5.0), ("p1", 3, 0.9, -5.0)]
    # p2: only its second wave holds the hard negative
    rows += [("p2", 0, 0.9, -5.0), ("p2", 1, 0.85, -6.0), ("p2", 2, 0.1, -4.0), ("p2", 3, 0.9, -5.0)]
    # p3: never informative: it gets n_max
    rows += [("p3", i, 0.5, -5.0) for i in range(4)]
    spent = R.adaptive_spend(_pool(rows), wave=2, n_max=4, mas_bar=0.8, gap=0.3, delta=0.1)
    assert spent == {"p1": 2, "p2": 4, "p3": 4}
    # the order of the rows does not matter, the sampling order (cand_idx) does
    shuffled = _pool(rows).sample(frac=1.0, random_state=0)
    assert R.adaptive_spend(shuffled, 2, 4, 0.8, 0.3, 0.1) == spent
    # n_max not a multiple of the wave: the last wave is cut
    assert R.adaptive_spend(_pool(rows), wave=3, n_max=4, mas_bar=0.8, gap=0.3, delta=0.1)["p3"] == 4


def test_fixed_spend_matches_the_total_exactly():
    ids = [f"p{i}" for i in range(7)]
    for total in (7, 10, 20, 27):
        sp = R.fixed_spend(ids, total, n_max=16, seed=0)
        assert sum(sp.values()) == total and max(sp.values()) - min(sp.values()) <= 1
    assert R.fixed_spend(ids, 7 * 20, n_max=16, seed=0) == dict.fromkeys(ids, 16)   # capped at n_max
    assert R.fixed_spend(ids, 10, 16, seed=0) == R.fixed_spend(ids, 10, 16, seed=0)  # seeded


def test_cut_keeps_each_prompts_first_candidates():
    t = _pool([("a", i, 0.5, -1.0) for i in range(4)] + [("b", i, 0.5, -1.0) for i in range(4)])
    out = R.cut(t, {"a": 1, "b": 3})
    assert sorted(out[out.prompt_id == "a"].cand_idx) == [0] and sorted(out[out.prompt_id == "b"].cand_idx) == [0, 1, 2]


def test_the_kept_round_is_the_best_on_validation_and_the_earlier_on_a_tie():
    recs = [{"strategy": "m3po", "round": r, "validation": {"score": v}} for r, v in ((1, 0.5), (2, 0.6), (3, 0.6))]
    recs += [{"strategy": "random", "round": r, "validation": {"score": v}} for r, v in ((1, 0.5), (2, 0.4))]
    ch = R.chosen_rounds(recs, "score")
    assert ch["m3po"]["round"] == 2 and ch["random"]["round"] == 1
    assert ch["m3po"]["by_round"] == {"1": 0.5, "2": 0.6, "3": 0.6}


def test_outcomes_need_the_interval_or_the_tolerance():
    assert R._outcome(-0.02, -0.03, -0.01, sign=-1) == "as predicted"
    assert R._outcome(0.02, 0.01, 0.03, sign=-1) == "opposite"
    assert R._outcome(-0.02, -0.05, 0.01, sign=-1) == "not shown"
    assert R._outcome(0.01, sign=1, tol=0.02) == "not shown"
    assert R._outcome(0.05, sign=1, tol=0.02) == "as predicted"
    assert R._outcome(float("nan"), sign=1) == "not run"


def test_rounds_settings_are_checked():
    with pytest.raises(ConfigError, match="rounds.strategies"):
        RoundsConfig(strategies=("m3po", "nope"))
    with pytest.raises(ConfigError, match="rounds.strategies"):
        RoundsConfig(strategies=("best_of_n",))            # SFT-only: it has no pairs to iterate on
    with pytest.raises(ConfigError, match="rounds.prompts"):
        RoundsConfig(prompts="fresh")
    with pytest.raises(ConfigError, match="rounds.choose_by"):
        RoundsConfig(choose_by="eval_f1")
    cfg = load_preset("smoke")
    bad = dataclasses.replace(cfg, rounds=dataclasses.replace(cfg.rounds, n_max=cfg.generation.n_candidates + 1))
    with pytest.raises(ConfigError, match="rounds.n_max"):
        preflight.check(bad, [7])
    preflight.check(bad, [6])                                  # only notebook 07 reads it


def test_round_config_sets_the_sft_weight():
    cfg = load_preset("smoke")
    assert R.round_config(cfg).dpo.loss_type == ("sigmoid", "sft")
    plain = dataclasses.replace(cfg, rounds=dataclasses.replace(cfg.rounds, sft_weight=0.0))
    assert R.round_config(plain).dpo.loss_type == ("sigmoid",) and R.round_config(plain).dpo.loss_weights == (1.0,)
    assert R.settings_key(cfg, {"00_world": "a"}) != R.settings_key(plain, {"00_world": "a"})
    assert R.settings_key(cfg, {"00_world": "a"}) != R.settings_key(cfg, {"00_world": "b"})
    more = dataclasses.replace(cfg, rounds=dataclasses.replace(cfg.rounds, bootstrap=500))
    assert R.settings_key(cfg, {}) == R.settings_key(more, {})   # the bootstrap changes no model


def _frame_and_boot(yes, kl, conf_wrong=(0.6, 0.5)):
    """Two rules × 2 rounds; yes/kl: per rule, the values of rounds 1 and 2."""
    from m3po_utils.rules import label
    from m3po_utils.stats import Bootstrap

    rows = [{"rule": "base", "round": 0, "val_yes_ratio": 0.6, "kl_to_base": 0.0, "pool_pass1": 0.3,
             "confident_wrong": conf_wrong[0], "hard_negative_rate": float("nan")}]
    for s in ("m3po", "best_worst"):
        for r in (1, 2):
            rows.append({"rule": label(s), "round": r, "val_yes_ratio": yes[s][r - 1], "kl_to_base": kl[s][r - 1],
                         "pool_pass1": 0.3 + 0.1 * (r - 1), "confident_wrong": conf_wrong[r - 1],
                         "hard_negative_rate": 0.5})
    names = [R.BASE] + [R.label(s, r) for s in ("m3po", "best_worst") for r in (1, 2)]
    draws = {n: {k: np.linspace(-1, 1, 101) * 0.001 + i for k in R.METRICS} for i, n in enumerate(names)}
    point = {n: {k: float(d[k].mean()) for k in R.METRICS} for n, d in draws.items()}
    return pd.DataFrame(rows), Bootstrap(point, draws, 0.95)


def test_round_lines_say_what_was_measured():
    frame, boot = _frame_and_boot({"m3po": (0.55, 0.5), "best_worst": (0.5, 0.52)},
                                  {"m3po": (0.1, 0.2), "best_worst": (0.3, 0.2)})
    chosen = {"m3po": {"round": 2, "value": 0.7, "criterion": "score"},
              "best_worst": {"round": 1, "value": 0.6, "criterion": "score"}}
    lines = R.round_lines(frame, chosen, boot, "score")
    text = " ".join(lines)
    assert "falls in every round for 1 of 2 rules" in text
    assert "grows in every round for 1 of 2 rules" in text
    assert "M3PO keeps round 2 of 2" in text and "the last round" in text
    assert "no later round raised its validation score" in text           # round 1 kept: no comparison claimed
    assert "fewer confident mistakes left" in text                         # the share fell: 60 % -> 50 %
    # a tie on the pool share is not a fall
    frame2, boot2 = _frame_and_boot({"m3po": (0.5, 0.5), "best_worst": (0.5, 0.5)},
                                    {"m3po": (0.1, 0.1), "best_worst": (0.1, 0.1)}, conf_wrong=(0.5, 0.5))
    text2 = " ".join(R.round_lines(frame2, chosen, boot2, "score"))
    assert "falls in every round for 0 of 2" in text2 and "grows in every round for 0 of 2" in text2
    assert "did not use them up" in text2 and "fewer confident mistakes" not in text2


def test_a_hub_preset_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="needs the shapes world"):
        R.Rounds("runs/none", load_preset("llava-1.5-7b"))


def test_where_the_adaptive_rule_spent_names_ties_and_never_a_false_most():
    assert R.spend_sentence({"color": 4.0, "count": 4.0}) == ("The adaptive rule spent the same on every family "
                                                              "(4.0 candidates per prompt).")
    text = R.spend_sentence({"color": 10.3, "describe": 15.2, "fmt_start": 15.2, "count": 11.0})
    assert text.startswith("The adaptive rule spent most on describe and fmt_start (15.2")
    assert "least on color (10.3)" in text
