"""Two processes under ``accelerate launch`` against one process in this one: sampling (01) and DPO (05).

    python benchmarks/bench_launch.py            # a smoke-world run with the shapes preset's model sizes
    python benchmarks/bench_launch.py --quick    # the smoke preset as it is

The script makes a run directory with notebooks 00–04 (``m3po_utils.run``), then, from copies of it:

* **sampling** — ``candidates.generate_candidates`` in this process (torch's default threads) against
  ``launch.candidates.prepare_candidates`` with ``launch.candidates_processes=2``: the stage's own time (the
  table's ``generation_info``: slowest process) and the wall time of the whole launch (process start, imports and
  model loading included). The two tables must hold the same tokens.
* **DPO** — ``dpo.train_strategies`` for ``m3po`` and ``best_of_n`` in this process against
  ``launch.dpo.train_strategies`` with ``launch.dpo_processes=2`` (the same global batch): the training loops'
  time and the launch's wall time; the loss curves must agree to 1e-5.

Ratio = one process / two processes (above 1: the two processes are faster). On a 2-core machine each launched
process gets one core where the single process uses both, so the ratio measures the cost of the launch rather
than a gain; on one GPU per process the same commands divide the work by the process count.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ratios import emit, machine  # noqa: E402

from m3po_utils import candidates as G  # noqa: E402
from m3po_utils import dpo as D  # noqa: E402
from m3po_utils import world  # noqa: E402
from m3po_utils.config import setup_run  # noqa: E402
from m3po_utils.launch import candidates as LC  # noqa: E402
from m3po_utils.launch import dpo as LD  # noqa: E402
from m3po_utils.run import run_series  # noqa: E402
from m3po_utils.rundir import RunDir  # noqa: E402
from m3po_utils.shapes.prompts import ImageResolver, preference_prompts  # noqa: E402

# the smoke world with the shapes preset's model sizes and more prompts (notebook 00 still trains briefly)
FULL = {"lvlm_train.text_hidden": 128, "lvlm_train.text_layers": 3, "lvlm_train.text_intermediate": 384,
        "lvlm_train.vision_hidden": 96, "lvlm_train.vocab_size": 768, "generation.n_prompts": 96,
        "generation.n_candidates": 8, "generation.max_new_tokens": 32, "world.n_pref": 200,
        "dpo.batch_size": 8, "dpo.max_pairs": 64, "dpo.strategies": ["m3po"]}


def copy_run(src: Path, dst: Path, parts, overrides) -> Path:
    dst.mkdir(parents=True)
    for p in parts:
        shutil.copytree(src / p, dst / p)
    setup_run(dst, "smoke", overrides)
    return dst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the smoke preset's sizes")
    args = ap.parse_args(argv)
    over = {"dpo.strategies": ["m3po"]} if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-launch-") as tmp:
        tmp = Path(tmp)
        base = tmp / "base"
        t0 = time.perf_counter()
        run_series("smoke", base, over, start=0, stop=4, kernel="python3")
        print(f"run directory 00–04 in {time.perf_counter() - t0:.0f} s; {machine()}", flush=True)

        # ---- sampling
        one = copy_run(base, tmp / "s1", ["world", "models"], over)
        two = copy_run(base, tmp / "s2", ["world", "models"], over | {"launch.candidates_processes": 2})
        cfg = RunDir(one).preset()
        splits = RunDir(one).scenes()
        prompts, resolver = preference_prompts(cfg, splits), ImageResolver(cfg, splits)
        model, processor, _ = world.base_lvlm(cfg, one)
        t0 = time.perf_counter()
        a = G.prepare_candidates(cfg, one, model, processor, prompts, resolver, progress=False)
        wall1 = time.perf_counter() - t0
        t0 = time.perf_counter()
        b = LC.prepare_candidates(RunDir(two).preset(), two, model, processor, prompts, resolver, echo=None)
        wall2 = time.perf_counter() - t0
        same = list(a["token_ids"]) == list(b["token_ids"])
        s1, s2 = G.generation_info(one)["seconds"], G.generation_info(two)["seconds"]
        print(f"sampling {len(a)} candidates ({len(prompts)} prompts): one process {s1:.1f} s (wall {wall1:.1f} s), "
              f"two processes {s2:.1f} s (wall {wall2:.1f} s); same tokens: {same}", flush=True)
        emit("launch", "sampling (stage time)", "1 process", "2 processes (accelerate launch)", s1 / s2, None)
        emit("launch", "sampling (wall, launch included)", "1 process", "2 processes (accelerate launch)",
             wall1 / wall2, None)

        # ---- DPO
        one = copy_run(base, tmp / "d1", ["world", "models", "pairs"], over)
        two = copy_run(base, tmp / "d2", ["world", "models", "pairs"], over | {"launch.dpo_processes": 2})
        t0 = time.perf_counter()
        i1 = LD.train_strategies(one, RunDir(one).preset())
        wall1 = time.perf_counter() - t0
        t0 = time.perf_counter()
        i2 = LD.train_strategies(two, RunDir(two).preset(), echo=None)
        wall2 = time.perf_counter() - t0
        worst = 0.0
        for s in i1:
            l1 = np.array([r["loss"] for r in D.load_training_log(one, s)])
            l2 = np.array([r["loss"] for r in D.load_training_log(two, s)])
            worst = max(worst, float(np.max(np.abs(l1 - l2) / np.maximum(np.abs(l1), 1e-12))))
        t1, t2 = sum(i["seconds"] for i in i1.values()), sum(i["seconds"] for i in i2.values())
        steps = sum(i["steps"] for i in i1.values())
        print(f"DPO, {steps} steps over {len(i1)} adapters: one process {t1:.1f} s (wall {wall1:.1f} s), two "
              f"processes {t2:.1f} s (wall {wall2:.1f} s); largest relative loss difference {worst:.1e}", flush=True)
        emit("launch", "DPO (training loops)", "1 process", "2 processes (accelerate launch)", t1 / t2, None)
        emit("launch", "DPO (wall, launch included)", "1 process", "2 processes (accelerate launch)",
             wall1 / wall2, None)
        return 0 if (same and worst < 1e-5) else 1


if __name__ == "__main__":
    sys.exit(main())
