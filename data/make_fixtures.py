"""Write the small benchmark fixtures in data/ from shapes-world scenes, in the layouts of the real files.

    python data/make_fixtures.py

* ``pope/shapes_pope_adversarial.json`` — JSON lines, as POPE's COCO files (``question_id, image, text, label``);
* ``pope/shapes_pope_seem_popular.json`` — one pretty-printed JSON array, as POPE's SEEM-based A-OKVQA / GQA files;
* ``pope/images/`` — the images both name;
* ``mme/<subtask>/`` — image and ``question<TAB>Yes|No`` ``.txt`` side by side, as the MME release keeps
  existence, count, position and color (the split ``images/`` + ``questions_answers_YN/`` layout of artwork,
  celebrity, landmark, posters and scene is built by the tests);
* ``lmms-lab/POPE/test-00000-of-00001.parquet`` and ``lmms-lab/MME/test-00000-of-00001.parquet`` — the Hugging
  Face exports' columns, images embedded, written with ``datasets``.

The files are committed; this script documents how they were made and rewrites them identically.
"""

import io
import json
from pathlib import Path

from m3po_utils import shapes as W
from m3po_utils.config import WorldConfig
from m3po_utils.scoring import POPE_SETTINGS, mme_questions, pope_questions

HERE = Path(__file__).resolve().parent


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _parquet(path: Path, columns: dict) -> None:
    import datasets

    features = datasets.Features({k: datasets.Image() if k == "image" else datasets.Value("int64" if k == "id"
                                  else "string") for k in columns})
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(columns, features=features).to_parquet(str(path))


def main() -> None:
    cfg = WorldConfig(n_train=20, n_pref=10, n_eval=6, seed=7)
    scenes = W.make_splits(cfg)["eval"]
    by_id = {s.scene_id: s for s in scenes}
    pope = HERE / "pope"
    (pope / "images").mkdir(parents=True, exist_ok=True)
    for s in scenes:
        W.render(s, cfg).save(pope / "images" / f"{s.scene_id}.png")

    def pope_items(setting: str) -> list[dict]:
        return [{"question_id": i + 1, "image": f"{r['scene_id']}.png", "text": r["question"], "label": r["label"]}
                for i, r in enumerate(pope_questions(scenes, cfg, setting, seed=0, max_positives=2))]

    lines = [json.dumps(item) for item in pope_items("adversarial")]
    (pope / "shapes_pope_adversarial.json").write_text("\n".join(lines) + "\n")
    (pope / "shapes_pope_seem_popular.json").write_text(json.dumps(pope_items("popular"), indent=4) + "\n")

    mme = HERE / "mme"
    rows = mme_questions(scenes[:3], cfg, seed=0)
    for r in rows:
        folder = mme / r["subtask"]
        folder.mkdir(parents=True, exist_ok=True)
        W.render(by_id[r["image"]], cfg).save(folder / f"{r['image']}.png")
    for sub in sorted({r["subtask"] for r in rows}):
        for sid in sorted({r["image"] for r in rows if r["subtask"] == sub}):
            qa = [f"{r['question']}\t{r['answer']}" for r in rows if r["subtask"] == sub and r["image"] == sid]
            (mme / sub / f"{sid}.txt").write_text("\n".join(qa) + "\n")

    cols: dict[str, list] = {k: [] for k in ("id", "question_id", "question", "answer", "image_source", "image",
                                            "category")}
    for setting in POPE_SETTINGS:
        for item in pope_items(setting)[:6]:
            sid = item["image"].removesuffix(".png")
            cols["id"].append(len(cols["id"]))
            cols["question_id"].append(str(item["question_id"]))
            cols["question"].append(item["text"])
            cols["answer"].append(item["label"])
            cols["image_source"].append(sid)
            cols["image"].append({"bytes": _png(W.render(by_id[sid], cfg)), "path": None})
            cols["category"].append(setting)
    _parquet(HERE / "lmms-lab" / "POPE" / "test-00000-of-00001.parquet", cols)

    cols = {k: [] for k in ("question_id", "image", "question", "answer", "category")}
    for r in rows:
        cols["question_id"].append(f"{r['subtask']}/{r['image']}.png")
        cols["image"].append({"bytes": _png(W.render(by_id[r["image"]], cfg)), "path": None})
        cols["question"].append(r["question"])
        cols["answer"].append(r["answer"])
        cols["category"].append(r["subtask"])
    _parquet(HERE / "lmms-lab" / "MME" / "test-00000-of-00001.parquet", cols)


if __name__ == "__main__":
    main()
