"""Does each run's testbed meet its own bars? One Markdown table, one column per run.

    python tools/testbed_bars.py RUN_DIR [RUN_DIR ...]

Reads only the results notebooks 00, 02, 03 and 06 recorded in each run directory (``m3po_utils.testbed`` has the
bars and where each number comes from); trains, samples and judges nothing. A met bar shows what was measured, a
missed one what missed. Give it the runs of two base seeds (``-p lvlm_train.seed=1``) to see whether a world
meets its bars on more than one base, or a power run (``-p world.n_eval_extra=1600``) to see them on more scenes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from m3po_utils import testbed


def cell(row: dict) -> str:
    if row["met"] is None:
        return "not measured"
    return ("yes: " + row["measured"]) if row["met"] else ("**no**: " + "; ".join(row["misses"]))


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(__doc__)
    columns = {}
    for arg in argv:
        run = Path(arg)
        if not (run / "results").is_dir():
            sys.exit(f"{run} is not a run directory (no results/): give the folder `./m3po run` wrote")
        try:
            columns[arg] = testbed.check_run(run)
        except FileNotFoundError as e:
            sys.exit(f"{run}: {e}")
    bars = [r["bar"] for r in next(iter(columns.values()))]
    print("| bar | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for i, bar in enumerate(bars):
        print(f"| {bar} | " + " | ".join(cell(rows[i]) for rows in columns.values()) + " |")
    print("\nbars met: " + ", ".join(f"{name} {testbed.met_count(rows)} of {len(bars)}" for name, rows in columns.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
