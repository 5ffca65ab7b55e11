"""How a benchmark script reports a ratio: printed by the script, and appended as one JSON line to the file named
by ``M3PO_BENCH_OUT`` when set (``benchmarks/run_all.py`` sets it and prints the table of every ratio)."""

from __future__ import annotations

import json
import os
import platform


def emit(bench: str, what: str, baseline: str, variant: str, ratio: float, target: float | None = None,
         unit: str = "x faster", **extra) -> None:
    """Record ``ratio`` = baseline / variant (higher is better), with the target it must reach, if any."""
    row = {"bench": bench, "what": what, "baseline": baseline, "variant": variant, "ratio": float(ratio),
           "target": target, "unit": unit, "ok": None if target is None else bool(ratio >= target), **extra}
    path = os.environ.get("M3PO_BENCH_OUT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def machine() -> str:
    import torch

    return (f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}")
