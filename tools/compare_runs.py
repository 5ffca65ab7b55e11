"""Did a change that should not change behaviour change a run? Compare two run directories' recorded results.

    python tools/compare_runs.py RUN_BEFORE RUN_AFTER

The series is deterministic, so a refactor proves itself by giving the same ``results/*.json`` and the same
``report.md`` tables as before. This prints every recorded value that differs between the two runs and exits 1
if any does, leaving out only what a re-run changes by nature: wall-clock times (keys ending in ``seconds`` or
``_s``, and the sentences that quote them), ``run_id`` / ``inputs`` (new identities on every run), the run
directory's own path inside values (and the checkout's, for runs in two clones' ``runs/``), and the report's
generation line and stage table (times and memory).
Trains, samples and judges nothing.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any

IDENTITY_KEYS = {"run_id", "inputs"}
TIME_KEY = re.compile(r"(seconds|_s)$")
TIME_TEXT = re.compile(r"\d+(\.\d+)? (s|minutes)\b|\d+ min \d+ s")


def _norm_text(text: str, run: Path) -> str:
    """``text`` with times, the run's own path and — for a run in a checkout's ``runs/`` — the checkout's path
    (two clones compared) replaced."""
    text = text.replace(str(run.resolve()), "<run>").replace(str(run), "<run>")
    if run.resolve().parent.name == "runs":
        text = text.replace(str(run.resolve().parents[1]), "<checkout>")
    return TIME_TEXT.sub("<time>", text)


def _walk(a: Any, b: Any, where: str, ra: Path, rb: Path, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k in IDENTITY_KEYS or TIME_KEY.search(str(k)):
                continue
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'after' if k not in a else 'before'}")
                continue
            _walk(a[k], b[k], f"{where}.{k}", ra, rb, out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{where}: {len(a)} items before, {len(b)} after")
            return
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _walk(x, y, f"{where}[{i}]", ra, rb, out)
    elif isinstance(a, str) and isinstance(b, str):
        if _norm_text(a, ra) != _norm_text(b, rb):
            out.append(f"{where}: {a[:80]!r} -> {b[:80]!r}")
    elif a != b:
        out.append(f"{where}: {a!r} -> {b!r}")


def report_tables(path: Path, run: Path) -> list[str]:
    """The Markdown table rows of ``report.md`` outside its stage table (whose cells are times and memory)."""
    if not path.is_file():
        return []
    rows, in_stages = [], False
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            in_stages = line.strip() == "## Stages"
        if line.startswith("|") and not in_stages:
            key = line.strip("|").split("|")[0].strip()
            if TIME_KEY.search(key) or key.split(".")[0] in IDENTITY_KEYS:   # the appendix's times and run ids
                continue
            rows.append(_norm_text(line, run))
    return rows


def compare(before: Path, after: Path) -> list[str]:
    diffs: list[str] = []
    names = sorted(({p.name for p in (before / "results").glob("*.json")}
                    | {p.name for p in (after / "results").glob("*.json")}) - {"timings.json"})
    for name in names:
        pa, pb = before / "results" / name, after / "results" / name
        if not pa.is_file() or not pb.is_file():
            diffs.append(f"results/{name}: only in {'after' if not pa.is_file() else 'before'}")
            continue
        _walk(json.loads(pa.read_text()), json.loads(pb.read_text()), f"results/{name}", before, after, diffs)
    ta, tb = report_tables(before / "report.md", before), report_tables(after / "report.md", after)
    if ta != tb:     # the rows only one side has (a row added in the middle moves no other)
        diffs += [f"report.md: {'-' if line[0] == '-' else '+'} {line[2:]!r}"
                  for line in difflib.ndiff(ta, tb) if line[:1] in "-+"]
    return diffs


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.exit(__doc__)
    before, after = Path(argv[0]), Path(argv[1])
    for run in (before, after):
        if not (run / "results").is_dir():
            sys.exit(f"{run} is not a run directory (no results/): give the folders `./m3po run` wrote")
    diffs = compare(before, after)
    n_results = len([p for p in (before / "results").glob("*.json") if p.name != "timings.json"])
    if diffs:
        print(f"{len(diffs)} recorded values differ:")
        print("\n".join(f"  {d}" for d in diffs))
        return 1
    print(f"identical: {n_results} results files (times and run ids aside) and "
          f"{len(report_tables(before / 'report.md', before))} report.md table rows")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
