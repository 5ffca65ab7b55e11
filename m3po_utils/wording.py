"""The wording of generated sentences: every share, count, difference and "best" a notebook writes goes through here.

A generated sentence is a claim, so its words must be true of the number behind them:

* a share prints as a percentage that never rounds to certainty — 0.9989 is "more than 99 %", not "100 %";
  only exactly 1 (or 0) prints "100 %" ("0 %");
* a difference carries its direction ("higher", "lower") and, with a metric whose better side is known, whether
  that is better or worse; with an interval, whether the interval excludes 0 ("within the noise" when it does not);
* "best" is said of one winner only; a tie names every tied entry and says "tie".

``tests/test_wording.py`` plants the edge cases (0.9989, 0.0004, exact 0 and 1, ties, an interval touching 0).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def share(x: Any, digits: int = 0) -> str:
    """``x`` in [0, 1] as a percentage with ``digits`` decimals that never claims what the value is not: a value
    below 1 that would round to 100 prints "more than 99 %" (more than 99.9 % with one decimal), a value above 0
    that would round to 0 prints "less than 1 %"; "n/a" for a missing value."""
    v = _num(x)
    if v is None:
        return "n/a"
    p = 100 * v
    step = 10.0 ** -digits
    text = f"{p:.{digits}f}"
    if v < 1 and float(text) >= 100:
        return f"more than {100 - step:.{digits}f} %"
    if v > 0 and float(text) <= 0:
        return f"less than {step:.{digits}f} %"
    if text.startswith("-") and float(text) == 0:          # -0 from a tiny negative value
        text = text[1:]
    return f"{text} %"


def direction(delta: Any, higher_is_better: bool | None = None, tol: float = 0.0) -> str:
    """The direction of a difference in words: "higher" / "lower" / "no different" (|delta| <= tol), and with
    ``higher_is_better`` known, "(better)" or "(worse)" after it."""
    v = _num(delta)
    if v is None:
        return "n/a"
    if abs(v) <= tol:
        return "no different"
    word = "higher" if v > 0 else "lower"
    if higher_is_better is None:
        return word
    return f"{word} ({'better' if (v > 0) == higher_is_better else 'worse'})"


def excludes_zero(lo: Any, hi: Any) -> bool:
    """Whether the interval [lo, hi] lies wholly on one side of 0 (an interval that touches 0 does not)."""
    a, b = _num(lo), _num(hi)
    return a is not None and b is not None and (a > 0 or b < 0)


def interval(delta: Any, lo: Any, hi: Any, digits: int = 3, scale: float = 1.0) -> str:
    """"+0.035 [+0.010, +0.060]" — the signed value and its interval."""
    vals = [_num(x) for x in (delta, lo, hi)]
    if any(v is None for v in vals):
        return "n/a"
    d, a, b = (v * scale for v in vals)
    return f"{d:+.{digits}f} [{a:+.{digits}f}, {b:+.{digits}f}]"


def difference(delta: Any, lo: Any, hi: Any, higher_is_better: bool | None = None, digits: int = 3,
               scale: float = 1.0) -> str:
    """A difference with its interval and what it means: "+0.035 [+0.010, +0.060], higher (worse)" when the
    interval excludes 0, "… , within the noise" when it does not."""
    text = interval(delta, lo, hi, digits, scale)
    if text == "n/a":
        return text
    if not excludes_zero(lo, hi):
        return f"{text}, within the noise"
    return f"{text}, {direction(delta, higher_is_better)}"


def best(scores: Mapping[str, Any], higher_is_better: bool = True, tol: float = 0.0) -> tuple[list[str], str]:
    """The winners of ``scores`` (every entry within ``tol`` of the best value) and a phrase that is true of them:
    "x is best" for one, "x and y tie" for several, "" when nothing has a value."""
    vals = {k: v for k, v in ((k, _num(v)) for k, v in scores.items()) if v is not None}
    if not vals:
        return [], ""
    top = max(vals.values()) if higher_is_better else min(vals.values())
    winners = [k for k, v in vals.items() if abs(v - top) <= tol]
    if len(winners) == 1:
        return winners, f"{winners[0]} is best"
    return winners, f"{', '.join(winners[:-1])} and {winners[-1]} tie"


def compare_shares(a: Any, b: Any, tol: float = 0.02) -> str:
    """How share ``a`` stands to share ``b`` in words, with ``tol`` (absolute) as "about the same":
    "more than" / "fewer than" / "about as many as"."""
    x, y = _num(a), _num(b)
    if x is None or y is None:
        return "n/a"
    if abs(x - y) <= tol:
        return "about as many as"
    return "more than" if x > y else "fewer than"
