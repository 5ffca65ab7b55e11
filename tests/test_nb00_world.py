"""Every notebook of the series, executed headless by the runner under the ``smoke`` preset.

One run directory is shared by the whole test session (``smoke_run`` in conftest.py: the series is a
pipeline); each test asserts on the named figures a notebook recorded in ``results/NN_name.json``, not on
cell output. Notebooks 01+ have their own test files that use the same fixture.
"""

import json

import pytest

from m3po_utils import scoring as E
from m3po_utils import shapes as W
from m3po_utils.config import load_preset
from m3po_utils.io import load_results
from m3po_utils.models.generate import greedy_answers
from m3po_utils.models.lvlm import load_lvlm
from m3po_utils.run import run_series
from m3po_utils.rundir import RunDir

pytestmark = pytest.mark.notebooks


def test_series_writes_report_and_executed_copies(smoke_run):
    assert (smoke_run / "report.md").exists()
    assert (smoke_run / "notebooks" / "00_world.ipynb").exists()
    cfg = json.loads((smoke_run / "config.json").read_text())
    assert cfg["name"] == "smoke"


def check_00_world(run):
    """Notebook 00's figures against what it wrote: the saved world's scenes and the saved base model."""
    r = load_results(run, "00_world")
    assert r["complete"] is True and r["preset"] == "smoke"
    cfg = load_preset("smoke")
    wc = cfg.world
    splits = RunDir(run).scenes()

    demo = r["verifier_demo"]
    scene = splits["eval"][0]
    assert demo["truth"] == W.describe(scene, wc) and demo["truth_score"] == 1.0
    assert demo["extra_object"] in demo["extra_explanation"] and demo["extra_hallucinated"] == [demo["extra_object"]]
    n_obj = len(scene.objects)        # all objects right plus one hallucinated: precision n/(n+1), recall 1
    assert demo["extra_score"] == pytest.approx(2 * n_obj / (2 * n_obj + 1), abs=1e-12)

    # P(partner | lead), counted over the saved train scenes
    assert set(r["partner_given_lead"]) == {f"{a}->{b}" for a, b in wc.partners}
    for a, b in wc.partners:
        with_a = [sc for sc in splits["train"] if a in sc.shapes()]
        p = sum(b in sc.shapes() for sc in with_a) / len(with_a)
        assert r["partner_given_lead"][f"{a}->{b}"] == pytest.approx(p, abs=1e-12), (a, b)
        without_a = [sc for sc in splits["train"] if a not in sc.shapes()]
        p_without = sum(b in sc.shapes() for sc in without_a) / len(without_a)
        assert p > p_without + 0.1, (a, b, p, p_without)        # the prior is visible even in the smoke world

    # POPE: the saved model's greedy answers to the same questions, counted here
    pope = r["lvlm"]["pope"]
    assert set(pope) == set(E.POPE_SETTINGS)
    model, processor = load_lvlm(RunDir(run).lvlm, device=cfg.models.device)
    images = [W.render(sc, wc) for sc in splits["eval"]]
    for setting, m in pope.items():
        rows = E.pope_questions(splits["eval"], wc, setting, seed=cfg.seed)
        answers = greedy_answers(model, processor, [images[q["scene"]] for q in rows], [q["question"] for q in rows],
                                 max_new_tokens=8, batch_size=64)
        said = [E.pope_parse(a) == "yes" for a in answers]
        truth = [q["label"] == "yes" for q in rows]
        tp = sum(s and t for s, t in zip(said, truth, strict=True))
        tn = sum(not s and not t for s, t in zip(said, truth, strict=True))
        assert m["n"] == len(rows) == 2 * sum(truth), setting
        assert m["accuracy"] == pytest.approx((tp + tn) / len(rows), abs=1e-12), setting
        assert m["yes_ratio"] == pytest.approx(sum(said) / len(rows), abs=1e-12), setting
        assert m["recall"] == pytest.approx(tp / sum(truth), abs=1e-12), setting
    assert set(r["lvlm"]["describe"]) >= {"precision", "recall", "chair_i", "chair_s"}
    assert r["clip"]["retrieval"]["n"] == 40
    models = run / "models"
    assert (models / "lvlm" / "model.safetensors").exists()
    assert (models / "clip" / "open_clip_model.safetensors").exists()
    assert not list(models.rglob("*.bin"))


def test_00_world(smoke_run):
    check_00_world(smoke_run)


def test_rerun_skips_complete_notebooks(smoke_run):
    before = (smoke_run / "notebooks" / "00_world.ipynb").stat().st_mtime_ns
    run_series("smoke", smoke_run, kernel="python3", start=0, stop=0)
    assert (smoke_run / "notebooks" / "00_world.ipynb").stat().st_mtime_ns == before
