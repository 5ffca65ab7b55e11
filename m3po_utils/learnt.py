""""What we learnt here": each notebook's closing paragraph, written from the results it records.

Every number in these sentences comes from the stage's own results dict (the one ``results.record_results`` writes), so
the conclusion changes with the run and never goes stale. ``summary(name, results)`` returns Markdown; the
notebook displays it and records it as ``results["learnt"]``; notebook 06's leads ``report.md``.

A difference is called a change only when its paired 95 % interval excludes 0; otherwise the sentence says the
run cannot tell (and, for notebook 06, how small a difference it could have told).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from m3po_utils import results as R
from m3po_utils import rules
from m3po_utils import wording as W
from m3po_utils.evaluation import KEY_METRICS
from m3po_utils.rounds import spend_sentence
from m3po_utils.scoring import HEADLINE

HEADER = "## What we learnt here"


def _f(x: Any, digits: int = 3) -> str:
    try:
        return f"{float(x):.{digits}f}"
    except (TypeError, ValueError):
        return "n/a"


def _pct(x: Any) -> str:
    """A share in words that never rounds to certainty (:func:`m3po_utils.wording.share`)."""
    return W.share(x)


Delta = R.Delta | R.PairedDelta


def _interval(d: Delta, digits: int = 3) -> str:
    return f"{float(d.delta):+.{digits}f} [{float(d.lo):+.{digits}f}, {float(d.hi):+.{digits}f}]"


def _digits(metric: str) -> int:
    return 1 if metric.startswith("mme_") else 3


def _bullets(lines: list[str]) -> str:
    """One Markdown bullet per sentence, each starting with a capital (a share can open a sentence)."""
    return "\n".join(f"- {line[0].upper()}{line[1:]}" for line in lines if line)


# ------------------------------------------------------------------------------------------ stages

def _world(r: R.WorldResults) -> list[str]:
    lv = r.lvlm
    if lv is None:
        return ["This preset loads its base model from the hub: nothing was trained here, and the shapes world's "
                "held-out checks do not apply."]
    acc = {s: lv.pope[s].accuracy for s in ("random", "popular", "adversarial") if s in lv.pope}
    lines = [f"The base model answers held-out POPE questions at {' / '.join(_f(a) for a in acc.values())} "
             f"({' / '.join(acc)}); adversarial is {abs(100 * (acc['random'] - acc['adversarial'])):.1f} points "
             f"{'below' if acc['adversarial'] < acc['random'] else 'above'} random."]
    adversarial = lv.pope.get("adversarial")
    if adversarial is not None:
        lines.append(f"{_pct(adversarial.partner_share)} of its adversarial false positives name a "
                     "co-occurrence partner of a shape in the scene (the errors the world's prior is built to cause).")
    fam = {k.removeprefix("acc_"): v for k, v in lv.families.items()}
    if fam:
        best, worst = max(fam, key=fam.get), min(fam, key=fam.get)
        lines.append(f"Across instruction families its greedy accuracy runs from {_f(fam[worst])} ({worst}) to "
                     f"{_f(fam[best])} ({best}) — a family's verifier checks the whole answer, the clause after a "
                     "yes or no included, so a yes/no family scores below POPE, which reads only the yes or no; "
                     f"descriptions hallucinate at CHAIR_i {_f(lv.describe.chair_i)}.")
    if r.clip is not None:
        clip = r.clip.retrieval
        lines.append(f"The tiny CLIP retrieves the right description first for {_pct(clip.top1)} of held-out "
                     f"images (chance {_pct(clip.chance_top1)}).")
    return lines


def _candidates(r: R.CandidatesResults) -> list[str]:
    g, d = r.generation, r.diversity
    lines = [f"{g.rows} candidates were sampled, {g.n_candidates} for each of {g.prompts} prompts, in "
             f"{_f(g.seconds, 1)} s; {_pct(r.eos_share)} ended with their end-of-sequence token."]
    if d.share_prompts_with_spread is not None:
        lines.append(f"A prompt gets {_f(d.mean_distinct, 1)} distinct answers on average; on "
                     f"{_pct(d.share_prompts_with_spread)} of prompts the verifier scores its candidates "
                     "differently (partial credit counts), the prompts a MAS-ranked pair can come from; "
                     f"{_pct(d.candidate_accuracy)} of all candidates are fully correct.")
    cov = r.coverage_by_n
    if cov.k and cov.share_with_pair is not None:
        lines.append(f"A stricter pair, a fully correct candidate beside one that is not (what the oracle trains "
                     f"on): with {cov.k[0]} candidate(s) per prompt {_pct(cov.share_with_pair[0])} of prompts have "
                     f"one; with {cov.k[-1]}, {_pct(cov.share_with_pair[-1])}.")
    return lines


def _mas(r: R.MasResults) -> list[str]:
    sp = r.spearman
    lines = [f"Against the verifier's truth, Spearman correlation is {_f(sp.clip if sp else None)} for CLIP, "
             f"{_f(sp.judge if sp else None)} for the judge and {_f(sp.mas if sp else None)} for their weighted "
             "mean, MAS."]
    top1 = r.agreement["mas"].top1 if r.agreement and "mas" in r.agreement else None
    if top1 is not None:
        lines.append(f"Over the prompts whose candidates the verifier scores differently, the candidate MAS ranks "
                     f"first has the prompt's best truth score {_pct(top1)} of the time (a tie for first place "
                     "counts the share of its candidates that are best).")
    contrast = {k: v for k, v in (r.contrast or {}).items() if isinstance(v, dict) and "CLIP" in v}
    if contrast:
        clip = sum(v["CLIP"] for v in contrast.values()) / len(contrast)
        lines.append(f"On minimal pairs (a right and a wrong answer to one question) CLIP ranks the right one higher "
                     f"{_pct(clip)} of the time on average over {len(contrast)} families — a coin flip scores 50 %.")
    ws = r.weight_sweep
    if ws is not None and ws.rows:
        rows = {float(x.clip_weight): x for x in ws.rows}
        best, preset = ws.best_clip_weights, float(ws.preset_clip_weight)
        chosen = (f"CLIP weight {best[0]:g} is best" if len(best) == 1 else
                  f"CLIP weights {', '.join(f'{w:g}' for w in best)} tie")
        at = rows.get(preset)
        lines.append(f"On {ws.prompts} validation prompts {chosen}: its M3PO pairs are in the right direction "
                     f"{_pct(rows[best[0]].ordered)} of the time"
                     + (f" (the preset's weight {preset:g}: {_pct(at.ordered)}; CLIP alone: "
                        f"{_pct(rows[1.0].ordered)})" if at and 1.0 in rows else "") + ".")
    cov = r.coverage
    lines.append(f"{cov.missing} of {cov.candidates} candidates have no MAS (bound {_pct(cov.max_missing)}).")
    return lines


def _confidence(r: R.ConfidenceResults) -> list[str]:
    lines = [f"The log-probs recorded while sampling equal a separate scoring pass to "
             f"{float(r.max_abs_logprob_diff):.1e} nats over {r.checked_sequences} sequences: no second pass "
             "is needed."]
    cal = r.calibration
    if cal is not None:
        lines.append(f"A confident answer (in the more likely half of its prompt's candidates by summed log P) is "
                     f"wrong {_pct(cal.p_wrong_given_confident)} of the time, an unsure one "
                     f"{_pct(cal.p_wrong_given_unsure)}; {_pct(cal.prompts_with_confident_wrong)} of all prompts "
                     "have a confident wrong candidate — the negatives M3PO looks for.")
    le = [v.length_vs_sum for v in (r.length_effect or {}).values() if v.length_vs_sum is not None]
    if le:
        lines.append(f"The summed log P falls with length (mean correlation {_f(sum(le) / len(le), 2)} over "
                     f"{len(le)} families): it favours short answers.")
    return lines


def _selection(r: R.SelectionResults) -> list[str]:
    st = r.strategies
    m3, bw = st.get("m3po"), st.get("best_worst")
    lines = [f"At α = {r.alpha}, δ = {r.delta}, M3PO built {int(m3.pairs if m3 else 0)} pairs from "
             f"{r.prompts} prompts; {_pct(m3.differs_from_reference if m3 else None)} of them differ from "
             "best-vs-worst."]
    if m3 is not None and bw is not None and m3.hard_negative_rate is not None and bw.hard_negative_rate is not None:
        more = W.compare_shares(m3.hard_negative_rate, bw.hard_negative_rate) == "more than"
        lines.append(f"Its rejected answer is one the model is confident in (a hard negative) for "
                     f"{_pct(m3.hard_negative_rate)} of pairs, against {_pct(bw.hard_negative_rate)} for "
                     "best-vs-worst" + (": the confidence term shifts the negatives as intended." if more else
                                        ": at these settings the confidence term does not raise that share by "
                                        "more than 2 points."))
    if m3 is not None and m3.rejected_wrong is not None:
        others = {k: v.rejected_wrong for k, v in st.items() if k != "m3po" and v.rejected_wrong is not None}
        lines.append(f"{_pct(m3.rejected_wrong)} of M3PO's rejected answers are wrong by the verifier, "
                     f"{_pct(bw.rejected_wrong if bw else None)} of best-vs-worst's"
                     + ((" and every other rule's" if min(others.values()) == 1 else
                         f" and at least {_pct(min(others.values()))} of every other rule's")
                        + ": with a judge this close to the verifier, this checks the MAS ordering rather than "
                          "telling the rules apart." if others and min(others.values()) >= 0.9 else "."))
    leads = {(d.strategy, d.family): d for d in r.yes_no_leads}
    lm, lb = leads.get(("m3po", "existence")), leads.get(("best_worst", "existence"))
    if lm and lb:
        how = {"more than": "harder than", "fewer than": "less than", "about as many as": "about as hard as"}[
            W.compare_shares(lm.push_to_no, lb.push_to_no)]
        lines.append(f'On existence questions the rejected answer says "yes" in {_pct(lm.rejected_yes)} of '
                     f'M3PO\'s pairs and {_pct(lb.rejected_yes)} of best-vs-worst\'s (the chosen one in '
                     f'{_pct(lm.chosen_yes)} and {_pct(lb.chosen_yes)}), so by rejected-"yes" minus chosen-"yes" '
                     f'M3PO pushes towards "no" {how} best-vs-worst ({lm.push_to_no:+.2f} against '
                     f'{lb.push_to_no:+.2f}); in {_pct(lm.same_answer)} of M3PO\'s existence pairs both answers give '
                     f'the same yes/no and differ only in what follows. Whether the model\'s yes-ratio moves is '
                     'notebook 06\'s measurement.')
    lines.append(f"The penalty is in nats and MAS in [0, 1]: at α ≈ {_f(r.unit_scales.alpha_balance, 3)} "
                 "the median penalty equals the median MAS gap, which is why a small α already saturates the "
                 "hard-negative rate.")
    kinds = r.confidence_kinds
    if kinds.get("m3po, summed log P") and kinds.get("m3po, mean log P per token"):
        lines.append(f"The summed log P favours short answers (length–log P ρ = {_f(r.length_logp_spearman, 2)}); "
                     f"the selection uses the {r.confidence} (selection.confidence).")
    return lines


def units_lesson(scales: Mapping[str, Any], sweep: Mapping[str, Any] | None = None) -> str:
    """Notebook 04's first lesson, from ``selection.unit_scales`` (and the α sweep's hard-negative rates)."""
    text = (f"Half the MAS gaps are below {_f(scales['median_mas_gap'], 2)} (90 % below "
            f"{_f(scales['p90_mas_gap'], 2)}), on a scale that ends at 1. {_pct(scales['share_penalised'])} of the "
            f"candidates are penalised, and the median of those is {_f(scales['median_excess_nats'], 2)} nats less "
            f"likely than Rw beyond δ (90 % within {_f(scales['p90_excess_nats'], 1)}). So at "
            f"α ≈ {_f(scales['alpha_balance'], 3)} the median penalty already equals the median MAS gap: for most "
            "penalised candidates a larger α no longer leaves any gap to win, and Rl is picked among the "
            "unpenalised ones.")
    rates = (sweep or {}).get("hard_negative_rate")
    alphas = (sweep or {}).get("alpha")
    if rates and alphas:
        text += (" The sweep above shows it: the hard-negative rate goes "
                 + ", ".join(f"{_pct(h)} at α = {a:g}" for a, h in zip(alphas, rates, strict=True)) + ".")
    return text


def length_lesson(kinds: Mapping[str, Mapping[str, Any]], length_logp_spearman: float, delta_mean: float) -> str:
    """Notebook 04's second lesson, from ``selection.confidence_kinds`` (rows keyed by selection)."""
    s_sum = kinds.get("m3po, summed log P", {})
    s_mean = kinds.get("m3po, mean log P per token", {})
    bw = kinds.get("best_worst (α = 0)", {})
    text = (f"Within a prompt, a candidate's length and its summed log P correlate at ρ = "
            f"{_f(length_logp_spearman, 2)} (mean over prompts whose candidates differ in length): every token costs "
            "log-probability, so the sum calls short answers confident.")
    if s_sum and s_mean:
        text += (f" With the summed log P, M3PO's rejected answers are {_f(s_sum['len_rejected'], 1)} tokens long on "
                 f"average (chosen {_f(s_sum['len_chosen'], 1)}; best-vs-worst rejects {_f(bw.get('len_rejected'), 1)}); "
                 f"with the mean per token (δ = {_f(delta_mean, 4)} nats per token) they are "
                 f"{_f(s_mean['len_rejected'], 1)} tokens long, and the rejected answer is shorter than the chosen "
                 f"one in {_pct(s_sum['rejected_shorter'])} against {_pct(s_mean['rejected_shorter'])} of pairs.")
        if "rejected_wrong" in s_sum:
            text += (f" The verifier calls {_pct(s_sum['rejected_wrong'])} (sum) and {_pct(s_mean['rejected_wrong'])} "
                     "(mean) of the rejected answers wrong.")
    return text


def _dpo(r: R.DpoResults) -> list[str]:
    lines = [f"Every strategy trained on {r.pairs_per_strategy} pairs for {r.steps} steps; LoRA trains "
             f"{_pct(r.lora.trainable_share)} of the parameters."]
    if r.retokenisation_match_share is not None:
        check = r.reference_check
        lines.append(f"The stored reference log-probs could be reused for {_pct(r.retokenisation_match_share)} "
                     "of the DPO responses" + (
                         f"; with them the loss equals TRL's own reference pass to {float(check.max_abs_diff):.1e}."
                         if check is not None and check.max_abs_diff is not None
                         else ": none could, so TRL computed every reference itself."))
    val = r.validation
    if val and "base" in val:
        base = val["base"].score
        rows = {s: v.score for s, v in val.items() if s != "base" and v.score is not None}
        if rows and base is not None:
            winners, _ = W.best(rows)
            top = (f"the best adapter, {winners[0]}, {_f(rows[winners[0]])}" if len(winners) == 1 else
                   f"{', '.join(winners)} tie at the top with {_f(rows[winners[0]])}")
            above = [s for s, v in rows.items() if v > base]
            lines.append(f"On the validation scenes the base scores {_f(base)}; {top}; "
                         f"{len(above)} of {len(rows)} adapters score above the base. "
                         "These are single-seed point values on validation scenes — notebook 06 measures the "
                         "methods with intervals on the evaluation split.")
    return lines


def _by(rows: Sequence[R.Delta], comparison: str, metric: str) -> R.Delta | None:
    return next((d for d in rows if d.comparison == comparison and d.metric == metric), None)


def _moved(d: Delta) -> bool:
    return float(d.lo) > 0 or float(d.hi) < 0


def _better(metric: str, d: Delta) -> bool:
    return (float(d.delta) > 0) == HEADLINE.get(metric, True)


def _said(d: Delta, higher_is_better: bool = True) -> str:
    """One word for a difference: "better" / "worse" when its interval excludes 0, else "within the noise"."""
    if not _moved(d):
        return "within the noise"
    return "better" if (float(d.delta) > 0) == higher_is_better else "worse"


def evaluation_conclusion(r: R.EvaluationResults) -> list[str]:
    """Notebook 06's conclusion: what moved, by how much, against which control, whether the benchmark could
    move at all (the oracle), and the smallest difference this run could detect."""
    rows = r.deltas
    metrics = [m for m in HEADLINE if any(d.metric == m for d in rows)]
    label = {k: rules.label(k) for k in ("base", "best_of_n", "best_worst", "random", "oracle", "m3po")}
    lines = []
    control = "best_of_n" if any(d.comparison == "m3po − best_of_n" for d in rows) else "base"
    moved, flat = [], []
    for m in metrics:
        d = _by(rows, f"m3po − {control}", m)
        if d is None:
            continue
        (moved if _moved(d) else flat).append(
            f"{m} {_interval(d, _digits(m))}" + (f" ({'better' if _better(m, d) else 'worse'})" if _moved(d) else ""))
    lines.append(f"**M3PO against {label[control]}** (paired 95 % intervals): "
                 + (f"it changed {'; '.join(moved)}. " if moved else "no metric changed beyond its interval. ")
                 + (f"Within the noise: {'; '.join(flat)}." if flat else ""))
    for other in ("best_worst", "random"):
        ds = [(m, _by(rows, f"m3po − {other}", m)) for m in metrics]
        changed = [f"{m} {_interval(d, _digits(m))} ({'better' if _better(m, d) else 'worse'})"
                   for m, d in ds if d is not None and _moved(d)]
        if any(d is not None for _, d in ds):
            lines.append(f"Against {label[other]}, M3PO " + (f"differs on {'; '.join(changed)}."
                                                              if changed else "differs on no metric."))
    oracle = [(m, _by(rows, "oracle − base", m)) for m in metrics]
    oracle = [(m, d) for m, d in oracle if d is not None]
    if oracle:
        can = [f"{m} {_interval(d, _digits(m))} ({'better' if _better(m, d) else 'worse'})"
               for m, d in oracle if _moved(d)]
        cannot = [m for m, d in oracle if not _moved(d)]
        lines.append("**Can the benchmarks move?** Training on verifier-chosen pairs (the oracle) "
                     + (f"moves {'; '.join(can)} against the base" if can else "moves no metric against the base")
                     + (f"; it does not move {', '.join(cannot)}, so no selection rule can be judged on "
                        f"{'it' if len(cannot) == 1 else 'them'} in this run." if cannot else "."))
    subtasks = r.mme_subtask_deltas or {}
    split = [(who, subtasks[f"{who} − base"]) for who in ("oracle", "m3po") if f"{who} − base" in subtasks]
    if split:
        lines.append("The MME-style total's change from the base, per subtask: " + "; ".join(
            f"{label[who]} " + ", ".join(f"{t} {_interval(d, 1)} ({_said(d)})" for t, d in
                                         sorted(ds.items(), key=lambda kv: -float(kv[1].delta)))
            for who, ds in split) + ".")
    lines += ifeval_lines(r, label)
    lines += dialogue_lines(r, label)
    mde = [d for d in r.mde if d.comparison == f"m3po − {control}"]
    if mde:
        lines.append(f"The smallest difference M3PO − {label[control]} this run would detect (80 % power): "
                     + "; ".join(f"{d.metric} {_f(d.mde, _digits(d.metric))}" for d in mde)
                     + ". Differences below these are no evidence either way.")
    lines += _power_by_scenes(r, control, label[control])
    lines += _testbed_bars(r)
    lines.append("Two notebooks that run on request take this further: notebook 10 varies α and δ, the judge's "
                 "noise and the number of candidates (`./m3po run --from 10 --to 10`), and notebook 11 maps where "
                 "M3PO's hard negatives help or hurt (`./m3po run --from 11 --to 11`).")
    return lines


VERDICT_CONTROLS = ("best_of_n", "best_worst", "random")
VERDICT_HEADER = "## Verdict"


def verdict(ev: R.EvaluationResults, selection: R.SelectionResults | None = None, mas: R.MasResults | None = None,
            base_seed: int | None = None, judge_noise: float | None = None) -> str:
    """Notebook 06's and report.md's opening: does M3PO beat each control here, on which benchmark and by how much
    (paired 95 % intervals of notebook 06), then why, from this run's own measurements — how often M3PO's pair is
    each control's (notebook 04), how close MAS is to the truth at this judge noise (notebook 02), the share of the
    oracle's gain each method recovers, and whether the push towards "no" that notebook 04's pairs predict shows
    in notebook 06's yes-ratio."""
    label = {k: rules.label(k) for k in (*VERDICT_CONTROLS, "oracle", "m3po")}
    short = {"best_of_n": "best-of-N SFT", "best_worst": "best-vs-worst DPO", "random": "random-pair DPO",
             "oracle": "the oracle"}
    name = {"pope_adversarial_f1": "POPE-adversarial F1", "mme_total": "the MME-style total"}
    metrics = [m for m in KEY_METRICS if any(d.metric == m for d in ev.deltas)]
    per, better_than, worse_than = [], [], []
    for c in VERDICT_CONTROLS:
        ds = [(m, _by(ev.deltas, f"m3po − {c}", m)) for m in metrics]
        ds = [(m, d) for m, d in ds if d is not None]
        if not ds:
            continue
        up = [m for m, d in ds if _moved(d) and _better(m, d)]
        down = [m for m, d in ds if _moved(d) and not _better(m, d)]
        better_than += [c] if up and not down else []
        worse_than += [c] if down else []
        per.append(f"against {label[c]}: " + "; ".join(
            f"{name.get(m, m)} {W.difference(d.delta, d.lo, d.hi, HEADLINE.get(m, True), _digits(m))}"
            for m, d in ds))
    if not per:
        return ""
    seed = f" (seed-{base_seed} base)" if base_seed is not None else ""
    n = len(per)
    if len(better_than) == n:
        head = f"Yes: on this run{seed} M3PO beats all {n} controls on at least one headline benchmark"
    elif better_than:
        head = (f"In part: on this run{seed} M3PO beats {', '.join(label[c] for c in better_than)} but not "
                f"the other {n - len(better_than)} of its {n} controls")
    else:
        head = f"No: on this run{seed} M3PO beats none of its {n} controls on POPE-adversarial F1 or the MME-style total"
    if worse_than:
        head += f", and is worse than {', '.join(label[c] for c in worse_than)} on at least one"
    lines = [f"**Does M3PO beat its controls here?** {head} (M3PO − control, paired 95 % intervals; "
             + " — ".join(per) + ")."]
    why = []
    agree = {a["reference"]: a for a in (selection.m3po_agreement or [])} if selection is not None else {}
    if agree:
        parts = []
        for ref, a in agree.items():
            v = a.get("same_rejected_verdict")
            parts.append(f"{short.get(ref, ref)} on {W.share(a['same_pair'])} of {a['prompts']} prompts (same chosen "
                         f"answer on {W.share(a['same_chosen'])}"
                         + (f", same rejected yes/no on {W.share(v)} of the {a['yes_no_prompts']} yes/no prompts"
                            if v is not None else "") + ")")
        why.append("M3PO's pair (chosen and rejected answer) is the one of " + "; of ".join(parts)
                   + ": two rules can only teach differently where their pairs differ, and POPE and MME read only "
                   "the yes/no.")
    if mas is not None and mas.spearman is not None and mas.spearman.mas is not None:
        noise = ("" if judge_noise is None else
                 f" at judge noise σ = {judge_noise:g}" + (" (the judge is the verifier's score, rounded)"
                                                           if judge_noise == 0 else ""))
        why.append(f"MAS correlates with the verifier's truth at Spearman ρ = {_f(mas.spearman.mas)}{noise}, so "
                   "every rule ranks candidates by nearly the truth.")
    oracle = ev.oracle or {}
    for m in metrics:
        row = oracle.get(m)
        if not row or not row.get("moves"):
            continue
        got = [f"{short.get(k, label[k])} {W.share(row[k])}" for k in (*VERDICT_CONTROLS, "m3po") if row.get(k) is not None]
        if got:
            gain = W.interval(row["gain"], row["gain_lo"], row["gain_hi"], _digits(m))
            why.append(f"The oracle moves {name.get(m, m)} by {gain} (better) "
                       f"over the base; the share of that gain each method recovers: " + ", ".join(got) + ".")
    yes = {k: ev.metrics.get(k, {}).get("pope_adversarial_yes_ratio") for k in ("m3po", "best_worst")}
    leads = {(d.strategy, d.family): d for d in (selection.yes_no_leads if selection is not None else [])}
    lm, lb = leads.get(("m3po", "existence")), leads.get(("best_worst", "existence"))
    if lm and lb and all(v is not None for v in yes.values()):
        predicted = W.compare_shares(lm.push_to_no, lb.push_to_no)
        dy = float(yes["m3po"].mean) - float(yes["best_worst"].mean)
        measured = "about the same" if abs(dy) <= 0.01 else ("lower" if dy < 0 else "higher")
        expect = {"more than": "lower", "fewer than": "higher", "about as many as": "about the same"}[predicted]
        why.append(f"Notebook 04's existence pairs push towards \"no\" {lm.push_to_no:+.2f} (M3PO) against "
                   f"{lb.push_to_no:+.2f} (best-vs-worst), which predicts {'' if expect == 'about the same' else 'a '}{expect} "
                   "POPE-adversarial yes-ratio for "
                   f"M3PO; measured here {_f(yes['m3po'].mean)} against {_f(yes['best_worst'].mean)} ({measured}"
                   + (", as predicted)." if measured == expect else ", not as predicted)."))
    if why:
        lines.append("**Why, from this run:** " + " ".join(why))
    return "\n\n".join(lines)


IFEVAL_SPLIT_WORDS = {"seen": "types the base trained on", "held": "types held out of its training"}
IFEVAL_HEADLINE_WORDS = {"trained types right": "ifeval_seen_right",
                         "held-out types followed": "ifeval_held_prompt_strict"}


def ifeval_lines(r: R.EvaluationResults, label: Mapping[str, str]) -> list[str]:
    """The IFEval-style instructions in two sentences: every method's strict prompt-level accuracy on the constraint
    types the base trained on and on the held-out ones (and whether held-out lies below seen for every method), then
    whether the oracle moves each and how M3PO compares with best-vs-worst DPO."""
    table = r.ifeval or {}
    splits = [s for s in IFEVAL_SPLIT_WORDS if any(f"{s}_prompt_strict" in v for v in table.values())]
    if not splits:
        return []
    methods = [m for m in table if all(f"{s}_prompt_strict" in table[m] for s in splits)]
    acc = {m: {s: float(table[m][f"{s}_prompt_strict"].mean) for s in splits} for m in methods}
    lines = ["**IFEval-style instructions** (share of prompts whose every constraint is followed, strict; "
             + " / ".join(IFEVAL_SPLIT_WORDS[s] for s in splits) + "): "
             + "; ".join(f"{label.get(m, m)} {' / '.join(_f(acc[m][s]) for s in splits)}" for m in methods) + "."]
    if len(splits) == 2 and methods:
        lower = [m for m in methods if acc[m]["held"] < acc[m]["seen"]]
        if len(lower) == len(methods):
            lines[0] += " Every method follows the held-out types less often than the trained ones."
        elif not lower:
            lines[0] += " No method follows the held-out types less often than the trained ones."
        else:
            lines[0] += (" The held-out types are followed less often than the trained ones by "
                         + ", ".join(label.get(m, m) for m in lower) + ", not by "
                         + ", ".join(label.get(m, m) for m in methods if m not in lower) + ".")
    right = [m for m in methods if "seen_right" in table[m]]
    if right:
        lines.append("Right in format *and* content on the trained types (the project's IFT rule): "
                     + "; ".join(f"{label.get(m, m)} {_f(table[m]['seen_right'].mean)}" for m in right) + ".")
    parts = []
    for who, other in (("oracle", "base"), ("m3po", "best_worst")):
        ds = [(name, _by(r.deltas, f"{who} − {other}", k)) for name, k in IFEVAL_HEADLINE_WORDS.items()]
        ds = [(name, d) for name, d in ds if d is not None]
        if ds:
            parts.append(f"{label.get(who, who)} − {label.get(other, other)}: "
                         + ", ".join(f"{name} {_interval(d)} ({_said(d)})" for name, d in ds))
    if parts:
        lines.append("On the IFEval-style headline metrics, " + "; ".join(parts) + ".")
    return lines


def dialogue_lines(r: R.EvaluationResults, label: Mapping[str, str]) -> list[str]:
    """Two-turn dialogues in two sentences: every method's share of follow-ups right in context and of made-up shapes
    carried over from the first answer, then the oracle's and M3PO's (against best-vs-worst) differences."""
    table = r.dialogue or {}
    methods = [m for m in table if {"right", "carried"} <= set(table[m])]
    if not methods:
        return []
    lines = ["**Two-turn dialogues** (follow-ups right in context / made-up shapes of the first answer carried into "
             "the follow-up, lower is better): "
             + "; ".join(f"{label.get(m, m)} {_f(table[m]['right'].mean)} / {_f(table[m]['carried'].mean)}"
                         for m in methods) + "."]
    parts = []
    for who, other in (("oracle", "base"), ("m3po", "best_worst")):
        ds = [(name, _by(r.deltas, f"{who} − {other}", f"dialogue_{name}"), up)
              for name, up in (("right", True), ("carried", False))]
        ds = [(name, d, up) for name, d, up in ds if d is not None]
        if ds:
            parts.append(f"{label.get(who, who)} − {label.get(other, other)}: "
                         + ", ".join(f"{name} {_interval(d)} ({_said(d, up)})" for name, d, up in ds))
    if parts:
        lines.append("On the dialogues, " + "; ".join(parts) + ".")
    return lines


def _testbed_bars(r: R.EvaluationResults) -> list[str]:
    """How many of the testbed's bars (``m3po_utils.testbed``) this run meets, and what missed."""
    rows = [x for x in r.testbed_bars or [] if x.met is not None]
    if not rows:
        return []
    missed = [x for x in rows if not x.met]
    line = f"**The testbed's own bars**: this run meets {len(rows) - len(missed)} of the {len(rows)} it measured"
    if not missed:
        return [line + "."]
    line += "; not met: " + "; ".join(f"{x.bar.split(' ', 1)[-1]} ({', '.join(x.misses)})" for x in missed) + "."
    if any(x.bar.startswith(("5", "6")) for x in missed):
        line += (" A metric the oracle moves less than the bar, or a difference below the detectable one, is weak "
                 "ground for ranking the methods on it.")
    return [line]


def _power_by_scenes(r: R.EvaluationResults, control: str, name: str) -> list[str]:
    """How the detectable difference against ``control`` fell from the fewest to all of the scenes, next to the
    fall that scene variance alone would give (sqrt(fewest / all))."""
    rows = [d for d in r.mde_by_scenes or [] if d.comparison == f"m3po − {control}"]
    parts = []
    for metric in dict.fromkeys(d.metric for d in rows):
        by = sorted((int(d.scenes), float(d.mde)) for d in rows if d.metric == metric)
        (n0, m0), (n1, m1) = by[0], by[-1]
        if n0 == n1 or m0 <= 0:
            continue
        parts.append(f"{metric} {_f(m0, _digits(metric))} on {n0} scenes, {_f(m1, _digits(metric))} on {n1} "
                     f"(×{m1 / m0:.2f}; ×{(n0 / n1) ** 0.5:.2f} if only the scenes varied)")
    if not parts:
        return []
    return [f"The detectable difference against {name} from the fewest to all of the scenes: " + "; ".join(parts)
            + ". Where it falls less than scene variance alone would make it, the seeds' spread limits it, and "
              "more seeds, not more scenes, would lower it."]


def _experiments(r: R.ExperimentsResults) -> list[str]:
    lines = []
    neg = r.negatives_vs_sft or []
    if neg:
        changed = [f"{d.comparison}: {d.metric} {_interval(d, _digits(d.metric))} "
                   f"({'better' if _better(d.metric, d) else 'worse'})" for d in neg if _moved(d)]
        lines.append("Hard negatives against the chosen answers alone (best-of-N SFT on the same prompts): "
                     + ("; ".join(changed) if changed else "no metric changed beyond its interval") + ".")
    if r.grid:
        lines.append(f"The α/δ grid trained {len(r.grid)} settings; its table above gives each cell's metrics with "
                     "intervals, and the α = 0 row is the confidence-free control.")
    lines.append(f"The sweep trained or reused {r.distinct_models} distinct models in "
                 f"{_f(r.sweep_seconds / 60, 1)} minutes.")
    return lines


def _hard_negatives(r: R.HardNegResults) -> list[str]:
    lines = []
    checks = [p for e in r.experiments.values() for p in e.predictions]
    run = [p for p in checks if p.outcome != "not run"]
    if run:
        count = {k: sum(p.outcome == k for p in run) for k in ("as predicted", "opposite", "not shown")}
        lines.append(f"Of the {len(run)} predicted comparisons that ran, {count['as predicted']} came out as predicted, "
                     f"{count['opposite']} the opposite way and {count['not shown']} could not be told apart from 0 "
                     "at this budget.")
        wrong = [f"{p.setting}: {p.comparison} on {p.metric} ({p.predicted} predicted, measured "
                 f"{_f(p.delta, 4)} [{_f(p.lo, 4)}, {_f(p.hi, 4)}])" for p in run if p.outcome == "opposite"]
        if wrong:
            lines.append("Predictions the measurement contradicts: " + "; ".join(wrong) + ".")
    if r.map_paragraph:
        lines.append(r.map_paragraph)
    if r.totals:
        t = r.totals
        lines.append(f"The {len(r.experiments)} experiment{'' if len(r.experiments) == 1 else 's'} hold "
                     f"{int(t['conditions'])} conditions and {int(t['models'])} distinct models (a model whose pairs "
                     f"and loss two conditions share is trained once); training and evaluating them took "
                     f"{_f(t['train_and_eval_seconds'] / 60, 1)} minutes.")
    return lines


def _rounds(r: R.RoundsResults) -> list[str]:
    lines = list(r.lines)
    run = [p for p in r.predictions if p.outcome != "not run"]
    if run:
        count = {k: sum(p.outcome == k for p in run) for k in ("as predicted", "opposite", "not shown")}
        lines.append(f"Of the {len(run)} predictions written before the first run, {count['as predicted']} came out as "
                     f"predicted, {count['opposite']} the opposite way and {count['not shown']} could not be told "
                     "apart from 0.")
        wrong = [f"{p.prediction} (measured: {p.measured})" for p in run if p.outcome == "opposite"]
        if wrong:
            lines.append("Contradicted: " + "; ".join(wrong) + ".")
    if r.adaptive is not None:
        a = r.adaptive
        ad, fx = a.pools["adaptive"], a.pools["fixed"]
        d = a.delta.get("pope_adversarial_f1", {})
        lines.append(f"Adaptive N spent {a.total} candidates on {a.prompts} prompts ({_f(ad['per_prompt'], 1)} per "
                     f"prompt, at most {a.n_max}); the fixed pool with the same total gave M3PO {int(fx['pairs'])} pairs "
                     f"against the adaptive pool's {int(ad['pairs'])}, hard-negative rate {_pct(fx['hard_negative_rate'])} "
                     f"against {_pct(ad['hard_negative_rate'])}; trained on them, adaptive − fixed in POPE-adversarial "
                     f"F1 is {W.difference(d.get('delta'), d.get('lo'), d.get('hi'), True, 3)}.")
        spend = {f: row["adaptive"] for f, row in a.families.items()}
        if spend:
            lines.append(spend_sentence(spend))
    secs = list(r.round_seconds.values())
    if secs:
        lines.append(f"A round of {len(r.chosen)} rules took {_f(min(secs) / 60, 1)} to {_f(max(secs) / 60, 1)} "
                     "minutes on this machine (as first computed; a re-run reads them back).")
    return lines


STAGES: dict[str, Callable[[Any], list[str]]] = {
    "00_world": _world, "01_candidates": _candidates, "02_mas": _mas, "03_confidence": _confidence,
    "04_selection": _selection, "05_dpo": _dpo, "06_evaluation": evaluation_conclusion,
    "07_rounds": _rounds, "10_experiments": _experiments, "11_hard_negatives": _hard_negatives,
}


def summary(name: str, results: Mapping[str, Any] | R.Record) -> str:
    """The "What we learnt here" paragraph of notebook ``name`` as Markdown, from its results (the dict the notebook
    is about to record, or its typed record): the dict is read through the stage's schema
    (:mod:`m3po_utils.results`), so a field the schema does not know stops here, naming it."""
    if name not in STAGES:
        raise KeyError(f"no summary for {name!r}; known: {sorted(STAGES)}")
    record = results if isinstance(results, R.Record) else R.parse(name, R.atomic_json(dict(results)))
    return f"{HEADER}\n\n{_bullets(STAGES[name](record))}\n"
