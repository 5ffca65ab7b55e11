"""Evaluation of an LVLM in the shapes world: POPE-style existence and description hallucination (CHAIR).

POPE (Li et al., 2023, "Evaluating Object Hallucination in Large Vision-Language Models") asks "Is there a
<object> in the image?" for objects that are present (label yes) and, after each, for one absent object drawn
in one of three ways — random, popular (most frequent objects first) or adversarial (objects that co-occur
most with the present one first). Its evaluation script keeps the text before the first '.', deletes commas,
splits on spaces and reads "no" if any word is ``No``, ``no`` or ``not``; anything else is "yes".

CHAIR (Rohrbach et al., 2018): CHAIR_i = hallucinated object mentions / all object mentions; CHAIR_s = share
of descriptions with at least one hallucinated object. Mentions are counted once per object per description.

MME (Fu et al., 2023) perception subtasks ask two yes/no questions per image, one whose answer is Yes and one
whose answer is No. Its calculation script lower-cases the prediction; "yes" or "no" count as they are,
otherwise the first four characters decide ("yes" in them ⇒ yes, else "no" in them ⇒ no, else "other", which is
always wrong). Per subtask: acc = share of questions right, acc+ = share of images with both right,
score = 100·acc + 100·acc+ (at most 200); the official totals are the perception and the cognition sums.

Real benchmark files (POPE question files, the MME release, their parquet exports) are read by
:mod:`m3po_utils.benchfiles`; ``load_pope_file`` and ``load_mme_dir`` are re-exported here.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from m3po_utils import world as W
from m3po_utils.benchfiles import load_mme_dir as load_mme_dir  # re-exported: evaluation.load_mme_dir
from m3po_utils.benchfiles import load_pope_file as load_pope_file  # re-exported
from m3po_utils.benchfiles import mme_group, open_image
from m3po_utils.config import WorldConfig
from m3po_utils.models.generate import greedy_answers

POPE_SETTINGS = ("random", "popular", "adversarial")
# MME-style perception subtasks the shapes world supports, and the yes/no family that asks each.
MME_SUBTASKS = {"existence": "existence", "count": "yn_count", "position": "yn_position", "color": "yn_color"}


def pope_questions(scenes: Sequence[W.Scene], cfg: WorldConfig, setting: str, seed: int = 0,
                   max_positives: int = 3) -> list[dict]:
    """POPE question rows for ``scenes``: each positive is followed by one negative of ``setting``."""
    if setting not in POPE_SETTINGS:
        raise ValueError(f"setting={setting!r} is not a POPE setting; use one of {POPE_SETTINGS}")
    rng = np.random.default_rng(seed)
    freq = W.shape_frequency(scenes, cfg.shapes)
    popular = sorted(cfg.shapes, key=lambda s: (-freq[s], cfg.shapes.index(s)))
    co = W.cooccurrence(scenes, cfg.shapes)
    rows: list[dict] = []
    for i, scene in enumerate(scenes):
        present = [o.shape for o in scene.objects]
        positives = [present[j] for j in rng.permutation(len(present))[:max_positives]]
        used: set[str] = set()
        for pos in positives:
            absent = [s for s in cfg.shapes if s not in scene.shapes() and s not in used]
            if not absent:
                break
            if setting == "random":
                neg = absent[rng.integers(len(absent))]
            elif setting == "popular":
                neg = next(s for s in popular if s in absent)
            else:
                p = cfg.shapes.index(pos)
                neg = max(absent, key=lambda s: (co[p, cfg.shapes.index(s)], -cfg.shapes.index(s)))
            used.add(neg)
            for shape, label in ((pos, "yes"), (neg, "no")):
                rows.append({"scene": i, "scene_id": scene.scene_id, "shape": shape, "label": label,
                             "question": W.existence_instruction(scene, shape, cfg).text})
    return rows


def partner_share(scenes: Sequence[W.Scene], rows: Sequence[dict], answers: Sequence[str], cfg: WorldConfig
                  ) -> dict[str, float]:
    """Of the POPE false positives ("yes" to an absent shape), how many are co-occurrence hallucinations: the
    asked shape is a ``cfg.partners`` partner (either side of the pair) of a shape that is in the scene.

    ``{"false_positives": n, "partner": k, "partner_share": k / n}`` (share None without false positives).
    """
    fp = partner = 0
    for r, ans in zip(rows, answers, strict=True):
        if r["label"] != "no" or pope_parse(ans) != "yes":
            continue
        fp += 1
        partner += bool(W.mates_of(r["shape"], cfg) & scenes[r["scene"]].shapes())
    return {"false_positives": fp, "partner": partner, "partner_share": partner / fp if fp else None}


def pope_parse(answer: str) -> str:
    """POPE's answer rule: "no" if a word of the first sentence is No/no/not, else "yes" (case-sensitive)."""
    words = answer.split(".")[0].replace(",", "").split(" ")
    return "no" if any(w in ("No", "no", "not") for w in words) else "yes"


def _ratio(num: float, den: float, name: str) -> float:
    if den == 0:
        warnings.warn(f"{name} has a zero denominator; reported as 0", stacklevel=3)
        return 0.0
    return num / den


def pope_metrics(answers: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio (share of predictions that are yes), "yes" = positive."""
    if len(answers) != len(labels):
        raise ValueError(f"got {len(answers)} answers for {len(labels)} labels")
    bad = sorted({lab for lab in labels if lab not in ("yes", "no")})
    if bad:
        raise ValueError(f"labels must be 'yes' or 'no', got {bad[:3]}")
    pred = [pope_parse(a) for a in answers]
    tp = sum(p == "yes" and g == "yes" for p, g in zip(pred, labels, strict=True))
    fp = sum(p == "yes" and g == "no" for p, g in zip(pred, labels, strict=True))
    fn = sum(p == "no" and g == "yes" for p, g in zip(pred, labels, strict=True))
    tn = sum(p == "no" and g == "no" for p, g in zip(pred, labels, strict=True))
    precision = _ratio(tp, tp + fp, "precision")
    recall = _ratio(tp, tp + fn, "recall")
    f1 = _ratio(2 * precision * recall, precision + recall, "f1")
    return {"accuracy": _ratio(tp + tn, len(pred), "accuracy"), "precision": precision, "recall": recall,
            "f1": f1, "yes_ratio": _ratio(tp + fp, len(pred), "yes_ratio")}


def description_metrics(scenes: Sequence[W.Scene], descriptions: Sequence[str], cfg: WorldConfig) -> dict:
    """Object precision / recall, CHAIR_i and CHAIR_s, and the mean verifier score of descriptions."""
    mentions = hallucinated = covered = n_objects = with_hall = 0
    scores = []
    for scene, text in zip(scenes, descriptions, strict=True):
        named = set(W.object_mentions(text, cfg))
        hall = named - scene.shapes()
        mentions += len(named)
        hallucinated += len(hall)
        covered += len(named & scene.shapes())
        n_objects += len(scene.objects)
        with_hall += bool(hall)
        scores.append(W.verify(scene, "Describe the image.", text, cfg).score)
    return {"precision": _ratio(mentions - hallucinated, mentions, "precision"),
            "recall": _ratio(covered, n_objects, "recall"),
            "chair_i": _ratio(hallucinated, mentions, "chair_i"),
            "chair_s": _ratio(with_hall, len(scores), "chair_s"),
            "verifier_score": float(np.mean(scores)) if scores else 0.0, "n": len(scores)}


def family_accuracy(model, processor, scenes: Sequence[W.Scene], cfg: WorldConfig, seed: int = 0,
                    batch_size: int = 64) -> dict[str, float]:
    """Share of greedy answers the verifier marks fully correct, per instruction family (one of each per scene).

    The questions are answered grouped by family, so that a batch of yes/no questions stops after a few tokens
    instead of running as long as the descriptions beside it."""

    rng = np.random.default_rng(seed)
    rows = [(s, ins) for s in scenes for ins in W.instructions_for(s, cfg, rng)]
    rendered = {s.scene_id: W.render(s, cfg) for s in scenes}
    order = sorted(range(len(rows)), key=lambda i: rows[i][1].family)
    got = greedy_answers(model, processor, [rendered[rows[i][0].scene_id] for i in order],
                         [rows[i][1].text for i in order], batch_size=batch_size)
    answers = [""] * len(rows)
    for i, a in zip(order, got, strict=True):
        answers[i] = a
    by_family: dict[str, list[float]] = {}
    for (scene, ins), ans in zip(rows, answers, strict=True):
        by_family.setdefault(ins.family, []).append(float(W.verify(scene, ins.text, ans, cfg).correct))
    return {f"acc_{k}": float(np.mean(v)) for k, v in by_family.items()}


def base_model_report(model, processor, scenes: Sequence[W.Scene], cfg: WorldConfig, seed: int = 0,
                      batch_size: int = 64) -> dict:
    """Held-out metrics of an LVLM: POPE per setting, description hallucination and per-family accuracy.

    Returns ``{"pope": {setting: metrics}, "describe": {...}, "families": {...}, "examples": [...]}``.
    """

    images = [W.render(s, cfg) for s in scenes]
    report: dict = {"pope": {}}
    for setting in POPE_SETTINGS:
        rows = pope_questions(scenes, cfg, setting, seed=seed)
        answers = greedy_answers(model, processor, [images[r["scene"]] for r in rows],
                                 [r["question"] for r in rows], max_new_tokens=8, batch_size=batch_size)
        report["pope"][setting] = (pope_metrics(answers, [r["label"] for r in rows]) | {"n": len(rows)}
                                   | partner_share(scenes, rows, answers, cfg))
    descriptions = greedy_answers(model, processor, images, ["Describe the image."] * len(scenes),
                                  batch_size=batch_size)
    report["describe"] = description_metrics(scenes, descriptions, cfg)
    report["families"] = family_accuracy(model, processor, scenes, cfg, seed=seed, batch_size=batch_size)
    report["examples"] = [{"scene_id": s.scene_id, "truth": W.describe(s, cfg), "model": d,
                           "explanation": W.verify(s, "Describe the image.", d, cfg).explanation}
                          for s, d in zip(scenes, descriptions, strict=True)]
    return report


# --------------------------------------------------------------------------- MME-style perception

def mme_parse(prediction: str) -> str:
    """MME's rule: "yes" / "no" / "other" from a free-form prediction."""
    p = str(prediction).lower()
    if p in ("yes", "no"):
        return p
    head = p[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_questions(scenes: Sequence[W.Scene], cfg: WorldConfig, seed: int = 0) -> list[dict]:
    """Two questions per image and subtask, one whose answer is Yes and one whose answer is No."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, scene in enumerate(scenes):
        present = [o.shape for o in scene.objects]
        absent = [s for s in cfg.shapes if s not in present]
        for subtask, family in MME_SUBTASKS.items():
            shape = present[rng.integers(len(present))]
            obj = scene.obj(shape)
            if family == "existence":
                if not absent:
                    continue
                pair = [W.existence_instruction(scene, shape, cfg),
                        W.existence_instruction(scene, absent[rng.integers(len(absent))], cfg)]
            elif family == "yn_count":
                others = [k for k in range(1, cfg.max_objects + 1) if k != len(present)]
                pair = [W.make_instruction(family, scene, cfg, n=len(present)),
                        W.make_instruction(family, scene, cfg, n=others[rng.integers(len(others))])]
            elif family == "yn_color":
                others = [c for c in cfg.colors if c != obj.color]
                pair = [W.make_instruction(family, scene, cfg, shape=shape, color=obj.color),
                        W.make_instruction(family, scene, cfg, shape=shape, color=others[rng.integers(len(others))])]
            else:
                names = [W.position_name(c, cfg.grid) for c in range(cfg.grid * cfg.grid)]
                true_p = W.position_name(obj.cell, cfg.grid)
                others = [p for p in names if p != true_p]
                pair = [W.make_instruction(family, scene, cfg, shape=shape, position=true_p),
                        W.make_instruction(family, scene, cfg, shape=shape, position=others[rng.integers(len(others))])]
            for ins in pair:
                rows.append({"subtask": subtask, "image": scene.scene_id, "scene": i, "question": ins.text,
                             "answer": W.yes_no(ins.reference).capitalize()})
    return rows


def mme_scores(rows: Sequence[dict]) -> dict:
    """Per-subtask acc, acc+ and score (100·acc + 100·acc+), and the sums MME's calculation script reports.

    ``rows``: mappings with ``subtask``, ``image`` (or ``image_id``: acc+ pairs the questions of one image),
    ``answer`` ("Yes"/"No") and ``prediction``. ``perception`` sums the perception subtasks present (existence,
    count, position, color, posters, celebrity, scene, landmark, artwork, OCR), ``cognition`` the cognition ones
    (commonsense_reasoning, numerical_calculation, text_translation, code_reasoning) — the official tool reports
    the two apart, never added up. ``total`` is the headline "MME" score: the perception total, plus any subtask
    of another name (a custom one); cognition is never in it. The shapes world's subtasks (existence, count,
    position, color) are perception subtasks, so there ``total == perception``.
    """
    by_sub: dict[str, dict[str, list[bool]]] = {}
    for r in rows:
        truth = str(r["answer"]).strip().lower()
        if truth not in ("yes", "no"):
            raise ValueError(f"answer {r['answer']!r} must be 'Yes' or 'No'")
        ok = mme_parse(r["prediction"]) == truth
        by_sub.setdefault(r["subtask"], {}).setdefault(str(r.get("image_id", r["image"])), []).append(ok)
    out: dict = {"subtasks": {}}
    for name, images in by_sub.items():
        answers = [ok for oks in images.values() for ok in oks]
        acc = sum(answers) / len(answers)
        acc_plus = sum(all(oks) for oks in images.values()) / len(images)
        out["subtasks"][name] = {"acc": acc, "acc_plus": acc_plus, "score": 100 * acc + 100 * acc_plus,
                                 "group": mme_group(name)}
    for group in ("perception", "cognition"):
        out[group] = sum(v["score"] for v in out["subtasks"].values() if v["group"] == group)
    out["total"] = sum(v["score"] for v in out["subtasks"].values() if v["group"] != "cognition")
    return out


# --------------------------------------------------------------------------- instruction following, format

def ift_score(scenes: Sequence[W.Scene], instructions: Sequence[str], answers: Sequence[str],
              cfg: WorldConfig) -> dict:
    """Share of format-constrained instructions followed *and* answered correctly (and format alone)."""
    correct = followed = 0
    for scene, ins, ans in zip(scenes, instructions, answers, strict=True):
        v = W.verify(scene, ins, ans, cfg)
        if not v.family.startswith("fmt_"):
            raise ValueError(f"instruction {ins!r} has no format constraint; IFT takes fmt_* instructions only")
        correct += v.correct
        followed += not v.format_violations
    n = len(answers)
    return {"ift": _ratio(correct, n, "ift"), "format_followed": _ratio(followed, n, "format_followed"), "n": n}


def yes_no_compliance(answers: Sequence[str]) -> float:
    """Share of answers to yes/no questions that contain a yes or a no at all (catches a model that stopped
    answering yes/no, one way DPO lowers MME)."""
    return _ratio(sum(W.yes_no(a) is not None for a in answers), len(answers), "yes_no_compliance")


# --------------------------------------------------------------------------- real benchmark files

def answer_file_questions(model, processor, rows: Sequence[dict], batch_size: int = 16,
                          max_new_tokens: int = 16) -> list[str]:
    """Greedy answers of any LLaVA-class model (with or without an adapter) to loaded benchmark rows (images as
    paths or decoded, see :mod:`m3po_utils.benchfiles`)."""
    cache: dict[str, object] = {}
    images = []
    for r in rows:
        key = str(r.get("image_id", r["image"]))
        if key not in cache:
            cache[key] = open_image(r["image"])
        images.append(cache[key])
    return greedy_answers(model, processor, images, [r["question"] for r in rows], max_new_tokens=max_new_tokens,
                          batch_size=batch_size)
