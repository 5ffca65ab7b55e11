"""Benchmark of DPO training (stage 05): reference log-probs reused from generation vs TRL's reference pass.

    python benchmarks/bench_dpo.py             # shapes-preset model and batch, 30 steps, 5 interleaved repeats
    python benchmarks/bench_dpo.py --quick     # 10 steps, 2 repeats, for a smoke check

Both variants train the same LoRA on the same pairs for the same steps with the same seed:

* **reuse** — ``dpo.ReusedReferenceDPOTrainer`` with the pairs' generation-time log-probs as
  ``ref_chosen_logps`` / ``ref_rejected_logps`` (every response here re-tokenises to its token ids, so no
  reference forward runs at all);
* **TRL default** — TRL's own ``DPOTrainer``, which runs the adapter-disabled model over every batch for the
  reference log-probs.

The model is the shapes preset's tiny LLaVA architecture (freshly initialised, trained for a few SFT steps so
that it is not uniform). Pairs are built from shapes-world scenes: the ground-truth answer against another
scene's answer to the same instruction, with their teacher-forced log-probs under the model standing in for
the generation-time ones (``models.generate.score_responses`` uses the generation layout). Timings are Trainer's
``train_runtime`` (the training loop only) over ``--repeats`` interleaved runs; the ratio is taken on the
fastest run of each variant (as ``timeit`` does: on a shared machine the slower runs measure the neighbours),
and the ratio of the medians is printed next to it. Target: reuse ≥ 1.25× faster.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import datasets
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ratios import emit  # noqa: E402  (benchmarks/ratios.py)

from m3po_utils import dpo as D  # noqa: E402
from m3po_utils import shapes as W  # noqa: E402
from m3po_utils.config import load_preset  # noqa: E402
from m3po_utils.models import sft as T  # noqa: E402
from m3po_utils.models import trl_api as TA  # noqa: E402
from m3po_utils.models.generate import score_responses  # noqa: E402
from m3po_utils.selection import assistant_turn, user_turn  # noqa: E402

FAMILIES = ("describe", "existence", "color", "count", "position", "fmt_list")


def build(n_pairs: int, sft_steps: int):
    cfg = load_preset("shapes")
    wc = dataclasses.replace(cfg.world, n_train=400, n_pref=n_pairs + 1, n_eval=8)
    splits = W.make_splits(wc)
    lcfg = dataclasses.replace(cfg.lvlm_train, steps=sft_steps, warmup_steps=min(10, sft_steps - 1), eval_every=10**6)
    model, processor = T.build_base(splits["train"], wc, lcfg)
    T.train_base(model, processor, splits["train"], wc, lcfg, progress=False)
    model.eval()
    rng = np.random.default_rng(0)
    scenes = splits["pref"]
    rows = []
    for i in range(n_pairs):
        scene, other = scenes[i], scenes[i + 1]
        ins = W.make_instruction(FAMILIES[i % len(FAMILIES)], scene, wc, rng=rng)
        right = ins.reference
        wrong = W.make_instruction(ins.family, other, wc, rng=np.random.default_rng(i)).reference
        if wrong == right:
            wrong = W.describe(other, wc)
        image = W.render(scene, wc)
        ids = [T.encode_pair(processor, ins.text, a)[1] for a in (right, wrong)]
        lp = score_responses(model, processor, image, ins.text, ids)
        rows.append({"images": [image], "prompt": user_turn(ins.text), "chosen": assistant_turn(right),
                     "rejected": assistant_turn(wrong), "chosen_text": right, "rejected_text": wrong,
                     "chosen_token_ids": ids[0], "rejected_token_ids": ids[1],
                     "logp_chosen": float(lp[0].sum()), "logp_rejected": float(lp[1].sum())})
    return cfg, model, processor, datasets.Dataset.from_list(rows)


def time_variant(model, processor, table, dcfg, steps: int) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        trainer = TA.build_trainer(copy.deepcopy(model), TA.training_processor(processor), table, dcfg, tmp, steps,
                                  device="cpu", progress=False)
        out = trainer.train()
    return out.metrics["train_runtime"], dict(getattr(trainer, "ref_rows", {}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="10 steps, 2 repeats")
    args = p.parse_args(argv)
    steps, repeats = (10, 2) if args.quick else (args.steps, args.repeats)
    cfg, model, processor, pairs = build(n_pairs=max(64, steps * 8), sft_steps=30 if args.quick else 150)
    dcfg = cfg.dpo
    tproc = TA.training_processor(processor)
    reuse_table, stats = D.training_table(pairs, tproc, True, generation_processor=processor)
    plain_table = pairs.select_columns(list(D.TRL_COLUMNS))
    print(f"pairs: {len(pairs)}, batch {dcfg.batch_size}, steps {steps}, repeats {repeats}; "
          f"re-tokenisation match share {stats.share:.4f}")
    times: dict[str, list[float]] = {"reuse": [], "trl": []}
    for r in range(repeats):
        for name, table in (("reuse", reuse_table), ("trl", plain_table)):
            t, rows = time_variant(model, processor, table, dcfg, steps)
            times[name].append(t)
            extra = f" (reference rows reused {rows.get('reused', 0)}, computed {rows.get('computed', 0)})" \
                if name == "reuse" else ""
            print(f"  repeat {r}: {name:5s} {t:7.2f} s{extra}", flush=True)
    reuse, trl = min(times["reuse"]), min(times["trl"])
    ratio = trl / reuse
    median_ratio = statistics.median(times["trl"]) / statistics.median(times["reuse"])
    print(f"DPO training, {steps} steps (fastest of {repeats}): reuse {reuse:.2f} s, TRL default {trl:.2f} s -> "
          f"reuse is {ratio:.2f}x faster (target >= 1.25x); ratio of medians {median_ratio:.2f}x")
    emit("dpo", "DPO training step", "TRL's reference forward pass", "reference log-probs reused from generation",
         ratio, 1.25)
    return 0 if ratio >= 1.25 else 1


if __name__ == "__main__":
    sys.exit(main())
