"""Does a run's testbed meet its own bars? The checks behind "can this run tell the methods apart".

A comparison of preference methods means something only if the base model leaves them something to fix and the
evaluation can see a difference of the size that matters. The bars below are the shapes world's targets for a base
model under the default preset (docs/findings.md, "Where the testbed stands"), set after the paper's setting: LLaVA-1.5-7B
answers POPE at 0.85-0.87, adversarial negatives are its hardest, and the paper reports +2.2 POPE F1 points over
vanilla DPO:

1. POPE accuracy in [0.78, 0.90] on every setting, adversarial at least 3 points below random (and the share of
   adversarial false positives that are co-occurrence mates, reported).
2. Every MME-style subtask learnt but imperfect: accuracy in [0.60, 0.90].
3. IFT in [0.30, 0.75], and no instruction-following family's greedy accuracy (the four IFT formats, the
   IFEval-style constraints of the trained types, the two-turn follow-ups) at or below 0.05 or at or above 0.95.
4. Room for self-sampling: pass@N − greedy ≥ 0.15 for every family, and for every family at least 30 % of the
   prompts with a wrong candidate have a confident one.
5. The benchmarks move: the oracle lifts POPE-adversarial F1 by ≥ 3 points and the MME-style total by ≥ 30, with
   intervals above 0.
6. Power: the minimum detectable paired difference of M3PO against every baseline ≤ 1 F1 point and ≤ 10 MME.
7. MAS weights chosen on validation: the preset's CLIP weight is the one notebook 02's validation sweep picks.

:func:`check` reads the results notebooks 00, 02, 03 and 06 record; :func:`check_run` reads them from a run
directory; :func:`calibration_bars` checks bars 1, 2 and 5 on a calibration of a base
(``tools/calibrate_base.py``). Each returns one row per bar: ``met`` is True / False, or None where the run did
not measure it (a hub preset has no verifier, so no headroom or oracle).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m3po_utils import results as R
from m3po_utils import wording
from m3po_utils.scoring import MME_SUBTASKS as _MME
from m3po_utils.scoring import POPE_SETTINGS

MME_SUBTASKS = tuple(_MME)          # existence, count, position, color


@dataclass(frozen=True)
class Bars:
    """The thresholds of the seven bars (F1 as a fraction: 0.03 = 3 points)."""

    pope_range: tuple[float, float] = (0.78, 0.90)
    pope_gap: float = 0.03
    mme_range: tuple[float, float] = (0.60, 0.90)
    ift_range: tuple[float, float] = (0.30, 0.75)
    format_floor: float = 0.05
    format_ceiling: float = 0.95
    headroom: float = 0.15
    confident_wrong: float = 0.30
    oracle_f1: float = 0.03
    oracle_mme: float = 30.0
    mde_f1: float = 0.01
    mde_mme: float = 10.0


BARS = Bars()


def _inside(x: float, lo_hi: tuple[float, float]) -> bool:
    return lo_hi[0] <= x <= lo_hi[1]


def _mean(metrics: Mapping[str, R.Interval], key: str) -> float | None:
    v = metrics.get(key)
    return None if v is None or v.mean is None else float(v.mean)


def _row(bar: str, target: str, measured: str, misses: list[str] | None) -> dict[str, Any]:
    """``misses`` None = not measured; [] = met."""
    return {"bar": bar, "target": target, "measured": measured,
            "met": None if misses is None else not misses, "misses": misses or []}


def _pope(acc: Mapping[str, float | None], share: float | None, bars: Bars) -> dict:
    """``acc``: POPE accuracy per setting; ``share``: adversarial false positives that are co-occurrence mates."""
    target = (f"accuracy in [{bars.pope_range[0]:.2f}, {bars.pope_range[1]:.2f}] per setting, adversarial "
              f"≥ {100 * bars.pope_gap:.0f} points below random")
    if any(acc.get(s) is None for s in POPE_SETTINGS):
        return _row("1 POPE", target, "not measured", None)
    acc = {s: float(acc[s]) for s in POPE_SETTINGS}
    gap = acc["random"] - acc["adversarial"]
    misses = [f"{s} {v:.3f}" for s, v in acc.items() if not _inside(v, bars.pope_range)]
    if gap < bars.pope_gap - 1e-12:
        misses.append(f"gap {100 * gap:.1f} points")
    measured = " / ".join(f"{v:.3f}" for v in acc.values()) + f", gap {100 * gap:.1f} points"
    if share is not None:
        measured += f", {wording.share(share, 1)} of adversarial false positives are mates"
    return _row("1 POPE", target, measured, misses)


def _mme(acc: Mapping[str, float | None], plus: Mapping[str, float | None], bars: Bars) -> dict:
    """``acc`` / ``plus``: the MME-style subtasks' acc and acc+."""
    target = f"acc in [{bars.mme_range[0]:.2f}, {bars.mme_range[1]:.2f}] for each subtask"
    if any(acc.get(s) is None for s in MME_SUBTASKS):
        return _row("2 MME subtasks", target, "not measured", None)
    measured = ", ".join(f"{s} {acc[s]:.2f}" + (f" / {plus[s]:.2f}" if plus.get(s) is not None else "")
                         for s in MME_SUBTASKS) + " (acc / acc+)"
    return _row("2 MME subtasks", target, measured,
                [f"{s} {acc[s]:.3f}" for s in MME_SUBTASKS if not _inside(acc[s], bars.mme_range)])


def _ift(world: R.WorldResults, base: Mapping[str, R.Interval], bars: Bars) -> dict:
    target = (f"IFT in [{bars.ift_range[0]:.2f}, {bars.ift_range[1]:.2f}]; no format, IFEval-style or two-turn family "
              f"≤ {bars.format_floor:.2f} "
              f"or ≥ {bars.format_ceiling:.2f}")
    ift = _mean(base, "ift")
    fams = {k.removeprefix("acc_"): float(v) for k, v in (world.lvlm.families if world.lvlm else {}).items()
            if k.startswith(("acc_fmt_", "acc_ifeval", "acc_dialogue"))}
    if ift is None:
        return _row("3 IFT", target, "not measured", None)
    misses = [] if _inside(ift, bars.ift_range) else [f"IFT {ift:.3f}"]
    misses += [f"{f} {v:.3f}" for f, v in fams.items() if v <= bars.format_floor or v >= bars.format_ceiling]
    measured = f"IFT {ift:.3f}" + ("; " + ", ".join(f"{f} {v:.3f}" for f, v in fams.items()) if fams else "")
    return _row("3 IFT", target, measured, misses)


def _headroom(confidence: R.ConfidenceResults, bars: Bars) -> dict:
    target = (f"pass@N − greedy ≥ {bars.headroom:.2f} and ≥ {wording.share(bars.confident_wrong)} confident wrong, "
              "every family")
    room = confidence.headroom or {}
    if not room:
        return _row("4 headroom", target, "not measured", None)
    gaps = {f: float(v.room) for f, v in room.items()}
    wrong = {f: float(v.confident_wrong) for f, v in room.items() if v.confident_wrong is not None}
    misses = [f"{f} room {g:.2f}" for f, g in gaps.items() if g < bars.headroom]
    misses += [f"{f} confident wrong {w:.2f}" for f, w in wrong.items() if w < bars.confident_wrong]
    measured = (f"room {min(gaps.values()):.2f}–{max(gaps.values()):.2f} over {len(gaps)} families"
                + (f"; confident wrong {min(wrong.values()):.2f}–{max(wrong.values()):.2f}" if wrong else ""))
    return _row("4 headroom", target, measured, misses)


def _oracle(f1: Mapping | None, mme: Mapping | None, bars: Bars, name: str = "oracle") -> dict:
    """``f1`` / ``mme``: the upper bound's gain over the base (``gain``, ``gain_lo``, ``gain_hi``)."""
    target = (f"{name} − base ≥ +{100 * bars.oracle_f1:.0f} POPE-adversarial F1 points and ≥ +{bars.oracle_mme:.0f} "
              "MME, intervals above 0")
    if f1 is None or mme is None:
        return _row(f"5 {name} moves", target, "not measured", None)
    misses = []
    if f1["gain"] < bars.oracle_f1 - 1e-12 or f1["gain_lo"] <= 0:
        misses.append(f"F1 {100 * f1['gain']:+.1f} points")
    if mme["gain"] < bars.oracle_mme - 1e-9 or mme["gain_lo"] <= 0:
        misses.append(f"MME {mme['gain']:+.1f}")
    measured = (f"F1 {100 * f1['gain']:+.1f} [{100 * f1['gain_lo']:+.1f}, {100 * f1['gain_hi']:+.1f}] points, "
                f"MME {mme['gain']:+.1f} [{mme['gain_lo']:+.1f}, {mme['gain_hi']:+.1f}]")
    return _row(f"5 {name} moves", target, measured, misses)


def _power(evaluation: R.EvaluationResults, bars: Bars) -> dict:
    target = f"MDE (80 % power) ≤ {100 * bars.mde_f1:.1f} F1 point and ≤ {bars.mde_mme:.0f} MME, every comparison"
    limit = {"pope_adversarial_f1": bars.mde_f1, "mme_total": bars.mde_mme}
    rows = [{"comparison": d.comparison, "metric": d.metric, "mde": d.mde} for d in evaluation.mde
            if d.metric in limit]
    if not rows:
        return _row("6 power", target, "not measured", None)

    def show(d):
        return f"{100 * d['mde']:.2f} points" if d["metric"] == "pope_adversarial_f1" else f"{d['mde']:.1f} MME"

    misses = [f"{d['comparison']} {show(d)}" for d in rows if d["mde"] > limit[d["metric"]] + 1e-12]
    worst = {k: max(d["mde"] for d in rows if d["metric"] == k) for k in limit if any(d["metric"] == k for d in rows)}
    measured = "largest MDE " + ", ".join(show({"metric": k, "mde": v}) for k, v in worst.items())
    return _row("6 power", target, measured, misses)


def _mas(mas: R.MasResults) -> dict:
    target = "the preset's CLIP weight is the one the validation sweep picks"
    sweep = mas.weight_sweep
    if sweep is None or not sweep.best_clip_weights:
        return _row("7 MAS on validation", target, "not measured", None)
    best, preset = sweep.best_clip_weights, sweep.preset_clip_weight
    measured = (f"preset {preset:g}, validation picks {' / '.join(f'{w:g}' for w in best)} "
                f"({sweep.prompts} validation prompts)")
    return _row("7 MAS on validation", target, measured,
                [] if any(abs(preset - w) < 1e-9 for w in best) else [f"preset {preset:g}"])


def check(world: R.WorldResults, mas: R.MasResults, confidence: R.ConfidenceResults,
          evaluation: R.EvaluationResults, bars: Bars = BARS) -> list[dict]:
    """One row per bar (``bar``, ``target``, ``measured``, ``met``, ``misses``) from the typed results of notebooks
    00, 02, 03 and 06; the base model's numbers are notebook 06's, on its evaluation scenes."""
    base = evaluation.metrics.get("base") or {}
    adversarial = world.lvlm.pope.get("adversarial") if world.lvlm else None
    share = adversarial.partner_share if adversarial is not None else None
    oracle = evaluation.oracle or {}
    return [_pope({s: _mean(base, f"pope_{s}_accuracy") for s in POPE_SETTINGS}, share, bars),
            _mme({s: _mean(base, f"mme_{s}_acc") for s in MME_SUBTASKS},
                 {s: _mean(base, f"mme_{s}_acc_plus") for s in MME_SUBTASKS}, bars),
            _ift(world, base, bars), _headroom(confidence, bars),
            _oracle(oracle.get("pope_adversarial_f1"), oracle.get("mme_total"), bars), _power(evaluation, bars),
            _mas(mas)]


def calibration_bars(base: Mapping, upper: Mapping | None = None, bars: Bars = BARS) -> list[dict]:
    """The three bars a calibration of a base can check before any run (``tools/calibrate_base.py``): POPE and
    the MME-style subtasks on calibration scenes, and the upper bound (SFT on the reference answers).

    ``base``: the tool's measurement (``pope_<setting>`` with ``accuracy``, ``partner_share``; ``mme`` with
    ``acc``, ``acc_plus`` per subtask); ``upper``: ``{"f1": (gain, lo, hi), "mme": (gain, lo, hi)}`` or None.
    """
    pope = {s: (base.get(f"pope_{s}") or {}).get("accuracy") for s in POPE_SETTINGS}
    share = (base.get("pope_adversarial") or {}).get("partner_share")
    mme = base.get("mme") or {}
    gain = {k: dict(zip(("gain", "gain_lo", "gain_hi"), map(float, upper[k]), strict=True))
            for k in ("f1", "mme")} if upper else {}
    return [_pope(pope, share, bars),
            _mme({s: (mme.get(s) or {}).get("acc") for s in MME_SUBTASKS},
                 {s: (mme.get(s) or {}).get("acc_plus") for s in MME_SUBTASKS}, bars),
            _oracle(gain.get("f1"), gain.get("mme"), bars, name="upper bound")]


def check_run(run: str | Path, evaluation: Mapping | None = None, bars: Bars = BARS) -> list[dict]:
    """:func:`check` on a run directory's recorded results (``evaluation`` given: notebook 06's results so far,
    read through its schema)."""
    world, mas, confidence = R.load(run, "00_world"), R.load(run, "02_mas"), R.load(run, "03_confidence")
    ev = R.load(run, "06_evaluation") if evaluation is None else R.parse("06_evaluation", R.atomic_json(dict(evaluation)))
    return check(world, mas, confidence, ev, bars)


def met_count(rows: list[dict]) -> int:
    """How many of ``rows`` are met (a bar not measured is not met)."""
    return sum(r["met"] is True for r in rows)


def table(rows: list[dict]):
    """The rows as a DataFrame indexed by bar, ``met`` shown as yes / no / not measured."""
    import pandas as pd

    word = {True: "yes", False: "no", None: "not measured"}
    return pd.DataFrame([{"bar": r["bar"], "met": word[r["met"]], "measured": r["measured"],
                          "misses": "; ".join(r["misses"]), "target": r["target"]} for r in rows]).set_index("bar")


def styled(frame):
    """:func:`table` for a notebook page: long cells wrap inside a bounded width, left-aligned and top-aligned,
    and the ``met`` column is coloured, so the seven bars read as a table rather than one scrolling line each."""
    colour = {"yes": "background-color: #e5f5e0", "no": "background-color: #fee0d2"}
    return (frame.style
            .map(lambda v: colour.get(v, ""), subset=["met"])
            .set_properties(**{"white-space": "normal", "text-align": "left", "vertical-align": "top",
                               "max-width": "28em"})
            .set_table_styles([{"selector": "th", "props": [("text-align", "left"), ("vertical-align", "top"),
                                                            ("max-width", "22em"), ("white-space", "normal")]}]))
