"""The wording of generated claims: shares that never round to certainty, differences with their direction and
whether their interval excludes 0, and "best" never said of a tie."""

import math

import pytest

from m3po_utils import wording as W


@pytest.mark.parametrize("x, text", [
    (1.0, "100 %"), (0.9989, "more than 99 %"), (0.995, "more than 99 %"), (0.994, "99 %"), (0.0, "0 %"),
    (0.0004, "less than 1 %"), (0.005, "less than 1 %"), (0.5, "50 %"), (None, "n/a"), (math.nan, "n/a"),
    ("x", "n/a"), (-1e-9, "0 %"),
])
def test_a_share_never_rounds_to_certainty(x, text):
    assert W.share(x) == text


def test_a_share_with_a_decimal_keeps_its_bounds():
    assert W.share(0.9996, 1) == "more than 99.9 %"
    assert W.share(0.9994, 1) == "99.9 %"
    assert W.share(0.00049, 1) == "less than 0.1 %"
    assert W.share(0.985, 1) == "98.5 %"


def test_a_difference_says_its_direction_and_whether_it_is_noise():
    # chair_i: lower is better, so a positive difference whose interval excludes 0 is worse
    assert W.difference(0.035, 0.010, 0.060, higher_is_better=False) == "+0.035 [+0.010, +0.060], higher (worse)"
    assert W.difference(-0.02, -0.03, -0.01, higher_is_better=True) == "-0.020 [-0.030, -0.010], lower (worse)"
    assert W.difference(0.02, 0.01, 0.03) == "+0.020 [+0.010, +0.030], higher"
    # an interval that touches or straddles 0 is within the noise, whatever the sign of the point value
    assert W.difference(0.02, 0.0, 0.04, True).endswith("within the noise")
    assert W.difference(-0.01, -0.03, 0.01, True).endswith("within the noise")
    assert W.difference(13.0, 9.0, 17.0, True, digits=1) == "+13.0 [+9.0, +17.0], higher (better)"
    assert W.difference(0.13, 0.09, 0.17, True, digits=1, scale=100) == "+13.0 [+9.0, +17.0], higher (better)"
    assert W.difference(None, 0, 1) == "n/a"


def test_direction_words():
    assert W.direction(0.0) == "no different"
    assert W.direction(0.001, tol=0.01) == "no different"
    assert W.direction(-0.5) == "lower"
    assert W.direction(0.5, higher_is_better=True) == "higher (better)"
    assert W.direction(0.5, higher_is_better=False) == "higher (worse)"


def test_best_is_never_said_of_a_tie():
    assert W.best({"a": 0.7, "b": 0.6}) == (["a"], "a is best")
    assert W.best({"a": 0.7, "b": 0.7, "c": 0.1}) == (["a", "b"], "a and b tie")
    assert W.best({"a": 0.7, "b": 0.69, "c": 0.5}, tol=0.02) == (["a", "b"], "a and b tie")
    assert W.best({"a": 0.2, "b": 0.1}, higher_is_better=False) == (["b"], "b is best")
    assert W.best({"a": None}) == ([], "")
    assert W.best({"a": 1, "b": 1, "c": 1})[1] == "a, b and c tie"


def test_shares_compared_in_words_with_a_tolerance():
    assert W.compare_shares(0.393, 0.405) == "about as many as"
    assert W.compare_shares(0.89, 0.62) == "more than"
    assert W.compare_shares(0.5, 0.6) == "fewer than"


def test_no_share_is_formatted_as_a_percentage_outside_wording():
    """The class guard: a share printed with a format spec ("{x:.0%}", "{100 * x:.1f} %") can round 0.9989 to
    "100 %"; every share of the package, its tools and its notebooks goes through wording.share instead."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"\.\d%\}|100 \* [^}]*:\.\d+f\} ?%")
    files = [p for d in ("m3po_utils", "tools", "benchmarks") for p in (root / d).rglob("*.py")]
    files += sorted((root / "notebooks").glob("*.ipynb"))
    bad = [f"{p.relative_to(root)}:{i}" for p in files if p.name != "wording.py"
           for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not bad, f"shares formatted outside m3po_utils.wording: {bad}"
