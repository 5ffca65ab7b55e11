"""Shapes world: sampling, rendering, splits, instructions and the ground-truth verifier."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from m3po_utils import shapes as W
from m3po_utils.config import WorldConfig

CFG = WorldConfig(n_train=300, n_pref=80, n_eval=60, seed=3)


def scene(*objs, style_seed=7, scene_id="s"):
    return W.Scene(scene_id, "eval", tuple(W.Obj(*o) for o in objs), style_seed)


TWO = scene(("circle", "red", 0), ("square", "blue", 4))


@pytest.fixture(scope="module")
def splits():
    return W.make_splits(CFG)


@pytest.fixture(scope="module")
def many():
    rng = np.random.default_rng(11)
    return [W.sample_scene(rng, CFG, f"x-{i}", "train") for i in range(3000)]


# ------------------------------------------------------------------ positions, scenes, rendering

def test_position_names():
    assert [W.position_name(c, 3) for c in (0, 1, 4, 8)] == ["top left", "top", "center", "bottom right"]
    assert W.position_name(5, 4) == "row 2 column 2"
    with pytest.raises(ValueError):
        W.position_name(9, 3)


def test_scene_rejects_repeated_shape_or_cell_and_sorts_by_cell():
    with pytest.raises(ValueError, match="repeats a shape"):
        scene(("circle", "red", 0), ("circle", "blue", 1))
    with pytest.raises(ValueError, match="one cell"):
        scene(("circle", "red", 0), ("star", "blue", 0))
    s = scene(("star", "red", 5), ("circle", "blue", 1))
    assert [o.cell for o in s.objects] == [1, 5]
    assert s.signature() == ((1, "circle", "blue"), (5, "star", "red"))
    assert s.shapes() == {"star", "circle"} and s.has("star") and not s.has("heart")
    assert s.obj("star") == W.Obj("star", "red", 5) and s.obj("heart") is None
    assert W.Scene.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_sampling_is_deterministic_and_valid(many):
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    a = [W.sample_scene(rng_a, CFG, str(i), "train") for i in range(50)]
    b = [W.sample_scene(rng_b, CFG, str(i), "train") for i in range(50)]
    assert a == b
    counts = np.bincount([len(s.objects) for s in many], minlength=CFG.max_objects + 1)
    assert counts[0] == 0 and all(c > 500 for c in counts[CFG.min_objects:])  # every count in range, roughly uniform
    for s in many:
        assert CFG.min_objects <= len(s.objects) <= CFG.max_objects
        assert len({o.cell for o in s.objects}) == len(s.objects)
        assert len(s.shapes()) == len(s.objects)
        assert all(0 <= o.cell < 9 and o.color in CFG.colors and o.shape in CFG.shapes for o in s.objects)


def test_cooccurrence_prior_is_visible(many):
    m = W.cooccurrence(many, CFG.shapes)
    idx = CFG.shapes.index
    assert np.allclose(np.diag(m), 1.0)
    for lead, partner in CFG.partners:
        with_lead = m[idx(lead), idx(partner)]
        without = np.mean([s.has(partner) for s in many if not s.has(lead)])
        # the partner joins with partner_prob, and is also drawn on its own now and then
        assert CFG.partner_prob - 0.05 < with_lead < CFG.partner_prob + 0.15, (lead, partner, with_lead)
        assert with_lead > without + 0.2
    # a row is P(. | shape i): check one entry against a direct count
    circ = [s for s in many if s.has("circle")]
    assert m[idx("circle"), idx("hexagon")] == pytest.approx(np.mean([s.has("hexagon") for s in circ]))
    freq = W.shape_frequency(many, CFG.shapes)
    assert freq["circle"] == len(circ)


def test_cooccurrence_zero_row_for_unseen_shape():
    m = W.cooccurrence([TWO], ("circle", "square", "star"))
    assert m.tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 0]]


def test_no_partner_when_prob_zero():
    cfg = dataclasses.replace(CFG, partner_prob=0.0)
    rng = np.random.default_rng(0)
    scenes = [W.sample_scene(rng, cfg, str(i), "train") for i in range(1500)]
    m = W.cooccurrence(scenes, cfg.shapes)
    assert m[cfg.shapes.index("circle"), cfg.shapes.index("square")] < 0.5


def test_render_is_deterministic_and_style_seed_matters():
    img = W.render(TWO, CFG)
    assert img.mode == "RGB" and img.size == (CFG.image_size, CFG.image_size)
    assert W.render(TWO, CFG).tobytes() == img.tobytes()
    other = dataclasses.replace(TWO, style_seed=8)
    assert W.render(other, CFG).tobytes() != img.tobytes()
    recoloured = scene(("circle", "green", 0), ("square", "blue", 4))
    assert W.render(recoloured, CFG).tobytes() != img.tobytes()


def test_render_draws_each_object_inside_its_cell():
    cell = CFG.image_size // CFG.grid
    clear = dataclasses.replace(CFG, faint_prob=0.0)
    for shape in W.SHAPE_NAMES:
        for seed in range(4):
            px = np.asarray(W.render(scene((shape, "blue", 4), style_seed=seed), clear)).astype(int)
            ink = np.abs(px - np.array(W.BACKGROUND)).sum(-1) > 30
            ys, xs = np.nonzero(ink)
            assert len(ys) > 0.05 * cell * cell, shape  # something sizeable is drawn
            assert ys.min() >= cell and ys.max() < 2 * cell and xs.min() >= cell and xs.max() < 2 * cell, shape
            centre = px[ys.mean().round().astype(int), xs.mean().round().astype(int)]
            if shape not in ("star", "cross"):  # thin shapes may have background at the centroid
                assert tuple(centre) == W.PALETTE["blue"], shape


def test_faint_objects_are_smaller_and_paler():
    def ink(cfg, seed):
        px = np.asarray(W.render(scene(("circle", "blue", 4), style_seed=seed), cfg)).astype(int)
        mask = np.abs(px - np.array(W.BACKGROUND)).sum(-1) > 30
        return mask.sum(), px[mask].mean(axis=0)
    clear, faint = dataclasses.replace(CFG, faint_prob=0.0), dataclasses.replace(CFG, faint_prob=1.0)
    for seed in range(5):
        (n_clear, c_clear), (n_faint, c_faint) = ink(clear, seed), ink(faint, seed)
        assert 0 < n_faint < 0.5 * n_clear
        # washed out: much closer to the background than the palette colour is
        assert np.abs(c_faint - np.array(W.BACKGROUND)).sum() < 0.6 * np.abs(c_clear - np.array(W.BACKGROUND)).sum()
    # at faint_prob 0.3 about 30 % of the objects come out faint; at 0 the layout is drawn as before faint existed
    some = dataclasses.replace(CFG, faint_prob=0.3)
    share = np.mean([ink(some, seed)[0] < 0.5 * ink(clear, seed)[0] for seed in range(200)])
    assert abs(share - 0.3) < 0.1, share
    s = scene(("circle", "blue", 4), style_seed=3)
    assert W.faint_cells(s, clear) == set() and W.faint_cells(s, faint) == {4}


def test_render_unknown_shape_and_colour_fallback():
    with pytest.raises(ValueError, match="blob"):
        W.render(scene(("blob", "red", 0)), CFG)
    assert W.color_rgb("teal") == W.color_rgb("teal") != W.color_rgb("navy")
    assert W.render(scene(("circle", "teal", 0)), CFG).tobytes() == W.render(scene(("circle", "teal", 0)), CFG).tobytes()


# ------------------------------------------------------------------ splits, storage, index

def test_splits_sizes_ids_and_disjoint(splits):
    assert list(splits) == ["train", "pref", "eval"]
    assert [len(splits[k]) for k in splits] == [CFG.n_train, CFG.n_pref, CFG.n_eval]
    assert splits["train"][42].scene_id == "train-000042"
    assert all(s.split == k for k, v in splits.items() for s in v)
    sigs = {k: [s.signature() for s in v] for k, v in splits.items()}
    assert len(set(sigs["eval"])) == len(sigs["eval"]) and len(set(sigs["pref"])) == len(sigs["pref"])
    assert not set(sigs["train"]) & set(sigs["pref"])
    assert not set(sigs["train"]) & set(sigs["eval"])
    assert not set(sigs["pref"]) & set(sigs["eval"])
    assert W.make_splits(CFG) == splits
    assert W.make_splits(dataclasses.replace(CFG, seed=4))["eval"] != splits["eval"]


def test_extra_evaluation_scenes_leave_every_other_scene_as_it_was(splits):
    more = W.make_splits(dataclasses.replace(CFG, n_eval_extra=150))
    assert more["train"] == splits["train"] and more["pref"] == splits["pref"]
    assert more["eval"][: CFG.n_eval] == splits["eval"]
    extra = more["eval"][CFG.n_eval:]
    assert len(extra) == 150 and extra[0].scene_id == f"eval-{CFG.n_eval:06d}"
    assert all(s.split == "eval" for s in extra)
    others = {s.signature() for k in ("train", "pref") for s in more[k]} | {s.signature() for s in splits["eval"]}
    sigs = [s.signature() for s in extra]
    assert len(set(sigs)) == len(sigs) and not set(sigs) & others
    # raising n_eval instead redraws the other splits (why the extra scenes exist)
    assert W.make_splits(dataclasses.replace(CFG, n_eval=CFG.n_eval + 150))["train"] != splits["train"]


def test_splits_too_small_world_fails_clearly():
    tiny = WorldConfig(grid=2, image_size=32, shapes=("circle", "square", "star"), colors=("red", "blue"),
                       min_objects=1, max_objects=1, partners=(), n_train=5, n_pref=15, n_eval=10)
    with pytest.raises(ValueError, match="too small"):  # only 4 cells * 3 shapes * 2 colours = 24 scenes
        W.make_splits(tiny)


def test_save_load_roundtrip_and_errors(tmp_path, splits):
    path = W.save_world(splits, tmp_path / "world")
    assert path.name == "scenes.json"
    assert W.load_world(tmp_path / "world") == splits
    with pytest.raises(FileNotFoundError, match="nowhere"):
        W.load_world(tmp_path / "nowhere")
    path.write_text("{not json")
    with pytest.raises(ValueError, match="scenes.json"):
        W.load_world(tmp_path / "world")


def test_scene_index_lookup(splits):
    scenes = splits["eval"][:20]
    index = W.SceneIndex(scenes, CFG)
    target = scenes[7]
    img = W.render(target, CFG)
    assert index.lookup(img) == target
    assert index.lookup(img.convert("RGBA")) == target  # mode does not matter, pixels do
    assert index.lookup(W.render(splits["pref"][0], CFG)) is None
    assert index.lookup(Image.new("RGB", (CFG.image_size, CFG.image_size), "white")) is None
    assert W.image_key(img) == W.image_key(W.render(target, CFG)) != W.image_key(img.resize((48, 48)))


# ------------------------------------------------------------------ instructions

def test_templates_round_trip(splits):
    rng = np.random.default_rng(0)
    seen = set()
    for s in splits["eval"][:50]:
        for ins in W.instructions_for(s, CFG, rng):
            fam, params = W.parse_instruction(ins.text, CFG)
            assert fam == ins.family and params == dict(ins.params)
            # case and spacing are ignored, except inside the quotes of a constraint (a JSON key, a phrase to end
            # with) and in a dialogue's history (its earlier turns are kept as they were said)
            if fam != "dialogue":
                loud = ins.text if fam == "ifeval" else ins.text.upper()
                assert W.parse_instruction("  " + loud.replace(" ", "  ") + " ", CFG) == (fam, params)
            seen.add(fam)
    assert seen == set(W.FAMILIES)


def test_exact_template_texts():
    ins = {f: W.make_instruction(f, TWO, CFG, shape="square" if f in W.SHAPE_FAMILIES else None, n=3)
           for f in W.FAMILIES if f not in ("ifeval", "dialogue")}
    assert ins["existence"].text == "Is there a square in the image?"
    assert ins["color"].text == "What color is the square?" and ins["color"].reference == "blue"
    assert ins["position"].reference == "at the center"
    assert ins["fmt_max_words"].text == "Name the shapes in the image in at most 3 words."
    assert ins["fmt_max_words"].params == (("n", 3),)
    assert ins["fmt_list"].reference == "circle, square"
    assert ins["fmt_start"].reference == "In this picture, a red circle at the top left, a blue square at the center."
    assert ins["count"].reference == "2"
    assert W.describe(TWO, CFG) == "a red circle at the top left, a blue square at the center."
    assert W.existence_instruction(TWO, "star", CFG).reference == "No, there is no star; there is a red circle."
    assert W.existence_instruction(TWO, "circle", CFG).reference == "Yes, there is a red circle."
    # a "no" names the asked shape's co-occurrence partner when it is there: the contrast the prior gets wrong
    tri = W.Scene("t", "eval", (W.Obj("circle", "red", 0), W.Obj("triangle", "green", 5)), 1)
    assert W.existence_instruction(tri, "star", CFG).reference == "No, there is no star; there is a green triangle."
    assert W.make_instruction("yn_color", tri, CFG, shape="triangle", color="red").reference == \
        "No, the triangle is green."
    assert W.make_instruction("yn_position", tri, CFG, shape="circle", position="top left").reference == \
        "Yes, the circle is at the top left."
    assert W.make_instruction("yn_count", tri, CFG, n=3).reference == "No, there are 2 shapes."
    cons = (("detectable_format:number_bullet_lists", (("num_bullets", 2),)), ("startend:end_checker",
                                                                             (("end_phrase", "That is all."),)))
    fmt = W.make_instruction("ifeval", TWO, CFG, content_family="describe", constraints=cons)
    assert fmt.text == ('Describe the image. Answer as a markdown list of exactly 2 bullet points (lines starting '
                        'with *). End your answer with the phrase "That is all."')
    assert fmt.reference == "* a red circle at the top left\n* a blue square at the center That is all."


def test_existence_is_balanced(many):
    rng = np.random.default_rng(1)
    answers = [W.make_instruction("existence", s, CFG, rng=rng).reference for s in many[:1000]]
    assert 0.42 < sum(a.startswith("Yes,") for a in answers) / len(answers) < 0.58


def test_unknown_instruction_is_named():
    with pytest.raises(W.UnknownInstruction) as err:
        W.parse_instruction("Paint me a picture.", CFG)
    assert "Paint me a picture." in str(err.value) and "Describe the image." in str(err.value)
    with pytest.raises(W.UnknownInstruction) as err:
        W.parse_instruction("Is there a dog in the image?", CFG)
    assert "'dog'" in str(err.value) and "hexagon" in str(err.value)
    with pytest.raises(W.UnknownInstruction):
        W.verify(TWO, "Sing a song.", "la la", CFG)


# ------------------------------------------------------------------ verifier

def test_every_reference_scores_one(splits):
    rng = np.random.default_rng(2)
    for s in splits["eval"] + splits["pref"][:240]:
        for ins in W.instructions_for(s, CFG, rng):
            v = W.verify(s, ins.text, ins.reference, CFG)
            assert v.score == 1.0 and v.correct, (s, ins, v)
        for shape in CFG.shapes:  # both answers of every existence question, and absent-shape references
            assert W.verify(s, *_text_ref(W.existence_instruction(s, shape, CFG)), CFG).score == 1.0
            for fam in ("color", "position", "fmt_one_word"):
                assert W.verify(s, *_text_ref(W.make_instruction(fam, s, CFG, shape=shape)), CFG).score == 1.0


def _text_ref(ins):
    return ins.text, ins.reference


def test_reference_scores_one_on_other_grid():
    cfg = WorldConfig(grid=4, image_size=64, max_objects=5)
    rng = np.random.default_rng(0)
    for i in range(100):
        s = W.sample_scene(rng, cfg, str(i), "eval")
        for ins in W.instructions_for(s, cfg, rng):
            assert W.verify(s, ins.text, ins.reference, cfg).score == 1.0, (s, ins)


def test_extra_object_is_hallucinated():
    text = W.describe(TWO, CFG)[:-1] + ", a green star at the bottom."
    v = W.verify(TWO, "Describe the image.", text, CFG)
    assert v.score == pytest.approx(0.8)  # precision 2/3, recall 1
    assert not v.correct and v.hallucinated == ("green star",) and "green star" in v.explanation


def test_describe_partial_credit():
    v = W.verify(TWO, "Describe the image.", "a blue circle at the top left, a blue square at the right.", CFG)
    # each mention earns 2/3 (shape + one attribute): precision = recall = 2/3
    assert v.score == pytest.approx(2 / 3)
    assert "circle: color blue, truth red" in v.wrong_attributes
    assert "square: position right, truth center" in v.wrong_attributes
    assert "color blue, truth red" in v.explanation
    v = W.verify(TWO, "Describe the image.", "A red circle at the top left.", CFG)
    assert v.score == pytest.approx(2 / 3) and v.missed == ("blue square",) and "blue square" in v.explanation
    v = W.verify(TWO, "Describe the image.", "a circle and a square", CFG)
    assert v.score == pytest.approx(1 / 3)
    assert W.verify(TWO, "Describe the image.", "", CFG).score == 0.0
    # a duplicate mention counts once for recall, twice for precision
    v = W.verify(TWO, "Describe the image.", W.describe(TWO, CFG) + " The circle.", CFG)
    p, r = (3 + 3 + 1) / 9, 1.0
    assert v.score == pytest.approx(2 * p * r / (p + r))


def test_mentions_negation_plural_and_positions():
    m = W.mentioned_objects("There is no star. Two red circles sit at the top-left, and blue squares in the "
                            "middle; not a heart, no green diamonds or hexagons, without a cross.", CFG)
    assert m == [W.Mention("circle", "red", "top left"), W.Mention("square", "blue", "center")]
    assert W.mentioned_objects("There isn't any triangle but a crosses", CFG) == [W.Mention("cross", None, None)]
    assert W.object_mentions("No, the circle is at the top. A circle and a star.", CFG) == ["circle", "star"]
    # a colour does not leak across another shape; the longest position name wins
    assert W.mentioned_objects("a red circle square at the bottom right", CFG) == [
        W.Mention("circle", "red", None), W.Mention("square", None, "bottom right")]
    v = W.verify(TWO, "Describe the image.", W.describe(TWO, CFG) + " There is no star.", CFG)
    assert v.score == 1.0 and v.hallucinated == ()


def test_yes_no():
    assert W.yes_no("No, there is not.") == "no"
    assert W.yes_no("Yes.") == "yes"
    assert W.yes_no("Yes, there is no dog") == "no"
    assert W.yes_no("Yes. There is no dog.") == "yes"
    assert W.yes_no("There isn't.") == "no"
    assert W.yes_no("I see a circle.") is None and W.yes_no("") is None


def test_existence_verdicts():
    q = "Is there a star in the image?"
    v = W.verify(TWO, q, "Yes, there is a star.", CFG)
    assert v.score == 0.0 and v.hallucinated == ("star",) and "star" in v.explanation
    v = W.verify(TWO, q, "No, there is not.", CFG)      # right, but claims nothing: half the score
    assert v.score == 0.5 and not v.correct
    assert W.verify(TWO, q, "No, there is no star; there is a blue square.", CFG).correct
    v = W.verify(TWO, q, "No, there is no star; there is a green square.", CFG)   # right answer, wrong claim
    assert v.score == 0.5 and not v.correct and any("green" in w for w in v.wrong_attributes)
    v = W.verify(TWO, q, "No, there is no star; there is a triangle.", CFG)
    assert v.score == 0.5 and v.hallucinated == ("triangle",)
    v = W.verify(TWO, "Is there a circle in the image?", "Yes, there is a blue square.", CFG)
    assert v.score == 0.75 and not v.correct          # the asked circle is not described
    v = W.verify(TWO, "Is there a circle in the image?", "No.", CFG)
    assert v.score == 0.0 and v.missed == ("circle",)
    v = W.verify(TWO, q, "Perhaps.", CFG)
    assert v.score == 0.0 and v.format_violations == ("no yes/no answer",)


def test_attribute_answers():
    assert W.verify(TWO, "What color is the circle?", "The circle is red.", CFG).score == 1.0
    v = W.verify(TWO, "What color is the circle?", "Blue.", CFG)
    assert v.score == 0.0 and "color" in v.explanation and "blue" in v.explanation and "red" in v.explanation
    assert W.verify(TWO, "What color is the circle?", "red or blue", CFG).score == 0.0
    assert W.verify(TWO, "Where is the square?", "In the center.", CFG).score == 1.0
    v = W.verify(TWO, "Where is the circle?", "at the top", CFG)
    assert v.score == 0.0 and "position" in v.explanation and "top left" in v.explanation
    assert W.verify(TWO, "Where is the circle?", "top left or bottom", CFG).score == 0.0
    v = W.verify(TWO, "What color is the star?", "It is green.", CFG)
    assert v.score == 0.0 and v.hallucinated == ("star",)
    q = "How many shapes are in the image?"
    assert W.verify(TWO, q, "There are two shapes.", CFG).score == 1.0
    assert W.verify(TWO, q, "2", CFG).score == 1.0
    v = W.verify(TWO, q, "3", CFG)
    assert v.score == 0.0 and "3" in v.explanation
    assert W.verify(TWO, q, "2 or 3", CFG).score == 0.0


def test_format_families():
    v = W.verify(TWO, "Answer in one word: what color is the circle?", "The circle is red.", CFG)
    assert v.score == 0.5 and not v.correct and v.format_violations
    assert W.verify(TWO, "Answer in one word: what color is the circle?", "Red.", CFG).score == 1.0
    assert W.verify(TWO, "Answer in one word: what color is the circle?", "Blue", CFG).score == 0.5

    lst = "List the shapes in the image, separated by commas."
    v = W.verify(TWO, lst, "circle and square", CFG)
    assert v.score == 0.5 and "circle and square" in v.format_violations[0]
    v = W.verify(TWO, lst, "Circles, squares, and stars.", CFG)
    assert v.format_violations == () and v.hallucinated == ("star",) and v.score == pytest.approx(0.5 + 0.5 * 0.8)
    assert W.verify(TWO, lst, "square, circle", CFG).score == 1.0

    start = 'Describe the image. Start your answer with "In this picture".'
    v = W.verify(TWO, start, "in this picture, " + W.describe(TWO, CFG), CFG)
    assert v.score == 0.5 and "In this picture" in v.format_violations[0]
    v = W.verify(TWO, start, "In this picture, a red circle at the top left.", CFG)
    assert v.score == pytest.approx(0.5 + 0.5 * 2 / 3) and v.missed == ("blue square",)

    mw = "Name the shapes in the image in at most 2 words."
    v = W.verify(TWO, mw, "a circle and a square", CFG)
    assert v.score == 0.5 and v.format_violations == ("5 words, limit 2",)
    assert W.verify(TWO, mw, "circle square", CFG).score == 1.0
    assert W.verify(TWO, mw, "circle", CFG).score == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_every_split_keeps_the_cooccurrence_prior():
    # Disjoint splits are made by re-drawing colliding scenes; that must not thin out the partner pairs
    # (the common shape combinations are the ones that collide most).
    cfg = WorldConfig(n_train=3000, n_pref=800, n_eval=400, partner_prob=0.85)
    splits = W.make_splits(cfg)
    for name, scenes in splits.items():
        co = W.cooccurrence(scenes, cfg.shapes)
        for lead, partner in cfg.partners:
            p = co[cfg.shapes.index(lead), cfg.shapes.index(partner)]
            assert p > 0.75, (name, lead, partner, p)


def test_yes_no_attribute_questions():
    cfg = WorldConfig()
    scene = W.Scene("s", "eval", (W.Obj("circle", "red", 0), W.Obj("square", "blue", 4)), 1)
    cases = [("Is the circle red?", "Yes", "the circle is red"), ("Is the circle blue?", "No", "the circle is red"),
             ("Is the square at the center?", "Yes", "the square is at the center"),
             ("Is the square at the top left?", "No", "the square is at the center"),
             ("Are there 2 shapes in the image?", "Yes", "there are 2 shapes"),
             ("Are there 3 shapes in the image?", "No", "there are 2 shapes")]
    for text, truth, why in cases:
        assert W.verify(scene, text, f"{truth}, {why}.", cfg).correct, text
        assert W.verify(scene, text, truth, cfg).score == 0.5, text          # no justification
        wrong = "No" if truth == "Yes" else "Yes"
        v = W.verify(scene, text, wrong, cfg)
        assert v.score == 0.0 and v.wrong_attributes, text
        assert W.verify(scene, text, f"{wrong}, {why}.", cfg).score == 0.5, text   # true claim, wrong answer
    v = W.verify(scene, "Is the circle blue?", "Yes, the circle is blue.", cfg)
    assert v.score == 0.0 and any("truth red" in w for w in v.wrong_attributes)
    assert W.verify(scene, "Is the circle red?", "Yes, the circle is red or blue.", cfg).score == 0.5
    for text, _, _ in cases:
        assert W.verify(scene, text, "maybe", cfg).format_violations == ("no yes/no answer",)
    assert W.parse_instruction("Is the circle at the top left?", cfg) == (
        "yn_position", {"shape": "circle", "position": "top left"})
    with pytest.raises(W.UnknownInstruction, match="unknown color 'pink'"):
        W.parse_instruction("Is the circle pink?", cfg)
    rng = np.random.default_rng(0)
    refs = [W.make_instruction("yn_color", scene, cfg, rng=rng).reference for _ in range(200)]
    assert 0.35 < sum(r.startswith("Yes,") for r in refs) / 200 < 0.65          # half true, half false


def test_annotated_adds_an_absent_mate_in_a_free_cell():
    # circle's mate (square) and star's mate (triangle) are absent: the prior works both ways along a pair
    lone = scene(("circle", "red", 0), ("star", "blue", 4))
    assert W.missing_mates(lone, CFG) == ["square", "triangle"]
    rng = np.random.default_rng(0)
    seen, added = set(), set()
    for _ in range(40):
        a = W.annotated(lone, CFG, rng)
        extra = [o for o in a.objects if o not in lone.objects]
        assert len(a.objects) == 3 and len(extra) == 1
        assert extra[0].shape in ("square", "triangle") and extra[0].cell not in (0, 4)
        assert a.scene_id == lone.scene_id and a.style_seed == lone.style_seed
        seen.add(extra[0].cell)
        added.add(extra[0].shape)
    assert len(seen) > 3 and added == {"square", "triangle"}   # the cell and the mate are drawn, not fixed
    assert W.missing_mates(TWO, CFG) == []
    assert W.annotated(TWO, CFG, rng) is None  # square is already with its circle: nothing to hallucinate


def test_preference_existence_prompts_are_balanced_and_ask_about_mates():
    from m3po_utils.config import load_preset
    from m3po_utils.shapes.prompts import shapes_prompts

    # existence questions only, so that the Yes share is measured on 600 of them whatever the default mix
    cfg = load_preset("shapes", {"world.n_pref": 700, "generation.n_prompts": 600,
                                 "generation.family_weights": (("existence", 1.0),)})
    pref = W.make_splits(cfg.world)["pref"]
    by_id = {s.scene_id: s for s in pref}
    rows = [r for r in shapes_prompts(pref, cfg) if r["family"] == "existence"]
    yes = [r for r in rows if r["reference"].startswith("Yes")]
    no = [r for r in rows if r["reference"].startswith("No")]
    assert len(rows) > 80 and 0.4 < len(yes) / len(rows) < 0.6       # half Yes, half No: training cannot learn "No"
    shape_of = {r["prompt_id"]: W.parse_instruction(r["instruction"], cfg.world)[1]["shape"] for r in rows}
    for r in no:                        # an absent mate of a present shape whenever the scene has one
        mates = W.missing_mates(by_id[r["scene_id"]], cfg.world)
        assert not mates or shape_of[r["prompt_id"]] in mates
    # a Yes question asks about a shape whose mate is present too whenever the scene has such a pair, so that
    # "is it the mate of something I see" cannot decide the answer
    for r in yes:
        scene = by_id[r["scene_id"]]
        paired = {s for a, b in cfg.world.partners if scene.has(a) and scene.has(b) for s in (a, b)}
        assert not paired or shape_of[r["prompt_id"]] in paired


def test_validation_prompts_are_on_validation_scenes_only_and_drawn_like_the_preference_prompts():
    from m3po_utils.config import load_preset
    from m3po_utils.shapes.prompts import shapes_prompts, validation_prompt_rows, validation_scenes

    cfg = load_preset("shapes", {"world.n_pref": 700, "generation.n_prompts": 600})
    pref = W.make_splits(cfg.world)["pref"]
    val = validation_prompt_rows(pref, cfg)
    held_out = [s.scene_id for s in validation_scenes(pref)]
    assert len(val) == 2 * len(held_out) == 200
    assert [r["scene_id"] for r in val] == [sid for sid in held_out for _ in range(2)]
    assert {r["scene_id"] for r in val}.isdisjoint(r["scene_id"] for r in shapes_prompts(pref, cfg))
    assert [r["prompt_id"] for r in val[:2]] == ["v00000", "v00001"]
    by_id = {s.scene_id: s for s in pref}
    for r in val:                                        # every reference is right about its own scene
        assert W.verify(by_id[r["scene_id"]], r["instruction"], r["reference"], cfg.world).score == 1.0
    assert len({r["family"] for r in val}) >= 8          # the preference mix, not one family
    assert validation_prompt_rows(pref, cfg) == val      # seeded
    with pytest.raises(ValueError, match="per_scene"):
        validation_prompt_rows(pref, cfg, per_scene=0)


def test_preference_family_mix_follows_generation_family_weights():
    from m3po_utils.config import ConfigError, load_preset, parse_overrides
    from m3po_utils.shapes.prompts import shapes_prompts, validation_prompt_rows

    base = {"world.n_pref": 1300, "generation.n_prompts": 1200}
    mix = "(('yn_color', 3.0), ('count', 1.0))"
    cfg = load_preset("shapes", base | parse_overrides([f"generation.family_weights={mix}"]))
    assert cfg.generation.family_weights == (("yn_color", 3.0), ("count", 1.0))
    pref = W.make_splits(cfg.world)["pref"]
    rows = shapes_prompts(pref, cfg)
    fams = [r["family"] for r in rows]
    assert set(fams) == {"yn_color", "count"}                # a family left out is never drawn
    assert 0.70 < fams.count("yn_color") / len(fams) < 0.80  # weights are normalised: 3 / 4
    assert {r["family"] for r in validation_prompt_rows(pref, cfg)} == {"yn_color", "count"}
    # the default mix draws every family, so the two tables differ
    default = shapes_prompts(pref, load_preset("shapes", base))
    assert len({r["family"] for r in default}) == len(W.FAMILIES)
    with pytest.raises(ConfigError, match=r"generation\.family_weights names unknown families \['colour'\]"):
        shapes_prompts(pref, load_preset("shapes", base | {"generation.family_weights": (("colour", 1.0),)}))
    with pytest.raises(ConfigError, match="generation.family_weights.*weights >= 0"):
        load_preset("shapes", {"generation.family_weights": (("count", -1.0), ("color", 2.0))})
    with pytest.raises(ConfigError, match="generation.family_weights.*at most once"):
        load_preset("shapes", {"generation.family_weights": (("count", 1.0), ("count", 2.0))})
