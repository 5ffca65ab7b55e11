"""Pair-selection rules: the M3P-Score and one registry that every stage, setting and conclusion reads.

For one prompt's candidates with alignment scores MAS and log-probabilities log P under the base model, M3PO
takes the preferred response Rw = argmax MAS and, for every other candidate j,

    S(Rj) = (MAS(Rw) − MAS(Rj)) − α · max(0, log P(Rw) − log P(Rj) − δ)

and picks the dispreferred response Rl = argmax_j S(Rj) (arXiv 2508.12458, defaults α = 0.5, δ = 0.1). The
penalty only bites when the model is much *less* confident in Rj than in Rw, so Rl is a poor answer the model
is confident in: a hard negative. With α = 0 the rule is best-vs-worst by MAS.

Tie rules (deterministic): Rw is the highest MAS, ties broken by the higher log P, then the lower index.
Rl is the highest S, ties broken by the higher log P (the more confident mistake), then the lower index.
A candidate whose text equals Rw's text is never selectable as Rl (it would make a pair of identical answers).

**The registry.** A rule is one :class:`Rule` registered here — its name, its label in tables, whether it ranks
by the verifier's ground truth (shapes world only), whether it has a rejected answer at all, where it comes from,
and its function. The settings (``dpo.strategies``, ``evaluation.methods``), notebook 04's selection, the labels of
notebook 06's tables and the generated conclusions all read :data:`RULES`, so a new rule is one :func:`register`
call in this file (or in a user's own module imported before the run)::

    register(Rule("my_rule", "my rule DPO", pick=my_pick, source="..."))

This module needs nothing of the package (numpy and pandas only), so the settings (``config``) and notebook 02's
weight sweep use it without importing a stage.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# log P in the score (``selection.confidence``): "sum" over the answer's tokens (the paper's), "mean" per token, or
# "rank" — the summed log P's rank among the prompt's candidates, scaled to [0, 1] (1 = the most likely): a unit
# that is the same on every model, so α means the same everywhere
CONFIDENCE_KINDS = ("sum", "mean", "rank")
SKIP_REASONS = ("fewer_than_two_distinct", "all_mas_equal", "margin_below_min", "mas_missing", "length_filter")


# ------------------------------------------------------------------------------------------ the M3P-Score

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


# ------------------------------------------------------------------------------------------ rules

@dataclass(frozen=True)
class Pool:
    """One prompt's candidates as a rule sees them: scores, log P, texts, Rw and the selection's settings.

    ``info`` holds what some rules read besides (when the table has it): ``logp_mean`` (log P per token),
    ``clip`` (the CLIP score), ``length`` (tokens), ``verdict`` (``"yes"`` / ``"no"`` / ``""`` for a yes/no
    prompt's answers). ``opposite_verdict``: a score-based rule rejects only answers whose yes/no verdict differs
    from Rw's (where both have one) — the negative then disagrees on what POPE and MME read.
    """

    mas: np.ndarray
    logp: np.ndarray
    texts: Sequence[str]
    w: int
    alpha: float
    delta: float
    min_margin: float
    k: int
    rng: np.random.Generator
    info: dict = field(default_factory=dict)
    opposite_verdict: bool = False

    def allowed(self) -> np.ndarray:
        """Which candidates may be rejected: all, or (``opposite_verdict``) those whose verdict differs from Rw's."""
        ok = np.ones(len(self.mas), dtype=bool)
        verdict = self.info.get("verdict")
        if self.opposite_verdict and verdict is not None and verdict[self.w]:
            ok &= np.array([v != verdict[self.w] for v in verdict])
        return ok


# A rule's function: the prompt's pairs as (chosen, rejected or None, score behind the choice or NaN); an empty
# list means no pair clears ``min_margin`` (counted as "margin_below_min").
Pick = Callable[[Pool], list[tuple[int, int | None, float]]]


@dataclass(frozen=True)
class Rule:
    """One pair-selection rule.

    ``name``: the key in settings and run directories (``pairs/<name>/``, ``adapters/<name>/``); ``label``: how
    tables and sentences name it; ``pick``: the function; ``needs_truth``: it ranks by the verifier's ground
    truth instead of MAS (the shapes world only); ``sft_only``: it has no rejected answer (trained with the SFT
    term alone); ``uses_alpha``: the selection records the preset's α (the others record 0); ``main``: trained
    and evaluated by the main series by default; ``rank``: its row in the tables (smaller first); ``source``:
    where the rule comes from; ``doc``: one line on what it picks; ``finish``: a step over the whole selection
    after every prompt's pick (a filter a rule applies to its data set, not to one prompt); ``reads_mas``: whether
    the rule ranks by the assessor at all.
    """

    name: str
    label: str
    pick: Pick
    needs_truth: bool = False
    sft_only: bool = False
    uses_alpha: bool = False
    main: bool = False
    rank: int = 100
    source: str = ""
    doc: str = ""
    finish: Callable[[Selection, dict[str, dict]], Selection] | None = None
    reads_mas: bool = True       # False: the rule ignores the assessor (CSR), so its gaps and gaps' absence do not skip

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name == "base":
            raise ValueError(f"rule name {self.name!r} must be an identifier other than 'base' (the SFT model)")


RULES: dict[str, Rule] = {}


def register(rule: Rule) -> Rule:
    """Add ``rule`` to :data:`RULES` (its name must be new)."""
    if rule.name in RULES:
        raise ValueError(f"a rule named {rule.name!r} is already registered")
    RULES[rule.name] = rule
    return rule


def rule(name: str) -> Rule:
    if name not in RULES:
        raise ValueError(f"strategy={name!r} is unknown; choose one of {names()}")
    return RULES[name]


def names() -> tuple[str, ...]:
    """Every registered rule, in registration order."""
    return tuple(RULES)


def truth_names() -> tuple[str, ...]:
    """The rules that rank by the verifier's ground truth (they exist in the shapes world only)."""
    return tuple(n for n, r in RULES.items() if r.needs_truth)


def sft_only_names() -> tuple[str, ...]:
    return tuple(n for n, r in RULES.items() if r.sft_only)


def main_names() -> tuple[str, ...]:
    """The rules the main series trains (``dpo.strategies``' default), in registration order."""
    return tuple(n for n, r in RULES.items() if r.main)


def table_order(methods: Sequence[str]) -> tuple[str, ...]:
    """``methods`` in the tables' order: the SFT base, then the rules by ``rank``."""
    known = [m for m in methods if m in RULES]
    return (*(["base"] if "base" in methods else []), *sorted(known, key=lambda m: RULES[m].rank))


def label(name: str) -> str:
    """How tables and sentences name a method (``base`` is the SFT base)."""
    return "SFT base" if name == "base" else RULES[name].label if name in RULES else name


def labels() -> dict[str, str]:
    return {"base": label("base"), **{n: r.label for n, r in RULES.items()}}


def _by_score(c: Pool, alpha: float, sign: float = 1.0) -> list[tuple[int, int | None, float]]:
    """Rw against the candidates of highest M3P-Score at ``alpha``: one pair per distinct rejected text.

    ``sign=-1`` turns the confidence term round (anti-M3PO): the score then *adds* α times how much less likely
    than Rw a candidate is, so the rejected answer is the least likely wrong one."""
    s = m3p_scores(c.mas, c.logp, alpha, c.delta, c.texts) if sign > 0 else _anti_scores(c, alpha)
    s = np.where(c.allowed(), s, -np.inf)
    out: list[tuple[int, int | None, float]] = []
    seen: set[str] = set()
    for j in _ranked(s, c.logp if sign > 0 else -c.logp):
        if c.texts[j] in seen:
            continue
        seen.add(c.texts[j])
        if c.mas[c.w] - c.mas[j] < c.min_margin or c.mas[c.w] == c.mas[j]:
            continue
        out.append((c.w, int(j), float(s[j])))
        if len(out) == c.k:
            break
    return out


def _anti_scores(c: Pool, alpha: float) -> np.ndarray:
    m, lp = np.asarray(c.mas, float), np.asarray(c.logp, float)
    s = (m[c.w] - m) + alpha * np.maximum(0.0, lp[c.w] - lp - c.delta)
    s[c.w] = -np.inf
    s[[j for j, t in enumerate(c.texts) if t == c.texts[c.w]]] = -np.inf
    return s


def _m3po(c: Pool) -> list[tuple[int, int | None, float]]:
    return _by_score(c, c.alpha)


def _anti_m3po(c: Pool) -> list[tuple[int, int | None, float]]:
    return _by_score(c, c.alpha, sign=-1.0)


def _oracle_neutral(c: Pool) -> list[tuple[int, int | None, float]]:
    """Best vs worst by the truth with ties broken by position, never by log P (the oracle breaks them towards the
    more likely answer, which makes it partly confidence-aware)."""
    m = np.asarray(c.mas, float)
    w = int(np.flatnonzero(m == m.max())[0])
    ok = np.array([t != c.texts[w] for t in c.texts]) & c.allowed()
    if not ok.any():
        return []
    lo = int(np.flatnonzero(ok & (m == m[ok].min()))[0])
    if m[w] - m[lo] < c.min_margin or m[w] == m[lo]:
        return []
    return [(w, lo, float(m[w] - m[lo]))]


def _random_raw(c: Pool) -> list[tuple[int, int | None, float]]:
    """Two random distinct answers ordered by the assessor — no margin filter (pairs the assessor cannot tell
    apart are kept, in index order): vanilla DPO's data as it comes."""
    first: dict[str, int] = {}
    for j, t in enumerate(c.texts):
        first.setdefault(t, j)
    ids = sorted(first.values())
    pairs = [(a, b) if c.mas[a] >= c.mas[b] else (b, a) for x, a in enumerate(ids) for b in ids[x + 1:]]
    picks = c.rng.choice(len(pairs), size=min(c.k, len(pairs)), replace=False)
    return [(int(pairs[p][0]), int(pairs[p][1]), float("nan")) for p in picks]


def _rlaif_v(c: Pool) -> list[tuple[int, int | None, float]]:
    """RLAIF-V's pairs: every pair of distinct answers whose scores differ by at least the margin, the better one
    chosen; ``k`` of them drawn at random per prompt (its ``sample_num``, 2 there). Its length filter works on the
    whole data set (:func:`_rlaif_v_length_filter`)."""
    first: dict[str, int] = {}
    for j, t in enumerate(c.texts):
        first.setdefault(t, j)
    ids = sorted(first.values())
    pairs = [(a, b) if c.mas[a] > c.mas[b] else (b, a) for x, a in enumerate(ids) for b in ids[x + 1:]
             if abs(c.mas[a] - c.mas[b]) >= max(c.min_margin, 1e-12)]
    if not pairs:
        return []
    picks = c.rng.choice(len(pairs), size=min(c.k, len(pairs)), replace=False)
    return [(int(pairs[p][0]), int(pairs[p][1]), float(c.mas[pairs[p][0]] - c.mas[pairs[p][1]])) for p in picks]


def _words(text: str) -> int:
    return len(str(text).split())


def _rlaif_v_length_filter(sel: Selection, groups: dict[str, dict]) -> Selection:
    """RLAIF-V's length filter over the data set: drop pairs whose rejected answer is longer than the chosen one by
    more than a share ``r`` of its own length, ``(len(rej) − len(ch)) / len(rej) > r``, with ``r`` on a grid of
    0, 0.02, … 0.98 chosen to make the kept pairs' mean chosen and rejected lengths (in words) closest."""
    pairs = [(c.prompt_id, w, lo) for c in sel.choices for w, lo in c.pairs if lo is not None]
    if not pairs:
        return sel
    lens = np.array([(_words(groups[p]["text"][w]), _words(groups[p]["text"][lo])) for p, w, lo in pairs], float)
    diff = (lens[:, 1] - lens[:, 0]) / np.maximum(lens[:, 1], 1.0)
    best_r, best_gap = 0.0, np.inf
    for r in np.arange(0, 1, 0.02):
        keep = diff <= r
        if keep.any():
            gap = abs(lens[keep, 0].mean() - lens[keep, 1].mean()) / max(lens[keep, 1].mean(), 1e-9)
            if gap < best_gap - 1e-12:
                best_r, best_gap = float(r), gap
    dropped = {pairs[i] for i in np.flatnonzero(diff > best_r)}
    choices = []
    for c in sel.choices:
        kept = [(w, lo) for w, lo in c.pairs if (c.prompt_id, w, lo) not in dropped]
        s = [s for (w, lo), s in zip(c.pairs, c.s_scores or [None] * len(c.pairs), strict=False)
             if (c.prompt_id, w, lo) not in dropped and s is not None]
        skip = c.skip or (None if kept else "length_filter")
        choices.append(PromptChoice(c.prompt_id, kept, skip, s))
    return Selection(sel.strategy, sel.alpha, sel.delta, choices)


CSR_CLIP_WEIGHT = 0.9   # CSR's clip_alpha: the share of the CLIP rank in the fused reward (its construct.py default)


def _ranks(x: np.ndarray) -> np.ndarray:
    """CSR's rank: the position from the best (highest) down, scaled to (0, 1] — 1/n the best, 1 the worst."""
    order = np.argsort(-np.asarray(x, float), kind="stable")
    r = np.empty(len(x))
    r[order] = (np.arange(len(x)) + 1) / len(x)
    return r


def _csr(c: Pool) -> list[tuple[int, int | None, float]]:
    """CSR's calibrated self-reward, on whole answers: the rank of the answer's length-normalised log P among the
    prompt's candidates fused with the rank of its CLIP similarity, ``(1 − a)·rank_logp + a·rank_clip`` (a = 0.9);
    the best-ranked answer chosen, the worst rejected. It reads no judge: the model's own likelihood and CLIP."""
    lp = c.info.get("logp_mean")
    clip = c.info.get("clip")
    if lp is None or clip is None or not np.isfinite(clip).all():
        return []
    fused = (1 - CSR_CLIP_WEIGHT) * _ranks(lp) + CSR_CLIP_WEIGHT * _ranks(clip)
    w = int(np.argmin(fused))
    others = [j for j in np.argsort(-fused, kind="stable") if c.texts[j] != c.texts[w]]
    if not others:
        return []
    return [(w, int(others[0]), float(fused[others[0]] - fused[w]))]


def _mu_minus_2sigma(c: Pool) -> list[tuple[int, int | None, float]]:
    """The best answer against the one whose score is closest to μ − 2σ of the prompt's candidates' scores
    (Xiao et al., ACL 2025: a rejected answer from the lower tail, not the very worst, scales best)."""
    m = np.asarray(c.mas, float)
    target = m.mean() - 2 * m.std()
    ok = np.array([t != c.texts[c.w] for t in c.texts]) & (m[c.w] - m >= max(c.min_margin, 1e-12))
    if not ok.any():
        return []
    j = int(np.flatnonzero(ok)[np.argmin(np.abs(m[ok] - target))])
    return [(c.w, j, float(m[c.w] - m[j]))]


def _best_worst(c: Pool) -> list[tuple[int, int | None, float]]:
    return _by_score(c, 0.0)


def _random(c: Pool) -> list[tuple[int, int | None, float]]:
    """Uniform over pairs of distinct answers whose MAS differ by at least the margin, ordered by MAS."""
    first: dict[str, int] = {}
    for j, t in enumerate(c.texts):
        first.setdefault(t, j)
    ids = sorted(first.values())
    valid = [(a, b) if c.mas[a] > c.mas[b] else (b, a) for x, a in enumerate(ids) for b in ids[x + 1:]
             if c.mas[a] != c.mas[b] and abs(c.mas[a] - c.mas[b]) >= c.min_margin]
    if not valid:
        return []
    picks = c.rng.choice(len(valid), size=min(c.k, len(valid)), replace=False)
    return [(int(valid[p][0]), int(valid[p][1]), float("nan")) for p in picks]


def _best_of_n(c: Pool) -> list[tuple[int, int | None, float]]:
    return [(c.w, None, float("nan"))]


PAPER = "arXiv 2508.12458"
register(Rule("m3po", "M3PO", _m3po, uses_alpha=True, main=True, rank=40, source=PAPER,
              doc="Rw = best MAS; Rl = the highest M3P-Score at the preset's α, δ: a bad answer the model is "
                  "confident in"))
register(Rule("best_worst", "best-vs-worst DPO (α = 0)", _best_worst, main=True, rank=30,
              source=f"{PAPER} (α = 0 ablation; reward-model DPO)",
              doc="best vs worst by MAS: the M3P-Score without its confidence term"))
register(Rule("random", "random-pair DPO", _random, main=True, rank=20, source=f"{PAPER} (vanilla DPO baseline)",
              doc="two random distinct answers whose MAS differ by at least selection.min_margin, ordered by MAS"))
register(Rule("best_of_n", "best-of-N SFT", _best_of_n, sft_only=True, main=True, rank=10,
              source=f"{PAPER} (simulated-RLHF baseline: rejection-sampling SFT)",
              doc="the best answer alone, trained with the SFT term only: the control on the chosen answers"))
register(Rule("oracle", "oracle (verifier-ranked DPO)", _best_worst, needs_truth=True, main=True, rank=50,
              source="this project (the shapes world's verifier)",
              doc="best vs worst by the verifier's ground truth instead of MAS: what a perfect assessor would "
                  "pick from the same candidates"))
# Controls and peers (notebook 11): not trained by the main series unless a setting names them.
register(Rule("anti_m3po", "anti-M3PO (least likely wrong)", _anti_m3po, uses_alpha=True, rank=45,
              source="this project: M3PO's confidence term turned round, the control for its direction",
              doc="Rw = best MAS; Rl = the highest of MAS gap + α·(log P deficit beyond δ): a bad answer the model "
                  "would hardly say"))
register(Rule("oracle_neutral", "oracle, neutral ties", _oracle_neutral, needs_truth=True, rank=55,
              source="this project (the oracle without its log-P tie-break)",
              doc="best vs worst by the verifier's truth, ties broken by position instead of towards the likelier "
                  "answer"))
register(Rule("random_raw", "random pairs, unfiltered", _random_raw, rank=22,
              source="vanilla DPO on sampled pairs (arXiv 2508.12458's baseline, without this project's filter)",
              doc="two random distinct answers ordered by the assessor, with no margin filter"))
register(Rule("rlaif_v", "RLAIF-V pairs", _rlaif_v, rank=60, finish=_rlaif_v_length_filter,
              source="RLAIF-V (Yu et al., 2025): utils/pair_construction.py, get_preference_pairs.py and "
                     "get_pairs_filter_shorten.py of github.com/RLHF-V/RLAIF-V",
              doc="random pairs whose scores differ by the margin, the better chosen, then the data set's length "
                  "filter"))
register(Rule("csr", "CSR (likelihood + CLIP ranks)", _csr, rank=62, reads_mas=False,
              source="CSR (Zhou et al., NeurIPS 2024): inference_csr/construct.py and utils.py of "
                     "github.com/YiyangZhou/CSR (rank fusion, clip_alpha 0.9)",
              doc="best vs worst by 0.1·rank of log P per token + 0.9·rank of CLIP similarity; no judge"))
register(Rule("mu_2sigma", "rejected at μ − 2σ", _mu_minus_2sigma, rank=64,
              source="Xiao et al., ACL 2025, 'Finding the Sweet Spot: Preference Data Construction for Scaling "
                     "Preference Optimization'",
              doc="the best answer against the one whose score is closest to μ − 2σ of the prompt's scores"))


# ------------------------------------------------------------------------------------------ applying a rule

@dataclass
class PromptChoice:
    """What a strategy chose for one prompt: pairs of (chosen, rejected) indices or a skip reason."""

    prompt_id: str
    pairs: list[tuple[int, int | None]] = field(default_factory=list)
    skip: str | None = None
    s_scores: list[float] = field(default_factory=list)


def choose(prompt_id: str, mas: np.ndarray, logp: np.ndarray, texts: Sequence[str], strategy: str,
           alpha: float = 0.5, delta: float = 0.1, min_margin: float = 0.0, k: int = 1,
           rng: np.random.Generator | None = None, info: dict | None = None,
           opposite_verdict: bool = False) -> PromptChoice:
    """Apply the rule ``strategy`` to one prompt's candidates (the skips every rule shares come first)."""
    r = rule(strategy)
    if k < 1:
        raise ValueError(f"k={k} must be >= 1 (pairs per prompt)")
    out = PromptChoice(prompt_id)
    if r.reads_mas and np.isnan(mas).any():
        out.skip = "mas_missing"
        return out
    if len(set(texts)) < 2:
        out.skip = "fewer_than_two_distinct"
        return out
    if r.reads_mas and np.ptp(mas) == 0:
        out.skip = "all_mas_equal"
        return out
    w = best_index(mas, logp) if r.reads_mas else best_index(np.zeros(len(logp)), logp)
    pool = Pool(mas, logp, texts, w, alpha, delta, min_margin, k,
                rng if rng is not None else np.random.default_rng(0), info or {}, opposite_verdict)
    picked = r.pick(pool)
    if not picked:
        out.skip = "margin_below_min"
        return out
    out.pairs = [(w, lo) for w, lo, _ in picked]
    out.s_scores = [s for _, lo, s in picked if lo is not None and not math.isnan(s)]
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
    column = "logprob_mean" if confidence == "mean" else "logprob_sum"
    df = table.sort_values(["prompt_id", "cand_idx"])
    groups: dict[str, dict] = {}
    for pid, g in df.groupby("prompt_id", sort=True):
        logp = g[column].to_numpy(dtype=float)
        if confidence == "rank":        # 1 = the prompt's most likely answer, 0 the least (ties share a rank)
            ranks = pd.Series(logp).rank(method="average").to_numpy()
            logp = (ranks - 1) / max(len(ranks) - 1, 1)
        groups[str(pid)] = {"idx": g["cand_idx"].to_numpy(), "text": g["text"].tolist(),
                            "mas": g["mas"].to_numpy(dtype=float), "logp": logp}
        if "length" in g:
            groups[str(pid)]["length"] = g["length"].to_numpy(dtype=float)
        if "logprob_mean" in g:
            groups[str(pid)]["logp_mean"] = g["logprob_mean"].to_numpy(dtype=float)
        if "clip_score" in g:
            groups[str(pid)]["clip"] = g["clip_score"].to_numpy(dtype=float)
        if "verdict" in g:
            groups[str(pid)]["verdict"] = [str(v or "") for v in g["verdict"]]
    return groups


def truth_by_prompt(groups: dict[str, dict], table) -> dict[str, np.ndarray] | None:
    """Ground-truth score per candidate in the groups' order (shapes world), else None."""
    if "truth" not in table:
        return None
    t = table.set_index(["prompt_id", "cand_idx"])["truth"]
    return {pid: np.array([t[(pid, int(i))] for i in g["idx"]]) for pid, g in groups.items()}


INFO_KEYS = ("logp_mean", "clip", "length", "verdict")


def select(groups: dict[str, dict], strategy: str, alpha: float = 0.5, delta: float = 0.1,
           min_margin: float = 0.0, k: int = 1, seed: int = 0,
           truth: dict[str, np.ndarray] | None = None, opposite_verdict: bool = False) -> Selection:
    """Apply ``strategy`` to every prompt (seeded for ``random``); a truth rule ranks by ``truth`` instead of MAS;
    ``opposite_verdict`` restricts a score-based rule's negatives to the other yes/no verdict."""
    _check_params(alpha, delta)
    r = rule(strategy)
    if min_margin < 0 or math.isnan(min_margin):
        raise ValueError(f"min_margin={min_margin!r} must be a number >= 0")
    if r.needs_truth:
        if truth is None:
            raise ValueError(f"strategy={strategy!r} ranks candidates by the verifier's ground truth, which only the "
                             "shapes world has (pass truth=truth_by_prompt(groups, table))")
        groups = {pid: g | {"mas": np.asarray(truth[pid], dtype=float)} for pid, g in groups.items()}
    rng = np.random.default_rng(seed)
    choices = [choose(pid, g["mas"], g["logp"], g["text"], strategy, alpha, delta, min_margin, k, rng,
                      {key: g[key] for key in INFO_KEYS if key in g}, opposite_verdict)
               for pid, g in groups.items()]
    sel = Selection(strategy, alpha if r.uses_alpha else 0.0, delta, choices)
    return r.finish(sel, groups) if r.finish is not None else sel


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
