"""Multi-turn prompts carried as one instruction string, and turned into real chat turns where they leave it.

Every stage keys its tables, caches and judge requests by an instruction string. A dialogue — the earlier turns and
the question the answer is for — travels as one such string and becomes chat turns at each boundary: the model's
chat template (:func:`messages`, through ``models.templates.prompt_for``), TRL's conversational prompt (the same
messages, the history in the prompt and only the last answer trained on), and the judge's request (the history as a
``conversation`` list beside the ``instruction``, :func:`conversation`).

The string holds the first question, then for each later turn a line ``[assistant] <answer>`` and a line
``[user] <question>``::

    List the shapes in the image, separated by commas.
    [assistant] circle, star, square
    [user] What color is the second shape you mentioned?

A string without those lines is a one-turn instruction, and every function here treats it as before.
"""

from __future__ import annotations

from collections.abc import Sequence

ASSISTANT = "\n[assistant] "
USER = "\n[user] "


class DialogueError(ValueError):
    """An instruction string whose turns do not alternate question, answer, question."""


def is_dialogue(text: str) -> bool:
    return ASSISTANT in str(text)


def encode(history: Sequence[tuple[str, str]], question: str) -> str:
    """The instruction string of ``question`` asked after ``history`` (``(question, answer)`` pairs, oldest first)."""
    parts = []
    for q, a in history:
        for what, t in (("a question", q), ("an answer", a)):
            if "\n[" in t or not t.strip():
                raise DialogueError(f"{what} of the history is empty or holds a turn marker: {t!r}")
        parts += [q.strip(), ASSISTANT, a.strip(), USER]
    return "".join(parts) + question.strip()


def decode(text: str) -> tuple[list[tuple[str, str]], str]:
    """``(history, question)`` of an instruction string (the history is empty for a one-turn instruction)."""
    text = str(text)
    if not is_dialogue(text):
        return [], text
    history = []
    rest = text
    while ASSISTANT in rest:
        q, _, after = rest.partition(ASSISTANT)
        a, sep, rest = after.partition(USER)
        if not sep or not q.strip() or not a.strip() or ASSISTANT in a:
            raise DialogueError(f"instruction {text[:120]!r} does not alternate question, '[assistant] <answer>' "
                                "and '[user] <question>' lines")
        history.append((q.strip(), a.strip()))
    if not rest.strip() or USER in rest:
        raise DialogueError(f"instruction {text[:120]!r} ends without a '[user] <question>' line")
    return history, rest.strip()


def question(text: str) -> str:
    """The question the answer is for: the last user turn."""
    return decode(text)[1]


def texts(text: str) -> list[str]:
    """Every turn's text, in order (what a tokenizer should learn from)."""
    history, q = decode(text)
    return [t for pair in history for t in pair] + [q]


def messages(text: str, image: bool = True, image_part: dict | None = None) -> list[dict]:
    """Chat messages of an instruction string in the multimodal layout of transformers and TRL: the image (when
    ``image``) in the first user turn, each turn's text as a text part. ``image_part``: the dict the image part is
    (``{"type": "image"}`` by default)."""
    history, q = decode(text)
    turns: list[tuple[str, str]] = []
    for hq, ha in history:
        turns += [("user", hq), ("assistant", ha)]
    turns.append(("user", q))
    out = []
    for k, (role, t) in enumerate(turns):
        content = [{"type": "text", "text": t}]
        if k == 0 and image:
            content.insert(0, dict(image_part or {"type": "image"}))
        out.append({"role": role, "content": content})
    return out


def _text_of(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(c.get("text") or "" for c in content if c.get("type") == "text")


def from_messages(msgs: Sequence[dict]) -> str:
    """The instruction string of chat messages (the inverse of :func:`messages`; a system turn is not part of it)."""
    turns = [(m["role"], _text_of(m)) for m in msgs if m.get("role") != "system"]
    roles = [r for r, _ in turns]
    if not turns or roles != ["user", "assistant"] * (len(turns) // 2) + ["user"]:
        raise DialogueError(f"chat turns {roles} do not alternate user and assistant, ending with the user")
    return encode([(turns[k][1], turns[k + 1][1]) for k in range(0, len(turns) - 1, 2)], turns[-1][1])


def conversation(text: str) -> list[dict[str, str]]:
    """The history as ``[{"role": "user" | "assistant", "content": text}, ...]`` (empty for one turn): what the judge
    is shown before the instruction."""
    history, _ = decode(text)
    return [{"role": r, "content": t} for q, a in history for r, t in (("user", q), ("assistant", a))]
