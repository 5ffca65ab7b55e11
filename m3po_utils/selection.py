"""Stage 04: pairs for every selection rule, written for TRL, and what the rules' choices look like.

The rules themselves — the M3P-Score, best-vs-worst, random pairs, best-of-N, the verifier-ranked oracle — and the
machinery that applies them (:func:`~m3po_utils.rules.select`) live in :mod:`m3po_utils.rules`, their registry.
This module writes each rule's pairs to ``run_dir/pairs/<strategy>/`` in one format (TRL's vision DPO columns
``images``, ``prompt``, ``chosen``, ``rejected`` plus the scores behind each choice) and computes what notebook
04 shows: a worked example, the units of the score's two terms, the summed against the per-token log P, each
rule's statistics and which way its pairs push the yes/no questions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from m3po_utils import dialogue, rules
from m3po_utils.io import AtomicDir
from m3po_utils.models.generate import quiet_datasets
from m3po_utils.rules import (
    Selection,
    group_candidates,
    select,
    select_pair,
    selection_stats,
    truth_by_prompt,
)
from m3po_utils.rundir import RunDir
from m3po_utils.shapes import YES_NO_FAMILIES, yes_no
from m3po_utils.stats import spearman

# --------------------------------------------------------------------------- pairs on disk

def user_turn(instruction: str) -> list[dict]:
    """TRL's conversational prompt of an instruction: one user turn with the image, or a dialogue's turns (the
    history in the prompt, so DPO trains on the last answer only)."""
    return dialogue.messages(instruction, image_part={"type": "image", "text": None})


def assistant_turn(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def pair_rows(table, sel: Selection) -> list[dict]:
    """One row per selected pair: TRL's vision-DPO columns (without images) plus the scores behind it.

    ``table`` is the candidates table joined with MAS (pandas; columns prompt_id, cand_idx, image, family,
    instruction, text, token_ids, logprob_sum, mas and, in the shapes world, truth).
    """
    by_prompt = {str(pid): g.sort_values("cand_idx").reset_index(drop=True)
                 for pid, g in table.groupby("prompt_id", sort=True)}
    rows = []
    for c in sel.choices:
        g = by_prompt[c.prompt_id]
        for n, (w, lo) in enumerate(c.pairs):
            cw = g.iloc[w]
            cl = g.iloc[lo] if lo is not None else None
            row = {
                "prompt_id": c.prompt_id, "pair": n, "image": cw["image"], "family": cw["family"],
                "instruction": cw["instruction"], "prompt": user_turn(cw["instruction"]),
                "chosen": assistant_turn(cw["text"]), "rejected": assistant_turn(cl["text"]) if cl is not None else [],
                "chosen_text": cw["text"], "rejected_text": cl["text"] if cl is not None else "",
                "chosen_idx": int(cw["cand_idx"]), "rejected_idx": int(cl["cand_idx"]) if cl is not None else -1,
                "chosen_token_ids": list(cw["token_ids"]),
                "rejected_token_ids": list(cl["token_ids"]) if cl is not None else [],
                "mas_chosen": float(cw["mas"]), "mas_rejected": float(cl["mas"]) if cl is not None else float("nan"),
                "logp_chosen": float(cw["logprob_sum"]),
                "logp_rejected": float(cl["logprob_sum"]) if cl is not None else float("nan"),
                "s_score": c.s_scores[n] if n < len(c.s_scores) else float("nan"),
            }
            if "truth" in g:
                row["truth_chosen"] = float(cw["truth"])
                row["truth_rejected"] = float(cl["truth"]) if cl is not None else float("nan")
            rows.append(row)
    return rows


def write_pairs(run_dir, sel: Selection, table, load_image, info: dict | None = None):
    """Write ``pairs/<strategy>/`` atomically: a ``datasets`` table with an ``images`` column + ``info.json``."""
    import json

    import datasets


    rows = pair_rows(table, sel)
    if not rows:
        raise ValueError(f"strategy {sel.strategy!r} selected no pairs (skipped: {sel.skipped}); "
                         "lower selection.min_margin or check the MAS scores")
    import io

    def png(ref: str) -> dict:
        buf = io.BytesIO()
        load_image(ref).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    encoded = {ref: png(ref) for ref in {r["image"] for r in rows}}
    meta = {"strategy": sel.strategy, "alpha": sel.alpha, "delta": sel.delta, "pairs": len(rows),
            "prompts": len(sel.choices), "skipped": sel.skipped} | (info or {})
    folder = RunDir(run_dir).pairs(sel.strategy)
    with AtomicDir(folder) as tmp, quiet_datasets():    # no progress bar per strategy in the notebook
        ds = datasets.Dataset.from_list([r | {"images": [encoded[r["image"]]]} for r in rows])
        ds = ds.cast_column("images", datasets.Sequence(datasets.Image()))
        ds.save_to_disk(str(tmp / "data"))
        (tmp / "info.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return folder


# --------------------------------------------------------------------------- stage helpers (notebook 04)

def worked_example(g: dict, alpha: float, delta: float, truth: Sequence[float] | None = None, rows: int = 10):
    """One prompt's candidates as notebook 04's worked example: MAS, log P, the two terms of the M3P-Score and
    ``role`` — Rw, M3PO's Rl and the α = 0 (best-vs-worst) Rl — those rows first, then the other distinct answers
    by score. The index is the candidate's position in the prompt's group."""
    import pandas as pd

    mas, lp = np.asarray(g["mas"], float), np.asarray(g["logp"], float)
    w, l_m3 = select_pair(mas, lp, alpha, delta, g["text"])
    _, l_bw = select_pair(mas, lp, 0.0, delta, g["text"])
    role = [""] * len(mas)
    role[l_bw] = "Rl at α = 0"
    role[l_m3] = "Rl (M3PO)" if l_m3 != l_bw else "Rl (M3PO and α = 0)"
    role[w] = "Rw"
    df = pd.DataFrame({"role": role, "text": g["text"], "MAS": mas, "log P": lp, "MAS gap": mas[w] - mas,
                       "penalty": alpha * np.maximum(0.0, lp[w] - lp - delta),
                       "m3p_scores": rules.m3p_scores(mas, lp, alpha, delta, g["text"])})
    if truth is not None:
        df["truth"] = np.asarray(truth, float)
    order = {"Rw": 0, "Rl (M3PO)": 1, "Rl (M3PO and α = 0)": 1, "Rl at α = 0": 2, "": 3}
    df = df.assign(_o=df["role"].map(order)).sort_values(["_o", "m3p_scores"], ascending=[True, False], kind="stable")
    return df.drop_duplicates("text").drop(columns="_o").head(rows)


def unit_scales(groups: dict[str, dict], delta: float) -> dict[str, float]:
    """Why a small α already saturates the hard-negative rate: the two terms of the M3P-Score in their units.

    Over every non-preferred candidate: the MAS gap MAS(Rw) − MAS(Rj), in [0, 1], and the log P excess
    max(0, log P(Rw) − log P(Rj) − δ), in nats, which α multiplies. ``alpha_balance`` is the α at which the
    median penalised candidate's penalty equals the median MAS gap: above it, the penalty outweighs the gap for
    most penalised candidates, so Rl is picked among the unpenalised (hard) ones.
    """
    gaps, excess = [], []
    for g in groups.values():
        mas, lp = np.asarray(g["mas"], float), np.asarray(g["logp"], float)
        if mas.size < 2 or not np.isfinite(mas).any():
            continue
        w = rules.best_index(mas, lp)
        others = np.arange(mas.size) != w
        gaps.append((mas[w] - mas)[others])
        excess.append(np.maximum(0.0, lp[w] - lp - delta)[others])
    if not gaps:
        raise ValueError("no prompt has two candidates with a MAS: nothing to compare")
    gap, ex = np.concatenate(gaps), np.concatenate(excess)
    keep = np.isfinite(gap)
    gap, ex = gap[keep], ex[keep]
    pen = ex > 0
    med_gap = float(np.median(gap))
    med_ex = float(np.median(ex[pen])) if pen.any() else 0.0
    return {"median_mas_gap": med_gap, "p90_mas_gap": float(np.quantile(gap, 0.9)),
            "share_penalised": float(pen.mean()), "median_excess_nats": med_ex,
            "p90_excess_nats": float(np.quantile(ex[pen], 0.9)) if pen.any() else 0.0,
            "alpha_balance": med_gap / med_ex if med_ex > 0 else float("inf")}


def confidence_kinds(table, alpha: float, delta_sum: float, delta_mean: float, min_margin: float = 0.0,
                     seed: int = 0):
    """What the summed log P does to the pairs, against the mean per token: one row per selection.

    Rows: best-vs-worst (α = 0), M3PO with the summed log P (δ = ``delta_sum`` nats) and with the mean per token
    (δ = ``delta_mean`` nats per token). Columns: mean token length of Rw and Rl, the share of pairs whose Rl is
    shorter than Rw, the within-prompt Spearman correlation of length and summed log P (the bias itself), the
    hard-negative rate and, with ground truth, the share of rejected answers that are wrong.
    """
    import pandas as pd

    g_sum, g_mean = group_candidates(table, "sum"), group_candidates(table, "mean")
    if not all("length" in g for g in g_sum.values()):
        raise ValueError("the candidates table has no 'length' column (notebook 01 writes it)")
    truth = truth_by_prompt(g_sum, table)
    corr = [spearman(g["length"], g["logp"]) for g in g_sum.values() if np.ptp(g["length"]) > 0]
    corr = float(np.nanmean(corr)) if corr else float("nan")
    rows = {}
    for name, groups, strategy, a, d in (("best_worst (α = 0)", g_sum, "best_worst", 0.0, delta_sum),
                                         ("m3po, summed log P", g_sum, "m3po", alpha, delta_sum),
                                         ("m3po, mean log P per token", g_mean, "m3po", alpha, delta_mean)):
        sel = select(groups, strategy, a, d, min_margin, seed=seed)
        lw, ll = [], []
        for c in sel.choices:
            for w, lo in c.pairs:
                if lo is not None:
                    lw.append(groups[c.prompt_id]["length"][w])
                    ll.append(groups[c.prompt_id]["length"][lo])
        lw, ll = np.array(lw), np.array(ll)
        st = selection_stats(groups, sel, truth=truth)
        rows[name] = {"pairs": st["pairs"], "len_chosen": float(lw.mean()) if lw.size else float("nan"),
                      "len_rejected": float(ll.mean()) if ll.size else float("nan"),
                      "rejected_shorter": float((ll < lw).mean()) if lw.size else float("nan"),
                      "hard_negative_rate": st["hard_negative_rate"]} | (
                          {"rejected_wrong": st["rejected_wrong"]} if truth is not None else {})
    out = pd.DataFrame(rows).T
    out.attrs["length_logp_spearman"] = corr
    return out


def verdicts(table) -> list[str]:
    """Each candidate's yes/no verdict on a yes/no prompt (``"yes"`` / ``"no"``, the verifier's reading), ``""``
    elsewhere: what a rule restricted to the opposite verdict compares."""
    fam = table["family"] if "family" in table else [""] * len(table)
    return [(yes_no(t) or "") if f in YES_NO_FAMILIES else "" for t, f in zip(table["text"], fam, strict=True)]


def scored_candidates(run_dir):
    """Candidates (notebook 01) joined with their MAS (notebook 02), one row per candidate, as pandas."""
    run = RunDir(run_dir)
    cands = run.load_candidates().to_pandas()
    mas = run.load_mas()
    keep = [c for c in ("prompt_id", "cand_idx", "mas", "truth", "clip_raw", "clip_score", "judge_score", "judge_ok")
            if c in mas.columns]
    table = cands.merge(mas[keep], on=["prompt_id", "cand_idx"], how="left", validate="one_to_one")
    table["verdict"] = verdicts(table)
    missing = int(table["mas"].isna().sum())
    if missing == len(table):
        raise ValueError("no candidate has a MAS; rerun notebook 02 for this run directory")
    return table



def select_all(groups: dict[str, dict], alpha: float, delta: float, min_margin: float, k: int = 1,
               seed: int = 0, truth: dict[str, np.ndarray] | None = None, strategies: Sequence[str] | None = None,
               opposite_verdict: bool = False) -> dict[str, Selection]:
    """Every rule of ``strategies`` (default: the main series' rules, ``rules.main_names()``; the SFT-only control is
    always added) on the same prompts (``m3po`` at α, δ; the others as :mod:`m3po_utils.rules` defines them); a
    rule that ranks by the ground truth only when ``truth`` is given."""
    names = dict.fromkeys([*(strategies if strategies is not None else rules.main_names()), *rules.sft_only_names()])
    return {s: select(groups, s, alpha, delta, min_margin, k, seed, truth, opposite_verdict) for s in names
            if truth is not None or not rules.rule(s).needs_truth}


def strategy_table(groups: dict[str, dict], sels: dict[str, Selection], truth=None):
    """One row per strategy: pairs, skips, hard-negative rate, MAS gap and (shapes world) truth checks."""
    import pandas as pd

    ref = sels.get("best_worst")
    rows = {}
    for name, sel in sels.items():
        row = {"pairs": sel.n_pairs} | {f"skip_{k}": v for k, v in sel.skipped.items()}
        if not rules.rule(name).sft_only:
            row |= selection_stats(groups, sel, reference=ref, truth=truth)
        elif truth is not None:
            chosen = [truth[c.prompt_id][c.pairs[0][0]] for c in sel.choices if c.pairs]
            row["chosen_right"] = float(np.mean([t >= 1.0 for t in chosen])) if chosen else 0.0
        rows[name] = row
    return pd.DataFrame(rows).T


def yes_no_leads(groups: dict[str, dict], sels: dict[str, Selection], families: dict[str, str],
                 yes_no_families: Sequence[str] = YES_NO_FAMILIES):
    """Which way each strategy's pairs push the yes/no questions, per strategy and yes/no family.

    ``chosen_yes`` / ``rejected_yes``: share of the pairs whose chosen / rejected answer says "yes" (the verifier's
    reading: "no" if its first sentence has no/not, else "yes" if it has yes); ``same_answer``: share whose two
    answers say the same yes or no and differ only in the justification. DPO raises the chosen answer and lowers
    the rejected one, so ``push_to_no`` = ``rejected_yes − chosen_yes`` is the push towards "no". Strategies
    without rejected answers (``best_of_n``) are left out; ``families`` maps prompt_id to family.
    """
    import pandas as pd

    rows = []
    for name, sel in sels.items():
        counts: dict[str, list[int]] = {}
        for c in sel.choices:
            fam = families.get(c.prompt_id)
            if fam not in yes_no_families:
                continue
            text = groups[c.prompt_id]["text"]
            for w, rej in c.pairs:
                if rej is None:
                    continue
                a, b = yes_no(text[w]), yes_no(text[rej])
                n = counts.setdefault(fam, [0, 0, 0, 0])
                n[0] += 1
                n[1] += a == "yes"
                n[2] += b == "yes"
                n[3] += a is not None and a == b
        rows += [{"strategy": name, "family": fam, "pairs": n[0], "chosen_yes": n[1] / n[0],
                  "rejected_yes": n[2] / n[0], "push_to_no": (n[2] - n[1]) / n[0], "same_answer": n[3] / n[0]}
                 for fam, n in sorted(counts.items(), key=lambda kv: list(yes_no_families).index(kv[0]))]
    cols = ["strategy", "family", "pairs", "chosen_yes", "rejected_yes", "push_to_no", "same_answer"]
    return pd.DataFrame(rows, columns=cols).set_index(["strategy", "family"])


def disagreements(table, a: Selection, b: Selection, k: int = 6):
    """Prompts where two strategies reject different answers, with the scores (and truth) of both."""
    import pandas as pd

    by = {str(p): g.sort_values("cand_idx").reset_index(drop=True) for p, g in table.groupby("prompt_id")}
    pb = {c.prompt_id: c.pairs for c in b.choices}
    rows = []
    for c in a.choices:
        if not c.pairs or not pb.get(c.prompt_id) or c.pairs[0] == pb[c.prompt_id][0]:
            continue
        g = by[c.prompt_id]
        (w, la), (_, lb) = c.pairs[0], pb[c.prompt_id][0]
        row = {"prompt_id": c.prompt_id, "instruction": g["instruction"][w], "chosen": g["text"][w],
               f"rejected_{a.strategy}": g["text"][la], f"logp_{a.strategy}": g["logprob_sum"][la],
               f"rejected_{b.strategy}": g["text"][lb], f"logp_{b.strategy}": g["logprob_sum"][lb],
               "logp_chosen": g["logprob_sum"][w]}
        if "truth" in g:
            row |= {f"truth_{a.strategy}": g["truth"][la], f"truth_{b.strategy}": g["truth"][lb]}
        rows.append(row)
    return pd.DataFrame(rows).head(k), len(rows)


def pair_agreement(groups: dict[str, dict], sels: dict[str, Selection], families: dict[str, str],
                   reference: str = "best_worst"):
    """How often each strategy's pair is the reference's (best-vs-worst), per strategy and instruction family.

    Over the prompts where both have a pair: ``same_chosen`` (the chosen texts are equal), ``same_rejected`` (the
    rejected texts are equal), ``same_pair`` (both), and — on the yes/no families, where POPE and MME read only the
    verdict — ``same_rejected_verdict`` (the rejected answers say the same yes or no; NaN elsewhere). For M3PO,
    ``1 − same_pair`` is where its confidence term changed the pair: two rules can only differ in what they teach
    where their pairs differ, and only in the verdict where their rejected verdicts differ.
    """
    import pandas as pd

    if reference not in sels:
        raise ValueError(f"reference={reference!r} is not among the selections {list(sels)}")
    ref = {c.prompt_id: c.pairs[0] for c in sels[reference].choices if c.pairs}
    rows = []
    for name, sel in sels.items():
        if name == reference or rules.rule(name).sft_only:
            continue
        counts: dict[str, list[float]] = {}
        for c in sel.choices:
            if not c.pairs or c.prompt_id not in ref or c.pairs[0][1] is None:
                continue
            text = groups[c.prompt_id]["text"]
            (w, lo), (rw, rl) = c.pairs[0], ref[c.prompt_id]
            fam = families.get(c.prompt_id, "")
            n = counts.setdefault(fam, [0, 0, 0, 0, 0, 0])
            n[0] += 1
            n[1] += text[w] == text[rw]
            n[2] += text[lo] == text[rl]
            n[3] += text[w] == text[rw] and text[lo] == text[rl]
            if fam in YES_NO_FAMILIES:
                n[4] += 1
                n[5] += yes_no(text[lo]) == yes_no(text[rl])
        rows += [{"strategy": name, "family": fam, "prompts": n[0], "same_chosen": n[1] / n[0],
                  "same_rejected": n[2] / n[0], "same_pair": n[3] / n[0],
                  "same_rejected_verdict": n[5] / n[4] if n[4] else float("nan")}
                 for fam, n in sorted(counts.items())]
    cols = ["strategy", "family", "prompts", "same_chosen", "same_rejected", "same_pair", "same_rejected_verdict"]
    return pd.DataFrame(rows, columns=cols).set_index(["strategy", "family"])


def agreement_with(groups: dict[str, dict], sels: dict[str, Selection], families: dict[str, str],
                   strategy: str = "m3po", references: Sequence[str] = ("best_worst", "random", "oracle")) -> list[dict]:
    """How often ``strategy``'s pair is each reference's, over all families (:func:`pair_agreement` per reference,
    weighted by prompts; the rejected-verdict share over the yes/no families' prompts only). References without a
    selection, or with no shared prompt, are left out."""
    out = []
    for ref in references:
        if ref not in sels or strategy not in sels or ref == strategy:
            continue
        df = pair_agreement(groups, {ref: sels[ref], strategy: sels[strategy]}, families, reference=ref)
        if strategy not in df.index.get_level_values(0):
            continue
        d = df.loc[strategy]
        n = int(d["prompts"].sum())
        if not n:
            continue
        yn = d[d["same_rejected_verdict"].notna()]
        out.append({"reference": ref, "prompts": n,
                     **{k: float((d[k] * d["prompts"]).sum() / n) for k in ("same_chosen", "same_rejected",
                                                                             "same_pair")},
                     "yes_no_prompts": int(yn["prompts"].sum()),
                     "same_rejected_verdict": float((yn["same_rejected_verdict"] * yn["prompts"]).sum()
                                                    / yn["prompts"].sum()) if len(yn) else None})
    return out
