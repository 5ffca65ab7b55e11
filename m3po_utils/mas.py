"""Stage 02: the Multimodal Alignment Score (MAS), CLIP similarity and an LVLM judge combined in [0, 1].

M3PO needs an external judgement of each candidate against its image. The paper combines CLIP image-text
similarity with a GPT-4V judge; this module does the same with real parts: any ``open_clip`` model (the shapes
world's tiny CLIP, or ``ViT-L-14``/``openai``) and the ``openai`` client pointed at any OpenAI-compatible endpoint
(OpenAI, vLLM, Ollama, or the shapes world's ground-truth judge in :mod:`m3po_utils.judge.server`).

CLIP score
    ``clip_raw`` = cosine(image embedding, response embedding). Every distinct image is embedded once and reused
    for all its candidates; distinct texts are embedded once, in batches (:class:`ClipScorer`).
    *Long responses*: open_clip's tokenizer keeps the first ``context_length`` tokens and ends them with the
    end-of-text token (see :mod:`m3po_utils.models.clip`), so CLIP never sees the end of a long response. We keep
    that behaviour (it is what every CLIP-score user gets) and flag the rows in ``clip_truncated``; the judge
    reads the whole response, one more reason MAS leans on it.
    *Normalisation* (``MasConfig.clip_norm``), :func:`normalise_clip`:

    - ``"run"`` (default): one affine map for the whole run, the 5th percentile of ``clip_raw`` -> 0 and the 95th
      -> 1, clipped to [0, 1]. Monotone, the same for every prompt, robust to outliers, and it keeps each
      prompt's CLIP differences in proportion to the spread CLIP shows over the whole run (much of which is
      between images), so a prompt whose candidates CLIP can hardly tell apart keeps small MAS differences.
      It does not judge CLIP's quality: a weak CLIP's spread is stretched to [0, 1] like a strong one's, and
      ``clip_weight`` is the knob for how much CLIP is trusted.
    - ``"prompt"``: min-max within each prompt (0.5 when all candidates tie). Every prompt's CLIP-best gets 1 and
      its CLIP-worst 0 however tiny the difference: for "Yes" vs "No" that turns CLIP noise into a full-scale
      MAS difference, so it is not the default.
    - ``"cosine"``: ``(cos + 1) / 2``: fixed and comparable across runs, but squeezed into a narrow band.

Judge
    :class:`JudgeClient` sends chat completions with the image as a base64 PNG data URL and a versioned prompt
    (:data:`m3po_utils.judge.protocol.PROMPTS`) that asks for JSON: ``{"score": 1-10}`` per candidate (*pointwise*, one request per
    candidate) or ``{"scores": [...]}`` for all N candidates of a prompt with the image sent once (*listwise*).
    A malformed reply is retried, then recorded as a failure (never scored 0). 429, 5xx, timeouts and dropped
    connections are retried by the openai client itself (exponential backoff with jitter, ``Retry-After``
    honoured); other HTTP errors fail at once. Requests run on a bounded thread pool (``MasConfig.concurrency``). Every successful answer is
    written at once to an SQLite cache (:class:`JudgeCache`, ``run_dir/mas/judge_cache.sqlite``) keyed by
    (model, prompt version and mode, image hash, instruction, response), so a rerun or a crash never repeats a
    paid call; failures are not cached, so a rerun retries exactly them.
    Endpoint: ``OPENAI_BASE_URL`` wins over ``models.judge_base_url``; when both are empty the shapes world
    starts its own judge on 127.0.0.1 and hub presets use OpenAI. The key is read from ``OPENAI_API_KEY`` and is
    sent only to an endpoint that is not the local judge; it is kept out of logs, error texts (redacted), the
    cache, the tables and the notebooks.

MAS
    ``judge_score = (judge_raw - 1) / 9`` and ::

        mas = (w_clip * clip_score + w_judge * judge_score) / (w_clip + w_judge)        (MasConfig weights)

    so MAS is in [0, 1] whatever the weights. A candidate whose judge call failed is *not* scored: ``judge_ok``
    and ``mas_ok`` are False and ``mas`` is NaN (a CLIP-only fallback would mix two scales inside one prompt's
    ranking); later stages must skip such rows, and rerunning notebook 02 retries only them. With
    ``judge_weight = 0`` the judge is not called and ``mas = clip_score``.

Output: ``run_dir/mas/scores/`` (a ``datasets`` table, written atomically; :func:`save_mas` / :func:`load_mas`)
with one row per candidate: ``prompt_id, cand_idx, family, clip_raw, clip_score, clip_truncated, judge_raw,
judge_score, judge_ok, judge_error, mas, mas_ok`` and, in the shapes world, ``truth`` (the verifier's score).
"""


from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from datasets import Dataset
from PIL import Image

from m3po_utils import rules, wording
from m3po_utils import shapes as W
from m3po_utils.config import MasConfig, Preset, SelectionConfig
from m3po_utils.io import AtomicDir
from m3po_utils.judge.client import (
    LOCAL_KEY,
    JudgeClient,
    JudgeConfigError,
    JudgeItem,
    failure_kind,
    judge_base_url,
    uses_local_judge,
)
from m3po_utils.judge.server import Assessor, JudgeServer
from m3po_utils.models.clip_score import ClipScorer, ClipScores
from m3po_utils.models.generate import quiet_datasets
from m3po_utils.rundir import RunDir
from m3po_utils.stats import spearman
from m3po_utils.world import base_clip

CLIP_RUN_QUANTILES = (0.05, 0.95)


CANDIDATE_COLUMNS = ("prompt_id", "image", "instruction", "cand_idx", "text")


def normalise_clip(raw: Sequence[float], groups: Sequence[Any] | None = None, method: str = "run",
                   quantiles: tuple[float, float] = CLIP_RUN_QUANTILES) -> np.ndarray:
    """Map cosine similarities to a [0, 1] CLIP score (see the module docstring for the three methods).

    ``groups`` (the prompt id of each row) is needed by ``"prompt"``. NaN stays NaN.
    """
    raw = np.asarray(raw, dtype=np.float64)
    if method == "cosine":
        return np.clip((raw + 1.0) / 2.0, 0.0, 1.0)
    if method == "run":
        finite = raw[np.isfinite(raw)]
        if finite.size == 0:
            return raw.copy()
        lo, hi = np.quantile(finite, quantiles)
        if hi - lo <= 1e-12:
            return np.where(np.isfinite(raw), 0.5, np.nan)
        return np.clip((raw - lo) / (hi - lo), 0.0, 1.0)
    if method == "prompt":
        if groups is None or len(groups) != len(raw):
            raise ValueError("clip_norm='prompt' needs the prompt id of every row (groups=)")
        s = pd.Series(raw)
        g = s.groupby(np.asarray(groups))
        lo, hi = g.transform("min"), g.transform("max")
        span = (hi - lo).to_numpy()
        out = np.where(span > 1e-12, (s - lo).to_numpy() / np.where(span > 1e-12, span, 1.0), 0.5)
        return np.where(np.isfinite(raw), out, np.nan)
    raise ValueError(f"clip_norm={method!r} is unknown; choose 'run', 'prompt' or 'cosine'")


def clip_norm_range(raw: Sequence[float], quantiles: tuple[float, float] = CLIP_RUN_QUANTILES) -> tuple[float, float]:
    """The (lo, hi) cosines that ``normalise_clip(method="run")`` maps to 0 and 1."""
    finite = np.asarray(raw, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    lo, hi = np.quantile(finite, quantiles) if finite.size else (np.nan, np.nan)
    return float(lo), float(hi)


@contextmanager
def open_judge(cfg: Preset, run_dir: str | Path, *, noise: float | None = None,
               splits: dict[str, list[W.Scene]] | None = None, server_index: W.SceneIndex | None = None,
               use_cache: bool = True, assessor=None, model_view=None, **client_kwargs) -> Iterator[JudgeClient]:
    """A :class:`JudgeClient` for this preset, with the run's cache; starts and stops the local judge if needed.

    Shapes world without an endpoint: a :class:`~m3po_utils.judge.server.JudgeServer` on 127.0.0.1 with
    ``noise`` (default ``cfg.mas.judge_noise``) and ``assessor`` (a :class:`~m3po_utils.judge.server.Assessor`;
    ``model_view`` for one that reads the base model); the client is given a placeholder key, never the real one,
    and ``client.server`` is the server. Otherwise the configured endpoint and ``cfg.models.judge_model``.
    """
    mc = cfg.mas
    kwargs: dict[str, Any] = dict(mode=mc.judge_mode, prompt_version=mc.prompt_version, concurrency=mc.concurrency,
                                  max_retries=mc.max_retries, timeout_s=mc.timeout_s, fail_after=mc.judge_fail_after,
                                  request_deadline_s=mc.request_deadline_s, stage_deadline_s=mc.judge_deadline_s,
                                  cache=RunDir(run_dir).judge_cache if use_cache else None)
    kwargs.update(client_kwargs)
    if assessor is None and mc.verdict_weight != 0.5:
        assessor = Assessor(verdict_weight=mc.verdict_weight)
    if uses_local_judge(cfg):
        level = mc.judge_noise if noise is None else float(noise)
        extra = {"assessor": assessor, "model_view": model_view}
        if server_index is not None:
            server = JudgeServer(None, cfg.world, index=server_index, noise=level, seed=mc.seed, **extra)
        else:
            server = JudgeServer.for_splits(cfg, splits if splits is not None else RunDir(run_dir).scenes(),
                                            noise=level, **extra)
        with server, JudgeClient(server.base_url, server.model_id, api_key=LOCAL_KEY, **kwargs) as client:
            client.server = server
            yield client
        return
    if noise or (assessor is not None and assessor.tag()):
        raise JudgeConfigError("judge noise and assessors are knobs of the shapes world's local judge; this preset uses "
                               f"{judge_base_url(cfg) or 'OpenAI'}")
    with JudgeClient(judge_base_url(cfg), cfg.models.judge_model, **kwargs) as client:
        client.server = None
        yield client


def clip_scorer(cfg: Preset, run_dir: str | Path, **kwargs) -> ClipScorer:
    """The run's CLIP as a scorer: notebook 00's tiny CLIP (``models/clip``) or ``models.clip_model``."""
    model, preprocess, tokenizer, _ = base_clip(cfg, run_dir)
    return ClipScorer(model, preprocess, tokenizer, **kwargs)


def read_candidates(run_dir: str | Path) -> pd.DataFrame:
    """Notebook 01's candidates as a DataFrame with the columns MAS needs."""
    return candidates_frame(RunDir(run_dir).load_candidates())


def candidates_frame(table) -> pd.DataFrame:
    """A candidates table (datasets.Dataset or DataFrame) reduced to the columns MAS reads, in prompt order."""
    wanted = [*CANDIDATE_COLUMNS, "scene_id", "family"]
    if hasattr(table, "column_names") and hasattr(table, "select_columns"):
        missing = [c for c in CANDIDATE_COLUMNS if c not in table.column_names]
        if not missing:
            table = table.select_columns([c for c in wanted if c in table.column_names])
        cols = table.column_names
        df = table.to_pandas() if not missing else None
    else:
        df = pd.DataFrame(table)
        cols = list(df.columns)
        missing = [c for c in CANDIDATE_COLUMNS if c not in cols]
    if missing:
        raise ValueError(f"the candidates table lacks column(s) {', '.join(missing)} (has {', '.join(cols)}); "
                         "rerun notebook 01")
    df = df[[c for c in wanted if c in df.columns]].copy()
    if "family" not in df:
        df["family"] = "free"
    df["text"] = df["text"].fillna("").astype(str)
    return df.reset_index(drop=True)


def judge_items(df: pd.DataFrame, load_image: Callable[[str], Image.Image]) -> tuple[list[JudgeItem], list[np.ndarray]]:
    """One JudgeItem per prompt (candidates in table order) and, for each, the row positions it covers."""
    items, rows = [], []
    hashes: dict[str, str] = {}
    for _, group in df.groupby("prompt_id", sort=False):
        ref = str(group["image"].iloc[0])
        image = load_image(ref)
        if ref not in hashes:
            hashes[ref] = W.image_key(image)
        items.append(JudgeItem(image, str(group["instruction"].iloc[0]), group["text"].tolist(), hashes[ref]))
        rows.append(group.index.to_numpy())
    return items, rows


def combine(clip_score: Sequence[float], judge_score: Sequence[float], judge_ok: Sequence[bool],
            cfg: MasConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(mas, mas_ok)``: the weighted mean of the two [0, 1] scores; NaN where the judge was needed and failed."""
    c = np.asarray(clip_score, dtype=np.float64)
    j = np.asarray(judge_score, dtype=np.float64)
    ok = np.asarray(judge_ok, dtype=bool)
    wc, wj = float(cfg.clip_weight), float(cfg.judge_weight)
    if wj == 0:
        mas = c.copy()
    else:
        mas = (wc * np.nan_to_num(c, nan=0.0) + wj * np.where(ok, j, 0.0)) / (wc + wj)
        mas = np.where(ok & (np.isfinite(c) | (wc == 0)), mas, np.nan)
    mas = np.clip(mas, 0.0, 1.0)
    return mas, np.isfinite(mas)


def score_candidates(df: pd.DataFrame, cfg: MasConfig, load_image: Callable[[str], Image.Image], *,
                     clip: ClipScorer | ClipScores | None = None, judge: JudgeClient | None = None,
                     progress: bool = False) -> pd.DataFrame:
    """CLIP score, judge score and MAS for every candidate of ``df`` (a :func:`candidates_frame`).

    ``clip``: a scorer, or the :class:`ClipScores` it already gave for these rows; None: CLIP columns are NaN
    (allowed only with ``clip_weight = 0``). ``judge`` None: judge columns are NaN (only with
    ``judge_weight = 0``).
    """
    df = df.reset_index(drop=True)
    n = len(df)
    out = pd.DataFrame({"prompt_id": df["prompt_id"].astype(str), "cand_idx": df["cand_idx"].astype(int),
                        "family": df["family"].astype(str)})
    if clip is not None:
        cs = clip if isinstance(clip, ClipScores) else clip.score(df["image"].astype(str).tolist(),
                                                                   df["text"].tolist(), load_image)
        if len(cs.raw) != n:
            raise ValueError(f"the CLIP scores cover {len(cs.raw)} rows, the table has {n}")
        out["clip_raw"] = cs.raw
        out["clip_score"] = normalise_clip(cs.raw, out["prompt_id"].to_numpy(), cfg.clip_norm)
        out["clip_truncated"] = cs.truncated
    else:
        if cfg.clip_weight > 0:
            raise ValueError("mas.clip_weight > 0 needs a CLIP scorer (clip=)")
        out["clip_raw"] = out["clip_score"] = np.full(n, np.nan)
        out["clip_truncated"] = np.zeros(n, dtype=bool)
    judge_raw = np.full(n, np.nan)
    judge_ok = np.zeros(n, dtype=bool)
    errors = np.full(n, "", dtype=object)
    if judge is not None and cfg.judge_weight > 0:
        items, rows = judge_items(df, load_image)
        outcomes = judge.judge(items, progress=progress)
        for pos, res in zip(rows, outcomes, strict=True):
            for p, o in zip(pos, res, strict=True):
                judge_raw[p], judge_ok[p], errors[p] = o.score, o.ok, o.error
    elif cfg.judge_weight > 0:
        raise ValueError("mas.judge_weight > 0 needs a judge (judge=); set it to 0 for CLIP-only MAS")
    out["judge_raw"] = judge_raw
    out["judge_score"] = (judge_raw - 1.0) / 9.0
    out["judge_ok"] = judge_ok
    out["judge_error"] = errors.astype(str)
    out["mas"], out["mas_ok"] = combine(out["clip_score"], out["judge_score"], judge_ok, cfg)
    return out


class MasIncomplete(RuntimeError):
    """Too many candidates without a MAS for notebook 02 to count as done (``MasConfig.max_missing``)."""


def coverage(table: pd.DataFrame, mc: MasConfig) -> dict[str, Any]:
    """How many candidates have a MAS, and why the others do not (judge failures by class, most common first).

    Raises :class:`MasIncomplete` when the missing share exceeds ``mc.max_missing``: a stage whose output is
    unusable must not be recorded as complete (a wrong key would otherwise leave every MAS NaN and "succeed").
    """
    n = len(table)
    missing = int((~table["mas_ok"].astype(bool)).sum()) if n else 0
    errors = table.loc[~table["judge_ok"].astype(bool), "judge_error"] if mc.judge_weight > 0 else pd.Series([], dtype=str)
    kinds = errors[errors != ""].map(failure_kind).value_counts()
    out = {"candidates": n, "missing": missing, "missing_share": missing / n if n else 0.0,
           "max_missing": mc.max_missing, "failures_by_kind": {str(k): int(v) for k, v in kinds.items()}}
    if n == 0 or missing / n > mc.max_missing:
        why = ", ".join(f"{v} {k}" for k, v in out["failures_by_kind"].items()) or "no judge error recorded"
        example = next((e for e in errors if e), "")
        raise MasIncomplete(
            f"{missing} of {n} candidates ({wording.share(out['missing_share'], 1)}) have no MAS — more than "
            f"mas.max_missing={mc.max_missing:g} allows (judge failures: {why}"
            + (f"; e.g. {example[:160]!r}" if example else "") + "). Fix the judge and rerun notebook 02: the "
            "answers already in mas/judge_cache.sqlite are reused and only the failed ones are sent again.")
    return out


class JudgeUninformative(RuntimeError):
    """The judge's scores do not tell the candidates apart (a constant, or no agreement with the truth that can even
    be measured): notebook 02 stops instead of ranking candidates by them."""


def judge_information(table: pd.DataFrame, mc: MasConfig) -> dict[str, Any]:
    """Whether the judge's scores carry information about the candidates; :class:`JudgeUninformative` if not.

    A judge that answers well-formed but meaningless scores — the same score for everything, say — would otherwise
    make a complete, useless MAS. Checked over every candidate with a judge score: the standard deviation of the
    raw 1-10 scores must exceed ``mas.min_judge_spread`` (0 turns the check off), and where the verifier's truth is
    known (the shapes world) and itself varies, the judge's rank correlation with it must be computable.
    """
    if mc.judge_weight <= 0 or mc.min_judge_spread <= 0:
        return {"checked": False}
    ok = table["judge_ok"].astype(bool).to_numpy()
    raw = table.loc[ok, "judge_raw"].to_numpy(dtype=float)
    spread = float(np.std(raw)) if raw.size else 0.0
    out: dict[str, Any] = {"checked": True, "scored": int(raw.size), "spread": spread,
                           "distinct_scores": int(np.unique(raw).size)}
    if spread <= mc.min_judge_spread:
        raise JudgeUninformative(
            f"the judge gave {raw.size} candidates {out['distinct_scores']} distinct score(s) (standard deviation "
            f"{spread:.3f} on its 1-10 scale, at most mas.min_judge_spread={mc.min_judge_spread:g}): it does not tell "
            "the candidates apart, so a MAS built on it would rank them by nothing. Check models.judge_model and "
            "mas.prompt_version, or set mas.min_judge_spread=0 for a judge that legitimately ties.")
    if "truth" in table and np.ptp(table["truth"].to_numpy(dtype=float)) > 0:
        rho = spearman(table.loc[ok, "judge_raw"], table.loc[ok, "truth"])
        out["spearman_truth"] = rho
        if not np.isfinite(rho):
            raise JudgeUninformative(
                "the judge's agreement with the verifier's truth cannot be computed (its scores or the truth are "
                "constant over the candidates it scored): its scores carry no information about them. Check "
                "models.judge_model and mas.prompt_version, or set mas.min_judge_spread=0 to skip this check.")
    return out


def verifier_truth(df: pd.DataFrame, scenes: dict[str, W.Scene], world_cfg) -> np.ndarray:
    """The shapes world's ground truth for each candidate: ``world.verify(...).score`` in [0, 1]."""
    out = np.empty(len(df))
    for i, (sid, ins, text) in enumerate(zip(df["scene_id"], df["instruction"], df["text"], strict=True)):
        out[i] = W.verify(scenes[sid], ins, text, world_cfg).score
    return out


POOL_COLUMNS = ("prompt_id", "cand_idx", "clip_raw", "clip_score", "judge_score", "judge_ok", "mas", "truth")


def score_pool(cands: pd.DataFrame, cfg: Preset, run_dir: str | Path, load_image: Callable[[str], Image.Image],
               splits: dict[str, list[W.Scene]], judge: JudgeClient, progress: bool = False) -> pd.DataFrame:
    """An extra candidate pool (notebooks 07 and 11) scored as notebook 02 scores the run's: the run's CLIP and
    ``judge`` combined into MAS, with the verifier's truth beside it; :data:`POOL_COLUMNS`."""
    scored = score_candidates(cands, cfg.mas, load_image, clip=clip_scorer(cfg, run_dir), judge=judge,
                              progress=progress)
    scenes = {s.scene_id: s for part in splits.values() for s in part}
    scored["truth"] = verifier_truth(cands, scenes, cfg.world)
    return scored[list(POOL_COLUMNS)]


def save_mas(table: pd.DataFrame, run_dir: str | Path) -> Path:
    """Write the MAS table to ``run_dir/mas/scores/`` atomically (the judge cache beside it is untouched)."""
    folder = RunDir(run_dir).mas_scores
    ds = Dataset.from_pandas(table.reset_index(drop=True), preserve_index=False)
    with AtomicDir(folder) as tmp, quiet_datasets():   # one progress bar per save clutters the notebook
        ds.save_to_disk(str(tmp))
    return folder


def top1_agreement(df: pd.DataFrame, col: str, truth: str = "truth") -> float:
    """Share of prompts where the candidate ranked first by ``col`` is truly best (has the prompt's max truth).

    Only prompts whose candidates differ in truth count; a tie for first place by ``col`` scores the share of
    the tied candidates that are truly best (what a random tie-break would get on average).
    """
    vals = []
    for _, g in df.groupby("prompt_id", sort=False):
        t, s = g[truth].to_numpy(float), g[col].to_numpy(float)
        keep = np.isfinite(s) & np.isfinite(t)
        t, s = t[keep], s[keep]
        if t.size < 2 or t.max() == t.min():
            continue
        top = s == s.max()
        vals.append(float((t[top] == t.max()).mean()))
    return float(np.mean(vals)) if vals else float("nan")


def within_prompt_spearman(df: pd.DataFrame, col: str, truth: str = "truth") -> float:
    """Mean over prompts of Spearman(col, truth) among a prompt's candidates (prompts where both vary)."""
    vals = [spearman(g[col], g[truth]) for _, g in df.groupby("prompt_id", sort=False)]
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def agreement(df: pd.DataFrame, cols: Sequence[str] = ("clip_score", "judge_score", "mas"),
              truth: str = "truth") -> pd.DataFrame:
    """Per score column: Spearman with the truth over all candidates, mean within-prompt Spearman, top-1."""
    rows = {c: {"spearman": spearman(df[c], df[truth]), "within_prompt_spearman": within_prompt_spearman(df, c, truth),
                "top1": top1_agreement(df, c, truth), "n": int(np.isfinite(df[c].to_numpy(float)).sum())}
            for c in cols}
    return pd.DataFrame(rows).T


CONTRAST_FAMILIES = ("existence", "count", "position", "color", "describe")


def contrast_pairs(scenes: Sequence[W.Scene], world_cfg, seed: int = 0,
                   families: Sequence[str] = CONTRAST_FAMILIES) -> pd.DataFrame:
    """A right and a wrong answer per (scene, family): where can a scorer tell them apart?

    The right answer is the reference; the wrong one changes exactly what the family asks about: yes <-> no
    (with the matching claim),
    the count +-1, another position, another colour, and for descriptions one object's colour. Only pairs the
    verifier separates (right = 1, wrong < 1) are kept. Columns: scene_id, image, family, instruction, right,
    wrong.
    """
    rng = np.random.default_rng(seed)
    g = world_cfg.grid
    rows = []
    for scene in scenes:
        for fam in families:
            ins = W.make_instruction(fam, scene, world_cfg, rng=rng)
            right = ins.reference
            if fam == "existence":
                shape = ins.args["shape"]
                wrong = (f"No, there is no {shape}." if scene.has(shape)
                         else f"Yes, there is a {rng.choice(world_cfg.colors)} {shape}.")
            elif fam == "count":
                n = len(scene.objects)
                wrong = str(n + 1 if n == 1 or rng.random() < 0.5 else n - 1)
            elif fam == "position":
                obj = scene.obj(ins.args["shape"])
                others = [c for c in range(g * g) if c != obj.cell]
                wrong = W.position_phrase(int(rng.choice(others)), g)
            elif fam == "color":
                others = [c for c in world_cfg.colors if c != right]
                wrong = str(rng.choice(others))
            elif fam == "describe":
                k = int(rng.integers(len(scene.objects)))
                objs = list(scene.objects)
                o = objs[k]
                objs[k] = W.Obj(o.shape, str(rng.choice([c for c in world_cfg.colors if c != o.color])), o.cell)
                wrong = W.describe(W.Scene(scene.scene_id, scene.split, tuple(objs), scene.style_seed), world_cfg)
            else:
                raise ValueError(f"no contrast defined for family {fam!r}; choose from {', '.join(CONTRAST_FAMILIES)}")
            if (W.verify(scene, ins.text, right, world_cfg).score == 1.0
                    and W.verify(scene, ins.text, wrong, world_cfg).score < 1.0):
                rows.append({"scene_id": scene.scene_id, "image": f"scene:{scene.scene_id}", "family": fam,
                             "instruction": ins.text, "right": right, "wrong": wrong})
    return pd.DataFrame(rows)


def contrast_accuracy(pairs: pd.DataFrame, right_scores: Sequence[float], wrong_scores: Sequence[float]) -> pd.Series:
    """Per family: the share of pairs where the right answer scores higher (a tie counts one half)."""
    r, w = np.asarray(right_scores, float), np.asarray(wrong_scores, float)
    win = np.where(r > w, 1.0, np.where(r == w, 0.5, 0.0))
    win = np.where(np.isfinite(r) & np.isfinite(w), win, np.nan)
    return pd.Series(win, index=pairs.index).groupby(pairs["family"]).mean()


def contrast_frame(pairs: pd.DataFrame) -> pd.DataFrame:
    """The contrast pairs as a two-candidate-per-prompt table that :func:`score_candidates` accepts."""
    rows = []
    for i, p in pairs.reset_index(drop=True).iterrows():
        for j, col in enumerate(("right", "wrong")):
            rows.append({"prompt_id": f"c{i:05d}", "image": p["image"], "instruction": p["instruction"],
                         "cand_idx": j, "text": p[col], "scene_id": p["scene_id"], "family": p["family"]})
    return pd.DataFrame(rows)


def score_validation(run_dir: str | Path, cfg: Preset, load_image: Callable[[str], Image.Image], *,
                     clip: ClipScorer | None, judge: JudgeClient | None, scenes: dict[str, W.Scene]) -> pd.DataFrame:
    """Notebook 01's *validation* candidates scored as the preference candidates are (CLIP, judge, MAS; CLIP
    normalised over this table, which comes from the same model and sampling), with the verifier's ``truth``
    and their log-probs: the table :func:`m3po_utils.selection.weight_sweep` reads. Judge answers go through the run's cache."""
    ds = RunDir(run_dir).load_candidates("validation")
    df = candidates_frame(ds)
    table = score_candidates(df, cfg.mas, load_image, clip=clip, judge=judge)
    table["truth"] = verifier_truth(df, scenes, cfg.world)
    logp = ds.select_columns(["prompt_id", "cand_idx", "logprob_sum", "logprob_mean"]).to_pandas()
    return table.assign(text=df["text"].to_numpy()).merge(logp, on=["prompt_id", "cand_idx"], validate="one_to_one")


def synthetic_candidates(prompt_rows: Sequence[dict], scenes: Sequence[W.Scene], world_cfg, n_candidates: int = 4,
                         p_right: float = 0.4, seed: int = 0) -> pd.DataFrame:
    """A candidates table without a model (tests, benchmarks): per prompt, each candidate is the reference
    answer with probability ``p_right``, else the reference of the same instruction asked about another scene
    (a plausible answer about the wrong image). ``prompt_rows`` as from :func:`prompts.shapes_prompts`.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for row in prompt_rows:
        family, params = W.parse_instruction(row["instruction"], world_cfg)
        for j in range(n_candidates):
            text = row["reference"]
            if rng.random() >= p_right:
                other = scenes[int(rng.integers(len(scenes)))]
                text = W.make_instruction(family, other, world_cfg, **params).reference
            rows.append({**row, "cand_idx": j, "text": text})
    return pd.DataFrame(rows)


def noise_sweep(cfg: Preset, run_dir: str | Path, cands: pd.DataFrame, clip: ClipScores, resolver,
                truth: Sequence[float], index: W.SceneIndex, levels: Sequence[float] | None = None) -> pd.DataFrame:
    """Agreement with the truth of CLIP, the judge and MAS as the local judge gets noisier (one row per level).

    Each noise level is its own judge model (``shapes-judge-noiseN``), so its answers are cached apart and a rerun
    sends no request. ``truth``: the verifier's score of every row of ``cands``; ``index``: the scenes the judges
    look up (shared by every level).
    """
    rows = []
    for noise in (cfg.mas.noise_sweep if levels is None else levels):
        t0 = time.perf_counter()
        with open_judge(cfg, run_dir, noise=noise, server_index=index) as judge:
            t = score_candidates(cands, cfg.mas, resolver, clip=clip, judge=judge)
            stats = dict(judge.stats)
        t["truth"] = np.asarray(truth, dtype=float)
        a = agreement(t)
        rows.append({"noise": noise, "model": judge.model, "requests": stats["requests"],
                     "cache_hits": stats["cache_hits"], "failures": stats["failures"],
                     "seconds": round(time.perf_counter() - t0, 2),
                     **{f"{k}_{m}": float(a.loc[c, m]) for k, c in (("clip", "clip_score"), ("judge", "judge_score"),
                                                                    ("mas", "mas")) for m in ("spearman", "top1")}})
    return pd.DataFrame(rows)


def noise_verdict(sweep: pd.DataFrame, tol: float = 0.01) -> str:
    """One sentence over every noise level: is MAS (CLIP + judge) ranked closer to the truth than the judge alone?

    The sweep holds one Spearman ρ per score and level, without an interval, so a difference within ``tol`` is
    called no difference; the CLIP share is said to help only where MAS leads at every level above noise 0."""
    rows = sweep[sweep["noise"] > 0] if (sweep["noise"] > 0).any() else sweep
    d = (rows["mas_spearman"] - rows["judge_spearman"]).to_numpy()
    each = "; ".join(f"noise {r.noise:g}: judge alone ρ = {r.judge_spearman:.3f}, MAS ρ = {r.mas_spearman:.3f}"
                     for r in sweep.itertuples())
    if (d > tol).all():
        verdict = "MAS leads at every level, so the CLIP share helps"
    elif (d < -tol).all():
        verdict = "the judge alone leads at every level, so the CLIP share hurts"
    else:
        verdict = (f"the two stay within {tol:g} of each other or change places, so this sweep shows no effect of "
                   "the CLIP share (single values, no interval)")
    return f"{each} — {verdict}."


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
        groups = rules.group_candidates(scored, sc.confidence)
        truth = rules.truth_by_prompt(groups, scored)
        sel = rules.select(groups, "m3po", sc.alpha, sc.delta, sc.min_margin, 1, sc.seed)
        tc, tr = np.array([[truth[c.prompt_id][c.pairs[0][0]], truth[c.prompt_id][c.pairs[0][1]]]
                           for c in sel.choices if c.pairs and c.pairs[0][1] is not None]).reshape(-1, 2).T
        st = rules.selection_stats(groups, sel, truth=truth)
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
