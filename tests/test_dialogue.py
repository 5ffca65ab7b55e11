"""Two-turn visual dialogues: the instruction string and its chat turns, the follow-up's truth in context, the judge
seeing the history, and the benchmark's counts."""

import json

import numpy as np
import pytest

from m3po_utils import dialogue as D
from m3po_utils import shapes as W
from m3po_utils.config import WorldConfig

CFG = WorldConfig()
# the image: a red circle at the top left and a blue square at the center; no star
SCENE = W.Scene("s", "eval", (W.Obj("circle", "red", 0), W.Obj("square", "blue", 4)), 1)
MADE_UP = "a red circle at the top left, a green star at the top right, a blue square at the center."


def _ask(answer: str, ordinal: int, attr: str = "color", by_name: bool = False) -> W.Instruction:
    return W.make_instruction("dialogue", SCENE, CFG, history=(("Describe the image.", answer),), ordinal=ordinal,
                              attr=attr, by_name=by_name)


def test_the_instruction_string_round_trips_through_chat_turns():
    text = D.encode([("List the shapes.", "circle, star")], "What color is the second shape you mentioned?")
    assert text == "List the shapes.\n[assistant] circle, star\n[user] What color is the second shape you mentioned?"
    assert D.decode(text) == ([("List the shapes.", "circle, star")], "What color is the second shape you mentioned?")
    msgs = D.messages(text)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[0]["content"][0] == {"type": "image"} and len(msgs[1]["content"]) == len(msgs[2]["content"]) == 1
    assert D.from_messages(msgs) == text and D.texts(text) == ["List the shapes.", "circle, star", D.question(text)]
    assert D.conversation(text) == [{"role": "user", "content": "List the shapes."},
                                    {"role": "assistant", "content": "circle, star"}]
    # one turn is what it always was
    assert D.messages("Describe the image.") == [{"role": "user", "content": [{"type": "image"},
                                                                               {"type": "text", "text": "Describe the image."}]}]
    assert D.decode("Describe the image.") == ([], "Describe the image.") and D.conversation("Describe the image.") == []
    for bad in ("Q\n[assistant] A", "Q\n[assistant] \n[user] R", "Q\n[assistant] A\n[user] "):
        with pytest.raises(D.DialogueError):
            D.decode(bad)
    with pytest.raises(D.DialogueError, match="alternate"):
        D.from_messages([{"role": "assistant", "content": "x"}])


def test_the_chat_template_renders_the_history_as_turns(tmp_path):
    from m3po_utils.models import lvlm as L
    from m3po_utils.models.templates import prompt_for

    tok = L.train_tokenizer(["Describe the image.", " a red circle", "USER: ASSISTANT:"] * 20, 200)
    processor = L.build_processor(tok, 48, 16)
    one = prompt_for(processor, "Describe the image.")
    assert one == "USER: <image>\nDescribe the image. ASSISTANT:"
    two = prompt_for(processor, _ask(MADE_UP, 2).text)
    assert two == (f"USER: <image>\nDescribe the image. ASSISTANT: {MADE_UP}</s>USER: What color is the second shape "
                   "you mentioned? ASSISTANT:")
    assert two.count("<image>") == 1


def test_a_follow_up_is_right_only_about_the_shape_named_and_true_of_the_image():
    star = _ask(MADE_UP, 2)                        # the star: made up by the first answer
    assert star.text.endswith("[user] What color is the second shape you mentioned?")
    assert star.reference == "There is no star in the image."
    square = _ask(MADE_UP, 3, "position")
    assert square.reference == "The square is at the center."
    _, params = W.parse_instruction(star.text, CFG)
    cases = {  # answer: (right, history_ok, image_ok, carried)
        "There is no star in the image.": (True, True, True, False),
        "The star is green.": (False, True, False, True),            # goes along with turn 1
        "green": (False, True, False, True),
        "The circle is red.": (False, False, True, False),           # true, but not what was asked
        "There is no star, but there is a red circle.": (True, True, True, False),
        "There is no circle in the image.": (False, False, False, False),   # denies a shape that is there
    }
    for answer, (right, hist, img, carried) in cases.items():
        v = W.verify(SCENE, star.text, answer, CFG)
        c = W.follow_up_check(SCENE, params, answer, CFG)
        assert (v.correct, c["history_ok"], c["image_ok"], c["carried"]) == (right, hist, img, carried), answer
        assert c["made_up"] and c["shape"] == "star"
    assert W.verify(SCENE, square.text, "The square is at the center.", CFG).correct
    by_name = _ask(MADE_UP, 2, by_name=True)                       # the same question, the shape named
    assert by_name.text.endswith("[user] What color is the star you mentioned?")
    assert W.parse_instruction(by_name.text, CFG)[1] == params | {"by_name": True}
    with pytest.raises(W.UnknownInstruction, match="which the first answer does not name"):
        W.parse_instruction(D.encode([("Describe the image.", MADE_UP)], "What color is the heart you mentioned?"), CFG)
    wrong = W.verify(SCENE, square.text, "The square is at the top left.", CFG)
    assert not wrong.correct and wrong.family == "dialogue"
    with pytest.raises(W.UnknownInstruction, match="names 3 shape"):
        _ask(MADE_UP, 4)
    with pytest.raises(W.UnknownInstruction, match="unknown follow-up"):
        W.parse_instruction(D.encode([("Describe the image.", MADE_UP)], "Why?"), CFG)


def test_drawn_dialogues_are_answerable_and_ask_about_the_made_up_shape():
    rng = np.random.default_rng(0)
    made_up = 0
    for i in range(200):
        scene = W.sample_scene(rng, CFG, str(i), "eval")
        ins = W.make_instruction("dialogue", scene, CFG, rng=rng, hallucinated=True)
        family, params = W.parse_instruction(ins.text, CFG)
        assert (family, params) == ("dialogue", ins.args)
        assert W.verify(scene, ins.text, ins.reference, CFG).correct
        again = W.make_instruction(family, scene, CFG, **params)
        assert (again.text, again.reference) == (ins.text, ins.reference)
        shape = W.referred_shape(params, CFG)
        if not scene.has(shape):                  # a scene with no absent partner cannot have a made-up history
            made_up += 1
            assert ins.reference == f"There is no {shape} in the image."
        clean = W.make_instruction("dialogue", scene, CFG, rng=rng, hallucinated=False)
        assert scene.has(W.referred_shape(W.parse_instruction(clean.text, CFG)[1], CFG))
    assert made_up > 100


def test_the_judge_sees_the_history_and_scores_in_context():
    from m3po_utils.judge.protocol import INPUT_MARKER, PROMPTS, judge_messages

    text = _ask(MADE_UP, 2).text
    msgs = judge_messages(PROMPTS["v1"], "data:image/png;base64,xx", text, ["There is no star.", "Green."])
    payload = json.loads(msgs[1]["content"][0]["text"].split(INPUT_MARKER)[1])
    assert payload["conversation"] == [{"role": "user", "content": "Describe the image."},
                                       {"role": "assistant", "content": MADE_UP}]
    assert payload["instruction"] == "What color is the second shape you mentioned?"
    # one-turn requests are unchanged: no conversation key (their judge cache keys stay what they were)
    one = judge_messages(PROMPTS["v1"], "data:x", "Describe the image.", ["a red circle."])
    assert "conversation" not in json.loads(one[1]["content"][0]["text"].split(INPUT_MARKER)[1])


def test_the_benchmark_counts_right_carried_history_and_image():
    from m3po_utils import scoring as E

    star, square = _ask(MADE_UP, 2), _ask(MADE_UP, 3)
    qs = [{"kind": "dialogue", "scene": 0, "family": "dialogue", "question": t} for t in
          (star.text, star.text, square.text, square.text)]
    answers = ["There is no star in the image.", "The star is green.", "The square is blue.", "The circle is red."]
    m = {k: float(v[0]) for k, v in E.metrics_from_totals(E.scene_stats([SCENE], qs, answers, CFG)).items()
         if k.startswith("dialogue_")}
    assert m == {"dialogue_right": 0.5, "dialogue_history": 0.75, "dialogue_image": 0.75,
                 "dialogue_clean_right": 0.5, "dialogue_carried": 0.5}
    rows = [r for r in E.eval_questions([SCENE, SCENE], CFG) if r["kind"] == "dialogue"]
    assert len(rows) == 2 and all(W.verify(SCENE, r["question"], r["reference"], CFG).correct for r in rows)


def test_the_self_judge_resolves_the_shape_from_the_history_and_credits_a_denial():
    from m3po_utils.judge.self_judge import self_scores

    class View:
        cfg = CFG

        def p_yes(self, image, questions):
            return [{"Is there a star in the image?": 0.2, "Is the star green?": 0.7}.get(q, 0.5) for q in questions]

    scores, _ = self_scores(View(), None, _ask(MADE_UP, 2).text, ["There is no star in the image.", "It is green."])
    assert scores == pytest.approx([0.8, 0.7])
