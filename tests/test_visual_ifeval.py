"""Visual instructions with IFEval-style constraints: every drawn prompt has an ideal answer that follows it and
verifies; the text parses back to the same instruction; a wrong content or a broken format is caught separately."""

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
    assert not set(I.SEEN) & set(I.HELD_OUT)
    assert set(I.SEEN) | set(I.HELD_OUT) <= set(I.TYPES) and len(set(I.SEEN) | set(I.HELD_OUT)) >= 10


@pytest.mark.parametrize("types", [I.SEEN, I.HELD_OUT])
@pytest.mark.parametrize("n", [1, 2])
def test_every_drawn_prompt_has_an_ideal_answer_that_is_right_and_parses_back(scenes, types, n):
    cfg, ss = scenes
    rng = np.random.default_rng(n)
    drawn = set()
    for scene in ss:
        ins = W.make_instruction("ifeval", scene, cfg, rng=rng, types=types, n_constraints=n)
        s = V.score(ins.text, scene, ins.reference, cfg)
        assert s["right"] and all(s["strict"]) and all(s["loose"]), (ins.text, ins.reference, s)
        v = W.verify(scene, ins.text, ins.reference, cfg)
        assert v.correct and v.score == 1.0 and v.family == "ifeval"
        assert all(i in types for i in s["ids"]) and len(s["ids"]) == n
        family, params = W.parse_instruction(ins.text, cfg)
        assert (family, params) == ("ifeval", ins.args)
        again = W.make_instruction(family, scene, cfg, **params)        # the parameters rebuild the instruction
        assert (again.text, again.reference) == (ins.text, ins.reference)
        drawn |= set(s["ids"])
    assert len(drawn) >= len(types) - 2           # the draws reach (nearly) every type over 40 scenes


def _instruction(content: str, *constraints) -> str:
    return " ".join([content, *(I.describe(i, kw) for i, kw in constraints)])


def test_wrong_content_and_broken_format_are_told_apart(scenes):
    cfg, _ = scenes
    scene = W.Scene("s", "eval", (W.Obj("circle", "red", 0), W.Obj("square", "blue", 4)), 1)
    text = _instruction("What color is the circle?", ("change_case:english_capital", None))
    right, wrong_colour, lower = (V.score(text, scene, a, cfg) for a in ("RED.", "BLUE.", "red."))
    assert right["right"] and right["content_correct"]
    assert wrong_colour["strict"] == [True] and not wrong_colour["content_correct"] and not wrong_colour["right"]
    assert lower["strict"] == [False] and lower["content_correct"] and not lower["right"]
    assert [W.verify(scene, text, a, cfg).score for a in ("RED.", "BLUE.", "red.")] == [1.0, 0.5, 0.5]
    q = _instruction("What color is the circle?", ("startend:end_checker", {"end_phrase": "That is all."}),
                     ("json_keys", {"keys": ["answer"]}))
    assert "JSON object" in q and '"That is all."' in q
    s = V.score(q, scene, '{"answer": "red"}', cfg)          # the JSON is right, the end phrase is missing
    assert s["strict"] == [False, True] and s["content_correct"] and not s["right"]
    v = W.verify(scene, q, '{"answer": "red"}', cfg)
    assert v.score == 0.75 and not v.correct and v.format_violations == ("does not follow startend:end_checker",)


def test_a_hallucinated_object_in_a_formatted_answer_is_still_caught(scenes):
    cfg, _ = scenes
    scene = W.Scene("s", "eval", (W.Obj("circle", "red", 0), W.Obj("square", "blue", 4)), 1)
    text = _instruction("Describe the image.", ("detectable_format:number_bullet_lists", {"num_bullets": 2}))
    v = W.verify(scene, text, "* a red circle at the top left\n* a green star in the center", cfg)
    assert not v.correct and v.hallucinated == ("green star",) and not v.format_violations


def test_an_unsatisfiable_request_is_refused(scenes):
    cfg, ss = scenes
    with pytest.raises(ValueError, match="n_constraints"):
        W.make_instruction("ifeval", ss[0], cfg, np.random.default_rng(0), types=("punctuation:no_comma",),
                           n_constraints=2)
    with pytest.raises(W.UnknownInstruction, match="not among"):
        W.make_instruction("ifeval", ss[0], cfg, np.random.default_rng(0), types=("no_such_type",))
    with pytest.raises(W.UnknownInstruction, match="constraints follow"):
        W.parse_instruction(_instruction("List the shapes in the image, separated by commas.",
                                         ("punctuation:no_comma", None)), cfg)
    with pytest.raises(ValueError, match="is a 'color' question"):
        V.score("What color is the circle?", ss[0], "red", cfg)


# ------------------------------------------------------------------ the benchmark: counts, metrics, what is said

def _row(kind, scene, text):
    return {"kind": kind, "scene": scene, "family": "ifeval", "question": text}


def test_the_benchmark_counts_ifevals_four_accuracies_binding_and_right():
    from m3po_utils import scoring as E

    cfg = WorldConfig()
    scene = W.Scene("s", "eval", (W.Obj("circle", "red", 0), W.Obj("square", "blue", 4)), 1)
    seen = _instruction("What color is the circle?", ("startend:quotation", None),
                        ("change_case:english_lowercase", None))        # "red" is lowercase already: does not bind
    held = _instruction("What color is the circle?", ("change_case:english_capital", None))
    questions = [_row("ifeval_seen", 0, seen), _row("ifeval_seen", 0, seen), _row("ifeval_held", 0, held)]
    # quoted and lowercase but wrong; right, but after a preamble line (which breaks both strictly); capital and right
    answers = ['"blue"', 'Sure:\n"red"', "RED"]
    stats = E.scene_stats([scene], questions, answers, cfg)
    m = {k: float(v[0]) for k, v in E.metrics_from_totals(stats).items() if k.startswith("ifeval_")}
    assert m["ifeval_seen_prompt_strict"] == 0.5 and m["ifeval_seen_instruction_strict"] == 0.5
    assert m["ifeval_seen_prompt_loose"] == m["ifeval_seen_instruction_loose"] == 1.0   # without the first line
    assert m["ifeval_seen_binding_strict"] == 0.5           # only the quotes bind: followed once in two
    assert m["ifeval_seen_content"] == 0.5 and m["ifeval_seen_right"] == 0.0
    assert m["ifeval_held_prompt_strict"] == m["ifeval_held_right"] == m["ifeval_held_binding_strict"] == 1.0


def _iv(mean, lo=None, hi=None):
    return {"mean": mean, "lo": mean if lo is None else lo, "hi": mean if hi is None else hi}


def _ifeval(seen, held):
    return {"seen_prompt_strict": _iv(seen), "held_prompt_strict": _iv(held), "seen_right": _iv(seen / 2)}


def _d(comparison, metric, delta, lo, hi):
    return {"comparison": comparison, "metric": metric, "delta": delta, "lo": lo, "hi": hi}


@pytest.mark.parametrize("held, said", [
    ((0.2, 0.1), "Every method follows the held-out types less often than the trained ones."),
    ((0.6, 0.7), "No method follows the held-out types less often than the trained ones."),
    ((0.2, 0.5), "less often than the trained ones by SFT base, not by M3PO."),
    ((0.5, 0.4), "by M3PO, not by SFT base."),                       # a tie is not "less often"
])
def test_the_ifeval_sentence_says_what_the_numbers_say(held, said):
    from records import complete

    from m3po_utils import learnt as L

    r = {"ifeval": {"base": _ifeval(0.5, held[0]), "m3po": _ifeval(0.5, held[1])},
         "deltas": [_d("oracle − base", "ifeval_seen_right", 0.1, 0.05, 0.15),
                    _d("oracle − base", "ifeval_held_prompt_strict", 0.0, -0.02, 0.03),
                    _d("m3po − best_worst", "ifeval_seen_right", -0.04, -0.07, -0.01)], "mde": []}
    text = L.summary("06_evaluation", complete("06_evaluation", r))
    assert (f"types the base trained on / types held out of its training): SFT base 0.500 / {held[0]:.3f}; "
            f"M3PO 0.500 / {held[1]:.3f}.") in text
    assert said in text
    assert ("oracle (verifier-ranked DPO) − SFT base: trained types right +0.100 [+0.050, +0.150] (better), held-out "
            "types followed +0.000 [-0.020, +0.030] (within the noise); M3PO − best-vs-worst DPO (α = 0): trained "
            "types right -0.040 [-0.070, -0.010] (worse)") in text
    assert "(the project's IFT rule): SFT base 0.250; M3PO 0.250." in text
    assert "IFEval" not in L.summary("06_evaluation", complete("06_evaluation", {"deltas": [], "mde": []}))


def test_the_dialogue_sentence_names_directions_with_lower_carried_better():
    from records import complete

    from m3po_utils import learnt as L

    r = {"dialogue": {"base": {"right": _iv(0.4), "carried": _iv(0.6)}, "m3po": {"right": _iv(0.5), "carried": _iv(0.3)}},
         "deltas": [_d("oracle − base", "dialogue_right", 0.1, 0.05, 0.15),
                    _d("oracle − base", "dialogue_carried", -0.2, -0.3, -0.1),
                    _d("m3po − best_worst", "dialogue_carried", 0.05, 0.01, 0.09)], "mde": []}
    text = L.summary("06_evaluation", complete("06_evaluation", r))
    assert "lower is better): SFT base 0.400 / 0.600; M3PO 0.500 / 0.300." in text
    assert ("oracle (verifier-ranked DPO) − SFT base: right +0.100 [+0.050, +0.150] (better), carried -0.200 "
            "[-0.300, -0.100] (better); M3PO − best-vs-worst DPO (α = 0): carried +0.050 [+0.010, +0.090] (worse)."
            ) in text
