"""Benchmark of the base model's SFT step (notebook 00): bfloat16 autocast with eager attention vs plain float32.

    python benchmarks/bench_base_training.py            # shapes-preset model and batch, 80 steps, 3 repeats
    python benchmarks/bench_base_training.py --quick    # 30 steps, 2 repeats

Both variants run ``models.sft.train_base`` from the same freshly built tiny LLaVA (deep copies) on the same
scenes with the same seed, so they draw the same batches:

* **fp32** — ``lvlm_train.precision="fp32"``: float32 throughout, PyTorch's scaled-dot-product attention;
* **bf16** — ``precision="bf16"`` (the default): the forward pass under ``torch.autocast(dtype=bfloat16)`` with
  eager attention; weights, gradients and AdamW stay float32.

A step's time is taken from the training record's ``elapsed_s`` after the first ``--warmup`` steps (the first
steps pay for allocation); the ratio is taken on the fastest repeat of each variant and the ratio of the medians
is printed beside it. Besides speed it prints each variant's mean training loss over the last steps, which
should agree (the step is the same computation at lower matrix-product precision). Target: bf16 >= 1.3x faster.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ratios import emit, machine  # noqa: E402  (benchmarks/ratios.py)

from m3po_utils import shapes as W  # noqa: E402
from m3po_utils.config import load_preset  # noqa: E402
from m3po_utils.models import sft as T  # noqa: E402

TARGET = 1.3


def time_steps(model, processor, scenes, wc, lcfg, warmup: int) -> tuple[float, float]:
    """(seconds per step after ``warmup`` steps, mean loss of the last quarter of the steps)."""
    hist = T.train_base(copy.deepcopy(model), processor, scenes, wc, lcfg, progress=False)
    per_step = (hist[-1]["elapsed_s"] - hist[warmup - 1]["elapsed_s"]) / (len(hist) - warmup)
    tail = hist[-max(1, len(hist) // 4):]
    return per_step, float(np.mean([h["loss"] for h in tail]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="30 steps, 2 repeats")
    args = p.parse_args(argv)
    steps, repeats = (30, 2) if args.quick else (args.steps, args.repeats)
    cfg = load_preset("shapes")
    wc = dataclasses.replace(cfg.world, n_train=600, n_pref=8, n_eval=8)
    scenes = W.make_splits(wc)["train"]
    base = dataclasses.replace(cfg.lvlm_train, steps=steps, warmup_steps=min(10, steps - 1), eval_every=10**6)
    model, processor = T.build_base(scenes, wc, base)
    print(f"{machine()}; batch {base.batch_size}, {steps} steps ({args.warmup} not timed), {repeats} repeats")
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    losses: dict[str, float] = {}
    for r in range(repeats):
        for name in times:
            t, loss = time_steps(model, processor, scenes, wc, dataclasses.replace(base, precision=name), args.warmup)
            times[name].append(t)
            losses[name] = loss
            print(f"  repeat {r}: {name} {t * 1e3:6.1f} ms/step, mean loss of the last steps {loss:.4f}", flush=True)
    fp32, bf16 = min(times["fp32"]), min(times["bf16"])
    ratio = fp32 / bf16
    median_ratio = statistics.median(times["fp32"]) / statistics.median(times["bf16"])
    print(f"base SFT step (fastest of {repeats}): fp32 {fp32 * 1e3:.1f} ms, bf16 {bf16 * 1e3:.1f} ms -> bf16 is "
          f"{ratio:.2f}x faster (target >= {TARGET}x); ratio of medians {median_ratio:.2f}x; "
          f"loss fp32 {losses['fp32']:.4f} vs bf16 {losses['bf16']:.4f}")
    emit("base_training", "base SFT step (notebook 00)", "float32, SDPA attention",
         "bfloat16 autocast, eager attention", ratio, TARGET)
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
