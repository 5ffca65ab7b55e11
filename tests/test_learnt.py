"""'What we learnt here': generated from a stage's results, every number taken from them, honest about intervals."""

import pytest
from records import complete

from m3po_utils import learnt as L


def summary(stage, partial):
    """The stage's paragraph from a record that holds ``partial`` (every other field neutral)."""
    return L.summary(stage, complete(stage, partial))


def _d(comparison, metric, delta, lo, hi):
    return {"comparison": comparison, "metric": metric, "delta": delta, "lo": lo, "hi": hi}


def test_a_change_is_claimed_only_when_its_interval_excludes_zero():
    r = {"deltas": [_d("m3po − best_of_n", "pope_adversarial_f1", 0.021, 0.004, 0.038),
                    _d("m3po − best_of_n", "mme_total", -3.0, -9.5, 2.5),
                    _d("m3po − best_of_n", "chair_i", -0.02, -0.03, -0.01),
                    _d("m3po − best_worst", "pope_adversarial_f1", 0.001, -0.01, 0.012),
                    _d("oracle − base", "pope_adversarial_f1", 0.05, 0.03, 0.07),
                    _d("oracle − base", "mme_total", 1.0, -4.0, 6.0)],
         "mde": [{"comparison": "m3po − best_of_n", "metric": "mme_total", "mde": 11.94, "observed": -3.0}]}
    text = summary("06_evaluation", r)
    assert text.startswith(L.HEADER)
    assert "it changed pope_adversarial_f1 +0.021 [+0.004, +0.038] (better); chair_i -0.020 [-0.030, -0.010] " \
           "(better)" in text                                # lower CHAIR_i is better
    assert "Within the noise: mme_total -3.0 [-9.5, +2.5]" in text
    assert "Against best-vs-worst DPO (α = 0), M3PO differs on no metric." in text
    assert "moves pope_adversarial_f1 +0.050 [+0.030, +0.070] (better) against the base; it does not move " \
           "mme_total, so no selection rule can be judged on it" in text
    assert "mme_total 11.9" in text and "notebook 10" in text and "on request" in text
    # a change against another control names its direction: a higher CHAIR_i is worse
    r["deltas"].append(_d("m3po − best_worst", "chair_i", 0.035, 0.010, 0.060))
    assert "M3PO differs on chair_i +0.035 [+0.010, +0.060] (worse)." in summary("06_evaluation", r)


def test_the_mme_total_is_split_by_subtask_largest_change_first():
    sub = {"count": {"delta": 25.4, "lo": 19.0, "hi": 31.8}, "position": {"delta": -8.4, "lo": -13.4, "hi": -3.7},
           "color": {"delta": 5.3, "lo": -1.3, "hi": 11.8}}
    r = {"deltas": [_d("oracle − base", "mme_total", 22.3, 10.0, 33.0)], "mde": [],
         "mme_subtask_deltas": {"oracle − base": sub, "random − base": sub}}
    text = summary("06_evaluation", r)
    assert ("per subtask: oracle (verifier-ranked DPO) count +25.4 [+19.0, +31.8] (better), color +5.3 [-1.3, "
            "+11.8] (within the noise), position -8.4 [-13.4, -3.7] (worse).") in text
    assert text.count("count +25.4") == 1                  # only the oracle and M3PO are spelled out, not random
    assert "per subtask" not in summary("06_evaluation", r | {"mme_subtask_deltas": {}})


def test_the_detectable_difference_by_scenes_is_read_against_the_scene_only_fall():
    def row(metric, scenes, mde):
        return {"comparison": "m3po − best_of_n", "metric": metric, "scenes": scenes, "mde": mde}

    r = {"deltas": [_d("m3po − best_of_n", "mme_total", 1.0, -5.0, 7.0)], "mde": [],
         "mde_by_scenes": [row("mme_total", 400, 13.3), row("mme_total", 100, 20.1), row("mme_total", 200, 15.8),
                           row("pope_adversarial_f1", 100, 0.0293), row("pope_adversarial_f1", 400, 0.0175),
                           {"comparison": "m3po − random", "metric": "mme_total", "scenes": 100, "mde": 99.0}]}
    text = summary("06_evaluation", r)
    assert ("to all of the scenes: mme_total 20.1 on 100 scenes, 13.3 on 400 (×0.66; ×0.50 if only the scenes varied); "
            "pope_adversarial_f1 0.029 on 100 scenes, 0.018 on 400 (×0.60; ×0.50") in text
    assert "99.0" not in text                                  # only the control's comparison is read
    assert "fewest to all" not in summary("06_evaluation", r | {"mde_by_scenes": []})


def test_nothing_moved_is_said_plainly():
    r = {"deltas": [_d("m3po − best_of_n", "ift", 0.0, -0.01, 0.01)], "mde": []}
    assert "no metric changed beyond its interval" in summary("06_evaluation", r)


def test_stage_summaries_cite_their_results():
    world = {"lvlm": {"pope": {"random": {"accuracy": 0.9}, "popular": {"accuracy": 0.85},
                               "adversarial": {"accuracy": 0.81, "partner_share": 0.62}},
                      "families": {"acc_count": 0.7, "acc_describe": 0.1}, "describe": {"chair_i": 0.05}},
             "clip": {"retrieval": {"top1": 0.4, "chance_top1": 0.025}}}
    text = summary("00_world", world)
    assert "0.900 / 0.850 / 0.810" in text and "9.0 points below random" in text and "62 %" in text
    assert "from 0.100 (describe) to 0.700 (count)" in text
    assert "nothing was trained here" in summary("00_world", {"clip": {}})
    sel = {"alpha": 0.5, "delta": 0.1, "prompts": 100,
           "strategies": {"m3po": {"pairs": 80, "differs_from_reference": 0.3, "hard_negative_rate": 0.4},
                          "best_worst": {"hard_negative_rate": 0.6}}}
    text = summary("04_selection", sel)
    assert "80 pairs from 100 prompts" in text and "does not raise that share" in text
    sweep = {"prompts": 200, "preset_clip_weight": 0.3, "best_clip_weights": [0.1],
             "rows": [{"clip_weight": w, "ordered": o} for w, o in ((0.0, 0.9), (0.1, 0.95), (0.3, 0.92), (1.0, 0.6))]}
    text = summary("02_mas", {"spearman": {}, "weight_sweep": sweep})
    assert "On 200 validation prompts CLIP weight 0.1 is best: its M3PO pairs are in the right direction 95 % " \
           "of the time (the preset's weight 0.3: 92 %; CLIP alone: 60 %)." in text
    with pytest.raises(KeyError, match="no summary for '07_x'"):
        summary("07_x", {})


def test_notebook_04_lessons_print_the_runs_numbers():
    from m3po_utils import learnt

    scales = {"median_mas_gap": 0.136, "p90_mas_gap": 0.689, "share_penalised": 0.352, "median_excess_nats": 1.445,
              "p90_excess_nats": 6.73, "alpha_balance": 0.0941}
    text = learnt.units_lesson(scales, {"alpha": [0.0, 0.5], "hard_negative_rate": [0.266, 0.61]})
    assert "0.14" in text and "1.45 nats" in text and "α ≈ 0.094" in text and "27 % at α = 0" in text
    kinds = {"best_worst (α = 0)": {"len_rejected": 10.9},
             "m3po, summed log P": {"len_rejected": 10.72, "len_chosen": 12.54, "rejected_shorter": 0.339,
                                    "rejected_wrong": 0.979},
             "m3po, mean log P per token": {"len_rejected": 11.53, "rejected_shorter": 0.308, "rejected_wrong": 0.991}}
    text = learnt.length_lesson(kinds, -0.156, 0.0089)
    assert "ρ = -0.16" in text and "10.7 tokens" in text and "11.5 tokens" in text and "34 % against 31 %" in text
    r = {"alpha": 0.5, "delta": 0.1, "prompts": 3, "strategies": {}, "unit_scales": scales,
         "confidence_kinds": kinds, "length_logp_spearman": -0.156, "confidence": "sum"}
    out = summary("04_selection", r)
    assert "α ≈ 0.094" in out and "uses the sum (selection.confidence)" in out


def test_selection_summary_says_which_strategy_pushes_existence_towards_no():
    base = {"alpha": 0.5, "delta": 0.1, "prompts": 3, "strategies": {}}
    lead = {"strategy": "m3po", "family": "existence", "pairs": 240, "chosen_yes": 0.483, "rejected_yes": 0.822,
            "push_to_no": 0.339, "same_answer": 0.55}
    bw = lead | {"strategy": "best_worst", "rejected_yes": 0.707, "push_to_no": 0.224}
    out = summary("04_selection", base | {"yes_no_leads": [lead, bw]})
    assert 'says "yes" in 82 % of M3PO\'s pairs and 71 % of best-vs-worst\'s' in out
    assert "(the chosen one in 48 % and 48 %)" in out and 'towards "no" harder than best-vs-worst (+0.34 against +0.22)' in out
    assert "in 55 % of M3PO's existence pairs both answers give the same yes/no" in out
    assert "hallucinated" not in out                     # a cause the numbers beside it do not show
    out = summary("04_selection", base | {"yes_no_leads": [lead | {"push_to_no": 0.1}, bw]})
    assert 'towards "no" less than best-vs-worst' in out
    out = summary("04_selection", base | {"yes_no_leads": [lead | {"push_to_no": 0.235}, bw]})
    assert 'towards "no" about as hard as best-vs-worst' in out        # 1.1 points apart: no direction claimed
    assert "existence questions" not in summary("04_selection", base)


# ------------------------------------------------------------------------------------------ the verdict

def _verdict_inputs(f1_bvw=(0.001, -0.01, 0.012), same_pair=0.43):
    from records import record
    deltas = [_d("m3po − best_of_n", "pope_adversarial_f1", -0.003, -0.008, 0.002),
              _d("m3po − best_of_n", "mme_total", -3.0, -9.5, 2.5),
              _d("m3po − best_worst", "pope_adversarial_f1", *f1_bvw),
              _d("m3po − best_worst", "mme_total", 1.0, -4.0, 6.0),
              _d("m3po − random", "pope_adversarial_f1", 0.0, -0.01, 0.01),
              _d("m3po − random", "mme_total", 0.0, -5.0, 5.0)]
    yes = {k: {"pope_adversarial_yes_ratio": {"mean": v, "lo": v - 0.01, "hi": v + 0.01}}
           for k, v in (("m3po", 0.540), ("best_worst", 0.542))}
    oracle = {"pope_adversarial_f1": {"gain": 0.075, "gain_lo": 0.05, "gain_hi": 0.1, "moves": True, "m3po": 0.9,
                                      "best_worst": 0.9989, "best_of_n": 1.0, "random": 0.95},
              "mme_total": {"gain": 3.0, "gain_lo": -2.0, "gain_hi": 8.0, "moves": False, "m3po": 0.1}}
    ev = record("06_evaluation", {"deltas": deltas, "metrics": yes, "oracle": oracle})
    lead = {"strategy": "m3po", "family": "existence", "pairs": 240, "chosen_yes": 0.48, "rejected_yes": 0.89,
            "push_to_no": 0.41, "same_answer": 0.3}
    sel = record("04_selection", {
        "yes_no_leads": [lead, lead | {"strategy": "best_worst", "rejected_yes": 0.62, "push_to_no": 0.14}],
        "m3po_agreement": [{"reference": "best_worst", "prompts": 1067, "same_chosen": 1.0, "same_rejected": 0.43,
                            "same_pair": same_pair, "yes_no_prompts": 600, "same_rejected_verdict": 0.86}]})
    mas = record("02_mas", {"spearman": {"clip": 0.3, "judge": 0.97, "mas": 0.97}})
    return ev, sel, mas


def test_the_verdict_answers_for_every_control_with_its_direction():
    ev, sel, mas = _verdict_inputs()
    text = L.verdict(ev, sel, mas, base_seed=0, judge_noise=0.0)
    assert text.startswith("**Does M3PO beat its controls here?** No: on this run (seed-0 base) M3PO beats none "
                           "of its 3 controls")
    assert "against best-of-N SFT: POPE-adversarial F1 -0.003 [-0.008, +0.002], within the noise" in text
    assert "worse than" not in text
    # why: the pair agreement with its denominators, MAS at this noise, the oracle's gain where it moves
    assert "is the one of best-vs-worst DPO on 43 % of 1067 prompts (same chosen answer on 100 %, same rejected " \
           "yes/no on 86 % of the 600 yes/no prompts)" in text
    assert "ρ = 0.970 at judge noise σ = 0 (the judge is the verifier's score, rounded)" in text
    assert "best-vs-worst DPO more than 99 %" in text and "best-of-N SFT 100 %" in text   # 0.9989 is not 100 %
    assert "moves the MME-style total" not in text                 # the oracle does not move it: no share of it
    # 04 predicts a lower yes-ratio for M3PO (it pushes harder towards "no"); 06 measures 0.540 vs 0.542
    assert "predicts a lower POPE-adversarial yes-ratio for M3PO; measured here 0.540 against 0.542 (about the " \
           "same, not as predicted)" in text


def test_the_verdict_in_part_and_worse():
    ev, sel, mas = _verdict_inputs(f1_bvw=(0.02, 0.01, 0.03))
    assert "In part: on this run M3PO beats best-vs-worst DPO (α = 0) but not the other 2 of its 3 controls" in \
        L.verdict(ev, sel, mas)
    assert "higher (better)" in L.verdict(ev, sel, mas)
    ev, sel, mas = _verdict_inputs(f1_bvw=(-0.13, -0.168, -0.089))
    text = L.verdict(ev, None, None)
    assert "No: on this run M3PO beats none" in text and ", and is worse than best-vs-worst DPO (α = 0)" in text
    assert "-0.130 [-0.168, -0.089], lower (worse)" in text
    assert "M3PO's pair" not in text and "Spearman" not in text    # no 02 / 04 records: no reason from them
    ev, sel, mas = _verdict_inputs(same_pair=0.9996)
    assert "on more than 99 % of 1067 prompts" in L.verdict(ev, sel, mas)


def test_a_tie_is_never_called_best():
    val = {"base": {"score": 0.5}, "m3po": {"score": 0.6}, "best_worst": {"score": 0.6}, "random": {"score": 0.4}}
    text = summary("05_dpo", {"validation": val})
    assert "best_worst, m3po tie at the top with 0.600" in text or "m3po, best_worst tie at the top with 0.600" in text
    assert "the best adapter" not in text and "2 of 3 adapters score above the base" in text
    val["m3po"]["score"] = 0.7
    assert "the best adapter, m3po, 0.700" in summary("05_dpo", {"validation": val})
