"""Visual instructions with IFEval-style verifiable constraints, whose content the shapes verifier still checks.

A prompt is a question about the image from one of the world's content families (describe, existence, colour,
count, position) followed by one or two constraints of :mod:`m3po_utils.shapes.ifeval` ("Answer in capital letters.
End your answer with the phrase "That is all."."). Scoring keeps the two apart: the constraints are checked the
IFEval way (strict and loose), and the answer's content — once :func:`content_of` has taken the format off — is
scored by :func:`m3po_utils.shapes.verify` against the scene. An answer counts as *right* only when it follows every
constraint and its content is correct, as the project's IFT requires.

:func:`make_prompt` draws constraints that can be satisfied together: it builds the ideal answer
(:func:`ideal_response`: the family's reference answer, formatted) and keeps a draw only when that answer follows
every constraint strictly and still verifies as correct; a draw that cannot (capital letters and a JSON key, a
bullet count the answer has no items for) is drawn again.

``SEEN`` / ``HELD_OUT`` split the types so that a table can show generalisation to constraints that a model never
trained on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from m3po_utils.config import WorldConfig
from m3po_utils.shapes import ifeval as I
from m3po_utils.shapes.instructions import Instruction, make_instruction
from m3po_utils.shapes.scenes import Scene
from m3po_utils.shapes.verifier import verify

CONTENT_FAMILIES = ("describe", "existence", "color", "count", "position")
SEEN = ("punctuation:no_comma", "change_case:english_lowercase", "startend:quotation",
        "detectable_format:number_bullet_lists", "json_keys", "startend:end_checker", "keywords:existence")
HELD_OUT = ("change_case:english_capital", "detectable_format:title", "keywords:forbidden_words",
            "length_constraints:number_sentences", "length_constraints:number_words")
END_PHRASES = ("That is all.", "Thank you.")
KEYWORDS = ("picture", "shapes")
TITLES = ("Shapes", "The picture")


@dataclass(frozen=True)
class VisualIfevalPrompt:
    scene_id: str
    content: Instruction
    constraints: tuple[tuple[str, tuple], ...]      # (instruction id, sorted kwargs items)

    @property
    def instructions(self) -> list[tuple[str, dict]]:
        return [(i, {k: list(v) if isinstance(v, tuple) else v for k, v in kw}) for i, kw in self.constraints]

    @property
    def text(self) -> str:
        return " ".join([self.content.text, *(I.describe(i, kw) for i, kw in self.instructions)])


def _items(answer: str) -> list[str]:
    parts = [p.strip(" .") for p in answer.replace(" and ", ", ").split(",")]
    return [p for p in parts if p]


def ideal_response(content: Instruction, instructions: Sequence[tuple[str, dict]]) -> str:
    """The family's reference answer formatted to follow ``instructions`` (in a fixed order: wording, structure,
    end phrase, case)."""
    ids = dict(instructions)
    ans = content.reference.strip()
    if "punctuation:no_comma" in ids:
        ans = ans.replace(", ", " and ").replace(",", " and")
    if "keywords:existence" in ids:
        ans = ans.rstrip(".") + " in the " + " and ".join(ids["keywords:existence"]["keywords"]) + "."
    if "detectable_format:number_bullet_lists" in ids:
        ans = "\n".join(f"* {x}" for x in _items(ans))
    if "json_keys" in ids:
        ans = json.dumps({k: ans for k in ids["json_keys"]["keys"]})
    if "detectable_format:title" in ids:
        ans = f"<<{ids['detectable_format:title'].get('title', TITLES[0])}>>\n{ans}"
    if "startend:end_checker" in ids:
        ans = f"{ans} {ids['startend:end_checker']['end_phrase']}"
    if "startend:quotation" in ids:
        ans = f'"{ans}"'
    if "change_case:english_lowercase" in ids:
        ans = ans.lower()
    if "change_case:english_capital" in ids:
        ans = ans.upper()
    return ans


def content_of(prompt: VisualIfevalPrompt, response: str) -> str:
    """What the response says about the image, its format taken off (an end phrase the prompt asked for too)."""
    text = response
    for i, kw in prompt.instructions:
        if i == "startend:end_checker":
            text = I.without_end(text, kw["end_phrase"])
    return I.content(text)


def score(prompt: VisualIfevalPrompt, scene: Scene, response: str, cfg: WorldConfig) -> dict:
    """Constraints followed (strict and loose, one flag per constraint), the content's verdict, and whether the
    answer is right: every constraint followed strictly and the content correct."""
    s = I.score(prompt.instructions, response)
    verdict = verify(scene, prompt.content.text, content_of(prompt, response), cfg)
    return s | {"content_correct": bool(verdict.correct), "content_score": float(verdict.score),
                "right": bool(verdict.correct) and all(s["strict"])}


def _kwargs(iid: str, content: Instruction, rng: np.random.Generator) -> dict:
    words = I.count_words(content.reference)
    sentences = max(1, I.count_sentences(content.reference))
    if iid == "keywords:existence":
        return {"keywords": [KEYWORDS[int(rng.integers(len(KEYWORDS)))]]}
    if iid == "keywords:forbidden_words":
        pool = [w for w in ("there", "image", "very", "really") if w not in content.reference.lower().split()]
        return {"forbidden_words": [pool[int(rng.integers(len(pool)))]]}
    if iid == "length_constraints:number_sentences":
        return ({"num_sentences": sentences + 1, "relation": "less than"} if rng.random() < 0.5
                else {"num_sentences": sentences, "relation": "at least"})
    if iid == "length_constraints:number_words":
        return ({"num_words": words + int(rng.integers(2, 6)), "relation": "less than"} if rng.random() < 0.5
                else {"num_words": max(1, words - int(rng.integers(0, 2))), "relation": "at least"})
    if iid == "detectable_format:number_bullet_lists":
        return {"num_bullets": len(_items(content.reference))}
    if iid == "json_keys":
        return {"keys": ["answer"]}
    if iid == "startend:end_checker":
        return {"end_phrase": END_PHRASES[int(rng.integers(len(END_PHRASES)))]}
    return {}


def _frozen(kw: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kw.items()))


def make_prompt(scene: Scene, cfg: WorldConfig, rng: np.random.Generator, types: Sequence[str] = SEEN,
                n_constraints: int = 1, family: str | None = None, tries: int = 50) -> VisualIfevalPrompt:
    """A content question about ``scene`` with ``n_constraints`` distinct constraints drawn from ``types``, whose
    ideal answer follows them all and verifies as correct (see the module docs)."""
    unknown = [t for t in types if t not in I.TYPES]
    if unknown:
        raise KeyError(f"instruction types {unknown} are not among {sorted(I.TYPES)}")
    if not 1 <= n_constraints <= len(types):
        raise ValueError(f"n_constraints={n_constraints} must be between 1 and the {len(types)} types given")
    for _ in range(tries):
        fam = family or CONTENT_FAMILIES[int(rng.integers(len(CONTENT_FAMILIES)))]
        content = make_instruction(fam, scene, cfg, rng=rng)
        ids = [types[int(i)] for i in rng.choice(len(types), size=n_constraints, replace=False)]
        kws = [_kwargs(i, content, rng) for i in ids]
        prompt = VisualIfevalPrompt(scene.scene_id, content, tuple((i, _frozen(k)) for i, k in zip(ids, kws,
                                                                                                   strict=True)))
        ideal = ideal_response(content, prompt.instructions)
        s = score(prompt, scene, ideal, cfg)
        if s["right"]:
            return prompt
    raise ValueError(f"no satisfiable draw of {n_constraints} constraint(s) from {list(types)} in {tries} tries "
                     f"for scene {scene.scene_id}")
