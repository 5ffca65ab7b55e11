"""Benchmarks of the Multimodal Alignment Score (stage 02), each printed as a ratio measured in this run.

    python benchmarks/bench_mas.py            # shapes-preset shapes: 100 prompts x 16 candidates
    python benchmarks/bench_mas.py --quick    # 20 prompts x 8 candidates, a few seconds

(a) **Image-embedding reuse.** CLIP scoring as ``CS.ClipScorer.score`` does it (each distinct image embedded
    once, each distinct text once, batched) against the naive loop that embeds the image (and the text) again
    for every (image, response) pair (``ClipScorer.score_per_pair``). Reported for the image tower alone and for
    the whole scoring; both give the same cosines.
(b) **Listwise vs pointwise judging.** The same candidates judged by the shapes world's judge over HTTP on
    127.0.0.1 with the real ``openai`` client, no cache: one request per prompt with the image sent once
    (listwise) against one request per candidate (pointwise). Requests and request-body bytes per prompt (counted
    by the client's HTTP hook and checked against the server), and wall time.

The CLIP is the shapes preset's tiny open_clip architecture, freshly initialised (speed does not depend on the
weights). Candidates are made without a model (``mas.synthetic_candidates``: reference answers and answers about
other scenes, so texts repeat as real short answers do). Timings are medians of interleaved repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ratios import emit  # noqa: E402  (benchmarks/ratios.py)

from m3po_utils import mas  # noqa: E402
from m3po_utils import shapes as W  # noqa: E402
from m3po_utils.config import load_preset  # noqa: E402
from m3po_utils.judge import client as JC  # noqa: E402
from m3po_utils.judge.server import JudgeServer  # noqa: E402
from m3po_utils.models import clip_score as CS  # noqa: E402
from m3po_utils.shapes import prompts as P  # noqa: E402


def build(n_prompts: int, n_candidates: int):
    cfg = load_preset("shapes", {"generation.n_prompts": n_prompts, "world.n_train": 50,
                                 "world.n_pref": n_prompts + 100, "world.n_eval": 10})
    splits = W.make_splits(cfg.world)
    rows = P.shapes_prompts(splits["pref"], cfg)
    cands = mas.candidates_frame(mas.synthetic_candidates(rows, splits["pref"], cfg.world, n_candidates=n_candidates))
    return cfg, splits, cands, P.ImageResolver(cfg, splits)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_clip(cfg, cands, resolver, repeats: int) -> None:
    from m3po_utils.models.clip import build_tiny_clip

    model, preprocess, tokenizer = build_tiny_clip(cfg.clip_train, cfg.world.image_size)
    scorer = CS.ClipScorer(model, preprocess, tokenizer)
    refs, texts = cands["image"].tolist(), cands["text"].tolist()
    for r in set(refs):  # render every image once up front: both variants read the same cached pixels
        resolver(r)
    distinct = list(dict.fromkeys(refs))

    t_once, t_each, t_score, t_pair = [], [], [], []
    for _ in range(repeats):  # interleaved
        t0 = time.perf_counter()
        scorer.image_embeddings([resolver(r) for r in distinct])
        t_once.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        scorer.image_embeddings([resolver(r) for r in refs])
        t_each.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fast = scorer.score(refs, texts, resolver)
        t_score.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        naive = scorer.score_per_pair(refs, texts, resolver)
        t_pair.append(time.perf_counter() - t0)
    assert np.allclose(fast.raw, naive, atol=1e-5), "reuse changed the scores"
    m = statistics.median
    print(f"(a) CLIP image-embedding reuse: {len(refs)} pairs, {len(distinct)} distinct images, "
          f"{cands['text'].nunique()} distinct texts")
    print(f"    image tower: {len(refs)} embeddings per pair {m(t_each):.3f} s vs {len(distinct)} once per image "
          f"{m(t_once):.3f} s  ->  {m(t_each) / m(t_once):.1f}x fewer seconds ({len(refs) / len(distinct):.0f}x fewer "
          "images)")
    print(f"    whole scoring: per pair {m(t_pair):.3f} s vs ClipScorer.score {m(t_score):.3f} s  ->  "
          f"{m(t_pair) / m(t_score):.1f}x faster (max |diff| {np.abs(fast.raw - naive).max():.1e})")
    emit("mas", "CLIP image tower", "every pair's image embedded", "each distinct image embedded once",
         m(t_each) / m(t_once), None)
    emit("mas", "whole CLIP scoring", "ClipScorer.score_per_pair", "ClipScorer.score", m(t_pair) / m(t_score), None)


def bench_judge(cfg, splits, cands, resolver, repeats: int) -> None:
    items = mas.judge_items(cands, resolver)[0]
    n_prompts = len(items)
    with JudgeServer(splits["pref"], cfg.world) as srv:
        out: dict[str, dict] = {}
        for _ in range(repeats):
            for mode in ("pointwise", "listwise"):
                before = srv.stats["bytes_received"]
                with JC.JudgeClient(srv.base_url, srv.model_id, mode=mode, concurrency=cfg.mas.concurrency) as c:
                    t0 = time.perf_counter()
                    res = c.judge(items)
                    dt = time.perf_counter() - t0
                assert all(o.ok for r in res for o in r)
                d = out.setdefault(mode, {"t": [], "scores": None})
                d["t"].append(dt)
                d.update(requests=c.stats["requests"], bytes=c.stats["bytes_sent"],
                         server_bytes=srv.stats["bytes_received"] - before,
                         scores=[[o.score for o in r] for r in res])
    p, lw = out["pointwise"], out["listwise"]
    assert p["scores"] == lw["scores"], "the two modes disagree"
    m = statistics.median
    print(f"(b) judge, {n_prompts} prompts x {len(items[0].responses)} candidates "
          f"(distinct responses judged once: {sum(len(set(i.responses)) for i in items)} in all)")
    for name, d in (("pointwise", p), ("listwise", lw)):
        print(f"    {name:9s}: {d['requests'] / n_prompts:5.2f} requests/prompt, {d['bytes'] / n_prompts / 1024:6.1f} KiB "
              f"sent/prompt (server saw {d['server_bytes'] / n_prompts / 1024:.1f}), {m(d['t']):.2f} s "
              f"({m(d['t']) / d['requests'] * 1000:.1f} ms/request)")
    print(f"    listwise vs pointwise: {p['requests'] / lw['requests']:.1f}x fewer requests, "
          f"{p['bytes'] / lw['bytes']:.1f}x fewer bytes, {m(p['t']) / m(lw['t']):.1f}x faster; same scores")
    n_cand = len(items[0].responses)
    print(f"    (pointwise asks each distinct response of a prompt once; without that, {n_cand} requests/prompt and "
          f"about {p['bytes'] / p['requests'] * n_cand / 1024:.0f} KiB/prompt: "
          f"{p['bytes'] / p['requests'] * n_cand * n_prompts / lw['bytes']:.0f}x listwise's bytes)")
    emit("mas", "judge requests", "pointwise", "listwise", p["requests"] / lw["requests"], None, unit="x fewer requests")
    emit("mas", "judge bytes sent", "pointwise", "listwise", p["bytes"] / lw["bytes"], None, unit="x fewer bytes")
    emit("mas", "judge wall time", "pointwise", "listwise", m(p["t"]) / m(lw["t"]), None)
    per_prompt = m(lw["t"]) / n_prompts
    print(f"    estimate for the shapes preset (1200 prompts, listwise): {1200 * per_prompt:.1f} s per noise level")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="20 prompts x 8 candidates, 2 repeats")
    args = ap.parse_args(argv)
    if args.quick:
        args.prompts, args.candidates, args.repeats = 20, 8, 2
    cfg, splits, cands, resolver = build(args.prompts, args.candidates)
    bench_clip(cfg, cands, resolver, args.repeats)
    bench_judge(cfg, splits, cands, resolver, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
