"""Notebook 10: the α/δ grid, judge noise, candidate budget and what the hard negatives add.

Every experiment is a list of :class:`Point` s. A point is one pass through the stages the series already has —
MAS variant → pair selection (``selection.select``) → one LoRA adapter (``dpo.train_pairs``) → greedy answers to
notebook 06's evaluation question set (``evaluation.answer_questions``) → per-scene counts
(``evaluation.scene_stats``) — repeated for every seed. Nothing here re-implements a stage.

**Caching and resuming.** A point's result lives in ``run_dir/experiments/points/<key>/`` where the key hashes what
determines the trained model: the selected pairs (prompt and candidate indices), the loss, the seed, the DPO
settings and the question set. Two settings that select the same pairs (α = 0 at every δ, or two α that happen to
agree) are trained once; an interrupted sweep resumes at the first missing point.

**MAS variants.** ``default`` is notebook 02's MAS; ``noise:<x>`` rebuilds it with the local judge at noise x
(CLIP share as configured; judge calls cached in the run's judge cache under a per-noise model name); ``clip``
and ``judge`` use one of the two scores alone.

**Candidate budget.** ``n_candidates = N`` below the run's N takes each prompt's first N candidates (they are
independent samples, so the first N are an N-sample); above it, the missing ones are sampled once with another
seed into ``run_dir/experiments/extra<k>/`` (resumable, like notebook 01), scored by the same CLIP, judge and
verifier, and appended with candidate indices after the run's.
"""


from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from m3po_utils import evaluation as C
from m3po_utils import results, rules
from m3po_utils import scoring as E
from m3po_utils import selection as S
from m3po_utils import shapes as W
from m3po_utils.candidates import generate_candidates, generation_info
from m3po_utils.config import Preset
from m3po_utils.dpo import adapters_dir, base_loader, load_adapter, train_pairs
from m3po_utils.evaluation import answer_questions, questions_key
from m3po_utils.io import atomic_save_array, atomic_write_json
from m3po_utils.mas import (
    clip_scorer,
    combine,
    judge_items,
    normalise_clip,
    open_judge,
    score_candidates,
    verifier_truth,
)
from m3po_utils.progress import Progress
from m3po_utils.rundir import RunDir
from m3po_utils.scoring import scene_stats
from m3po_utils.shapes.prompts import ImageResolver, preference_prompts

LOSSES = {"dpo+sft": None, "dpo": (("sigmoid",), (1.0,)), "sft": None}


METRICS = ("pope_adversarial_f1", "mme_total", "chair_i", "ift")


@dataclasses.dataclass(frozen=True)
class Point:
    """One trained model of a sweep: how its pairs are made, how it is trained, and its seed."""

    experiment: str
    setting: str
    strategy: str = "m3po"
    alpha: float = 0.5
    delta: float = 0.1
    loss: str = "dpo+sft"        # "dpo+sft" (notebook 05's), "dpo" (no SFT term) or "sft" (chosen answers only)
    mas: str = "default"         # "default", "noise:<x>", "clip", "judge"
    n_candidates: int = 0        # 0 = every candidate of the run
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r} is not one of {tuple(LOSSES)}")
        if not (self.mas in ("default", "clip", "judge") or self.mas.startswith("noise:")):
            raise ValueError(f"mas={self.mas!r} is not 'default', 'clip', 'judge' or 'noise:<level>'")
        if self.strategy not in rules.names():
            raise ValueError(f"strategy={self.strategy!r} is not one of {rules.names()}")


def grid_label(alpha: float, delta: float) -> str:
    return f"α={alpha:g} δ={delta:g}"


def plan(cfg: Preset) -> list[Point]:
    """Every point of the four experiments, for every seed of ``cfg.experiments``."""
    ec, sc = cfg.experiments, cfg.selection
    default = dict(alpha=sc.alpha, delta=sc.delta)
    points: list[Point] = []
    for seed in ec.seeds:
        points += [Point("grid", grid_label(a, d), alpha=a, delta=d, seed=seed) for a in ec.alphas for d in ec.deltas]
        points += [Point("noise", f"judge noise {x:g}", mas=f"noise:{x:g}", seed=seed, **default)
                   for x in ec.noise_levels]
        points += [Point("noise", "CLIP only", mas="clip", seed=seed, **default),
                   Point("noise", "judge only", mas="judge", seed=seed, **default)]
        points += [Point("budget", f"N={n}", n_candidates=n, seed=seed, **default) for n in ec.budgets]
        points += [Point("negatives", "best-of-N SFT", strategy="best_of_n", loss="sft", seed=seed, **default),
                   Point("negatives", "M3PO DPO+SFT", seed=seed, **default),
                   Point("negatives", "M3PO DPO (no SFT term)", loss="dpo", seed=seed, **default),
                   Point("negatives", "random negatives DPO+SFT", strategy="random", seed=seed, **default)]
    return points


def point_config(cfg: Preset, p: Point) -> Preset:
    """The preset a point trains with: its seed, and its loss in place of notebook 05's."""
    dpo = dataclasses.replace(cfg.dpo, seed=p.seed)
    if LOSSES[p.loss] is not None:
        loss_type, weights = LOSSES[p.loss]
        dpo = dataclasses.replace(dpo, loss_type=loss_type, loss_weights=weights)
    return dataclasses.replace(cfg, dpo=dpo, selection=dataclasses.replace(cfg.selection, seed=p.seed))


class CandidatePool:
    """The run's candidates with MAS variants and extra candidates, built on demand and cached."""

    def __init__(self, run_dir, cfg: Preset, splits: dict[str, list[W.Scene]]):
        self.run, self.cfg, self.splits = Path(run_dir), cfg, splits
        self.base = S.scored_candidates(self.run)
        self.n_run = int(self.base.groupby("prompt_id")["cand_idx"].count().max())
        self.resolver = ImageResolver(cfg, splits)
        self._extra: pd.DataFrame | None = None
        self._grouped: dict[tuple[str, int], tuple[pd.DataFrame, dict, dict | None]] = {}

    def grouped(self, mas: str = "default", n_candidates: int = 0) -> tuple[pd.DataFrame, dict, dict | None]:
        """``(table, groups, truth)`` for selection, built once per (MAS variant, N) and shared by every point and
        seed that asks for it (a noise level's judge pass runs once, not once per seed)."""
        key = (mas, n_candidates or self.n_run)
        if key not in self._grouped:
            table = self.table(mas, n_candidates)
            groups = rules.group_candidates(table, self.cfg.selection.confidence)
            self._grouped[key] = (table, groups, rules.truth_by_prompt(groups, table))
        return self._grouped[key]

    # ---- MAS variants
    def judge_scores(self, table: pd.DataFrame, noise: float) -> pd.DataFrame:
        """``judge_score`` / ``judge_ok`` of every row of ``table`` from the local judge at ``noise``."""

        items, rows = judge_items(table, self.resolver)
        raw = np.full(len(table), np.nan)
        ok = np.zeros(len(table), dtype=bool)
        with open_judge(self.cfg, self.run, noise=noise, splits=self.splits) as judge:
            outcomes = judge.judge(items)
        for pos, res in zip(rows, outcomes, strict=True):
            for p, o in zip(pos, res, strict=True):
                raw[p], ok[p] = o.score, o.ok
        return pd.DataFrame({"judge_score": (raw - 1.0) / 9.0, "judge_ok": ok}, index=table.index)

    def table(self, mas: str = "default", n_candidates: int = 0) -> pd.DataFrame:
        """Candidates (first ``n_candidates`` per prompt, extra ones sampled if needed) with ``mas`` as asked."""

        n = n_candidates or self.n_run
        if n <= self.n_run:
            t = self.base[self.base["cand_idx"] < n].reset_index(drop=True)
        else:
            extra = self.extra(n - self.n_run)
            t = pd.concat([self.base, extra[extra["cand_idx"] < n]], ignore_index=True)
            t["clip_score"] = normalise_clip(t["clip_raw"].to_numpy(), t["prompt_id"].to_numpy(),
                                             self.cfg.mas.clip_norm)
            t["mas"] = combine(t["clip_score"], t["judge_score"], t["judge_ok"], self.cfg.mas)[0]
        t = t.copy()
        if mas == "clip":
            t["mas"] = t["clip_score"]
        elif mas == "judge":
            t["mas"] = np.where(t["judge_ok"], t["judge_score"], np.nan)
        elif mas.startswith("noise:"):
            level = float(mas.split(":", 1)[1])
            js = self.judge_scores(t, level)
            t["mas"] = combine(t["clip_score"], js["judge_score"], js["judge_ok"], self.cfg.mas)[0]
        return t

    # ---- extra candidates above the run's N
    def extra(self, k: int) -> pd.DataFrame:
        """``k`` more candidates per preference prompt (cached), scored like notebook 02 does."""
        if self._extra is not None and self._extra.groupby("prompt_id")["cand_idx"].count().min() >= k:
            return self._extra
        gc = self.cfg.generation
        folder = RunDir(self.run).experiments / f"extra{k}"
        if not RunDir(folder).candidates.exists():
            model, processor = base_loader(self.cfg, self.run)()
            generate_candidates(model, processor, preference_prompts(self.cfg, self.splits), self.resolver,
                                n_candidates=k, temperature=gc.temperature, top_p=gc.top_p, top_k=gc.top_k,
                                max_new_tokens=gc.max_new_tokens, batch_size=gc.batch_size, seed=gc.seed + 1000 + k,
                                run_dir=folder, progress=False)
        cands = RunDir(folder).load_candidates().to_pandas()
        scored_path = folder / "scored.json"
        if scored_path.is_file():
            scored = pd.read_json(scored_path, orient="split")
        else:
            scorer = clip_scorer(self.cfg, self.run)
            with open_judge(self.cfg, self.run, splits=self.splits) as judge:
                scored = score_candidates(cands, self.cfg.mas, self.resolver, clip=scorer, judge=judge)
            scenes = {s.scene_id: s for part in self.splits.values() for s in part}
            scored["truth"] = verifier_truth(cands, scenes, self.cfg.world)
            scored = scored[["prompt_id", "cand_idx", "clip_raw", "clip_score", "judge_score", "judge_ok", "mas",
                             "truth"]]
            tmp = scored_path.with_suffix(".tmp")
            scored.to_json(tmp, orient="split")
            os.replace(tmp, scored_path)
        out = cands.merge(scored, on=["prompt_id", "cand_idx"], how="left", validate="one_to_one")
        out["cand_idx"] = out["cand_idx"] + self.n_run
        self._extra = out[[c for c in self.base.columns if c in out.columns]]
        return self._extra


def point_key(p: Point, sel: rules.Selection, cfg: Preset, questions_key: str, max_pairs: int) -> str:
    pairs = [(c.prompt_id, [list(x) if x else None for x in c.pairs]) for c in sel.choices if c.pairs]
    blob = json.dumps({"pairs": pairs, "loss": p.loss, "sft_only": p.strategy == "best_of_n", "seed": p.seed,
                       "dpo": dataclasses.asdict(point_config(cfg, p).dpo), "questions": questions_key,
                       "max_pairs": max_pairs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _stats_width(path: Path) -> int:
    """Columns of a cached stats array (a cache from before the per-scene counts changed is recomputed)."""
    try:
        return int(np.load(path, mmap_mode="r").shape[-1])
    except (OSError, ValueError, IndexError):
        return -1


def run_point(run_dir, cfg: Preset, pool: CandidatePool, p: Point, scenes: Sequence[W.Scene],
              questions: Sequence[dict], images: Sequence, max_pairs: int) -> dict:
    """Select, train and evaluate one point (or read it from its cache); returns its record."""

    sc = cfg.selection
    table, groups, truth = pool.grouped(p.mas, p.n_candidates)
    sel = rules.select(groups, p.strategy, p.alpha, p.delta, sc.min_margin, sc.pairs_per_prompt, p.seed, truth)
    reference = rules.select(groups, "best_worst", 0.0, p.delta, sc.min_margin, sc.pairs_per_prompt, p.seed)
    sstats = rules.selection_stats(groups, sel, reference=reference, truth=truth)
    key = point_key(p, sel, cfg, questions_key(questions), max_pairs)
    folder = RunDir(run_dir).experiments / "points" / key
    record_path, stats_path = folder / "result.json", folder / "stats.npy"
    base = {"point": dataclasses.asdict(p), "key": key, "selection": sstats}
    if record_path.is_file() and stats_path.is_file() and _stats_width(stats_path) == len(E.STATS):
        return json.loads(record_path.read_text()) | base | {"cached": True}
    t0 = time.perf_counter()
    pcfg = point_config(cfg, p)
    S.write_pairs(folder, sel, table, pool.resolver, {"key": key})
    ds = RunDir(folder).load_pairs(p.strategy)
    loader = base_loader(cfg, run_dir)
    info = train_pairs(adapters_dir(folder, "adapter"), pcfg, ds, p.strategy, sft_only=p.loss == "sft",
                       model_loader=loader, max_pairs=max_pairs)
    model, processor = loader()
    model = load_adapter(model, adapters_dir(folder, "adapter")).merge_and_unload().eval()
    answers = answer_questions(model, processor, images, questions, batch_size=cfg.evaluation.batch_size,
                               long_answer_tokens=cfg.evaluation.long_answer_tokens)
    stats = scene_stats(scenes, questions, answers, cfg.world)
    shutil.rmtree(folder / "pairs", ignore_errors=True)          # the pairs are re-derivable; keep the adapter
    atomic_save_array(stats_path, stats)
    record = {"pairs": info["pairs"], "steps": info["steps"], "train_seconds": info["seconds"],
              "seconds": time.perf_counter() - t0}
    atomic_write_json(record_path, record | base)
    return record | base | {"cached": False}


def run_sweep(run_dir, cfg: Preset, points: Sequence[Point], splits: dict[str, list[W.Scene]],
              progress: bool = True) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Every point (cached ones read back); returns the records and each point key's per-scene counts."""
    if cfg.world_kind != "shapes":
        raise ValueError(f"notebook 10 measures against the shapes world's ground truth; preset {cfg.name!r} has "
                         f"world_kind={cfg.world_kind!r}. Run it on a shapes preset (shapes, smoke)")
    ec = cfg.experiments
    scenes = splits["eval"][: ec.n_scenes or None]
    questions = E.eval_questions(scenes, cfg.world, seed=cfg.seed)
    images = [W.render(s, cfg.world) for s in scenes]
    max_pairs = ec.max_pairs or results.load(run_dir, "05_dpo").pairs_per_strategy
    pool = CandidatePool(run_dir, cfg, splits)
    records, stats = [], {}
    for p in Progress.over(points, "the sweep", unit="point", enabled=progress):
        r = run_point(run_dir, cfg, pool, p, scenes, questions, images, max_pairs)
        records.append(r)
        stats[r["key"]] = np.load(RunDir(run_dir).experiments / "points" / r["key"] / "stats.npy")
    return records, stats


def settings_bootstrap(records: Sequence[dict], stats: dict[str, np.ndarray], experiment: str,
                       n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> C.Bootstrap:
    """Bootstrap over scenes and seeds of every setting of ``experiment`` (settings in plan order)."""
    by_setting: dict[str, list[np.ndarray]] = {}
    for r in records:
        if r["point"]["experiment"] == experiment:
            by_setting.setdefault(r["point"]["setting"], []).append(stats[r["key"]])
    if not by_setting:
        raise ValueError(f"no points of experiment {experiment!r}")
    return C.bootstrap({k: np.stack(v) for k, v in by_setting.items()}, n_boot=n_boot, ci=ci, seed=seed)


def selection_frame(records: Sequence[dict], experiment: str) -> pd.DataFrame:
    """Pairs, hard-negative rate, truly-wrong negatives and training size per setting (mean over seeds)."""
    rows = [{"setting": r["point"]["setting"], "seed": r["point"]["seed"], "pairs_selected": r["selection"]["pairs"],
             "pairs_trained": r["pairs"], **{k: r["selection"].get(k, np.nan)
                                             for k in ("hard_negative_rate", "rejected_wrong", "chosen_right",
                                                       "differs_from_reference")}}
            for r in records if r["point"]["experiment"] == experiment]
    df = pd.DataFrame(rows)
    order = list(dict.fromkeys(df["setting"]))
    return df.drop(columns="seed").groupby("setting", sort=False).mean().loc[order]


def sampling_seconds(run_dir, cfg: Preset, budgets: Sequence[int]) -> list[float]:
    """Generation cost of each N: notebook 01's measured sampling time per candidate, times N."""

    gen = generation_info(run_dir)
    per_candidate = gen["seconds"] / max(1, gen["settings"].get("n_candidates", cfg.generation.n_candidates))
    return [per_candidate * n for n in budgets]


def metric_frame(boot: C.Bootstrap, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Mean, lo, hi of ``metrics`` per setting (wide: ``<metric>``, ``<metric>_lo``, ``<metric>_hi``)."""
    return C.interval_frame(boot, metrics)


def best_cells(boot: C.Bootstrap, default: str, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Per metric: the best grid cell, the default cell and their paired difference with its interval."""
    rows = {}
    for k in metrics:
        up = E.HEADLINE.get(k, True)
        best = max(boot.point, key=lambda s: boot.point[s][k] * (1 if up else -1))
        d = boot.delta(best, default, k)
        rows[k] = {"best cell": best, "best": boot.point[best][k], "default": boot.point[default][k],
                   "best − default": d["delta"], "lo": d["lo"], "hi": d["hi"]}
    return pd.DataFrame(rows).T
