"""The registry of pair-selection rules: a new rule is one entry in one place, and everything reads it."""

import numpy as np
import pandas as pd
import pytest

from m3po_utils import evaluation as C
from m3po_utils import rules
from m3po_utils import selection as S
from m3po_utils.config import ConfigError, load_preset
from m3po_utils.stats import Bootstrap


def _worst_vs_best_by_confidence(pool: rules.Pool):
    """A deliberately trivial rule: the chosen answer is the one the model is *least* sure of among the best-MAS
    ones, the rejected one its *most* confident answer with a lower MAS."""
    top = np.flatnonzero(pool.mas == pool.mas.max())
    w = int(top[np.argmin(pool.logp[top])])
    lower = np.flatnonzero(pool.mas < pool.mas[w] - pool.min_margin)
    if lower.size == 0:
        return []
    return [(w, int(lower[np.argmax(pool.logp[lower])]), float("nan"))]


@pytest.fixture
def new_rule():
    """The rule registered the way a contributor would (one ``register`` call), and removed again afterwards."""
    rule = rules.register(rules.Rule("wbc", "worst-vs-best by confidence", _worst_vs_best_by_confidence,
                                     source="a test", doc="least-confident best answer vs most-confident worse one"))
    yield rule
    del rules.RULES[rule.name]


def _groups():
    return {"p0": {"idx": np.arange(4), "text": ["a", "b", "c", "d"], "mas": np.array([0.9, 0.9, 0.2, 0.5]),
                   "logp": np.array([-1.0, -3.0, -0.5, -2.0])},
            "p1": {"idx": np.arange(2), "text": ["x", "x"], "mas": np.array([0.9, 0.1]), "logp": np.array([-1.0, -2.0])}}


def test_the_default_series_is_read_from_the_registry():
    cfg = load_preset("shapes")
    assert cfg.dpo.strategies == rules.main_names() == ("m3po", "best_worst", "random", "best_of_n", "oracle")
    assert cfg.evaluation.methods == ("base", "best_of_n", "random", "best_worst", "m3po", "oracle")
    assert rules.truth_names() == ("oracle", "oracle_neutral") and rules.sft_only_names() == ("best_of_n",)
    assert rules.label("base") == "SFT base" and rules.label("m3po") == "M3PO"
    assert all(r.source and r.doc for r in rules.RULES.values())      # every shipped rule says where it comes from


def test_a_new_rule_is_one_registration_and_every_reader_sees_it(new_rule):
    # settings: accepted by name in the strategies to train and the methods to evaluate; not in the defaults
    cfg = load_preset("smoke", {"dpo.strategies": "('m3po', 'wbc')", "evaluation.methods": "('base', 'wbc')"})
    assert cfg.dpo.strategies == ("m3po", "wbc")
    assert "wbc" not in load_preset("smoke").dpo.strategies
    # notebook 04's selection applies it beside the others, with the skips every rule shares
    sels = S.select_all(_groups(), 0.5, 0.1, 0.05, strategies=cfg.dpo.strategies)
    assert set(sels) == {"m3po", "wbc", "best_of_n"}
    assert sels["wbc"].choices[0].pairs == [(1, 2)]        # least confident of the two best, most confident worse
    assert sels["wbc"].choices[1].skip == "fewer_than_two_distinct"
    # tables and sentences name it by its label
    point = {m: {"mme_total": 1.0} for m in ("base", "wbc")}
    boot = Bootstrap(point, {m: {"mme_total": np.ones(10)} for m in point}, 0.95)
    assert "worst-vs-best by confidence" in C.comparison_table(boot, ["mme_total"]).index
    assert rules.table_order(("wbc", "m3po", "base")) == ("base", "m3po", "wbc")


def test_unknown_and_reserved_names_are_refused():
    with pytest.raises(ConfigError, match="dpo.strategies"):
        load_preset("smoke", {"dpo.strategies": "('m3po', 'nope')"})
    with pytest.raises(ValueError, match="already registered"):
        rules.register(rules.Rule("m3po", "again", rules.RULES["m3po"].pick))
    with pytest.raises(ValueError, match="other than 'base'"):
        rules.Rule("base", "the base", rules.RULES["m3po"].pick)
    with pytest.raises(ValueError, match="strategy='nope' is unknown"):
        rules.select(_groups(), "nope")


def test_the_registry_rules_choose_what_they_did_before_the_registry():
    """The shipped rules on hand-worked candidates (the M3P-Score's worked example: Rw = the best MAS, ties by
    log P; M3PO rejects the confident wrong answer, best-vs-worst the worst one)."""
    g = {"p": {"idx": np.arange(4), "text": ["right", "confident wrong", "unlikely wrong", "half"],
               "mas": np.array([0.95, 0.30, 0.10, 0.60]), "logp": np.array([-2.0, -1.5, -9.0, -4.0])}}
    assert rules.select(g, "m3po", 0.5, 0.1).choices[0].pairs == [(0, 1)]
    assert rules.select(g, "best_worst", 0.5, 0.1).choices[0].pairs == [(0, 2)]
    assert rules.select(g, "best_of_n").choices[0].pairs == [(0, None)]
    truth = {"p": np.array([1.0, 0.0, 0.5, 0.2])}
    assert rules.select(g, "oracle", truth=truth).choices[0].pairs == [(0, 1)]    # worst by the verifier
    w, lo = rules.select(g, "random", seed=3).choices[0].pairs[0]
    assert g["p"]["mas"][w] > g["p"]["mas"][lo]                                    # ordered by MAS
    assert S.strategy_table(g, {"best_of_n": rules.select(g, "best_of_n")}).loc["best_of_n", "pairs"] == 1
    assert isinstance(S.strategy_table(g, {"m3po": rules.select(g, "m3po")}), pd.DataFrame)


# ------------------------------------------------------------------------------------------ controls and peers

def _g(mas, logp, texts=None, **info):
    n = len(mas)
    return {"p": {"idx": np.arange(n), "text": texts or [f"answer {i}" for i in range(n)],
                  "mas": np.asarray(mas, float), "logp": np.asarray(logp, float), **info}}


def test_anti_m3po_turns_the_confidence_term_round():
    """Rw = 0 (MAS 0.9). Wrong answers: 1 (MAS 0.2, log P −1.0, as likely as Rw), 2 (MAS 0.3, −8.0), 3 (MAS 0.1,
    −3.0). M3PO at α 0.5: S = gap − 0.5·max(0, −1 − lp − 0.1) = 1: 0.7, 2: 0.6 − 3.45 < 0, 3: 0.8 − 0.95 < 0 → 1.
    Anti: S = gap + 0.5·deficit = 1: 0.7, 2: 0.6 + 3.45 = 4.05, 3: 0.8 + 0.95 = 1.75 → 2, the least likely."""
    g = _g([0.9, 0.2, 0.3, 0.1], [-1.0, -1.0, -8.0, -3.0])
    assert rules.select(g, "m3po", 0.5, 0.1).choices[0].pairs == [(0, 1)]
    assert rules.select(g, "anti_m3po", 0.5, 0.1).choices[0].pairs == [(0, 2)]
    assert rules.select(g, "anti_m3po", 0.0, 0.1).choices[0].pairs == [(0, 3)]       # α = 0: best-vs-worst


def test_the_neutral_oracle_breaks_ties_by_position_not_by_log_p():
    g = _g([0, 0, 0, 0], [-5.0, -1.0, -9.0, -2.0])
    truth = {"p": np.array([1.0, 1.0, 0.0, 0.0])}
    assert rules.select(g, "oracle", truth=truth).choices[0].pairs == [(1, 3)]           # likelier of the ties
    assert rules.select(g, "oracle_neutral", truth=truth).choices[0].pairs == [(0, 2)]   # first of the ties


def test_unfiltered_random_pairs_keep_what_the_margin_would_drop():
    g = _g([0.50, 0.52, 0.51], [-1.0, -2.0, -3.0])
    assert rules.select(g, "random", min_margin=0.05).choices[0].skip == "margin_below_min"
    w, lo = rules.select(g, "random_raw", min_margin=0.05, seed=1).choices[0].pairs[0]
    assert g["p"]["mas"][w] >= g["p"]["mas"][lo]                                          # ordered by MAS


def test_opposite_verdict_keeps_the_negative_on_the_other_side_of_yes_or_no():
    """Rw "Yes, red" (MAS 1). A "Yes" with a wrong clause (MAS 0.5, as likely) is M3PO's pick; restricted to the
    opposite verdict, the "No" (MAS 0.2, log P −6) is taken even though it is less likely."""
    g = _g([1.0, 0.5, 0.2], [-1.0, -1.0, -6.0], ["Yes, red.", "Yes, blue.", "No."], verdict=["yes", "yes", "no"])
    assert rules.select(g, "m3po", 0.5, 0.1).choices[0].pairs == [(0, 1)]
    assert rules.select(g, "m3po", 0.5, 0.1, opposite_verdict=True).choices[0].pairs == [(0, 2)]
    assert rules.select(g, "best_worst", 0.5, 0.1, opposite_verdict=True).choices[0].pairs == [(0, 2)]


def test_rank_confidence_puts_alpha_on_one_scale():
    import pandas as pd

    table = pd.DataFrame({"prompt_id": ["p"] * 4, "cand_idx": range(4), "text": list("abcd"),
                          "mas": [0.9, 0.2, 0.3, 0.1], "logprob_sum": [-1.0, -30.0, -2.0, -2.0],
                          "logprob_mean": [-0.1, -3.0, -0.2, -0.2]})
    g = rules.group_candidates(table, "rank")["p"]
    assert g["logp"].tolist() == [1.0, 0.0, 0.5, 0.5]              # most likely 1, ties share the rank


def test_csr_fuses_likelihood_and_clip_ranks():
    """Ranks (1/n best): log P per token [−0.1, −0.5, −0.2, −0.9] → [0.25, 0.75, 0.5, 1.0]; CLIP [0.2, 0.9, 0.8,
    0.1] → [0.75, 0.25, 0.5, 1.0]. Fused 0.1·lp + 0.9·clip: [0.70, 0.30, 0.50, 1.00] → chosen 1, rejected 3."""
    g = _g([0.5] * 4, [-1.0] * 4, logp_mean=np.array([-0.1, -0.5, -0.2, -0.9]),
           clip=np.array([0.2, 0.9, 0.8, 0.1]))        # the assessor ties everything: CSR does not read it
    c = rules.select(g, "csr").choices[0]
    assert c.pairs == [(1, 3)] and c.s_scores == [pytest.approx(0.7)]


def test_mu_minus_two_sigma_rejects_from_the_lower_tail_not_the_bottom():
    """MAS [1.0, 0.9, 0.8, 0.7, 0.6, 0.0]: μ = 0.667, σ = 0.330, μ − 2σ = 0.006 → the 0.0 answer; with a 0.3 in
    place of the 0.0 (μ = 0.717, σ = 0.242, target 0.232) the 0.3 — the nearest, not the minimum alone."""
    g = _g([1.0, 0.9, 0.8, 0.7, 0.6, 0.0], [-1.0] * 6)
    assert rules.select(g, "mu_2sigma", min_margin=0.05).choices[0].pairs == [(0, 5)]
    g = _g([1.0, 0.9, 0.8, 0.7, 0.6, 0.3, 0.05], [-1.0] * 7)   # μ = 0.621, σ = 0.318, target −0.015 → 0.05
    assert rules.select(g, "mu_2sigma", min_margin=0.05).choices[0].pairs == [(0, 6)]
    g = _g([1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.2], [-1.0] * 8)   # μ 0.769, σ 0.232, target 0.305 → 0.2
    assert rules.select(g, "mu_2sigma", min_margin=0.05).choices[0].pairs == [(0, 7)]


def test_rlaif_v_draws_pairs_by_the_margin_and_filters_the_data_set_by_length():
    g = _g([1.0, 0.5, 0.5, 0.0], [-1.0] * 4, ["a b", "c d", "e f", "g h i j k l m n o p"])
    sel = rules.select(g, "rlaif_v", min_margin=0.1, k=5, seed=0)
    kept = sel.choices[0].pairs
    # pairs with a MAS gap of at least 0.1: (0,1), (0,2), (0,3), (1,3), (2,3); those rejecting the 10-word answer
    # against a 2-word chosen one differ in length by (10 − 2) / 10 = 0.8 and are dropped when the filter's best
    # ratio keeps the mean lengths closest (the 2-word pairs alone: equal means)
    assert sorted(kept) == [(0, 1), (0, 2)]
