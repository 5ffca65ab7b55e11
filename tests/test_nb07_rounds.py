"""Notebook 07 under the smoke preset: two rounds of three rules and the adaptive budget; a run killed in round 2
(the last) resumes there, repeats no judge request and ends with the same adapters as the uninterrupted run."""

import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from m3po_utils import results as RS
from m3po_utils import rounds as R
from m3po_utils.config import load_preset
from m3po_utils.dpo import ADAPTER_FILE
from m3po_utils.rundir import RunDir

pytestmark = pytest.mark.notebooks


def test_07_rounds(rounds_run):
    r = RS.load(rounds_run, R.STAGE)
    cfg = load_preset("smoke")
    rc = cfg.rounds
    assert r.complete and "What we learnt here" in r.learnt
    # the base and every (rule, round)
    assert [(row["rule"], row["round"]) for row in r.rounds][0] == ("base", 0)
    assert len(r.rounds) == 1 + rc.rounds * len(rc.strategies)
    body = [row for row in r.rounds if row["round"] > 0]
    assert {row["round"] for row in body} == set(range(1, rc.rounds + 1))
    # equal pairs within a round; the same steps in every round
    for k in range(1, rc.rounds + 1):
        assert len({row["pairs_trained"] for row in body if row["round"] == k}) == 1
    assert r.steps == rc.steps
    # every round reused some reference log-probs captured while sampling from the previous policy
    assert all(row["reference_reused"] > 0 for row in body)
    # the kept round is the validation criterion's best (ties: the earlier)
    for c in r.chosen.values():
        vals = {int(k): v for k, v in c.by_round.items()}
        best = max(vals.values())
        assert c.round == min(k for k, v in vals.items() if v == best) and c.criterion == rc.choose_by
    # the evaluation table: the base and every model, each point inside its interval
    assert len(r.evaluation) == len(r.rounds)
    for row in r.evaluation.values():
        for k in R.METRICS:
            assert row[f"{k}_lo"] - 1e-9 <= row[k] <= row[f"{k}_hi"] + 1e-9
    assert set(r.round_seconds) == {str(k) for k in range(1, rc.rounds + 1)}
    # adaptive vs fixed: the same total candidates
    a = r.adaptive
    assert a.pools["adaptive"]["candidates"] == a.pools["fixed"]["candidates"] == a.total
    assert a.pools["all"]["candidates"] == a.prompts * cfg.generation.n_candidates
    assert {p.outcome for p in r.predictions} <= {"as predicted", "opposite", "not shown", "not run"}


def _copy_inputs(run, dest):
    """Notebooks 00-02's outputs and records, without the judge cache: a run whose rounds start cold."""
    for part in ("world", "models", "candidates", "candidates_validation", "mas/scores", "config.json"):
        src = run / part
        if src.is_dir():
            shutil.copytree(src, dest / part)
        elif src.is_file():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / part)
    (dest / "results").mkdir(parents=True, exist_ok=True)
    for name in ("00_world", "01_candidates", "02_mas"):
        shutil.copy2(run / "results" / f"{name}.json", dest / "results" / f"{name}.json")


def test_a_run_killed_in_round_2_resumes_there(rounds_run, tmp_path, monkeypatch):
    cfg = load_preset("smoke")
    run = tmp_path / "run"
    _copy_inputs(rounds_run, run)
    done = R.Rounds(rounds_run, cfg)                   # the notebook's uninterrupted rounds
    rd = R.Rounds(run, cfg)
    assert rd.key == done.key                          # the same settings and inputs
    save = R.save_frame

    last = cfg.rounds.strategies[-1]

    def killed(path, df):      # the last rule's round-2 MAS is judged but never written: killed right there
        if "r2" in path.parts and last in path.parts:
            raise KeyboardInterrupt("killed in round 2, after its judge requests")
        save(path, df)

    monkeypatch.setattr(R, "save_frame", killed)
    with pytest.raises(KeyboardInterrupt):
        rd.run_all(progress=False)
    asked = rd.judge_stats["requests"]
    assert asked > 0                                    # round 2's answers went to the judge before the kill
    assert not (rd.folder(last, 2) / "scored.json").exists()
    assert all((rd.folder(s, 1) / "record.json").is_file() for s in cfg.rounds.strategies)
    monkeypatch.setattr(R, "save_frame", save)
    again = R.Rounds(run, cfg)
    assert all(rec.get("cached") for rec in again.run_round(1, progress=False))   # round 1 is not redone
    again.run_round(2, progress=False)
    assert again.judge_stats["requests"] == 0 and again.judge_stats["cache_hits"] >= asked
    again.run_all(progress=False)
    for s in cfg.rounds.strategies:
        a = load_file(str(again.folder(s, cfg.rounds.rounds) / "adapter" / ADAPTER_FILE))
        b = load_file(str(done.folder(s, cfg.rounds.rounds) / "adapter" / ADAPTER_FILE))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        final = cfg.rounds.rounds
        assert np.array_equal(np.load(again.folder(s, final) / "eval_stats.npy"),
                              np.load(done.folder(s, final) / "eval_stats.npy"))
    assert RunDir(run).root.is_dir()
