"""How the minimum detectable difference of a finished run falls with the number of evaluation scenes.

    python tools/power_by_scenes.py RUN_DIR [N ...]

For a shapes-world run. Reads only what notebook 06 cached in ``RUN_DIR`` (every model's greedy answers); trains, samples and judges
nothing. For each N (default: a quarter, half, three quarters and all of the scenes evaluated) it bootstraps the
first N scenes with every seed, as notebook 06 does, and prints the 80 %-power minimum detectable difference of
M3PO against each baseline on POPE-adversarial F1 (points) and the MME-style total. Run it on a run with more
scenes than the main job (``-p world.n_eval_extra=1600``) to see what a larger evaluation split would buy before
paying for it; where the numbers stop falling, the seeds' spread is the limit, not the scenes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from m3po_utils import evaluation as C
from m3po_utils import scoring as E
from m3po_utils.config import preset_from_dict
from m3po_utils.rundir import RunDir

BASELINES = ("best_of_n", "best_worst", "random", "oracle")


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(__doc__)
    run = Path(argv[0])
    if not (run / "config.json").is_file():
        sys.exit(f"{run} is not a run directory (no config.json): give the folder `./m3po run` wrote")
    cfg = preset_from_dict(json.loads((run / "config.json").read_text()))
    scenes = RunDir(run).scenes()["eval"][: cfg.evaluation.n_scenes or None]
    questions = E.eval_questions(scenes, cfg.world, seed=cfg.seed)
    stats = C.all_stats(scenes, cfg, questions, C.recorded_answers(run, cfg, questions))
    if "m3po" not in stats:
        sys.exit(f"{run} evaluated no M3PO adapter (evaluation.methods={list(cfg.evaluation.methods)}): nothing to compare")
    try:
        sizes = [int(a) for a in argv[1:]] or None
    except ValueError:
        sys.exit(f"scene counts {argv[1:]!r} must be whole numbers, e.g. 400 700 1000")
    pairs = [("m3po", b) for b in BASELINES if b in stats]
    df = C.detectable_by_scenes(stats, pairs, sizes, n_boot=cfg.evaluation.bootstrap, ci=cfg.evaluation.ci,
                                seed=cfg.seed)
    df.loc[(slice(None), "pope_adversarial_f1"), :] *= 100      # F1 in points
    print(f"minimum detectable difference (80 % power) by evaluation scenes, {run}:")
    print(df.round(2).to_string())


if __name__ == "__main__":
    main(sys.argv[1:])
