"""Notebook 05 under the smoke preset (shared ``smoke_run`` series): every strategy trained on one budget."""

import math

import pytest

from m3po_utils import dpo as D
from m3po_utils.config import load_preset
from m3po_utils.io import load_results
from m3po_utils.selection import STRATEGIES

pytestmark = pytest.mark.notebooks


def test_05_dpo(smoke_run):
    r = load_results(smoke_run, "05_dpo")
    cfg = load_preset("smoke")
    assert r["complete"] is True and r["preset"] == "smoke"
    assert set(r["strategies"]) == set(STRATEGIES)                       # best_of_n (SFT-only) always trained
    assert 1 <= r["pairs_per_strategy"] <= cfg.dpo.max_pairs
    assert r["steps"] == D.steps_for(r["pairs_per_strategy"], cfg.dpo)
    for s in STRATEGIES:
        info = D.load_training_info(smoke_run, s)
        assert info["complete"] is True
        assert (info["pairs"], info["steps"]) == (r["pairs_per_strategy"], r["steps"])   # equal budget
        assert (D.adapters_dir(smoke_run, s) / D.ADAPTER_FILE).is_file()
        assert len(D.load_training_log(smoke_run, s)) == r["steps"]
        row = r["strategies"][s]
        assert math.isfinite(row["final_loss"])
        if s == "best_of_n":
            assert row["loss_type"] == "sft" and row["final_reward_accuracy"] is None
        else:
            assert row["loss_type"] == "+".join(cfg.dpo.loss_type)
            assert 0.0 <= row["final_reward_accuracy"] <= 1.0
    assert 0.0 < r["retokenisation_match_share"] <= 1.0
    assert r["reference_check"]["max_abs_diff"] < 1e-4
    n_layers = cfg.lvlm_train.text_layers
    assert r["lora"]["lora_modules"] == {"language_model": len(cfg.dpo.lora_targets) * n_layers}  # never the vision tower
    assert 0 < r["lora"]["trainable_share"] < 0.05
    assert set(r["validation"]) == {"base", *STRATEGIES}
