"""Notebook 11: where M3PO's hard negatives help, hurt or change nothing.

The series' headline ("M3PO does not beat its controls here") says nothing about *why*. This module varies what
the main series holds fixed — the weight of the SFT term, the assessor, the number of pairs, α and the units of
the confidence term, the pair rule — and measures M3PO against best-vs-worst (the same rule without its confidence
term) and best-of-N SFT (the same chosen answers without any negative) in each condition.

**A condition** (:class:`Condition`) is one trained model: a pair rule (:mod:`m3po_utils.rules`) with its options,
an assessor (how MAS is made), a loss (DPO plus the SFT term at ``sft_weight``), a pair budget and a seed.
Every condition trains for the **same number of optimiser steps** (``hardneg.steps``; 0 = one epoch of the
best-vs-worst pairs of the seed's pool): a smaller pair set is seen for more epochs, never for fewer steps.

**Seeds redraw the pool.** Seed 0 uses the run's candidates (notebooks 01-02); seed ``s`` > 0 samples a fresh pool
from the same base with generation seed ``generation.seed + 7919·s`` and scores it with the same CLIP and judge
(``hardneg/pools/<s>/``), then selects and trains with seed ``s``. The intervals therefore include the variance
of the candidate pool that selection depends on, not only that of training.

**Assessors** (``hardneg.assessors``, :func:`parse_assessor`): ``truth`` (the run's MAS), ``clip`` (CLIP alone),
``noise:x`` (the judge with independent noise x), ``lownoise:x`` (noise x plus x per nat of the answer's
surprisal under the base model), ``yes:s`` / ``short:s`` / ``prior:q`` (biased judges), ``self`` (the base model's
own P(yes) per claim) and ``vw:w`` (the verdict weight of yes/no scores). Each is the local judge of
:mod:`m3po_utils.judge.server` behind the OpenAI protocol with an :class:`~m3po_utils.judge.server.Assessor`, so MAS
is combined exactly as notebook 02 combines it; its requests are cached in the run's judge cache.

**Evaluation** is POPE-adversarial and the MME-style subtasks only (``KINDS``): what the preference term is
expected to move, at a fraction of notebook 06's cost. Every condition answers the same questions on the same
scenes (``hardneg.n_scenes``); the base model answers them once.

**Caching.** A condition's model lives in ``hardneg/points/<key>/`` where the key hashes what determines it (the
selected pairs, the loss, the steps, the seed, the DPO settings, the question set); conditions that select the same
pairs share one model, and an interrupted notebook resumes at the first missing one.

Stage contract: notebook 11 reads notebooks 00-02 (base, CLIP, candidates, MAS); it samples and judges only its own
extra pools and assessor variants, in its own folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from m3po_utils import evaluation as C
from m3po_utils import results as RS
from m3po_utils import rules, wording
from m3po_utils import scoring as E
from m3po_utils import selection as S
from m3po_utils import shapes as W
from m3po_utils.candidates import generate_candidates
from m3po_utils.config import Preset, parse_assessor
from m3po_utils.dpo import LOG_FILE, adapters_dir, base_loader, load_adapter, train_pairs, training_summary
from m3po_utils.io import atomic_save_array, atomic_write_frame, atomic_write_json
from m3po_utils.judge.self_judge import ModelView
from m3po_utils.judge.server import Assessor
from m3po_utils.mas import combine, judge_items, open_judge, score_pool
from m3po_utils.progress import Progress
from m3po_utils.rundir import RunDir, run_command, run_id
from m3po_utils.shapes.prompts import ImageResolver, preference_prompts

STAGE = "11_hard_negatives"
KINDS = C.SUBSET_KINDS
F1, MME = "pope_adversarial_f1", "mme_total"
METRICS = (F1, MME, "pope_adversarial_yes_ratio")
# "M3PO helps" in a condition: M3PO − best-vs-worst at least this much, its paired 95 % interval above 0, on every
# base (issue 37's definition); "hurts" the mirror image.
HELPS = {F1: 0.01, MME: 10.0}
POOL_SEED_STEP = 7919
EXPERIMENTS = ("E1", "E1_options", "E1_controls", "E2", "E3", "E4", "E5")
BASE = "base model"


# ------------------------------------------------------------------------------------------------ conditions

@dataclasses.dataclass(frozen=True)
class Condition:
    """One trained model of notebook 11."""

    experiment: str
    setting: str                    # the condition's row in the map ("SFT weight 0", "assessor yes:0.3", ...)
    strategy: str                   # a rule of m3po_utils.rules
    sft_weight: float = 1.0         # weight of the SFT term beside DPO (0: plain DPO); SFT-only rules ignore it
    assessor: str = "truth"
    alpha: float = 0.5
    confidence: str = "sum"
    opposite_verdict: bool = False
    pairs: int = 0                  # K: train on the first K prompts' pairs (0 = all)
    order: str = "rule"             # which K prompts: by the rule's own pair score ("rule") or at random
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in rules.names():
            raise ValueError(f"strategy={self.strategy!r} is not a rule; choose from {rules.names()}")
        if self.sft_weight < 0:
            raise ValueError(f"sft_weight={self.sft_weight} must be >= 0")
        if self.confidence not in rules.CONFIDENCE_KINDS:
            raise ValueError(f"confidence={self.confidence!r}: use one of {rules.CONFIDENCE_KINDS}")
        if self.order not in ("rule", "random"):
            raise ValueError(f"order={self.order!r}: use 'rule' or 'random'")
        parse_assessor(self.assessor)

    @property
    def method(self) -> str:
        """The model's label within its condition: the rule's label plus the options that change it."""
        extra = []
        if self.opposite_verdict:
            extra.append("opposite verdict")
        if self.confidence != "sum" and rules.rule(self.strategy).uses_alpha:
            extra.append(f"{self.confidence} log P")
        return rules.label(self.strategy) + (f" ({', '.join(extra)})" if extra else "")


def _both(experiment: str, setting: str, seed: int, **kw) -> list[Condition]:
    return [Condition(experiment, setting, s, seed=seed, **kw) for s in ("best_worst", "m3po")]


def plan(cfg: Preset, experiments: Sequence[str] | None = None) -> list[Condition]:
    """Every condition of ``experiments`` (default ``hardneg.experiments``) for every seed of ``hardneg.seeds``."""
    hc = cfg.hardneg
    w = hc.sensitive_weight
    names = list(experiments if experiments is not None else hc.experiments)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiments {unknown}; choose from {EXPERIMENTS}")
    out: list[Condition] = []
    for seed in hc.seeds:
        if "E1" in names:
            for weight in hc.sft_weights:
                out += [Condition("E1", f"SFT weight {weight:g}", s, sft_weight=weight, seed=seed)
                        for s in ("best_of_n", "random", "best_worst", "m3po", "anti_m3po", "oracle")]
        if "E1_options" in names:
            base = dict(sft_weight=w, seed=seed)
            out += [Condition("E1_options", "opposite-verdict negatives", "best_worst", **base),
                    Condition("E1_options", "opposite-verdict negatives", "m3po", opposite_verdict=True, **base),
                    Condition("E1_options", "per-token confidence", "best_worst", **base),
                    Condition("E1_options", "per-token confidence", "m3po", confidence="mean", **base),
                    *_both("E1_options", "verdict weight 0.9", seed, sft_weight=w, assessor="vw:0.9")]
        if "E1_controls" in names:
            out += [Condition("E1_controls", f"controls at SFT weight {w:g}", s, sft_weight=w, seed=seed)
                    for s in ("best_worst", "m3po", "random_raw", "oracle_neutral")]
        if "E2" in names:
            for k in hc.budgets:
                for order in ("rule", "random"):
                    label = f"K={k}, {'rule-chosen' if order == 'rule' else 'random'} prompts"
                    out += _both("E2", label, seed, sft_weight=w, pairs=k, order=order)
            out += _both("E2", "K=all", seed, sft_weight=w)
        if "E3" in names:
            for a in ("truth", *hc.assessors):
                out += _both("E3", f"assessor {a}", seed, sft_weight=w, assessor=a)
        if "E4" in names:      # best-vs-worst beside every cell: one model, trained once (the same pairs)
            for conf in hc.confidences:
                for a in hc.alphas:
                    out += [Condition("E4", f"α={a:g}, {conf} log P", "best_worst", sft_weight=w, seed=seed),
                            Condition("E4", f"α={a:g}, {conf} log P", "m3po", sft_weight=w, alpha=a,
                                      confidence=conf, seed=seed)]
        if "E5" in names:
            out += [Condition("E5", f"peers at SFT weight {w:g}", s, sft_weight=w, seed=seed)
                    for s in ("best_worst", "m3po", "rlaif_v", "csr", "mu_2sigma")]
    return out


# ------------------------------------------------------------------------------------------------ pools

def assessor_of(spec: str) -> tuple[float, Assessor]:
    """The local judge's independent noise and its :class:`Assessor` for an assessor spec (``"noise:2"``,
    ``"lownoise:1"``, ``"vw:0.9"``, ``"yes:0.3"``, ...; see :func:`m3po_utils.config.parse_assessor`)."""
    name, x = parse_assessor(spec)
    noise = x if name in ("noise", "lownoise") else 0.0
    if name in ("noise", "truth", "clip"):
        return noise, Assessor()
    if name == "lownoise":
        return noise, Assessor(noise_per_nat=x)
    if name == "vw":
        return noise, Assessor(verdict_weight=x)
    if name == "self":
        return noise, Assessor("self")
    return noise, Assessor(name, strength=x)


class Pools:
    """The candidate pool of each seed with the MAS of each assessor, built on demand and cached on disk."""

    def __init__(self, run_dir, cfg: Preset, splits: dict[str, list[W.Scene]]):

        self.run, self.cfg, self.splits = Path(run_dir), cfg, splits
        self.root = RunDir(run_dir).root / "hardneg"
        self.resolver = ImageResolver(cfg, splits)
        self._tables: dict[tuple[int, str], pd.DataFrame] = {}
        self._groups: dict[tuple[int, str, str], tuple[dict, dict]] = {}
        self._view = None
        # What the caches here were built from (the run ids of notebooks 00-02): a rebuilt base, pool or MAS
        # makes every pool, assessor table and base evaluation of this folder stale, so they are dropped.
        self.inputs = {s: run_id(self.run, s) for s in ("00_world", "01_candidates", "02_mas")}
        marker = self.root / "inputs.json"
        try:
            before = json.loads(marker.read_text()) if marker.is_file() else None
        except (OSError, ValueError):
            before = {}
        if before is not None and before != self.inputs:
            for sub in ("pools", "assessors"):
                shutil.rmtree(self.root / sub, ignore_errors=True)
            for f in self.root.glob("base_*.npy"):
                f.unlink()
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(marker, self.inputs)

    # ---- the candidates of a seed, scored by the run's CLIP and judge
    def base_table(self, seed: int) -> pd.DataFrame:
        if (seed, "truth") in self._tables:
            return self._tables[(seed, "truth")]
        if seed == 0 or not self.cfg.hardneg.pool_per_seed:
            table = S.scored_candidates(self.run)
        else:
            table = self._fresh_pool(seed)
        self._tables[(seed, "truth")] = table
        return table

    def _fresh_pool(self, seed: int) -> pd.DataFrame:

        gc = self.cfg.generation
        folder = self.root / "pools" / str(seed)
        if not RunDir(folder).candidates.exists():
            model, processor = base_loader(self.cfg, self.run)()
            generate_candidates(model, processor, preference_prompts(self.cfg, self.splits), self.resolver,
                                n_candidates=gc.n_candidates, temperature=gc.temperature, top_p=gc.top_p,
                                top_k=gc.top_k, max_new_tokens=gc.max_new_tokens, batch_size=gc.batch_size,
                                seed=gc.seed + POOL_SEED_STEP * seed, run_dir=folder, progress=True)
        cands = RunDir(folder).load_candidates().to_pandas()
        scored_path = folder / "scored.json"
        if scored_path.is_file():
            scored = pd.read_json(scored_path, orient="split")
        else:
            with open_judge(self.cfg, self.run, splits=self.splits) as judge:
                scored = score_pool(cands, self.cfg, self.run, self.resolver, self.splits, judge, progress=True)
            atomic_write_frame(scored_path, scored)
        table = cands.merge(scored, on=["prompt_id", "cand_idx"], how="left", validate="one_to_one")
        table["verdict"] = S.verdicts(table)
        return table

    # ---- MAS under an assessor
    def table(self, seed: int, assessor: str = "truth") -> pd.DataFrame:
        key = (seed, assessor)
        if key in self._tables:
            return self._tables[key]

        base = self.base_table(seed)
        name, _ = parse_assessor(assessor)
        t = base.copy()
        if name == "clip":
            t["mas"] = t["clip_score"]
        elif name != "truth":
            js = self.judge_scores(seed, assessor, base)
            t["judge_score"], t["judge_ok"] = js["judge_score"].to_numpy(), js["judge_ok"].to_numpy()
            t["mas"] = combine(t["clip_score"], t["judge_score"], t["judge_ok"], self.cfg.mas)[0]
        self._tables[key] = t
        return t

    def judge_scores(self, seed: int, assessor: str, table: pd.DataFrame) -> pd.DataFrame:
        """The assessor's judge score of every candidate (cached per seed and assessor)."""

        path = self.root / "assessors" / str(seed) / f"{assessor.replace(':', '_')}.json"
        if path.is_file():
            return pd.read_json(path, orient="split")
        noise, a = assessor_of(assessor)
        view = self.model_view() if a.needs_model else None
        items, rows = judge_items(table, self.resolver)
        raw, ok = np.full(len(table), np.nan), np.zeros(len(table), dtype=bool)
        with open_judge(self.cfg, self.run, noise=noise, splits=self.splits, assessor=a, model_view=view) as judge:
            outcomes = judge.judge(items)
        for pos, res in zip(rows, outcomes, strict=True):
            for p, o in zip(pos, res, strict=True):
                raw[p], ok[p] = o.score, o.ok
        out = pd.DataFrame({"prompt_id": table["prompt_id"].to_numpy(), "cand_idx": table["cand_idx"].to_numpy(),
                            "judge_score": (raw - 1.0) / 9.0, "judge_ok": ok})
        atomic_write_frame(path, out)
        return out

    def model_view(self):
        if self._view is None:

            model, processor = base_loader(self.cfg, self.run)()
            self._view = ModelView(model.eval(), processor, self.cfg.world)
        return self._view

    def groups(self, seed: int, assessor: str, confidence: str) -> tuple[dict, dict]:
        """``(groups, truth)`` for selection."""
        key = (seed, assessor, confidence)
        if key not in self._groups:
            t = self.table(seed, assessor)
            g = rules.group_candidates(t, confidence)
            self._groups[key] = (g, rules.truth_by_prompt(g, t))
        return self._groups[key]

    def families(self, seed: int) -> dict[str, str]:
        t = self.base_table(seed)
        return dict(zip(t["prompt_id"].astype(str), t["family"].astype(str), strict=False))


# ------------------------------------------------------------------------------------------------ selection

def select(pools: Pools, c: Condition, cfg: Preset) -> tuple[rules.Selection, dict, dict]:
    """The condition's pairs (ordered and cut to ``c.pairs`` prompts) with its groups and truth."""
    sc = cfg.selection
    groups, truth = pools.groups(c.seed, c.assessor, c.confidence)
    sel = rules.select(groups, c.strategy, c.alpha, sc.delta, sc.min_margin, sc.pairs_per_prompt, c.seed,
                       truth if rules.rule(c.strategy).needs_truth else None, c.opposite_verdict)
    if c.pairs:
        sel = budget(sel, groups, c.pairs, c.order, c.seed)
    return sel, groups, truth


def pair_priority(choice: rules.PromptChoice, g: dict) -> float:
    """How much a rule values one prompt's pair: MAS(chosen) minus the rule's own score of the rejected answer
    (M3PO: its M3P-Score; the others: the MAS the rule read) — the pairs a rule would keep first."""
    w, lo = choice.pairs[0]
    if lo is None:
        return float(g["mas"][w])
    s = choice.s_scores[0] if choice.s_scores else float(g["mas"][lo])
    return float(g["mas"][w] - s)


def budget(sel: rules.Selection, groups: dict, k: int, order: str, seed: int) -> rules.Selection:
    """The first ``k`` prompts with a pair, by the rule's own priority (``order="rule"``, ties in prompt order) or
    in a seeded random order; prompts without a pair are kept as they are (their skip reasons stay counted)."""
    with_pairs = [c for c in sel.choices if c.pairs]
    if order == "rule":
        ranked = sorted(range(len(with_pairs)), key=lambda i: -pair_priority(with_pairs[i],
                                                                             groups[with_pairs[i].prompt_id]))
    else:
        ranked = list(np.random.default_rng([seed, 11]).permutation(len(with_pairs)))
    keep = {with_pairs[i].prompt_id for i in ranked[:k]}
    rank = {with_pairs[i].prompt_id: n for n, i in enumerate(ranked)}
    kept = sorted((c for c in with_pairs if c.prompt_id in keep), key=lambda c: rank[c.prompt_id])
    return rules.Selection(sel.strategy, sel.alpha, sel.delta, kept + [c for c in sel.choices if not c.pairs])


def mechanism(sel: rules.Selection, ref: rules.Selection, groups: dict, truth: dict | None,
              families: dict[str, str]) -> dict[str, float]:
    """What the pairs are, against best-vs-worst's on the same pool: pair agreement, rejected verdicts, truth."""
    ref_pairs = {c.prompt_id: c.pairs[0] for c in ref.choices if c.pairs}
    n = same_pair = same_rej = yn = same_verdict = inverted = rej_right = ex = ex_rej_yes = 0
    for c in sel.choices:
        if not c.pairs or c.pairs[0][1] is None:
            continue
        g = groups[c.prompt_id]
        w, lo = c.pairs[0]
        fam = families.get(c.prompt_id, "")
        n += 1
        if truth is not None:
            inverted += truth[c.prompt_id][lo] > truth[c.prompt_id][w]
            rej_right += truth[c.prompt_id][lo] >= 1.0
        if fam == "existence":
            ex += 1
            ex_rej_yes += W.yes_no(g["text"][lo]) == "yes"
        if c.prompt_id in ref_pairs and ref_pairs[c.prompt_id][1] is not None:
            rw, rl = ref_pairs[c.prompt_id]
            same_rej += g["text"][lo] == g["text"][rl]
            same_pair += g["text"][lo] == g["text"][rl] and g["text"][w] == g["text"][rw]
            if fam in W.YES_NO_FAMILIES:
                yn += 1
                same_verdict += W.yes_no(g["text"][lo]) == W.yes_no(g["text"][rl])
    if not n:
        return {"pairs": 0.0}
    out = {"pairs": float(n), "same_pair_as_bvw": same_pair / n, "same_rejected_as_bvw": same_rej / n,
           "same_rejected_verdict_as_bvw": same_verdict / yn if yn else float("nan"),
           "existence_rejected_yes": ex_rej_yes / ex if ex else float("nan")}
    if truth is not None:
        out |= {"inverted": float(inverted / n), "rejected_fully_right": float(rej_right / n)}
    return out


# ------------------------------------------------------------------------------------------------ training

def fixed_steps(pools: Pools, cfg: Preset, seed: int) -> int:
    """The optimiser steps of every model of a seed: ``hardneg.steps``, or one epoch of best-vs-worst's pairs."""
    if cfg.hardneg.steps:
        return cfg.hardneg.steps
    groups, _ = pools.groups(seed, "truth", "sum")
    sc = cfg.selection
    n = rules.select(groups, "best_worst", 0.0, sc.delta, sc.min_margin, sc.pairs_per_prompt, seed).n_pairs
    return max(1, math.ceil(n / (cfg.dpo.batch_size * cfg.dpo.grad_accum)))


def condition_config(cfg: Preset, c: Condition) -> Preset:
    """The preset a condition trains with: its seed and its loss (DPO, plus the SFT term at ``sft_weight``)."""
    dpo = dataclasses.replace(cfg.dpo, seed=c.seed, loss_type=("sigmoid", "sft") if c.sft_weight else ("sigmoid",),
                              loss_weights=(1.0, float(c.sft_weight)) if c.sft_weight else (1.0,))
    return dataclasses.replace(cfg, dpo=dpo, selection=dataclasses.replace(cfg.selection, seed=c.seed))


def condition_key(c: Condition, sel: rules.Selection, cfg: Preset, steps: int, questions: str,
                  inputs: dict | None = None) -> str:
    sft_only = rules.rule(c.strategy).sft_only
    pairs = [(ch.prompt_id, [list(x) if x else None for x in ch.pairs]) for ch in sel.choices if ch.pairs]
    dpo = dataclasses.asdict(condition_config(cfg, c).dpo)
    if sft_only:             # the SFT-only control is one model whatever the SFT weight of its condition
        dpo.pop("loss_type"), dpo.pop("loss_weights")
    blob = json.dumps({"pairs": pairs, "sft_only": sft_only, "seed": c.seed, "pool": _pool_id(cfg, c.seed),
                       "dpo": dpo, "steps": steps, "questions": questions, "inputs": inputs or {}}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _pool_id(cfg: Preset, seed: int) -> str:
    return "run" if seed == 0 or not cfg.hardneg.pool_per_seed else f"pool{seed}"


def questions_for(scenes: Sequence[W.Scene], cfg: Preset) -> list[dict]:
    return C.subset_questions(scenes, cfg, KINDS)


class Evaluator(C.Evaluator):
    """The fixed evaluation: the same scenes and POPE-adversarial / MME questions for every model."""

    def __init__(self, cfg: Preset, splits: dict[str, list[W.Scene]]):
        n = cfg.hardneg.n_scenes
        super().__init__(cfg, splits["eval"][: n or None], KINDS)


def _load_stats(path: Path) -> np.ndarray | None:
    try:
        arr = np.load(path)
    except (OSError, ValueError):
        return None
    return arr if arr.ndim == 2 and arr.shape[1] == len(E.STATS) else None


def base_stats(run_dir, cfg: Preset, ev: Evaluator) -> np.ndarray:
    """The base model's counts on the evaluation questions (cached)."""

    path = RunDir(run_dir).root / "hardneg" / f"base_{ev.key[:16]}.npy"     # dropped by Pools when 00-02 change
    cached = _load_stats(path)
    if cached is not None:
        return cached
    model, processor = base_loader(cfg, run_dir)()
    stats = ev.stats(model.eval(), processor)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_array(path, stats)
    return stats


def run_condition(run_dir, cfg: Preset, pools: Pools, ev: Evaluator, c: Condition) -> dict:
    """Select, train and evaluate one condition (or read it back); returns its record."""
    sc = cfg.selection
    sel, groups, truth = select(pools, c, cfg)
    ref_groups, _ = pools.groups(c.seed, c.assessor, c.confidence)
    ref = rules.select(ref_groups, "best_worst", 0.0, sc.delta, sc.min_margin, sc.pairs_per_prompt, c.seed)
    mech = mechanism(sel, ref, groups, truth, pools.families(c.seed)) if not rules.rule(c.strategy).sft_only else {}
    steps = fixed_steps(pools, cfg, c.seed)
    key = condition_key(c, sel, cfg, steps, ev.key, pools.inputs)
    folder = RunDir(run_dir).root / "hardneg" / "points" / key
    record_path, stats_path = folder / "result.json", folder / "stats.npy"
    base = {"condition": dataclasses.asdict(c), "method": c.method, "key": key, "selection": mech}
    if record_path.is_file() and _load_stats(stats_path) is not None:
        return json.loads(record_path.read_text()) | base | {"cached": True}
    if not sel.n_pairs:
        raise ValueError(f"{c.method} selected no pairs in condition {c.setting!r} (seed {c.seed}); skipped: "
                         f"{sel.skipped}")
    t0 = time.perf_counter()
    ccfg = condition_config(cfg, c)
    S.write_pairs(folder, sel, pools.table(c.seed, c.assessor), pools.resolver, {"key": key})
    ds = RunDir(folder).load_pairs(c.strategy)
    loader = base_loader(cfg, run_dir)
    info = train_pairs(adapters_dir(folder, "adapter"), ccfg, ds, c.strategy, sft_only=rules.rule(c.strategy).sft_only,
                       model_loader=loader, steps=steps)
    log = json.loads((adapters_dir(folder, "adapter") / LOG_FILE).read_text())
    model, processor = loader()
    model = load_adapter(model, adapters_dir(folder, "adapter")).merge_and_unload().eval()
    stats = ev.stats(model, processor)
    shutil.rmtree(folder / "pairs", ignore_errors=True)         # re-derivable; the adapter and its log stay
    atomic_save_array(stats_path, stats)
    record = {"pairs_trained": info["pairs"], "steps": info["steps"], "train_seconds": info["seconds"],
              "seconds": time.perf_counter() - t0,
              "training": {} if rules.rule(c.strategy).sft_only else training_summary(log, ccfg.dpo.beta)}
    atomic_write_json(record_path, record | base)
    return record | base | {"cached": False}


def run_experiment(run_dir, cfg: Preset, conditions: Sequence[Condition], pools: Pools, ev: Evaluator,
                   progress: bool = True, label: str = "conditions") -> tuple[list[dict], dict[str, np.ndarray]]:
    """Every condition (cached ones read back): the records and each key's per-scene counts."""
    records, stats = [], {}
    for c in Progress.over(conditions, label, unit="model", enabled=progress):
        r = run_condition(run_dir, cfg, pools, ev, c)
        records.append(r)
        stats[r["key"]] = np.load(RunDir(run_dir).root / "hardneg" / "points" / r["key"] / "stats.npy")
    return records, stats


# ------------------------------------------------------------------------------------------------ analysis

def method_label(r: dict) -> str:
    return f"{r['condition']['setting']} · {r['method']}"


def bootstrap(records: Sequence[dict], stats: dict[str, np.ndarray], base: np.ndarray | None = None,
              n_boot: int = 1000, seed: int = 0) -> C.Bootstrap:
    """Paired bootstrap over scenes and seeds of every (setting · method) of ``records`` (plus the base model,
    repeated over the seeds, when given)."""
    by: dict[str, dict[int, np.ndarray]] = {}
    for r in records:
        by.setdefault(method_label(r), {})[r["condition"]["seed"]] = stats[r["key"]]
    seeds = sorted({s for v in by.values() for s in v})
    incomplete = [m for m, v in by.items() if sorted(v) != seeds]
    if incomplete:
        raise ValueError(f"methods without every seed {seeds}: {incomplete}")
    arrays = {m: np.stack([v[s] for s in seeds]) for m, v in by.items()}
    if base is not None:
        arrays[BASE] = np.stack([base] * len(seeds))
    return C.bootstrap(arrays, n_boot=n_boot, seed=seed)


def comparisons(records: Sequence[dict]) -> list[tuple[str, str, str]]:
    """``(setting, M3PO-variant label, reference label)`` of each condition holding an M3PO model and a
    best-vs-worst one (a condition with several M3PO variants has a row per variant)."""
    out = []
    by_setting: dict[str, dict[str, dict]] = {}
    for r in records:
        by_setting.setdefault(r["condition"]["setting"], {})[r["method"]] = r
    for setting, methods in by_setting.items():
        ref = next((m for m, r in methods.items() if r["condition"]["strategy"] == "best_worst"), None)
        if ref is None:
            continue
        for m, r in methods.items():
            if r["condition"]["strategy"] == "m3po":
                out.append((setting, f"{setting} · {m}", f"{setting} · {ref}"))
    return out


def versus(e_records: Sequence[dict], boot: C.Bootstrap, reference: str = "best_worst") -> pd.DataFrame:
    """Every model of each setting against the setting's ``reference`` rule (best-vs-worst by default): the paired
    difference on F1 and MME with its interval (the peers' rows of E5, the controls of E1)."""
    by_setting: dict[str, dict[str, str]] = {}
    for r in e_records:
        by_setting.setdefault(r["condition"]["setting"], {})[r["condition"]["strategy"]] = method_label(r)
    rows = []
    for setting, labels in by_setting.items():
        ref = labels.get(reference)
        if ref is None:
            continue
        for strategy, lab in labels.items():
            if strategy == reference:
                continue
            row = {"setting": setting, "method": lab.split(" · ", 1)[1], "versus": rules.label(reference)}
            for metric, short in ((F1, "f1"), (MME, "mme")):
                d = _delta(boot, lab, ref, metric)
                row |= {short: d["delta"], f"{short}_lo": d["lo"], f"{short}_hi": d["hi"]}
            rows.append(row)
    return pd.DataFrame(rows)


def verdict(rows: Sequence[dict]) -> str:
    """"helps", "hurts" or "no clear difference" from one condition's M3PO − best-vs-worst on each base (rows with
    ``f1``/``f1_lo``/``f1_hi``/``mme``/``mme_lo``/``mme_hi``): helps when on **every** base F1 gains at least
    1 point or MME at least 10 with the 95 % interval above 0; hurts the mirror image; "mixed" when one base
    says helps and another hurts."""
    def says(r: dict) -> str:
        up = (r["f1"] >= HELPS[F1] and r["f1_lo"] > 0) or (r["mme"] >= HELPS[MME] and r["mme_lo"] > 0)
        down = (r["f1"] <= -HELPS[F1] and r["f1_hi"] < 0) or (r["mme"] <= -HELPS[MME] and r["mme_hi"] < 0)
        return "helps" if up and not down else "hurts" if down and not up else "none"

    each = [says(r) for r in rows]
    if not each:
        raise ValueError("no base to judge")
    if all(s == "helps" for s in each):
        return "helps"
    if all(s == "hurts" for s in each):
        return "hurts"
    if "helps" in each and "hurts" in each:
        return "mixed"
    return "no clear difference"


def _delta(boot: C.Bootstrap, a: str, b: str, metric: str) -> dict[str, float]:
    return boot.delta(a, b, metric) if a in boot.point and b in boot.point else \
        {"delta": float("nan"), "lo": float("nan"), "hi": float("nan")}


def map_rows(records: Sequence[dict], boot: C.Bootstrap, base_label: str = "this base") -> list[dict]:
    """One row per (condition, M3PO variant): M3PO − best-vs-worst and M3PO − best-of-N (F1 in points, MME) with
    their intervals, and the mechanism beside it (mean over seeds)."""
    sft = next((method_label(r) for r in records if r["condition"]["strategy"] == "best_of_n"), None)
    by_label: dict[str, list[dict]] = {}
    for r in records:
        by_label.setdefault(method_label(r), []).append(r)
    rows = []
    for setting, m3, ref in comparisons(records):
        row: dict = {"base": base_label, "experiment": by_label[m3][0]["condition"]["experiment"],
                     "setting": setting, "method": m3.split(" · ", 1)[1]}
        for metric, short, scale in ((F1, "f1", 1.0), (MME, "mme", 1.0)):
            d = _delta(boot, m3, ref, metric)
            row |= {short: d["delta"] * scale, f"{short}_lo": d["lo"] * scale, f"{short}_hi": d["hi"] * scale}
            if sft is not None:
                s = _delta(boot, m3, sft, metric)
                row |= {f"{short}_vs_sft": s["delta"], f"{short}_vs_sft_lo": s["lo"], f"{short}_vs_sft_hi": s["hi"]}
        if m3 in boot.point and ref in boot.point:     # the smallest difference this budget would detect (80 %)
            row |= {"f1_mde": boot.mde(m3, ref, F1), "mme_mde": boot.mde(m3, ref, MME)}
        mine, theirs = by_label[m3], by_label[ref]
        row |= {"same_pair_as_bvw": _mean(mine, "selection", "same_pair_as_bvw"),
                "same_rejected_verdict_as_bvw": _mean(mine, "selection", "same_rejected_verdict_as_bvw"),
                "margin_m3po": _mean(mine, "training", "margin"), "margin_bvw": _mean(theirs, "training", "margin"),
                "chosen_drift_m3po": _mean(mine, "training", "chosen_drift_nats"),
                "chosen_drift_bvw": _mean(theirs, "training", "chosen_drift_nats"),
                "yes_ratio_m3po": boot.point[m3].get("pope_adversarial_yes_ratio", float("nan")),
                "yes_ratio_bvw": boot.point[ref].get("pope_adversarial_yes_ratio", float("nan"))}
        row["verdict"] = verdict([row])
        rows.append(row)
    return rows


def _mean(records: Sequence[dict], part: str, key: str) -> float:
    vals = [r.get(part, {}).get(key) for r in records]
    vals = [v for v in vals if isinstance(v, (int, float)) and not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def combine_bases(rows_by_base: dict[str, Sequence[dict]]) -> pd.DataFrame:
    """The map over bases: each (experiment, setting, method) with every base's row and one verdict that needs
    every base (a condition missing on a base gets "not run on every base")."""
    frames = []
    for base, rows in rows_by_base.items():
        for r in rows:
            frames.append(dict(r) | {"base": base})
    df = pd.DataFrame(frames)
    if df.empty:
        return df
    keys = ["experiment", "setting", "method"]
    n_bases = len(rows_by_base)
    verdicts = {}
    for k, g in df.groupby(keys, sort=False):
        verdicts[k] = verdict(g.to_dict(orient="records")) if len(g) == n_bases else "not run on every base"
    df["verdict (all bases)"] = [verdicts[tuple(r)] for r in df[keys].itertuples(index=False)]
    return df


def selection_table(records: Sequence[dict]) -> pd.DataFrame:
    """Per (setting, method): the pairs' mechanism and the training metrics, mean over seeds."""
    rows = []
    for r in records:
        rows.append({"setting": r["condition"]["setting"], "method": r["method"], "seed": r["condition"]["seed"],
                     **{k: v for k, v in r.get("selection", {}).items()},
                     **{k: v for k, v in r.get("training", {}).items()}})
    df = pd.DataFrame(rows)
    order = list(dict.fromkeys(zip(df["setting"], df["method"], strict=True)))
    return df.drop(columns="seed").groupby(["setting", "method"], sort=False).mean().loc[order]


def curve_frame(records: Sequence[dict], boot: C.Bootstrap, x, series) -> pd.DataFrame:
    """Tidy rows for :func:`m3po_utils.plots.hardneg.plot_curves`: per model label, ``x(condition)``,
    ``series(record)``, every metric with its interval and the mechanism (mean over seeds)."""
    sel = selection_table(records)
    rows, seen = [], set()
    for r in records:
        lab = method_label(r)
        if lab in seen or lab not in boot.point:
            continue
        seen.add(lab)
        row = {"x": x(r["condition"]), "series": series(r)}
        for k in METRICS:
            lo, hi = boot.interval(lab, k)
            row |= {k: boot.point[lab][k], f"{k}_lo": lo, f"{k}_hi": hi}
        mech = sel.loc[(r["condition"]["setting"], r["method"])]
        row |= {k: float(mech[k]) if k in mech else float("nan")
                for k in ("chosen_drift_nats", "margin", "same_pair_as_bvw", "rejected_fully_right", "inverted")}
        rows.append(row)
    return pd.DataFrame(rows)


def metric_table(boot: C.Bootstrap, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Every model's metrics with their intervals (:func:`m3po_utils.evaluation.interval_frame`)."""
    return C.interval_frame(boot, metrics)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ: the Pearson correlation of the average ranks (NaN with fewer than 3 values or a constant)."""
    if len(a) < 3:
        return float("nan")
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def assessor_agreement(pools: Pools, assessors: Iterable[str], cfg: Preset, seed: int = 0) -> pd.DataFrame:
    """Per assessor on one seed's pool: Spearman ρ of MAS with the truth over all candidates, and per strategy
    (best-vs-worst, M3PO) the share of pairs whose rejected answer the truth scores above the chosen one
    (inverted) and whose rejected answer is fully right."""
    sc = cfg.selection
    rows = []
    for a in assessors:
        t = pools.table(seed, a)
        ok = t["mas"].notna()
        rho = spearman(t.loc[ok, "mas"].to_numpy(), t.loc[ok, "truth"].to_numpy())
        row: dict = {"assessor": a, "spearman_with_truth": rho}
        groups, truth = pools.groups(seed, a, "sum")
        for s in ("best_worst", "m3po"):
            sel = rules.select(groups, s, sc.alpha, sc.delta, sc.min_margin, sc.pairs_per_prompt, seed)
            m = mechanism(sel, sel, groups, truth, pools.families(seed))
            row |= {f"{s}_pairs": m.get("pairs", 0.0), f"{s}_inverted": m.get("inverted", float("nan")),
                    f"{s}_rejected_fully_right": m.get("rejected_fully_right", float("nan"))}
        rows.append(row)
    return pd.DataFrame(rows).set_index("assessor")


# ------------------------------------------------------------------------------------------------ predictions

@dataclasses.dataclass(frozen=True)
class Check:
    """One predicted comparison: ``a − b`` on ``metric`` is expected ``"<0"``, ``">0"`` or ``"~0"`` (inside ±tol)."""

    setting: str
    a: str                          # a rule name (the method of that rule in the setting) or "base"
    b: str
    metric: str
    expect: str
    tol: float = 0.0


@dataclasses.dataclass(frozen=True)
class Prediction:
    experiment: str
    text: str
    checks: tuple[Check, ...] = ()


# Written on 2026-12-07 before any of these experiments ran (see the git history of this file). The pilot quoted
# in issue 37 (seed-0 base, one pool, 400 scenes) is the only measurement they could lean on.
PREDICTIONS: tuple[Prediction, ...] = (
    Prediction("E1", "With the SFT term at weight 1 the rejected answer barely matters: M3PO − best-vs-worst stays "
               "inside ±1 F1 point and ±10 MME on both bases. At weight 0.1 and 0 the preference term drives "
               "learning and M3PO's negatives hurt: M3PO − best-vs-worst below −2 points at weight 0, with M3PO's "
               "chosen answers losing likelihood (more negative chosen drift than best-vs-worst), a smaller learnt "
               "margin and a lower yes-ratio. Anti-M3PO (the least likely wrong answer) does not hurt: within "
               "±2 points of best-vs-worst at weight 0.",
               (Check("SFT weight 1", "m3po", "best_worst", F1, "~0", 0.01),
                Check("SFT weight 0", "m3po", "best_worst", F1, "<0"),
                Check("SFT weight 0.1", "m3po", "best_worst", F1, "<0"),
                Check("SFT weight 0", "anti_m3po", "best_worst", F1, "~0", 0.02),
                Check("SFT weight 0", "m3po", "best_worst", "pope_adversarial_yes_ratio", "<0"))),
    Prediction("E1_options", "Restricting M3PO's negatives to the opposite verdict removes most of the harm at "
               "weight 0 (within 2 F1 points of best-vs-worst); per-token confidence and a verdict weight of 0.9 "
               "each remove part of it but M3PO stays below best-vs-worst.",
               (Check("opposite-verdict negatives", "m3po", "best_worst", F1, "~0", 0.02),
                Check("per-token confidence", "m3po", "best_worst", F1, "<0"),
                Check("verdict weight 0.9", "m3po", "best_worst", F1, "<0"))),
    Prediction("E1_controls", "Unfiltered random pairs and the oracle with neutral ties both stay at or above "
               "best-vs-worst at weight 0 (neither shares M3PO's confident wrong negatives).",
               (Check("controls at SFT weight 0", "random_raw", "m3po", F1, ">0"),
                Check("controls at SFT weight 0", "oracle_neutral", "m3po", F1, ">0"))),
    Prediction("E2", "At a fixed step count fewer pairs mean more epochs on them; both rules lose F1 as K shrinks "
               "and M3PO stays below best-vs-worst at every K. Prompts chosen by best-vs-worst's own score (the "
               "largest MAS gaps: a right answer against a plainly wrong one) beat random prompts at K = 64.",
               (Check("K=64, rule-chosen prompts", "m3po", "best_worst", F1, "<0"),
                Check("K=all", "m3po", "best_worst", F1, "<0"))),
    Prediction("E3", "Assessors that are not the truth change which answers are rejected. A noisy judge inverts "
               "more of M3PO's pairs than best-vs-worst's (the most likely answer is often right and a noisy score "
               "can rank it below the best); a yes-biased judge and a judge that shares the prior rank confident "
               "'yes' hallucinations higher, so both rules reject fewer of them; the self-judge agrees with itself, "
               "so M3PO's confident answers are rarely scored low. M3PO stays at or below best-vs-worst under every "
               "assessor.",
               (Check("assessor noise:2", "m3po", "best_worst", F1, "<0"),
                Check("assessor self", "m3po", "best_worst", F1, "<0"))),
    Prediction("E4", "α saturates: in summed log P the harm at α = 0.1 is already that of α = 0.5; per-token log P "
               "(a smaller range) saturates later, and rank-normalised confidence at α ≤ 0.1 hardly changes the "
               "pairs (same pair as best-vs-worst on most prompts) and so hardly changes the outcome.",
               (Check("α=0.5, sum log P", "m3po", "best_worst", F1, "<0"),
                Check("α=0.02, rank log P", "m3po", "best_worst", F1, "~0", 0.02))),
    Prediction("E5", "The peers' rules sit between M3PO and best-vs-worst: RLAIF-V's pairs (random above a margin) "
               "and μ − 2σ (milder negatives than the worst) near best-vs-worst; CSR, which ignores the judge, "
               "chooses worse answers (the tiny CLIP is weak) and is the lowest of the three.",
               (Check("peers at SFT weight 0", "mu_2sigma", "m3po", F1, ">0"),
                Check("peers at SFT weight 0", "csr", "best_worst", F1, "<0"))),
)


def prediction_outcomes(records: Sequence[dict], boot: C.Bootstrap, experiment: str) -> pd.DataFrame:
    """Each check of the experiment's prediction beside its measurement: the paired delta with its interval and
    ``as predicted`` / ``opposite`` / ``not shown`` (the interval cannot tell) — or ``not run``."""
    labels = {(r["condition"]["setting"], r["condition"]["strategy"]): method_label(r) for r in records}
    rows = []
    for p in PREDICTIONS:
        if p.experiment != experiment:
            continue
        for ch in p.checks:
            a = BASE if ch.a == "base" else labels.get((ch.setting, ch.a))
            b = BASE if ch.b == "base" else labels.get((ch.setting, ch.b))
            row = {"setting": ch.setting, "comparison": f"{rules.label(ch.a) if ch.a != 'base' else BASE} − "
                   f"{rules.label(ch.b) if ch.b != 'base' else BASE}", "metric": ch.metric,
                   "predicted": {"<0": "below 0", ">0": "above 0", "~0": f"within ±{ch.tol:g}"}[ch.expect]}
            if a is None or b is None or a not in boot.point or b not in boot.point:
                rows.append(row | {"delta": float("nan"), "lo": float("nan"), "hi": float("nan"),
                                   "outcome": "not run"})
                continue
            d = boot.delta(a, b, ch.metric)
            rows.append(row | {"delta": d["delta"], "lo": d["lo"], "hi": d["hi"],
                               "outcome": outcome(ch, d["delta"], d["lo"], d["hi"])})
    return pd.DataFrame(rows)


def outcome(ch: Check, delta: float, lo: float, hi: float) -> str:
    """``as predicted`` when the interval shows the predicted direction (or lies inside ±tol for ``~0``),
    ``opposite`` when it shows the other direction (or, for ``~0``, lies wholly outside ±tol), else ``not shown``."""
    if ch.expect == "<0":
        return "as predicted" if hi < 0 else "opposite" if lo > 0 else "not shown"
    if ch.expect == ">0":
        return "as predicted" if lo > 0 else "opposite" if hi < 0 else "not shown"
    if -ch.tol <= lo and hi <= ch.tol:
        return "as predicted"
    return "opposite" if lo > ch.tol or hi < -ch.tol else "not shown"


# ------------------------------------------------------------------------------------------------ the paragraph

def _n(k: int, noun: str) -> str:
    return f"{k} {noun}" + ("" if k == 1 else "s")


def map_paragraph(df: pd.DataFrame, n_bases: int) -> str:
    """The map's conclusion in words, from ``combine_bases``'s frame: where M3PO's selection helps, hurts or
    changes nothing, counted over the conditions run on every base, and the mechanism beside the harm."""
    if df.empty:
        return "No condition holds both an M3PO and a best-vs-worst model: the map is empty."
    col = "verdict (all bases)"
    per = df.drop_duplicates(["experiment", "setting", "method"])
    judged = per[per[col] != "not run on every base"]
    where = "on both bases" if n_bases == 2 else f"on all {n_bases} bases" if n_bases > 2 else "on this one base"
    out = []
    n = len(judged)
    if not n:
        return f"No condition was run on every base ({n_bases}); the map gives no verdict."
    counts = judged[col].value_counts()
    hurt = judged[judged[col] == "hurts"]
    helped = judged[judged[col] == "helps"]
    pts = HELPS[F1] * 100
    out.append(f"Of the {_n(n, 'condition')} measured {where}, M3PO's selection helps in {counts.get('helps', 0)}, "
               f"hurts in {counts.get('hurts', 0)}, gives mixed answers in {counts.get('mixed', 0)} and makes no "
               f"clear difference in {counts.get('no clear difference', 0)} (helps / hurts: M3PO − best-vs-worst "
               f"at least {pts:g} POPE-adversarial F1 point{'' if pts == 1 else 's'} or {HELPS[MME]:g} MME in one "
               f"direction, with the 95 % interval beyond 0, {where}).")
    every = df[df[col] != "not run on every base"]
    if "f1_mde" in every and every["f1_mde"].notna().any():
        out.append(f"This budget detects a difference of {every['f1_mde'].median() * 100:.1f} F1 points or "
                   f"{every['mme_mde'].median():.0f} MME with 80 % power (the median minimum detectable difference "
                   "over these conditions and bases).")
    if len(helped):
        out.append("It helps in: " + "; ".join(f"{r.setting} ({r.method})" for r in helped.itertuples()) + ".")
    if len(hurt):
        out.append("It hurts in: " + "; ".join(f"{r.setting} ({r.method})" for r in hurt.itertuples()) + ".")
        h = df[df[["experiment", "setting", "method"]].apply(tuple, axis=1).isin(
            set(hurt[["experiment", "setting", "method"]].apply(tuple, axis=1)))]
        drift = h["chosen_drift_m3po"] - h["chosen_drift_bvw"]
        margin = h["margin_m3po"] - h["margin_bvw"]
        yes = h["yes_ratio_m3po"] - h["yes_ratio_bvw"]
        if drift.notna().any():
            out.append(f"Where it hurts, against best-vs-worst in the same (condition, base) cell: M3PO's chosen "
                       f"answers end with less likelihood in {int((drift < 0).sum())} of {int(drift.notna().sum())} "
                       f"cells (chosen drift in nats, mean over the last 10 steps), its learnt margin is smaller in "
                       f"{int((margin < 0).sum())} of {int(margin.notna().sum())} and its POPE yes-ratio is lower "
                       f"in {int((yes < 0).sum())} of {int(yes.notna().sum())}.")
        verdict = h["same_rejected_verdict_as_bvw"]
        if verdict.notna().any():
            out.append(f"Its rejected answer gives the same yes/no verdict as best-vs-worst's on "
                       f"{_span(verdict)} of prompts and is the same pair on {_span(h['same_pair_as_bvw'])}.")
    none = judged[judged[col] == "no clear difference"]
    if len(none):
        same = none["same_pair_as_bvw"]
        if same.notna().any():
            out.append(f"Where it makes no clear difference, M3PO's pair is best-vs-worst's on {_span(same)} of "
                       "prompts.")
    return " ".join(out)


def _span(values: pd.Series) -> str:
    """The range of a column of shares in words ("43 %" or "38 %–57 %"), never rounded to 100 % or 0 %."""
    v = values.dropna()
    lo, hi = wording.share(v.min()), wording.share(v.max())
    return lo if lo == hi else f"{lo}–{hi}"


# ------------------------------------------------------------------------------------------------ the notebook's units

@dataclasses.dataclass
class Experiment:
    """One experiment as notebook 11 shows it: the records, per-scene counts, bootstrap and summary."""

    name: str
    records: list[dict]
    stats: dict[str, np.ndarray]
    boot: C.Bootstrap
    summary: dict

    @property
    def outcomes(self) -> pd.DataFrame:
        return pd.DataFrame(self.summary["predictions"])


def experiment(run_dir, cfg: Preset, name: str, pools: Pools, ev: Evaluator, base: np.ndarray | None,
               progress: bool = True) -> Experiment | None:
    """Run (or read back) every condition of experiment ``name`` and summarise it; None when ``name`` is not in
    ``hardneg.experiments``."""
    hc = cfg.hardneg
    if name not in hc.experiments:
        return None
    t0 = time.perf_counter()
    records, stats = run_experiment(run_dir, cfg, plan(cfg, [name]), pools, ev, progress=progress, label=name)
    boot = bootstrap(records, stats, base, n_boot=hc.bootstrap, seed=cfg.seed)
    distinct = {r["key"]: r for r in records}
    summary = {
        "conditions": len(records), "models": len(distinct),
        "trained_now": sum(not r.get("cached") for r in distinct.values()),
        "seconds": time.perf_counter() - t0,
        "train_and_eval_seconds": sum(r["seconds"] for r in distinct.values()),
        "metrics": metric_table(boot).to_dict(orient="index"),
        "selection": {" · ".join(k): v for k, v in selection_table(records).to_dict(orient="index").items()},
        "predictions": prediction_outcomes(records, boot, name).to_dict(orient="records"),
        "versus": versus(records, boot).to_dict(orient="records"),
        "prediction_text": " ".join(p.text for p in PREDICTIONS if p.experiment == name)}
    return Experiment(name, records, stats, boot, summary)


def totals(done: dict[str, Experiment | None]) -> dict[str, float]:
    """Conditions, distinct models and their training + evaluation time over every experiment that ran (a model
    two experiments share counted once)."""
    distinct = {r["key"]: r for e in done.values() if e for r in e.records}
    return {"conditions": sum(len(e.records) for e in done.values() if e), "models": len(distinct),
            "train_and_eval_seconds": float(sum(r["seconds"] for r in distinct.values()))}


def describe_run(e: Experiment) -> str:
    s = e.summary
    return (f"{e.name}: {s['conditions']} conditions, {s['models']} distinct models ({s['trained_now']} trained "
            f"now); training and evaluating them took {s['train_and_eval_seconds'] / 60:.1f} min when they were "
            "trained")


def headline(e: Experiment) -> str:
    """A figure title for an experiment: in how many of its conditions M3PO is below / above best-vs-worst on F1
    with the interval beyond 0."""
    rows = map_rows(e.records, e.boot)
    if not rows:
        return e.name
    below = sum(r["f1_hi"] < 0 for r in rows)
    above = sum(r["f1_lo"] > 0 for r in rows)
    return (f"{e.name}: M3PO below best-vs-worst on POPE-adversarial F1 in {below} of {len(rows)} conditions, "
            f"above in {above}")


def map_title(df: pd.DataFrame, n_bases: int) -> str:
    per = df.drop_duplicates(["experiment", "setting", "method"])
    counts = per["verdict (all bases)"].value_counts()
    where = "this base" if n_bases == 1 else f"all {n_bases} bases"
    return (f"M3PO's selection hurts in {counts.get('hurts', 0)}, helps in {counts.get('helps', 0)} of {len(per)} "
            f"conditions (verdict on {where})")


def other_bases(cfg: Preset, run_dir) -> dict[str, list[dict]]:
    """The map rows of each run directory in ``hardneg.other_bases`` whose notebook 11 finished, by base name;
    a directory without a finished notebook 11, or of another preset, is an error naming it and the fix."""

    out: dict[str, list[dict]] = {}
    for other in cfg.hardneg.other_bases:
        path = Path(other).expanduser()
        if not path.is_absolute():
            path = (Path(run_dir).parent / path) if not path.exists() else path
        try:
            rec = RS.load(path, STAGE)
        except (FileNotFoundError, RS.ResultsError, ValueError) as exc:
            raise ValueError(f"hardneg.other_bases names {str(other)!r}, which has no finished notebook 11 "
                             f"({exc}). Run it there first: {run_command(path, '--from', '11')}") from None
        if not rec.complete:
            raise ValueError(f"hardneg.other_bases: notebook 11 in {str(other)!r} did not finish; run "
                             f"{run_command(path, '--from', '11')}")
        if rec.preset != cfg.name:
            raise ValueError(f"hardneg.other_bases: {str(other)!r} is a {rec.preset!r} run, this one is "
                             f"{cfg.name!r}; compare runs of one preset")
        rows = [dict(r) for r in rec.map]
        name = rows[0]["base"] if rows else str(other)
        out[name] = rows
    return out


def defaults_advice(df: pd.DataFrame, cfg: Preset) -> str:
    """Whether the map gives a reason to move the main series' defaults (issue 37, item 6): only a condition
    where M3PO *helps* on every base could; the sentence names it or says there is none."""
    if df.empty:
        return "The map is empty: nothing here bears on the defaults."
    per = df.drop_duplicates(["experiment", "setting", "method"])
    helps = per[per["verdict (all bases)"] == "helps"]
    if helps.empty:
        where = "on this base" if df["base"].nunique() == 1 else "on every base"
        return (f"No condition of the map has M3PO helping {where}, so nothing here argues for moving the "
                "main series' defaults towards a regime where the paper's claim holds; they stay as they are "
                f"(SFT weight {cfg.dpo.loss_weights[-1] if len(cfg.dpo.loss_weights) > 1 else 0:g}, "
                f"α {cfg.selection.alpha:g}, {cfg.selection.confidence} log P).")
    names = "; ".join(f"{r.setting} ({r.method})" for r in helps.itertuples())
    where = "on this base" if df["base"].nunique() == 1 else "on every base"
    return (f"M3PO helps {where} in: {names}. Moving the main series there needs the headline re-measured "
            "with notebooks 04-06 under that setting before the defaults change.")
