"""Every notebook of the series, executed headless by the runner under the ``smoke`` preset.

One run directory is shared by the whole test session (``smoke_run`` in conftest.py: the series is a
pipeline); each test asserts on the named figures a notebook recorded in ``results/NN_name.json``, not on
cell output. Notebooks 01+ have their own test files that use the same fixture.
"""

import json

import pytest

from m3po_utils.io import load_results
from m3po_utils.run import run_series

pytestmark = pytest.mark.notebooks


def test_series_writes_report_and_executed_copies(smoke_run):
    assert (smoke_run / "report.md").exists()
    assert (smoke_run / "notebooks" / "00_world.ipynb").exists()
    cfg = json.loads((smoke_run / "config.json").read_text())
    assert cfg["name"] == "smoke"


def test_00_world(smoke_run):
    r = load_results(smoke_run, "00_world")
    assert r["complete"] is True and r["preset"] == "smoke"
    demo = r["verifier_demo"]
    assert demo["truth_score"] == 1.0
    assert demo["extra_score"] < 1.0
    assert demo["extra_object"] in demo["extra_explanation"]
    for a_b, p in r["partner_given_lead"].items():
        assert 0.5 < p <= 1.0, a_b          # the prior is visible even in the smoke world
    pope = r["lvlm"]["pope"]
    assert set(pope) == {"random", "popular", "adversarial"}
    for m in pope.values():
        assert 0.0 <= m["accuracy"] <= 1.0 and m["n"] > 0
    assert set(r["lvlm"]["describe"]) >= {"precision", "recall", "chair_i", "chair_s"}
    assert r["clip"]["retrieval"]["n"] == 40
    models = smoke_run / "models"
    assert (models / "lvlm" / "model.safetensors").exists()
    assert (models / "clip" / "open_clip_model.safetensors").exists()
    assert not list(models.rglob("*.bin"))


def test_rerun_skips_complete_notebooks(smoke_run):
    before = (smoke_run / "notebooks" / "00_world.ipynb").stat().st_mtime_ns
    run_series("smoke", smoke_run, kernel="python3", start=0, stop=0)
    assert (smoke_run / "notebooks" / "00_world.ipynb").stat().st_mtime_ns == before
