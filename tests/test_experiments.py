"""Notebook 10's sweep logic: the plan, per-point settings and the cache key that dedupes and resumes."""

import numpy as np
import pandas as pd
import pytest

from m3po_utils import experiments as X
from m3po_utils import selection as S
from m3po_utils.config import ConfigError, load_preset


def test_plan_covers_every_experiment_for_every_seed():
    cfg = load_preset("shapes")
    ec = cfg.experiments
    pts = X.plan(cfg)
    by = pd.Series([p.experiment for p in pts]).value_counts().to_dict()
    n = len(ec.seeds)
    assert by == {"grid": n * len(ec.alphas) * len(ec.deltas), "noise": n * (len(ec.noise_levels) + 2),
                  "budget": n * len(ec.budgets), "negatives": 4 * n}
    assert len({(p.experiment, p.setting, p.seed) for p in pts}) == len(pts)
    grid = {(p.alpha, p.delta) for p in pts if p.experiment == "grid"}
    assert (cfg.selection.alpha, cfg.selection.delta) in grid and (0.0, 0.1) in grid
    neg = {p.setting: p for p in pts if p.experiment == "negatives" and p.seed == 0}
    assert neg["best-of-N SFT"].loss == "sft" and neg["best-of-N SFT"].strategy == "best_of_n"
    assert neg["M3PO DPO (no SFT term)"].loss == "dpo" and neg["random negatives DPO+SFT"].strategy == "random"


def test_smoke_plan_is_a_two_by_two_grid():
    pts = X.plan(load_preset("smoke"))
    assert len([p for p in pts if p.experiment == "grid"]) == 4


def test_point_config_sets_loss_and_seed():
    cfg = load_preset("shapes")
    c = X.point_config(cfg, X.Point("negatives", "x", loss="dpo", seed=3))
    assert c.dpo.loss_type == ("sigmoid",) and c.dpo.loss_weights == (1.0,) and c.dpo.seed == 3
    assert c.selection.seed == 3 and c.dpo.learning_rate == cfg.dpo.learning_rate
    c = X.point_config(cfg, X.Point("grid", "x"))
    assert c.dpo.loss_type == cfg.dpo.loss_type


def test_bad_points_and_settings_are_refused():
    with pytest.raises(ValueError, match="loss="):
        X.Point("grid", "x", loss="ppo")
    with pytest.raises(ValueError, match="mas="):
        X.Point("grid", "x", mas="gpt")
    with pytest.raises(ConfigError, match="experiments.budgets"):
        load_preset("smoke", {"experiments.budgets": [1, 4]})
    with pytest.raises(ConfigError, match="experiments.alphas"):
        load_preset("smoke", {"experiments.alphas": [0.5, 0.5]})


@pytest.fixture()
def groups():
    rng = np.random.default_rng(0)
    rows = []
    for p in range(30):
        for c in range(6):
            rows.append({"prompt_id": f"p{p:02d}", "cand_idx": c, "text": f"answer {p} {c}",
                         "mas": float(rng.random()), "logprob_sum": float(-20 * rng.random())})
    return S.group_candidates(pd.DataFrame(rows))


def test_point_key_dedupes_same_pairs_and_separates_the_rest(groups):
    cfg = load_preset("shapes")

    def key(p):
        sel = S.select(groups, p.strategy, p.alpha, p.delta, 0.0, 1, p.seed)
        return X.point_key(p, sel, cfg, "q", 100)

    a0 = key(X.Point("grid", "a", alpha=0.0, delta=0.0))
    assert a0 == key(X.Point("grid", "b", alpha=0.0, delta=0.2))            # α = 0: δ cannot matter
    assert a0 != key(X.Point("grid", "c", alpha=2.0, delta=0.0))            # other negatives
    assert a0 != key(X.Point("grid", "a", alpha=0.0, delta=0.0, seed=1))    # another training seed
    assert a0 != key(X.Point("grid", "a", alpha=0.0, delta=0.0, loss="dpo"))
    sel = S.select(groups, "m3po", 0.0, 0.0, 0.0, 1, 0)
    assert X.point_key(X.Point("grid", "a", alpha=0.0), sel, cfg, "q", 100) != \
        X.point_key(X.Point("grid", "a", alpha=0.0), sel, cfg, "other questions", 100)


def test_sweep_refuses_a_hub_preset(tmp_path):
    cfg = load_preset("llava-1.5-7b")
    with pytest.raises(ValueError, match="shapes world's ground truth"):
        X.run_sweep(tmp_path, cfg, X.plan(cfg)[:1], {}, progress=False)
