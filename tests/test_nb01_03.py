"""Notebooks 01 (candidates) and 03 (confidence), executed headless under ``smoke`` by the shared ``smoke_run``."""

import math

import pytest

from m3po_utils import candidates as G
from m3po_utils import shapes as W
from m3po_utils.config import load_preset
from m3po_utils.io import load_results
from m3po_utils.rundir import RunDir

pytestmark = pytest.mark.notebooks
SMOKE = load_preset("smoke").generation


def test_01_candidates(smoke_run):
    r = load_results(smoke_run, "01_candidates")
    assert r["complete"] is True and r["preset"] == "smoke"
    gen = r["generation"]
    assert gen["prompts"] == SMOKE.n_prompts and gen["n_candidates"] == SMOKE.n_candidates
    assert gen["rows"] == SMOKE.n_prompts * SMOKE.n_candidates
    sweep = r["temperature_sweep"]
    assert sweep["temperature"] == [0.3, 0.7, 1.0, 1.5]
    assert all(1 <= d <= SMOKE.n_candidates for d in sweep["distinct_answers"])
    div = r["diversity"]
    assert 1 <= div["mean_distinct"] <= SMOKE.n_candidates
    assert 0 <= div["candidate_accuracy"] <= 1 and 0 <= div["share_prompts_with_spread"] <= 1
    cov = r["coverage_by_n"]
    assert cov["k"] == list(range(1, SMOKE.n_candidates + 1))
    assert all(a <= b for a, b in zip(cov["share_with_correct"], cov["share_with_correct"][1:], strict=False))
    assert cov["mean_distinct"][0] == 1.0
    assert 0 <= r["eos_share"] <= 1 and 1 <= r["mean_length"] <= SMOKE.max_new_tokens

    ds = RunDir(smoke_run).load_candidates()
    assert ds.features == G.candidate_features() and len(ds) == gen["rows"]
    assert not RunDir(smoke_run).candidates_parts.exists()                 # shards are gone once the table is written
    ids = ds["prompt_id"]
    assert all(ids.count(p) == SMOKE.n_candidates for p in set(ids))
    for row in ds.select(range(0, len(ds), 7)):
        assert row["logprob_sum"] == pytest.approx(sum(row["token_logprobs"]), abs=1e-9)
        assert row["length"] == len(row["token_ids"]) <= SMOKE.max_new_tokens
    assert sum(ds["ended_eos"]) / len(ds) == pytest.approx(r["eos_share"])


def test_03_confidence(smoke_run):
    r = load_results(smoke_run, "03_confidence")
    assert r["complete"] is True
    assert r["checked_sequences"] == SMOKE.n_prompts * SMOKE.n_candidates   # the smoke check covers every row
    assert 0 <= r["max_abs_logprob_diff"] <= 1e-4
    assert 0 <= r["max_abs_token_logprob_diff"] <= 1e-4
    q = r["quadrants"]
    assert sum(q.values()) == SMOKE.n_prompts * SMOKE.n_candidates
    # "confident" is the upper half of each prompt by log P: about half of all candidates
    assert 0.4 <= (q["confident_correct"] + q["confident_wrong"]) / sum(q.values()) <= 0.9
    cal = r["calibration"]
    for key in ("p_wrong_given_confident", "p_wrong_given_unsure", "prompts_with_confident_wrong",
                "top1_accuracy", "mean_accuracy"):
        assert 0 <= cal[key] <= 1, key
    assert math.isfinite(r["ece_short_answers"]) and 0 <= r["ece_short_answers"] <= 1
    assert set(r["length_effect"]) <= set(W.FAMILIES) and set(r["correlations"]) <= set(W.FAMILIES)
    for fam in r["length_effect"].values():   # NaN is stored as null: the file is strict JSON
        assert all(v is None or -1 <= v <= 1 for k, v in fam.items() if k != "mean_length")
    table = RunDir(smoke_run).load_confidence()
    assert len(table) == SMOKE.n_prompts * SMOKE.n_candidates
    assert {"conf_sum", "conf_mean", "self_consistency", "conf_rank", "verifier_score"} <= set(table.columns)
    assert table["self_consistency"].between(0, 1).all()
    cands = RunDir(smoke_run).load_candidates().to_pandas()
    merged = table.merge(cands[["prompt_id", "cand_idx", "logprob_sum"]], on=["prompt_id", "cand_idx"])
    assert (merged["conf_sum"] - merged["logprob_sum"]).abs().max() < 1e-9
