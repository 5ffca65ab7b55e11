"""The shapes world's ground-truth verifier: which objects a response mentions, and how right it is."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from m3po_utils.config import WorldConfig
from m3po_utils.shapes import ifeval as I
from m3po_utils.shapes.instructions import (
    DIALOGUE,
    IFEVAL,
    ORDINALS,
    START_PHRASE,
    _yes_no_truth,
    named_shapes,
    parse_instruction,
    question_text,
    referred_shape,
)
from m3po_utils.shapes.instructions import YES_NO_FAMILIES as YES_NO
from m3po_utils.shapes.scenes import Scene, position_name


@dataclass(frozen=True)
class Mention:
    """A (non-negated) shape mentioned in a text, with the colour / position attached to it, if any."""

    shape: str
    color: str | None
    position: str | None


_NEGATIONS = frozenset({"no", "not", "without", "nor", "neither", "never"})


_FILLERS = frozenset({"a", "an", "the", "any", "single", "other", "small", "big", "large", "little"})


_SENTENCE_END = frozenset({".", "!", "?", ";"})


_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}


_POSITION_ALIASES_3 = {"centre": "center", "middle": "center", "upper left": "top left",
                       "upper right": "top right", "lower left": "bottom left", "lower right": "bottom right"}


def _tokens(text: str) -> list[str]:
    """Lowercased words and punctuation marks; ``n't`` becomes ``not`` and hyphens split words."""
    text = str(text or "").lower().replace("\u2019", "'").replace("n't", " not").replace("-", " ")
    return re.findall(r"[a-z0-9]+|[.,;:!?]", text)


def _phrase_table(cfg: WorldConfig) -> list[tuple[tuple[str, ...], str, str]]:
    """(tokens, kind, canonical) for shapes (incl. plurals), colours and positions, longest first."""
    table: list[tuple[tuple[str, ...], str, str]] = []
    for s in cfg.shapes:
        toks = tuple(_tokens(s))
        for suffix in ("", "s", "es"):
            table.append((toks[:-1] + (toks[-1] + suffix,), "shape", s))
    for c in cfg.colors:
        table.append((tuple(_tokens(c)), "color", c))
    names = {position_name(i, cfg.grid): position_name(i, cfg.grid) for i in range(cfg.grid * cfg.grid)}
    if cfg.grid == 3:
        names.update(_POSITION_ALIASES_3)
    for alias, canonical in names.items():
        table.append((tuple(_tokens(alias)), "position", canonical))
    seen: set[tuple[str, ...]] = set()
    unique = []
    for entry in table:  # first kind wins for a phrase that is both (e.g. a colour named like a shape)
        if entry[0] not in seen:
            seen.add(entry[0])
            unique.append(entry)
    return sorted(unique, key=lambda e: -len(e[0]))


_TABLES: dict[WorldConfig, list] = {}


def _scan(text: str, cfg: WorldConfig) -> tuple[list[str], list[tuple[int, int, str, str]]]:
    """Tokens and the matched items ``(start, end, kind, canonical)`` in order, longest phrase first."""
    table = _TABLES.get(cfg)
    if table is None:
        table = _TABLES[cfg] = _phrase_table(cfg)
    toks = _tokens(text)
    items = []
    i = 0
    while i < len(toks):
        for phrase, kind, canonical in table:
            if tuple(toks[i:i + len(phrase)]) == phrase:
                items.append((i, i + len(phrase), kind, canonical))
                i += len(phrase)
                break
        else:
            i += 1
    return toks, items


def mentioned_objects(text: str, cfg: WorldConfig) -> list[Mention]:
    """Shapes a text asserts, in order, with their colour and position; negated mentions are dropped.

    A shape word (singular or plural) is a mention. Its colour is the nearest colour word among the 2 words
    before it (not across another shape); its position is the first position name after it, before the next
    shape word (longest names first: "top left" before "top"). "no star", "not a star", "there isn't any
    star", "without a star" and "no circles or stars" are negated.
    """
    toks, items = _scan(text, cfg)
    shape_items = [it for it in items if it[2] == "shape"]
    kind_at = {it[0]: it for it in items}
    negated_end: dict[int, bool] = {}
    out: list[Mention] = []
    for k, (start, end, _, shape) in enumerate(shape_items):
        prev_end = shape_items[k - 1][1] if k else 0
        next_start = shape_items[k + 1][0] if k + 1 < len(shape_items) else len(toks)
        # negation: skip colour words and fillers backwards, then look at the word reached
        j = start - 1
        while j >= 0 and (toks[j] in _FILLERS or (j in kind_at and kind_at[j][2] == "color")):
            j -= 1
        negated = j >= 0 and (toks[j] in _NEGATIONS or (toks[j] == "or" and negated_end.get(j, False)))
        negated_end[end] = negated
        if negated:
            continue
        color = None
        for j in range(start - 1, max(start - 3, prev_end - 1), -1):
            if toks[j] in _SENTENCE_END or toks[j] == ",":
                break
            if j in kind_at and kind_at[j][2] == "color":
                color = kind_at[j][3]
                break
        position = next((it[3] for it in items if it[2] == "position" and end <= it[0] < next_start), None)
        out.append(Mention(shape, color, position))
    return out


def object_mentions(text: str, cfg: WorldConfig) -> list[str]:
    """Distinct shapes a text asserts (non-negated), in order of first mention (for CHAIR)."""
    return list(dict.fromkeys(m.shape for m in mentioned_objects(text, cfg)))


def yes_no(text: str) -> str | None:
    """``"no"`` if the first sentence has the word no/not (n't counts), else ``"yes"`` if it has yes, else None."""
    for sentence in re.split(r"[.!?\n]+", str(text or "")):
        words = re.findall(r"[a-z]+", sentence.lower().replace("\u2019", "'").replace("n't", " not"))
        if not words:
            continue
        if "no" in words or "not" in words:
            return "no"
        if "yes" in words:
            return "yes"
        return None
    return None


def colors_in(text: str, cfg: WorldConfig) -> list[str]:
    return list(dict.fromkeys(it[3] for it in _scan(text, cfg)[1] if it[2] == "color"))


def positions_in(text: str, cfg: WorldConfig) -> list[str]:
    return list(dict.fromkeys(it[3] for it in _scan(text, cfg)[1] if it[2] == "position"))


def numbers_in(text: str) -> list[int]:
    out = []
    for tok in _tokens(text):
        if tok.isdigit():
            out.append(int(tok))
        elif tok in _NUMBER_WORDS:
            out.append(_NUMBER_WORDS[tok])
    return list(dict.fromkeys(out))


def denies(text: str) -> bool:
    return any(t in {"no", "not", "none", "nothing", "neither"} for t in _tokens(text))


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9]+(?:['\u2019-][A-Za-z0-9]+)*", str(text or ""))


@dataclass(frozen=True)
class Verdict:
    """A verifier's score in [0, 1] with what is wrong, one line for a person and tuples for code."""

    score: float
    correct: bool
    family: str
    explanation: str
    hallucinated: tuple[str, ...] = ()
    missed: tuple[str, ...] = ()
    wrong_attributes: tuple[str, ...] = ()
    format_violations: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


def _label(color: str | None, shape: str) -> str:
    return f"{color} {shape}" if color else shape


def _harmonic(p: float, r: float) -> float:
    return 0.0 if p <= 0 or r <= 0 else 2 * p * r / (p + r)


@dataclass
class _Content:
    score: float
    hallucinated: tuple[str, ...] = ()
    missed: tuple[str, ...] = ()
    wrong: tuple[str, ...] = ()
    note: str = ""


def _describe_content(scene: Scene, response: str, cfg: WorldConfig) -> _Content:
    mentions = mentioned_objects(response, cfg)
    truth = {o.shape: o for o in scene.objects}
    best = dict.fromkeys(truth, 0)  # credit in thirds
    total = 0
    hallucinated: list[str] = []
    wrong: list[str] = []
    for m in mentions:
        obj = truth.get(m.shape)
        if obj is None:
            hallucinated.append(_label(m.color, m.shape))
            continue
        pos = position_name(obj.cell, cfg.grid)
        credit = 1 + (m.color == obj.color) + (m.position == pos)
        total += credit
        best[m.shape] = max(best[m.shape], credit)
        if m.color != obj.color:
            wrong.append(f"{m.shape}: color {m.color or 'not given'}, truth {obj.color}")
        if m.position != pos:
            wrong.append(f"{m.shape}: position {m.position or 'not given'}, truth {pos}")
    precision = total / (3 * len(mentions)) if mentions else 0.0
    recall = sum(best.values()) / (3 * len(truth))
    score = _harmonic(precision, recall)
    missed = tuple(_label(o.color, o.shape) for o in scene.objects if best[o.shape] == 0)
    hall = tuple(dict.fromkeys(hallucinated))
    wrong_t = tuple(dict.fromkeys(wrong))
    if score == 1.0:
        note = f"all {len(truth)} objects described correctly"
    elif not mentions:
        note = "no shape mentioned"
    else:
        bits = [f"precision {precision:.2f}, recall {recall:.2f}"]
        if hall:
            bits.append("hallucinated " + ", ".join(hall))
        if missed:
            bits.append("missed " + ", ".join(missed))
        if wrong_t:
            bits.append("wrong " + "; ".join(wrong_t))
        note = "; ".join(bits)
    return _Content(score, hall, missed, wrong_t, note)


def _single_attribute(scene: Scene, shape: str, response: str, cfg: WorldConfig, attr: str) -> _Content:
    """Colour or position question: exactly one candidate, and the right one (or a denial if absent)."""
    found = colors_in(response, cfg) if attr == "color" else positions_in(response, cfg)
    obj = scene.obj(shape)
    if obj is None:
        if found:
            return _Content(0.0, hallucinated=(shape,),
                            note=f"there is no {shape}, but the answer gives {attr} {', '.join(found)}")
        if denies(response):
            return _Content(1.0, note=f"correctly says there is no {shape}")
        return _Content(0.0, hallucinated=(shape,), note=f"there is no {shape}; the answer does not say so")
    truth = obj.color if attr == "color" else position_name(obj.cell, cfg.grid)
    if not found:
        return _Content(0.0, wrong=(f"{shape}: {attr} not given, truth {truth}",),
                        note=f"no {attr} in the answer; truth {truth}")
    if len(found) > 1:
        return _Content(0.0, wrong=(f"{shape}: {attr} ambiguous ({', '.join(found)}), truth {truth}",),
                        note=f"several {attr}s in the answer ({', '.join(found)}); truth {truth}")
    if found[0] != truth:
        return _Content(0.0, wrong=(f"{shape}: {attr} {found[0]}, truth {truth}",),
                        note=f"wrong {attr}: {found[0]}, truth {truth}")
    return _Content(1.0, note=f"{attr} {truth} is right")


def _justification(family: str, scene: Scene, params: dict, response: str, cfg: WorldConfig) -> _Content:
    """The claims after a yes/no answer's leading word: share of them that are true (0 when there is none).

    Existence: every asserted shape must be in the scene, with its colour / position right where given, and a
    "yes" must assert the asked shape. Colour / position / count: the one colour, position or number given
    must be the truth ("No, the circle is blue."). A bare "Yes" / "No" claims nothing and scores 0 here.
    """
    shape = params.get("shape")
    if family == "existence":
        mentions = mentioned_objects(response, cfg)
        if not mentions:
            return _Content(0.0, note="no claim after the yes/no")
        good, hall, wrong = 0, [], []
        for m in mentions:
            obj = scene.obj(m.shape)
            if obj is None:
                hall.append(_label(m.color, m.shape))
                continue
            bad = [f"{m.shape}: {a} {v}, truth {t}" for a, v, t in
                   (("color", m.color, obj.color), ("position", m.position, position_name(obj.cell, cfg.grid)))
                   if v is not None and v != t]
            wrong += bad
            good += not bad
        score = good / len(mentions)
        if scene.has(shape) and shape not in {m.shape for m in mentions}:
            score = min(score, 0.5)
            wrong.append(f"{shape}: present but not described")
        note = "all claims true" if score == 1.0 else "; ".join(
            (["hallucinated " + ", ".join(hall)] if hall else []) + wrong)
        return _Content(score, tuple(hall), (), tuple(wrong), note)
    if family == "yn_count":
        found, truth = numbers_in(response), len(scene.objects)
        what = "count"
    else:
        obj = scene.obj(shape)
        found = colors_in(response, cfg) if family == "yn_color" else positions_in(response, cfg)
        what = "color" if family == "yn_color" else "position"
        if obj is None:
            ok = not found and denies(response)
            return _Content(float(ok), hallucinated=() if ok else (shape,),
                            note=f"says there is no {shape}" if ok else f"there is no {shape}")
        truth = obj.color if family == "yn_color" else position_name(obj.cell, cfg.grid)
    if not found:
        return _Content(0.0, note=f"no {what} given; truth {truth}")
    if found == [truth]:
        return _Content(1.0, note=f"{what} {truth} is right")
    given = ", ".join(map(str, found))
    return _Content(0.0, wrong=(f"{shape or 'scene'}: {what} {given}, truth {truth}",),
                    note=f"{what} {given}, truth {truth}")


def _shape_set_content(scene: Scene, response: str, cfg: WorldConfig) -> _Content:
    named = set(object_mentions(response, cfg))
    truth = scene.shapes()
    hit = len(named & truth)
    score = 2 * hit / (len(named) + len(truth)) if named else 0.0
    hall = tuple(s for s in cfg.shapes if s in named - truth)
    missed = tuple(o.shape for o in scene.objects if o.shape not in named)
    bits = [f"F1 {score:.2f} of named shapes"]
    if hall:
        bits.append("hallucinated " + ", ".join(hall))
    if missed:
        bits.append("missed " + ", ".join(missed))
    return _Content(score, hall, missed, note="; ".join(bits) if score < 1 else "all shapes named")


def _shape_word(item: str, cfg: WorldConfig) -> bool:
    toks = _tokens(item)
    if toks[:1] == ["and"]:
        toks = toks[1:]
    _, items = _scan(" ".join(toks), cfg)
    return len(items) == 1 and items[0][2] == "shape" and items[0][0] == 0 and items[0][1] == len(toks)


def format_violations(family: str, response: str, params: dict, cfg: WorldConfig) -> list[str]:
    """What ``response`` breaks of a format family's constraint (empty when it follows it); reads no scene."""
    if family == "fmt_one_word":
        n = len(_words(response))
        return [] if n == 1 else [f"expected exactly one word, got {n}"]
    if family == "fmt_list":
        body = response.strip().rstrip(".!").strip()
        if not body:
            return ["empty list"]
        bad = [it.strip() for it in body.split(",") if not _shape_word(it, cfg)]
        return [f"list item {it!r} is not a shape name" for it in bad]
    if family == "fmt_start":
        return [] if response.lstrip().startswith(START_PHRASE) else [f'does not start with "{START_PHRASE}"']
    if family == "fmt_max_words":
        n = len(_words(response))
        return [] if n <= params["n"] else [f"{n} words, limit {params['n']}"]
    return []


def verify(scene: Scene, instruction_text: str, response: str, cfg: WorldConfig,
           verdict_weight: float = 0.5) -> Verdict:
    """Score ``response`` to ``instruction_text`` about ``scene`` against the ground truth (see module docs).

    ``verdict_weight``: the share of a yes/no answer's score its verdict carries (the clause after it carries the
    rest); 0.5 by default, so a right "Yes" with a wrong clause scores 0.5. An assessor that weighs what POPE and MME
    read more heavily uses more. Raises UnknownInstruction for a text that matches no template.
    """
    family, params = parse_instruction(instruction_text, cfg)
    response = "" if response is None else str(response)
    shape = params.get("shape")
    if family == IFEVAL:
        return _verify_constrained(scene, params, response, cfg, verdict_weight)
    if family == DIALOGUE:
        return _verify_follow_up(scene, params, response, cfg)

    if family in YES_NO:
        truth = "yes" if _yes_no_truth(family, scene, params, cfg) else "no"
        said = yes_no(response)
        if said is None:
            return Verdict(0.0, False, family, f"no yes/no answer (truth: {truth})",
                           format_violations=("no yes/no answer",))
        ok = said == truth
        claims = _justification(family, scene, params, response, cfg)
        score = verdict_weight * ok + (1 - verdict_weight) * claims.score
        asked = {"existence": f"there is a {shape}", "yn_count": f"{params.get('n')} shapes",
                 "yn_color": f"{shape} is {params.get('color')}",
                 "yn_position": f"{shape} at the {params.get('position')}"}[family]
        expl = f"answered {said} to '{asked}', truth {truth}; justification: {claims.note}"
        hall = tuple(dict.fromkeys(((shape,) if family == "existence" and said == "yes" and truth == "no" else ())
                                   + claims.hallucinated))
        missed = (shape,) if family == "existence" and said == "no" and truth == "yes" else ()
        wrong = (() if ok or family == "existence" else (f"{asked}: {said}",)) + claims.wrong
        return Verdict(score, ok and claims.score == 1.0, family, expl, hall, missed, wrong)

    if family == "count":
        truth_n = len(scene.objects)
        found = numbers_in(response)
        if len(found) == 1 and found[0] == truth_n:
            return Verdict(1.0, True, family, f"count {truth_n} is right")
        given = ", ".join(map(str, found)) or "not given"
        if not found:
            expl = f"no number in the answer; truth {truth_n}"
        elif len(found) > 1:
            expl = f"several numbers in the answer ({given}); truth {truth_n}"
        else:
            expl = f"wrong count: {given}, truth {truth_n}"
        return Verdict(0.0, False, family, expl, wrong_attributes=(f"count: {given}, truth {truth_n}",))

    if family in ("describe", "fmt_start"):
        content = _describe_content(scene, response, cfg)
    elif family in ("color", "fmt_one_word"):
        content = _single_attribute(scene, shape, response, cfg, "color")
    elif family == "position":
        content = _single_attribute(scene, shape, response, cfg, "position")
    else:  # fmt_list, fmt_max_words
        content = _shape_set_content(scene, response, cfg)

    if not family.startswith("fmt_"):
        ok = content.score == 1.0
        return Verdict(content.score, ok, family, content.note, content.hallucinated, content.missed, content.wrong)

    violations = tuple(format_violations(family, response, params, cfg))
    fmt_ok = not violations
    score = 0.5 * fmt_ok + 0.5 * content.score
    ok = fmt_ok and content.score == 1.0
    expl = f"format {'ok' if fmt_ok else 'violated: ' + '; '.join(violations)}; content: {content.note}"
    return Verdict(score, ok, family, expl, content.hallucinated, content.missed, content.wrong, violations)


def _verify_constrained(scene: Scene, params: dict, response: str, cfg: WorldConfig, verdict_weight: float) -> Verdict:
    """A question with IFEval-style constraints: half the score is the share of constraints followed (IFEval's strict
    check), half the question's own score on the answer with its format taken off (``ifeval.content_of``); right
    when every constraint is followed and the content is right — the project's IFT rule."""
    instructions = I.thaw(params["constraints"])
    question = question_text(params["content_family"], **{k: params[k] for k in ("shape", "n", "color", "position")
                                                          if k in params})
    inner = verify(scene, question, I.content_of(instructions, response), cfg, verdict_weight)
    followed = I.score(instructions, response)["strict"]
    broken = tuple(f"does not follow {i}" for (i, _), ok in zip(instructions, followed, strict=True) if not ok)
    score = 0.5 * sum(followed) / len(followed) + 0.5 * inner.score
    fmt = "format ok" if not broken else "format violated: " + "; ".join(broken)
    return Verdict(score, not broken and inner.correct, IFEVAL, f"{fmt}; content: {inner.explanation}",
                   inner.hallucinated, inner.missed, inner.wrong_attributes, broken + inner.format_violations)


def follow_up_check(scene: Scene, params: dict, response: str, cfg: WorldConfig) -> dict:
    """How a follow-up answer (a ``dialogue`` instruction's last turn) stands against the image and the history.

    ``shape``: the shape the question refers to (the ``ordinal``-th the first answer named); ``made_up``: the image
    does not have it (the first answer hallucinated it). ``history_ok``: the answer is about that shape — the first
    shape it names is that one, or it names none. A colour or position the answer gives belongs to that shape unless
    the answer attaches it to another one ("There is no star, but there is a red circle." gives the star no colour).
    ``content``: right when it gives the shape's true colour or position and no other, or, for a made-up shape, says
    it is not there and gives it none. ``image_ok``: it says nothing false about the image — no absent shape
    asserted, no present one denied, no wrong colour or position for a shape it names or for the shape asked. ``carried``: the first answer
    made the shape up and this one, about that shape, goes along with it (does not deny it, or gives it an
    attribute). ``right``: about the shape asked and its content right — the verdict.
    """
    shape = referred_shape(params, cfg)
    attr = params["attr"]
    named = named_shapes(response, cfg)
    history_ok = not named or named[0] == shape
    obj = scene.obj(shape)
    made_up = obj is None
    asserted = mentioned_objects(response, cfg)
    # a shape the answer names only to deny it ("There is no heart") must be absent
    asserted_ok = all(scene.obj(s) is None for s in named if s not in {m.shape for m in asserted})
    taken = set()
    for m in asserted:
        if m.shape != shape:
            taken.add(m.color if attr == "color" else m.position)
        o = scene.obj(m.shape)
        if o is None or (m.color and m.color != o.color) or (m.position and m.position != position_name(o.cell, cfg.grid)):
            asserted_ok = False
    given = colors_in(response, cfg) if attr == "color" else positions_in(response, cfg)
    found = [x for x in given if x not in taken] if history_ok else []
    if made_up:
        ok = denies(response) and not found
        note = (f"correctly says there is no {shape}" if ok else
                f"there is no {shape}, but the answer gives {attr} {', '.join(found)}" if found else
                f"there is no {shape}; the answer does not say so")
        content = _Content(float(ok), hallucinated=() if ok else (shape,), note=note)
    else:
        truth = obj.color if attr == "color" else position_name(obj.cell, cfg.grid)
        ok = found == [truth]
        note = (f"{attr} {truth} is right" if ok else f"{attr} {', '.join(found) or 'not given'}, truth {truth}")
        content = _Content(float(ok), wrong=() if ok else (f"{shape}: {note}",), note=note)
    image_ok = asserted_ok and (not found or (not made_up and ok))
    return {"shape": shape, "made_up": made_up, "history_ok": history_ok, "image_ok": image_ok,
            "carried": made_up and history_ok and not ok, "right": history_ok and ok, "content": content}


def _verify_follow_up(scene: Scene, params: dict, response: str, cfg: WorldConfig) -> Verdict:
    """A follow-up is right when it is about the shape the history named (``history_ok``) and answers for that shape
    what the image shows — its colour or position, or that it is not there."""
    c = follow_up_check(scene, params, response, cfg)
    content = c["content"]
    where = f"the {ORDINALS[int(params['ordinal']) - 1]} shape the first answer named ({c['shape']})"
    if not c["history_ok"]:
        other = named_shapes(response, cfg)[0]
        return Verdict(0.0, False, DIALOGUE, f"answers about the {other}, not {where}", content.hallucinated,
                       content.missed, (f"answers about {other}, not {c['shape']}",) + content.wrong)
    return Verdict(content.score, c["right"], DIALOGUE, f"{where}: {content.note}", content.hallucinated,
                   content.missed, content.wrong)
