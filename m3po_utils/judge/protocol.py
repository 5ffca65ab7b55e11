"""The judge's protocol: versioned prompts, the chat messages that carry the image, and strict parsing of its JSON replies."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from m3po_utils import dialogue

INPUT_MARKER = "INPUT (JSON):"  # the judge prompt puts its instruction / responses after this line


@dataclass(frozen=True)
class JudgePrompt:
    """A versioned judge prompt: one system message, and a user template per mode (before the INPUT block)."""

    version: str
    system: str
    pointwise: str
    listwise: str


PROMPTS: dict[str, JudgePrompt] = {
    "v1": JudgePrompt(
        version="v1",
        system=("You are a strict evaluator of answers about images. Look at the image, read the instruction and "
                "judge each response for: correctness with respect to the image (no objects that are not there, "
                "right colours, positions and counts), whether it answers the instruction, and whether it obeys "
                "any format constraint the instruction sets. Reply with JSON only."),
        pointwise=("Rate the response from 1 (wrong, hallucinated or ignores the instruction) to 10 (fully "
                   "correct and follows the instruction).\n"
                   'Reply with JSON only, exactly: {"score": <integer 1-10>, "reason": "<one short sentence>"}'),
        listwise=("Rate each of the {n} candidate responses independently from 1 (wrong, hallucinated or ignores "
                  "the instruction) to 10 (fully correct and follows the instruction); equal responses get equal "
                  "scores.\n"
                  'Reply with JSON only, exactly: {{"scores": [<{n} integers from 1 to 10, in the order given>]}}'),
    ),
}


def judge_messages(prompt: JudgePrompt, image_url: str, instruction: str, responses: Sequence[str] | str) -> list[dict]:
    """Chat messages for one request: ``responses`` a string (pointwise) or a list (listwise). A dialogue's earlier
    turns (:mod:`m3po_utils.dialogue`) go before its last question as ``conversation``, so the judge reads the
    response in context."""
    history = dialogue.conversation(instruction)
    payload = {"conversation": history, "instruction": dialogue.question(instruction)} if history else {
        "instruction": instruction}
    if isinstance(responses, str):
        head = prompt.pointwise
        payload["response"] = responses
    else:
        head = prompt.listwise.format(n=len(responses))
        payload["responses"] = list(responses)
    text = f"{head}\n\n{INPUT_MARKER}\n{json.dumps(payload, ensure_ascii=False)}"
    return [{"role": "system", "content": prompt.system},
            {"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": image_url}}]}]


def png_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class JudgeParseError(ValueError):
    """A judge reply that is not the JSON the prompt asked for."""


def _as_score(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise JudgeParseError(f"{where} is a boolean, not a score")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise JudgeParseError(f"{where}={value!r} is not a number") from None
    if not isinstance(value, int | float) or not np.isfinite(value):
        raise JudgeParseError(f"{where}={value!r} is not a number")
    if not 1 <= value <= 10:
        raise JudgeParseError(f"{where}={value!r} is outside 1..10")
    return float(value)


def parse_reply(content: str | None, n: int | None = None) -> tuple[list[float], list[str]]:
    """Scores (and reasons, "" when absent) from a judge reply; ``n=None`` pointwise, else listwise with n scores.

    Accepts the JSON object alone, inside a ```json fence or surrounded by text; raises JudgeParseError otherwise.
    """
    if not isinstance(content, str) or not content.strip():
        raise JudgeParseError("empty reply")
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", content.strip())
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise JudgeParseError(f"no JSON object in the reply: {content[:80]!r}")
    try:
        obj = json.loads(text[start:end + 1])
    except json.JSONDecodeError as exc:
        raise JudgeParseError(f"invalid JSON ({exc.msg}): {content[:80]!r}") from None
    if not isinstance(obj, dict):
        raise JudgeParseError("the reply's JSON is not an object")
    if n is None:
        if "score" not in obj:
            raise JudgeParseError(f"no 'score' in the reply: {content[:80]!r}")
        reason = obj.get("reason")
        return [_as_score(obj["score"], "score")], [reason if isinstance(reason, str) else ""]
    scores = obj.get("scores")
    if not isinstance(scores, list):
        raise JudgeParseError(f"no 'scores' list in the reply: {content[:80]!r}")
    if len(scores) != n:
        raise JudgeParseError(f"{len(scores)} scores for {n} responses")
    reasons = obj.get("reasons")
    reasons = [r if isinstance(r, str) else "" for r in reasons] if isinstance(reasons, list) and len(
        reasons) == n else [""] * n
    return [_as_score(v, f"scores[{i}]") for i, v in enumerate(scores)], reasons
