"""Notebook 11 under the smoke preset, on the shared smoke run: E1 at SFT weight 0 and E3 with one biased judge,
two seeds (seed 1 on its own candidate pool); the record, the resume, the caches' invalidation."""

import json
import shutil

import numpy as np
import pytest

from m3po_utils import hardneg as H
from m3po_utils import results as RS
from m3po_utils.config import load_preset
from m3po_utils.rundir import RunDir

pytestmark = pytest.mark.notebooks


def test_11_hard_negatives(hardneg_run):
    run = hardneg_run
    r = RS.load(run, H.STAGE)
    cfg = load_preset("smoke")
    hc = cfg.hardneg
    assert r.complete and set(r.experiments) == set(hc.experiments)
    assert r.steps == {str(s): hc.steps for s in hc.seeds}
    e1 = r.experiments["E1"]
    assert e1.conditions == len(H.plan(cfg, ["E1"])) and e1.models <= e1.conditions
    labels = set(e1.metrics)
    assert H.BASE in labels and len(labels) == 1 + e1.conditions // len(hc.seeds)
    for row in e1.metrics.values():
        for k in H.METRICS:
            assert row[f"{k}_lo"] - 1e-9 <= row[k] <= row[f"{k}_hi"] + 1e-9
    e3 = r.experiments["E3"]
    assert e3.models == e3.conditions                # no two E3 conditions train the same model ...
    assert e3.trained_now == e3.models - len(hc.seeds) * 2  # ... but the truth assessor's are E1's at weight 0
    assert set(r.assessor_agreement) == {"truth", *hc.assessors}
    assert r.assessor_agreement["truth"]["spearman_with_truth"] > 0.5
    # the map: one row per condition with an M3PO and a best-vs-worst model, on this one base
    assert {(m.experiment, m.setting) for m in r.map} == {("E1", "SFT weight 0"), ("E3", "assessor truth"),
                                                          ("E3", "assessor yes:0.3")}
    assert r.bases == ["seed-0 base"] and "on this one base" in r.map_paragraph
    assert {p.outcome for e in r.experiments.values() for p in e.predictions} <= {"as predicted", "opposite",
                                                                                  "not shown", "not run"}
    assert r.totals["models"] == len({p.name for p in (RunDir(run).root / "hardneg" / "points").iterdir()})
    # seed 1 drew its own pool, scored by the run's judge and CLIP; the biased judge has a table per seed
    pool = RunDir(run).root / "hardneg" / "pools" / "1"
    assert (pool / "scored.json").is_file()
    assert RunDir(pool).load_candidates().num_rows > 0
    assert {p.name for p in (RunDir(run).root / "hardneg" / "assessors").iterdir()} == {"0", "1"}
    assert "What we learnt here" in r.learnt


def test_resume_retrains_only_a_missing_model(hardneg_run):
    run = hardneg_run
    cfg = load_preset("smoke")
    splits = RunDir(run).scenes()
    pools, ev = H.Pools(run, cfg, splits), H.Evaluator(cfg, splits)
    conds = H.plan(cfg, ["E1"])
    records, stats = H.run_experiment(run, cfg, conds, pools, ev, progress=False)
    assert all(r["cached"] for r in records)
    victim = records[3]["key"]
    (RunDir(run).root / "hardneg" / "points" / victim / "result.json").unlink()
    again, stats2 = H.run_experiment(run, cfg, conds, pools, ev, progress=False)
    assert [r["key"] for r in again if not r["cached"]] == [victim]
    assert np.array_equal(stats[victim], stats2[victim])           # the same pairs, seed and steps: the same model


def test_a_rebuilt_upstream_stage_drops_the_pools_and_assessor_tables(tmp_path):
    cfg = load_preset("smoke")
    run = tmp_path / "run"
    for name, rid in (("00_world", "a"), ("01_candidates", "b"), ("02_mas", "c")):
        (run / "results").mkdir(parents=True, exist_ok=True)
        (run / "results" / f"{name}.json").write_text(json.dumps({"run_id": rid}))
    root = run / "hardneg"
    H.Pools(run, cfg, {"pref": [], "eval": []})
    for sub in ("pools/1", "assessors/0", "points/k"):
        (root / sub).mkdir(parents=True)
    (root / "base_x.npy").write_bytes(b"")
    H.Pools(run, cfg, {"pref": [], "eval": []})                # the same inputs: everything kept
    assert (root / "pools" / "1").is_dir() and (root / "base_x.npy").is_file()
    (run / "results" / "02_mas.json").write_text(json.dumps({"run_id": "d"}))   # notebook 02 was re-run
    H.Pools(run, cfg, {"pref": [], "eval": []})
    assert not (root / "pools").exists() and not (root / "assessors").exists()
    assert not (root / "base_x.npy").exists()
    assert (root / "points" / "k").is_dir()        # models are keyed by their inputs: a stale one is never found
    assert json.loads((root / "inputs.json").read_text())["02_mas"] == "d"
    shutil.rmtree(run)


def test_other_bases_must_have_finished_notebook_11(hardneg_run, tmp_path):
    import dataclasses

    cfg = load_preset("smoke")
    bad = dataclasses.replace(cfg, hardneg=dataclasses.replace(cfg.hardneg, other_bases=(str(tmp_path),)))
    with pytest.raises(ValueError, match="no finished notebook 11.*--from 11"):
        H.other_bases(bad, hardneg_run)
    ok = dataclasses.replace(cfg, hardneg=dataclasses.replace(cfg.hardneg, other_bases=(str(hardneg_run),)))
    rows = H.other_bases(ok, tmp_path)
    assert list(rows) == ["seed-0 base"] and len(rows["seed-0 base"]) == 3
