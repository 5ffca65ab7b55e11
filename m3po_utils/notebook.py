"""What every notebook of the series does first: ``cfg, run = start(run_dir, preset, overrides, "02_mas")``.

1. resolves the preset with the overrides and binds it to the run directory (:func:`~m3po_utils.rundir.bind`: a
   run directory refuses another configuration unless no finished output was computed with the old values);
2. checks, before any work, what this stage needs beyond single values (:func:`m3po_utils.preflight.check`), so a
   notebook run from JupyterLab stops on a bad setting exactly as the runner does;
3. refuses to work while a runner other than the one that started this kernel holds the run directory;
4. marks the stage as started (:func:`~m3po_utils.rundir.begin_stage`): its earlier record stops counting as
   complete until the notebook records it again, so no later stage reads outputs it is rewriting or left half
   written, while this stage reads its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from m3po_utils import preflight
from m3po_utils.config import Preset
from m3po_utils.rundir import RESULT_RE, begin_stage, bind, check_not_busy, stage_number


def start(run_dir: str | Path, preset: str, overrides: dict[str, Any] | None, stage: str) -> tuple[Preset, Path]:
    """``(cfg, run)`` for notebook ``stage`` (e.g. ``"02_mas"``) in ``run_dir``; see the module docs."""
    if not RESULT_RE.match(stage):
        raise ValueError(f"stage={stage!r} is not a notebook name such as '02_mas'")
    cfg, run = bind(run_dir, preset, overrides)
    preflight.check(cfg, [stage_number(stage)])
    check_not_busy(run)
    begin_stage(run, stage)
    return cfg, run


def collapsed(frame, title: str, rows_open: int = 12):
    """A long table folded under a one-line title (an HTML ``<details>``) so the page stays readable; a table of at
    most ``rows_open`` rows is returned as it is. The title names the row count, and the full table stays one
    click away in the executed notebook and its HTML."""
    if len(frame) <= rows_open:
        return frame
    from IPython.display import HTML

    return HTML(f"<details><summary><b>{title}</b> — {len(frame)} rows (click to open)</summary>"
                f"{frame.to_html()}</details>")
