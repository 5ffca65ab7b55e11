import warnings

import numpy as np
import pytest

from m3po_utils import shapes as W
from m3po_utils.config import WorldConfig
from m3po_utils.scoring import description_metrics, pope_metrics, pope_parse, pope_questions

CFG = WorldConfig(n_train=50, n_pref=20, n_eval=60)


@pytest.mark.parametrize("answer, parsed", [
    ("Yes", "yes"), ("No", "no"), ("no", "no"), ("NO.", "yes"),            # case-sensitive, as POPE's script
    ("Yes, there is no dog.", "no"), ("Yes. There is no dog.", "yes"),     # only the first sentence counts
    ("There is not a star", "no"), ("Eyes", "yes"), ("Nothing", "yes"), ("No, there isn't", "no"),
    ("", "yes"), ("no,", "no"),
])
def test_pope_parse_follows_the_official_rule(answer, parsed):
    assert pope_parse(answer) == parsed


def test_pope_metrics_hand_computed():
    answers = ["Yes", "Yes", "No", "No", "Yes"]
    labels = ["yes", "no", "yes", "no", "yes"]
    m = pope_metrics(answers, labels)          # tp=2 fp=1 fn=1 tn=1
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(3 / 5)


def test_pope_metrics_zero_denominator_warns_not_crashes():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = pope_metrics(["No", "No"], ["yes", "no"])
    assert m["precision"] == 0.0 and m["f1"] == 0.0 and m["yes_ratio"] == 0.0
    assert any("precision" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="labels must be"):
        pope_metrics(["Yes"], ["maybe"])


@pytest.mark.parametrize("setting", ["random", "popular", "adversarial"])
def test_pope_questions_negatives_are_absent_and_balanced(setting):
    scenes = W.make_splits(CFG)["eval"]
    rows = pope_questions(scenes, CFG, setting, seed=1)
    labels = [r["label"] for r in rows]
    assert labels.count("yes") == labels.count("no")
    for r in rows:
        assert scenes[r["scene"]].has(r["shape"]) == (r["label"] == "yes")
        assert W.parse_instruction(r["question"], CFG) == ("existence", {"shape": r["shape"]})


def test_adversarial_negatives_prefer_the_partner():
    scenes = W.make_splits(WorldConfig(n_train=50, n_pref=20, n_eval=400))["eval"]
    rows = pope_questions(scenes, CFG, "adversarial", seed=0)
    partner = dict(CFG.partners)
    hits = total = 0
    for pos, neg in zip(rows[::2], rows[1::2], strict=True):
        scene = scenes[pos["scene"]]
        if pos["shape"] in partner and not scene.has(partner[pos["shape"]]):
            total += 1
            hits += neg["shape"] == partner[pos["shape"]]
    assert total > 10 and hits / total > 0.7   # uniform choice would give ~1/6


def test_description_metrics_hand_case():
    scene = W.Scene("s", "eval", (W.Obj("circle", "red", 0), W.Obj("square", "blue", 4)), 1)
    truth = W.describe(scene, CFG)
    m = description_metrics([scene, scene], [truth, "a red circle at the top left, a green star at the right."], CFG)
    # mentions: {circle, square} + {circle, star}; hallucinated: star
    assert m["chair_i"] == pytest.approx(1 / 4)
    assert m["chair_s"] == pytest.approx(1 / 2)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert 0.5 < m["verifier_score"] < 1.0
    assert np.isclose(description_metrics([scene], [truth], CFG)["verifier_score"], 1.0)


@pytest.mark.parametrize("prediction, parsed", [
    ("Yes", "yes"), ("no", "no"), ("NO.", "no"), ("Yes, there is no dog", "yes"), ("Eyes", "yes"),
    ("Nope", "no"), ("Not really", "no"), ("Maybe", "other"), ("There is a dog", "other"), ("", "other"),
    ("  yes", "other"), ("Yes.", "yes"), ("I think no", "other"),   # no stripping, as the script
])
def test_mme_parse_follows_the_official_rule(prediction, parsed):
    from m3po_utils.scoring import mme_parse
    assert mme_parse(prediction) == parsed


def test_mme_scores_hand_computed():
    from m3po_utils.scoring import mme_scores
    rows = [
        {"subtask": "existence", "image": "a", "answer": "Yes", "prediction": "Yes"},
        {"subtask": "existence", "image": "a", "answer": "No", "prediction": "No"},
        {"subtask": "existence", "image": "b", "answer": "Yes", "prediction": "Yes"},
        {"subtask": "existence", "image": "b", "answer": "No", "prediction": "Maybe"},   # other: wrong
        {"subtask": "count", "image": "a", "answer": "Yes", "prediction": "no"},
        {"subtask": "count", "image": "a", "answer": "No", "prediction": "no"},
    ]
    s = mme_scores(rows)
    assert s["subtasks"]["existence"] == {"acc": 0.75, "acc_plus": 0.5, "score": 125.0, "group": "perception"}
    assert s["subtasks"]["count"] == {"acc": 0.5, "acc_plus": 0.0, "score": 50.0, "group": "perception"}
    assert s["total"] == 175.0
    with pytest.raises(ValueError, match="'Maybe' must be 'Yes' or 'No'"):
        mme_scores([{"subtask": "x", "image": "a", "answer": "Maybe", "prediction": "yes"}])


def test_mme_questions_one_yes_one_no_per_image_and_subtask():
    from m3po_utils.scoring import MME_SUBTASKS, mme_questions, mme_scores
    scenes = W.make_splits(CFG)["eval"][:30]
    rows = mme_questions(scenes, CFG, seed=2)
    for sub in MME_SUBTASKS:
        per_image = {}
        for r in rows:
            if r["subtask"] == sub:
                per_image.setdefault(r["image"], []).append(r["answer"])
        assert per_image and all(sorted(v) == ["No", "Yes"] for v in per_image.values()), sub
    # the reference answers are what the verifier says (a bare Yes / No earns the yes/no half of the score and
    # no error); a perfect model scores 200 per subtask
    for r in rows:
        v = W.verify(scenes[r["scene"]], r["question"], r["answer"], CFG)
        assert v.score == 0.5 and not (v.wrong_attributes or v.hallucinated or v.missed), (r, v)
    perfect = mme_scores([r | {"prediction": r["answer"]} for r in rows])
    assert perfect["total"] == 200.0 * len(MME_SUBTASKS)
    always_yes = mme_scores([r | {"prediction": "Yes"} for r in rows])
    assert always_yes["subtasks"]["existence"] == {"acc": 0.5, "acc_plus": 0.0, "score": 50.0, "group": "perception"}


def test_ift_and_yes_no_compliance():
    from m3po_utils.scoring import ift_score, yes_no_compliance
    scene = W.Scene("s", "eval", (W.Obj("circle", "red", 0), W.Obj("square", "blue", 4)), 1)
    ins = ["Answer in one word: what color is the circle?", "List the shapes in the image, separated by commas.",
           "Answer in one word: what color is the square?"]
    s = ift_score([scene] * 3, ins, ["red", "circle square", "it is blue"], CFG)
    assert s["ift"] == pytest.approx(1 / 3) and s["format_followed"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no format constraint"):
        ift_score([scene], ["Describe the image."], ["x"], CFG)
    assert yes_no_compliance(["Yes", "no.", "a red circle", "Not sure"]) == pytest.approx(3 / 4)


def test_partner_share_counts_cooccurrence_false_positives():
    from m3po_utils.scoring import partner_share
    scene = W.Scene("s", "eval", (W.Obj("triangle", "red", 0), W.Obj("circle", "blue", 4)), 1)
    rows = [{"scene": 0, "shape": "star", "label": "no"},       # partner of the present triangle
            {"scene": 0, "shape": "heart", "label": "no"},      # partner of nothing present
            {"scene": 0, "shape": "square", "label": "no"},     # partner of the present circle
            {"scene": 0, "shape": "triangle", "label": "yes"}]
    got = partner_share([scene], rows, ["Yes, there is a star.", "Yes", "No, there is no square.", "Yes"], CFG)
    assert got == {"false_positives": 2, "partner": 1, "partner_share": 0.5}
    assert partner_share([scene], rows[:1], ["No"], CFG)["partner_share"] is None


def test_family_accuracy_answers_grouped_by_family_land_on_their_own_questions(monkeypatch):
    from m3po_utils import scoring as E

    scenes = W.make_splits(CFG)["eval"][:12]
    by_image = {W.render(s, CFG).tobytes(): s for s in scenes}
    asked = []

    def oracle(model, processor, images, questions, **kw):   # answers each question correctly about its image
        asked.extend(W.parse_instruction(q, CFG)[0] for q in questions)
        out = []
        for img, q in zip(images, questions, strict=True):
            scene = by_image[img.tobytes()]
            family, params = W.parse_instruction(q, CFG)
            out.append(W.make_instruction(family, scene, CFG, **params).reference)
        return out

    monkeypatch.setattr(E, "greedy_answers", oracle)
    acc = E.family_accuracy(None, None, scenes, CFG, seed=0)
    assert set(acc) == {f"acc_{f}" for f in W.FAMILIES} and all(v == 1.0 for v in acc.values())
    assert asked == sorted(asked)                      # one family after the other
