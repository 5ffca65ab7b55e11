"""Run every benchmark script in this folder, one after another, and print one table of their ratios.

    python benchmarks/run_all.py            # default sizes (about 5 minutes on 2 cores)
    python benchmarks/run_all.py --quick    # small sizes (about 1 minute)
    ./m3po bench [--quick]                  # the same through the project's entry point

Each script measures its baseline and its variant in the same run and reports ratio = baseline / variant
(higher is better) through ``ratios.emit``. Run it on an otherwise idle machine: on 2 cores a second torch
process makes every timing meaningless. Exit status 1 when a script fails or a ratio misses its target.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ratios import machine  # noqa: E402


def scripts() -> list[Path]:
    return sorted(HERE.glob("bench_*.py"))


def table(rows: list[dict]) -> str:
    out = ["| benchmark | what | baseline | variant | ratio | target | met |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        target = "" if r["target"] is None else f"≥ {r['target']:.3g}"
        met = "" if r["ok"] is None else ("yes" if r["ok"] else "**no**")
        out.append(f"| {r['bench']} | {r['what']} | {r['baseline']} | {r['variant']} | {r['ratio']:.2f} "
                   f"({r['unit']}) | {target} | {met} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="pass --quick to every script")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    rows: list[dict] = []
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ratios.jsonl"
        env = os.environ | {"M3PO_BENCH_OUT": str(out)}
        for script in scripts():
            cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
            print(f"== {script.name} {' '.join(cmd[2:])}", flush=True)
            t0 = time.perf_counter()
            rc = subprocess.call(cmd, env=env)
            print(f"== {script.name}: exit {rc} after {time.perf_counter() - t0:.0f} s\n", flush=True)
            if rc:
                failed.append(script.name)
        if out.exists():
            rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    print(f"Machine: {machine()}" + (" (--quick sizes)" if args.quick else ""))
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "quick": args.quick, "rows": rows}, indent=2))
    missed = [r["what"] for r in rows if r["ok"] is False]
    if failed or missed:
        print(f"failed scripts: {failed or 'none'}; missed targets: {missed or 'none'}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
