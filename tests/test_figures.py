"""The checks that say a figure can be read catch what they are meant to catch (the smoke series is audited with
them in tests/test_nb10_experiments.py, once notebook 10 has run too)."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from m3po_utils.plots.audit import problems, record  # noqa: E402


def _fig(ncols=1):
    fig, axes = plt.subplots(1, ncols, figsize=(4 * ncols, 3), squeeze=False)
    return fig, list(axes.flat)


def test_a_readable_figure_has_no_problems():
    fig, (ax,) = _fig()
    ax.bar([0, 1], [0.5, 0.7])
    ax.plot([0, 1], [0.2, 0.9])
    ax.set_title("fine")
    assert problems(fig) == []
    plt.close(fig)


def test_empty_panel_is_reported_and_a_hidden_one_is_not():
    fig, (a, b, c) = _fig(3)
    a.plot([0, 1], [0, 1])
    b.set_title("left empty")
    c.axis("off")
    found = problems(fig)
    assert len(found) == 1 and found[0].startswith("left empty: empty panel")
    plt.close(fig)


@pytest.mark.parametrize("ys, expected", [
    ([1.0, 1.0 + 1e-6], "collapsed to a point"),     # the 1e-6+1 panel
    ([1e5, 1e5 + 3], "needs an offset"),             # labelled as +1e5 plus small ticks
    ([5.0, 5.0], None),                              # a flat line autoscales to ±5 %: readable
])
def test_collapsed_y_range(ys, expected):
    fig, (ax,) = _fig()
    ax.plot([0, 1], ys)
    ax.set_title("t")
    found = problems(fig)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0], found
    plt.close(fig)


def test_y_limits_set_to_a_point_are_reported():
    fig, (ax,) = _fig()
    ax.plot([0, 1], [2.0, 2.0])
    ax.set_ylim(2.0, 2.0000001)
    found = problems(fig)
    assert any("collapsed to a point" in f for f in found), found
    plt.close(fig)


def test_truncated_bars_are_reported():
    fig, (a, b) = _fig(2)
    a.bar([0, 1], [0.970, 0.971])
    a.set_ylim(0.969, 0.972)
    a.set_title("truncated")
    b.barh([0, 1], [-0.01, 0.02])
    b.set_title("differences")
    found = problems(fig)
    assert len(found) == 1 and found[0].startswith("truncated: bars on an axis that leaves out 0"), found
    plt.close(fig)


def test_text_running_into_the_next_panel_is_reported():
    fig, (a, b) = _fig(2)
    a.plot([0, 1], [0, 1])
    b.plot([0, 1], [0, 1])
    a.text(0.5, 0.5, "a long caption " * 8, transform=a.transAxes)
    found = problems(fig)
    assert len(found) == 1 and "runs into the panel" in found[0], found
    plt.close(fig)


def test_record_appends_one_line_per_figure(tmp_path):
    fig, (ax,) = _fig()
    ax.set_title("nothing here")
    path = tmp_path / "audit.jsonl"
    record(fig, path, "00_world cell 3")
    record(fig, path, "00_world cell 4")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["where"] for x in lines] == ["00_world cell 3", "00_world cell 4"]
    assert lines[0]["titles"] == ["nothing here"] and "empty panel" in lines[0]["problems"][0]
    plt.close(fig)


def test_text_under_an_image_panel_running_into_the_next_row_is_reported():
    """The scene grid's old layout: answers typed under each image ran under the next row's images and titles."""
    fig, axes = plt.subplots(2, 1, figsize=(3, 5))
    for ax in axes:
        ax.imshow([[0, 1], [1, 0]])
        ax.axis("off")
    axes[1].set_title("next scene")
    axes[0].text(0.0, -0.04, "\n".join(["Q: a question\nA: its answer"] * 6), transform=axes[0].transAxes,
                 va="top", fontsize=7)
    found = problems(fig)
    assert found and "runs into the panel next scene" in found[0], found
    plt.close(fig)


def test_paired_difference_plot_turns_lower_is_better_metrics():
    import numpy as np

    from m3po_utils.plots.evaluation import difference_frame, plot_differences
    from m3po_utils.stats import Bootstrap

    rng = np.random.default_rng(0)
    methods, metrics = ["base", "random", "m3po"], ["pope_adversarial_f1", "chair_i"]
    point = {m: {k: float(i) for k in metrics} for i, m in enumerate(methods)}
    draws = {m: {k: rng.normal(float(i), 0.1, 400) for k in metrics} for i, m in enumerate(methods)}
    df = difference_frame(Bootstrap(point, draws, 0.95), metrics).set_index(["comparison", "metric"])
    assert list(dict.fromkeys(df.index.get_level_values(0))) == ["random − base", "m3po − base", "m3po − random"]
    assert df.loc[("m3po − base", "pope_adversarial_f1"), "delta"] == 2.0
    chair = df.loc[("m3po − base", "chair_i")]
    assert chair["delta"] == -2.0 and chair["hi"] < 0            # a higher CHAIR_i is worse: turned negative
    fig = plot_differences(Bootstrap(point, draws, 0.95), metrics)
    assert problems(fig) == []
    plt.close(fig)


def test_image_strip_keeps_long_answers_in_their_own_panel():
    import numpy as np

    from m3po_utils.plots.world import image_strip

    caption = ("model: No, a green green green a green a green green green green a green.\n"
               "truth: a yellow triangle at the top right, a yellow star at the bottom.")
    fig = image_strip([np.zeros((8, 8, 3))] * 6, [caption] * 6, cols=3)
    assert problems(fig) == []
    plt.close(fig)


def test_a_long_table_is_folded_under_its_title_and_a_short_one_is_not():
    import pandas as pd

    from m3po_utils.notebook import collapsed

    short = pd.DataFrame({"a": range(3)})
    assert collapsed(short, "x") is short
    html = collapsed(pd.DataFrame({"a": range(56)}), "Every paired difference").data
    assert html.startswith("<details><summary><b>Every paired difference</b> — 56 rows (click to open)</summary>")
    assert html.count("<tr") == 57 and html.endswith("</details>")           # header + 56 rows, folded


def test_the_length_scatter_thins_layers_and_titles_its_correlations():
    import numpy as np
    import pandas as pd

    from m3po_utils.plots import confidence as P
    from m3po_utils.plots.audit import problems

    rng = np.random.default_rng(0)
    n = 5000
    length = rng.integers(1, 20, n)
    t = pd.DataFrame({"length": length, "conf_sum": -1.5 * length + rng.normal(0, 1, n),
                      "conf_mean": -rng.random(n), "correct": rng.random(n) < 0.3})
    fig = P.sum_vs_mean(t, per_class=1000)
    title = fig._suptitle.get_text()
    assert "Spearman ρ -0.9" in title and "2000 of 5000 candidates shown, at most 1000 per verdict" in title
    labels = [c.get_label() for c in fig.axes[0].collections]
    assert labels == ["not fully correct (1000 shown)", "correct (1000 shown)"]   # the smaller class drawn last
    assert problems(fig) == []
