"""Real benchmark files in every layout people have (POPE JSON lines / JSON array / lmms-lab parquet; the MME
release, its zip's extra level, its two sub-layouts, lmms-lab parquet), and MME's perception / cognition totals."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m3po_utils import evaluation as C
from m3po_utils import scoring as E
from m3po_utils.benchfiles import BenchmarkFileError
from m3po_utils.scoring import load_mme_dir, load_pope_file, mme_scores, pope_metrics

DATA = Path(__file__).resolve().parents[1] / "data"
POPE_JSONL = DATA / "pope" / "shapes_pope_adversarial.json"
POPE_ARRAY = DATA / "pope" / "shapes_pope_seem_popular.json"
POPE_PARQUET = DATA / "lmms-lab" / "POPE" / "test-00000-of-00001.parquet"
MME_PARQUET = DATA / "lmms-lab" / "MME" / "test-00000-of-00001.parquet"
IMAGES = DATA / "pope" / "images"


def _same_pixels(a, b) -> bool:
    return np.array_equal(np.asarray(a.convert("RGB")), np.asarray(Image.open(b).convert("RGB")))


# ------------------------------------------------------------------------------------------ POPE

def test_pope_json_lines_lf_and_crlf(tmp_path):
    rows = load_pope_file(POPE_JSONL, IMAGES)
    assert len(rows) == 18 and {r["label"] for r in rows} == {"yes", "no"}
    assert all(Path(r["image"]).is_file() and r["image_id"] == r["image"] for r in rows)
    first = json.loads(POPE_JSONL.read_text().splitlines()[0])
    assert (rows[0]["question_id"], rows[0]["question"]) == (first["question_id"], first["text"])
    crlf = tmp_path / "coco_pope_adversarial.json"
    crlf.write_bytes(POPE_JSONL.read_bytes().replace(b"\n", b"\r\n"))
    assert load_pope_file(crlf, IMAGES) == rows
    perfect = pope_metrics(["Yes" if r["label"] == "yes" else "No" for r in rows], [r["label"] for r in rows])
    assert perfect["accuracy"] == 1.0 and perfect["yes_ratio"] == 0.5


def test_pope_json_array_as_the_seem_files():
    assert POPE_ARRAY.read_text().lstrip().startswith("[\n")
    rows = load_pope_file(POPE_ARRAY, IMAGES)
    items = json.loads(POPE_ARRAY.read_text())
    assert len(rows) == len(items) == 18
    assert [r["question"] for r in rows] == [i["text"] for i in items]
    assert [r["label"] for r in rows] == [i["label"] for i in items]


def test_pope_lmms_lab_parquet_embeds_images_and_names_settings():
    rows = load_pope_file(POPE_PARQUET)                         # no image folder needed
    assert len(rows) == 18 and [r["category"] for r in rows[::6]] == ["random", "popular", "adversarial"]
    assert all(isinstance(r["image"], Image.Image) for r in rows)
    sid = rows[0]["image_id"]
    assert sid.startswith("eval-") and _same_pixels(rows[0]["image"], IMAGES / f"{sid}.png")
    same = [r for r in rows if r["image_id"] == sid]
    assert len(same) > 1 and all(r["image"] is same[0]["image"] for r in same)   # decoded once per image
    by = C.pope_rows(POPE_PARQUET)
    assert {k: len(v) for k, v in by.items()} == {"random": 6, "popular": 6, "adversarial": 6}
    images, qs = C.file_questions([str(POPE_PARQUET)])
    assert {q["kind"] for q in qs} == {"pope_random", "pope_popular", "pope_adversarial"}
    assert len(images) == len({r["image_id"] for r in rows}) and all(isinstance(i, Image.Image) for i in images)


@pytest.mark.parametrize("content, words", [
    (b"", "holds no POPE question"),
    (b"[\n  {\"question_id\": 1,\n", "starts like a JSON array but is not one"),
    (b'{"question_id": 1, "image": "eval-000000.png", "text": "Is there a cat?", "label": "maybe"}\n',
     "has label 'maybe'"),
    (b'{"question_id": 1, "text": "Is there a cat?"}\n', "is not a POPE question"),
    (b'{"question_id": 1, "image": "nope.png", "text": "Is there a cat?", "label": "yes"}\n', "missing from"),
    ("caf\u00e9".encode("latin-1"), "is not UTF-8 text"),
])
def test_broken_pope_files_name_the_problem(tmp_path, content, words):
    bad = tmp_path / "q_pope_random.json"
    bad.write_bytes(content)
    with pytest.raises((BenchmarkFileError, FileNotFoundError), match=words):
        load_pope_file(bad, IMAGES)


def test_broken_pope_parquet_and_missing_paths(tmp_path):
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(POPE_PARQUET.read_bytes()[:500])
    with pytest.raises(BenchmarkFileError, match="is not a readable parquet file"):
        load_pope_file(cut)
    import datasets
    other = tmp_path / "other.parquet"
    datasets.Dataset.from_dict({"question": ["Is there a cat?"], "label": ["yes"]}).to_parquet(str(other))
    with pytest.raises(BenchmarkFileError, match=r"lacks column\(s\) \['question_id', 'answer', 'image'\]"):
        load_pope_file(other)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pope_file(tmp_path / "none.json", IMAGES)
    with pytest.raises(FileNotFoundError, match="set evaluation.pope_images"):
        load_pope_file(POPE_JSONL)


# ------------------------------------------------------------------------------------------ MME

def _mme_counts(rows) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["subtask"]] = out.get(r["subtask"], 0) + 1
    return out


def test_mme_release_layout_side_by_side():
    rows = load_mme_dir(DATA / "mme")
    assert _mme_counts(rows) == {"color": 6, "count": 6, "existence": 6, "position": 6}
    assert all(Path(r["image"]).parent.name == r["subtask"] for r in rows)
    s = mme_scores([r | {"prediction": r["answer"]} for r in rows])
    assert s["perception"] == s["total"] == 800.0 and s["cognition"] == 0


def _split_layout(folder: Path, source: Path) -> None:
    """``source`` (a side-by-side subtask folder) rewritten as artwork/celebrity/... keep theirs."""
    (folder / "images").mkdir(parents=True)
    (folder / "questions_answers_YN").mkdir()
    for p in source.iterdir():
        shutil.copy2(p, folder / ("questions_answers_YN" if p.suffix == ".txt" else "images") / p.name)


def test_mme_zip_nesting_split_layout_and_one_subtask_are_found(tmp_path):
    root = tmp_path / "MME_Benchmark_release_version"
    inner = root / "MME_Benchmark"                             # the Hugging Face zip's extra level
    shutil.copytree(DATA / "mme" / "existence", inner / "existence")
    _split_layout(inner / "artwork", DATA / "mme" / "count")
    (root / "eval_tool").mkdir()                                # not a subtask: ignored
    (inner / "__MACOSX").mkdir()
    rows = load_mme_dir(root)
    assert _mme_counts(rows) == {"artwork": 6, "existence": 6}
    assert all(Path(r["image"]).parent.name == "images" for r in rows if r["subtask"] == "artwork")
    assert load_mme_dir(tmp_path) == rows                       # two levels up: still found
    assert _mme_counts(load_mme_dir(inner / "artwork")) == {"artwork": 6}   # one subtask folder
    assert _mme_counts(load_mme_dir(root, subtasks=["artwork"])) == {"artwork": 6}


def test_mme_lmms_lab_parquet_file_and_folder():
    rows = load_mme_dir(MME_PARQUET)
    assert rows == load_mme_dir(MME_PARQUET.parent)
    assert _mme_counts(rows) == _mme_counts(load_mme_dir(DATA / "mme"))
    assert all(isinstance(r["image"], Image.Image) and r["image_id"] == r["question_id"] for r in rows)
    first = rows[0]
    assert first["question_id"] == f"{first['subtask']}/{Path(first['question_id']).name}"
    assert _same_pixels(first["image"], DATA / "mme" / first["question_id"])
    # acc+ pairs the two questions of one image through the question_id they share
    wrong_first = [r | {"prediction": ("No" if r["answer"] == "Yes" else "Yes") if k % 2 == 0 else r["answer"]}
                   for k, r in enumerate(rows)]
    s = mme_scores(wrong_first)
    assert all(v["acc"] == 0.5 and v["acc_plus"] == 0.0 for v in s["subtasks"].values())


def test_mme_trailing_whitespace_after_the_answer_is_accepted(tmp_path):
    shutil.copytree(DATA / "mme" / "count", tmp_path / "count")
    for txt in (tmp_path / "count").glob("*.txt"):
        txt.write_text("".join(line.rstrip("\n") + " \t \n" for line in txt.read_text().splitlines(True)))
    assert [r["answer"] for r in load_mme_dir(tmp_path)] == [r["answer"] for r in load_mme_dir(DATA / "mme", ["count"])]


def test_mme_folders_without_questions_are_errors_never_zero_rows(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkFileError, match="no MME question found under .*expected MME subtask folders"):
        load_mme_dir(tmp_path / "empty")
    (tmp_path / "deep" / "a" / "b" / "c").mkdir(parents=True)   # nested too deep to be a release
    with pytest.raises(BenchmarkFileError, match="no MME question found"):
        load_mme_dir(tmp_path / "deep")
    shutil.copytree(DATA / "mme" / "count", tmp_path / "rel" / "count")
    (tmp_path / "rel" / "color").mkdir()                         # a subtask folder with no question file
    with pytest.raises(BenchmarkFileError, match="color holds no question file"):
        load_mme_dir(tmp_path / "rel")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mme_dir(tmp_path / "nope")


def test_mme_loader_errors_name_the_problem(tmp_path):
    (tmp_path / "mme" / "color").mkdir(parents=True)
    (tmp_path / "mme" / "color" / "a.txt").write_text("Is it red?\tYes\n")
    with pytest.raises(FileNotFoundError, match="has no image a.png"):
        load_mme_dir(tmp_path / "mme")
    (tmp_path / "mme" / "color" / "a.png").write_bytes((IMAGES / "eval-000000.png").read_bytes())
    (tmp_path / "mme" / "color" / "a.txt").write_text("Is it red?\tmaybe\n")
    with pytest.raises(BenchmarkFileError, match="question<TAB>Yes|No"):
        load_mme_dir(tmp_path / "mme")


# ------------------------------------------------------------------------------------------ totals

def test_mme_perception_and_cognition_worked_example():
    """By MME's rules (acc = share of questions right, acc+ = share of images with both right, score =
    100·acc + 100·acc+; perception and cognition summed apart):
      existence:   image A both right, image B one right     -> acc 3/4, acc+ 1/2 -> 125
      artwork:     image C one right ("Eyes" parses as other) -> acc 1/2, acc+ 0   ->  50
      code_reasoning: image D both right, image E both wrong -> acc 1/2, acc+ 1/2 -> 100
    perception = 175, cognition = 100; the headline total is perception only."""
    q = [("existence", "A", "Yes", "Yes"), ("existence", "A", "No", "No"),
         ("existence", "B", "Yes", "yes, there is"), ("existence", "B", "No", "Yes"),
         ("artwork", "C", "Yes", "Yes"), ("artwork", "C", "No", "Eyes"),
         ("code_reasoning", "D", "Yes", "Yes"), ("code_reasoning", "D", "No", "no"),
         ("code_reasoning", "E", "Yes", "No"), ("code_reasoning", "E", "No", "Yes")]
    s = mme_scores([{"subtask": t, "image_id": i, "image": None, "answer": a, "prediction": p} for t, i, a, p in q])
    assert {k: v["score"] for k, v in s["subtasks"].items()} == {"existence": 125.0, "artwork": 50.0,
                                                                  "code_reasoning": 100.0}
    assert (s["perception"], s["cognition"], s["total"]) == (175.0, 100.0, 175.0)
    assert s["subtasks"]["code_reasoning"]["group"] == "cognition"

    # the same questions through the per-scene counts notebook 06 bootstraps give the same totals
    images = sorted({i for _, i, _, _ in q})
    qs = [{"kind": "mme", "scene": images.index(i), "subtask": t, "question": f"{t}{n}", "answer": a}
          for n, (t, i, a, _) in enumerate(q)]
    st = E.scene_stats([None] * len(images), qs, [p for *_, p in q], None)
    m = E.metrics_from_totals(st.sum(axis=0))
    assert (float(m["mme_total"]), float(m["mme_cognition"])) == (175.0, 100.0)
    assert E.available_metrics({"base": st[None]}) == ["mme_total", "mme_cognition", "yes_no_compliance"]
    with pytest.raises(ValueError, match="'my_task' is not one of MME's"):
        E.scene_stats([None], [{"kind": "mme", "scene": 0, "subtask": "my_task", "question": "?", "answer": "Yes"}],
                      ["Yes"], None)
