"""Notebook 02 (MAS) executed by the runner under ``smoke``; asserts on ``results/02_mas.json`` and its files."""

import json
import shutil

import numpy as np
import pytest

from m3po_utils.io import load_results
from m3po_utils.run import run_series
from m3po_utils.runs import RunDir

pytestmark = pytest.mark.notebooks

SENTINEL = "sk-SENTINEL-nb02-7c1e9d44a0"


def test_02_mas(smoke_run):
    r = load_results(smoke_run, "02_mas")
    assert r["complete"] is True and r["preset"] == "smoke"
    n = len(RunDir(smoke_run).load_candidates())
    assert r["n_candidates"] == n and r["mas_missing"] == 0 and r["judge"]["failures"] == 0
    assert r["clip"]["images_encoded"] == r["n_prompts"]          # one embedding per image, not per candidate
    assert r["judge"]["requests"] <= r["n_prompts"]                # listwise: at most one request per prompt
    assert r["judge"]["endpoint"] == "local shapes judge"

    sp = r["spearman"]
    assert sp["judge"] > 0.9                                       # the noiseless judge is the truth on a 1-10 grid
    assert sp["judge"] > sp["clip"] and sp["mas"] > sp["clip"]

    sweep = {row["noise"]: row for row in r["noise_sweep"]}
    assert sweep[0.0]["requests"] == 0 and sweep[0.0]["cache_hits"] == n   # answered from the cache
    noisiest = max(sweep)
    assert noisiest > 0 and sweep[noisiest]["requests"] > 0
    assert sweep[noisiest]["judge_spearman"] < sweep[0.0]["judge_spearman"]

    for family, acc in r["contrast"].items():
        if family != "n_pairs":
            assert acc["judge"] == 1.0, family                     # right beats minimally wrong, every time
            assert 0.0 <= acc["CLIP"] <= 1.0

    table = RunDir(smoke_run).load_mas()
    assert len(table) == n
    assert {"prompt_id", "cand_idx", "clip_raw", "clip_score", "judge_score", "judge_ok", "mas", "mas_ok",
            "truth"} <= set(table.columns)
    for col in ("clip_score", "judge_score", "mas", "truth"):
        assert table[col].between(0, 1).all(), col
    assert table["judge_ok"].all() and table["mas_ok"].all()
    assert RunDir(smoke_run).judge_cache.exists()
    assert json.loads((smoke_run / "results" / "02_mas.json").read_text())  # strict JSON: no NaN literals
    assert "NaN" not in (smoke_run / "results" / "02_mas.json").read_text()


def test_02_keeps_the_api_key_out_of_the_run(smoke_run, tmp_path, monkeypatch):
    """Rerun notebook 02 with a sentinel OPENAI_API_KEY and no cache; the key is nowhere in the run directory."""
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    shutil.rmtree(run / "mas")                                     # no cache: the judge is really asked again
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    run_series("smoke", run, kernel="python3", start=2, stop=2, redo=True)
    r = load_results(run, "02_mas")
    assert r["complete"] is True and r["judge"]["requests"] > 0
    assert (run / "notebooks" / "02_mas.ipynb").exists()
    hits = [p for p in run.rglob("*") if p.is_file() and SENTINEL.encode() in p.read_bytes()]
    assert hits == []
    # the same scores as the first run: the cache changed nothing
    a, b = RunDir(smoke_run).load_mas(), RunDir(run).load_mas()
    assert np.allclose(a["mas"], b["mas"], atol=1e-6) and (a["judge_raw"] == b["judge_raw"]).all()
