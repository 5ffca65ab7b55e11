"""Stage 06: every method side by side on the held-out evaluation split, over seeds, with bootstrap intervals.

**Methods.** ``base`` is the SFT model of notebook 00; ``best_of_n`` is SFT on the best candidate alone (no
negatives); ``random``, ``best_worst`` (M3P-Score at α = 0) and ``m3po`` (α, δ of the preset) are DPO + SFT-term
runs of notebook 05 on pairs of notebook 04. In the paper's table these stand where it has SFT, the simulated-RLHF
and vanilla-DPO baselines, RM-DPO and M3PO.

**Seeds.** Seed ``s`` selects pairs with ``selection.seed = s`` (which changes the random baseline's draws and
tie-breaks) and trains with ``dpo.seed = s`` (LoRA initialisation and data order). The seed the run itself used
takes notebook 04's pairs and notebook 05's adapters; the others are trained here into
``run_dir/evaluation/seed<s>/`` (resumable: a complete adapter is not retrained). The base model is greedy and
deterministic, so it has one "seed".

**One question set for every model.** :func:`~m3po_utils.scoring.eval_questions` builds, for each evaluation scene, the POPE questions
of the three settings, the MME-style pairs of four subtasks, a description (CHAIR), one format-constrained
instruction (IFT) and a short open question; descriptions and short questions are also scored by the judge
(against the base model's answer to the same prompt: the win rate). Identical questions are answered once.
Greedy answers are cached per model in ``run_dir/evaluation/answers/`` and judge calls in the run's judge cache,
so a rerun recomputes nothing.

**Intervals.** Every metric is a ratio of sums of per-scene counts (:data:`m3po_utils.scoring.STATS`). :func:`bootstrap` resamples
scenes (shared by all methods, so differences are paired) and seeds, recomputes the metric of every resampled
seed and averages them; the interval is the central ``ci`` share of those means, the point the mean over seeds.
"""


from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from m3po_utils import rules, wording
from m3po_utils import scoring as E
from m3po_utils import selection as S
from m3po_utils import shapes as W
from m3po_utils.benchfiles import open_image
from m3po_utils.config import Preset, WorldConfig
from m3po_utils.dpo import (
    SFT_ONLY,
    adapters_dir,
    base_loader,
    load_adapter,
    load_training_info,
    train_strategies,
)
from m3po_utils.io import atomic_write_json
from m3po_utils.judge.client import JudgeItem
from m3po_utils.models.generate import greedy_answers
from m3po_utils.progress import Progress
from m3po_utils.rundir import RunDir, quarantine
from m3po_utils.scoring import (
    HEADLINE,
    JUDGED_KINDS,
    MME_STAT_SUBTASKS,
    STATS,
    metrics_from_totals,
    scene_stats,
)
from m3po_utils.shapes import visual_ifeval
from m3po_utils.shapes.prompts import ImageResolver
from m3po_utils.stats import Bootstrap, fmt_interval, resample


def pope_setting(path) -> str:
    """The POPE setting a question file holds, from its name (``coco_pope_adversarial.json`` → adversarial)."""
    name = Path(path).name.lower()
    found = [s for s in E.POPE_SETTINGS if s in name]
    if len(found) != 1:
        raise ValueError(f"POPE file {str(path)!r}: its name must contain exactly one of {E.POPE_SETTINGS} "
                         "(as the official files do, e.g. coco_pope_adversarial.json); rename it — or use the "
                         "lmms-lab parquet export, whose category column names each row's setting")
    return found[0]


def pope_rows(path, image_dir=None) -> dict[str, list[dict]]:
    """One POPE file's questions by setting: from each row's ``category`` (lmms-lab parquet: all three settings
    in one file) or else from the file name (the official JSON files: one setting each)."""
    rows = E.load_pope_file(path, image_dir or None)
    if all(r.get("category") in E.POPE_SETTINGS for r in rows):
        out: dict[str, list[dict]] = {}
        for r in rows:
            out.setdefault(r["category"], []).append(r)
        return out
    return {pope_setting(path): rows}


def file_questions(pope_files: Sequence[str] = (), pope_images: str = "", mme_dir: str = ""
                   ) -> tuple[list, list[dict]]:
    """Real benchmark files as a question set: ``(images, questions)`` in :func:`eval_questions`' format.

    ``images``: one entry per distinct image, a path or a decoded image (parquet); ``scene`` indexes it. POPE rows
    get kind ``pope_<setting>``, MME rows kind ``mme`` with their subtask. :func:`scene_stats` scores them with
    ``scenes = [None] * len(images)``; :func:`load_images` opens them.
    """
    images: dict[str, int] = {}
    sources: list = []
    rows: list[dict] = []

    def index(r: dict) -> int:
        key = str(r["image_id"])
        if key not in images:
            images[key] = len(sources)
            sources.append(r["image"])
        return images[key]

    for f in pope_files:
        for setting, found in pope_rows(f, pope_images).items():
            for r in found:
                rows.append({"kind": f"pope_{setting}", "scene": index(r), "family": "existence",
                             "question": r["question"], "label": r["label"]})
    if mme_dir:
        for r in E.load_mme_dir(mme_dir):
            rows.append({"kind": "mme", "scene": index(r), "family": f"mme_{r['subtask']}",
                         "question": r["question"], "subtask": r["subtask"], "image": r["image_id"],
                         "answer": r["answer"]})
    if not rows:
        raise ValueError("no benchmark questions: set evaluation.pope_files (with evaluation.pope_images for JSON "
                         "files) and/or evaluation.mme_dir")
    return sources, rows


def load_images(sources: Sequence) -> list:
    """RGB images from :func:`file_questions`' sources (paths are opened, decoded images passed through)."""
    return [open_image(s) for s in sources]


def questions_key(questions: Sequence[dict]) -> str:
    return hashlib.sha256(json.dumps([(q["scene"], q["question"]) for q in questions]).encode()).hexdigest()[:16]


# Families whose right answer can be longer than the default budget: a description in capital letters, which the
# shapes world's tokenizer (trained on lowercase text) spells nearly letter by letter, needs up to ~140 tokens
# (``evaluation.long_answer_tokens``).
LONG_ANSWER_FAMILIES = ("ifeval",)


def answer_questions(model, processor, images: Sequence, questions: Sequence[dict], batch_size: int = 100,
                     max_new_tokens: int = 48, progress: bool = False, long_answer_tokens: int = 160) -> list[str]:
    """Greedy answers to ``questions`` (``images[q["scene"]]``); each distinct (scene, question) is asked once,
    grouped by family so that a batch of yes/no questions stops after a few tokens. ``max_new_tokens`` bounds every
    family but those of ``LONG_ANSWER_FAMILIES``, which get ``long_answer_tokens``."""

    unique = sorted({(q["family"], q["scene"], q["question"]) for q in questions})
    lookup: dict[tuple[int, str], str] = {}
    budget = {f: long_answer_tokens if f in LONG_ANSWER_FAMILIES else max_new_tokens for f, _, _ in unique}
    for limit in sorted(set(budget.values())):
        part = [u for u in unique if budget[u[0]] == limit]
        answers = greedy_answers(model, processor, [images[s] for _, s, _ in part], [t for _, _, t in part],
                                 max_new_tokens=limit, batch_size=batch_size, progress=progress)
        lookup |= {(s, t): a for (_, s, t), a in zip(part, answers, strict=True)}
    return [lookup[(q["scene"], q["question"])] for q in questions]


def bootstrap(stats: dict[str, np.ndarray], n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> Bootstrap:
    """Intervals for every metric of every method: :func:`m3po_utils.stats.resample` over notebook 06's counts.

    ``stats``: method → ``(n_seeds, n_scenes, len(STATS))`` counts, all methods on the same scenes.
    """
    if not stats:
        raise ValueError("no methods to bootstrap")
    shapes = {m: s.shape for m, s in stats.items()}
    n_scenes = {s[1] for s in shapes.values()}
    if len(n_scenes) != 1 or any(len(s) != 3 or s[2] != len(STATS) for s in shapes.values()):
        raise ValueError(f"stats must be (seeds, scenes, {len(STATS)}) with the same scenes for every method; "
                         f"got {shapes}")
    return resample(stats, metrics_from_totals, n_boot=n_boot, ci=ci, seed=seed)


def seed_run_dir(run_dir, cfg: Preset, seed: int) -> Path:
    """Where seed ``seed``'s pairs and adapters live: the run itself for the run's own seed."""
    run = RunDir(run_dir)
    if seed == cfg.selection.seed == cfg.dpo.seed:
        return run.root
    return run.evaluation / f"seed{seed}"


def seed_config(cfg: Preset, seed: int) -> Preset:
    return dataclasses.replace(cfg, selection=dataclasses.replace(cfg.selection, seed=seed),
                               dpo=dataclasses.replace(cfg.dpo, seed=seed))


def prepare_seeds(run_dir, cfg: Preset) -> dict[int, dict[str, dict]]:
    """Pairs and adapters of every evaluation seed (trained here where missing); training info per seed."""
    run = Path(run_dir)
    trained = [m for m in cfg.evaluation.methods if m != "base"]
    dpo_strategies = tuple(m for m in trained if m != SFT_ONLY) or cfg.dpo.strategies
    out: dict[int, dict[str, dict]] = {}
    table = groups = images = None
    for seed in cfg.evaluation.seeds:
        folder = seed_run_dir(run, cfg, seed)
        if folder == run:
            out[seed] = {m: load_training_info(run, m) for m in trained}
            continue
        scfg = seed_config(cfg, seed)
        sc = scfg.selection
        missing = [s for s in (*dpo_strategies, SFT_ONLY) if not RunDir(folder).has_pairs(s)]
        if missing:
            if table is None:
                table = S.scored_candidates(run)
                groups = rules.group_candidates(table, sc.confidence)
                truth = rules.truth_by_prompt(groups, table)
                images = ImageResolver(cfg, RunDir(run).scenes() if cfg.world_kind == "shapes" else None)
            for s in missing:
                sel = rules.select(groups, s, sc.alpha, sc.delta, sc.min_margin, sc.pairs_per_prompt, sc.seed, truth,
                                   sc.opposite_verdict)
                S.write_pairs(folder, sel, table, images, {"seed": seed})
        # no per-step trainer output: the curves are notebook 05's
        out[seed] = train_strategies(folder, scfg, strategies=dpo_strategies, model_loader=base_loader(cfg, run))
    return out


def load_method(cfg: Preset, run_dir, method: str, seed: int):
    """``(model, processor)`` of ``method`` at ``seed``: the base, or the base with that adapter merged in."""
    model, processor = base_loader(cfg, run_dir)()
    if method != "base":
        model = load_adapter(model, adapters_dir(seed_run_dir(run_dir, cfg, seed), method)).merge_and_unload()
    return model.eval(), processor


def model_keys(cfg: Preset) -> list[tuple[str, int]]:
    """Every (method, seed) to evaluate; the deterministic base once, at the run's seed."""
    ec = cfg.evaluation
    return [(m, s) for m in ec.methods for s in (ec.seeds if m != "base" else ec.seeds[:1])]


def answers_path(run_dir, method: str, seed: int) -> Path:
    return RunDir(run_dir).evaluation / "answers" / f"{method}_seed{seed}.json"


def _stored_answers(path: Path, questions: Sequence[dict]) -> list[str] | None:
    """The answers cached at ``path`` when it holds answers to exactly ``questions``, else None; raises ValueError
    (or OSError) for a file that is not an answers record."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("answers", []), list):
        raise ValueError("not an answers record")
    if data.get("questions") == questions_key(questions) and len(data.get("answers", [])) == len(questions):
        return data["answers"]
    return None


def cached_answers(run_dir, cfg: Preset, method: str, seed: int, images: Sequence, questions: Sequence[dict]
                   ) -> list[str]:
    """The greedy answers of (method, seed), from ``answers_path`` when it holds them for these questions."""
    path = answers_path(run_dir, method, seed)
    key = questions_key(questions)
    try:
        stored = _stored_answers(path, questions)
    except (ValueError, OSError) as exc:   # this stage's own cache: set it aside and answer again
        aside = quarantine(path)
        print(f"WARNING: {path} is unreadable ({type(exc).__name__}: {exc}); moved it to {aside} and "
              "answering again", flush=True)
        stored = None
    if stored is not None:
        return stored
    model, processor = load_method(cfg, run_dir, method, seed)
    answers = answer_questions(model, processor, images, questions, batch_size=cfg.evaluation.batch_size,
                               long_answer_tokens=cfg.evaluation.long_answer_tokens)
    atomic_write_json(path, {"method": method, "seed": seed, "questions": key, "answers": answers})
    return answers


def evaluate_all(run_dir, cfg: Preset, images: Sequence, questions: Sequence[dict],
                 progress: bool = True) -> dict[tuple[str, int], list[str]]:
    """Answers of every (method, seed) in :func:`model_keys` (``images[q["scene"]]``), computed once and cached."""
    out = {}
    for method, seed in Progress.over(model_keys(cfg), "answering the evaluation questions", unit="model",
                                      enabled=progress):
        out[(method, seed)] = cached_answers(run_dir, cfg, method, seed, images, questions)
    return out


def judge_answers(client, images: Sequence, questions: Sequence[dict], answers: dict[tuple[str, int], list[str]],
                  progress: bool = False) -> dict[tuple[str, int], np.ndarray]:
    """The judge's 1–10 score of every judged row (``describe`` / ``short``) for every model; NaN elsewhere.

    ``images[q["scene"]]`` is each question's image (the list :func:`evaluate_all` answered from).
    One listwise request per prompt carries every model's distinct answer to it; the run's judge cache keeps
    each (image, instruction, answer) score, so a rerun sends nothing.
    """

    rows = [k for k, q in enumerate(questions) if q["kind"] in JUDGED_KINDS]
    hashes = {i: W.image_key(images[i]) for i in {questions[k]["scene"] for k in rows}}
    items = []
    for k in rows:
        q = questions[k]
        distinct = list(dict.fromkeys(a[k] for a in answers.values()))
        items.append(JudgeItem(images[q["scene"]], q["question"], distinct, hashes[q["scene"]]))
    outcomes = client.judge(items, progress=progress)
    out = {key: np.full(len(questions), np.nan) for key in answers}
    for k, item, res in zip(rows, items, outcomes, strict=True):
        score = {r: (o.score if o.ok else np.nan) for r, o in zip(item.responses, res, strict=True)}
        for key, a in answers.items():
            out[key][k] = score[a[k]]
    return out


def all_stats(scenes: Sequence[W.Scene], cfg: Preset, questions: Sequence[dict],
              answers: dict[tuple[str, int], list[str]], judged: dict[tuple[str, int], np.ndarray] | None = None
              ) -> dict[str, np.ndarray]:
    """method → ``(seeds, scenes, STATS)`` counts; judge wins are against the base model's answers."""
    base_key = next((k for k in answers if k[0] == "base"), None)
    by_method: dict[str, list[np.ndarray]] = {}
    for key, ans in answers.items():
        j = judged[key] if judged is not None else None
        jb = judged[base_key] if judged is not None and base_key is not None else None
        by_method.setdefault(key[0], []).append(scene_stats(scenes, questions, ans, cfg.world, j, jb))
    return {m: np.stack(v) for m, v in by_method.items()}


def comparison_table(boot: Bootstrap, metrics: Sequence[str] = tuple(HEADLINE), digits: dict[str, int] | None = None):
    """The paper's layout: one row per method, one column per headline metric, "mean [lo, hi]" cells."""
    import pandas as pd

    digits = {"mme_total": 1, "judge_score": 2} | (digits or {})
    rows = {}
    for method in boot.point:
        rows[rules.label(method)] = {
            k: fmt_interval(boot.point[method][k], *boot.interval(method, k), digits.get(k, 3)) for k in metrics}
    return pd.DataFrame(rows).T


def table_markdown(df, title: str = "") -> str:
    cols = ["method", *df.columns]
    lines = ([f"**{title}**", ""] if title else []) + ["| " + " | ".join(cols) + " |",
                                                       "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join([str(idx), *map(str, row)]) + " |" for idx, row in zip(df.index, df.values, strict=True)]
    return "\n".join(lines)


def verdicts(boot: Bootstrap, a: str, b: str, metrics: Sequence[str] = tuple(HEADLINE)) -> dict[str, list[str]]:
    """Metrics on which ``a`` is better / worse than ``b`` (the paired interval excludes 0), or neither."""
    out: dict[str, list[str]] = {"better": [], "worse": [], "no_difference": []}
    for k in metrics:
        d = boot.delta(a, b, k)
        up = HEADLINE.get(k, True)
        if d["lo"] > 0 or d["hi"] < 0:
            out["better" if (d["lo"] > 0) == up else "worse"].append(k)
        else:
            out["no_difference"].append(k)
    return out


def ordering_lines(boot: Bootstrap, metrics: Sequence[str] = tuple(HEADLINE)) -> list[str]:
    """One markdown line per metric: the best method by its mean, the methods whose paired interval against it
    includes 0 (not distinguishable from the best in this run) and those reliably below it — an ordering that
    never ranks differences inside the noise."""
    lines = []
    for k in metrics:
        up = HEADLINE.get(k, True)
        winners, _ = wording.best({m: boot.point[m][k] for m in boot.point}, higher_is_better=up)
        best = winners[0]
        tied, below = [], []
        for m in sorted(boot.point, key=lambda m: boot.point[m][k], reverse=up):
            if m in winners:
                continue
            d = signed_delta(k, boot.delta(best, m, k))
            (below if d["lo"] > 0 else tied).append(f"{m} {boot.point[m][k]:.3f}")
        top = (f"best {best} {boot.point[best][k]:.3f}" if len(winners) == 1 else
               f"no single best: {', '.join(winners)} tie at {boot.point[best][k]:.3f}")
        lines.append(f"- **{k}** ({'higher' if up else 'lower'} is better): {top}; "
                     f"not distinguishable from {'it' if len(winners) == 1 else 'them'}: {', '.join(tied) or 'none'}; "
                     f"reliably worse: {', '.join(below) or 'none'}")
    return lines


# The two metrics the series' headline question is asked on (the paper's POPE and MME claims).
KEY_METRICS = ("pope_adversarial_f1", "mme_total")
# The instruction-following metrics the oracle table adds where the question set asks them (the shapes world).
INSTRUCTION_METRICS = ("ift", "ifeval_seen_prompt_strict", "ifeval_seen_right", "ifeval_held_prompt_strict",
                       "dialogue_right", "dialogue_carried")


def signed_delta(metric: str, d: dict[str, float]) -> dict[str, float]:
    """A delta turned so that positive is better (CHAIR_i is lower-is-better)."""
    if HEADLINE.get(metric, True):
        return d
    return d | {"delta": -d["delta"], "lo": -d["hi"], "hi": -d["lo"]}


def interval_frame(boot: Bootstrap, metrics: Sequence[str]):
    """Mean, lo, hi of ``metrics`` for every model of ``boot``, one row per model (wide: ``<metric>``,
    ``<metric>_lo``, ``<metric>_hi``): the table notebooks 10 and 11 print and record."""
    import pandas as pd

    rows = {}
    for m in boot.point:
        row = {}
        for k in metrics:
            lo, hi = boot.interval(m, k)
            row |= {k: boot.point[m][k], f"{k}_lo": lo, f"{k}_hi": hi}
        rows[m] = row
    return pd.DataFrame(rows).T


def oracle_table(boot: Bootstrap, metrics: Sequence[str] = KEY_METRICS, oracle: str = "oracle",
                 base: str = "base"):
    """Can the benchmarks move, and how far does each method get? One row per metric.

    ``gain``: oracle − base with its paired interval (positive = better); ``moves``: that interval excludes 0.
    ``<method>``: the share of the oracle's gain the method recovers, (method − base) / (oracle − base), with its
    bootstrap interval — meaningful only where the oracle moves the metric.
    """
    import pandas as pd

    rows = {}
    for k in metrics:
        g = signed_delta(k, boot.delta(oracle, base, k))
        row = {"gain": g["delta"], "gain_lo": g["lo"], "gain_hi": g["hi"], "moves": bool(g["lo"] > 0)}
        for m in boot.point:
            if m not in (oracle, base):
                r = boot.recovered(m, k, oracle, base)
                row |= {f"{m}": r["share"], f"{m}_lo": r["lo"], f"{m}_hi": r["hi"]}
        rows[k] = row
    return pd.DataFrame(rows).T


def detectable_table(boot: Bootstrap, pairs: Sequence[tuple[str, str]], metrics: Sequence[str] = KEY_METRICS,
                     power: float = 0.8):
    """The minimum detectable paired difference of every pair and metric next to the observed difference."""
    import pandas as pd

    return pd.DataFrame([{"comparison": f"{a} − {b}", "metric": k, "mde": boot.mde(a, b, k, power),
                          "observed": boot.point[a][k] - boot.point[b][k]}
                         for a, b in pairs for k in metrics]).set_index(["comparison", "metric"])


def scene_sizes(n: int) -> list[int]:
    """A quarter, half, three quarters and all of ``n`` evaluation scenes: the sizes of at least 2, no repeats."""
    return sorted({k for k in (n // 4, n // 2, 3 * n // 4, n) if k >= 2})


def detectable_by_scenes(stats: dict[str, np.ndarray], pairs: Sequence[tuple[str, str]],
                         sizes: Sequence[int] | None = None, metrics: Sequence[str] = KEY_METRICS, power: float = 0.8,
                         n_boot: int = 2000, ci: float = 0.95, seed: int = 0):
    """The minimum detectable paired difference on the first ``n`` evaluation scenes, for every ``n`` in ``sizes``
    (default :func:`scene_sizes` of the scenes in ``stats``).

    ``stats`` as for :func:`bootstrap` (every seed of every method); each size is bootstrapped afresh on its
    scenes, seeds and all, so the table shows how far more scenes would take the main job's power — and where
    the seeds' spread, which more scenes cannot shrink, sets a floor. One row per (comparison, metric), one
    column per size.
    """
    import pandas as pd

    n_scenes = {s.shape[1] for s in stats.values()}.pop() if stats else 0
    sizes = scene_sizes(n_scenes) if sizes is None else sizes
    bad = [n for n in sizes if not (isinstance(n, int | np.integer) and 2 <= n <= n_scenes)]
    if bad:
        raise ValueError(f"sizes={list(sizes)!r}: each must be an integer in [2, {n_scenes}] (the scenes evaluated)")
    rows = [(f"{a} − {b}", k) for a, b in pairs for k in metrics]
    cols = {}
    for n in sizes:
        boot = bootstrap({m: s[:, :n] for m, s in stats.items()}, n_boot=n_boot, ci=ci, seed=seed)
        cols[int(n)] = [boot.mde(a, b, k, power) for a, b in pairs for k in metrics]
    df = pd.DataFrame(cols, index=pd.MultiIndex.from_tuples(rows, names=["comparison", "metric"]))
    df.columns.name = "scenes"
    return df


def recorded_answers(run_dir, cfg: Preset, questions: Sequence[dict]) -> dict[tuple[str, int], list[str]]:
    """Every model's greedy answers to ``questions`` as notebook 06 cached them; reads only, answers nothing."""
    out = {}
    for method, seed in model_keys(cfg):
        path = answers_path(run_dir, method, seed)
        try:
            out[(method, seed)] = _stored_answers(path, questions)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{path} is unreadable ({type(exc).__name__}: {exc}): run notebook 06 "
                             "(06_evaluation.ipynb) on this run again") from exc
        if out[(method, seed)] is None:
            raise FileNotFoundError(f"{path} does not hold {method} (seed {seed})'s answers to this run's evaluation "
                                    "questions: run notebook 06 (06_evaluation.ipynb) on this run first")
    return out


def headline_lines(boot: Bootstrap, metrics: Sequence[str] = KEY_METRICS, method: str = "m3po",
                   baselines: Sequence[str] = ("random", "best_worst", "best_of_n"), oracle: str = "oracle",
                   base: str = "base") -> list[str]:
    """The series' question in sentences: does ``method`` beat each baseline, and does the oracle move the
    metric at all (a metric the oracle cannot move judges nothing)?"""
    lines = []
    for k in metrics:
        if oracle in boot.point and base in boot.point:
            g = signed_delta(k, boot.delta(oracle, base, k))
            moves = g["lo"] > 0
            lines.append(f"- **{k}**: the oracle {'moves' if moves else 'does not move'} it "
                         f"({g['delta']:+.3f} [{g['lo']:+.3f}, {g['hi']:+.3f}] over {base})"
                         + ("" if moves else ", so this metric cannot rank the methods"))
        for b in baselines:
            if method not in boot.point or b not in boot.point:
                continue
            d = signed_delta(k, boot.delta(method, b, k))
            word = "beats" if d["lo"] > 0 else "is worse than" if d["hi"] < 0 else "is not distinguishable from"
            lines.append(f"  - {method} {word} {b}: {d['delta']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]; "
                         f"detectable difference {boot.mde(method, b, k):.3f}")
    return lines


def per_seed(stats: dict[str, np.ndarray], metrics: Sequence[str] = tuple(HEADLINE)):
    """Every headline metric of every (method, seed), without resampling (the spread the intervals include)."""
    import pandas as pd

    rows = []
    for m, st in stats.items():
        for i, s in enumerate(st):
            mets = metrics_from_totals(s.sum(axis=0))
            rows.append({"method": m, "seed_index": i, **{k: float(mets[k]) for k in metrics}})
    return pd.DataFrame(rows).set_index(["method", "seed_index"])


def answer_examples(questions: Sequence[dict], answers: dict[tuple[str, int], list[str]], scene: int = 0,
                    kinds: Sequence[str] = ("describe", "short", "ift")):
    """Every model's answer to ``scene``'s questions of ``kinds`` (a table for reading)."""
    import pandas as pd

    idx = [k for k, q in enumerate(questions) if q["scene"] == scene and q["kind"] in kinds]
    return pd.DataFrame({f"{m} (seed {s})": [a[k] for k in idx] for (m, s), a in answers.items()},
                        index=[questions[k]["question"] for k in idx]).T


def pope_settings(questions: Sequence[dict]) -> list[str]:
    """The POPE settings the question set asks (all three in the shapes world; those with a file otherwise)."""
    return [s for s in E.POPE_SETTINGS if any(q["kind"] == f"pope_{s}" for q in questions)]


def pope_by_setting(boot: Bootstrap, measures: Sequence[str] = ("accuracy", "f1", "yes_ratio"),
                    settings: Sequence[str] = E.POPE_SETTINGS):
    return _interval_table(boot, "setting", settings, measures, "pope_{}_{}")


def _interval_table(boot: Bootstrap, part: str, parts: Sequence[str], measures: Sequence[str], key: str,
                    digits: dict[str, int] | None = None):
    """One row per method and ``part`` (a POPE setting, an MME subtask), one column per measure: the metric
    ``key.format(part, measure)`` as mean [interval]."""
    import pandas as pd

    rows = []
    for m in boot.point:
        for p in parts:
            row = {"method": rules.label(m), part: p}
            for x in measures:
                k = key.format(p, x)
                row[x] = fmt_interval(boot.point[m][k], *boot.interval(m, k), digits=(digits or {}).get(x, 3))
            rows.append(row)
    return pd.DataFrame(rows).set_index(["method", part])


IFEVAL_MEASURES = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose", "binding_strict",
                   "content", "right")


def ifeval_table(boot: Bootstrap, measures: Sequence[str] = IFEVAL_MEASURES):
    """Per method and constraint split (``seen``: the types the base trained on, ``held``: types it never saw):
    IFEval's four accuracies (prompt / instruction level, strict / loose), the instruction-level strict accuracy over
    the constraints that bind (``binding_strict``: the plain right answer would break them), the share of answers
    whose content is right, and the share right on both (every constraint followed strictly and the content
    correct), each with its interval; empty when the question set has no such questions (benchmark files)."""
    import pandas as pd

    first = next(iter(boot.point.values()), {})
    splits = [s for s in E.IFEVAL_SPLITS if f"ifeval_{s}_prompt_strict" in first]
    if not splits:
        return pd.DataFrame()
    return _interval_table(boot, "types", splits, measures, "ifeval_{}_{}")


def intervals(boot: Bootstrap, names: dict[str, str]) -> dict[str, dict[str, dict]]:
    """``{method: {name: {"mean", "lo", "hi"}}}`` for ``names`` (name -> metric) the bootstrap has."""
    out: dict[str, dict[str, dict]] = {}
    for m in boot.point:
        for name, k in names.items():
            if k in boot.point[m]:
                lo, hi = boot.interval(m, k)
                out.setdefault(m, {})[name] = {"mean": float(boot.point[m][k]), "lo": float(lo), "hi": float(hi)}
    return out


def ifeval_intervals(boot: Bootstrap, measures: Sequence[str] = IFEVAL_MEASURES) -> dict[str, dict[str, dict]]:
    """``{method: {"<split>_<measure>": {"mean", "lo", "hi"}}}``: what :func:`ifeval_table` prints, as numbers."""
    return intervals(boot, {f"{s}_{x}": f"ifeval_{s}_{x}" for s in E.IFEVAL_SPLITS for x in measures})


def ifeval_by_type(scenes: Sequence[W.Scene], cfg: Preset, questions: Sequence[dict],
                   answers: dict[tuple[str, int], list[str]]):
    """Per constraint type (rows, with whether the base trained on it) and method (columns): the share of that
    type's instructions followed strictly, over every seed; ``n`` counts the instructions of the type asked and
    ``binds`` the share of them that bind (the plain right answer would break them)."""
    import pandas as pd

    rows = [k for k, q in enumerate(questions) if q["kind"].startswith("ifeval_")]
    if not rows:
        return pd.DataFrame()
    followed: dict[str, dict[str, list[float]]] = {}
    n: dict[str, int] = {}
    binds: dict[str, int] = {}
    for j, ((method, _), ans) in enumerate(answers.items()):
        for k in rows:
            q = questions[k]
            s = visual_ifeval.score(q["question"], scenes[q["scene"]], ans[k], cfg.world)
            for iid, ok, b in zip(s["ids"], s["strict"], s["binding"], strict=True):
                followed.setdefault(iid, {}).setdefault(method, []).append(float(ok))
                if j == 0:      # what was asked, counted once (every model got the same questions)
                    n[iid] = n.get(iid, 0) + 1
                    binds[iid] = binds.get(iid, 0) + int(b)
    table = pd.DataFrame({rules.label(m): {i: float(np.mean(v[m])) for i, v in followed.items()}
                          for m in dict.fromkeys(m for m, _ in answers)})
    table.insert(0, "binds", pd.Series({i: binds[i] / n[i] for i in n}))
    table.insert(0, "n", pd.Series(n))
    table.insert(0, "trained on", ["yes" if i in W.ifeval.SEEN else "no (held out)" for i in table.index])
    order = [i for i in (*W.ifeval.SEEN, *W.ifeval.HELD_OUT) if i in table.index]
    return table.loc[order]


DIALOGUE_METRICS = ("dialogue_right", "dialogue_clean_right", "dialogue_carried", "dialogue_history",
                    "dialogue_image")


def dialogue_table(boot: Bootstrap, metrics: Sequence[str] = DIALOGUE_METRICS):
    """Per method, the two-turn metrics with their intervals (empty without two-turn questions): right in context,
    right after a truthful first answer, the share of made-up shapes carried into the follow-up (lower is better),
    consistent with the history, consistent with the image."""
    import pandas as pd

    if not all(k in next(iter(boot.point.values()), {}) for k in metrics):
        return pd.DataFrame()
    return pd.DataFrame({rules.label(m): {k.removeprefix("dialogue_"): fmt_interval(boot.point[m][k],
                                                                                   *boot.interval(m, k))
                                          for k in metrics} for m in boot.point}).T


def dialogue_example(scenes: Sequence[W.Scene], cfg: Preset, questions: Sequence[dict],
                     answers: dict[tuple[str, int], list[str]], made_up: bool = True):
    """The first two-turn question whose first answer made a shape up (``made_up``; else one that told the truth),
    and every model's follow-up answer with its verdict: ``(question, truth, table)``, or None without one."""
    import pandas as pd

    for k, q in enumerate(questions):
        if q["kind"] != "dialogue":
            continue
        scene = scenes[q["scene"]]
        _, params = W.parse_instruction(q["question"], cfg.world)
        if (scene.obj(W.referred_shape(params, cfg.world)) is None) != made_up:
            continue
        rows = []
        for (m, seed), ans in answers.items():
            c = W.follow_up_check(scene, params, ans[k], cfg.world)
            rows.append({"model": f"{rules.label(m)} (seed {seed})", "answer": ans[k],
                         "right": c["right"], "carried": c["carried"],
                         "about the shape asked": c["history_ok"], "true of the image": c["image_ok"]})
        truth = W.describe(scene, cfg.world)
        return q["question"], truth, pd.DataFrame(rows).set_index("model")
    return None


def mme_subtasks(boot: Bootstrap) -> list[str]:
    """The MME subtasks this bootstrap has metrics for (the shapes world: existence, count, position, colour)."""
    first = next(iter(boot.point.values()))
    return [t for t in MME_STAT_SUBTASKS if f"mme_{t}_acc" in first]


def mme_by_subtask(boot: Bootstrap, measures: Sequence[str] = ("acc", "acc_plus", "score")):
    """Per method and MME subtask: accuracy, acc+ (both questions about an image right) and the subtask's score
    (100 · acc + 100 · acc+), each with its interval — where a change of the MME total comes from."""
    return _interval_table(boot, "subtask", mme_subtasks(boot), measures, "mme_{}_{}", digits={"score": 1})


def subtask_deltas(boot: Bootstrap, pairs: Sequence[tuple[str, str]], measure: str = "score") -> dict[str, dict]:
    """``a − b`` of every MME subtask's ``measure`` with its paired interval, keyed ``"a − b"`` then subtask."""
    return {f"{a} − {b}": {t: boot.delta(a, b, f"mme_{t}_{measure}") for t in mme_subtasks(boot)} for a, b in pairs}


def hallucination_changes(scenes: Sequence[W.Scene], questions: Sequence[dict], before: Sequence[str],
                          after: Sequence[str], cfg: WorldConfig, k: int = 5) -> dict[str, Any]:
    """Descriptions where ``after`` dropped (fixed) or added (introduced) a hallucinated object vs ``before``."""
    fixed, introduced = [], []
    for n, q in enumerate(questions):
        if q["kind"] != "describe":
            continue
        scene = scenes[q["scene"]]
        hb = set(W.object_mentions(before[n], cfg)) - scene.shapes()
        ha = set(W.object_mentions(after[n], cfg)) - scene.shapes()
        row = {"scene_id": scene.scene_id, "truth": W.describe(scene, cfg), "before": before[n], "after": after[n],
               "removed": sorted(hb - ha), "added": sorted(ha - hb)}
        if hb - ha:
            fixed.append(row)
        if ha - hb:
            introduced.append(row)
    return {"n_fixed": len(fixed), "n_introduced": len(introduced), "fixed": fixed[:k], "introduced": introduced[:k]}


def benchmark_paths(cfg: Preset) -> dict[str, Any]:
    """The benchmark files of ``cfg.evaluation``; without any, the small fixtures under the project's ``data/``
    (when present) in every layout the loaders read — POPE JSON lines, a JSON array and lmms-lab parquet, the MME
    release folder and lmms-lab parquet — so that each path is shown working."""
    ec = cfg.evaluation
    if ec.pope_files or ec.mme_dir:
        return {"pope_files": list(ec.pope_files), "pope_images": ec.pope_images,
                "mme_dirs": [ec.mme_dir] if ec.mme_dir else []}
    data = Path(__file__).resolve().parent.parent / "data"
    if not (data / "pope").is_dir():
        return {"pope_files": [], "pope_images": "", "mme_dirs": []}
    return {"pope_files": sorted(str(p) for p in (data / "pope").glob("*.json")) +
            sorted(str(p) for p in (data / "lmms-lab" / "POPE").glob("*.parquet")),
            "pope_images": str(data / "pope" / "images"),
            "mme_dirs": [str(d) for d in (data / "mme", data / "lmms-lab" / "MME") if d.is_dir()]}


def _mme_label(path: str) -> str:
    p = Path(path)
    return f"mme:{p.parent.name}/{p.name}" if p.parent.name else f"mme:{p.name}"


def benchmark_frame(scores: dict[str, dict[str, dict]]):
    """method → :func:`benchmark_files` output as one table: POPE accuracy per file (and setting, for a parquet
    holding all three); per MME source its perception total and, where cognition subtasks were asked, its
    cognition total — the official tool's two sums, never added up. Each row names its question count
    (``n=…``): a fixture of a dozen questions checks a path, it does not measure a model."""
    import pandas as pd

    def cells(b: dict) -> dict:
        out = {}
        for k, v in b.items():
            n = f" (n={v['n']})" if "n" in v else ""
            if k.startswith("mme"):
                out[f"{k} perception{n}"] = v["perception"]
                if any(t.get("group") == "cognition" for t in v.get("subtasks", {}).values()):
                    out[f"{k} cognition{n}"] = v["cognition"]
            else:
                out[f"{k} accuracy{n}"] = v["accuracy"]
        return out

    return pd.DataFrame({m: cells(b) for m, b in scores.items()})


def benchmark_sets(pope_files: Sequence[str] = (), pope_images: str = "", mme_dirs: Sequence[str] = ()
                   ) -> dict[str, list[dict]]:
    """The questions of POPE files and MME sources, read (and embedded images decoded) once for every model that
    answers them: ``pope:<file>`` (``pope:<file>:<setting>`` for a file holding several settings) and
    ``mme:<folder>`` → rows."""
    out: dict[str, list[dict]] = {}
    for f in pope_files:
        by_setting = pope_rows(f, pope_images)
        for setting, rows in by_setting.items():
            out[f"pope:{Path(f).name}" + (f":{setting}" if len(by_setting) > 1 else "")] = \
                [r | {"setting": setting} for r in rows]
    for d in mme_dirs:
        out[_mme_label(d)] = E.load_mme_dir(d)
    return out


def benchmark_files(cfg: Preset, loader: Callable[[], tuple[Any, Any]], sets: dict[str, list[dict]]
                    ) -> dict[str, Any]:
    """:func:`benchmark_sets` answered by ``loader()``'s model and scored with the official parsers
    (:func:`scoring.pope_metrics`, :func:`scoring.mme_scores`), under the same keys."""
    if not sets:
        return {}
    model, processor = loader()
    out: dict[str, Any] = {}
    for key, rows in sets.items():
        answers = E.answer_file_questions(model, processor, rows, batch_size=cfg.evaluation.batch_size,
                                          max_new_tokens=8)
        if key.startswith("mme"):
            out[key] = E.mme_scores([r | {"prediction": a} for r, a in zip(rows, answers, strict=True)]) | {
                "n": len(rows)}
        else:
            out[key] = E.pope_metrics(answers, [r["label"] for r in rows]) | {"n": len(rows),
                                                                               "setting": rows[0]["setting"]}
    return out


# ------------------------------------------------------------------------------- a fixed subset of the questions

# What the preference term is expected to move, at a fraction of the full question set's cost: notebooks 07 and 11
# evaluate many models on these.
SUBSET_KINDS = ("pope_adversarial", "mme")


def subset_questions(scenes: Sequence[W.Scene], cfg: Preset, kinds: Sequence[str] = SUBSET_KINDS) -> list[dict]:
    """The questions of :func:`~m3po_utils.scoring.eval_questions` of the given kinds on ``scenes``."""
    return [q for q in E.eval_questions(scenes, cfg.world, seed=cfg.seed) if q["kind"] in kinds]


class Evaluator:
    """The same scenes and questions (``kinds``) for every model: per-scene counts of :data:`STATS`."""

    def __init__(self, cfg: Preset, scenes: Sequence[W.Scene], kinds: Sequence[str] = SUBSET_KINDS):
        self.cfg, self.scenes = cfg, list(scenes)
        self.questions = subset_questions(self.scenes, cfg, kinds)
        self.key = questions_key(self.questions)
        self.images = [W.render(s, cfg.world) for s in self.scenes]

    def stats(self, model, processor) -> np.ndarray:
        answers = answer_questions(model, processor, self.images, self.questions,
                                   batch_size=self.cfg.evaluation.batch_size,
                                   long_answer_tokens=self.cfg.evaluation.long_answer_tokens)
        return scene_stats(self.scenes, self.questions, answers, self.cfg.world)
