"""Notebook 02 (MAS) executed by the runner under ``smoke``; asserts on ``results/02_mas.json`` and its files."""

import json
import shutil

import numpy as np
import pytest

from m3po_utils.io import load_results
from m3po_utils.run import run_series
from m3po_utils.rundir import RunDir

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


@pytest.mark.parametrize("fault, words", [
    ("wrong_key", "refuses the API key"),
    ("garbage", "cannot parse"),
])
def test_02_with_a_broken_judge_fails_and_is_not_complete(smoke_run, tmp_path, monkeypatch, fault, words):
    """A wrong key or a judge that answers garbage: notebook 02 stops after a few requests, is not recorded as
    complete, the runner says why, and a plain rerun runs it again instead of skipping it."""
    from m3po_utils.config import load_preset
    from m3po_utils.judge.server import JudgeServer
    from m3po_utils.run import NotebookFailed, is_complete
    from m3po_utils.shapes import load_world

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    shutil.rmtree(run / "mas")
    cfg = load_preset("smoke")
    scenes = [s for part in load_world(run / "world").values() for s in part]
    kw = {"require_key": "sk-the-right-key-000"} if fault == "wrong_key" else {"default_fault": "garbage"}
    with JudgeServer(scenes, cfg.world, model=cfg.models.judge_model, retry_after=0.01, **kw) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
        for attempt in range(2):                                   # the second, plain run is not skipped
            with pytest.raises(NotebookFailed) as err:
                run_series("smoke", run, kernel="python3", start=2, stop=2, redo=attempt == 0)
            assert "JudgeUnavailable" in str(err.value) and words in str(err.value)
            assert srv.base_url in str(err.value) and SENTINEL not in str(err.value)
            assert not is_complete(run, "02_mas")
        n_prompts = len({*RunDir(smoke_run).load_candidates()["prompt_id"]})
        tries = cfg.mas.max_retries + 1 if fault == "garbage" else 1
        per_run = (cfg.mas.judge_fail_after + 2 * cfg.mas.concurrency) * tries   # the streak + in flight
        assert srv.stats["chat_requests"] <= 2 * per_run < 2 * n_prompts * tries
    report = (run / "report.md").read_text()
    assert "| 02_mas | failed: JudgeUnavailable: judge stopped after" in report
    hits = [p for p in run.rglob("*") if p.is_file() and SENTINEL.encode() in p.read_bytes()]
    assert hits == []


def test_coverage_bounds_the_share_of_missing_mas():
    import pandas as pd

    from m3po_utils import mas
    from m3po_utils.config import MasConfig

    n = 200
    table = pd.DataFrame({"mas_ok": [True] * n, "judge_ok": [True] * n, "judge_error": [""] * n})
    assert mas.coverage(table, MasConfig())["missing"] == 0
    table.loc[:1, ["mas_ok", "judge_ok"]] = False                 # 2 of 200 = 1 %: allowed
    table.loc[:1, "judge_error"] = "HTTP 500: boom"
    assert mas.coverage(table, MasConfig())["failures_by_kind"] == {"server": 2}
    table.loc[:2, ["mas_ok", "judge_ok"]] = False                 # 3 of 200: too many
    table.loc[2, "judge_error"] = "HTTP 401: bad key"
    with pytest.raises(mas.MasIncomplete, match=r"3 of 200 candidates \(1.5 %\).*2 server, 1 auth"):
        mas.coverage(table, MasConfig())
    assert mas.coverage(table, MasConfig(max_missing=0.02))["missing"] == 3
