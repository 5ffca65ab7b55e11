"""Stage 07: iterative M3PO rounds, and a candidate budget that adapts to the instruction.

**Rounds.** Each rule of ``rounds.strategies`` has its own chain of policies π_0 (the base) → π_1 → … → π_R.
Round r samples N candidates per preference prompt from π_{r−1} (round 1: notebook 01's candidates, which π_0
drew), scores them with the run's CLIP and judge (MAS, notebook 02's combination), reads their confidence
log P(R | I, Q) under π_{r−1} from the logits sampling produced, selects pairs with the chain's rule and trains
DPO-LoRA with π_{r−1} as the reference. π_r is π_{r−1} with that adapter **merged** into its weights.

*Why merged, not stacked adapters.* TRL takes the reference as the model with its adapter disabled
(``ref_model=None``). With the earlier rounds merged into the weights, "adapter disabled" *is* π_{r−1} — the
model that sampled the round's candidates — so the log-probs captured while sampling are still the reference
log-probs and are reused (:mod:`m3po_utils.dpo`); the round's record keeps the share that matched. With stacked
adapters, disabling would drop every round's adapter and make the base the reference of every round. Only the
adapters are stored (``rounds/<key>/<rule>/r<r>/adapter``); π_r is rebuilt by merging them in order, which is
deterministic.

*Prompts.* ``rounds.prompts="reuse"`` (default) re-samples the same preference prompts from the new policy every
round: every round has as many prompts as the single-round methods, and what changes is only whose answers they
are (on-policy data). ``"split"`` gives round r the r-th of R disjoint slices instead: fresh prompts, a third of
the data per round at R = 3.

*Budget.* Within a round every rule trains on the same number of pairs (the smallest rule's count, prompts shared
by all rules first: :func:`m3po_utils.dpo.equal_budget`), and every round of every rule takes the same number of
optimiser steps (``rounds.steps``; 0 = one epoch of round 1's budget), so rounds differ by their data only.

**Measured per round**, for each rule: the pool π_{r−1} drew (pass@1 / pass@N per family, the confident-wrong
share, the existence answers' yes share), its pairs (hard-negative rate, chosen right / rejected wrong by the
verifier, how often the rules' pairs coincide on it), the training (chosen / rejected log-likelihood drift against
the reference, reference log-probs reused), and π_r itself: the KL to the base on held-out prompts
(E_{y∼π_r}[log π_r(y) − log π_0(y)] over ``rounds.heldout_samples`` answers per validation prompt), pass@1 /
pass@k there, the validation metrics (:func:`m3po_utils.dpo.validation_metrics` plus POPE-adversarial and MME on
the validation scenes) and the evaluation counts.

**The kept round** of each rule is the one with the best ``rounds.choose_by`` on the preference split's validation
scenes (ties: the earlier round); the evaluation split only reports it, beside round 1 (the single-round method
trained here) and the base, with paired bootstrap intervals over scenes.

**Adaptive N.** Candidates are revealed ``rounds.wave`` at a time per prompt, in the order notebook 01 sampled them
(they are independent draws, so this is what sampling in waves from the base gives), until the pool is
informative — a candidate with MAS ≥ ``rounds.mas_bar`` and another at least ``rounds.gap`` below the best with
log P ≥ log P(best) − δ (a hard negative by M3PO's own definition; neither needs the verifier) — or ``n_max``
candidates. The fixed-N pool at equal *total* candidates gives every prompt ⌊T/P⌋ or ⌈T/P⌉ of its first candidates
(the extra ones to a seeded random set of prompts). Both pools' M3PO pairs are compared (count, hard-negative rate,
quality against the verifier) and trained (same steps) and evaluated.

**Resumable.** Everything lives under ``rounds/<key>/``, the key hashing the settings that determine it and the
run ids of notebooks 00-02: candidates are sampled in shards (:func:`~m3po_utils.candidates.generate_candidates`),
every MAS is written atomically and every judge request is in the run's judge cache, adapters are written
atomically and not retrained, and each (rule, round) writes its record last. A run killed in round 2 resumes there.

Stage contract: notebook 07 reads notebooks 00-02 (base, CLIP, candidates, MAS); it samples, judges and trains only
its own rounds, in its own folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from m3po_utils import evaluation as C
from m3po_utils import rules, wording
from m3po_utils import selection as S
from m3po_utils import shapes as W
from m3po_utils.candidates import generate_candidates
from m3po_utils.confidence import headroom
from m3po_utils.config import Preset
from m3po_utils.dpo import (
    INFO_FILE,
    LOG_FILE,
    base_loader,
    equal_budget,
    load_adapter,
    steps_for,
    train_pairs,
    training_summary,
    validation_metrics,
)
from m3po_utils.io import atomic_save_array, atomic_write_frame, atomic_write_json
from m3po_utils.mas import open_judge, score_pool
from m3po_utils.models.generate import sample_candidates, score_responses
from m3po_utils.progress import Progress
from m3po_utils.rundir import RunDir, run_id
from m3po_utils.scoring import metrics_from_totals
from m3po_utils.shapes.prompts import (
    ImageResolver,
    preference_prompts,
    validation_prompt_rows,
    validation_scenes,
)
from m3po_utils.stats import spearman

STAGE = "07_rounds"
BASE = "base model"
ROUND_SEED_STEP = 104729        # round r samples with generation.seed + ROUND_SEED_STEP · (r − 1)
HELDOUT_SEED = 4099
F1, MME, YES = "pope_adversarial_f1", "mme_total", "pope_adversarial_yes_ratio"
METRICS = (F1, MME, YES)


def label(strategy: str, r: int) -> str:
    return BASE if r == 0 else f"{rules.label(strategy)} · round {r}"


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


save_frame = atomic_write_frame     # one name for the writes of this stage's tables (a test interrupts it)


def round_config(cfg: Preset) -> Preset:
    """The preset every round trains with: DPO plus the SFT term at ``rounds.sft_weight``."""
    w = float(cfg.rounds.sft_weight)
    dpo = dataclasses.replace(cfg.dpo, loss_type=("sigmoid", "sft") if w else ("sigmoid",),
                              loss_weights=(1.0, w) if w else (1.0,))
    return dataclasses.replace(cfg, dpo=dpo)


def settings_key(cfg: Preset, inputs: dict) -> str:
    """What determines every round: the settings of sampling, MAS, selection, training and the rounds (not the
    bootstrap's), the world, and the run ids of notebooks 00-02."""
    rc = dataclasses.asdict(cfg.rounds)
    rc.pop("bootstrap")
    return _hash({"world": dataclasses.asdict(cfg.world), "generation": dataclasses.asdict(cfg.generation),
                  "mas": dataclasses.asdict(cfg.mas), "selection": dataclasses.asdict(cfg.selection),
                  "dpo": dataclasses.asdict(round_config(cfg).dpo), "rounds": rc, "seed": cfg.seed,
                  "evaluation_batch": cfg.evaluation.batch_size, "inputs": inputs})


# ------------------------------------------------------------------------------------------------ pools

def pool_quality(table: pd.DataFrame, delta: float) -> dict:
    """What a pool offers, by the verifier: pass@1 / pass@N (overall and per family), the confident-wrong share
    (:func:`m3po_utils.confidence.headroom`), and the share of existence answers that say yes."""
    frame = table.assign(verifier_score=table["truth"], correct=table["truth"] >= 1.0, conf_sum=table["logprob_sum"])
    fam = headroom(frame, delta)
    overall = headroom(frame.assign(family="all"), delta).iloc[0]
    ex = table[table["family"] == "existence"]
    yes = float(np.mean([W.yes_no(t) == "yes" for t in ex["text"]])) if len(ex) else float("nan")
    return {"pass1": float(overall["pass@1"]), "passN": float(overall["pass@N"]),
            "confident_wrong": float(overall["confident_wrong"]), "existence_yes": yes,
            "families": {f: {"pass1": float(r["pass@1"]), "passN": float(r["pass@N"])} for f, r in fam.iterrows()}}


def select_pool(table: pd.DataFrame, cfg: Preset, names: Sequence[str], seed: int):
    """``(groups, truth, selections)`` of every rule in ``names`` (plus best-vs-worst and random) on one pool."""
    sc = cfg.selection
    groups = rules.group_candidates(table, sc.confidence)
    truth = rules.truth_by_prompt(groups, table)
    sels = {}
    for n in dict.fromkeys([*names, "best_worst", "random"]):
        sels[n] = rules.select(groups, n, sc.alpha, sc.delta, sc.min_margin, sc.pairs_per_prompt, seed,
                               truth if rules.rule(n).needs_truth else None, sc.opposite_verdict)
    return groups, truth, sels


def pair_stats(groups: dict, truth: dict, sels: dict, strategy: str, families: dict[str, str]) -> dict:
    """The chain's pairs on its pool: hard-negative rate, verifier checks, and agreement with the other rules."""
    st = rules.selection_stats(groups, sels[strategy], reference=sels["best_worst"], truth=truth)
    others = [n for n in sels if n != strategy]
    agree = S.agreement_with(groups, sels, families, strategy=strategy, references=others)
    return {"pairs": int(st["pairs"]), "hard_negative_rate": st["hard_negative_rate"],
            "chosen_right": st.get("chosen_right", float("nan")),
            "rejected_wrong": st.get("rejected_wrong", float("nan")),
            "same_pair": {a["reference"]: a["same_pair"] for a in agree}}


# ------------------------------------------------------------------------------------------------ the stage

class Rounds:
    """Every round of every rule of notebook 07, cached under ``rounds/<key>/`` (``root`` overrides it)."""

    def __init__(self, run_dir, cfg: Preset, splits: dict[str, list[W.Scene]] | None = None, root=None):
        if cfg.world_kind != "shapes":
            raise ValueError("notebook 07 (rounds) needs the shapes world: it measures every round's pool, pairs and "
                             "policy against the verifier, which a hub preset does not have; run it on a shapes preset")
        self.run, self.cfg = Path(run_dir), cfg
        self.splits = splits if splits is not None else RunDir(run_dir).scenes()
        self.rc, self.tcfg = cfg.rounds, round_config(cfg)
        self.resolver = ImageResolver(cfg, self.splits)
        self.inputs = {s: run_id(self.run, s) for s in ("00_world", "01_candidates", "02_mas")}
        self.key = settings_key(cfg, self.inputs)
        self.root = Path(root) if root is not None else RunDir(run_dir).root / "rounds" / self.key
        self.root.mkdir(parents=True, exist_ok=True)
        self.val_scenes = validation_scenes(self.splits["pref"])
        n = self.rc.n_scenes
        self.eval_ev = C.Evaluator(cfg, self.splits["eval"][: n or None])
        self.val_ev = C.Evaluator(cfg, self.val_scenes)
        self.families = {p["prompt_id"]: p["family"] for p in preference_prompts(cfg, self.splits)}
        self.judge_stats: dict[str, int] = {"requests": 0, "cache_hits": 0}
        self._base_table: pd.DataFrame | None = None

    # ---- prompts, pools and policies
    def prompts(self, r: int) -> list[dict]:
        rows = preference_prompts(self.cfg, self.splits)
        if self.rc.prompts == "split":
            rows = [p for i, p in enumerate(rows) if i % self.rc.rounds == r - 1]
        return rows

    def base_table(self) -> pd.DataFrame:
        if self._base_table is None:
            self._base_table = S.scored_candidates(self.run)
        return self._base_table

    def folder(self, strategy: str, r: int) -> Path:
        return self.root / strategy / f"r{r}"

    def adapters(self, strategy: str, r: int) -> list[Path]:
        return [self.folder(strategy, k) / "adapter" for k in range(1, r + 1)]

    def policy(self, strategy: str, r: int):
        """π_r of ``strategy``'s chain: the base with rounds 1..r's adapters merged in order."""
        model, processor = base_loader(self.cfg, self.run)()
        for a in self.adapters(strategy, r):
            model = load_adapter(model, a).merge_and_unload()
        return model.eval(), processor

    def pool(self, strategy: str, r: int, judge=None) -> tuple[pd.DataFrame, dict]:
        """The candidates round ``r`` of ``strategy`` trains on, scored, and what producing them cost."""
        ids = {p["prompt_id"] for p in self.prompts(r)}
        if r == 1:
            t = self.base_table()
            return t[t["prompt_id"].isin(ids)].reset_index(drop=True), {}
        folder = self.folder(strategy, r)
        cost: dict = {}
        if not RunDir(folder).candidates.exists():
            gc = self.cfg.generation
            t0 = time.perf_counter()
            model, processor = self.policy(strategy, r - 1)
            generate_candidates(model, processor, self.prompts(r), self.resolver, n_candidates=gc.n_candidates,
                                temperature=gc.temperature, top_p=gc.top_p, top_k=gc.top_k,
                                max_new_tokens=gc.max_new_tokens, batch_size=gc.batch_size,
                                seed=gc.seed + ROUND_SEED_STEP * (r - 1), run_dir=folder, progress=False)
            cost["sample_seconds"] = time.perf_counter() - t0
        cands = RunDir(folder).load_candidates().to_pandas()
        path = folder / "scored.json"
        if path.is_file():
            scored = pd.read_json(path, orient="split")
        else:
            if judge is None:
                raise RuntimeError("a pool needs scoring: pass an open judge")
            t0 = time.perf_counter()
            before = dict(judge.stats)
            scored = score_pool(cands, self.cfg, self.run, self.resolver, self.splits, judge)
            cost |= {"score_seconds": time.perf_counter() - t0,
                     "judge_requests": judge.stats["requests"] - before["requests"],
                     "judge_cache_hits": judge.stats["cache_hits"] - before["cache_hits"]}
            for k in ("requests", "cache_hits"):
                self.judge_stats[k] += judge.stats[k] - before[k]
            save_frame(path, scored)
        table = cands.merge(scored, on=["prompt_id", "cand_idx"], how="left", validate="one_to_one")
        table["verdict"] = S.verdicts(table)
        return table, cost

    def _needs_judge(self, r: int) -> bool:
        return r > 1 and any(not (self.folder(s, r) / "scored.json").is_file() for s in self.rc.strategies)

    # ---- what a policy does
    def heldout(self, model, processor, base=None) -> dict:
        """Sampled answers on the held-out validation prompts: KL to the base, pass@1 / pass@k per family."""
        rows = validation_prompt_rows(self.splits["pref"], self.cfg)
        images = [self.resolver(p["image"]) for p in rows]
        texts = [p["instruction"] for p in rows]
        gc, k = self.cfg.generation, self.rc.heldout_samples
        samples = sample_candidates(model, processor, images, texts, k, temperature=gc.temperature, top_p=gc.top_p,
                                    top_k=gc.top_k, max_new_tokens=gc.max_new_tokens, batch_size=gc.batch_size,
                                    seed=gc.seed + HELDOUT_SEED)
        kl = 0.0
        if base is not None:
            bm, bp = base
            base_lp = score_responses(bm, bp, images, texts, [[c["token_ids"] for c in group] for group in samples])
            diffs = [c["logprob_sum"] - float(np.sum(b)) for group, bl in zip(samples, base_lp, strict=True)
                     for c, b in zip(group, bl, strict=True)]
            kl = float(np.mean(diffs))
        scenes = {s.scene_id: s for s in self.val_scenes}
        fam: dict[str, list[list[bool]]] = {}
        for p, group in zip(rows, samples, strict=True):
            ok = [W.verify(scenes[p["scene_id"]], p["instruction"], c["text"], self.cfg.world).correct for c in group]
            fam.setdefault(p["family"], []).append(ok)
        allp = [ok for v in fam.values() for ok in v]
        return {"kl": kl, "pass1": float(np.mean([x for ok in allp for x in ok])),
                "passk": float(np.mean([any(ok) for ok in allp])),
                "families": {f: {"pass1": float(np.mean([x for ok in v for x in ok])),
                                  "passk": float(np.mean([any(ok) for ok in v]))} for f, v in sorted(fam.items())}}

    def evaluate(self, model, processor, folder: Path, base=None) -> dict:
        """Validation metrics, held-out samples and evaluation counts of one policy (counts saved in ``folder``)."""
        ec = self.cfg.evaluation
        t0 = time.perf_counter()
        val = validation_metrics(model, processor, self.val_scenes, self.cfg.world, seed=self.cfg.seed,
                                 batch_size=ec.batch_size)
        val_stats = self.val_ev.stats(model, processor)
        eval_stats = self.eval_ev.stats(model, processor)
        atomic_save_array(folder / "val_stats.npy", val_stats)
        atomic_save_array(folder / "eval_stats.npy", eval_stats)
        vm = metrics_from_totals(val_stats.sum(axis=0))
        val |= {k: float(vm[k]) for k in METRICS}
        held = self.heldout(model, processor, base)
        return {"validation": val, "heldout": held, "eval_seconds": time.perf_counter() - t0}

    def base_record(self) -> dict:
        folder = self.root / "base"
        path = folder / "record.json"
        if path.is_file() and (folder / "eval_stats.npy").is_file():
            return json.loads(path.read_text())
        model, processor = base_loader(self.cfg, self.run)()
        rec = {"strategy": "base", "round": 0} | self.evaluate(model.eval(), processor, folder)
        rec["pool"] = pool_quality(self.base_table(), self.cfg.selection.delta)
        atomic_write_json(path, rec)
        return rec

    def steps(self) -> int:
        if self.rc.steps:
            return self.rc.steps
        path = self.root / "steps.json"
        if path.is_file():
            return int(json.loads(path.read_text())["steps"])
        table = self.base_table()
        table = table[table["prompt_id"].isin({p["prompt_id"] for p in self.prompts(1)})]
        _, _, sels = select_pool(table, self.cfg, self.rc.strategies, self.cfg.selection.seed)
        n = min(sels[s].n_pairs for s in self.rc.strategies)
        steps = steps_for(max(n, 1), self.tcfg.dpo)
        atomic_write_json(path, {"steps": steps, "pairs": n})
        return steps

    # ---- one round of every rule
    def run_round(self, r: int, progress: bool = True) -> list[dict]:
        strategies = list(self.rc.strategies)
        done = {s: self._record(s, r) for s in strategies}
        if all(v is not None for v in done.values()):
            return [done[s] | {"cached": True} for s in strategies]
        t_round = time.perf_counter()
        pools, costs = {}, {}
        if self._needs_judge(r):
            with open_judge(self.cfg, self.run, splits=self.splits) as judge:
                for s in strategies:
                    pools[s], costs[s] = self.pool(s, r, judge)
        else:
            for s in strategies:
                pools[s], costs[s] = self.pool(s, r)
        seed = self.cfg.selection.seed + r - 1
        stats, tables = {}, {}
        for s in strategies:
            groups, truth, sels = select_pool(pools[s], self.cfg, strategies, seed)
            stats[s] = pair_stats(groups, truth, sels, s, self.families)
            stats[s]["pool"] = pool_quality(pools[s], self.cfg.selection.delta)
            if not sels[s].n_pairs:
                raise ValueError(f"{rules.label(s)} selected no pairs in round {r} (skipped: {sels[s].skipped}); "
                                 "lower selection.min_margin or use fewer rounds")
            folder = self.folder(s, r)
            if not RunDir(folder).has_pairs(s):
                S.write_pairs(folder, sels[s], pools[s], self.resolver, {"round": r})
            tables[s] = RunDir(folder).load_pairs(s)
        tables, n = equal_budget(tables)
        steps = self.steps()
        base = base_loader(self.cfg, self.run)()
        out = []
        for s in Progress.over(strategies, f"round {r}", unit="rule", enabled=progress):
            if done[s] is not None:
                out.append(done[s] | {"cached": True})
                continue
            folder = self.folder(s, r)
            t0 = time.perf_counter()
            info = train_pairs(folder / "adapter", self.tcfg, tables[s], s,
                               model_loader=lambda s=s: self.policy(s, r - 1), steps=steps)
            train_seconds = time.perf_counter() - t0
            log = json.loads((folder / "adapter" / LOG_FILE).read_text())
            model, processor = self.policy(s, r)
            ev = self.evaluate(model, processor, folder, base)
            rec = {"strategy": s, "round": r, "pairs_trained": n, "steps": info["steps"],
                   "reference": info.get("reference"), "training": training_summary(log, self.tcfg.dpo.beta),
                   "train_seconds": train_seconds} | stats[s] | costs[s] | ev
            out.append(rec)
        total = time.perf_counter() - t_round
        for rec in out:
            if not rec.get("cached"):
                rec["round_seconds"] = total           # the round's wall time, all of its rules together
                atomic_write_json(self.folder(rec["strategy"], r) / "record.json", rec)
        return out

    def _record(self, s: str, r: int) -> dict | None:
        folder = self.folder(s, r)
        path = folder / "record.json"
        if not (path.is_file() and (folder / "eval_stats.npy").is_file() and (folder / "adapter" / INFO_FILE).is_file()):
            return None
        return json.loads(path.read_text())

    def run_all(self, progress: bool = True) -> tuple[dict, list[dict]]:
        """The base's record and every (rule, round)'s, running what is missing."""
        base = self.base_record()
        records = []
        for r in range(1, self.rc.rounds + 1):
            records += self.run_round(r, progress)
        return base, records

    def eval_stats(self, strategy: str, r: int) -> np.ndarray:
        folder = self.root / "base" if r == 0 else self.folder(strategy, r)
        return np.load(folder / "eval_stats.npy")


# ------------------------------------------------------------------------------------------------ analysis

def round_frame(base: dict, records: Sequence[dict]) -> pd.DataFrame:
    """One row per (rule, round): pool, pairs, training, KL, validation — the per-round table."""
    rows = []
    for r in [base, *records]:
        tr, val, held, pool = r.get("training", {}), r["validation"], r["heldout"], r.get("pool", {})
        ref = r.get("reference") or {}
        same = r.get("same_pair", {})
        rows.append({
            "rule": "base" if r["round"] == 0 else rules.label(r["strategy"]), "round": r["round"],
            "pairs": r.get("pairs", float("nan")), "pairs_trained": r.get("pairs_trained", float("nan")),
            "hard_negative_rate": r.get("hard_negative_rate", float("nan")),
            "confident_wrong": pool.get("confident_wrong", float("nan")),
            "pool_pass1": pool.get("pass1", float("nan")), "pool_passN": pool.get("passN", float("nan")),
            "pool_existence_yes": pool.get("existence_yes", float("nan")),
            "chosen_right": r.get("chosen_right", float("nan")), "rejected_wrong": r.get("rejected_wrong", float("nan")),
            "same_pair_as_bvw": same.get("best_worst", float("nan")), "same_pair_as_random": same.get("random", float("nan")),
            "same_pair_as_m3po": same.get("m3po", float("nan")),
            "reference_reused": ref.get("share", float("nan")),
            "chosen_drift_nats": tr.get("chosen_drift_nats", float("nan")),
            "rejected_drift_nats": tr.get("rejected_drift_nats", float("nan")),
            "kl_to_base": held["kl"], "heldout_pass1": held["pass1"], "heldout_passk": held["passk"],
            "val_score": val["score"], "val_correct": val["correct"], "val_f1": val[F1], "val_mme": val[MME],
            "val_yes_ratio": val[YES], "round_seconds": r.get("round_seconds", float("nan")),
        })
    return pd.DataFrame(rows)


def chosen_rounds(records: Sequence[dict], criterion: str) -> dict[str, dict]:
    """Per rule: the round with the best validation ``criterion`` (ties: the earlier), and the values behind it."""
    out = {}
    for s in dict.fromkeys(r["strategy"] for r in records):
        mine = sorted((r for r in records if r["strategy"] == s), key=lambda r: r["round"])
        vals = [r["validation"][criterion] for r in mine]
        best = max(range(len(mine)), key=lambda i: (vals[i], -i))
        out[s] = {"round": mine[best]["round"], "criterion": criterion, "value": vals[best],
                  "by_round": {str(r["round"]): v for r, v in zip(mine, vals, strict=True)}}
    return out


def bootstrap(rd: Rounds, records: Sequence[dict], n_boot: int, seed: int = 0) -> C.Bootstrap:
    """Paired bootstrap over the evaluation scenes of the base and every (rule, round)."""
    arrays = {BASE: rd.eval_stats("", 0)[None]}
    for r in records:
        arrays[label(r["strategy"], r["round"])] = rd.eval_stats(r["strategy"], r["round"])[None]
    return C.bootstrap(arrays, n_boot=n_boot, seed=seed)


def versus(boot: C.Bootstrap, chosen: dict[str, dict]) -> pd.DataFrame:
    """Per rule: its kept round against its round 1 and against the base, and against M3PO's kept round."""
    rows = []
    kept = {s: label(s, c["round"]) for s, c in chosen.items()}
    for s, name in kept.items():
        refs = [("its round 1", label(s, 1)), ("the base", BASE)]
        if s != "m3po" and "m3po" in kept:
            refs.append(("M3PO's kept round", kept["m3po"]))
        for what, ref in refs:
            if ref == name:
                continue
            row = {"model": name, "versus": what}
            for k, short in ((F1, "f1"), (MME, "mme"), (YES, "yes_ratio")):
                d = boot.delta(name, ref, k)
                row |= {short: d["delta"], f"{short}_lo": d["lo"], f"{short}_hi": d["hi"]}
            rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ adaptive N

def adaptive_spend(table: pd.DataFrame, wave: int, n_max: int, mas_bar: float, gap: float,
                   delta: float) -> dict[str, int]:
    """Candidates each prompt gets when they are revealed ``wave`` at a time (in ``cand_idx`` order) until the pool
    is informative (see the module docs) or ``n_max`` are out."""
    spent = {}
    for pid, g in table.sort_values(["prompt_id", "cand_idx"]).groupby("prompt_id", sort=True):
        mas, lp = g["mas"].to_numpy(dtype=float), g["logprob_sum"].to_numpy(dtype=float)
        n = min(wave, n_max)
        while True:
            if informative(mas[:n], lp[:n], mas_bar, gap, delta) or n >= n_max:
                break
            n = min(n + wave, n_max)
        spent[str(pid)] = n
    return spent


def informative(mas: np.ndarray, lp: np.ndarray, mas_bar: float, gap: float, delta: float) -> bool:
    """A pool with a good answer (MAS ≥ ``mas_bar``) and a hard negative: another answer ≥ ``gap`` below the best
    in MAS that the model is about as confident in (log P ≥ log P(best) − δ). NaN MAS counts as unscored."""
    ok = ~np.isnan(mas)
    if ok.sum() < 2:
        return False
    m = np.where(ok, mas, -np.inf)
    b = int(np.argmax(m))
    if m[b] < mas_bar:
        return False
    others = ok & (np.arange(len(m)) != b) & (m <= m[b] - gap) & (lp >= lp[b] - delta)
    return bool(others.any())


def fixed_spend(prompt_ids: Sequence[str], total: int, n_max: int, seed: int) -> dict[str, int]:
    """``total`` candidates spread as evenly as possible: ⌊T/P⌋ each, one more for a seeded random set of prompts."""
    p = len(prompt_ids)
    base, extra = divmod(total, p)
    if base >= n_max:
        return dict.fromkeys(prompt_ids, n_max)
    more = set(np.random.default_rng([seed, 7]).permutation(p)[:extra].tolist())
    return {pid: base + (i in more) for i, pid in enumerate(prompt_ids)}


def cut(table: pd.DataFrame, spend: dict[str, int]) -> pd.DataFrame:
    keep = table["cand_idx"].to_numpy() < table["prompt_id"].map(spend).to_numpy()
    return table[keep].reset_index(drop=True)


def spend_by_family(spends: dict[str, dict[str, int]], families: dict[str, str]) -> pd.DataFrame:
    """Mean candidates per prompt, per family, for each pool."""
    rows = {}
    for name, sp in spends.items():
        s = pd.Series(sp)
        rows[name] = s.groupby(s.index.map(families)).mean()
    return pd.DataFrame(rows)


def spend_sentence(spend: dict[str, float]) -> str:
    """Where the adaptive rule spent most and least, in words: every family tied at the top (or bottom) is named,
    and a rule that spent the same everywhere says so."""
    vals = {f: round(float(v), 1) for f, v in spend.items()}
    top, bottom = max(vals.values()), min(vals.values())
    if top == bottom:
        return f"The adaptive rule spent the same on every family ({top:.1f} candidates per prompt)."
    hi = " and ".join(f for f, v in vals.items() if v == top)
    lo = " and ".join(f for f, v in vals.items() if v == bottom)
    return f"The adaptive rule spent most on {hi} ({top:.1f} candidates per prompt) and least on {lo} ({bottom:.1f})."


def adaptive(rd: Rounds, progress: bool = True) -> dict:
    """Adaptive against fixed N at equal total candidates on the base's pool: pairs, their quality, what each pool
    spends per family, and M3PO trained on each pool's pairs (same steps) and evaluated."""
    rc, cfg = rd.rc, rd.cfg
    n_max = rc.n_max or cfg.generation.n_candidates
    table = rd.base_table()
    table = table[table["prompt_id"].isin({p["prompt_id"] for p in rd.prompts(1)})].reset_index(drop=True)
    ids = sorted(table["prompt_id"].astype(str).unique())
    ad = adaptive_spend(table, rc.wave, n_max, rc.mas_bar, rc.gap, cfg.selection.delta)
    total = int(sum(ad.values()))
    fx = fixed_spend(ids, total, n_max, cfg.seed)
    spends = {"adaptive": ad, "fixed": fx, "all": dict.fromkeys(ids, n_max)}
    rows, sels, pools = {}, {}, {}
    for name, sp in spends.items():
        pool = cut(table, sp)
        groups, truth, sel = select_pool(pool, cfg, ["m3po"], cfg.selection.seed)
        st = pair_stats(groups, truth, sel, "m3po", rd.families)
        rows[name] = {"candidates": int(sum(sp.values())), "per_prompt": float(np.mean(list(sp.values()))),
                      "pairs": st["pairs"], "hard_negative_rate": st["hard_negative_rate"],
                      "chosen_right": st["chosen_right"], "rejected_wrong": st["rejected_wrong"],
                      "informative": float(np.mean([informative(g["mas"], g["logp"], rc.mas_bar, rc.gap,
                                                                cfg.selection.delta) for g in groups.values()]))}
        sels[name], pools[name] = sel["m3po"], pool
    # M3PO trained on the adaptive and the fixed pool's pairs, the same number of pairs and steps
    folder = rd.root / "adaptive"
    tables = {}
    for name in ("adaptive", "fixed"):
        f = folder / name
        if not RunDir(f).has_pairs("m3po"):
            S.write_pairs(f, sels[name], pools[name], rd.resolver, {"pool": name})
        tables[name] = RunDir(f).load_pairs("m3po")
    tables, n = equal_budget(tables)
    steps = rd.steps()
    stats = {}
    for name in Progress.over(["adaptive", "fixed"], "adaptive N", unit="model", enabled=progress):
        f = folder / name
        path = f / "eval_stats.npy"
        if not path.is_file():
            train_pairs(f / "adapter", rd.tcfg, tables[name], "m3po",
                        model_loader=base_loader(cfg, rd.run), steps=steps)
            model, processor = base_loader(cfg, rd.run)()
            model = load_adapter(model, f / "adapter").merge_and_unload().eval()
            atomic_save_array(path, rd.eval_ev.stats(model, processor))
        stats[name] = np.load(path)
        rows[name]["pairs_trained"] = n
    arrays = {BASE: rd.eval_stats("", 0)[None]} | {f"M3PO · {k} N": v[None] for k, v in stats.items()}
    boot = C.bootstrap(arrays, n_boot=rc.bootstrap, seed=0)
    d = {k: boot.delta("M3PO · adaptive N", "M3PO · fixed N", k) for k in METRICS}
    fam = spend_by_family(spends, rd.families)
    return {"pools": rows, "families": fam, "boot": boot, "delta": d, "total": total, "n_max": n_max,
            "prompts": len(ids)}


# ------------------------------------------------------------------------------------------------ words

def _pct(x: float) -> str:
    return wording.share(x)


def _monotone(values: Sequence[float], sign: int) -> bool:
    d = np.diff(np.asarray(values, dtype=float))
    return bool(len(d) and np.all(sign * d > 0))


def round_lines(frame: pd.DataFrame, chosen: dict[str, dict], boot: C.Bootstrap, criterion: str) -> list[str]:
    """What the rounds did, from the run's numbers: the yes-ratio drift, the KL, each rule's kept round against its
    round 1, and M3PO against best-vs-worst at their kept rounds."""
    base = frame[frame["round"] == 0].iloc[0]
    body = frame[frame["round"] > 0].sort_values(["round"], kind="stable")
    last = int(body["round"].max())
    yes, kl, falls, grows = [], [], 0, 0
    groups = list(body.groupby("rule", sort=False))
    for rule, g in groups:
        y = [base["val_yes_ratio"], *g["val_yes_ratio"]]
        yes.append(f"{rule} " + " → ".join(f"{v:.3f}" for v in y))
        kl.append(f"{rule} " + " → ".join(f"{v:.2f}" for v in g["kl_to_base"]))
        falls += _monotone(y, -1)
        grows += _monotone(g["kl_to_base"], 1)
    n = len(groups)
    out = [f"POPE-adversarial yes-ratio on the validation scenes, the base ({base['val_yes_ratio']:.3f}) first: "
           + "; ".join(yes) + f". It falls in every round for {falls} of {n} rules (POPE asks as many yes as no "
           "questions, so 0.5 is unbiased).",
           "KL to the base after each round, nats per answer: " + "; ".join(kl)
           + f". It grows in every round for {grows} of {n} rules."]
    if "m3po" in chosen and last > 1:
        m3 = body[body["rule"] == rules.label("m3po")].set_index("round")
        out.append(f"On-policy data: the answers M3PO's round {last} trained on (drawn by its round-{last - 1} policy) "
                   f"are fully right {wording.share(m3.loc[last, 'pool_pass1'])} of the time, against "
                   f"{wording.share(m3.loc[1, 'pool_pass1'])} for the base's; among prompts with a wrong answer, the "
                   f"share with one about as likely as the best answer went from "
                   f"{wording.share(m3.loc[1, 'confident_wrong'])} to "
                   f"{wording.share(m3.loc[last, 'confident_wrong'])}, and M3PO's hard-negative rate from "
                   f"{wording.share(m3.loc[1, 'hard_negative_rate'])} to "
                   f"{wording.share(m3.loc[last, 'hard_negative_rate'])}: the model it trains has fewer confident "
                   "mistakes left to find." if m3.loc[last, "confident_wrong"] < m3.loc[1, "confident_wrong"] else
                   f"On-policy data: among prompts with a wrong answer, the share with one about as likely as the "
                   f"best answer in M3PO's pool went from "
                   f"{wording.share(m3.loc[1, 'confident_wrong'])} (the base's) to "
                   f"{wording.share(m3.loc[last, 'confident_wrong'])} in round {last}: training did not use them up.")
    for s, c in chosen.items():
        name, first = label(s, c["round"]), label(s, 1)
        at = (f"round {c['round']} of {last} (validation {criterion} {c['value']:.3f}"
              + ("; the last round, so more rounds might raise it further)" if c["round"] == last and last > 1 else ")"))
        if c["round"] == 1:
            out.append(f"{rules.label(s)} keeps {at}: no later round raised its validation {criterion}.")
            continue
        f1, mme = boot.delta(name, first, F1), boot.delta(name, first, MME)
        out.append(f"{rules.label(s)} keeps {at}. Against its round 1 on the evaluation scenes: POPE-adversarial F1 "
                   f"{wording.difference(f1['delta'], f1['lo'], f1['hi'], True, digits=3)}; MME total "
                   f"{wording.difference(mme['delta'], mme['lo'], mme['hi'], True, digits=1)}.")
    if "m3po" in chosen and "best_worst" in chosen:
        a, b = label("m3po", chosen["m3po"]["round"]), label("best_worst", chosen["best_worst"]["round"])
        f1, mme = boot.delta(a, b, F1), boot.delta(a, b, MME)
        out.append(f"At their kept rounds, M3PO − best-vs-worst DPO: POPE-adversarial F1 "
                   f"{wording.difference(f1['delta'], f1['lo'], f1['hi'], True, digits=3)}; MME total "
                   f"{wording.difference(mme['delta'], mme['lo'], mme['hi'], True, digits=1)}.")
    return out


# ------------------------------------------------------------------------------------------------ predictions

# Written before the first full run of notebook 07 (commit "Notebook 07: rounds ..."), checked against each run.
PREDICTIONS = (
    ("yes_drift", "M3PO's POPE-adversarial yes-ratio falls from round 1 to the last round (the drift towards "
                  "'no' compounds)"),
    ("hard_rate", "M3PO's hard-negative rate falls from round 1 to the last round (the confident wrong answers it "
                  "trained against become rarer in its own samples)"),
    ("kl", "the KL to the base grows round over round for every rule"),
    ("rounds_gain", "no rule's kept round beats its round 1 on POPE-adversarial F1 beyond the noise (at the "
                    "series' SFT weight the preference term moves little, and more rounds of it move little more)"),
    ("adaptive_pairs", "at equal total candidates the adaptive pool gives M3PO more pairs with a hard negative than "
                       "the fixed pool"),
    ("adaptive_families", "the adaptive rule spends more candidates on the families the base answers worst "
                          "(a negative rank correlation between a family's pass@1 and its candidates per prompt)"),
)


def _outcome(delta: float, lo: float | None = None, hi: float | None = None, sign: int = 1, tol: float = 0.0) -> str:
    """"as predicted" when ``delta`` has the predicted ``sign`` (beyond ``tol``, or with its interval excluding 0
    when one is given), "opposite" when the other sign does so, else "not shown"."""
    if delta is None or (isinstance(delta, float) and math.isnan(delta)):
        return "not run"
    if lo is not None and hi is not None:
        if not wording.excludes_zero(lo, hi):
            return "not shown"
        return "as predicted" if np.sign(delta) == sign else "opposite"
    if abs(delta) <= tol:
        return "not shown"
    return "as predicted" if np.sign(delta) == sign else "opposite"


def predictions(frame: pd.DataFrame, boot: C.Bootstrap, chosen: dict[str, dict], adapt: dict | None,
                base_families: dict[str, float] | None = None) -> list[dict]:
    """Each prediction of :data:`PREDICTIONS` beside what this run measured."""
    out = []
    text = dict(PREDICTIONS)
    last = int(frame["round"].max())
    m3 = frame[frame["rule"] == rules.label("m3po")].set_index("round") if "m3po" in chosen else None

    def add(key: str, measured: str, outcome: str) -> None:
        out.append({"prediction": text[key], "measured": measured, "outcome": outcome})

    if m3 is not None and last > 1:
        d = boot.delta(label("m3po", last), label("m3po", 1), YES)
        add("yes_drift", f"evaluation yes-ratio, round {last} − round 1: "
                         f"{wording.interval(d['delta'], d['lo'], d['hi'], 3)}",
            _outcome(d["delta"], d["lo"], d["hi"], sign=-1))
        h = float(m3.loc[last, "hard_negative_rate"] - m3.loc[1, "hard_negative_rate"])
        add("hard_rate", f"hard-negative rate {m3.loc[1, 'hard_negative_rate']:.3f} → "
                         f"{m3.loc[last, 'hard_negative_rate']:.3f}", _outcome(h, sign=-1, tol=0.02))
    if last > 1:
        grows = shrinks = 0
        groups = list(frame[frame["round"] > 0].groupby("rule", sort=False))
        for _, g in groups:
            d = np.diff(g.sort_values("round")["kl_to_base"].to_numpy(dtype=float))
            grows += bool(np.all(d > 0))
            shrinks += bool(np.any(d < -0.05))          # a fall beyond what sampling noise gives at this size
        add("kl", f"KL grows in every round for {grows} of {len(groups)} rules; falls by more than 0.05 nats in "
                  f"some round for {shrinks}",
            "as predicted" if grows == len(groups) else ("opposite" if shrinks else "not shown"))
    gains = []
    for s, c in chosen.items():
        if c["round"] == 1:
            gains.append((s, 0.0, 0.0, 0.0))
        else:
            d = boot.delta(label(s, c["round"]), label(s, 1), F1)
            gains.append((s, d["delta"], d["lo"], d["hi"]))
    if gains:
        beat = [s for s, _, lo, hi in gains if lo > 0]
        worse = [s for s, _, lo, hi in gains if hi < 0]
        add("rounds_gain", f"kept round beats round 1 for {len(beat)} of {len(gains)} rules, is below it for "
                           f"{len(worse)}", "opposite" if beat else "as predicted")
    if adapt is not None:
        p = adapt["pools"]
        hard = {k: p[k]["pairs"] * p[k]["hard_negative_rate"] for k in ("adaptive", "fixed")}
        add("adaptive_pairs", f"pairs with a hard negative: adaptive {hard['adaptive']:.0f}, fixed {hard['fixed']:.0f}",
            _outcome(hard["adaptive"] - hard["fixed"], sign=1, tol=0.5))
        if base_families:
            fam = adapt["families"]["adaptive"]
            common = [f for f in fam.index if f in base_families]
            rho = spearman(np.array([base_families[f] for f in common]), fam.loc[common].to_numpy(dtype=float))
            add("adaptive_families", f"rank correlation of a family's pass@1 with its candidates per prompt: "
                                     f"{rho:+.2f} over {len(common)} families",
                _outcome(rho, sign=-1, tol=0.2))
    return out


# ------------------------------------------------------------------------------------------------ the record

def family_frame(base: dict, records: Sequence[dict]) -> pd.DataFrame:
    """Pool pass@1 and pass@N per family, one row per (rule, round, measure): round r's pool is what π_{r−1} drew
    (round 1's is the base's, shared by every rule)."""
    rows = {}
    for r in records:
        for m, key in (("pass@1", "pass1"), ("pass@N", "passN")):
            rows[f"{label(r['strategy'], r['round'])} pool · {m}"] = {
                f: v[key] for f, v in r["pool"]["families"].items()}
    return pd.DataFrame(rows).T


def _table(df: pd.DataFrame) -> dict:
    return {str(k): {str(c): v for c, v in row.items()} for k, row in df.to_dict(orient="index").items()}


def results(rd: Rounds, base: dict, records: Sequence[dict], boot: C.Bootstrap, chosen: dict[str, dict],
            adapt: dict | None, frame: pd.DataFrame, preds: list[dict], lines: list[str]) -> dict:
    """Notebook 07's record (:class:`m3po_utils.results.RoundsResults`)."""
    seconds = {}
    for r in records:
        seconds[str(r["round"])] = float(r.get("round_seconds", float("nan")))
    out = {"settings": dataclasses.asdict(rd.rc), "key": rd.key, "steps": rd.steps(),
           "rounds": frame.to_dict(orient="records"), "families": _table(family_frame(base, records)),
           "chosen": chosen, "evaluation": _table(C.interval_frame(boot, METRICS)),
           "versus": versus(boot, chosen).to_dict(orient="records"), "eval_scenes": len(rd.eval_ev.scenes),
           "round_seconds": seconds, "judge": dict(rd.judge_stats), "lines": lines, "predictions": preds}
    if adapt is not None:
        out["adaptive"] = {"pools": adapt["pools"], "families": _table(adapt["families"]),
                           "evaluation": _table(C.interval_frame(adapt["boot"], METRICS)), "delta": adapt["delta"],
                           "total": adapt["total"], "prompts": adapt["prompts"], "n_max": adapt["n_max"]}
    return out


def chosen_frame(chosen: dict[str, dict]) -> pd.DataFrame:
    """Per rule: the kept round and the validation criterion of every round."""
    return pd.DataFrame({rules.label(s): {"kept round": c["round"],
                                          **{f"validation {c['criterion']}, round {k}": v
                                             for k, v in c["by_round"].items()}}
                         for s, c in chosen.items()}).T


def base_pass1(base: dict) -> dict[str, float]:
    """The base pool's pass@1 per instruction family (how hard each family is for the base)."""
    return {f: v["pass1"] for f, v in base["pool"]["families"].items()}
