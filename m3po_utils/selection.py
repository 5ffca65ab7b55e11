"""M3P-Score pair selection and the baseline strategies (stage 04).

For one prompt's candidates with alignment scores MAS and log-probabilities log P under the base model, M3PO
takes the preferred response Rw = argmax MAS and, for every other candidate j,

    S(Rj) = (MAS(Rw) − MAS(Rj)) − α · max(0, log P(Rw) − log P(Rj) − δ)

and picks the dispreferred response Rl = argmax_j S(Rj) (arXiv 2508.12458, defaults α = 0.5, δ = 0.1). The
penalty only bites when the model is much *less* confident in Rj than in Rw, so Rl is a poor answer the model
is confident in: a hard negative. With α = 0 the rule is best-vs-worst by MAS.

Tie rules (deterministic): Rw is the highest MAS, ties broken by the higher log P, then the lower index.
Rl is the highest S, ties broken by the higher log P (the more confident mistake), then the lower index.
A candidate whose text equals Rw's text is never selectable as Rl (it would make a pair of identical answers).

Strategies written to ``run_dir/pairs/<strategy>/`` in one format (TRL's vision DPO columns ``images``,
``prompt``, ``chosen``, ``rejected`` plus the scores behind each choice):

* ``m3po`` — the rule above at the preset's α, δ;
* ``best_worst`` — best vs worst by MAS (reward-model DPO; α = 0);
* ``random`` — two random distinct candidates, ordered by MAS (vanilla DPO);
* ``best_of_n`` — the best candidate alone (chosen-only data for rejection-sampling SFT); ``rejected`` empty;
* ``oracle`` — best vs worst by the verifier's ground-truth score instead of MAS (shapes world only): what a
  perfect assessor would pick from the same candidates, the upper bound the other strategies are read against.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from m3po_utils.config import CONFIDENCE_KINDS, STRATEGIES, TRUTH_STRATEGIES, SelectionConfig
from m3po_utils.io import AtomicDir
from m3po_utils.models.generate import quiet_datasets
from m3po_utils.runs import RunDir
from m3po_utils.stats import spearman
from m3po_utils.world import YES_NO_FAMILIES, yes_no

SKIP_REASONS = ("fewer_than_two_distinct", "all_mas_equal", "margin_below_min", "mas_missing")


def _check_params(alpha: float, delta: float) -> None:
    for name, value in (("alpha", alpha), ("delta", delta)):
        if not isinstance(value, int | float) or math.isnan(value) or math.isinf(value) or value < 0:
            raise ValueError(f"{name}={value!r} is invalid: use a finite number >= 0 (paper defaults: alpha=0.5, "
                             "delta=0.1)")


def _as_arrays(mas: Sequence[float], logp: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    m, lp = np.asarray(mas, dtype=float), np.asarray(logp, dtype=float)
    if m.shape != lp.shape or m.ndim != 1:
        raise ValueError(f"mas and logp must be 1-D and of equal length, got shapes {m.shape} and {lp.shape}")
    if len(m) < 2:
        raise ValueError(f"need at least 2 candidates, got {len(m)}")
    if np.isnan(m).any() or np.isnan(lp).any():
        raise ValueError("mas and logp must not contain NaN; drop or re-score those candidates first")
    return m, lp


def best_index(mas: np.ndarray, logp: np.ndarray) -> int:
    """Rw: highest MAS, then highest log P, then lowest index."""
    return int(np.lexsort((np.arange(len(mas)), -logp, -mas))[0])


def m3p_scores(mas: Sequence[float], logp: Sequence[float], alpha: float = 0.5, delta: float = 0.1,
               texts: Sequence[str] | None = None) -> np.ndarray:
    """S(Rj) for every candidate of one prompt; Rw's entry (and any duplicate of Rw's text) is −inf."""
    _check_params(alpha, delta)
    m, lp = _as_arrays(mas, logp)
    w = best_index(m, lp)
    s = (m[w] - m) - alpha * np.maximum(0.0, lp[w] - lp - delta)
    s[w] = -np.inf
    if texts is not None:
        s[[j for j, t in enumerate(texts) if t == texts[w]]] = -np.inf
    return s


def _ranked(s: np.ndarray, lp: np.ndarray) -> np.ndarray:
    """Indices by S descending, ties by log P descending, then index ascending (selectable ones only)."""
    order = np.lexsort((np.arange(len(s)), -lp, -s))
    return order[np.isfinite(s[order])]


def select_pair(mas: Sequence[float], logp: Sequence[float], alpha: float = 0.5, delta: float = 0.1,
                texts: Sequence[str] | None = None) -> tuple[int, int]:
    """``(w, l)``: the preferred and dispreferred candidate of one prompt under the M3P-Score."""
    s = m3p_scores(mas, logp, alpha, delta, texts)
    ranked = _ranked(s, np.asarray(logp, dtype=float))
    if len(ranked) == 0:
        raise ValueError("no candidate differs from the best one; this prompt has no pair")
    return best_index(*_as_arrays(mas, logp)), int(ranked[0])


@dataclass
class PromptChoice:
    """What a strategy chose for one prompt: pairs of (chosen, rejected) indices or a skip reason."""

    prompt_id: str
    pairs: list[tuple[int, int | None]] = field(default_factory=list)
    skip: str | None = None
    s_scores: list[float] = field(default_factory=list)


def choose(prompt_id: str, mas: np.ndarray, logp: np.ndarray, texts: Sequence[str], strategy: str,
           alpha: float = 0.5, delta: float = 0.1, min_margin: float = 0.0, k: int = 1,
           rng: np.random.Generator | None = None) -> PromptChoice:
    """Apply ``strategy`` to one prompt's candidates (see the module docstring for the rules)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is unknown; choose one of {STRATEGIES}")
    if k < 1:
        raise ValueError(f"k={k} must be >= 1 (pairs per prompt)")
    out = PromptChoice(prompt_id)
    if np.isnan(mas).any():
        out.skip = "mas_missing"
        return out
    if len(set(texts)) < 2:
        out.skip = "fewer_than_two_distinct"
        return out
    if np.ptp(mas) == 0:
        out.skip = "all_mas_equal"
        return out
    w = best_index(mas, logp)
    if strategy == "best_of_n":
        out.pairs = [(w, None)]
        return out
    if strategy == "random":
        # uniform over pairs of distinct answers whose MAS differ by at least the margin, ordered by MAS
        rng = rng if rng is not None else np.random.default_rng(0)
        first: dict[str, int] = {}
        for j, t in enumerate(texts):
            first.setdefault(t, j)
        ids = sorted(first.values())
        valid = [(a, b) if mas[a] > mas[b] else (b, a) for x, a in enumerate(ids) for b in ids[x + 1:]
                 if mas[a] != mas[b] and abs(mas[a] - mas[b]) >= min_margin]
        if not valid:
            out.skip = "margin_below_min"
            return out
        picks = rng.choice(len(valid), size=min(k, len(valid)), replace=False)
        out.pairs = [(int(valid[p][0]), int(valid[p][1])) for p in picks]
        return out
    a = alpha if strategy == "m3po" else 0.0
    s = m3p_scores(mas, logp, a, delta, texts)
    ranked = _ranked(s, logp)
    # one pair per distinct rejected text
    seen: set[str] = set()
    for j in ranked:
        if texts[j] in seen:
            continue
        seen.add(texts[j])
        if mas[w] - mas[j] < min_margin or mas[w] == mas[j]:
            continue
        out.pairs.append((w, int(j)))
        out.s_scores.append(float(s[j]))
        if len(out.pairs) == k:
            break
    if not out.pairs:
        out.skip = "margin_below_min"
    return out


@dataclass
class Selection:
    """The result of one strategy over all prompts."""

    strategy: str
    alpha: float
    delta: float
    choices: list[PromptChoice]

    @property
    def n_pairs(self) -> int:
        return sum(len(c.pairs) for c in self.choices)

    @property
    def skipped(self) -> dict[str, int]:
        counts = Counter(c.skip for c in self.choices if c.skip)
        return {r: counts.get(r, 0) for r in SKIP_REASONS}


def group_candidates(table, confidence: str = "sum") -> dict[str, dict[str, np.ndarray | list]]:
    """Group a candidates table (pandas DataFrame with prompt_id, cand_idx, text, logprob_sum, mas) by prompt.

    ``logp`` — the confidence the M3P-Score reads — is the summed log P (``confidence="sum"``, the paper's) or the
    mean per token (``"mean"``, column ``logprob_mean``); ``length`` is each answer's token count where known."""
    if confidence not in CONFIDENCE_KINDS:
        raise ValueError(f"confidence={confidence!r}: use one of {CONFIDENCE_KINDS} (selection.confidence)")
    column = "logprob_sum" if confidence == "sum" else "logprob_mean"
    df = table.sort_values(["prompt_id", "cand_idx"])
    groups: dict[str, dict] = {}
    for pid, g in df.groupby("prompt_id", sort=True):
        groups[str(pid)] = {"idx": g["cand_idx"].to_numpy(), "text": g["text"].tolist(),
                            "mas": g["mas"].to_numpy(dtype=float), "logp": g[column].to_numpy(dtype=float)}
        if "length" in g:
            groups[str(pid)]["length"] = g["length"].to_numpy(dtype=float)
    return groups


def select(groups: dict[str, dict], strategy: str, alpha: float = 0.5, delta: float = 0.1,
           min_margin: float = 0.0, k: int = 1, seed: int = 0,
           truth: dict[str, np.ndarray] | None = None) -> Selection:
    """Apply ``strategy`` to every prompt (seeded for ``random``); ``oracle`` ranks by ``truth`` instead of MAS."""
    _check_params(alpha, delta)
    if min_margin < 0 or math.isnan(min_margin):
        raise ValueError(f"min_margin={min_margin!r} must be a number >= 0")
    if strategy in TRUTH_STRATEGIES:
        if truth is None:
            raise ValueError(f"strategy={strategy!r} ranks candidates by the verifier's ground truth, which only the "
                             "shapes world has (pass truth=truth_by_prompt(groups, table))")
        groups = {pid: g | {"mas": np.asarray(truth[pid], dtype=float)} for pid, g in groups.items()}
    rng = np.random.default_rng(seed)
    choices = [choose(pid, g["mas"], g["logp"], g["text"], strategy, alpha, delta, min_margin, k, rng)
               for pid, g in groups.items()]
    return Selection(strategy, alpha if strategy == "m3po" else 0.0, delta, choices)


def selection_stats(groups: dict[str, dict], sel: Selection, reference: Selection | None = None,
                    truth: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Hard-negative rate, mean MAS gap, share differing from ``reference`` and (shapes world) truth checks.

    * hard-negative rate: share of pairs with log P(Rl) ≥ log P(Rw) − δ (the model is about as confident in the
      rejected answer as in the chosen one);
    * mean MAS gap: mean MAS(Rw) − MAS(Rl);
    * differs: share of prompts whose first pair differs from ``reference``'s (e.g. α = 0);
    * rejected_wrong / chosen_right: with ground-truth scores, share of rejected answers that are not fully
      correct, and of chosen answers that are.
    """
    hard = gaps = n = wrong = right = 0
    for c in sel.choices:
        g = groups[c.prompt_id]
        for w, rej in c.pairs:
            if rej is None:
                continue
            n += 1
            hard += g["logp"][rej] >= g["logp"][w] - sel.delta
            gaps += g["mas"][w] - g["mas"][rej]
            if truth is not None:
                wrong += truth[c.prompt_id][rej] < 1.0
                right += truth[c.prompt_id][w] >= 1.0
    stats = {"pairs": float(n), "hard_negative_rate": hard / n if n else 0.0,
             "mean_mas_gap": gaps / n if n else 0.0}
    if truth is not None:
        stats["rejected_wrong"] = wrong / n if n else 0.0
        stats["chosen_right"] = right / n if n else 0.0
    if reference is not None:
        ref = {c.prompt_id: c.pairs[:1] for c in reference.choices}
        both = [c for c in sel.choices if c.pairs and ref.get(c.prompt_id)]
        stats["differs_from_reference"] = (sum(c.pairs[:1] != ref[c.prompt_id] for c in both) / len(both)
                                           if both else 0.0)
    return stats


# --------------------------------------------------------------------------- pairs on disk

def user_turn(instruction: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "text": None},
                                         {"type": "text", "text": instruction}]}]


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
                       "m3p_scores": m3p_scores(mas, lp, alpha, delta, g["text"])})
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
        w = best_index(mas, lp)
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


def scored_candidates(run_dir):
    """Candidates (notebook 01) joined with their MAS (notebook 02), one row per candidate, as pandas."""
    run = RunDir(run_dir)
    cands = run.load_candidates().to_pandas()
    mas = run.load_mas()
    keep = [c for c in ("prompt_id", "cand_idx", "mas", "truth", "clip_raw", "clip_score", "judge_score", "judge_ok")
            if c in mas.columns]
    table = cands.merge(mas[keep], on=["prompt_id", "cand_idx"], how="left", validate="one_to_one")
    missing = int(table["mas"].isna().sum())
    if missing == len(table):
        raise ValueError("no candidate has a MAS; rerun notebook 02 for this run directory")
    return table


def truth_by_prompt(groups: dict[str, dict], table) -> dict[str, np.ndarray] | None:
    """Ground-truth score per candidate in the groups' order (shapes world), else None."""
    if "truth" not in table:
        return None
    t = table.set_index(["prompt_id", "cand_idx"])["truth"]
    return {pid: np.array([t[(pid, int(i))] for i in g["idx"]]) for pid, g in groups.items()}


def select_all(groups: dict[str, dict], alpha: float, delta: float, min_margin: float, k: int = 1,
               seed: int = 0, truth: dict[str, np.ndarray] | None = None) -> dict[str, Selection]:
    """Every strategy on the same prompts (``m3po`` at α, δ; the baselines as defined in STRATEGIES); the
    ground-truth ``oracle`` only when ``truth`` is given."""
    return {s: select(groups, s, alpha, delta, min_margin, k, seed, truth) for s in STRATEGIES
            if truth is not None or s not in TRUTH_STRATEGIES}


# --------------------------------------------------------------------------- MAS weights on validation

MAS_WEIGHT_GRID = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)


def weight_sweep(table, sc: SelectionConfig, clip_weights: Sequence[float] = MAS_WEIGHT_GRID):
    """The pairs M3PO would select under MAS = w · CLIP + (1 − w) · judge, for every CLIP weight w, judged by the
    verifier.

    ``table``: scored candidates with the verifier's ``truth`` — one row per candidate with ``prompt_id``,
    ``cand_idx``, ``text``, ``logprob_sum`` / ``logprob_mean``, ``clip_score``, ``judge_score``, ``truth`` (run it on
    the validation candidates: the evaluation split never chooses a weight). Prompts with a failed judge call are
    left out. For each w the M3PO selection of notebook 04 (``sc``'s α, δ, min_margin, confidence) is run on
    MAS_w and its first pairs are scored: ``pairs``; ``ordered``, the share whose chosen answer the verifier scores
    above the rejected one (a tie counting ½) — a pair in the wrong direction teaches the model the error;
    ``truth_gap``, the mean truth(chosen) − truth(rejected); ``chosen_right``, ``rejected_wrong``. The scored
    table comes from :func:`m3po_utils.mas.score_validation`.
    """
    import pandas as pd

    bad = set(table.loc[~np.isfinite(table["judge_score"].to_numpy(float)), "prompt_id"])
    t = table[~table["prompt_id"].isin(bad)]
    rows = []
    for w in clip_weights:
        if not 0 <= w <= 1:
            raise ValueError(f"clip weight {w!r} must be in [0, 1]")
        scored = t.assign(mas=w * t["clip_score"].to_numpy(float) + (1 - w) * t["judge_score"].to_numpy(float))
        groups = group_candidates(scored, sc.confidence)
        truth = truth_by_prompt(groups, scored)
        sel = select(groups, "m3po", sc.alpha, sc.delta, sc.min_margin, 1, sc.seed)
        tc, tr = np.array([[truth[c.prompt_id][c.pairs[0][0]], truth[c.prompt_id][c.pairs[0][1]]]
                           for c in sel.choices if c.pairs and c.pairs[0][1] is not None]).reshape(-1, 2).T
        st = selection_stats(groups, sel, truth=truth)
        n = int(st["pairs"])
        rows.append({"clip_weight": float(w), "pairs": n,
                     "ordered": float(np.mean(np.where(tc > tr, 1.0, np.where(tc == tr, 0.5, 0.0)))) if n else np.nan,
                     "truth_gap": float(np.mean(tc - tr)) if n else np.nan,
                     "chosen_right": st["chosen_right"] if n else np.nan,
                     "rejected_wrong": st["rejected_wrong"] if n else np.nan})
    return pd.DataFrame(rows)


def best_weights(sweep) -> list[float]:
    """The CLIP weights whose pairs are most often in the right direction (``ordered``), ties broken by the larger
    ``truth_gap``. More than one means the validation candidates cannot tell those weights apart."""
    top = sweep["ordered"].max()
    tied = sweep[np.isclose(sweep["ordered"], top)]
    gap = tied["truth_gap"].max()
    return [float(w) for w in tied.loc[np.isclose(tied["truth_gap"], gap), "clip_weight"]]


def strategy_table(groups: dict[str, dict], sels: dict[str, Selection], truth=None):
    """One row per strategy: pairs, skips, hard-negative rate, MAS gap and (shapes world) truth checks."""
    import pandas as pd

    ref = sels.get("best_worst")
    rows = {}
    for name, sel in sels.items():
        row = {"pairs": sel.n_pairs} | {f"skip_{k}": v for k, v in sel.skipped.items()}
        if name != "best_of_n":
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
