"""Notebook 05 under the smoke preset (shared ``smoke_run`` series): every strategy trained on one budget."""

import numpy as np
import pytest
import torch

from m3po_utils import dpo as D
from m3po_utils.config import load_preset
from m3po_utils.io import load_results
from m3po_utils.rules import main_names
from m3po_utils.rundir import RunDir

STRATEGIES = main_names()   # the rules the main series trains

pytestmark = pytest.mark.notebooks


def check_05_dpo(run):
    """Notebook 05's figures against what it wrote: pairs/, adapters/*/training_{info,log}.json, the base model."""
    r = load_results(run, "05_dpo")
    cfg = load_preset("smoke")
    dc = cfg.dpo
    assert r["complete"] is True and r["preset"] == "smoke"
    assert set(r["strategies"]) == set(STRATEGIES)                       # best_of_n (SFT-only) always trained
    n = min(len(RunDir(run).load_pairs(s)) for s in STRATEGIES)                # equal budget: the smallest pair set ...
    n = min(n, dc.max_pairs) if dc.max_pairs else n                     # ... capped by max_pairs
    assert r["pairs_per_strategy"] == n >= 1
    assert r["steps"] == D.steps_for(n, dc)
    full_batches = n % (dc.batch_size * dc.grad_accum) == 0
    infos = {s: D.load_training_info(run, s) for s in STRATEGIES}
    for s in STRATEGIES:
        info, log = infos[s], D.load_training_log(run, s)
        assert info["complete"] is True
        assert (info["pairs"], info["steps"]) == (n, r["steps"])          # equal budget
        assert (D.adapters_dir(run, s) / D.ADAPTER_FILE).is_file()
        assert len(log) == r["steps"]
        row = r["strategies"][s]
        assert row["final_loss"] == log[-1]["loss"] == info["final"]["loss"]
        assert row["last10_loss"] == pytest.approx(np.mean([x["loss"] for x in log[-10:]]), abs=1e-12)
        if s == "best_of_n":
            assert row["loss_type"] == "sft" and row["last10_accuracies"] is None
        else:
            assert row["loss_type"] == "+".join(dc.loss_type)
            acc = [x["rewards/accuracies"] for x in log]
            assert "final_reward_accuracy" not in row            # one step's share of a remainder batch: not shown
            assert row["last10_accuracies"] == pytest.approx(np.mean(acc[-10:]), abs=1e-12)
            if full_batches:                                              # a share of the step's pairs
                k = [a * dc.batch_size * dc.grad_accum for a in acc]
                assert k == pytest.approx([round(x) for x in k], abs=1e-6), (s, acc)

    # re-tokenisation: the DPO strategies' counts in their training info, and recounted from pairs/
    dpo_names = [s for s in STRATEGIES if s != "best_of_n"]
    for s in STRATEGIES:
        ref = infos[s]["reference"]
        assert ref["responses"] == 2 * n                                  # a chosen and a rejected per pair
        assert (r["retokenisation"][s]["matched"], r["retokenisation"][s]["responses"]) == (
            ref["matched"], ref["responses"])
    matched = sum(infos[s]["reference"]["matched"] for s in dpo_names)
    assert matched > 0
    assert r["retokenisation_match_share"] == pytest.approx(matched / (2 * n * len(dpo_names)), abs=1e-12)
    model, processor = D.base_loader(cfg, run)()
    prepared, n_prep = D.prepare_strategies(run, cfg, processor)
    assert n_prep == n
    assert {s: prepared[s].reference.matched for s in STRATEGIES} == {s: infos[s]["reference"]["matched"]
                                                                       for s in STRATEGIES}

    assert r["reference_check"]["max_abs_diff"] < 1e-4
    # LoRA size from the base model's own q/v projections: r * (d_in + d_out) per wrapped linear layer
    n_layers = cfg.lvlm_train.text_layers
    assert r["lora"]["lora_modules"] == {"language_model": len(dc.lora_targets) * n_layers}  # never the vision tower
    wrapped = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
               and ".language_model." in f".{name}." and name.rsplit(".", 1)[-1] in dc.lora_targets]
    assert len(wrapped) == len(dc.lora_targets) * n_layers
    trainable = sum(dc.lora_r * (m.in_features + m.out_features) for m in wrapped)
    total = sum(p.numel() for p in model.parameters()) + trainable
    assert (r["lora"]["trainable"], r["lora"]["total"]) == (trainable, total)
    assert r["lora"]["trainable_share"] == pytest.approx(trainable / total, abs=1e-15)
    assert r["lora"]["trainable_share"] < 0.05
    assert set(r["validation"]) == {"base", *STRATEGIES}


def test_05_dpo(smoke_run):
    check_05_dpo(smoke_run)
