"""Real benchmark layouts (POPE question files, MME subtask folders) read from the fixtures in data/."""

from pathlib import Path

import pytest

from m3po_utils.evaluation import load_mme_dir, load_pope_file, mme_scores, pope_metrics

DATA = Path(__file__).resolve().parents[1] / "data"


def test_pope_fixture_loads_and_scores():
    rows = load_pope_file(DATA / "pope" / "shapes_pope_adversarial.json", DATA / "pope" / "images")
    assert len(rows) == 16 and {r["label"] for r in rows} == {"yes", "no"}
    assert all(Path(r["image"]).is_file() for r in rows)
    perfect = pope_metrics(["Yes" if r["label"] == "yes" else "No" for r in rows], [r["label"] for r in rows])
    assert perfect["accuracy"] == 1.0 and perfect["yes_ratio"] == 0.5


def test_mme_fixture_both_layouts():
    rows = load_mme_dir(DATA / "mme")
    subs = {r["subtask"] for r in rows}
    assert subs == {"existence", "count"}
    assert sum(r["subtask"] == "existence" for r in rows) == 6 and sum(r["subtask"] == "count" for r in rows) == 6
    s = mme_scores([r | {"prediction": r["answer"]} for r in rows])
    assert s["total"] == 400.0


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pope_file(tmp_path / "none.json", tmp_path)
    bad = tmp_path / "q.json"
    bad.write_text('{"question_id": 1, "image": "x.png", "text": "Is there a cat?", "label": "maybe"}\n')
    with pytest.raises(ValueError, match="q.json:1 has label 'maybe'"):
        load_pope_file(bad, tmp_path)
    bad.write_text('{"question_id": 1, "text": "Is there a cat?"}\n')
    with pytest.raises(ValueError, match="q.json:1 is not a POPE question"):
        load_pope_file(bad, tmp_path)
    (tmp_path / "mme" / "color").mkdir(parents=True)
    (tmp_path / "mme" / "color" / "a.txt").write_text("Is it red?\tYes\n")
    with pytest.raises(FileNotFoundError, match="has no image a.png"):
        load_mme_dir(tmp_path / "mme")
    (tmp_path / "mme" / "color" / "a.png").write_bytes((DATA / "pope" / "images" / "eval-000000.png").read_bytes())
    (tmp_path / "mme" / "color" / "a.txt").write_text("Is it red?\tmaybe\n")
    with pytest.raises(ValueError, match="question<TAB>Yes|No"):
        load_mme_dir(tmp_path / "mme")
