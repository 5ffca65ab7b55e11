"""The base model judging itself: claims checked by its own P(yes), and how surprised it is by an answer.

RLAIF-V (Yu et al., 2025) scores a response by splitting it into atomic claims, turning each into a yes/no
question and reading an open model's P(yes); the response's score counts the claims the model rejects. Here the
tiny LVLM of notebook 00 plays that open model for the shapes world — the self-judge — through the same
OpenAI-protocol server as every other assessor (:class:`~m3po_utils.judge.server.JudgeServer` with
``assessor=Assessor("self")``), so MAS and selection code do not change.

**Claims** come from the answer's text alone, with the verifier's parsers (the judge never reads the scene's truth):
every shape an answer mentions ("Is there a circle in the image?"), the colour and the position given for it ("Is the
circle red?", "Is the circle at the top left?"), a count ("Are there 3 shapes in the image?"), and for a yes/no
question its verdict (the question itself, answered yes or no). A claim's probability is P(yes) — the model's
first-token probability of "Yes" against "No" — or 1 − P(yes) for a "no". An answer scores like the verifier
scores it, with probabilities in place of truths: yes/no answers ``w · P(verdict) + (1 − w) · mean P(clause
claims)``; format instructions ``0.5 · format followed + 0.5 · mean P(claims)``; the rest the mean claim
probability (0 without a claim); a colour or position answer that only denies the shape claims it is absent. A
follow-up of a dialogue is judged like a colour or position question about the shape its history names. A question
with IFEval-style constraints scores ``0.5 · share of constraints
followed + 0.5 ·`` the score of its content (the answer with its format taken off) as an answer to the question.

**Surprisal** is the answer's mean per-token −log P under the model (teacher-forced): the server's noise can grow
with it, an assessor that is least reliable where the model would hardly have said the answer.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from m3po_utils import shapes as W
from m3po_utils.config import WorldConfig
from m3po_utils.models.generate import score_responses

ANSWER_TOKENS = ("Yes", "No")


class ModelView:
    """One base model's view of the world's images: P(yes) of yes/no questions (cached per image and question) and
    the surprisal of answers."""

    def __init__(self, model, processor, cfg: WorldConfig, batch_size: int = 64):
        self.model, self.processor, self.cfg, self.batch_size = model, processor, cfg, batch_size
        self._p_yes: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()     # the server answers requests on several threads; one model call at a time

    def p_yes(self, image, questions: Sequence[str]) -> list[float]:
        """The model's P(yes) for each question about ``image``: its first-token probability of "Yes" against
        "No" (renormalised over the two)."""
        key = W.image_key(image)
        with self._lock:
            self._fill(image, key, questions)
        return [self._p_yes[(key, q)] for q in questions]

    def _fill(self, image, key: str, questions: Sequence[str]) -> None:
        todo = [q for q in dict.fromkeys(questions) if (key, q) not in self._p_yes]
        if todo:
            lps = score_responses(self.model, self.processor, [image] * len(todo), list(todo),
                                  [list(ANSWER_TOKENS)] * len(todo), batch_size=self.batch_size)
            for q, (yes, no) in zip(todo, lps, strict=True):
                a, b = float(yes[0]), float(no[0])
                self._p_yes[(key, q)] = float(1.0 / (1.0 + np.exp(b - a)))

    def surprisal(self, image, instruction: str, responses: Sequence[str]) -> list[float]:
        """Each response's mean per-token −log P under the model (EOS included)."""
        with self._lock:
            lps = score_responses(self.model, self.processor, image, instruction, list(responses),
                                  batch_size=self.batch_size)
        return [float(-np.mean(lp)) if len(lp) else 0.0 for lp in lps]


def claims(family: str, params: dict, response: str, cfg: WorldConfig) -> tuple[tuple[str, bool] | None,
                                                                                   list[tuple[str, bool]]]:
    """``(verdict claim, other claims)`` of ``response``: each a ``(yes/no question, holds if the answer is yes)``.

    The verdict claim exists for the yes/no families only (None when the answer gives no yes or no)."""
    q = W.question_text
    shape = params.get("shape")
    verdict = None
    if family in W.YES_NO_FAMILIES:
        said = W.yes_no(response)
        verdict = None if said is None else (q(family, **params), said == "yes")
    out: list[tuple[str, bool]] = []
    if family in ("describe", "existence", "fmt_start", "fmt_list", "fmt_max_words"):
        for m in W.mentioned_objects(response, cfg):
            out.append((q("existence", shape=m.shape), True))
            if m.color:
                out.append((q("yn_color", shape=m.shape, color=m.color), True))
            if m.position:
                out.append((q("yn_position", shape=m.shape, position=m.position), True))
    elif family in ("color", "fmt_one_word", "yn_color") and shape:
        out += [(q("yn_color", shape=shape, color=c), True) for c in W.colors_in(response, cfg)]
    elif family in ("position", "yn_position") and shape:
        out += [(q("yn_position", shape=shape, position=p), True) for p in W.positions_in(response, cfg)]
    if family in ("color", "position") and shape and not out and W.denies(response):
        out.append((q("existence", shape=shape), False))    # "There is no star": right if there is none
    elif family in ("count", "yn_count"):
        out += [(q("yn_count", n=n), True) for n in W.numbers_in(response) if 1 <= n <= 9]
    return verdict, out


def self_scores(view: ModelView, image, instruction: str, responses: Sequence[str],
                verdict_weight: float = 0.5) -> tuple[list[float], list[str]]:
    """The self-judge's score in [0, 1] of each response (see the module docs), and a reason for each."""
    cfg = view.cfg
    family, params = W.parse_instruction(instruction, cfg)
    followed: list[float] | None = None
    if family == W.DIALOGUE:    # the history says which shape is asked about; the claims are about the image
        family, params = params["attr"], {"shape": W.referred_shape(params, cfg)}
    if family == "ifeval":      # the content is judged as an answer to the question; the format by IFEval's checks
        constraints = W.ifeval.thaw(params["constraints"])
        followed = [float(np.mean(W.ifeval.score(constraints, r)["strict"])) for r in responses]
        responses = [W.ifeval.content_of(constraints, r) for r in responses]
        family = params.pop("content_family")
        params.pop("constraints")
    per = [claims(family, params, r, cfg) for r in responses]
    asked = [qq for verdict, rest in per for qq, _ in ([verdict] if verdict else []) + rest]
    p = dict(zip(asked, view.p_yes(image, asked), strict=True)) if asked else {}

    def prob(claim: tuple[str, bool]) -> float:
        return p[claim[0]] if claim[1] else 1.0 - p[claim[0]]

    scores, reasons = [], []
    for k, (r, (verdict, rest)) in enumerate(zip(responses, per, strict=True)):
        clause = float(np.mean([prob(c) for c in rest])) if rest else 0.0
        if family in W.YES_NO_FAMILIES:
            v = 0.0 if verdict is None else verdict_weight * prob(verdict) + (1 - verdict_weight) * clause
        elif family.startswith("fmt_"):
            v = 0.5 * (not W.format_violations(family, r, params, cfg)) + 0.5 * clause
        else:
            v = clause
        if followed is not None:
            v = 0.5 * followed[k] + 0.5 * v
        scores.append(float(v))
        reasons.append(f"self-judged {len(rest) + (verdict is not None)} claim(s) at mean P {v:.2f}")
    return scores, reasons
