"""``report.md``: the one page a person reads first after a run.

It is built only from files in the run directory — ``config.json``, ``results/NN_name.json`` and
``results/timings.json`` — so it can be rebuilt at any time with ``write_report(run_dir)``.

The page reads top-down: *Key results* — the ``"report_md"`` a results file carries, verbatim (notebook 06: the
series' conclusion and the comparison table) —, the stage table, *What each stage learnt* (each notebook's
generated ``"learnt"`` paragraph), then an appendix with every stage's other scalar values (nested dicts
flattened to dotted keys, floats to 4 significant digits; lists and long text left out).
Keys that look like credentials (containing "key", "token" or "secret") never reach the report.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from m3po_utils import results as R
from m3po_utils.io import atomic_write_text
from m3po_utils.rundir import staleness

SECRET_WORDS = ("key", "token", "secret")
MAX_TEXT = 80


def _is_secret(key: str) -> bool:
    low = key.lower()
    return any(word in low for word in SECRET_WORDS)


def _fmt_number(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.4g}"


def _fmt_scalar(value: Any) -> str | None:
    """Markdown cell text for a scalar, or None when the value does not belong in a table."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _fmt_number(value)
    if isinstance(value, str):
        if len(value) > MAX_TEXT or "\n" in value:
            return None
        return value.replace("|", "\\|")
    return None


def flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Dotted ``(key, text)`` rows for the scalar values of ``data``; secrets, lists and long text skipped."""
    rows: list[tuple[str, str]] = []
    for key, value in data.items():
        full = f"{prefix}{key}"
        if _is_secret(str(key)):
            continue
        if isinstance(value, dict):
            rows += flatten(value, f"{full}.")
            continue
        text = _fmt_scalar(value)
        if text is not None:
            rows.append((full.replace("|", "\\|"), text))
    return rows


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _read_json(path: Path) -> tuple[Any, str | None]:
    try:
        return json.loads(path.read_text()), None
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _record(path: Path) -> tuple[R.Record | None, str | None]:
    """A results file through its stage's schema: ``(record, None)`` or ``(None, why it cannot be read)``."""
    data, err = _read_json(path)
    if err is not None or not isinstance(data, dict):
        return None, err or "not a JSON object"
    try:
        return R.parse(path.stem, data), None
    except R.ResultsError as exc:
        return None, str(exc)


def build_report(run_dir: str | Path) -> str:
    """The markdown text of ``report.md`` for ``run_dir`` (pure: writes nothing)."""
    run = Path(run_dir)
    config, _ = _read_json(run / "config.json")
    preset = config.get("name", "?") if isinstance(config, dict) else "?"
    when = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    out = [f"# M3PO run report — preset `{preset}`", "",
           f"Generated {when} from `{run.resolve()}`.", ""]

    timings, _ = _read_json(run / "results" / "timings.json")
    timings = timings if isinstance(timings, dict) else {}
    results = sorted(p for p in (run / "results").glob("*.json") if p.name != "timings.json")

    records = {path.stem: _record(path) for path in results}
    key = []
    for path in results:
        rec, _ = records[path.stem]
        md = getattr(rec, "report_md", None)
        if isinstance(md, str) and md.strip():
            key += [f"### {path.stem}", "", md.strip(), ""]
    if key:   # what a notebook wrote for the report (notebook 06: its conclusion and the comparison table) first
        out += ["## Key results", ""] + key

    out += ["## Stages", ""]
    names = sorted(set(timings) | {p.stem for p in results})
    if names:
        has_mem = any(isinstance(t, dict) and t.get("peak_rss_mb") for t in timings.values())
        header = ("notebook", "status", "wall time") + (("peak kernel memory",) if has_mem else ())
        rows = []
        for name in names:
            t = timings.get(name) if isinstance(timings.get(name), dict) else {}
            status = t.get("status", "—")
            if status in ("failed", "interrupted") and t.get("error"):
                status = f"{status}: {str(t['error']).replace('|', '/')}"
            if status == "ok" and name in records:
                rec, why = records[name]
                if rec is None:
                    status = f"ok, but its results cannot be read ({str(why).replace('|', '/')[:200]})"
                elif rec.complete is not True:
                    status = "ok (not marked complete)"
                elif (why := staleness(run, name)) is not None:
                    status = f"stale: {why}"
                elif t.get("rerun_failed"):
                    status = (f"ok, previous outputs kept: a re-run failed "
                              f"({str(t['rerun_failed']).replace('|', '/')})")
            wall = fmt_duration(float(t["wall_s"])) if isinstance(t.get("wall_s"), int | float) else "—"
            row = (name, status, wall)
            if has_mem:
                mem = t.get("peak_rss_mb")
                row += (f"{mem:.0f} MB" if isinstance(mem, int | float) else "—",)
            rows.append(row)
        total = sum(float(t["wall_s"]) for t in timings.values()
                    if isinstance(t, dict) and isinstance(t.get("wall_s"), int | float))
        out += [_table(header, rows), "", f"Total wall time of the latest executions: {fmt_duration(total)}.", ""]
    else:
        out += ["No notebook has run in this directory yet.", ""]

    learnt = []
    for path in results:
        rec, _ = records[path.stem]
        text = rec.learnt if rec is not None else None
        if isinstance(text, str) and text.strip() and path.stem != "06_evaluation":   # 06's leads the page
            body = text.strip().removeprefix("## What we learnt here").strip()
            learnt += [f"### {path.stem}", "", body, ""]
    if learnt:
        out += ["## What each stage learnt", ""] + learnt

    if results:
        out += ["## Appendix: every recorded figure", "",
                "The scalar values each stage recorded in `results/NN_name.json` (the files hold the rest).", ""]
    for path in results:
        out += [f"### {path.stem}", ""]
        copy = run / "notebooks" / f"{path.stem}.ipynb"
        if copy.exists():
            out += [f"Executed notebook: [`notebooks/{copy.name}`](notebooks/{copy.name})", ""]
        data, err = _read_json(path)
        if err is not None or not isinstance(data, dict):
            out += [f"_Could not read `results/{path.name}`: {err or 'not a JSON object'}._", ""]
            continue
        rows = flatten({k: v for k, v in data.items() if k not in ("report_md", "learnt", "verdict")})
        if rows:
            out += [_table(("name", "value"), rows), ""]
    return "\n".join(out).rstrip() + "\n"


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.md`` atomically and return its path."""
    return atomic_write_text(Path(run_dir) / "report.md", build_report(run_dir))
