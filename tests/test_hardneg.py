"""Notebook 11's logic by hand: conditions, pair budgets, the mechanism, verdicts, predictions and the generated
paragraph, with their edge cases planted (no training here; the smoke run of the notebook is in
tests/test_nb11_hard_negatives.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from m3po_utils import hardneg as H
from m3po_utils import rules
from m3po_utils.config import ConfigError, HardNegConfig, load_preset, parse_assessor

# ------------------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize("spec,parsed", [("truth", ("truth", 0.0)), ("self", ("self", 0.0)), ("yes:0.3", ("yes", 0.3)),
                                         ("lownoise:1", ("lownoise", 1.0)), ("vw:0.9", ("vw", 0.9))])
def test_assessor_specs(spec, parsed):
    assert parse_assessor(spec) == parsed


@pytest.mark.parametrize("spec", ["oracle", "yes", "truth:1", "prior:1.5", "noise:-1", "noise:nan", "short:x",
                                  "vw:inf"])
def test_bad_assessor_specs_are_named(spec):
    with pytest.raises(ValueError, match="assessor"):
        parse_assessor(spec)


def test_settings_are_checked_with_the_fix_named():
    with pytest.raises(ConfigError, match="hardneg.experiments"):
        HardNegConfig(experiments=("E9",))
    with pytest.raises(ConfigError, match="hardneg.assessors"):
        HardNegConfig(assessors=("gpt",))
    with pytest.raises(ConfigError, match="hardneg.alphas"):
        HardNegConfig(alphas=(0.0,))
    with pytest.raises(ConfigError, match="hardneg.confidences"):
        HardNegConfig(confidences=("max",))
    with pytest.raises(ConfigError, match="hardneg.seeds"):
        HardNegConfig(seeds=(0, 0))


def test_the_plan_holds_each_experiments_conditions_for_every_seed():
    cfg = load_preset("shapes")
    hc = cfg.hardneg
    e1 = H.plan(cfg, ["E1"])
    assert len(e1) == len(hc.seeds) * len(hc.sft_weights) * 6
    assert {c.setting for c in e1} == {f"SFT weight {w:g}" for w in hc.sft_weights}
    e4 = H.plan(cfg, ["E4"])
    assert len(e4) == len(hc.seeds) * 2 * len(hc.alphas) * len(hc.confidences)
    assert all(c.sft_weight == hc.sensitive_weight for c in H.plan(cfg, ["E1_options", "E2", "E3", "E4", "E5"]))
    e2 = H.plan(cfg, ["E2"])
    assert {c.pairs for c in e2} == {*hc.budgets, 0} and {c.order for c in e2} == {"rule", "random"}
    e3 = {c.assessor for c in H.plan(cfg, ["E3"])}
    assert e3 == {"truth", *hc.assessors}
    with pytest.raises(ValueError, match="unknown experiments"):
        H.plan(cfg, ["E7"])


def test_a_condition_names_what_changes_its_pairs():
    assert H.Condition("E1", "x", "m3po").method == "M3PO"
    assert H.Condition("E1", "x", "m3po", opposite_verdict=True).method == "M3PO (opposite verdict)"
    assert H.Condition("E1", "x", "m3po", confidence="mean").method == "M3PO (mean log P)"
    assert H.Condition("E1", "x", "best_worst", confidence="mean").method == rules.label("best_worst")
    with pytest.raises(ValueError, match="strategy"):
        H.Condition("E1", "x", "dpo")
    with pytest.raises(ValueError, match="order"):
        H.Condition("E1", "x", "m3po", order="best")


def test_the_loss_of_a_condition():
    cfg = load_preset("smoke")
    c1 = H.condition_config(cfg, H.Condition("E1", "x", "m3po", sft_weight=0.1, seed=3))
    assert c1.dpo.loss_type == ("sigmoid", "sft") and c1.dpo.loss_weights == (1.0, 0.1) and c1.dpo.seed == 3
    c0 = H.condition_config(cfg, H.Condition("E1", "x", "m3po", sft_weight=0.0))
    assert c0.dpo.loss_type == ("sigmoid",) and c0.dpo.loss_weights == (1.0,)
    assert c1.selection.seed == 3


# ------------------------------------------------------------------------------------------------ budgets

def _sel(priorities: list[float], skipped: int = 0) -> tuple[rules.Selection, dict]:
    """Prompts p0.. with one pair each whose rule score gives ``priorities`` (MAS(Rw) = 1, s-score = 1 − p)."""
    choices, groups = [], {}
    for i, p in enumerate(priorities):
        pid = f"p{i}"
        groups[pid] = {"mas": np.array([1.0, 0.2]), "text": ["a", "b"], "logp": np.array([-1.0, -2.0])}
        choices.append(rules.PromptChoice(pid, [(0, 1)], s_scores=[1.0 - p]))
    choices += [rules.PromptChoice(f"s{i}", skip="all_mas_equal") for i in range(skipped)]
    return rules.Selection("m3po", 0.5, 0.1, choices), groups


def test_a_budget_keeps_the_prompts_the_rule_values_most():
    sel, groups = _sel([0.1, 0.9, 0.5, 0.7], skipped=2)
    cut = H.budget(sel, groups, 2, "rule", 0)
    assert [c.prompt_id for c in cut.choices if c.pairs] == ["p1", "p3"]
    assert cut.n_pairs == 2 and cut.skipped["all_mas_equal"] == 2          # skips stay counted
    assert H.budget(sel, groups, 10, "rule", 0).n_pairs == 4               # K above the pairs: all of them


def test_a_random_budget_is_seeded_and_differs_by_seed():
    sel, groups = _sel(list(np.linspace(0, 1, 40)))
    a = [c.prompt_id for c in H.budget(sel, groups, 10, "random", 0).choices if c.pairs]
    assert a == [c.prompt_id for c in H.budget(sel, groups, 10, "random", 0).choices if c.pairs]
    b = [c.prompt_id for c in H.budget(sel, groups, 10, "random", 1).choices if c.pairs]
    assert a != b and len(set(a)) == 10
    rule = [c.prompt_id for c in H.budget(sel, groups, 10, "rule", 0).choices if c.pairs]
    assert rule == [f"p{i}" for i in range(39, 29, -1)]


def test_pair_priority_without_a_rule_score_is_the_mas_gap():
    g = {"mas": np.array([0.9, 0.3])}
    assert H.pair_priority(rules.PromptChoice("p", [(0, 1)]), g) == pytest.approx(0.6)
    assert H.pair_priority(rules.PromptChoice("p", [(0, 1)], s_scores=[0.5]), g) == pytest.approx(0.4)
    assert H.pair_priority(rules.PromptChoice("p", [(0, None)]), g) == pytest.approx(0.9)


# ------------------------------------------------------------------------------------------------ the mechanism

def test_mechanism_counts_against_best_vs_worst_by_hand():
    groups = {
        "e": {"text": ["Yes, a red circle.", "Yes, a blue circle.", "No."], "mas": np.array([1.0, .5, 0.]),
              "logp": np.zeros(3)},
        "c": {"text": ["Red.", "Blue.", "Green."], "mas": np.array([1.0, .2, 0.]), "logp": np.zeros(3)},
    }
    truth = {"e": np.array([1.0, 0.5, 0.0]), "c": np.array([0.0, 1.0, 0.0])}
    fam = {"e": "existence", "c": "color"}
    m3 = rules.Selection("m3po", .5, .1, [rules.PromptChoice("e", [(0, 1)]), rules.PromptChoice("c", [(0, 1)])])
    bw = rules.Selection("best_worst", 0, .1, [rules.PromptChoice("e", [(0, 2)]), rules.PromptChoice("c", [(0, 2)])])
    m = H.mechanism(m3, bw, groups, truth, fam)
    assert m["pairs"] == 2 and m["same_pair_as_bvw"] == 0 and m["same_rejected_as_bvw"] == 0
    assert m["same_rejected_verdict_as_bvw"] == 0.0              # existence: "Yes" vs "No"
    assert m["existence_rejected_yes"] == 1.0
    assert m["inverted"] == 0.5 and m["rejected_fully_right"] == 0.5   # "Blue." is right, "Red." wrong
    same = H.mechanism(bw, bw, groups, truth, fam)
    assert same["same_pair_as_bvw"] == 1.0 and same["same_rejected_verdict_as_bvw"] == 1.0
    assert H.mechanism(rules.Selection("m3po", .5, .1, []), bw, groups, truth, fam) == {"pairs": 0.0}


def test_training_summary_reads_the_last_steps_of_trls_log():
    log = [{"loss": 0.7, "rewards/margins": 0.0, "rewards/accuracies": 0.5, "rewards/chosen": 0.0,
            "rewards/rejected": 0.0}] * 5 + \
          [{"loss": 0.5, "rewards/margins": 0.2, "rewards/accuracies": 1.0, "rewards/chosen": -0.1,
            "rewards/rejected": -0.3}] * 10 + [{"train_runtime": 3.0}]
    s = H.training_summary(log, beta=0.1)
    assert s == pytest.approx({"margin": 0.2, "reward_accuracy": 1.0, "chosen_drift_nats": -1.0,
                               "rejected_drift_nats": -3.0, "final_loss": 0.5})
    assert H.training_summary([], 0.1) == {}


# ------------------------------------------------------------------------------------------------ verdicts

def _row(f1, lo, hi, mme=0.0, mlo=-1.0, mhi=1.0):
    return {"f1": f1, "f1_lo": lo, "f1_hi": hi, "mme": mme, "mme_lo": mlo, "mme_hi": mhi}


def test_verdict_needs_size_and_interval_on_every_base():
    assert H.verdict([_row(0.02, 0.005, 0.03)]) == "helps"
    assert H.verdict([_row(0.009, 0.005, 0.012)]) == "no clear difference"     # under 1 point
    assert H.verdict([_row(0.02, -0.001, 0.04)]) == "no clear difference"      # interval touches 0
    assert H.verdict([_row(0.0, -0.01, 0.01, mme=12, mlo=2, mhi=20)]) == "helps"    # MME alone suffices
    assert H.verdict([_row(-0.05, -0.07, -0.03)]) == "hurts"
    assert H.verdict([_row(0.02, 0.01, 0.03), _row(-0.02, -0.03, -0.01)]) == "mixed"
    assert H.verdict([_row(0.02, 0.01, 0.03), _row(0.0, -0.01, 0.01)]) == "no clear difference"
    assert H.verdict([_row(-0.02, -0.03, -0.01), _row(-0.02, -0.03, -0.01)]) == "hurts"
    # one metric up, the other down on the same base: neither
    assert H.verdict([_row(0.02, 0.01, 0.03, mme=-15, mlo=-20, mhi=-10)]) == "no clear difference"
    with pytest.raises(ValueError):
        H.verdict([])


@pytest.mark.parametrize("expect,tol,lo,hi,out", [
    ("<0", 0, -0.03, -0.01, "as predicted"), ("<0", 0, -0.03, 0.01, "not shown"), ("<0", 0, 0.01, 0.03, "opposite"),
    (">0", 0, 0.01, 0.03, "as predicted"), (">0", 0, -0.03, -0.01, "opposite"),
    ("~0", 0.01, -0.005, 0.008, "as predicted"), ("~0", 0.01, -0.005, 0.02, "not shown"),
    ("~0", 0.01, 0.015, 0.02, "opposite"), ("~0", 0.01, -0.03, -0.02, "opposite")])
def test_prediction_outcomes(expect, tol, lo, hi, out):
    ch = H.Check("s", "m3po", "best_worst", H.F1, expect, tol)
    assert H.outcome(ch, (lo + hi) / 2, lo, hi) == out


def test_every_prediction_names_a_setting_its_experiment_runs():
    cfg = dataclasses.replace(load_preset("shapes"))
    for p in H.PREDICTIONS:
        settings = {(c.setting, c.strategy) for c in H.plan(cfg, [p.experiment])}
        for ch in p.checks:
            assert (ch.setting, ch.a) in settings, (p.experiment, ch)
            assert (ch.setting, ch.b) in settings, (p.experiment, ch)
            assert ch.metric in H.METRICS


# ------------------------------------------------------------------------------------------------ the map in words

def _map(rows):
    cols = dict(same_pair_as_bvw=0.5, same_rejected_verdict_as_bvw=0.9, margin_m3po=0.1, margin_bvw=0.2,
                chosen_drift_m3po=-2.0, chosen_drift_bvw=-1.0, yes_ratio_m3po=0.4, yes_ratio_bvw=0.5)
    return [dict(cols) | r for r in rows]


def test_the_paragraph_counts_only_conditions_run_on_every_base():
    a = _map([{"experiment": "E1", "setting": "SFT weight 0", "method": "M3PO", **_row(-0.05, -0.07, -0.03)},
              {"experiment": "E1", "setting": "SFT weight 1", "method": "M3PO", **_row(0.0, -0.01, 0.01)}])
    b = _map([{"experiment": "E1", "setting": "SFT weight 0", "method": "M3PO", **_row(-0.04, -0.06, -0.02)}])
    df = H.combine_bases({"seed-0 base": a, "seed-1 base": b})
    assert df.set_index(["base", "setting"]).loc[("seed-0 base", "SFT weight 1"), "verdict (all bases)"] == \
        "not run on every base"
    text = H.map_paragraph(df, 2)
    assert "Of the 1 condition measured on both bases" in text
    assert "hurts in 1" in text and "It hurts in: SFT weight 0 (M3PO)" in text
    assert "chosen answers end with less likelihood in 2 of 2 cells" in text
    assert "learnt margin is smaller in 2 of 2" in text and "yes-ratio is lower in 2 of 2" in text
    assert "same yes/no verdict as best-vs-worst's on 90 % of prompts and is the same pair on 50 %" in text
    assert "helps in 0" in text and "It helps in" not in text


def test_the_paragraph_on_one_base_says_so_and_an_empty_map_says_so():
    a = _map([{"experiment": "E1", "setting": "SFT weight 1", "method": "M3PO", **_row(0.0, -0.01, 0.01)}])
    df = H.combine_bases({"seed-0 base": a})
    text = H.map_paragraph(df, 1)
    assert "on this one base" in text and "no clear difference in 1" in text
    assert "detects" not in text                                   # no MDE recorded: no sentence about it
    df["f1_mde"], df["mme_mde"] = 0.012, 14.0
    assert "detects a difference of 1.2 F1 points or 14 MME with 80 % power" in H.map_paragraph(df, 1)
    assert "best-vs-worst's on 50 % of prompts" in text
    df["same_pair_as_bvw"] = 0.9996                                 # a share below 1 never prints as 100 %
    assert "on more than 99 % of prompts" in H.map_paragraph(df, 1)
    assert "empty" in H.map_paragraph(pd.DataFrame(), 1)
    assert "stay as they are" in H.defaults_advice(df, load_preset("shapes"))


def test_defaults_advice_names_a_helping_condition():
    a = _map([{"experiment": "E3", "setting": "assessor self", "method": "M3PO", **_row(0.02, 0.01, 0.03)}])
    df = H.combine_bases({"seed-0 base": a})
    assert "helps on this base in: assessor self (M3PO)" in H.defaults_advice(df, load_preset("shapes"))
    assert "helps in 1" in H.map_title(df, 1)


def test_spearman_by_hand():
    assert H.spearman(np.array([1, 2, 3, 4.0]), np.array([10, 20, 30, 40.0])) == pytest.approx(1.0)
    assert H.spearman(np.array([1, 2, 3, 4.0]), np.array([4, 3, 2, 1.0])) == pytest.approx(-1.0)
    # ties share the average rank: ranks (1.5, 1.5, 3) against (1, 2, 3)
    assert H.spearman(np.array([0, 0, 1.0]), np.array([1, 2, 3.0])) == pytest.approx(np.corrcoef([1.5, 1.5, 3], [1, 2, 3])[0, 1])
    assert np.isnan(H.spearman(np.array([1, 1, 1.0]), np.array([1, 2, 3.0])))
    assert np.isnan(H.spearman(np.array([1.0, 2]), np.array([1.0, 2])))


def test_every_default_assessor_builds_its_judge():
    """Each of notebook 11's assessors turns into the local judge's settings (a noise of 2 is no verdict weight)."""
    from m3po_utils.config import HardNegConfig

    for spec in ("truth", *HardNegConfig().assessors, "vw:0.9"):
        noise, a = H.assessor_of(spec)
        assert noise >= 0
    assert H.assessor_of("noise:2")[0] == 2.0 and H.assessor_of("noise:2")[1].name == "truth"
    noise, a = H.assessor_of("lownoise:1")
    assert noise == 1.0 and a.noise_per_nat == 1.0 and a.needs_model
    assert H.assessor_of("vw:0.9")[1].verdict_weight == 0.9 and H.assessor_of("yes:0.3")[1].strength == 0.3
    assert H.assessor_of("self")[1].needs_model and H.assessor_of("prior:0.5")[1].name == "prior"
