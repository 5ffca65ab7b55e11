"""The benchmarks: their questions, how an answer is read, and each metric's formula — once.

Every benchmark is one :class:`Benchmark` in :data:`BENCHMARKS`: the questions it asks of the shapes world's
evaluation scenes, the per-scene counts it keeps (:data:`STATS` is their concatenation), and its metrics as
formulas of summed counts. The same formula scores a list of answers (:func:`pope_metrics`, :func:`mme_scores`,
:func:`description_metrics`, :func:`ift_score`: notebook 00's held-out checks, real benchmark files) and every
bootstrap draw of notebook 06 (:func:`metrics_from_totals`), so the two can never drift apart. A new benchmark
is one more entry in :data:`BENCHMARKS`.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from m3po_utils import shapes as W
from m3po_utils.benchfiles import MME_SUBTASK_NAMES, mme_group, open_image
from m3po_utils.benchfiles import load_mme_dir as load_mme_dir  # re-exported: scoring.load_mme_dir
from m3po_utils.benchfiles import load_pope_file as load_pope_file  # re-exported
from m3po_utils.config import WorldConfig
from m3po_utils.models.generate import greedy_answers
from m3po_utils.shapes import ifeval as IF
from m3po_utils.shapes import visual_ifeval

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
    """One list's ratio: a zero denominator warns and gives 0."""
    if den == 0:
        warnings.warn(f"{name} has a zero denominator; reported as 0", stacklevel=4)
        return 0.0
    return num / den


def _div(num, den, name: str = "") -> np.ndarray:
    """Counts' ratio, element-wise (any leading shape: seeds, bootstrap draws); a zero denominator gives 0."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


Div = Callable[..., object]


# --------------------------------------------------------------------------- formulas, one per benchmark

def pope_formula(tp, fp, fn, tn, div: Div = _div) -> dict:
    """POPE's metrics from its confusion counts, "yes" = positive (Li et al. 2023's evaluation script)."""
    precision, recall = div(tp, tp + fp, "precision"), div(tp, tp + fn, "recall")
    return {"accuracy": div(tp + tn, tp + fp + fn + tn, "accuracy"), "precision": precision, "recall": recall,
            "f1": div(2 * precision * recall, precision + recall, "f1"),
            "yes_ratio": div(tp + fp, tp + fp + fn + tn, "yes_ratio")}


def mme_formula(right, q, both, img, div: Div = _div) -> dict:
    """One MME subtask: acc (questions right), acc+ (images with both right), score = 100·acc + 100·acc+
    (Fu et al. 2023's calculation script)."""
    acc, acc_plus = div(right, q, "acc"), div(both, img, "acc_plus")
    return {"acc": acc, "acc_plus": acc_plus, "score": 100 * acc + 100 * acc_plus}


def chair_formula(mentions, hallucinated, with_hall, n, objects, covered, div: Div = _div) -> dict:
    """CHAIR (Rohrbach et al. 2018) and object precision / recall of descriptions."""
    return {"precision": div(mentions - hallucinated, mentions, "precision"), "recall": div(covered, objects, "recall"),
            "chair_i": div(hallucinated, mentions, "chair_i"), "chair_s": div(with_hall, n, "chair_s")}


def ift_formula(correct, followed, n, div: Div = _div) -> dict:
    """IFT: format followed *and* answer correct; and the format alone."""
    return {"ift": div(correct, n, "ift"), "format_followed": div(followed, n, "format_followed")}


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
    return pope_formula(tp, fp, fn, tn, div=_ratio)


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
    return chair_formula(mentions, hallucinated, with_hall, len(scores), n_objects, covered, div=_ratio) | {
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
        out["subtasks"][name] = mme_formula(sum(answers), len(answers), sum(all(oks) for oks in images.values()),
                                            len(images), div=_ratio) | {"group": mme_group(name)}
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
    return ift_formula(correct, followed, n, div=_ratio) | {"n": n}


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


# --------------------------------------------------------------------------- the benchmark registry

# MME subtasks the per-scene counts cover: the shapes world's (all perception subtasks), then the rest of MME's 14.
MME_STAT_SUBTASKS: tuple[str, ...] = tuple(dict.fromkeys([*MME_SUBTASKS, *MME_SUBTASK_NAMES]))
IFT_FAMILIES = ("fmt_one_word", "fmt_list", "fmt_start", "fmt_max_words")
SHORT_FAMILIES = ("color", "count", "position")     # the judge's short open questions, one per scene in turn
JUDGED_KINDS = ("describe", "short")                # the question kinds the judge scores


@dataclass
class Tally:
    """One model's answers to the question set, and where each benchmark adds its per-scene counts."""

    scenes: Sequence
    questions: Sequence[dict]
    answers: Sequence[str]
    cfg: WorldConfig
    out: np.ndarray
    col: dict[str, int]
    judge: np.ndarray | None = None
    judge_base: np.ndarray | None = None

    def add(self, scene: int, name: str, v: float = 1.0) -> None:
        self.out[scene, self.col[name]] += v

    def rows(self, kinds: Callable[[str], bool]):
        """``(index, question, answer)`` of the rows whose kind ``kinds`` accepts, in question order."""
        return ((k, q, a) for k, (q, a) in enumerate(zip(self.questions, self.answers, strict=True))
                if kinds(q["kind"]))


@dataclass(frozen=True)
class Headline:
    """A metric of the comparison table: its direction, its column, and the counts it needs (every group of
    count-name prefixes needs one prefix with data, or the metric is left out: benchmark files have no
    descriptions)."""

    metric: str
    higher_is_better: bool
    column: int
    requires: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its per-scene counts, how one model's answers add to them, its metrics from summed counts
    (``metrics(c)`` with ``c(name)`` the summed count, any leading shape), its headline metrics and its questions
    — the whole set from its own random stream (``questions``), or one per scene from the stream the per-scene
    benchmarks share (``scene_question``)."""

    name: str
    source: str
    stats: tuple[str, ...]
    count: Callable[[Tally], None]
    metrics: Callable[[Callable[[str], np.ndarray]], dict[str, np.ndarray]]
    headline: tuple[Headline, ...] = ()
    questions: Callable[..., list[dict]] | None = None
    scene_question: Callable[..., dict] | None = None


def _pope_rows(scenes, cfg, seed):
    return [{"kind": f"pope_{setting}", "scene": r["scene"], "family": "existence", "question": r["question"],
             "label": r["label"]} for setting in POPE_SETTINGS for r in pope_questions(scenes, cfg, setting, seed=seed)]


def _pope_count(t: Tally) -> None:
    for _, q, a in t.rows(lambda k: k.startswith("pope_")):
        pred = pope_parse(a)
        t.add(q["scene"], f"{q['kind']}_{'t' if pred == q['label'] else 'f'}{'p' if pred == 'yes' else 'n'}")


def _pope_metrics(c) -> dict:
    m = {}
    for s in POPE_SETTINGS:
        for k, v in pope_formula(*(c(f"pope_{s}_{x}") for x in ("tp", "fp", "fn", "tn"))).items():
            m[f"pope_{s}_{k}"] = v
    m["pope_mean_accuracy"] = np.mean([m[f"pope_{s}_accuracy"] for s in POPE_SETTINGS], axis=0)
    return m


def _mme_rows(scenes, cfg, seed):
    return [{"kind": "mme", "scene": r["scene"], "family": MME_SUBTASKS[r["subtask"]], "question": r["question"],
             "subtask": r["subtask"], "image": r["image"], "answer": r["answer"]}
            for r in mme_questions(scenes, cfg, seed=seed)]


def _mme_count(t: Tally) -> None:
    oks: dict[tuple[str, int], list[bool]] = {}
    for _, q, a in t.rows(lambda k: k == "mme"):
        if q["subtask"] not in MME_STAT_SUBTASKS:
            raise ValueError(f"MME subtask {q['subtask']!r} is not one of MME's: {list(MME_STAT_SUBTASKS)}; "
                             "name its folder (or category) after the subtask it holds")
        oks.setdefault((q["subtask"], q["scene"]), []).append(mme_parse(a) == q["answer"].lower())
    for (sub, i), ok in oks.items():
        t.add(i, f"mme_{sub}_q", len(ok))
        t.add(i, f"mme_{sub}_right", sum(ok))
        t.add(i, f"mme_{sub}_img")
        t.add(i, f"mme_{sub}_both", float(all(ok)))


def _mme_metrics(c) -> dict:
    m = {}
    sums = {"perception": 0.0, "cognition": 0.0}
    for sub in MME_STAT_SUBTASKS:
        if sub not in MME_SUBTASKS and not np.any(c(f"mme_{sub}_q") > 0):
            continue   # a subtask nobody asked: no metric (the shapes world asks its four only)
        for k, v in mme_formula(*(c(f"mme_{sub}_{x}") for x in ("right", "q", "both", "img"))).items():
            m[f"mme_{sub}_{k}"] = v
        sums[mme_group(sub)] = sums[mme_group(sub)] + m[f"mme_{sub}_score"]
    shape = np.shape(c(f"mme_{MME_STAT_SUBTASKS[0]}_q"))
    m["mme_total"] = np.broadcast_to(np.asarray(sums["perception"], dtype=np.float64), shape).copy()
    m["mme_cognition"] = np.broadcast_to(np.asarray(sums["cognition"], dtype=np.float64), shape).copy()
    return m


def _describe_row(i, scene, cfg, rng):
    ins = W.make_instruction("describe", scene, cfg, rng=rng)
    return {"kind": "describe", "scene": i, "family": "describe", "question": ins.text, "reference": ins.reference}


def _chair_count(t: Tally) -> None:
    for _, q, a in t.rows(lambda k: k == "describe"):
        i, scene = q["scene"], t.scenes[q["scene"]]
        named = set(W.object_mentions(a, t.cfg))
        hall = named - scene.shapes()
        t.add(i, "desc_n")
        t.add(i, "desc_mentions", len(named))
        t.add(i, "desc_hall", len(hall))
        t.add(i, "desc_any_hall", float(bool(hall)))
        t.add(i, "desc_objects", len(scene.objects))
        t.add(i, "desc_covered", len(named & scene.shapes()))


def _chair_metrics(c) -> dict:
    f = chair_formula(c("desc_mentions"), c("desc_hall"), c("desc_any_hall"), c("desc_n"), c("desc_objects"),
                      c("desc_covered"))
    return {"chair_i": f["chair_i"], "chair_s": f["chair_s"], "desc_precision": f["precision"],
            "desc_recall": f["recall"]}


def _ift_row(i, scene, cfg, rng):
    fam = IFT_FAMILIES[i % len(IFT_FAMILIES)]
    ins = W.make_instruction(fam, scene, cfg, rng=rng)
    return {"kind": "ift", "scene": i, "family": fam, "question": ins.text, "reference": ins.reference}


def _ift_count(t: Tally) -> None:
    for _, q, a in t.rows(lambda k: k == "ift"):
        v = W.verify(t.scenes[q["scene"]], q["question"], a, t.cfg)
        t.add(q["scene"], "ift_n")
        t.add(q["scene"], "ift_correct", float(v.correct))
        t.add(q["scene"], "ift_followed", float(not v.format_violations))


IFEVAL_SPLITS = {"seen": IF.SEEN, "held": IF.HELD_OUT}    # constraint types trained on / never trained on
IFEVAL_COUNTS = ("n", "prompt_strict", "prompt_loose", "inst_n", "inst_strict", "inst_loose", "bind_n", "bind_strict",
                 "content", "right")


def _ifeval_rows(scenes, cfg, seed):
    """Per scene one question with constraints of the types the base model trained on (``seen``) and one with types
    it never saw (``held``), one or two constraints in turn, from their own random stream (``seed + 3``)."""
    rng = np.random.default_rng(seed + 3)
    rows = []
    for i, scene in enumerate(scenes):
        for split, types in IFEVAL_SPLITS.items():
            ins = W.make_instruction("ifeval", scene, cfg, rng=rng, types=types, n_constraints=1 + i % 2)
            rows.append({"kind": f"ifeval_{split}", "scene": i, "family": "ifeval", "question": ins.text,
                         "reference": ins.reference})
    return rows


def _ifeval_count(t: Tally) -> None:
    for _, q, a in t.rows(lambda k: k.startswith("ifeval_")):
        i, pre = q["scene"], q["kind"]
        s = visual_ifeval.score(q["question"], t.scenes[i], a, t.cfg)
        for name, v in (("n", 1), ("prompt_strict", all(s["strict"])), ("prompt_loose", all(s["loose"])),
                        ("inst_n", len(s["strict"])), ("inst_strict", sum(s["strict"])),
                        ("inst_loose", sum(s["loose"])), ("bind_n", sum(s["binding"])),
                        ("bind_strict", sum(ok for ok, b in zip(s["strict"], s["binding"], strict=True) if b)),
                        ("content", s["content_correct"]), ("right", s["right"])):
            t.add(i, f"{pre}_{name}", float(v))


def _ifeval_metrics(c) -> dict:
    m = {}
    for split in IFEVAL_SPLITS:
        n, inst = c(f"ifeval_{split}_n"), c(f"ifeval_{split}_inst_n")
        for mode in ("strict", "loose"):
            m[f"ifeval_{split}_prompt_{mode}"] = _div(c(f"ifeval_{split}_prompt_{mode}"), n)
            m[f"ifeval_{split}_instruction_{mode}"] = _div(c(f"ifeval_{split}_inst_{mode}"), inst)
        m[f"ifeval_{split}_binding_strict"] = _div(c(f"ifeval_{split}_bind_strict"), c(f"ifeval_{split}_bind_n"))
        m[f"ifeval_{split}_content"] = _div(c(f"ifeval_{split}_content"), n)
        m[f"ifeval_{split}_right"] = _div(c(f"ifeval_{split}_right"), n)
    return m


def _dialogue_rows(scenes, cfg, seed):
    """Per scene one two-turn question (``dialogue``) from its own random stream (``seed + 4``): on every other scene
    the first answer made a shape up and the follow-up asks about it (where the scene has an absent partner)."""
    rng = np.random.default_rng(seed + 4)
    rows = []
    for i, scene in enumerate(scenes):
        ins = W.make_instruction(W.DIALOGUE, scene, cfg, rng=rng, hallucinated=bool(i % 2))
        rows.append({"kind": "dialogue", "scene": i, "family": W.DIALOGUE, "question": ins.text,
                     "reference": ins.reference})
    return rows


def _dialogue_count(t: Tally) -> None:
    for _, q, a in t.rows(lambda k: k == "dialogue"):
        i = q["scene"]
        _, params = W.parse_instruction(q["question"], t.cfg)
        c = W.follow_up_check(t.scenes[i], params, a, t.cfg)
        right = c["right"]
        t.add(i, "dlg_n")
        t.add(i, "dlg_right", float(right))
        t.add(i, "dlg_history", float(c["history_ok"]))
        t.add(i, "dlg_image", float(c["image_ok"]))
        t.add(i, "dlg_made_up_n" if c["made_up"] else "dlg_clean_n")
        t.add(i, "dlg_carried", float(c["carried"]))
        t.add(i, "dlg_clean_right", float(right and not c["made_up"]))


def _dialogue_metrics(c) -> dict:
    return {"dialogue_right": _div(c("dlg_right"), c("dlg_n")),
            "dialogue_history": _div(c("dlg_history"), c("dlg_n")),
            "dialogue_image": _div(c("dlg_image"), c("dlg_n")),
            "dialogue_clean_right": _div(c("dlg_clean_right"), c("dlg_clean_n")),
            "dialogue_carried": _div(c("dlg_carried"), c("dlg_made_up_n"))}


def _yes_no_count(t: Tally) -> None:
    for _, q, a in t.rows(lambda k: k.startswith("pope_") or k == "mme"):
        t.add(q["scene"], "yn_n")
        t.add(q["scene"], "yn_ok", float(W.yes_no(a) is not None))


def _short_row(i, scene, cfg, rng):
    fam = SHORT_FAMILIES[i % len(SHORT_FAMILIES)]
    ins = W.make_instruction(fam, scene, cfg, rng=rng)
    return {"kind": "short", "scene": i, "family": fam, "question": ins.text, "reference": ins.reference}


def _judge_count(t: Tally) -> None:
    if t.judge is None or t.judge_base is None:
        return
    for k, q, _ in t.rows(lambda _kind: True):
        j, jb = t.judge[k], t.judge_base[k]
        if np.isfinite(j) and np.isfinite(jb):
            t.add(q["scene"], "judge_n")
            t.add(q["scene"], "judge_sum", float(j))
            t.add(q["scene"], "judge_win", 1.0 if j > jb else 0.5 if j == jb else 0.0)


_POPE_ALL = tuple((f"pope_{s}_",) for s in POPE_SETTINGS)

BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("pope", "Li et al. 2023, official answer parse",
              tuple(f"pope_{s}_{c}" for s in POPE_SETTINGS for c in ("tp", "fp", "fn", "tn")),
              _pope_count, _pope_metrics,
              (Headline("pope_adversarial_f1", True, 3, (("pope_adversarial_",),)),
               Headline("pope_mean_accuracy", True, 4, _POPE_ALL)), questions=_pope_rows),
    Benchmark("mme", "Fu et al. 2023, official calculation script",
              tuple(f"mme_{t}_{c}" for t in MME_STAT_SUBTASKS for c in ("q", "right", "img", "both")),
              _mme_count, _mme_metrics,
              (Headline("mme_total", True, 1, (("mme_",),)),
               Headline("mme_cognition", True, 2, (tuple(f"mme_{t}_" for t in MME_STAT_SUBTASKS
                                                          if mme_group(t) == "cognition"),))),
              questions=_mme_rows),
    Benchmark("chair", "Rohrbach et al. 2018",
              ("desc_n", "desc_mentions", "desc_hall", "desc_any_hall", "desc_objects", "desc_covered"),
              _chair_count, _chair_metrics, (Headline("chair_i", False, 5, (("desc_n",),)),),
              scene_question=_describe_row),
    Benchmark("ift", "this project's verifier", ("ift_n", "ift_correct", "ift_followed"), _ift_count,
              lambda c: ift_formula(c("ift_correct"), c("ift_followed"), c("ift_n")),
              (Headline("ift", True, 6, (("ift_n",),)),), scene_question=_ift_row),
    Benchmark("ifeval", "Zhou et al. 2023 (IFEval) checks and scoring; content by this project's verifier",
              tuple(f"ifeval_{s}_{c}" for s in IFEVAL_SPLITS for c in IFEVAL_COUNTS), _ifeval_count,
              _ifeval_metrics, (Headline("ifeval_seen_right", True, 7, (("ifeval_seen_n",),)),
                                Headline("ifeval_held_prompt_strict", True, 8, (("ifeval_held_n",),))),
              questions=_ifeval_rows),
    Benchmark("dialogue", "this project: a follow-up about a shape the first answer named, scored in context",
              ("dlg_n", "dlg_right", "dlg_history", "dlg_image", "dlg_clean_n", "dlg_clean_right", "dlg_made_up_n",
               "dlg_carried"), _dialogue_count, _dialogue_metrics,
              (Headline("dialogue_right", True, 9, (("dlg_n",),)),
               Headline("dialogue_carried", False, 10, (("dlg_made_up_n",),))), questions=_dialogue_rows),
    Benchmark("yes_no_compliance", "this project (a guard: a model that stops answering yes/no loses MME)",
              ("yn_n", "yn_ok"), _yes_no_count, lambda c: {"yes_no_compliance": _div(c("yn_ok"), c("yn_n"))},
              (Headline("yes_no_compliance", True, 13, (("yn_n",),)),)),
    Benchmark("judge", "the judge of notebook 02; win rate against the SFT base",
              ("judge_n", "judge_sum", "judge_win"), _judge_count,
              lambda c: {"judge_score": _div(c("judge_sum"), c("judge_n")),
                         "judge_win_rate": _div(c("judge_win"), c("judge_n"))},
              (Headline("judge_score", True, 11, (("judge_n",),)),
               Headline("judge_win_rate", True, 12, (("judge_n",),))),
              scene_question=_short_row),
)

# Per-scene counts every metric is a ratio of (every benchmark's, in registry order).
STATS: tuple[str, ...] = tuple(name for b in BENCHMARKS for name in b.stats)
_COL = {name: i for i, name in enumerate(STATS)}
_HEADLINES = sorted((h for b in BENCHMARKS for h in b.headline), key=lambda h: h.column)
# Headline metrics (the comparison table), in the order of the paper's layout; True = higher is better.
HEADLINE: dict[str, bool] = {h.metric: h.higher_is_better for h in _HEADLINES}


def eval_questions(scenes: Sequence[W.Scene], cfg: WorldConfig, seed: int = 0) -> list[dict]:
    """The fixed question set: every benchmark's whole-set questions, then per scene one question of each
    per-scene benchmark (from one shared random stream, ``seed + 1``).

    Every row has ``kind``, ``scene`` (index into ``scenes``), ``family`` and ``question``; POPE rows carry
    ``label``, MME rows ``subtask`` / ``answer`` / ``image``. ``describe`` and ``short`` rows are the judged prompts.
    """
    rows: list[dict] = []
    for b in BENCHMARKS:
        if b.questions is not None:
            rows += b.questions(scenes, cfg, seed)
    per_scene = [b for b in BENCHMARKS if b.scene_question is not None]
    rng = np.random.default_rng(seed + 1)
    for i, scene in enumerate(scenes):
        rows += [b.scene_question(i, scene, cfg, rng) for b in per_scene]
    return rows


def scene_stats(scenes: Sequence, questions: Sequence[dict], answers: Sequence[str], cfg: WorldConfig,
                judge: np.ndarray | None = None, judge_base: np.ndarray | None = None) -> np.ndarray:
    """``(len(scenes), len(STATS))`` counts of one model's answers, every benchmark adding its own.

    ``scenes`` holds ``None`` for benchmark-file images (only POPE / MME rows, which need no scene).
    ``judge`` / ``judge_base``: the judge's scores of this model's and of the base model's answer for every
    row (NaN for rows that are not judged, or whose request failed: those are left out).
    """
    if len(answers) != len(questions):
        raise ValueError(f"got {len(answers)} answers for {len(questions)} questions")
    tally = Tally(scenes, questions, answers, cfg, np.zeros((len(scenes), len(STATS))), _COL, judge, judge_base)
    for b in BENCHMARKS:
        b.count(tally)
    return tally.out


def metrics_from_totals(t: np.ndarray) -> dict[str, np.ndarray]:
    """Every benchmark's metrics from summed counts ``t[..., len(STATS)]`` (any leading shape); a zero
    denominator gives 0. The formulas are the ones the list scorers use (:func:`pope_formula`, ...)."""
    def c(name: str) -> np.ndarray:
        return t[..., _COL[name]]

    out: dict[str, np.ndarray] = {}
    for b in BENCHMARKS:
        out |= b.metrics(c)
    return out


def available_metrics(stats: dict[str, np.ndarray], metrics: Sequence[str] = tuple(HEADLINE)) -> list[str]:
    """The headline metrics some method has data for (benchmark files have no descriptions, format tasks or
    judge)."""
    total = sum(st.sum(axis=(0, 1)) for st in stats.values())
    have = [name for name, v in zip(STATS, total, strict=True) if v > 0]
    need = {h.metric: h.requires for h in _HEADLINES}
    return [k for k in metrics
            if all(any(n.startswith(p) for n in have for p in group) for group in need.get(k, (("",),)))]
