"""Verifiable format instructions scored the IFEval way (Zhou et al. 2023, arXiv 2311.07911).

IFEval attaches verifiable constraints to a prompt ("answer in all lowercase", "exactly 3 bullet points") and
scores each with a deterministic checker. This module holds the checkers of the instruction types that fit an
answer about an image, each following the check of IFEval's instruction of the same id (the public
``instruction_following_eval/instructions.py`` of google-research), and IFEval's two scorings:

* **strict**: the response as it is (an empty response follows nothing);
* **loose**: the instruction counts as followed when *any* of eight variants follows it — the response, the
  response without its first line, without its last line, without both, and each of those four with every ``*``
  removed (IFEval's ``test_instruction_following_loose``): an upper bound that forgives a preamble, a sign-off and
  markdown emphasis.

and its two levels: **prompt-level** accuracy (share of prompts whose every instruction is followed) and
**instruction-level** accuracy (share of all instructions followed) — :func:`accuracies`.

Differences from IFEval, on purpose: the case checks do not also run a language detector (IFEval requires English by
``langdetect``; every answer here is English, and the detector is not a dependency); ``json_keys`` is this
project's own type (IFEval's ``json_format`` checks only that the answer parses), used to make the JSON carry the
answer; sentences are split at ``.``, ``!`` or ``?`` followed by white space or the end (IFEval's splitter also
knows abbreviations, which answers about shapes do not use).

:func:`content` takes the format off a response (quotes, a title, bullets, JSON values, an end phrase) so that the
shapes world's verifier can still check what the answer says about the image.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

RELATIONS = ("less than", "at least")


def _relation(n: int, relation: str, k: int) -> bool:
    if relation not in RELATIONS:
        raise ValueError(f"relation={relation!r}: use one of {RELATIONS}")
    return n < k if relation == "less than" else n >= k


def count_words(text: str) -> int:
    """Words as IFEval counts them: runs of word characters (``\\w+``)."""
    return len(re.findall(r"\w+", text))


def count_sentences(text: str) -> int:
    """Sentences: non-empty pieces between ``.``, ``!`` or ``?`` followed by white space or the end."""
    return len([s for s in re.split(r"[.!?]+(?:\s+|$)", text.strip()) if s.strip()])


def _strip_fences(text: str) -> str:
    out = text.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        out = out.removeprefix(prefix)
    return out.removesuffix("```").strip()


def _json(text: str):
    try:
        return json.loads(_strip_fences(text))
    except ValueError:
        return None


def _bullets(text: str) -> list[str]:
    star = re.findall(r"^\s*\*[^\*].*$", text, flags=re.MULTILINE)
    dash = re.findall(r"^\s*-.*$", text, flags=re.MULTILINE)
    return star + dash


# ------------------------------------------------------------------------------------------------ the checkers

def _keywords(text: str, keywords: Sequence[str]) -> bool:                    # keywords:existence
    return all(re.search(k, text, flags=re.IGNORECASE) for k in keywords)


def _forbidden(text: str, forbidden_words: Sequence[str]) -> bool:            # keywords:forbidden_words
    return not any(re.search(r"\b" + w + r"\b", text, flags=re.IGNORECASE) for w in forbidden_words)


def _no_comma(text: str) -> bool:                                               # punctuation:no_comma
    return "," not in text


def _lowercase(text: str) -> bool:                                              # change_case:english_lowercase
    return text.islower()


def _capital(text: str) -> bool:                                                # change_case:english_capital
    return text.isupper()


def _sentences(text: str, num_sentences: int, relation: str) -> bool:          # length_constraints:number_sentences
    return _relation(count_sentences(text), relation, num_sentences)


def _words(text: str, num_words: int, relation: str) -> bool:                  # length_constraints:number_words
    return _relation(count_words(text), relation, num_words)


def _bullet_count(text: str, num_bullets: int) -> bool:                        # detectable_format:number_bullet_lists
    return len(_bullets(text)) == num_bullets


def _json_format(text: str) -> bool:                                            # detectable_format:json_format
    try:
        json.loads(_strip_fences(text))
    except ValueError:
        return False
    return True


def _json_keys(text: str, keys: Sequence[str]) -> bool:                        # this project's: JSON with these keys
    obj = _json(text)
    return isinstance(obj, dict) and all(k in obj for k in keys)


def _end(text: str, end_phrase: str) -> bool:                                  # startend:end_checker
    return text.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def _quotation(text: str) -> bool:                                              # startend:quotation
    t = text.strip()
    return len(t) > 1 and t[0] == '"' and t[-1] == '"'


def _title(text: str) -> bool:                                                  # detectable_format:title
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", text))


@dataclass(frozen=True)
class InstructionType:
    """One verifiable instruction: its IFEval id, what the prompt says, and its checker."""

    id: str
    describe: Callable[..., str]
    check: Callable[..., bool]


TYPES: dict[str, InstructionType] = {t.id: t for t in (
    InstructionType("keywords:existence", lambda keywords: ("Use the word " if len(keywords) == 1 else "Use the words ")
                    + " and ".join(f'"{k}"' for k in keywords) + " in your answer.", _keywords),
    InstructionType("keywords:forbidden_words", lambda forbidden_words: ("Do not use the word "
                    if len(forbidden_words) == 1 else "Do not use the words ")
                    + " or ".join(f'"{w}"' for w in forbidden_words) + ".", _forbidden),
    InstructionType("punctuation:no_comma", lambda: "Do not use any commas.", _no_comma),
    InstructionType("change_case:english_lowercase", lambda: "Write your whole answer in lowercase letters.",
                    _lowercase),
    InstructionType("change_case:english_capital", lambda: "Write your whole answer in capital letters.", _capital),
    InstructionType("length_constraints:number_sentences", lambda num_sentences, relation:
                    f"Answer in {relation} {num_sentences} sentence{'s' if num_sentences != 1 else ''}.", _sentences),
    InstructionType("length_constraints:number_words", lambda num_words, relation:
                    f"Answer in {relation} {num_words} words.", _words),
    InstructionType("detectable_format:number_bullet_lists", lambda num_bullets:
                    f"Answer as a markdown list of exactly {num_bullets} bullet points (lines starting with *).",
                    _bullet_count),
    InstructionType("detectable_format:json_format", lambda: "Give your answer as JSON.", _json_format),
    InstructionType("json_keys", lambda keys: "Give your answer as a JSON object with the keys "
                    + ", ".join(f'"{k}"' for k in keys) + ".", _json_keys),
    InstructionType("startend:end_checker", lambda end_phrase: f'End your answer with the phrase "{end_phrase}"',
                    _end),
    InstructionType("startend:quotation", lambda: "Wrap your whole answer in double quotation marks.", _quotation),
    InstructionType("detectable_format:title", lambda: "Give your answer a title in double angular brackets, "
                    "such as <<shapes>>.", _title),
)}


def describe(instruction_id: str, kwargs: Mapping | None = None) -> str:
    """The sentence a prompt adds for this instruction."""
    return _type(instruction_id).describe(**(kwargs or {}))


def _quoted(text: str) -> list[str]:
    return re.findall(r'"([^"]*)"', text)


# The inverse of ``describe``: a pattern of each sentence (case-insensitive, anchored at the end of a prompt) and the
# keyword arguments read back from its match.
_PARSERS: dict[str, tuple[re.Pattern, Callable[[re.Match], dict]]] = {i: (re.compile(p + r"\s*$", re.IGNORECASE), f)
                                                                       for i, p, f in (
    ("keywords:existence", r'use the words? ("[^"]*"(?: and "[^"]*")*) in your answer\.',
     lambda m: {"keywords": _quoted(m.group(1))}),
    ("keywords:forbidden_words", r'do not use the words? ("[^"]*"(?: or "[^"]*")*)\.',
     lambda m: {"forbidden_words": _quoted(m.group(1))}),
    ("punctuation:no_comma", r"do not use any commas\.", lambda m: {}),
    ("change_case:english_lowercase", r"write your whole answer in lowercase letters\.", lambda m: {}),
    ("change_case:english_capital", r"write your whole answer in capital letters\.", lambda m: {}),
    ("length_constraints:number_sentences", r"answer in (less than|at least) (\d+) sentences?\.",
     lambda m: {"num_sentences": int(m.group(2)), "relation": m.group(1).lower()}),
    ("length_constraints:number_words", r"answer in (less than|at least) (\d+) words\.",
     lambda m: {"num_words": int(m.group(2)), "relation": m.group(1).lower()}),
    ("detectable_format:number_bullet_lists",
     r"answer as a markdown list of exactly (\d+) bullet points \(lines starting with \*\)\.",
     lambda m: {"num_bullets": int(m.group(1))}),
    ("detectable_format:json_format", r"give your answer as json\.", lambda m: {}),
    ("json_keys", r'give your answer as a json object with the keys ("[^"]*"(?:, "[^"]*")*)\.',
     lambda m: {"keys": _quoted(m.group(1))}),
    ("startend:end_checker", r'end your answer with the phrase "([^"]+)"', lambda m: {"end_phrase": m.group(1)}),
    ("startend:quotation", r"wrap your whole answer in double quotation marks\.", lambda m: {}),
    ("detectable_format:title", r"give your answer a title in double angular brackets, such as <<shapes>>\.",
     lambda m: {}),
)}


def split_constraints(text: str) -> tuple[str, list[tuple[str, dict]]]:
    """``(question, instructions)``: the constraint sentences :func:`describe` wrote at the end of a prompt, read
    back in the order they were written, and the question before them (``instructions`` empty when there are
    none)."""
    head, found = " ".join(str(text).split()), []
    while True:
        for iid, (pattern, kwargs) in _PARSERS.items():
            m = pattern.search(head)
            if m and (m.start() == 0 or head[m.start() - 1] == " "):
                found.append((iid, kwargs(m)))
                head = head[: m.start()].rstrip()
                break
        else:
            return head, found[::-1]


def freeze(instructions: Sequence[tuple[str, Mapping | None]]) -> tuple:
    """Instructions as a hashable tuple ``((id, sorted kwargs items), ...)``, lists as tuples."""
    return tuple((i, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (kw or {}).items())))
                 for i, kw in instructions)


def thaw(frozen: Sequence[tuple[str, Sequence]]) -> list[tuple[str, dict]]:
    """The inverse of :func:`freeze`."""
    return [(i, {k: list(v) if isinstance(v, tuple) else v for k, v in kw}) for i, kw in frozen]


def _type(instruction_id: str) -> InstructionType:
    if instruction_id not in TYPES:
        raise KeyError(f"instruction {instruction_id!r} is not one of {sorted(TYPES)}")
    return TYPES[instruction_id]


def follows(instruction_id: str, kwargs: Mapping | None, response: str) -> bool:
    """IFEval's strict check: the response as it is; an empty response follows nothing."""
    return bool(response.strip()) and bool(_type(instruction_id).check(response, **(kwargs or {})))


def loose_variants(response: str) -> list[str]:
    """IFEval's eight loose variants of a response (see the module docs)."""
    lines = response.split("\n")
    first, last, both = ("\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(),
                         "\n".join(lines[1:-1]).strip())
    plain = [response, first, last, both]
    return [response, response.replace("*", ""), first, last, both] + [v.replace("*", "") for v in plain[1:]]


def follows_loose(instruction_id: str, kwargs: Mapping | None, response: str) -> bool:
    return any(follows(instruction_id, kwargs, v) for v in loose_variants(response))


def score(instructions: Sequence[tuple[str, Mapping | None]], response: str) -> dict[str, list[bool]]:
    """Per instruction of one prompt: followed strictly and loosely."""
    return {"strict": [follows(i, k, response) for i, k in instructions],
            "loose": [follows_loose(i, k, response) for i, k in instructions]}


def accuracies(scored: Sequence[Mapping[str, Sequence[bool]]]) -> dict[str, float]:
    """IFEval's four numbers over prompts: prompt-level and instruction-level accuracy, strict and loose."""
    out = {}
    for mode in ("strict", "loose"):
        per = [list(s[mode]) for s in scored]
        flat = [x for p in per for x in p]
        out[f"prompt_{mode}"] = sum(all(p) for p in per) / len(per) if per else float("nan")
        out[f"instruction_{mode}"] = sum(flat) / len(flat) if flat else float("nan")
    return out


def content(response: str) -> str:
    """The response with its format taken off — quotes, a ``<<title>>``, code fences and JSON (its values, in
    order), bullet markers (items joined by commas) — so a verifier can read what it says. An end phrase is not
    removed here: pass the instruction's phrase to :func:`without_end`."""
    text = response.strip()
    obj = _json(text)
    if isinstance(obj, dict):
        vals = [v if isinstance(v, str) else ", ".join(map(str, v)) if isinstance(v, list) else str(v)
                for v in obj.values()]
        return ", ".join(vals)
    text = re.sub(r"<<[^\n]*>>", "", text).strip()
    items = [re.sub(r"^\s*[\*-]\s*", "", b).strip() for b in _bullets(text)]
    if items:
        return ", ".join(items)
    if len(text) > 1 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1].strip()
    return text


def content_of(instructions: Sequence[tuple[str, Mapping | None]], response: str) -> str:
    """What a response to a prompt with these ``instructions`` says, its format taken off (:func:`content`) and the
    end phrase an ``startend:end_checker`` asked for removed."""
    text = response
    for i, kw in instructions:
        if i == "startend:end_checker":
            text = without_end(text, (kw or {})["end_phrase"])
    return content(text)


def without_end(response: str, end_phrase: str) -> str:
    """The response without a trailing ``end_phrase`` (case-insensitive), as :func:`_end` would find it."""
    t = response.strip().strip('"')
    if t.lower().endswith(end_phrase.strip().lower()):
        t = t[: len(t) - len(end_phrase.strip())]
    return t.strip()


# ---------------------------------------------------------------------------- constraints on answers about an image

# The types a model may train on and the types kept out of training, so that a table shows generalisation to
# constraints never seen (the shapes world's split; IFEval itself has no such split).
SEEN = ("punctuation:no_comma", "change_case:english_lowercase", "startend:quotation",
        "detectable_format:number_bullet_lists", "json_keys", "startend:end_checker", "keywords:existence")
HELD_OUT = ("change_case:english_capital", "detectable_format:title", "keywords:forbidden_words",
            "length_constraints:number_sentences", "length_constraints:number_words")
END_PHRASES = ("That is all.", "Thank you.")
KEYWORDS = ("picture", "shapes")
FORBIDDEN = ("there", "image", "very", "really")


def items(answer: str) -> list[str]:
    """The items of an answer a bullet list would hold: its comma- or "and"-separated parts."""
    parts = [p.strip(" .") for p in answer.replace(" and ", ", ").split(",")]
    return [p for p in parts if p]


def draw_kwargs(instruction_id: str, reference: str, rng) -> dict:
    """Keyword arguments of one instruction for a question whose reference answer is ``reference``, drawn with the
    numpy generator ``rng`` so that the reference, formatted (:func:`ideal_response`), can follow them."""
    words = count_words(reference)
    sentences = max(1, count_sentences(reference))
    if instruction_id == "keywords:existence":
        return {"keywords": [KEYWORDS[int(rng.integers(len(KEYWORDS)))]]}
    if instruction_id == "keywords:forbidden_words":
        pool = [w for w in FORBIDDEN if not re.search(r"\b" + w + r"\b", reference, flags=re.IGNORECASE)]
        return {"forbidden_words": [pool[int(rng.integers(len(pool)))]]}
    if instruction_id == "length_constraints:number_sentences":
        return ({"num_sentences": sentences + 1, "relation": "less than"} if rng.random() < 0.5
                else {"num_sentences": sentences, "relation": "at least"})
    if instruction_id == "length_constraints:number_words":
        return ({"num_words": words + int(rng.integers(2, 6)), "relation": "less than"} if rng.random() < 0.5
                else {"num_words": max(1, words - int(rng.integers(0, 2))), "relation": "at least"})
    if instruction_id == "detectable_format:number_bullet_lists":
        return {"num_bullets": len(items(reference))}
    if instruction_id == "json_keys":
        return {"keys": ["answer"]}
    if instruction_id == "startend:end_checker":
        return {"end_phrase": END_PHRASES[int(rng.integers(len(END_PHRASES)))]}
    _type(instruction_id)
    return {}


def ideal_response(reference: str, instructions: Sequence[tuple[str, Mapping | None]]) -> str:
    """``reference`` formatted to follow ``instructions``, in a fixed order: wording (no comma, keywords), structure
    (bullets, JSON, title), the end phrase, quotes, case."""
    ids = {i: (kw or {}) for i, kw in instructions}
    ans = reference.strip()
    if "punctuation:no_comma" in ids:
        ans = ans.replace(", ", " and ").replace(",", " and")
    if "keywords:existence" in ids:
        ans = ans.rstrip(".") + " in the " + " and ".join(ids["keywords:existence"]["keywords"]) + "."
    if "detectable_format:number_bullet_lists" in ids:
        ans = "\n".join(f"* {x}" for x in items(ans))
    if "json_keys" in ids:
        ans = json.dumps({k: ans for k in ids["json_keys"]["keys"]})
    elif "detectable_format:json_format" in ids:
        ans = json.dumps({"answer": ans})
    if "detectable_format:title" in ids:
        ans = f"<<Shapes>>\n{ans}"
    if "startend:end_checker" in ids:
        ans = f"{ans} {ids['startend:end_checker']['end_phrase']}"
    if "startend:quotation" in ids:
        ans = f'"{ans}"'
    if "change_case:english_lowercase" in ids:
        ans = ans.lower()
    if "change_case:english_capital" in ids:
        ans = ans.upper()
    return ans
