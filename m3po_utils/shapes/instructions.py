"""Instruction families of the shapes world: templates, ground-truth parameters, and parsing an instruction back."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from m3po_utils import dialogue
from m3po_utils.config import WorldConfig
from m3po_utils.shapes import ifeval as I
from m3po_utils.shapes.scenes import Obj, Scene, annotated, mates_of, position_name, position_phrase

FAMILIES = ("describe", "existence", "color", "count", "position", "fmt_one_word", "fmt_list", "fmt_start",
            "fmt_max_words", "yn_position", "yn_color", "yn_count", "ifeval", "dialogue")


# ``ifeval``: a question of one of these families followed by one or two IFEval-style constraints
# (:mod:`m3po_utils.shapes.ifeval`); its reference is the family's, formatted to follow them.
IFEVAL = "ifeval"
CONTENT_FAMILIES = ("describe", "existence", "color", "count", "position")

# ``dialogue``: two turns. The first asks for the shapes (a description or a list) and holds its answer — the truth,
# or, in a *hallucinated* history, the truth plus the absent co-occurrence partner a prior-following model would add;
# the second asks about one shape that answer mentioned, by its place ("the second shape you mentioned") or by its
# name ("the star you mentioned"). Its right answer depends on the image and on the first answer: the shape's colour
# or position, or, when the first answer made it up, that it is not there.
DIALOGUE = "dialogue"
OPENERS = ("describe", "fmt_list")
FOLLOW_UPS = {"color": "What color is the {ref} you mentioned?", "position": "Where is the {ref} you mentioned?"}
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth")


# Yes/no questions (MME-style perception: half true, half false); the answers are justified, see
# ``yes_no_reference``.
YES_NO_FAMILIES = ("existence", "yn_position", "yn_color", "yn_count")


TEMPLATES = {
    "describe": "Describe the image.",
    "existence": "Is there a {shape} in the image?",
    "color": "What color is the {shape}?",
    "count": "How many shapes are in the image?",
    "position": "Where is the {shape}?",
    "fmt_one_word": "Answer in one word: what color is the {shape}?",
    "fmt_list": "List the shapes in the image, separated by commas.",
    "fmt_start": 'Describe the image. Start your answer with "In this picture".',
    "fmt_max_words": "Name the shapes in the image in at most {n} words.",
    # yn_position is listed before yn_color: "Is the circle at the top?" must not parse as a colour question
    "yn_position": "Is the {shape} at the {position}?",
    "yn_color": "Is the {shape} {color}?",
    "yn_count": "Are there {n} shapes in the image?",
}


SHAPE_FAMILIES = ("existence", "color", "position", "fmt_one_word", "yn_position", "yn_color")


START_PHRASE = "In this picture"


class UnknownInstruction(ValueError):
    """An instruction that matches no template, or names an unknown shape."""


@dataclass(frozen=True)
class Instruction:
    """An instruction with its reference answer; ``params`` are sorted (key, value) pairs."""

    family: str
    text: str
    reference: str
    params: tuple

    @property
    def args(self) -> dict:
        return dict(self.params)


def describe(scene: Scene, cfg: WorldConfig) -> str:
    """Canonical description: ``"a red circle at the top left, an orange square at the center."``"""
    parts = [f"{_article(o.color)} {o.color} {o.shape} {position_phrase(o.cell, cfg.grid)}" for o in scene.objects]
    return ", ".join(parts) + "."


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _instruction_text(family: str, shape: str | None = None, n: int | None = None, color: str | None = None,
                      position: str | None = None) -> str:
    text = TEMPLATES[family]
    if family == "existence":
        text = text.replace("a {shape}", f"{_article(shape or '')} {{shape}}")
    return text.format(shape=shape, n=n, color=color, position=position)


def _position_names(cfg: WorldConfig) -> list[str]:
    return [position_name(c, cfg.grid) for c in range(cfg.grid * cfg.grid)]


def _yes_no_params(family: str, scene: Scene, obj: Obj, cfg: WorldConfig, rng: np.random.Generator | None,
                   n: int | None, color: str | None, position: str | None) -> dict[str, Any]:
    """The asked value of a yes/no attribute question: true or (50 % with ``rng``) a wrong one."""
    flip = rng is not None and rng.random() < 0.5
    if family == "yn_count":
        true_n = len(scene.objects)
        if n is None:
            others = [k for k in range(1, cfg.max_objects + 1) if k != true_n]
            n = others[int(rng.integers(len(others)))] if flip and others else true_n
        return {"n": int(n)}
    if family == "yn_color":
        if color is None:
            others = [c for c in cfg.colors if c != obj.color]
            color = others[int(rng.integers(len(others)))] if flip else obj.color
        if color not in cfg.colors:
            raise UnknownInstruction(f"unknown color {color!r}; known colors: {', '.join(cfg.colors)}")
        return {"color": color}
    names = _position_names(cfg)
    if position is None:
        true_p = position_name(obj.cell, cfg.grid)
        others = [p for p in names if p != true_p]
        position = others[int(rng.integers(len(others)))] if flip else true_p
    if position not in names:
        raise UnknownInstruction(f"unknown position {position!r}; known positions: {', '.join(names)}")
    return {"position": position}


def _yes_no_truth(family: str, scene: Scene, params: dict[str, Any], cfg: WorldConfig) -> bool:
    if family == "existence":
        return scene.has(params["shape"])
    if family == "yn_count":
        return len(scene.objects) == params["n"]
    obj = scene.obj(params["shape"])
    if obj is None:
        return False
    if family == "yn_color":
        return obj.color == params["color"]
    return position_name(obj.cell, cfg.grid) == params["position"]


def _counted(n: int) -> str:
    return f"there is {n} shape" if n == 1 else f"there are {n} shapes"


def _contrast_object(scene: Scene, shape: str, cfg: WorldConfig) -> Obj | None:
    """The object a "No, there is no {shape}" answer names instead: the asked shape's co-occurrence partner
    when it is in the scene (the contrast the prior gets wrong), else the first object."""
    mates = mates_of(shape, cfg)
    return next((o for o in scene.objects if o.shape in mates), scene.objects[0] if scene.objects else None)


def yes_no_reference(family: str, scene: Scene, params: dict[str, Any], cfg: WorldConfig) -> str:
    """A yes/no answer with a one-clause justification whose claims the verifier checks.

    ``"Yes, there is a red star."`` / ``"No, there is no star; there is a blue triangle."`` (existence),
    ``"Yes, the circle is red."`` / ``"No, the circle is blue."`` (colour), ``"No, the circle is at the top."``
    (position), ``"No, there are 3 shapes."`` (count). POPE and MME read the leading Yes / No; the clause after
    it is where two sampled answers can differ in what they claim about the image.
    """
    truth = _yes_no_truth(family, scene, params, cfg)
    lead = "Yes" if truth else "No"
    if family == "yn_count":
        return f"{lead}, {_counted(len(scene.objects))}."
    shape = params["shape"]
    obj = scene.obj(shape)
    if obj is None:
        other = _contrast_object(scene, shape, cfg)
        tail = f"; there is {_article(other.color)} {other.color} {other.shape}" if other is not None else ""
        return f"No, there is no {shape}{tail}."
    if family == "existence":
        return f"Yes, there is {_article(obj.color)} {obj.color} {shape}."
    if family == "yn_color":
        return f"{lead}, the {shape} is {obj.color}."
    return f"{lead}, the {shape} is {position_phrase(obj.cell, cfg.grid)}."


def make_instruction(family: str, scene: Scene, cfg: WorldConfig, rng: np.random.Generator | None = None,
                     shape: str | None = None, n: int | None = None, color: str | None = None,
                     position: str | None = None, content_family: str | None = None,
                     constraints: tuple | None = None, types: Sequence[str] = I.SEEN,
                     n_constraints: int | None = None, history: tuple | None = None, ordinal: int | None = None,
                     attr: str | None = None, hallucinated: bool | None = None, by_name: bool | None = None,
                     p_hallucinated: float = 0.5) -> Instruction:
    """Build one instruction of ``family`` for ``scene`` with its reference answer.

    Unset ``shape`` / ``n`` are drawn with ``rng`` (existence: present or absent shape 50/50; other shape
    families: a present shape; n = #objects + 0..2). Without ``rng`` the defaults are the first object and
    n = #objects + 1. A colour / position question about an absent shape has the reference
    ``"There is no {shape}."`` (one word ``"None"`` for fmt_one_word).

    ``ifeval``: a question of ``content_family`` (drawn from ``CONTENT_FAMILIES`` when unset) with ``constraints``
    (``ifeval.freeze``d; when unset, ``n_constraints`` distinct ones — 1 or 2 at random when unset — drawn from
    ``types``); see :func:`ifeval_instruction`. ``dialogue``: see :func:`dialogue_instruction`.
    """
    if family == DIALOGUE:
        return dialogue_instruction(scene, cfg, rng, history=history, ordinal=ordinal, attr=attr,
                                    hallucinated=hallucinated, by_name=by_name, p_hallucinated=p_hallucinated)
    if family == IFEVAL:
        return ifeval_instruction(scene, cfg, rng, content_family, constraints, types, n_constraints,
                                  shape=shape, n=n, color=color, position=position)
    if family not in FAMILIES:
        raise UnknownInstruction(f"unknown instruction family {family!r}; families: {', '.join(FAMILIES)}")
    shapes = [o.shape for o in scene.objects]
    params: dict[str, Any] = {}
    if family in SHAPE_FAMILIES:
        if shape is None:
            if rng is None:
                shape = shapes[0]
            else:
                absent = [s for s in cfg.shapes if s not in shapes]
                if family == "existence" and absent and rng.random() < 0.5:
                    shape = absent[int(rng.integers(len(absent)))]
                else:
                    shape = shapes[int(rng.integers(len(shapes)))]
        if shape not in cfg.shapes:
            raise UnknownInstruction(f"unknown shape {shape!r}; known shapes: {', '.join(cfg.shapes)}")
        params["shape"] = shape
    if family == "fmt_max_words":
        if n is None:
            n = len(shapes) + (int(rng.integers(0, 3)) if rng is not None else 1)
        if int(n) < 1:
            raise ValueError(f"n={n} must be a positive word limit")
        params["n"] = n = int(n)
    obj = scene.obj(shape) if shape is not None else None
    if family in ("yn_position", "yn_color", "yn_count"):
        if family != "yn_count" and obj is None and (color is None and position is None):
            raise ValueError(f"{family} asks about a shape in the scene; {shape!r} is not in {scene.scene_id}")
        params |= _yes_no_params(family, scene, obj, cfg, rng, n, color, position)
        ref = yes_no_reference(family, scene, params, cfg)
        return Instruction(family=family, text=_instruction_text(family, shape, params.get("n"),
                                                                 params.get("color"), params.get("position")),
                           reference=ref, params=tuple(sorted(params.items())))
    absent_ref = f"There is no {shape}."
    if family == "describe":
        ref = describe(scene, cfg)
    elif family == "existence":
        ref = yes_no_reference(family, scene, params, cfg)
    elif family == "color":
        ref = obj.color if obj is not None else absent_ref
    elif family == "count":
        ref = str(len(shapes))
    elif family == "position":
        ref = position_phrase(obj.cell, cfg.grid) if obj is not None else absent_ref
    elif family == "fmt_one_word":
        ref = obj.color if obj is not None else "None"
    elif family == "fmt_list":
        ref = ", ".join(shapes)
    elif family == "fmt_start":
        ref = f"{START_PHRASE}, {describe(scene, cfg)}"
    else:  # fmt_max_words
        ref = " ".join(shapes[:n])
    return Instruction(family=family, text=_instruction_text(family, shape, n), reference=ref,
                       params=tuple(sorted(params.items())))


def ifeval_instruction(scene: Scene, cfg: WorldConfig, rng: np.random.Generator | None = None,
                       content_family: str | None = None, constraints: tuple | None = None,
                       types: Sequence[str] = I.SEEN, n_constraints: int | None = None, tries: int = 50,
                       **content_args) -> Instruction:
    """A question of ``content_family`` followed by IFEval-style constraints; the reference is the question's,
    formatted by :func:`ifeval.ideal_response`. Drawn constraints are redrawn until that reference follows them all
    (a bullet count, a word limit and a forbidden word are drawn to fit the reference), so every drawn prompt can be
    answered right; given ``constraints`` are taken as they are."""
    if content_family is not None and content_family not in CONTENT_FAMILIES:
        raise UnknownInstruction(f"content_family={content_family!r} is not a question family; use one of "
                                 f"{', '.join(CONTENT_FAMILIES)}")
    unknown = [t for t in types if t not in I.TYPES]
    if unknown:
        raise UnknownInstruction(f"instruction types {unknown} are not among {sorted(I.TYPES)}")
    if constraints is None and rng is None:
        raise ValueError("an ifeval instruction needs rng to draw its constraints, or the constraints themselves")
    if n_constraints is not None and not 1 <= n_constraints <= len(types):
        raise ValueError(f"n_constraints={n_constraints} must be between 1 and the {len(types)} types given")
    for _ in range(tries):
        fam = content_family or CONTENT_FAMILIES[int(rng.integers(len(CONTENT_FAMILIES)))]
        content = make_instruction(fam, scene, cfg, rng=rng, **{k: v for k, v in content_args.items()
                                                                 if v is not None})
        cons = constraints
        if cons is None:
            k = n_constraints or 1 + int(rng.random() < 0.5)
            ids = [types[int(i)] for i in rng.choice(len(types), size=min(k, len(types)), replace=False)]
            cons = I.freeze([(i, I.draw_kwargs(i, content.reference, rng)) for i in ids])
        instructions = I.thaw(cons)
        reference = I.ideal_response(content.reference, instructions)
        if constraints is None and not all(I.score(instructions, reference)["strict"]):
            continue
        text = " ".join([content.text, *(I.describe(i, kw) for i, kw in instructions)])
        params = dict(content.params) | {"content_family": fam, "constraints": cons}
        return Instruction(family=IFEVAL, text=text, reference=reference, params=tuple(sorted(params.items())))
    raise ValueError(f"no draw of constraints from {list(types)} that the reference of a {content_family or 'content'}"
                     f" question about scene {scene.scene_id} can follow, in {tries} tries")


_SHAPE_RES: dict[tuple[str, ...], re.Pattern] = {}


def named_shapes(text: str, cfg: WorldConfig) -> list[str]:
    """The distinct shapes a text names, in order of first naming (a plural counts, a negation does not matter):
    what "the second shape you mentioned" counts over."""
    pattern = _SHAPE_RES.get(cfg.shapes)
    if pattern is None:
        names = sorted(cfg.shapes, key=len, reverse=True)
        pattern = _SHAPE_RES[cfg.shapes] = re.compile(r"\b(" + "|".join(re.escape(s) for s in names) + r")(?:e?s)?\b")
    return list(dict.fromkeys(m.group(1) for m in pattern.finditer(str(text).lower())))


def follow_up_reference(scene: Scene, shape: str, attr: str, cfg: WorldConfig) -> str:
    obj = scene.obj(shape)
    if obj is None:
        return f"There is no {shape} in the image."
    return f"The {shape} is {obj.color}." if attr == "color" else f"The {shape} is {position_phrase(obj.cell, cfg.grid)}."


def dialogue_instruction(scene: Scene, cfg: WorldConfig, rng: np.random.Generator | None = None,
                         history: tuple | None = None, ordinal: int | None = None, attr: str | None = None,
                         hallucinated: bool | None = None, by_name: bool | None = None,
                         p_hallucinated: float = 0.5) -> Instruction:
    """A two-turn instruction (see ``DIALOGUE``). Unset parts are drawn with ``rng``: the opener (a description or a
    list), whether the first answer is hallucinated (``p_hallucinated``; a scene with no absent partner cannot be),
    the attribute asked, which shape — the made-up one in a hallucinated history, else one the image has — and
    whether the follow-up names it or gives its place (``by_name``, half and half). A given ``history``
    (``((question, answer),)``) is kept as it is, and ``ordinal`` then names a shape of its answer."""
    if attr is None:
        if rng is None:
            raise ValueError("a dialogue instruction needs rng to draw its follow-up, or attr, ordinal and history")
        attr = tuple(FOLLOW_UPS)[int(rng.integers(len(FOLLOW_UPS)))]
    if by_name is None:
        if rng is None:
            raise ValueError("a dialogue instruction needs rng to draw how it refers to the shape, or by_name")
        by_name = bool(rng.random() < 0.5)
    if attr not in FOLLOW_UPS:
        raise UnknownInstruction(f"attr={attr!r}: a follow-up asks for one of {', '.join(FOLLOW_UPS)}")
    if history is None:
        if rng is None:
            raise ValueError("a dialogue instruction needs rng to draw its first turn, or the history itself")
        opener = OPENERS[int(rng.integers(len(OPENERS)))]
        hall = rng.random() < p_hallucinated if hallucinated is None else hallucinated
        # the made-up shape sits in a random free cell, so it can come anywhere in the answer (objects are in
        # reading order)
        told = (annotated(scene, cfg, rng) if hall else None) or scene
        first = make_instruction(opener, told, cfg)
        history = ((first.text, first.reference),)
        if ordinal is None:
            shapes = [o.shape for o in told.objects]
            made_up = [k for k, s in enumerate(shapes) if not scene.has(s)]
            ordinal = 1 + (made_up[0] if made_up else int(rng.integers(len(shapes))))
    history = tuple((str(q), str(a)) for q, a in history)
    mentioned = named_shapes(history[-1][1], cfg)
    if ordinal is None or not 1 <= int(ordinal) <= min(len(mentioned), len(ORDINALS)):
        raise UnknownInstruction(f"ordinal={ordinal!r}: the first answer names {len(mentioned)} shape(s) "
                                 f"({', '.join(mentioned) or 'none'}); ask about one of them")
    ordinal = int(ordinal)
    shape = mentioned[ordinal - 1]
    question = FOLLOW_UPS[attr].format(ref=shape if by_name else f"{ORDINALS[ordinal - 1]} shape")
    reference = follow_up_reference(scene, shape, attr, cfg)
    params = {"attr": attr, "by_name": bool(by_name), "history": history, "ordinal": ordinal}
    return Instruction(family=DIALOGUE, text=dialogue.encode(history, question), reference=reference,
                       params=tuple(sorted(params.items())))


def referred_shape(params: dict, cfg: WorldConfig) -> str:
    """The shape a ``dialogue`` follow-up asks about: the ``ordinal``-th shape its history's last answer names."""
    mentioned = named_shapes(params["history"][-1][1], cfg)
    k = int(params["ordinal"])
    if not 1 <= k <= len(mentioned):
        raise UnknownInstruction(f"the follow-up asks about shape {k} of an answer that names {len(mentioned)}")
    return mentioned[k - 1]


def question_text(family: str, shape: str | None = None, n: int | None = None, color: str | None = None,
                  position: str | None = None) -> str:
    """The text of an instruction of ``family`` with these parameters — no scene, no reference: what a judge that
    checks a claim asks (``question_text("yn_color", shape="circle", color="red")`` → "Is the circle red?")."""
    return _instruction_text(family, shape=shape, n=n, color=color, position=position)


def existence_instruction(scene: Scene, shape: str, cfg: WorldConfig) -> Instruction:
    """``"Is there a {shape} in the image?"`` with its justified reference (see ``yes_no_reference``)."""
    return make_instruction("existence", scene, cfg, shape=shape)


def instructions_for(scene: Scene, cfg: WorldConfig, rng: np.random.Generator,
                     families: Sequence[str] = FAMILIES) -> list[Instruction]:
    """One instruction per family, parameters drawn with ``rng``."""
    return [make_instruction(f, scene, cfg, rng=rng) for f in families]


def _normalise(text: str) -> str:
    text = text.replace("\u201c", '"').replace("\u201d", '"').replace("\u2019", "'")
    return re.sub(r"\s+", " ", text.strip()).lower()


def _template_regex(family: str) -> re.Pattern:
    body = TEMPLATES[family].lower().rstrip(".?")
    pattern = re.escape(body)
    pattern = pattern.replace(re.escape("a {shape}"), r"an?\ \{shape\}")
    pattern = pattern.replace(re.escape("{shape}"), r"(?P<shape>[a-z][a-z\- ]*?)")
    pattern = pattern.replace(re.escape("{n}"), r"(?P<n>\d+)")
    pattern = pattern.replace(re.escape("{color}"), r"(?P<color>[a-z]+)")
    pattern = pattern.replace(re.escape("{position}"), r"(?P<position>[a-z][a-z0-9 ]*?)")
    return re.compile(pattern + r"\s*[.?!]?")


_TEMPLATE_RES = {f: _template_regex(f) for f in TEMPLATES}


def parse_instruction(text: str, cfg: WorldConfig) -> tuple[str, dict]:
    """Inverse of the templates (case and surrounding space ignored): ``(family, {"shape": ..., "n": ...})``.

    A question followed by IFEval-style constraint sentences parses as ``("ifeval", {"content_family": ...,
    "constraints": ..., <the question's parameters>})``, which :func:`make_instruction` takes back."""
    history, last = dialogue.decode(str(text))
    if history:
        for attr, template in FOLLOW_UPS.items():
            pattern = re.escape(template.lower()).replace(re.escape("{ref}"), "(?P<ref>[a-z][a-z ]*?)")
            m = re.fullmatch(pattern, _normalise(last))
            if not m:
                continue
            ref = m.group("ref")
            named = named_shapes(history[-1][1], cfg)
            if ref.endswith(" shape") and ref.removesuffix(" shape") in ORDINALS:
                params = {"attr": attr, "by_name": False, "history": tuple(history),
                          "ordinal": ORDINALS.index(ref.removesuffix(" shape")) + 1}
            elif ref in cfg.shapes and ref in named:
                params = {"attr": attr, "by_name": True, "history": tuple(history), "ordinal": named.index(ref) + 1}
            else:
                raise UnknownInstruction(f"the follow-up {last!r} refers to {ref!r}, which the first answer does not "
                                         f"name (it names {', '.join(named) or 'no shape'})")
            referred_shape(params, cfg)
            return DIALOGUE, params
        follow = "; ".join(repr(t) for t in FOLLOW_UPS.values())
        raise UnknownInstruction(f"unknown follow-up {last!r} after a first turn; supported follow-ups: {follow}")
    head, constraints = I.split_constraints(str(text))
    if constraints:
        family, params = parse_instruction(head, cfg)
        if family not in CONTENT_FAMILIES:
            raise UnknownInstruction(f"constraints follow a {family!r} question in {text!r}; IFEval-style "
                                     f"constraints are asked of {', '.join(CONTENT_FAMILIES)} questions")
        return IFEVAL, params | {"content_family": family, "constraints": I.freeze(constraints)}
    norm = _normalise(str(text))
    for family, regex in _TEMPLATE_RES.items():
        m = regex.fullmatch(norm)
        if not m:
            continue
        params: dict[str, Any] = {}
        if "shape" in regex.groupindex:
            shape = m.group("shape").strip()
            if shape not in cfg.shapes:
                raise UnknownInstruction(f"unknown shape {shape!r} in instruction {text!r}; "
                                         f"known shapes: {', '.join(cfg.shapes)}")
            params["shape"] = shape
        if "n" in regex.groupindex:
            params["n"] = int(m.group("n"))
        if "color" in regex.groupindex:
            if m.group("color") not in cfg.colors:
                raise UnknownInstruction(f"unknown color {m.group('color')!r} in instruction {text!r}; "
                                         f"known colors: {', '.join(cfg.colors)}")
            params["color"] = m.group("color")
        if "position" in regex.groupindex:
            names = _position_names(cfg)
            if m.group("position").strip() not in names:
                raise UnknownInstruction(f"unknown position {m.group('position')!r} in instruction {text!r}; "
                                         f"known positions: {', '.join(names)}")
            params["position"] = m.group("position").strip()
        return family, params
    supported = "; ".join(repr(t) for t in TEMPLATES.values())
    raise UnknownInstruction(f"unknown instruction {text!r}; supported templates: {supported}")
