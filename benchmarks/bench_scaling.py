"""How the cost of each stage grows: time and peak memory as N, the number of prompts K and the model width double.

    python benchmarks/bench_scaling.py            # 4 points per axis (about 5 minutes on 2 cores)
    python benchmarks/bench_scaling.py --quick    # 3 points per axis

Stages measured, each point in a fresh process (so that its peak memory is its own):

* **01 sampling** — ``models.generate.sample_candidates`` over K prompts × N candidates (chunks of at most 256
  sequences, as the preset does), against N, K and the LVLM's text width w;
* **02 CLIP scoring** — ``ClipScorer.score`` of the K × N candidate texts against their K images, against N and K;
* **05 DPO** — one epoch of TRL DPO-LoRA with reused reference log-probs on K pairs (batch 8), against K and w.

The model is the shapes preset's tiny LLaVA with its text width (hidden w, MLP 3w) changed and everything else
kept; untrained, so that every answer runs to ``max_new_tokens`` and the sampled length is the same at every
point. Time: the faster of 2 runs after a first one; peak memory: the first run's resident-set high-water mark
(Linux ``/proc/self/clear_refs`` resets it at the start) minus the process's size when it starts — later runs
reuse what the allocator kept and would understate it.

For each stage and axis the script fits the growth exponent a in time ∝ x^a (least squares on log-log, over
all points and over the last doubling alone — small points still carry fixed per-call costs, so the last
doubling is the regime that continues) and reports 2^a, the time ratio per doubling, as the ratio. It then
multiplies the base point's time by (x_7B / x_0)^a (last-doubling exponents) over the axes to extrapolate to LLaVA-1.5-7B's K = 5000, N = 32, w = 4096 — on this CPU, at the
tiny model's depth, image-token count and answer length — and prints it beside the on-paper GPU
estimate. The width exponent of a 3-layer model of width ≤ 512 is measured where per-call overhead still
weighs; a 7B model is compute-bound (time ∝ w² at fixed depth), so the script also prints that bound.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ratios import emit, machine  # noqa: E402

BASE = {"N": 8, "K": 16, "w": 128}
AXES = {"sampling": ("N", "K", "w"), "clip": ("N", "K"), "dpo": ("K", "w")}
VALUES = {"N": [4, 8, 16, 32], "K": [8, 16, 32, 64], "w": [64, 128, 256, 512]}
DPO_K = [16, 32, 64, 128]          # DPO needs whole batches of 8 pairs
TARGET = {"N": 32, "K": 5000, "w": 4096}     # LLaVA-1.5-7B under the paper's settings (docs/guide.md, "Scaling to LLaVA-1.5-7B")
ON_PAPER = {"sampling": "≈ 5.5–6 GPU-hours (HF generate, one 80 GB GPU)", "clip": "minutes of GPU",
            "dpo": "≈ 15–20 GPU-minutes per adapter"}
MAX_NEW_TOKENS = 24


def fit_exponent(xs, ys) -> float:
    """a in y = c · x^a, by least squares on (log x, log y)."""
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    if len(lx) < 2 or np.ptp(lx) == 0:
        raise ValueError("need at least two distinct x values to fit an exponent")
    return float(np.polyfit(lx, ly, 1)[0])


def extrapolate(t0: float, base: dict, target: dict, exponents: dict) -> float:
    """t0 · Π (target[x] / base[x]) ** exponents[x] over the axes that have an exponent."""
    return t0 * math.prod((target[k] / base[k]) ** a for k, a in exponents.items())


# ------------------------------------------------------------------------------------------ one point (child)

def _rss_mb() -> tuple[float, float]:
    """(current, high-water) resident set of this process in MB (Linux /proc)."""
    status = Path("/proc/self/status").read_text().splitlines()
    kb = {ln.split(":")[0]: float(ln.split()[1]) for ln in status if ln.startswith(("VmRSS", "VmHWM"))}
    return kb["VmRSS"] / 1024, kb["VmHWM"] / 1024


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _measured(fn, repeats: int = 2) -> tuple[float, float]:
    """(fastest time of ``repeats`` runs after the first, peak memory of the first run over its start).

    The first run is the one whose memory counts: later runs reuse what the allocator kept from it and would
    understate the stage's peak; its time includes one-time costs and does not count."""
    start_rss, _ = _rss_mb()
    _reset_peak()
    fn()
    peak = _rss_mb()[1] - start_rss
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), peak


def _world(k: int):
    from m3po_utils import shapes as W
    from m3po_utils.config import load_preset

    cfg = load_preset("shapes")
    wc = dataclasses.replace(cfg.world, n_train=200, n_pref=2 * k + 20, n_eval=8)   # room for validation scenes
    return cfg, wc, W.make_splits(wc)


def _lvlm(cfg, wc, splits, width: int):
    from m3po_utils.models import sft as T

    lcfg = dataclasses.replace(cfg.lvlm_train, text_hidden=width, text_intermediate=3 * width)
    model, processor = T.build_base(splits["train"], wc, lcfg)
    return model.eval(), processor


def point(stage: str, n: int, k: int, w: int) -> dict:
    import torch

    from m3po_utils import shapes as W
    from m3po_utils.shapes import prompts as P

    torch.manual_seed(0)
    cfg, wc, splits = _world(k)
    cfg = dataclasses.replace(cfg, world=wc)
    rows = P.shapes_prompts(splits["pref"], dataclasses.replace(cfg, generation=dataclasses.replace(
        cfg.generation, n_prompts=k)))[:k]
    resolver = P.ImageResolver(cfg, splits)
    images = [resolver(r["image"]) for r in rows]
    if stage == "sampling":
        from m3po_utils.models.generate import sample_candidates

        model, processor = _lvlm(cfg, wc, splits, w)
        per_chunk = max(1, 256 // n)

        def run():
            for s in range(0, k, per_chunk):
                sample_candidates(model, processor, images[s: s + per_chunk],
                                  [r["instruction"] for r in rows[s: s + per_chunk]], n, temperature=1.0,
                                  top_p=1.0, top_k=0, max_new_tokens=MAX_NEW_TOKENS, batch_size=256, seed=s)
        seconds, peak = _measured(run)
        return {"seconds": seconds, "peak_mb": peak, "params": sum(p.numel() for p in model.parameters())}
    if stage == "clip":
        from m3po_utils import mas
        from m3po_utils.models.clip import build_tiny_clip
        from m3po_utils.models.clip_score import ClipScorer

        cands = mas.candidates_frame(mas.synthetic_candidates(rows, splits["pref"], wc, n_candidates=n))
        scorer = ClipScorer(*build_tiny_clip(cfg.clip_train, wc.image_size))
        refs, texts = cands["image"].tolist(), cands["text"].tolist()
        seconds, peak = _measured(lambda: scorer.score(refs, texts, resolver))
        return {"seconds": seconds, "peak_mb": peak, "texts": len(texts)}
    if stage == "dpo":
        import datasets

        from m3po_utils import dpo as D
        from m3po_utils.models import trl_api as TA
        from m3po_utils.models.generate import score_responses
        from m3po_utils.models.sft import encode_pair
        from m3po_utils.selection import assistant_turn, user_turn

        model, processor = _lvlm(cfg, wc, splits, w)
        pairs = []
        for i, (r, img) in enumerate(zip(rows, images, strict=True)):
            other = W.describe(splits["pref"][i + 1], wc)
            ids = [encode_pair(processor, r["instruction"], a)[1] for a in (r["reference"], other)]
            lp = score_responses(model, processor, img, r["instruction"], ids)
            pairs.append({"images": [img], "prompt": user_turn(r["instruction"]),
                          "chosen": assistant_turn(r["reference"]), "rejected": assistant_turn(other),
                          "chosen_token_ids": ids[0], "rejected_token_ids": ids[1],
                          "logp_chosen": float(lp[0].sum()), "logp_rejected": float(lp[1].sum())})
        table, _ = D.training_table(datasets.Dataset.from_list(pairs), TA.training_processor(processor), True,
                                    generation_processor=processor)
        dcfg = dataclasses.replace(cfg.dpo, batch_size=8)

        def run():
            import copy

            with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trainer = TA.build_trainer(copy.deepcopy(model), TA.training_processor(processor), table, dcfg, tmp,
                                           D.steps_for(len(table), dcfg), device="cpu", progress=False)
                trainer.train()
        seconds, peak = _measured(run)
        return {"seconds": seconds, "peak_mb": peak, "steps": D.steps_for(len(table), dcfg)}
    raise ValueError(f"unknown stage {stage!r}")


# ------------------------------------------------------------------------------------------ the sweep (parent)

def sweep(quick: bool) -> list[dict]:
    todo = []
    for stage, axes in AXES.items():
        for axis in axes:
            values = DPO_K if (stage == "dpo" and axis == "K") else VALUES[axis]
            for v in values[:3] if quick else values:
                todo.append((stage, axis, BASE | ({"K": DPO_K[0]} if stage == "dpo" else {}) | {axis: v}))
    done: dict[tuple, dict] = {}
    out = []
    for stage, axis, p in todo:
        key = (stage, p["N"], p["K"], p["w"])
        if key not in done:
            cmd = [sys.executable, __file__, "--point", json.dumps({"stage": stage, **p})]
            res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"PYTHONWARNINGS": "ignore"})
            lines = [ln for ln in res.stdout.splitlines() if ln.startswith("POINT ")]
            if res.returncode or not lines:
                raise RuntimeError(f"point {key} failed:\n{res.stderr[-3000:]}")
            done[key] = json.loads(lines[-1][6:])
            print(f"  {stage:8s} N={p['N']:3d} K={p['K']:4d} w={p['w']:4d}: {done[key]['seconds']:8.3f} s, "
                  f"peak +{done[key]['peak_mb']:7.1f} MB", flush=True)
        out.append({"stage": stage, "axis": axis, **p, **done[key]})
    return out


def report(rows: list[dict]) -> list[dict]:
    fits = []
    for stage, axes in AXES.items():
        exps = {}
        for axis in axes:
            pts = [r for r in rows if r["stage"] == stage and r["axis"] == axis]
            xs = [r[axis] for r in pts]
            a_t = fit_exponent(xs, [r["seconds"] for r in pts])
            a_last = fit_exponent(xs[-2:], [r["seconds"] for r in pts[-2:]])
            a_m = fit_exponent(xs, [max(r["peak_mb"], 1.0) for r in pts])
            exps[axis] = a_last
            fits.append({"stage": stage, "axis": axis, "points": xs, "seconds": [r["seconds"] for r in pts],
                         "peak_mb": [r["peak_mb"] for r in pts], "time_exponent": a_t,
                         "last_doubling_exponent": a_last, "memory_exponent": a_m})
        base = BASE | ({"K": DPO_K[0]} if stage == "dpo" else {})
        t0 = next(r["seconds"] for r in rows if r["stage"] == stage and all(r[k] == base[k] for k in base))
        est = extrapolate(t0, base, TARGET, exps)
        bound = extrapolate(t0, base, TARGET, exps | ({"w": 2.0} if "w" in exps else {}))
        fits.append({"stage": stage, "axis": "7B", "base": base, "base_seconds": t0, "hours": est / 3600,
                     "hours_width_squared": bound / 3600 if "w" in exps else None, "on_paper": ON_PAPER[stage]})
    return fits


def print_table(fits: list[dict]) -> None:
    print("\n| stage | axis | points | seconds | peak MB over start | time exponent, all points (2^a) | "
          "time exponent, last doubling | memory exponent |")
    print("|---|---|---|---|---|---|---|---|")
    for f in fits:
        if f["axis"] == "7B":
            continue
        print(f"| {f['stage']} | {f['axis']} | {', '.join(map(str, f['points']))} | "
              f"{', '.join(f'{s:.3g}' for s in f['seconds'])} | {', '.join(f'{m:.0f}' for m in f['peak_mb'])} | "
              f"{f['time_exponent']:.2f} ({2 ** f['time_exponent']:.2f}x) | {f['last_doubling_exponent']:.2f} | "
              f"{f['memory_exponent']:.2f} |")
    print("\n| stage | extrapolated to K=5000, N=32, w=4096 on this CPU (last-doubling exponents) | with time ∝ w² | "
          "on paper (docs/guide.md, GPU) |")
    print("|---|---|---|---|")
    for f in fits:
        if f["axis"] == "7B":
            sq = "" if f["hours_width_squared"] is None else f"{f['hours_width_squared']:.3g} h"
            print(f"| {f['stage']} | {f['hours']:.3g} h (from {f['base_seconds']:.3g} s at {f['base']}) | {sq} | "
                  f"{f['on_paper']} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 points per axis")
    ap.add_argument("--point", help=argparse.SUPPRESS)       # internal: measure one point in this process
    ap.add_argument("--json", help="also write every point and fit to this file")
    args = ap.parse_args(argv)
    if args.point:
        p = json.loads(args.point)
        print("POINT " + json.dumps(point(p["stage"], p["N"], p["K"], p["w"])), flush=True)
        return 0
    print(f"cost growth on {machine()}; base point {BASE}, DPO base K={DPO_K[0]}, {MAX_NEW_TOKENS} new tokens",
          flush=True)
    rows = sweep(args.quick)
    fits = report(rows)
    print_table(fits)
    for f in fits:
        if f["axis"] != "7B":
            emit("scaling", f"{f['stage']} time per doubling of {f['axis']}", f"{f['axis']}={f['points'][0]}",
                 f"{f['axis']}={f['points'][-1]}", 2 ** f["time_exponent"], None, unit="x time per doubling")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows, "fits": fits}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
