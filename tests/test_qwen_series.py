"""The whole series on the second architecture: the smoke preset with the tiny Qwen2.5-VL (``smoke-qwen``)."""

import json

import pytest

pytestmark = pytest.mark.notebooks


def test_smoke_series_runs_end_to_end_on_qwen(tmp_path_factory):
    from m3po_utils.io import load_results
    from m3po_utils.run import run_series

    run = tmp_path_factory.mktemp("smoke-qwen")
    # one evaluation seed on half the scenes: the second seed's training and the full question set repeat what the
    # LLaVA smoke series already checks (CI time)
    records = run_series("smoke-qwen", run, {"evaluation.seeds": [0], "evaluation.n_scenes": 20}, kernel="python3")
    assert [r["status"] for r in records] == ["ok"] * 7, records
    config = json.loads((run / "models" / "lvlm" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    dpo = load_results(run, "05_dpo")
    # the stored reference log-probs are reused for some responses, and with them the loss is TRL's own
    assert 0 < dpo["retokenisation_match_share"] <= 1
    assert dpo["reference_check"]["max_abs_diff"] < 1e-4
    ev = load_results(run, "06_evaluation")
    assert {"m3po", "best_worst", "random", "best_of_n", "base"} <= set(ev["metrics"])
    assert "## Conclusion" in (run / "report.md").read_text()
