"""The IFEval-style checkers (m3po_utils.shapes.ifeval) on hand-worked responses: each type strict, the loose
relaxations, the two accuracy levels, and the content left for the verifier once the format is off."""

import pytest

from m3po_utils.shapes import ifeval as I


@pytest.mark.parametrize("iid, kwargs, yes, no", [
    ("keywords:existence", {"keywords": ["red", "circle"]}, "A RED circle.", "A red square."),
    ("keywords:forbidden_words", {"forbidden_words": ["blue"]}, "A bluebird is not a word here: red.",
     "It is Blue."),                                      # a whole word, any case
    ("punctuation:no_comma", None, "A red circle and a blue square.", "A red circle, a blue square."),
    ("change_case:english_lowercase", None, "a red circle.", "a Red circle."),
    ("change_case:english_capital", None, "A RED CIRCLE.", "A RED Circle."),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"},
     "There is a circle. It is red!", "There is a red circle."),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"},
     "There is a red circle.", "A circle. A square."),
    ("length_constraints:number_words", {"num_words": 4, "relation": "less than"}, "A red circle.",
     "A red circle on top."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* red circle\n* blue square",
     "* red circle\n- blue square\n* green star"),
    ("detectable_format:json_format", None, '```json\n{"color": "red"}\n```', "color: red"),
    ("json_keys", {"keys": ["color", "shape"]}, '{"color": "red", "shape": "circle"}', '{"color": "red"}'),
    ("startend:end_checker", {"end_phrase": "That is all."}, "A red circle. that is all.", "That is all. A red circle."),
    ("startend:quotation", None, '  "A red circle."  ', '"A red circle.'),
    ("detectable_format:title", None, "<<Shapes>>\nA red circle.", "<< >>\nA red circle."),
])
def test_each_type_strict(iid, kwargs, yes, no):
    assert I.follows(iid, kwargs, yes) and not I.follows(iid, kwargs, no)


def test_an_empty_answer_follows_nothing_even_where_the_check_would_pass():
    assert not I.follows("punctuation:no_comma", None, "   ")
    assert not I.follows("keywords:forbidden_words", {"forbidden_words": ["red"]}, "")


def test_bullets_count_star_and_dash_lines_but_not_bold():
    assert I.follows("detectable_format:number_bullet_lists", {"num_bullets": 2}, "**Shapes**\n* a\n- b")


def test_loose_forgives_a_preamble_a_sign_off_and_asterisks():
    resp = "Sure, here it is:\n<<Shapes>>\nthe circle is red.\nHope this helps!"
    assert not I.follows("change_case:english_lowercase", None, resp)
    assert not I.follows("punctuation:no_comma", None, resp)
    # without the first and the last line: no capital letter, no comma
    assert I.follows_loose("change_case:english_lowercase", None, "Sure:\nthe circle is red.\nBye!")
    assert I.follows_loose("punctuation:no_comma", None, resp)
    assert I.follows_loose("startend:quotation", None, '*"A red circle."*')          # the stars removed
    assert len(I.loose_variants("a\nb\nc")) == 8
    # loose cannot invent what is not there
    assert not I.follows_loose("detectable_format:title", None, "A red circle.\nBye")


def test_accuracies_are_ifevals_prompt_and_instruction_levels():
    scored = [I.score([("punctuation:no_comma", None), ("change_case:english_lowercase", None)], "a red circle"),
              I.score([("punctuation:no_comma", None), ("change_case:english_lowercase", None)], "A red, blue"),
              I.score([("startend:quotation", None)], 'Here:\n"a red circle"')]
    acc = I.accuracies(scored)
    assert acc["prompt_strict"] == pytest.approx(1 / 3) and acc["instruction_strict"] == pytest.approx(2 / 5)
    assert acc["prompt_loose"] == pytest.approx(2 / 3) and acc["instruction_loose"] == pytest.approx(3 / 5)


def test_content_takes_the_format_off_for_the_verifier():
    assert I.content('"A red circle."') == "A red circle."
    assert I.content("<<Shapes>>\nA red circle.") == "A red circle."
    assert I.content("* red circle\n* blue square") == "red circle, blue square"
    assert I.content('```json\n{"color": "red", "shapes": ["circle", "star"]}\n```') == "red, circle, star"
    assert I.without_end("A red circle. That is all.", "that is all.") == "A red circle."


def test_descriptions_name_their_arguments_and_unknown_types_are_refused():
    assert '"red"' in I.describe("keywords:existence", {"keywords": ["red"]})
    assert "exactly 3 bullet" in I.describe("detectable_format:number_bullet_lists", {"num_bullets": 3})
    assert "1 sentence." in I.describe("length_constraints:number_sentences", {"num_sentences": 1,
                                                                               "relation": "at least"})
    with pytest.raises(KeyError, match="not one of"):
        I.follows("language:response_language", None, "x")
    with pytest.raises(ValueError, match="relation"):
        I.follows("length_constraints:number_words", {"num_words": 3, "relation": "at most"}, "a b")
    assert len(I.TYPES) >= 10
