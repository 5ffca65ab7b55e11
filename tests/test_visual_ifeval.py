"""Visual instructions with IFEval-style constraints: every drawn prompt has an ideal answer that follows it and
verifies; a wrong content or a broken format is caught separately."""

import numpy as np
import pytest

from m3po_utils import shapes as W
from m3po_utils.config import WorldConfig
from m3po_utils.shapes import ifeval as I
from m3po_utils.shapes import visual_ifeval as V


@pytest.fixture(scope="module")
def scenes():
    cfg = WorldConfig()
    rng = np.random.default_rng(0)
    return cfg, [W.sample_scene(rng, cfg, str(i), "eval") for i in range(40)]


def test_seen_and_held_out_are_disjoint_ifeval_types_and_cover_ten_beyond_the_four_formats():
    assert not set(V.SEEN) & set(V.HELD_OUT)
    assert set(V.SEEN) | set(V.HELD_OUT) <= set(I.TYPES) and len(set(V.SEEN) | set(V.HELD_OUT)) >= 10


@pytest.mark.parametrize("types", [V.SEEN, V.HELD_OUT])
@pytest.mark.parametrize("n", [1, 2])
def test_every_drawn_prompt_has_an_ideal_answer_that_is_right(scenes, types, n):
    cfg, ss = scenes
    rng = np.random.default_rng(n)
    drawn = set()
    for scene in ss:
        p = V.make_prompt(scene, cfg, rng, types, n_constraints=n)
        ideal = V.ideal_response(p.content, p.instructions)
        s = V.score(p, scene, ideal, cfg)
        assert s["right"] and all(s["strict"]) and all(s["loose"]), (p.text, ideal, s)
        assert all(i in types for i, _ in p.instructions) and len(p.instructions) == n
        drawn |= {i for i, _ in p.instructions}
    assert len(drawn) >= len(types) - 2           # the draws reach (nearly) every type over 40 scenes


def test_wrong_content_and_broken_format_are_told_apart(scenes):
    cfg, ss = scenes
    scene = W.Scene("s", "eval", (W.Obj("circle", "red", 0), W.Obj("square", "blue", 4)), 1)
    content = W.make_instruction("color", scene, cfg, shape="circle")
    p = V.VisualIfevalPrompt("s", content, (("change_case:english_capital", ()),))
    right = V.score(p, scene, "RED.", cfg)
    wrong_colour = V.score(p, scene, "BLUE.", cfg)
    lower = V.score(p, scene, "red.", cfg)
    assert right["right"] and right["content_correct"]
    assert wrong_colour["strict"] == [True] and not wrong_colour["content_correct"] and not wrong_colour["right"]
    assert lower["strict"] == [False] and lower["content_correct"] and not lower["right"]
    q = V.VisualIfevalPrompt("s", content, (("startend:end_checker", (("end_phrase", "That is all."),)),
                                            ("json_keys", (("keys", ("answer",)),))))
    assert "JSON object" in q.text and '"That is all."' in q.text
    s = V.score(q, scene, '{"answer": "red"}', cfg)          # the JSON is right, the end phrase is missing
    assert s["strict"] == [False, True] and s["content_correct"] and not s["right"]


def test_an_unsatisfiable_request_is_refused(scenes):
    cfg, ss = scenes
    with pytest.raises(ValueError, match="n_constraints"):
        V.make_prompt(ss[0], cfg, np.random.default_rng(0), ("punctuation:no_comma",), n_constraints=2)
    with pytest.raises(KeyError, match="not among"):
        V.make_prompt(ss[0], cfg, np.random.default_rng(0), ("no_such_type",))
