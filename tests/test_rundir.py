"""The run directory as the contract between stages: a missing or unfinished output stops the stage that needs it
with "run notebook NN first", and no stage rebuilds another stage's output."""

from __future__ import annotations

import json
import shutil

import pytest

from m3po_utils import world
from m3po_utils.config import load_preset
from m3po_utils.run import NotebookFailed, run_series
from m3po_utils.rundir import TRAINING_INFO, ArtifactCorrupt, RunDir, StageMissing

CFG = load_preset("smoke")


@pytest.mark.parametrize("load, notebook, what", [
    (lambda r: r.scenes(), "00", "world"),
    (lambda r: world.base_lvlm(CFG, r), "00", "models/lvlm"),
    (lambda r: world.base_clip(CFG, r), "00", "models/clip"),
    (lambda r: r.load_candidates(), "01", "candidates"),
    (lambda r: r.load_mas(), "02", "mas/scores"),
    (lambda r: r.load_confidence(), "03", "confidence"),
    (lambda r: r.load_pairs("m3po"), "04", "pairs/m3po"),
])
def test_missing_output_names_the_notebook(tmp_path, load, notebook, what):
    with pytest.raises(StageMissing) as err:
        load(RunDir(tmp_path))
    assert str(err.value).startswith(f"run notebook {notebook} (")
    assert f"first: {what} is missing in {tmp_path}" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)      # callers that catch FileNotFoundError still do
    assert list(tmp_path.iterdir()) == []                # nothing was built on the stage's behalf


def test_unfinished_model_folder_is_missing_not_loaded(tmp_path):
    """A model folder without notebook 00's training record (a crash mid-save, a hand-copied folder) is unfinished."""
    run = RunDir(tmp_path)
    run.lvlm.mkdir(parents=True)
    (run.lvlm / "config.json").write_text("{}")
    with pytest.raises(StageMissing, match=r"models/lvlm is missing in .* \(or unfinished\)"):
        world.base_lvlm(CFG, run)
    assert sorted(p.name for p in run.lvlm.iterdir()) == ["config.json"]


def test_unfinished_candidates_point_at_the_resume(tmp_path):
    run = RunDir(tmp_path)
    run.candidates_parts.mkdir()
    with pytest.raises(StageMissing, match="candidates.parts holds an unfinished run: rerun notebook 01"):
        run.load_candidates()


def test_hub_preset_needs_no_model_folder(tmp_path):
    hub = load_preset("llava-1.5-7b")
    assert RunDir(tmp_path).lvlm_source(hub) == "llava-hf/llava-1.5-7b-hf"


def test_paths_are_those_of_the_design(tmp_path):
    run = RunDir(tmp_path)
    rel = {k: str(getattr(run, k).relative_to(tmp_path)) for k in
           ("world", "lvlm", "clip", "candidates", "mas_scores", "judge_cache", "confidence", "evaluation",
            "experiments", "results", "notebooks", "report")}
    assert rel == {"world": "world", "lvlm": "models/lvlm", "clip": "models/clip", "candidates": "candidates",
                   "mas_scores": "mas/scores", "judge_cache": "mas/judge_cache.sqlite", "confidence": "confidence",
                   "evaluation": "evaluation", "experiments": "experiments", "results": "results",
                   "notebooks": "notebooks", "report": "report.md"}
    assert run.pairs("random") == tmp_path / "pairs" / "random"
    assert run.adapters("m3po") == tmp_path / "adapters" / "m3po" and run.adapters() == tmp_path / "adapters"


@pytest.mark.notebooks
@pytest.mark.parametrize("victim, notebook", [("lvlm", "01_candidates"), ("clip", "02_mas")])
def test_notebook_stops_when_a_model_is_missing(smoke_run, tmp_path, victim, notebook):
    """Delete a model of notebook 00 and run the stage that needs it: it stops naming notebook 00, trains nothing."""
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run, ignore=shutil.ignore_patterns("adapters", "evaluation", "experiments"))
    shutil.rmtree(run / "models" / victim)
    for nb in ("01_candidates", "02_mas"):
        (run / "results" / f"{nb}.json").unlink()
    if notebook == "02_mas":
        assert (run / "candidates").is_dir()
    with pytest.raises(NotebookFailed) as err:
        run_series("smoke", run, start=int(notebook[:2]), stop=int(notebook[:2]), kernel="python3")
    msg = str(err.value)
    assert f"notebook {notebook} failed" in msg
    assert f"StageMissing: run notebook 00 (world and base models) first: models/{victim} is missing in {run}" in msg
    assert not (run / "models" / victim).exists()          # no silent retrain in the wrong notebook
    assert json.loads((run / "models" / ("clip" if victim == "lvlm" else "lvlm") / TRAINING_INFO).read_text())


# ------------------------------------------------------------------------------------------- corrupt outputs

def _truncate(path, keep=0.5):
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(int(size * keep))


def _arrow(folder):
    return next(folder.glob("*.arrow"))


@pytest.mark.parametrize("what, notebook, load, damage", [
    ("candidates", "01", lambda r: r.load_candidates(), lambda r: _truncate(_arrow(r.candidates))),
    ("mas/scores", "02", lambda r: r.load_mas(), lambda r: _arrow(r.mas_scores).write_bytes(b"not arrow")),
    ("world", "00", lambda r: r.scenes(), lambda r: _truncate(r.world / "scenes.json")),
    ("pairs/m3po", "04", lambda r: r.pairs_info("m3po"), lambda r: (r.pairs("m3po") / "info.json").write_text("[")),
    ("models/lvlm", "00", lambda r: world.base_lvlm(CFG, r),
     lambda r: _truncate(next(r.lvlm.glob("*.safetensors")), 0.01)),
])
def test_corrupt_output_names_the_file_and_the_fix(smoke_run, tmp_path, what, notebook, load, damage):
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    damage(RunDir(run))
    with pytest.raises(ArtifactCorrupt) as err:
        load(RunDir(run))
    msg = str(err.value)
    assert str(run / what) in msg and f"notebook {notebook} (" in msg
    assert f"--from {notebook} --to {notebook} --redo" in msg


def test_missing_output_advice_is_a_command_that_works(tmp_path):
    with pytest.raises(StageMissing) as err:
        RunDir(tmp_path).load_pairs("m3po")
    assert f"python -m m3po_utils.run --run-dir {tmp_path} --from 04 --to 04 --redo" in str(err.value)


def test_stage_01_sets_its_own_corrupt_table_aside_and_samples_again(smoke_run, tmp_path, capsys):
    from m3po_utils import candidates as G
    from m3po_utils.shapes.prompts import ImageResolver, preference_prompts
    from m3po_utils.world import base_lvlm

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    rd = RunDir(run)
    before = list(rd.load_candidates()["text"])      # a copy: the table is memory-mapped from the file cut below
    _truncate(_arrow(rd.candidates))
    model, processor, _ = base_lvlm(CFG, run)
    splits = rd.scenes()
    table = G.prepare_candidates(CFG, run, model, processor, preference_prompts(CFG, splits),
                                 ImageResolver(CFG, splits), progress=False)
    assert "moved it to" in capsys.readouterr().out
    aside = [p for p in run.iterdir() if p.name.startswith("candidates.corrupt-")]
    assert len(aside) == 1 and _arrow(aside[0]).exists()                 # kept, not deleted
    assert list(table["text"]) == before                                  # the same seeded samples again


def test_corrupt_judge_cache_is_named_with_the_cost_of_a_rebuild(tmp_path):
    from m3po_utils.judge.cache import JudgeCache, JudgeCacheCorrupt

    path = tmp_path / "judge_cache.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(JudgeCacheCorrupt) as err:
        JudgeCache(path)
    assert str(path) in str(err.value) and "sent again" in str(err.value) and "mv " in str(err.value)
    assert path.read_bytes().startswith(b"this is not")                   # left as it was


def test_keep_previous_clears_what_a_stale_rerun_cannot_check(tmp_path):
    """A stale re-run of 05 keeps its adapters (fingerprinted with their pairs and settings), one of 06 clears its
    answers and seed sub-runs (they came from the old inputs); --redo clears all; restore_previous puts back exactly
    what was there."""
    from m3po_utils import rundir as R

    run = tmp_path
    (run / "results").mkdir()
    for name in ("05_dpo", "06_evaluation"):
        (run / "results" / f"{name}.json").write_text('{"complete": true, "run_id": "a"}')
    for rel in ("adapters/m3po/adapter_model.safetensors", "evaluation/answers/m3po_seed0.json",
                "evaluation/seed1/pairs/m3po/info.json"):
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_text(rel)
    assert R.keep_previous(run, "05_dpo", reuse=True)
    assert (run / "adapters/m3po/adapter_model.safetensors").is_file()
    R.drop_previous(run, "05_dpo")
    assert R.keep_previous(run, "06_evaluation", reuse=True)
    assert not R.keep_previous(run, "06_evaluation", reuse=True)    # an attempt is already in flight
    assert not (run / "evaluation").exists()
    (run / "evaluation" / "answers").mkdir(parents=True)
    (run / "evaluation" / "answers" / "half.json").write_text("half")
    failed = R.restore_previous(run, "06_evaluation")
    assert (failed / "evaluation/answers/half.json").read_text() == "half"
    assert (run / "evaluation/answers/m3po_seed0.json").read_text() == "evaluation/answers/m3po_seed0.json"
    assert (run / "evaluation/seed1/pairs/m3po/info.json").exists() and not (run / "evaluation/answers/half.json").exists()
    assert R.interrupted_reruns(run) == []

    assert R.keep_previous(run, "05_dpo", reuse=False)                # --redo: the adapters go too
    assert not (run / "adapters").exists()
    assert (run / "results" / "05_dpo.json").exists()                # the record goes when the notebook starts
    assert R.interrupted_reruns(run) == ["05_dpo"]
    R.drop_previous(run, "05_dpo")
    assert R.interrupted_reruns(run) == []
