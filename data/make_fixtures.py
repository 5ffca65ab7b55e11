"""Write the small benchmark fixtures in data/ (POPE and MME layouts) from shapes-world scenes.

    python data/make_fixtures.py

The files are committed; this script documents how they were made and rewrites them identically.
"""

import json
from pathlib import Path

from m3po_utils import world as W
from m3po_utils.config import WorldConfig
from m3po_utils.evaluation import mme_questions, pope_questions

HERE = Path(__file__).resolve().parent


def main() -> None:
    cfg = WorldConfig(n_train=20, n_pref=10, n_eval=6, seed=7)
    scenes = W.make_splits(cfg)["eval"]
    pope = HERE / "pope"
    (pope / "images").mkdir(parents=True, exist_ok=True)
    for s in scenes:
        W.render(s, cfg).save(pope / "images" / f"{s.scene_id}.png")
    lines = []
    for i, r in enumerate(pope_questions(scenes, cfg, "adversarial", seed=0, max_positives=2)):
        lines.append(json.dumps({"question_id": i + 1, "image": f"{r['scene_id']}.png", "text": r["question"],
                                 "label": r["label"]}))
    (pope / "shapes_pope_adversarial.json").write_text("\n".join(lines) + "\n")
    mme = HERE / "mme"
    rows = mme_questions(scenes[:3], cfg, seed=0)
    for sub, layout in (("existence", "split"), ("count", "flat")):
        folder = mme / sub
        img_dir = folder / "images" if layout == "split" else folder
        qa_dir = folder / "questions_answers_YN" if layout == "split" else folder
        img_dir.mkdir(parents=True, exist_ok=True)
        qa_dir.mkdir(parents=True, exist_ok=True)
        by_image: dict[str, list[str]] = {}
        for r in rows:
            if r["subtask"] == sub:
                by_image.setdefault(r["image"], []).append(f"{r['question']}\t{r['answer']}")
        for sid, qa in by_image.items():
            W.render(next(s for s in scenes if s.scene_id == sid), cfg).save(img_dir / f"{sid}.png")
            (qa_dir / f"{sid}.txt").write_text("\n".join(qa) + "\n")


if __name__ == "__main__":
    main()
