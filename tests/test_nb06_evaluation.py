"""Notebook 06 under the smoke preset (shared ``smoke_run`` series): every method, every seed, one table."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from m3po_utils import dpo as D
from m3po_utils import evaluation as C
from m3po_utils import scoring as E
from m3po_utils import testbed
from m3po_utils.config import load_preset
from m3po_utils.io import load_results
from m3po_utils.rules import truth_names
from m3po_utils.run import run_series
from m3po_utils.rundir import RunDir

pytestmark = pytest.mark.notebooks


def test_06_evaluation(smoke_run):
    r = load_results(smoke_run, "06_evaluation")
    cfg = load_preset("smoke")
    ec = cfg.evaluation
    assert r["complete"] is True and r["preset"] == "smoke"
    assert set(r["metrics"]) == set(ec.methods)
    for method, metrics in r["metrics"].items():
        for k in E.HEADLINE:
            m = metrics[k]
            assert m["lo"] - 1e-9 <= m["mean"] <= m["hi"] + 1e-9, (method, k)
    assert r["metrics"]["base"]["judge_win_rate"]["mean"] == 0.5          # the base against itself: all ties
    # every non-run seed trained its own adapters on the run's budget
    for seed in ec.seeds[1:]:
        folder = C.seed_run_dir(smoke_run, cfg, seed)
        assert folder != smoke_run
        for m in ec.methods[1:]:
            info = D.load_training_info(folder, m)
            assert info["complete"] and info["dpo"]["seed"] == seed
            assert info["steps"] == D.load_training_info(smoke_run, m)["steps"]
    # the recorded metrics are those of the cached answers
    scenes = RunDir(smoke_run).scenes()["eval"][: ec.n_scenes or None]
    questions = E.eval_questions(scenes, cfg.world, seed=cfg.seed)
    assert r["questions"] == len(questions) and r["scenes"] == len(scenes)
    for method in ("base", "m3po"):
        seeds = ec.seeds if method != "base" else ec.seeds[:1]
        per = []
        for s in seeds:
            data = json.loads(C.answers_path(smoke_run, method, s).read_text())
            assert data["questions"] == C.questions_key(questions)
            per.append(E.metrics_from_totals(E.scene_stats(scenes, questions, data["answers"], cfg.world).sum(0)))
        for k in ("chair_i", "mme_total", "pope_adversarial_f1", "ift"):
            assert r["metrics"][method][k]["mean"] == pytest.approx(np.mean([p[k] for p in per])), (method, k)
    assert r["judge_requests"]["failures"] == 0
    # the MDE by scenes: a quarter .. all of the scenes, and on all of them notebook 06's own MDE
    by = {(d["comparison"], d["metric"], d["scenes"]): d["mde"] for d in r["mde_by_scenes"]}
    assert sorted({k[2] for k in by}) == C.scene_sizes(len(scenes))
    for d in r["mde"]:
        assert by[(d["comparison"], d["metric"], len(scenes))] == pytest.approx(d["mde"], rel=1e-12)
    # the testbed's bars: what notebook 06 recorded is what the recorded results of 00, 02, 03 and 06 give
    bars = r["testbed_bars"]
    assert [b["bar"].split()[0] for b in bars] == ["1", "2", "3", "4", "5", "6", "7"]
    assert bars == testbed.check_run(smoke_run)
    assert bars[0]["measured"].startswith(" / ".join(f"{r['metrics']['base'][f'pope_{s}_accuracy']['mean']:.3f}"
                                                     for s in testbed.POPE_SETTINGS))
    assert bars[5]["met"] == all(d["mde"] <= (0.01 if d["metric"] == "pope_adversarial_f1" else 10.0)
                                 for d in r["mde"])
    assert "The testbed's own bars" in r["learnt"]
    # the per-subtask split adds up to the MME-style total's change, for every method
    for who, subs in r["mme_subtask_deltas"].items():
        a, b = who.split(" − ")
        assert set(subs) == set(E.MME_SUBTASKS)
        assert sum(d["delta"] for d in subs.values()) == pytest.approx(
            r["metrics"][a]["mme_total"]["mean"] - r["metrics"][b]["mme_total"]["mean"])
    base_ans = json.loads(C.answers_path(smoke_run, "base", ec.seeds[0]).read_text())["answers"]
    m3po_ans = json.loads(C.answers_path(smoke_run, "m3po", ec.seeds[0]).read_text())["answers"]
    changes = C.hallucination_changes(scenes, questions, base_ans, m3po_ans, cfg.world)
    assert {k: r["hallucination_changes"][k] for k in ("n_fixed", "n_introduced")} == \
        {k: changes[k] for k in ("n_fixed", "n_introduced")}
    scores = r["benchmark_files"]["scores"]["base"]
    assert {"pope:shapes_pope_adversarial.json", "pope:shapes_pope_seem_popular.json",
            "pope:test-00000-of-00001.parquet:random", "mme:data/mme", "mme:lmms-lab/MME"} <= set(scores)
    assert scores["mme:data/mme"]["n"] == scores["mme:lmms-lab/MME"]["n"] == 24
    # the same images and questions in two layouts: the same answers, so the same scores
    assert scores["mme:data/mme"]["perception"] == scores["mme:lmms-lab/MME"]["perception"]
    report = (smoke_run / "report.md").read_text()
    assert "| method | mme_total | pope_adversarial_f1" in report and "| M3PO |" in report
    # the page leads with the series' conclusion, then the table and the stages; raw figures in the appendix
    assert report.index("## Verdict") < report.index("## Conclusion") < report.index("| method | mme_total") \
        < report.index("## Stages") < report.index("## What each stage learnt") < report.index("## Appendix")
    assert r["learnt"].startswith("## What we learnt here") and "notebook 10" in r["learnt"]
    # the verdict: one answer per control, then the reason from notebooks 02 and 04 of this run
    assert r["verdict"].startswith("**Does M3PO beat its controls here?** ")
    for control in ("best-of-N SFT", "best-vs-worst DPO", "random-pair DPO"):
        assert f"against {control}" in r["verdict"], control
    assert "**Why, from this run:** M3PO's pair (chosen and rejected answer) is the one of" in r["verdict"] and "Spearman ρ" in r["verdict"]
    for name in ("00_world", "01_candidates", "02_mas", "03_confidence", "04_selection", "05_dpo"):
        assert load_results(smoke_run, name)["learnt"].startswith("## What we learnt here"), name


INTERVAL = r"[+\-−]\d+(?:\.\d+)? \[[+\-−]?\d+(?:\.\d+)?, [+\-−]?\d+(?:\.\d+)?\]"
DIRECTION = ("better", "worse", "higher", "lower", "within the noise", "Within the noise", "predicted",
             "not distinguishable", "does not move", "no difference")


def _executed_text(run: Path) -> list[str]:
    """What a reader of the executed smoke series reads that the code wrote: every markdown and plain-text
    output of notebooks 00-06, and every recorded generated paragraph (learnt, verdict)."""
    out = []
    for nb in sorted((run / "notebooks").glob("0*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            for o in cell.get("outputs", []):
                data = o.get("data", {})
                for key in ("text/markdown", "text/plain"):
                    if key in data:
                        out.append("".join(data[key]))
                if o.get("output_type") == "stream":
                    out.append("".join(o.get("text", "")))
    for f in sorted((run / "results").glob("0*.json")):
        data = json.loads(f.read_text())
        out += [data[k] for k in ("learnt", "verdict") if isinstance(data.get(k), str)]
    return out


def test_the_executed_series_states_no_signed_difference_without_its_direction(smoke_run):
    """A rendered sentence that gives a signed difference with an interval also says what it means (better,
    worse, higher, lower, within the noise); tables (lines with "|" or runs of spaces) are not sentences."""
    import re

    texts = _executed_text(smoke_run)
    assert sum("What we learnt here" in t for t in texts) >= 7          # the scan reads the generated paragraphs
    bad = []
    for text in texts:
        for line in text.splitlines():
            if "|" in line or "   " in line or not re.search(INTERVAL, line):
                continue
            for sentence in re.split(r"(?<=[.;])\s+(?=[A-Z*])", line):
                if re.search(INTERVAL, sentence) and not any(w in sentence for w in DIRECTION):
                    bad.append(sentence[:200])
    assert not bad, bad


def test_power_by_scenes_tool_reads_the_cache_and_reproduces_notebook_06(smoke_run, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("power_by_scenes", Path(__file__).parent.parent / "tools" /
                                                  "power_by_scenes.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    n = load_results(smoke_run, "06_evaluation")["scenes"]
    tool.main([str(smoke_run), "2", str(n)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["scenes", "2", str(n)]
    printed, comparison = {}, None
    for line in lines[3:]:
        cells = line.split()
        if cells[0] == "m3po":
            comparison, cells = " ".join(cells[:3]), cells[3:]
        printed[(comparison, cells[0])] = float(cells[-1])
    recorded = {(d["comparison"], d["metric"]): d["mde"] for d in load_results(smoke_run, "06_evaluation")["mde"]}
    # on all the scenes, the tool's numbers are notebook 06's (F1 in points), for every comparison it prints
    assert len(printed) == 8
    for (comparison, metric), v in printed.items():
        scale = 100 if metric == "pope_adversarial_f1" else 1
        assert v == pytest.approx(scale * recorded[(comparison, metric)], abs=0.006), (comparison, metric)


DATA = Path(__file__).resolve().parent.parent / "data"


def test_06_on_benchmark_files_with_a_hub_preset(smoke_run, tmp_path):
    """A hub preset — the model loaded from a folder by name, no scenes — evaluates real benchmark files."""
    run = tmp_path / "hub"
    shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("notebooks", "evaluation", "experiments"))
    (run / "results" / "06_evaluation.json").unlink()
    files = {"evaluation.pope_files": [str(DATA / "pope" / "shapes_pope_adversarial.json")],
             "evaluation.pope_images": str(DATA / "pope" / "images"), "evaluation.mme_dir": str(DATA / "mme")}
    no_oracle = [m for m in load_preset("smoke").evaluation.methods if m not in truth_names()]
    overrides = {"world_kind": "hub", "models.lvlm": str(RunDir(smoke_run).lvlm), "evaluation.seeds": [0],
                 "evaluation.methods": no_oracle,         # the oracle needs the shapes world's ground truth
                 "dpo.strategies": [s for s in load_preset("smoke").dpo.strategies if s not in truth_names()],
                 **files}
    cfg = load_preset("smoke", overrides)
    (run / "config.json").write_text(cfg.to_json())      # the run "was made" with this preset
    run_series("smoke", run, overrides, start=6, stop=6, kernel="python3")
    r = load_results(run, "06_evaluation")
    paths, questions = C.file_questions(*(files[k] for k in files))
    assert r["complete"] is True and r["questions"] == len(questions) and r["scenes"] == len(paths)
    assert set(r["metrics"]) == set(cfg.evaluation.methods)
    assert set(r["metrics"]["m3po"]) >= {"mme_total", "pope_adversarial_f1"}
    assert "judge_requests" not in r and "benchmark_files" not in r
    answers = json.loads(C.answers_path(run, "base", 0).read_text())["answers"]
    m = E.metrics_from_totals(E.scene_stats([None] * len(paths), questions, answers, cfg.world).sum(0))
    assert r["metrics"]["base"]["mme_total"]["mean"] == pytest.approx(float(m["mme_total"]))
    assert "benchmark images" in (run / "report.md").read_text()
