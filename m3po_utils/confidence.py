"""Stage 03: how confident the base model is in each of its candidates, and whether that confidence is earned.

Three confidence signals per candidate R of a prompt (image I, instruction Q):

* **Summed log-prob** (the default, M3PO's ``log P(R | I, Q)``): ``conf_sum = Σ_t log P(r_t | I, Q, r_<t)`` over
  the response tokens including the final EOS. It is what the M3P-Score compares between two candidates of the
  same prompt. It falls with length: every token costs something, so long answers look "unsure".
* **Mean per token**: ``conf_mean = conf_sum / length`` — the length-normalised variant; ``exp(conf_mean)`` is the
  geometric-mean token probability.
* **Self-consistency**: how much a candidate agrees with the *other* N − 1 candidates of its prompt, in [0, 1].
  For short-answer families (existence, colour, count, position, one word) it is the share of the other
  candidates that give the same normalised answer (:func:`answer_key`: yes/no, the colour, the number, the
  position named). For descriptions it is the mean Jaccard overlap of claim sets (:func:`claim_set`: every
  shape mentioned, with its colour and its position as separate claims); for shape lists the Jaccard overlap of
  the named shapes (``world.object_mentions``). Outside the shapes world (hub prompts) it is the mean Jaccard
  overlap of the word sets. A sampled answer the model gives again and again is one it "believes".

All log-probs come from the candidates table (captured during generation); :func:`logprob_agreement` re-scores
them with a separate teacher-forced pass to show the two agree.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd

from m3po_utils import shapes as W
from m3po_utils.io import AtomicDir, atomic_write_json
from m3po_utils.models.generate import quiet_datasets, score_responses
from m3po_utils.rundir import RunDir
from m3po_utils.stats import spearman

ANSWER_KEY_FAMILIES = ("existence", "color", "count", "position", "fmt_one_word")
CLAIM_FAMILIES = ("describe", "fmt_start")
SET_FAMILIES = ("fmt_list", "fmt_max_words")
CONFIDENCE_KINDS = ("sum", "mean")


def sequence_confidence(token_logprobs: Sequence[float], kind: str = "sum") -> float:
    """``"sum"``: Σ log-probs (log P of the whole response); ``"mean"``: the same divided by the token count."""
    if kind not in CONFIDENCE_KINDS:
        raise ValueError(f"kind={kind!r} is not a confidence kind; use one of {CONFIDENCE_KINDS}")
    lp = np.asarray(token_logprobs, dtype=np.float64)
    if lp.size == 0:
        raise ValueError("a response with no tokens has no confidence (token_logprobs is empty)")
    return float(lp.sum() if kind == "sum" else lp.mean())


# ----------------------------------------------------------------------------------------------- agreement

def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", str(text or "").lower())


_STOP = frozenset({"a", "an", "the", "it", "is", "its", "it's", "there", "this", "that", "of", "in", "image",
                   "picture", "answer"})


def normalise_text(text: str) -> str:
    """Lower case, punctuation removed, articles and filler words dropped: ``"The circle is red."`` → ``"circle red"``."""
    return " ".join(w for w in _words(text) if w not in _STOP)


def answer_key(text: str, family: str, world_cfg=None) -> str:
    """The normalised short answer two candidates must share to agree.

    Existence: ``"yes"`` / ``"no"`` (``world.yes_no``); count: the number(s) named; colour and one-word
    questions: the colour(s) named, or ``"none"`` for a denial; position: the position name(s). Without a world
    config, or when nothing of the kind is named, the normalised text (:func:`normalise_text`).
    """
    if family == "existence":
        yn = W.yes_no(text)
        if yn is not None:
            return yn
    if world_cfg is not None:
        if family == "count":
            nums = W.numbers_in(text)
            if nums:
                return ",".join(map(str, nums))
        elif family in ("color", "fmt_one_word"):
            colors = W.colors_in(text, world_cfg)
            if colors:
                return ",".join(sorted(colors))
            if W.denies(text):
                return "none"
        elif family == "position":
            positions = W.positions_in(text, world_cfg)
            if positions:
                return ",".join(sorted(positions))
            if W.denies(text):
                return "none"
    return normalise_text(text)


def claim_set(text: str, family: str, world_cfg=None) -> frozenset[str]:
    """What a long answer asserts, as a set of atomic claims.

    Descriptions (shapes world): for every non-negated shape mention ``"star"``, plus ``"star color=red"`` and
    ``"star at=top left"`` when it gives them (``world.mentioned_objects``), so two descriptions that agree on
    the objects but not on a colour still overlap. Shape lists: the shapes named (``world.object_mentions``).
    Otherwise: the set of normalised words.
    """
    if world_cfg is not None and family in CLAIM_FAMILIES:
        claims: set[str] = set()
        for m in W.mentioned_objects(text, world_cfg):
            claims.add(m.shape)
            if m.color:
                claims.add(f"{m.shape} color={m.color}")
            if m.position:
                claims.add(f"{m.shape} at={m.position}")
        return frozenset(claims)
    if world_cfg is not None and family in SET_FAMILIES:
        return frozenset(W.object_mentions(text, world_cfg))
    return frozenset(normalise_text(text).split())


def jaccard(a: frozenset | set, b: frozenset | set) -> float:
    """|a ∩ b| / |a ∪ b|; two empty sets agree (1.0)."""
    union = len(a | b)
    return 1.0 if union == 0 else len(a & b) / union


def self_consistency(texts: Sequence[str], family: str, world_cfg=None) -> np.ndarray:
    """Agreement of each candidate with the other candidates of the same prompt (see the module docstring).

    Short-answer families: share of the others with the same :func:`answer_key`. Other families: mean
    :func:`jaccard` of :func:`claim_set` with each of the others. Needs at least two candidates.
    """
    n = len(texts)
    if n < 2:
        raise ValueError(f"self-consistency needs at least 2 candidates of a prompt, got {n}")
    if family in ANSWER_KEY_FAMILIES:
        keys = [answer_key(t, family, world_cfg) for t in texts]
        counts: dict[str, int] = {}
        for k in keys:
            counts[k] = counts.get(k, 0) + 1
        return np.array([(counts[k] - 1) / (n - 1) for k in keys])
    sets = [claim_set(t, family, world_cfg) for t in texts]
    sim = np.array([[jaccard(a, b) for b in sets] for a in sets])
    return (sim.sum(axis=1) - np.diag(sim)) / (n - 1)


# ----------------------------------------------------------------------------------------------- the table

def _frame(candidates) -> pd.DataFrame:
    if hasattr(candidates, "to_pandas"):
        return candidates.to_pandas()
    return pd.DataFrame(candidates)


def confidence_table(candidates, world_cfg=None, verdicts: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per candidate: ``conf_sum``, ``conf_mean``, ``self_consistency`` and the within-prompt rank.

    ``conf_rank`` is the candidate's place among its prompt's candidates by ``conf_sum`` scaled to [0, 1]
    (1 = the one the model is most sure of; ties share the average rank); ``confident`` is
    ``conf_rank >= 0.5``, the upper half. With ``verdicts`` (``generation.verify_candidates``) the verifier's
    ``verifier_score`` and ``correct`` are added.
    """
    df = _frame(candidates)
    out = df[["prompt_id", "cand_idx", "family", "text", "length", "ended_eos"]].copy()
    out["conf_sum"] = [sequence_confidence(lp, "sum") for lp in df["token_logprobs"]]
    out["conf_mean"] = [sequence_confidence(lp, "mean") for lp in df["token_logprobs"]]
    out["self_consistency"] = np.nan
    for _, idx in out.groupby("prompt_id", sort=False).groups.items():
        fam = out.loc[idx[0], "family"]
        out.loc[idx, "self_consistency"] = self_consistency(list(out.loc[idx, "text"]), fam, world_cfg)
    size = out.groupby("prompt_id", sort=False)["conf_sum"].transform("size")
    rank = out.groupby("prompt_id", sort=False)["conf_sum"].rank(method="average")
    out["conf_rank"] = ((rank - 1) / (size - 1).clip(lower=1)).astype(float)
    out["confident"] = out["conf_rank"] >= 0.5
    if verdicts is not None:
        out["verifier_score"] = verdicts["verifier_score"].to_numpy()
        out["correct"] = verdicts["correct"].to_numpy().astype(bool)
    return out


def confidence_correlations(table: pd.DataFrame, target: str = "verifier_score") -> pd.DataFrame:
    """Spearman correlation of each confidence signal with ``target`` within prompts, averaged per family.

    Within a prompt, because M3PO only ever compares candidates of the same prompt; prompts whose candidates
    all score the same carry no information and are skipped.
    """
    rows = []
    for (fam, _), g in table.groupby(["family", "prompt_id"], sort=False):
        if g[target].nunique() < 2:
            continue
        row = {"family": fam}
        for col in ("conf_sum", "conf_mean", "self_consistency"):
            row[col] = spearman(g[col], g[target])
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["family", "conf_sum", "conf_mean", "self_consistency", "prompts"])
    df = pd.DataFrame(rows)
    out = df.groupby("family").mean(numeric_only=True)
    out["prompts"] = df.groupby("family").size()
    return out.reset_index()


def quadrants(table: pd.DataFrame) -> pd.DataFrame:
    """Counts of candidates by (confident?, correct?): the confident-and-wrong cell is what M3PO mines."""
    q = pd.crosstab(table["confident"].map({True: "confident", False: "unsure"}),
                    table["correct"].map({True: "correct", False: "wrong"}))
    return q.reindex(index=["confident", "unsure"], columns=["correct", "wrong"], fill_value=0)


def calibration_summary(table: pd.DataFrame) -> dict[str, float]:
    """How often confidence is misplaced.

    * ``p_wrong_given_confident``: share of upper-half candidates (by ``conf_sum`` within their prompt) that the
      verifier marks wrong;
    * ``p_wrong_given_unsure``: the same for the lower half;
    * ``prompts_with_confident_wrong``: share of prompts with at least one wrong candidate in the upper half —
      a hard negative for M3PO to find;
    * ``top1_accuracy``: how often the single most confident candidate of a prompt is right, next to
      ``mean_accuracy``, the accuracy of a random candidate.
    """
    conf = table[table["confident"]]
    unsure = table[~table["confident"]]
    top = table.loc[table.groupby("prompt_id", sort=False)["conf_sum"].idxmax()]
    per_prompt = table.assign(cw=table["confident"] & ~table["correct"]).groupby("prompt_id")["cw"].any()
    return {"p_wrong_given_confident": float(1 - conf["correct"].mean()) if len(conf) else float("nan"),
            "p_wrong_given_unsure": float(1 - unsure["correct"].mean()) if len(unsure) else float("nan"),
            "prompts_with_confident_wrong": float(per_prompt.mean()),
            "top1_accuracy": float(top["correct"].mean()), "mean_accuracy": float(table["correct"].mean())}


def headroom(table: pd.DataFrame, delta: float = 0.1, greedy: dict[str, float] | None = None) -> pd.DataFrame:
    """What self-sampling can reach, per family: the room DPO on the model's own candidates has to work with.

    * ``pass@1``: share of candidates fully correct; ``pass@N``: share of prompts with at least one;
    * ``greedy`` (when given, e.g. notebook 00's held-out greedy accuracy) and ``pass@N − greedy``;
    * ``confident_wrong``: among prompts with a wrong candidate, the share where some wrong candidate has
      log P ≥ log P(Rw) − δ, Rw the verifier's best candidate (ties: the more confident) — a hard negative the
      M3P-Score's confidence term can find.
    """
    rows = []
    for fam, g in table.groupby("family", sort=True):
        per = []
        for _, p in g.groupby("prompt_id", sort=False):
            best = p.sort_values(["verifier_score", "conf_sum"], ascending=False).iloc[0]
            wrong = p[~p["correct"]].drop(index=best.name, errors="ignore")    # never Rw itself
            per.append((bool(p["correct"].any()), len(wrong) > 0,
                        bool((wrong["conf_sum"] >= best["conf_sum"] - delta).any())))
        arr = np.array(per, dtype=bool)
        with_wrong = arr[:, 1]
        row = {"family": fam, "prompts": len(per), "pass@1": float(g["correct"].mean()),
               "pass@N": float(arr[:, 0].mean()),
               "confident_wrong": float(arr[with_wrong, 2].mean()) if with_wrong.any() else float("nan")}
        if greedy is not None:
            row["greedy"] = float(greedy.get(fam, float("nan")))
            row["pass@N − greedy"] = row["pass@N"] - row["greedy"]
        rows.append(row)
    return pd.DataFrame(rows).set_index("family")


def reliability(table: pd.DataFrame, bins: int = 10, families: Sequence[str] = ANSWER_KEY_FAMILIES) -> pd.DataFrame:
    """Reliability diagram data for short answers: P(response) = exp(conf_sum) in ``bins`` equal-width bins
    against the share that is correct. A calibrated model's points lie on the diagonal."""
    t = table[table["family"].isin(families)].copy()
    t["p"] = np.exp(t["conf_sum"])
    t["bin"] = np.minimum((t["p"] * bins).astype(int), bins - 1)
    out = t.groupby("bin").agg(p_mean=("p", "mean"), accuracy=("correct", "mean"), n=("p", "size")).reset_index()
    out["bin_low"] = out["bin"] / bins
    return out


def ece(rel: pd.DataFrame) -> float:
    """Expected calibration error of a :func:`reliability` table: Σ n_b / n · |accuracy_b − p_b|."""
    if rel.empty:
        return float("nan")
    return float((rel["n"] * (rel["accuracy"] - rel["p_mean"]).abs()).sum() / rel["n"].sum())


def length_effect(table: pd.DataFrame) -> pd.DataFrame:
    """Spearman correlation of length with ``conf_sum`` and with ``conf_mean``, per family."""
    rows = []
    for fam, g in table.groupby("family"):
        if g["length"].nunique() < 2:
            continue
        rows.append({"family": fam, "length_vs_sum": spearman(g["length"], g["conf_sum"]),
                     "length_vs_mean": spearman(g["length"], g["conf_mean"]),
                     "mean_length": g["length"].mean()})
    return pd.DataFrame(rows, columns=["family", "length_vs_sum", "length_vs_mean", "mean_length"])


def table_dict(df: pd.DataFrame, key: str = "family", digits: int = 4) -> dict:
    """``{key value: {column: value}}`` for ``results.record_results``, rounded, with NaN as None (strict JSON)."""
    out = df.set_index(key).round(digits).astype(object)
    return out.where(out.notna(), None).to_dict(orient="index")


# ----------------------------------------------------------------------------------------------- agreement check

def logprob_agreement(model, processor, candidates, image_loader: Callable[[str], Any], max_prompts: int | None = None,
                      batch_size: int = 64) -> pd.DataFrame:
    """Re-score candidates' token ids with the teacher-forced scorer and compare with the captured log-probs.

    Returns one row per candidate: ``max_abs_token_diff`` (largest per-token difference) and ``abs_sum_diff``
    (|generation log P(R) − teacher-forced log P(R)|), plus both sums. ``max_prompts`` limits the check to
    the first prompts of the table.
    """

    df = _frame(candidates)
    pids = list(dict.fromkeys(df["prompt_id"]))
    if max_prompts is not None:
        pids = pids[:max_prompts]
    df = df[df["prompt_id"].isin(set(pids))]
    groups = [g for _, g in df.groupby("prompt_id", sort=False)]
    images = [image_loader(g["image"].iloc[0]) for g in groups]
    scores = score_responses(model, processor, images, [g["instruction"].iloc[0] for g in groups],
                             [[list(ids) for ids in g["token_ids"]] for g in groups], batch_size=batch_size)
    rows = []
    for g, per in zip(groups, scores, strict=True):
        for (_, r), tf in zip(g.iterrows(), per, strict=True):
            gen = np.asarray(r["token_logprobs"], dtype=np.float64)
            rows.append({"prompt_id": r["prompt_id"], "cand_idx": r["cand_idx"], "family": r["family"],
                         "length": len(gen), "gen_sum": float(gen.sum()), "tf_sum": float(tf.sum()),
                         "max_abs_token_diff": float(np.abs(gen - tf).max()),
                         "abs_sum_diff": float(abs(gen.sum() - tf.sum()))})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- files

def save_confidence(run_dir: str | Path, table: pd.DataFrame, checks: dict) -> Path:
    """Write ``run_dir/confidence/`` (a ``datasets`` table + ``checks.json``) atomically."""
    folder = RunDir(run_dir).confidence
    with AtomicDir(folder) as tmp, quiet_datasets():
        datasets.Dataset.from_pandas(table.reset_index(drop=True), preserve_index=False).save_to_disk(str(tmp / "table"))
        atomic_write_json(tmp / "checks.json", checks)
    return folder
