"""IFEval's scoring of a visual question with constraints, beside the verifier's verdict on what it says.

An ``ifeval`` instruction of the shapes world (:func:`m3po_utils.shapes.instructions.ifeval_instruction`) is a
question about the image (describe, existence, colour, count, position) followed by one or two constraints of
:mod:`m3po_utils.shapes.ifeval` ("Write your whole answer in lowercase letters. End your answer with the phrase
"That is all."."). :func:`score` keeps the two apart, as IFEval's tables and the project's IFT need: every constraint
checked strictly and loosely (IFEval's relaxations), and the content — the answer with its format taken off — scored
by the verifier against the scene. An answer is *right* only when it follows every constraint strictly and its
content is correct.

A constraint **binds** when the plain right answer (the question's reference, unformatted) breaks it: "Answer in
capital letters" always binds, "Do not use the word "very"" never does for an answer that has no such word, and "write
in lowercase" binds only where the plain answer has a capital. Only a binding constraint tests whether a model follows
it rather than answering as it would anyway; :func:`score` says which bind.
"""

from __future__ import annotations

from m3po_utils.config import WorldConfig
from m3po_utils.shapes import ifeval as I
from m3po_utils.shapes.instructions import IFEVAL, make_instruction, parse_instruction, question_text
from m3po_utils.shapes.scenes import Scene
from m3po_utils.shapes.verifier import verify


def score(instruction: str, scene: Scene, response: str, cfg: WorldConfig) -> dict:
    """For an ``ifeval`` instruction's text: ``strict`` / ``loose`` (one flag per constraint, in order), the ids of
    the constraints (``ids``), which of them bind (``binding``, see the module docs), the content's verdict
    (``content_correct``, ``content_score``) and ``right``."""
    family, params = parse_instruction(instruction, cfg)
    if family != IFEVAL:
        raise ValueError(f"{instruction!r} is a {family!r} question with no IFEval-style constraint")
    instructions = I.thaw(params["constraints"])
    s = I.score(instructions, response)
    args = {k: params[k] for k in ("shape", "n", "color", "position") if k in params}
    question = question_text(params["content_family"], **args)
    verdict = verify(scene, question, I.content_of(instructions, response), cfg)
    plain = make_instruction(params["content_family"], scene, cfg, **args).reference
    return s | {"ids": [i for i, _ in instructions], "binding": [not I.follows(i, kw, plain) for i, kw in instructions],
                "content_correct": bool(verdict.correct),
                "content_score": float(verdict.score), "right": bool(verdict.correct) and all(s["strict"])}
