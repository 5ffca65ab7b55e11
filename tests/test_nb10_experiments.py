"""Notebook 10 under the smoke preset, on the shared smoke run: a 2 × 2 grid, noise, budget, negatives; resume."""

import json

import numpy as np
import pytest

from m3po_utils import experiments as X
from m3po_utils.config import load_preset
from m3po_utils.io import load_results
from m3po_utils.rundir import RunDir

pytestmark = pytest.mark.notebooks


def test_10_experiments(experiments_run):
    run = experiments_run
    r = load_results(run, "10_experiments")
    cfg = load_preset("smoke")
    ec = cfg.experiments
    assert r["complete"] is True and r["points"] == len(X.plan(cfg))
    assert r["distinct_models"] < r["points"]                      # α = 0 at every δ, and repeats, train once
    assert set(r["grid"]) == {X.grid_label(a, d) for a in ec.alphas for d in ec.deltas}
    a0 = [r["grid"][X.grid_label(0.0, d)] for d in ec.deltas]
    assert all(x == a0[0] for x in a0)                             # one model for the whole α = 0 row
    assert set(r["best_vs_default"]) == set(X.METRICS) and "confidence_ablation" in r
    assert set(r["noise"]) == {f"judge noise {x:g}" for x in ec.noise_levels} | {"CLIP only", "judge only"}
    assert set(r["budget"]) == {f"N={n}" for n in ec.budgets}
    big = max(ec.budgets)
    assert big > cfg.generation.n_candidates                       # the smoke budget samples extra candidates
    assert (RunDir(run).experiments / f"extra{big - cfg.generation.n_candidates}" / "scored.json").is_file()
    for row in r["budget_selection"].values():
        assert 0 < row["pairs_trained"] <= row["pairs_selected"]
    assert set(r["negatives"]) == {"best-of-N SFT", "M3PO DPO+SFT", "M3PO DPO (no SFT term)",
                                   "random negatives DPO+SFT"}
    for row in r["negatives"].values():
        for k in X.METRICS:
            assert row[f"{k}_lo"] - 1e-9 <= row[k] <= row[f"{k}_hi"] + 1e-9


def test_sweep_resumes_and_retrains_only_what_is_missing(experiments_run):
    run = experiments_run
    cfg = load_preset("smoke")
    splits = RunDir(run).scenes()
    points = [p for p in X.plan(cfg) if p.experiment == "grid"]
    records, stats = X.run_sweep(run, cfg, points, splits, progress=False)
    assert all(r["cached"] for r in records)
    victim = records[-1]["key"]
    (RunDir(run).experiments / "points" / victim / "result.json").unlink()   # as if killed before the record
    again, stats2 = X.run_sweep(run, cfg, points, splits, progress=False)
    assert [r["key"] for r in again if not r["cached"]] == [victim]
    assert np.array_equal(stats[victim], stats2[victim])                   # the same adapter, the same answers
    info = json.loads((RunDir(run).experiments / "points" / victim / "result.json").read_text())
    assert info["key"] == victim


def test_every_figure_of_the_smoke_series_can_be_read(hardneg_run, rounds_run):
    from conftest import figure_audit_path

    path = figure_audit_path(hardneg_run)
    assert path.exists(), "the smoke series showed no figure at all (or M3PO_FIGURE_AUDIT was not honoured)"
    shown = [json.loads(x) for x in path.read_text().splitlines()]
    notebooks = {x["where"].split()[0] for x in shown}
    # every notebook of the series shows figures; the audit must have seen each of them
    assert {"00_world", "01_candidates", "02_mas", "03_confidence", "04_selection", "05_dpo", "06_evaluation",
            "07_rounds", "10_experiments", "11_hard_negatives"} <= notebooks, notebooks
    bad = [f"{x['where']} {x['titles'][:2]}: {p}" for x in shown for p in x["problems"]]
    assert not bad, "figures that cannot be read:\n" + "\n".join(bad)
