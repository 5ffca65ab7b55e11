"""The testbed's bars: each one flips exactly where its threshold is crossed, and says what missed."""

import copy
import importlib.util
import json
from pathlib import Path

import pytest
from records import complete, record

from m3po_utils import learnt
from m3po_utils import scoring as E
from m3po_utils import testbed as T


def _m(x):
    return {"mean": x, "lo": x - 0.01, "hi": x + 0.01}


def passing():
    """Results of notebooks 00, 02, 03 and 06 of a run that meets every bar (the real runs' layout)."""
    base = {"pope_random_accuracy": _m(0.88), "pope_popular_accuracy": _m(0.87), "pope_adversarial_accuracy": _m(0.82),
            "ift": _m(0.40)}
    for s, a in zip(T.MME_SUBTASKS, (0.85, 0.65, 0.70, 0.80), strict=True):
        base |= {f"mme_{s}_acc": _m(a), f"mme_{s}_acc_plus": _m(a - 0.2)}
    world = {"lvlm": {"pope": {"adversarial": {"partner_share": 0.99}},
                      "families": {"acc_fmt_start": 0.20, "acc_fmt_list": 0.40, "acc_describe": 0.01}}}
    confidence = {"headroom": {"describe": {"pass@N − greedy": 0.20, "confident_wrong": 0.70},
                               "existence": {"pass@N − greedy": 0.16, "confident_wrong": 0.31}}}
    evaluation = {"metrics": {"base": base},
                  "oracle": {"pope_adversarial_f1": {"gain": 0.05, "gain_lo": 0.04, "gain_hi": 0.06},
                             "mme_total": {"gain": 31.0, "gain_lo": 20.0, "gain_hi": 42.0}},
                  "mde": [{"comparison": "m3po − best_of_n", "metric": "pope_adversarial_f1", "mde": 0.009},
                          {"comparison": "m3po − best_of_n", "metric": "mme_total", "mde": 9.0}]}
    mas = {"weight_sweep": {"best_clip_weights": [0.0, 0.1], "preset_clip_weight": 0.1, "prompts": 200}}
    return world, mas, confidence, evaluation


STAGES = ("00_world", "02_mas", "03_confidence", "06_evaluation")


def check(*results):
    """The bars of results given as partial dicts of notebooks 00, 02, 03 and 06 (typed through their schemas)."""
    return T.check(*(record(s, r) for s, r in zip(STAGES, results, strict=True)))


def met(results):
    return {r["bar"].split()[0]: r["met"] for r in check(*results)}


def test_a_run_inside_every_bar_meets_all_seven():
    rows = check(*passing())
    assert [r["met"] for r in rows] == [True] * 7
    assert rows[0]["measured"] == "0.880 / 0.870 / 0.820, gap 6.0 points, 99.0 % of adversarial false positives are mates"
    assert "count 0.65 / 0.45" in rows[1]["measured"]     # acc+ reported next to acc


@pytest.mark.parametrize("where, path, value, bar, miss", [
    (3, ("metrics", "base", "pope_popular_accuracy"), _m(0.905), "1", "popular 0.905"),
    (3, ("metrics", "base", "pope_adversarial_accuracy"), _m(0.775), "1", "adversarial 0.775"),
    (3, ("metrics", "base", "pope_adversarial_accuracy"), _m(0.86), "1", "gap 2.0 points"),   # in range, gap < 3
    (3, ("metrics", "base", "mme_position_acc"), _m(0.55), "2", "position 0.550"),
    (3, ("metrics", "base", "mme_existence_acc"), _m(0.93), "2", "existence 0.930"),
    (3, ("metrics", "base", "ift"), _m(0.29), "3", "IFT 0.290"),
    (0, ("lvlm", "families", "acc_fmt_start"), 0.05, "3", "fmt_start 0.050"),                # at the floor
    (0, ("lvlm", "families", "acc_fmt_list"), 0.95, "3", "fmt_list 0.950"),
    (0, ("lvlm", "families", "acc_ifeval"), 0.96, "3", "ifeval 0.960"),                      # the new families
    (0, ("lvlm", "families", "acc_dialogue"), 0.02, "3", "dialogue 0.020"),
    (2, ("headroom", "existence", "pass@N − greedy"), 0.14, "4", "existence room 0.14"),
    (2, ("headroom", "existence", "confident_wrong"), 0.29, "4", "existence confident wrong 0.29"),
    (3, ("oracle", "pope_adversarial_f1", "gain"), 0.029, "5", "F1 +2.9 points"),
    (3, ("oracle", "mme_total", "gain_lo"), -1.0, "5", "MME +31.0"),                          # interval reaches 0
    (1, ("weight_sweep", "preset_clip_weight"), 0.3, "7", "preset 0.3"),
])
def test_each_bar_misses_just_past_its_threshold(where, path, value, bar, miss):
    results = list(passing())
    d = results[where] = copy.deepcopy(results[where])
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value
    rows = {r["bar"].split()[0]: r for r in check(*results)}
    assert rows[bar]["met"] is False and miss in rows[bar]["misses"]
    assert [b for b, r in rows.items() if not r["met"]] == [bar]       # no other bar moved


def test_power_names_every_comparison_over_the_limit():
    w, m, c, e = passing()
    e = e | {"mde": e["mde"] + [{"comparison": "m3po − random", "metric": "pope_adversarial_f1", "mde": 0.0125},
                                {"comparison": "m3po − random", "metric": "mme_total", "mde": 10.5}]}
    row = check(w, m, c, e)[5]
    assert row["met"] is False
    assert row["misses"] == ["m3po − random 1.25 points", "m3po − random 10.5 MME"]
    assert row["measured"] == "largest MDE 1.25 points, 10.5 MME"


def test_what_a_run_did_not_measure_is_neither_met_nor_missed():
    """A hub preset: POPE files of one setting, no verifier (no headroom, no oracle), no weight sweep."""
    evaluation = {"metrics": {"base": {"pope_adversarial_accuracy": _m(0.85), "ift": _m(0.4)}}}
    rows = check({}, {}, {}, evaluation)
    assert [r["met"] for r in rows] == [None, None, True, None, None, None, None]
    assert list(T.table(rows)["met"]) == ["not measured"] * 2 + ["yes"] + ["not measured"] * 4
    assert learnt._testbed_bars(record("06_evaluation", {"testbed_bars": rows})) == [
        "**The testbed's own bars**: this run meets 1 of the 1 it measured."]


def test_the_learnt_line_counts_and_names_what_missed():
    w, m, c, e = passing()
    e = copy.deepcopy(e)
    e["oracle"]["mme_total"]["gain"] = 22.0
    line, = learnt._testbed_bars(record("06_evaluation", {"testbed_bars": check(w, m, c, e)}))
    assert line.startswith("**The testbed's own bars**: this run meets 6 of the 7 it measured; not met: oracle "
                           "moves (MME +22.0).")
    assert "weak ground for ranking" in line
    assert learnt._testbed_bars(record("06_evaluation", {})) == []


def test_check_run_names_the_missing_notebook(tmp_path):
    (tmp_path / "results").mkdir()
    with pytest.raises(FileNotFoundError, match="00_world"):
        T.check_run(tmp_path)


def test_the_tool_prints_one_column_per_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("testbed_bars", Path(__file__).parent.parent / "tools" /
                                                  "testbed_bars.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    runs = []
    for name, ift in (("a", 0.40), ("b", 0.20)):
        w, m, c, e = passing()
        e = copy.deepcopy(e)
        e["metrics"]["base"]["ift"] = _m(ift)
        (tmp_path / name / "results").mkdir(parents=True)
        for nb, d in (("00_world", w), ("02_mas", m), ("03_confidence", c), ("06_evaluation", e)):
            (tmp_path / name / "results" / f"{nb}.json").write_text(json.dumps(complete(nb, d)))
        runs.append(str(tmp_path / name))
    tool.main(runs)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"| bar | {runs[0]} | {runs[1]} |"
    ift_row = next(line for line in out if line.startswith("| 3 IFT"))
    cells = [x.strip() for x in ift_row.strip("|").split("|")]
    assert cells[1].startswith("yes: IFT 0.400") and cells[2] == "**no**: IFT 0.200"
    assert out[-1] == f"bars met: {runs[0]} 7 of 7, {runs[1]} 6 of 7"
    with pytest.raises(SystemExit, match="not a run directory"):
        tool.main([str(tmp_path / "nowhere")])


def _calibration(n_scenes=20, wrong_every=4):
    """A base.json-like measurement on ``n_scenes`` scenes, wrong on every ``wrong_every``-th POPE and MME question
    (0: on none)."""
    pope = [(s, lab, ("no" if lab == "yes" else "yes") if wrong_every and (2 * s + k) % wrong_every == 0 else lab)
            for s in range(n_scenes) for k, lab in enumerate(("yes", "no"))]
    mme = [{"subtask": sub, "scene": s, "answer": ans,
            "prediction": ("No" if ans == "Yes" else "Yes") if wrong_every and (s + k) % wrong_every == 0 else ans}
           for s in range(n_scenes) for sub in T.MME_SUBTASKS for k, ans in enumerate(("Yes", "No"))]
    rep = {f"pope_{st}": {"accuracy": 0.85, "partner_share": 0.98} for st in T.POPE_SETTINGS}
    m = E.pope_metrics([p for *_, p in pope], [lab for _, lab, _ in pope])
    rep["pope_adversarial"] |= {"accuracy": 0.80, "f1": m["f1"]}
    rep["pope_adversarial_rows"] = pope
    scores = E.mme_scores([r | {"image": r["scene"]} for r in mme])
    rep["mme"] = {s: {"acc": 0.7, "acc_plus": 0.5} for s in T.MME_SUBTASKS}
    rep["mme_total"], rep["mme_rows"] = scores["total"], mme
    return rep


def _calibrate_tool():
    spec = importlib.util.spec_from_file_location("calibrate_base", Path(__file__).parent.parent / "tools" /
                                                  "calibrate_base.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_calibration_bars_check_pope_mme_and_the_upper_bound():
    base = _calibration()
    rows = T.calibration_bars(base, {"f1": (0.04, 0.02, 0.06), "mme": (35.0, 10.0, 60.0)})
    assert [r["met"] for r in rows] == [True, True, True]
    assert rows[2]["bar"] == "5 upper bound moves"
    base["mme"]["position"]["acc"] = 0.55
    rows = T.calibration_bars(base, {"f1": (0.04, 0.02, 0.06), "mme": (35.0, -1.0, 60.0)})
    assert [r["met"] for r in rows] == [True, False, False]
    assert rows[1]["misses"] == ["position 0.550"] and rows[2]["misses"] == ["MME +35.0"]
    assert T.calibration_bars(base)[2]["met"] is None                  # no upper bound measured


def test_finished_calibrations_are_checked_from_their_files(tmp_path, capsys):
    tool = _calibrate_tool()
    base, upper = _calibration(), _calibration(wrong_every=0)      # the upper bound answers everything right
    for name in ("old", "new"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "base.json").write_text(json.dumps(base))
    (tmp_path / "old" / "oracle.json").write_text(json.dumps(upper))   # written before the intervals were stored
    d = tool.paired_intervals(base, upper, 20)
    (tmp_path / "new" / "oracle.json").write_text(json.dumps(upper | {"upper": {k: list(v) for k, v in d.items()}}))
    old, new = tool.recorded_bars(tmp_path / "old"), tool.recorded_bars(tmp_path / "new")
    assert old == new                          # the same resampling when the file lacks the intervals
    assert d["mme"][0] == pytest.approx(800 - base["mme_total"]) and d["f1"][0] == pytest.approx(
        1 - base["pope_adversarial"]["f1"])           # the upper bound's gain: from the base's score to a perfect one
    assert d["mme"][1] > 0 and old[2].endswith("upper bound moves yes")
    tool.main(["--bars", str(tmp_path / "old"), str(tmp_path / "new")])
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"bars met, all calibrations given: {2 * old[0]} of 6"
    with pytest.raises(SystemExit, match="no base.json"):
        tool.recorded_bars(tmp_path)


def test_the_bars_table_wraps_and_colours_for_a_notebook_page():
    df = T.table([{"bar": "1. a", "met": True, "measured": "x" * 200, "misses": [], "target": "t"},
                  {"bar": "2. b", "met": False, "measured": "y", "misses": ["m1", "m2"], "target": "t"},
                  {"bar": "3. c", "met": None, "measured": "", "misses": [], "target": "t"}])
    assert list(df["met"]) == ["yes", "no", "not measured"] and df.loc["2. b", "misses"] == "m1; m2"
    html = T.styled(df).to_html()
    assert "white-space: normal" in html and "max-width: 28em" in html
    assert html.count("#e5f5e0") == 1 and html.count("#fee0d2") == 1        # one met, one missed, one unmeasured
