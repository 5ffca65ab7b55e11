"""Benchmarks of candidate generation (stage 01), each printed as a ratio measured in this run.

    python benchmarks/bench_generation.py                  # shapes-preset sizes, about a minute on 2 cores
    python benchmarks/bench_generation.py --quick          # smaller, for a smoke check

(a) **Log-prob capture.** Plain sampling (``generate`` + decoding) against the production path
    ``models.generate.sample_candidates`` (``output_logits=True`` + log-softmax of the raw logits + masking), and
    against plain sampling followed by a teacher-forced pass (``models.generate.score_responses``) — what the
    log-probs would cost without capture. Target: capture adds at most 5 % to generation time.
(b) **Batching.** The same number of candidates sampled in one batched call (prompts x candidates) against a
    loop that samples one candidate per ``generate`` call. Target: batched at least 8x faster.

The model is the shapes preset's tiny LLaVA architecture, freshly initialised (no EOS is ever favoured, so every
sequence runs to ``max_new_tokens`` and all variants do the same number of decoding steps). Timings are the
median of ``--repeats`` interleaved runs; each variant samples with the same seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ratios import emit  # noqa: E402  (benchmarks/ratios.py)

from m3po_utils import shapes as W  # noqa: E402
from m3po_utils.config import load_preset  # noqa: E402
from m3po_utils.models import generate as G  # noqa: E402
from m3po_utils.models import sft as T_sft  # noqa: E402
from m3po_utils.models import templates as T  # noqa: E402

QUESTIONS = ["Describe the image.", "Is there a star in the image?", "What color is the circle?",
             "How many shapes are in the image?", "Where is the square?",
             'Describe the image. Start your answer with "In this picture".',
             "List the shapes in the image, separated by commas.", "Name the shapes in the image in at most 3 words."]


def build(n_prompts: int):
    cfg = load_preset("shapes")
    splits = W.make_splits(cfg.world.__class__(n_train=300, n_pref=max(n_prompts, 8), n_eval=8))
    model, processor = T_sft.build_base(splits["train"], cfg.world, cfg.lvlm_train)
    model.eval()
    images = [W.render(s, cfg.world) for s in splits["pref"][:n_prompts]]
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(n_prompts)]
    return cfg, model, processor, images, questions


@torch.no_grad()
def plain_sampling(model, processor, images, questions, n, max_new_tokens, seed):
    """Sampling without log-probs: the same inputs, settings and decoding as ``sample_candidates``."""
    tok = processor.tokenizer
    tok.padding_side = "left"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inputs = processor(images=images, text=[T.prompt_for(processor, q) for q in questions], return_tensors="pt",
                           padding=True)
        seq = model.generate(**inputs, num_return_sequences=n, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                             num_beams=1, max_new_tokens=max_new_tokens,
                             suppress_tokens=G.suppressed_token_ids(processor), pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, repetition_penalty=1.0)
    new = seq[:, inputs["input_ids"].shape[1]:].tolist()
    eos = tok.eos_token_id
    ids = [row[: row.index(eos) + 1] if eos in row else row for row in new]
    texts = [tok.decode(r[:-1] if r and r[-1] == eos else r, skip_special_tokens=True).strip() for r in ids]
    return [ids[i * n: (i + 1) * n] for i in range(len(questions))], texts


def with_capture(model, processor, images, questions, n, max_new_tokens, seed):
    return G.sample_candidates(model, processor, images, questions, n, max_new_tokens=max_new_tokens,
                               batch_size=len(questions) * n, seed=seed)


def then_teacher_forced(model, processor, images, questions, n, max_new_tokens, seed, score_batch):
    ids, _ = plain_sampling(model, processor, images, questions, n, max_new_tokens, seed)
    return G.score_responses(model, processor, images, questions, ids, batch_size=score_batch)


@torch.no_grad()
def per_candidate_loop(model, processor, images, questions, n, max_new_tokens, seed):
    """One ``generate`` call per candidate (log-probs captured the same way)."""
    tok = processor.tokenizer
    tok.padding_side = "left"
    out = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for img, q in zip(images, questions, strict=True):
            inputs = processor(images=[img], text=[T.prompt_for(processor, q)], return_tensors="pt")
            for _ in range(n):
                gen = model.generate(**inputs, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, num_beams=1,
                                     max_new_tokens=max_new_tokens, suppress_tokens=G.suppressed_token_ids(processor),
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                     repetition_penalty=1.0, return_dict_in_generate=True, output_logits=True)
                new = gen.sequences[:, inputs["input_ids"].shape[1]:]
                lp, lengths, ended = G.extract_logprobs(new, gen.logits, tok.eos_token_id)
                out.append(G._candidate_rows(processor, new, lp, lengths, ended)[0])
    return out


def timed(fn, *args, **kw) -> float:
    t0 = time.perf_counter()
    fn(*args, **kw)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=16, help="prompts in the capture benchmark (a)")
    p.add_argument("--n", type=int, default=16, help="candidates per prompt")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--loop-prompts", type=int, default=4, help="prompts in the batching benchmark (b)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="small sizes (8 prompts x 8, 24 tokens, 3 repeats)")
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.n, args.max_new_tokens, args.loop_prompts, args.repeats = 8, 8, 24, 2, 3
    cfg, model, processor, images, questions = build(max(args.prompts, args.loop_prompts))
    n, mnt = args.n, args.max_new_tokens
    print(f"tiny LLaVA (shapes preset size, {sum(q.numel() for q in model.parameters()):,} parameters), "
          f"torch threads {torch.get_num_threads()}, {args.prompts} prompts x {n} candidates x {mnt} new tokens")

    a_imgs, a_qs = images[: args.prompts], questions[: args.prompts]
    for r in range(2):                                                      # warm-up at the measured shape
        plain_sampling(model, processor, a_imgs, a_qs, n, mnt, r)
        with_capture(model, processor, a_imgs, a_qs, n, mnt, r)
    times: dict[str, list[float]] = {"plain": [], "capture": [], "teacher": []}
    for r in range(args.repeats):
        times["plain"].append(timed(plain_sampling, model, processor, a_imgs, a_qs, n, mnt, r))
        times["capture"].append(timed(with_capture, model, processor, a_imgs, a_qs, n, mnt, r))
        times["teacher"].append(timed(then_teacher_forced, model, processor, a_imgs, a_qs, n, mnt, r,
                                      score_batch=cfg.generation.batch_size))
    med = {k: statistics.median(v) for k, v in times.items()}
    # Each repeat runs the variants back to back, so the ratio within a repeat cancels the slow drift of a shared
    # 2-core machine; the median of those paired ratios is the figure compared with the target.
    paired = {k: statistics.median(a / b for a, b in zip(times[k], times["plain"], strict=True))
              for k in ("capture", "teacher")}

    b_imgs, b_qs = images[: args.loop_prompts], questions[: args.loop_prompts]
    with_capture(model, processor, b_imgs, b_qs, n, mnt, 0)                 # warm-up at this shape
    batched = statistics.median(timed(with_capture, model, processor, b_imgs, b_qs, n, mnt, r)
                                for r in range(args.repeats))
    loop = timed(per_candidate_loop, model, processor, b_imgs, b_qs, n, mnt, 0)

    seqs = args.prompts * n
    rows = [
        ("(a) plain sampling (no log-probs)", med["plain"], seqs, ""),
        ("(a) sampling + captured log-probs", med["capture"], seqs,
         f"capture / plain = {paired['capture']:.3f} (median of paired repeats; target <= 1.05)"),
        ("(a) plain sampling + teacher-forced pass", med["teacher"], seqs,
         f"(sampling + TF) / capture = {paired['teacher'] / paired['capture']:.2f}x"),
        ("(b) per-candidate loop", loop, args.loop_prompts * n, ""),
        ("(b) batched (prompts x candidates)", batched, args.loop_prompts * n,
         f"loop / batched = {loop / batched:.1f}x  (target >= 8x)"),
    ]
    print(f"\n{'variant':44s} {'seconds':>9s} {'seq/s':>8s}  ratio")
    for name, sec, count, ratio in rows:
        print(f"{name:44s} {sec:9.3f} {count / sec:8.1f}  {ratio}")
    print(f"\ncapture overhead: {100 * (paired['capture'] - 1):+.1f} % of plain sampling, median of paired repeats "
          f"(medians of {args.repeats}: plain {[round(t, 3) for t in times['plain']]}, "
          f"capture {[round(t, 3) for t in times['capture']]})")
    emit("generation", "log-prob capture overhead", "plain sampling", "sampling + captured log-probs",
         1 / paired["capture"], 1 / 1.05, unit="time ratio; ≥ 0.952 means overhead ≤ 5 %")
    emit("generation", "sampling + teacher-forced pass vs capture", "sampling + teacher-forced pass",
         "sampling + captured log-probs", paired["teacher"] / paired["capture"], None)
    emit("generation", "batched sampling", "one generate call per candidate", "one batched call", loop / batched, 8.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
