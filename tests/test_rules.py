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
    assert rules.truth_names() == ("oracle",) and rules.sft_only_names() == ("best_of_n",)
    assert rules.label("base") == "SFT base" and rules.label("m3po") == "M3PO"
    assert all(r.source and r.doc for r in rules.RULES.values())      # every shipped rule says where it comes from


def test_a_new_rule_is_one_registration_and_every_reader_sees_it(new_rule):
    # settings: accepted by name in the strategies to train and the methods to evaluate; not in the defaults
    cfg = load_preset("smoke", {"dpo.strategies": "('m3po', 'wbc')", "evaluation.methods": "('base', 'wbc')"})
    assert cfg.dpo.strategies == ("m3po", "wbc")
    assert "wbc" not in load_preset("smoke").dpo.strategies
    # notebook 04's selection applies it beside the others, with the skips every rule shares
    sels = S.select_all(_groups(), 0.5, 0.1, 0.05)
    assert "wbc" in sels
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
