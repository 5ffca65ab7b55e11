"""Stage 06 logic without models: question set, per-scene counts, metrics, bootstrap, judge wins, examples."""

import dataclasses

import numpy as np
import pytest

from m3po_utils import evaluation as C
from m3po_utils import rules
from m3po_utils import scoring as E
from m3po_utils import shapes as W
from m3po_utils.config import ConfigError, load_preset

WCFG = load_preset("smoke").world


@pytest.fixture(scope="module")
def scenes():
    return W.make_splits(WCFG)["eval"][:30]


@pytest.fixture(scope="module")
def questions(scenes):
    return E.eval_questions(scenes, WCFG, seed=0)


def perfect(q, scenes):
    if q["kind"].startswith("pope_"):
        return "Yes." if q["label"] == "yes" else "No."
    if q["kind"] == "mme":
        return q["answer"]
    return q["reference"]


def noisy_answers(questions, scenes, seed=0):
    """Right answers with a third of them corrupted in ways each parser must catch."""
    rng = np.random.default_rng(seed)
    out = []
    for q in questions:
        a = perfect(q, scenes)
        if rng.random() < 1 / 3:
            if q["kind"].startswith("pope_") or q["kind"] == "mme":
                a = {"Yes.": "No, there is none.", "No.": "Yes", "Yes": "no", "No": "Yes, there is."}.get(a, "Eyes")
            elif q["kind"] == "describe":
                a = a + " There is a red hexagon and a blue star."
            else:
                a = "I cannot tell."
        out.append(a)
    return out


def test_question_set(scenes, questions):
    kinds = {k: sum(q["kind"] == k for q in questions) for k in {q["kind"] for q in questions}}
    assert kinds["describe"] == kinds["ift"] == kinds["short"] == len(scenes)
    assert kinds["mme"] > 0 and all(kinds[f"pope_{s}"] > 0 for s in E.POPE_SETTINGS)
    for q in questions:
        if q["kind"].startswith("pope_") and q["label"] == "no":
            shape = W.parse_instruction(q["question"], WCFG)[1]["shape"]
            assert not scenes[q["scene"]].has(shape)
        if q["kind"] == "ift":
            assert q["family"].startswith("fmt_")
    assert C.questions_key(questions) == C.questions_key(E.eval_questions(scenes, WCFG, seed=0))
    assert C.questions_key(questions) != C.questions_key(E.eval_questions(scenes, WCFG, seed=1))


def test_perfect_answers_score_perfectly(scenes, questions):
    answers = [perfect(q, scenes) for q in questions]
    m = E.metrics_from_totals(E.scene_stats(scenes, questions, answers, WCFG).sum(axis=0))
    assert m["mme_total"] == pytest.approx(200 * len(E.MME_SUBTASKS))
    for s in E.POPE_SETTINGS:
        assert m[f"pope_{s}_accuracy"] == 1 and m[f"pope_{s}_f1"] == 1
    assert m["chair_i"] == 0 and m["chair_s"] == 0 and m["desc_recall"] == 1
    assert m["ift"] == 1 and m["format_followed"] == 1 and m["yes_no_compliance"] == 1


def test_metrics_agree_with_the_public_scorers(scenes, questions):
    answers = noisy_answers(questions, scenes)
    m = E.metrics_from_totals(E.scene_stats(scenes, questions, answers, WCFG).sum(axis=0))
    for s in E.POPE_SETTINGS:
        idx = [k for k, q in enumerate(questions) if q["kind"] == f"pope_{s}"]
        ref = E.pope_metrics([answers[k] for k in idx], [questions[k]["label"] for k in idx])
        for key, v in ref.items():
            assert m[f"pope_{s}_{key}"] == pytest.approx(v), (s, key)
        assert ref["accuracy"] < 1
    mme = E.mme_scores([q | {"prediction": a} for q, a in zip(questions, answers, strict=True) if q["kind"] == "mme"])
    assert m["mme_total"] == pytest.approx(mme["total"]) and mme["total"] < 800
    for sub, v in mme["subtasks"].items():
        assert m[f"mme_{sub}_score"] == pytest.approx(v["score"])
        assert m[f"mme_{sub}_acc"] == pytest.approx(v["acc"]) and m[f"mme_{sub}_acc_plus"] == pytest.approx(v["acc_plus"])
    d = [k for k, q in enumerate(questions) if q["kind"] == "describe"]
    desc = E.description_metrics([scenes[questions[k]["scene"]] for k in d], [answers[k] for k in d], WCFG)
    assert desc["chair_i"] > 0
    for key in ("chair_i", "chair_s", "recall", "precision"):
        assert m["desc_" + key if key in ("recall", "precision") else key] == pytest.approx(desc[key])
    f = [k for k, q in enumerate(questions) if q["kind"] == "ift"]
    ift = E.ift_score([scenes[questions[k]["scene"]] for k in f], [questions[k]["question"] for k in f],
                      [answers[k] for k in f], WCFG)
    assert m["ift"] == pytest.approx(ift["ift"]) and m["format_followed"] == pytest.approx(ift["format_followed"])
    assert ift["ift"] < 1


def test_judge_wins_against_the_base(scenes, questions):
    answers = [perfect(q, scenes) for q in questions]
    judged = np.full(len(questions), np.nan)
    base = np.full(len(questions), np.nan)
    rows = [k for k, q in enumerate(questions) if q["kind"] in E.JUDGED_KINDS][:3]
    judged[rows], base[rows] = [8, 5, 3], [6, 5, 9]
    m = E.metrics_from_totals(E.scene_stats(scenes, questions, answers, WCFG, judged, base).sum(axis=0))
    assert m["judge_score"] == pytest.approx(16 / 3)
    assert m["judge_win_rate"] == pytest.approx((1 + 0.5 + 0) / 3)
    judged[rows[0]] = np.nan      # a failed request leaves the row out
    m = E.metrics_from_totals(E.scene_stats(scenes, questions, answers, WCFG, judged, base).sum(axis=0))
    assert m["judge_win_rate"] == pytest.approx(0.5 / 2)


def test_zero_denominators_give_zero():
    m = E.metrics_from_totals(np.zeros(len(E.STATS)))
    assert m["chair_i"] == 0 and m["pope_random_f1"] == 0 and m["mme_total"] == 0


def test_bootstrap_intervals_and_paired_deltas(scenes, questions):
    good = E.scene_stats(scenes, questions, [perfect(q, scenes) for q in questions], WCFG)
    bad = np.stack([E.scene_stats(scenes, questions, noisy_answers(questions, scenes, s), WCFG) for s in range(3)])
    boot = C.bootstrap({"base": good[None], "m3po": bad, "copy": bad.copy()}, n_boot=400, ci=0.9, seed=0)
    # a perfect model has a degenerate interval at its value
    assert boot.interval("base", "pope_adversarial_accuracy") == (1.0, 1.0)
    lo, hi = boot.interval("m3po", "mme_total")
    point = boot.point["m3po"]["mme_total"]
    per_seed = [E.metrics_from_totals(b.sum(axis=0))["mme_total"] for b in bad]
    assert point == pytest.approx(np.mean(per_seed))
    assert lo < point < hi < 800
    # identical methods: the paired difference is exactly 0 in every draw
    d = boot.delta("m3po", "copy", "chair_i")
    assert d["delta"] == 0 and d["lo"] == 0 and d["hi"] == 0
    d = boot.delta("base", "m3po", "pope_random_accuracy")
    assert d["lo"] > 0 and d["p_le_0"] == 0
    summary = boot.summary()
    assert set(summary) == {"base", "m3po", "copy"} and "judge_win_rate" in summary["m3po"]


def test_bootstrap_rejects_mismatched_scenes(scenes, questions):
    st = E.scene_stats(scenes, questions, [perfect(q, scenes) for q in questions], WCFG)
    with pytest.raises(ValueError, match="same scenes"):
        C.bootstrap({"a": st[None], "b": st[None, :10]})


def test_hallucination_changes(scenes, questions):
    before = [perfect(q, scenes) for q in questions]
    after = list(before)
    d = [k for k, q in enumerate(questions) if q["kind"] == "describe"]
    absent = [s for s in WCFG.shapes if not scenes[questions[d[0]]["scene"]].has(s)][0]
    before[d[0]] += f" There is a red {absent}."
    absent1 = [s for s in WCFG.shapes if not scenes[questions[d[1]]["scene"]].has(s)][0]
    after[d[1]] += f" There is a blue {absent1}."
    ch = C.hallucination_changes(scenes, questions, before, after, WCFG)
    assert ch["n_fixed"] == 1 and ch["n_introduced"] == 1
    assert ch["fixed"][0]["removed"] == [absent] and ch["introduced"][0]["added"] == [absent1]


def test_seed_dirs_and_model_keys(tmp_path):
    cfg = load_preset("shapes")
    assert C.seed_run_dir(tmp_path, cfg, 0) == tmp_path
    assert C.seed_run_dir(tmp_path, cfg, 2) == tmp_path / "evaluation" / "seed2"
    s2 = C.seed_config(cfg, 2)
    assert s2.selection.seed == 2 and s2.dpo.seed == 2 and s2.dpo.learning_rate == cfg.dpo.learning_rate
    keys = C.model_keys(cfg)
    assert keys.count(("base", 0)) == 1 and sum(m == "base" for m, _ in keys) == 1
    assert len(keys) == 1 + (len(cfg.evaluation.methods) - 1) * len(cfg.evaluation.seeds)
    assert ("oracle", 0) in keys


def test_evaluation_config_is_checked():
    with pytest.raises(ConfigError, match="evaluation.methods"):
        load_preset("smoke", {"evaluation.methods": ["base", "rlhf"]})
    with pytest.raises(ConfigError, match="evaluation.seeds"):
        load_preset("smoke", {"evaluation.seeds": [1, 1]})
    with pytest.raises(ConfigError, match="evaluation.pope_images"):
        load_preset("smoke", {"evaluation.pope_files": ["q.json"]})
    assert dataclasses.asdict(load_preset("shapes").evaluation)["seeds"] == (0, 1, 2)


def test_comparison_table_layout(scenes, questions):
    st = E.scene_stats(scenes, questions, [perfect(q, scenes) for q in questions], WCFG)
    boot = C.bootstrap({"base": st[None], "m3po": st[None]}, n_boot=100)
    df = C.comparison_table(boot)
    assert list(df.index) == ["SFT base", "M3PO"] and list(df.columns) == list(E.HEADLINE)
    assert df.loc["M3PO", "mme_total"] == "800.0 [800.0, 800.0]"
    md = C.table_markdown(df, "t")
    assert md.splitlines()[2].startswith("| method | mme_total")


def test_verdicts_and_per_seed(scenes, questions):
    good = E.scene_stats(scenes, questions, [perfect(q, scenes) for q in questions], WCFG)
    bad = np.stack([E.scene_stats(scenes, questions, noisy_answers(questions, scenes, s), WCFG) for s in range(2)])
    boot = C.bootstrap({"good": np.stack([good, good]), "bad": bad}, n_boot=300)
    v = C.verdicts(boot, "good", "bad", ["mme_total", "chair_i", "judge_score"])
    assert v == {"better": ["mme_total", "chair_i"], "worse": [], "no_difference": ["judge_score"]}
    assert C.verdicts(boot, "bad", "good", ["chair_i"])["worse"] == ["chair_i"]
    ps = C.per_seed({"bad": bad})
    assert len(ps) == 2 and ps["mme_total"].iloc[0] != ps["mme_total"].iloc[1]
    lines = C.ordering_lines(boot, ["chair_i"])
    assert lines[0].startswith("- **chair_i** (lower is better): best good 0.000; not distinguishable from it: "
                               "none; reliably worse: bad")
    tie = C.bootstrap({"a": np.stack([good, good]), "b": np.stack([good, good]), "bad": bad}, n_boot=300)
    line = C.ordering_lines(tie, ["chair_i"])[0]
    assert "no single best: a, b tie at 0.000; not distinguishable from them: none" in line and "best a" not in line
    ex = C.answer_examples(questions, {("base", 0): [perfect(q, scenes) for q in questions]}, scene=0)
    assert list(ex.index) == ["base (seed 0)"] and "Describe the image." in ex.columns


DATA = __import__("pathlib").Path(__file__).resolve().parent.parent / "data"


def test_benchmark_files_as_a_question_set():
    paths, qs = C.file_questions([str(DATA / "pope" / "shapes_pope_adversarial.json")], str(DATA / "pope" / "images"),
                                 str(DATA / "mme"))
    assert {q["kind"] for q in qs} == {"pope_adversarial", "mme"}
    assert C.pope_settings(qs) == ["adversarial"]
    assert all(0 <= q["scene"] < len(paths) for q in qs) and len(set(paths)) == len(paths)
    answers = []
    for n, q in enumerate(qs):      # every third answer wrong, in the parsers' tricky forms
        right = ("Yes" if q.get("label", q.get("answer", "")).lower() == "yes" else "No")
        answers.append(right if n % 3 else {"Yes": "No, there is not.", "No": "Eyes"}[right])
    st = E.scene_stats([None] * len(paths), qs, answers, WCFG)
    m = E.metrics_from_totals(st.sum(axis=0))
    pope = [(a, q["label"]) for q, a in zip(qs, answers, strict=True) if q["kind"] == "pope_adversarial"]
    ref = E.pope_metrics([a for a, _ in pope], [lab for _, lab in pope])
    assert m["pope_adversarial_accuracy"] == pytest.approx(ref["accuracy"]) and ref["accuracy"] < 1
    mme = E.mme_scores([q | {"prediction": a} for q, a in zip(qs, answers, strict=True) if q["kind"] == "mme"])
    assert m["mme_total"] == pytest.approx(mme["total"])
    assert E.available_metrics({"base": st[None]}) == ["mme_total", "pope_adversarial_f1", "yes_no_compliance"]


def test_pope_file_name_must_name_its_setting(tmp_path):
    with pytest.raises(ValueError, match="rename it"):
        C.pope_setting(tmp_path / "my_questions.json")
    assert C.pope_setting("coco_pope_popular.json") == "popular"


def test_delta_frame_rows_are_the_paired_deltas(scenes, questions):
    good = E.scene_stats(scenes, questions, [perfect(q, scenes) for q in questions], WCFG)
    bad = E.scene_stats(scenes, questions, noisy_answers(questions, scenes), WCFG)
    boot = C.bootstrap({"good": good[None], "bad": bad[None]}, n_boot=200)
    df = boot.delta_frame([("good", "bad")], ["mme_total", "chair_i"])
    assert list(df.index) == [("good − bad", "mme_total"), ("good − bad", "chair_i")]
    assert df.loc[("good − bad", "chair_i")].to_dict() == boot.delta("good", "bad", "chair_i")
    assert df.loc[("good − bad", "mme_total"), "delta"] > 0


class FakeJudge:
    """Scores an answer by its length; records what it was asked."""

    def __init__(self):
        self.items = []

    def judge(self, items, progress=False):
        from m3po_utils.judge.client import JudgeOutcome

        self.items += items
        return [[JudgeOutcome(float(len(r)), ok=r != "fail") for r in it.responses] for it in items]


def test_judge_answers_asks_each_distinct_answer_once_and_maps_scores_back(scenes, questions):
    images = [W.render(s, WCFG) for s in scenes]
    base = [perfect(q, scenes) for q in questions]
    judged_rows = [k for k, q in enumerate(questions) if q["kind"] in E.JUDGED_KINDS]
    other = list(base)
    other[judged_rows[0]] = "fail"
    other[judged_rows[1]] = "x"
    client = FakeJudge()
    out = C.judge_answers(client, images, questions, {("base", 0): base, ("m3po", 0): other})
    assert len(client.items) == len(judged_rows)
    assert client.items[1].responses == [base[judged_rows[1]], "x"]
    assert client.items[2].responses == [base[judged_rows[2]]]            # same answer: asked once
    assert out[("m3po", 0)][judged_rows[1]] == 1.0 and np.isnan(out[("m3po", 0)][judged_rows[0]])
    assert out[("base", 0)][judged_rows[2]] == len(base[judged_rows[2]])
    not_judged = [k for k in range(len(questions)) if k not in judged_rows]
    assert np.isnan(out[("base", 0)][not_judged]).all()


def test_benchmark_paths_and_frame():
    cfg = load_preset("smoke")
    files = C.benchmark_paths(cfg)
    assert files["pope_files"] == [str(DATA / "pope" / "shapes_pope_adversarial.json"),
                                   str(DATA / "pope" / "shapes_pope_seem_popular.json"),
                                   str(DATA / "lmms-lab" / "POPE" / "test-00000-of-00001.parquet")]
    assert files["mme_dirs"] == [str(DATA / "mme"), str(DATA / "lmms-lab" / "MME")]
    own = load_preset("smoke", {"evaluation.mme_dir": "/x/mme"})
    assert C.benchmark_paths(own) == {"pope_files": [], "pope_images": "", "mme_dirs": ["/x/mme"]}
    real = {"subtasks": {"OCR": {"group": "perception"}, "code_reasoning": {"group": "cognition"}},
            "perception": 150.0, "cognition": 95.0, "total": 150.0}
    df = C.benchmark_frame({"base": {"pope:a.json": {"accuracy": 0.5, "f1": 0.1},
                                     "mme:data/mme": {"subtasks": {"count": {"group": "perception"}},
                                                      "perception": 283.0, "cognition": 0.0},
                                     "mme:x/MME": real | {"n": 12}}})
    assert df["base"].to_dict() == {"pope:a.json accuracy": 0.5, "mme:data/mme perception": 283.0,
                                    "mme:x/MME perception (n=12)": 150.0, "mme:x/MME cognition (n=12)": 95.0}


def test_mde_recovered_share_and_oracle_table():
    from m3po_utils.stats import Bootstrap
    rng = np.random.default_rng(0)
    base, oracle = rng.normal(0.0, 1.0, 4000), rng.normal(2.0, 1.0, 4000)
    half = (base + oracle) / 2
    boot = Bootstrap(point={"base": {"x": 0.0}, "oracle": {"x": 2.0}, "m3po": {"x": 1.0}},
                     draws={"base": {"x": base}, "oracle": {"x": oracle}, "m3po": {"x": half}}, ci=0.95)
    # the paired draws differ by N(2, sqrt 2): SE sqrt 2, MDE (1.96 + 0.8416) * sqrt 2 = 3.962
    assert boot.mde("oracle", "base", "x") == pytest.approx(2.8016 * np.sqrt(2), rel=0.03)
    assert boot.mde("m3po", "m3po", "x") == 0.0
    r = boot.recovered("m3po", "x", "oracle", "base")
    assert r["share"] == pytest.approx(0.5) and r["lo"] <= 0.5 <= r["hi"]
    with pytest.raises(ValueError, match="power"):
        boot.mde("oracle", "base", "x", power=1.0)


def test_detectable_difference_by_scenes(scenes, questions):
    a = E.scene_stats(scenes, questions, noisy_answers(questions, scenes, 0), WCFG)
    b = E.scene_stats(scenes, questions, noisy_answers(questions, scenes, 1), WCFG)
    stats = {"m3po": a[None], "random": b[None]}
    df = C.detectable_by_scenes(stats, [("m3po", "random")], [8, 30], n_boot=400, seed=3)
    full = C.detectable_table(C.bootstrap(stats, n_boot=400, seed=3), [("m3po", "random")])
    # all the scenes: exactly notebook 06's number; fewer scenes, a larger detectable difference
    assert df[30].to_dict() == full["mde"].to_dict()
    assert (df[8] > df[30]).all()
    on_eight = C.detectable_table(C.bootstrap({m: s[:, :8] for m, s in stats.items()}, n_boot=400, seed=3),
                                  [("m3po", "random")])
    assert df[8].to_dict() == on_eight["mde"].to_dict()      # the first 8 scenes, not any 8
    assert C.scene_sizes(30) == [7, 15, 22, 30] and C.scene_sizes(5) == [2, 3, 5] and C.scene_sizes(1) == []
    assert C.detectable_by_scenes(stats, [("m3po", "random")], []).empty
    default = C.detectable_by_scenes(stats, [("m3po", "random")], n_boot=400, seed=3)
    assert list(default.columns) == [7, 15, 22, 30] and default[30].to_dict() == df[30].to_dict()
    for sizes in ([1], [31], [2.5]):
        with pytest.raises(ValueError, match=r"each must be an integer in \[2, 30\]"):
            C.detectable_by_scenes(stats, [("m3po", "random")], sizes)


def test_recorded_answers_read_notebook_06_cache_only(tmp_path, scenes, questions):
    import json

    cfg = load_preset("smoke")
    keys = C.model_keys(cfg)
    with pytest.raises(FileNotFoundError, match=r"run notebook 06 \(06_evaluation.ipynb\)"):
        C.recorded_answers(tmp_path, cfg, questions)
    for k, (method, seed) in enumerate(keys):
        path = C.answers_path(tmp_path, method, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"method": method, "seed": seed, "questions": C.questions_key(questions),
                                    "answers": [f"{k}"] * len(questions)}))
    got = C.recorded_answers(tmp_path, cfg, questions)
    assert list(got) == keys and got[keys[-1]] == [f"{len(keys) - 1}"] * len(questions)
    with pytest.raises(FileNotFoundError, match="does not hold"):        # answers to other questions
        C.recorded_answers(tmp_path, cfg, questions[1:])
    C.answers_path(tmp_path, *keys[0]).write_text("{")                   # a broken file: named, never moved
    with pytest.raises(ValueError, match=r"base_seed0.json is unreadable .*run notebook 06"):
        C.recorded_answers(tmp_path, cfg, questions)
    assert C.answers_path(tmp_path, *keys[0]).read_text() == "{"


def test_oracle_table_and_headline_lines(scenes, questions):
    good = E.scene_stats(scenes, questions, [perfect(q, scenes) for q in questions], WCFG)
    bad = E.scene_stats(scenes, questions, noisy_answers(questions, scenes, 0), WCFG)
    boot = C.bootstrap({"base": bad[None], "oracle": good[None], "m3po": good[None], "random": bad[None]},
                       n_boot=300, seed=0)
    t = C.oracle_table(boot)
    assert list(t.index) == list(C.KEY_METRICS)
    assert t.loc["mme_total", "moves"] and t.loc["mme_total", "gain"] > 0
    assert t.loc["mme_total", "m3po"] == pytest.approx(1.0) and t.loc["mme_total", "random"] == pytest.approx(0.0)
    lines = "\n".join(C.headline_lines(boot))
    assert "the oracle moves it" in lines and "m3po beats random" in lines
    chair = C.oracle_table(boot, metrics=("chair_i",))          # lower is better: the gain is turned positive
    assert chair.loc["chair_i", "gain"] >= 0
    mde = C.detectable_table(boot, [("m3po", "random")])
    assert (mde["mde"] > 0).all() and mde.loc[("m3po − random", "mme_total"), "observed"] > 0


def test_a_corrupt_answers_cache_is_set_aside_and_answered_again(tmp_path, monkeypatch):
    from m3po_utils import evaluation as C
    from m3po_utils.config import load_preset

    calls = []
    monkeypatch.setattr(C, "load_method", lambda cfg, run, method, seed: ("model", "processor"))
    monkeypatch.setattr(C, "answer_questions", lambda m, p, images, qs, batch_size, long_answer_tokens: calls.append(1) or
                        [f"answer {i}" for i in range(len(qs))])
    cfg = load_preset("smoke")
    questions = [{"scene": 0, "question": "Is there a red circle?"}] * 3
    path = C.answers_path(tmp_path, "m3po", 0)
    path.parent.mkdir(parents=True)
    path.write_text('{"method": "m3po", "answers": ["a", "b"')              # truncated
    assert C.cached_answers(tmp_path, cfg, "m3po", 0, [None], questions) == ["answer 0", "answer 1", "answer 2"]
    aside = [p.name for p in path.parent.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and (path.parent / aside[0]).read_text().endswith('"b"')
    assert C.cached_answers(tmp_path, cfg, "m3po", 0, [None], questions)[2] == "answer 2"
    assert len(calls) == 1                                                  # the rebuilt cache is used


def test_mme_by_subtask_splits_the_total_into_its_subtasks(scenes, questions):
    good = E.scene_stats(scenes, questions, [perfect(q, scenes) for q in questions], WCFG)
    answers = noisy_answers(questions, scenes, 1)
    bad = E.scene_stats(scenes, questions, answers, WCFG)
    boot = C.bootstrap({"base": bad[None], "oracle": good[None]}, n_boot=200, seed=0)
    assert C.mme_subtasks(boot) == list(E.MME_SUBTASKS)
    table = C.mme_by_subtask(boot)
    assert table.index.tolist() == [(rules.label(m), t) for m in ("base", "oracle") for t in E.MME_SUBTASKS]
    ref = E.mme_scores([q | {"prediction": a} for q, a in zip(questions, answers, strict=True) if q["kind"] == "mme"])
    for t, v in ref["subtasks"].items():
        row = table.loc[(rules.label("base"), t)]
        assert row["acc"].startswith(f"{v['acc']:.3f} [") and row["acc_plus"].startswith(f"{v['acc_plus']:.3f} [")
        assert row["score"].startswith(f"{v['score']:.1f} [")
        assert table.loc[(rules.label("oracle"), t)]["score"].startswith("200.0 [")
    deltas = C.subtask_deltas(boot, [("oracle", "base")])["oracle − base"]
    assert set(deltas) == set(E.MME_SUBTASKS)
    for t, v in ref["subtasks"].items():            # the subtask deltas add up to the total's
        assert deltas[t]["delta"] == pytest.approx(200 - v["score"])
    assert sum(d["delta"] for d in deltas.values()) == pytest.approx(boot.delta("oracle", "base", "mme_total")["delta"])


def test_interval_frame_has_every_model_with_its_interval():
    from m3po_utils.stats import Bootstrap  # noqa: F401  (the type C.bootstrap returns)
    rng = np.random.default_rng(1)
    stats = {"a": rng.integers(0, 5, size=(2, 30, len(E.STATS))).astype(float),
             "b": rng.integers(0, 5, size=(2, 30, len(E.STATS))).astype(float)}
    boot = C.bootstrap(stats, n_boot=100)
    df = C.interval_frame(boot, ["mme_total"])
    assert list(df.index) == ["a", "b"] and list(df.columns) == ["mme_total", "mme_total_lo", "mme_total_hi"]
    assert (df["mme_total_lo"] <= df["mme_total"]).all() and (df["mme_total"] <= df["mme_total_hi"]).all()


def test_answers_with_constraints_get_their_longer_budget(monkeypatch):
    """A description in capital letters is spelled nearly letter by letter by the shapes world's tokenizer: the
    IFEval-style questions are answered with ``long_answer_tokens`` new tokens (``evaluation.long_answer_tokens``),
    every other family with the caller's budget, and each answer lands on its own question."""
    from m3po_utils import evaluation as C

    calls = []

    def fake(model, processor, images, questions, max_new_tokens, batch_size, progress):
        calls.append((max_new_tokens, list(questions)))
        return [f"{q} @ {max_new_tokens}" for q in questions]

    monkeypatch.setattr(C, "greedy_answers", fake)
    qs = [{"family": "ifeval", "scene": 0, "question": "Describe the image. Write in capital letters."},
          {"family": "describe", "scene": 0, "question": "Describe the image."},
          {"family": "ifeval", "scene": 1, "question": "Describe the image. Write in capital letters."}]
    out = C.answer_questions(None, None, ["img0", "img1"], qs, max_new_tokens=48, long_answer_tokens=160)
    assert [c[0] for c in calls] == [48, 160] and "ifeval" in C.LONG_ANSWER_FAMILIES
    assert out == [f"{qs[0]['question']} @ 160", "Describe the image. @ 48", f"{qs[2]['question']} @ 160"]
