"""Checks that a figure can be read: what the figure test of the smoke series asserts on every figure it shows.

:func:`problems` draws a figure (Agg) and lists what is wrong with it, as sentences:

- a visible panel with nothing in it (no line, marker, bar, image or text);
- a y range collapsed to a point: the axis spans less than 0.001 % of its values, so matplotlib prints an offset
  such as ``1e-6+1`` and the panel shows noise;
- a bar chart whose value axis leaves out 0, so a 0.001 difference looks like a large one (plot the paired
  difference against its control with a zero line instead);
- a panel's title or text running into another panel.

:func:`watch` is how the smoke series is audited: when ``M3PO_FIGURE_AUDIT`` names a file, importing
:mod:`m3po_utils.plots` inside a notebook kernel calls it, and every figure a cell leaves open is checked just
before the inline backend shows it; one JSON line per figure (its titles and its problems) is appended to the file.
Outside a kernel, or without the variable, nothing happens.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

AUDIT_ENV = "M3PO_FIGURE_AUDIT"
COLLAPSED = 1e-5          # a y span below this share of the largest |y limit| counts as a point


def _has_content(ax) -> bool:
    return bool(ax.lines or ax.collections or ax.patches or ax.images or ax.tables
                or [t for t in ax.texts if t.get_text().strip()])


def _titles(ax) -> str:
    return " / ".join(t for t in (ax.get_title("left"), ax.get_title(), ax.get_title("right")) if t)


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0.0) * max(h, 0.0)


def problems(fig) -> list[str]:
    """What makes ``fig`` hard or wrong to read (an empty list when nothing does)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas
    try:
        agg = canvas if hasattr(canvas, "get_renderer") else FigureCanvasAgg(fig)   # a closed figure has none
        agg.draw()
        return _problems(fig, agg.get_renderer())
    finally:
        if fig.canvas is not canvas:
            fig.set_canvas(canvas)


def _problems(fig, renderer) -> list[str]:
    found: list[str] = []
    axes = [ax for ax in fig.axes if ax.get_visible()]
    for i, ax in enumerate(axes):
        name = _titles(ax) or f"panel {i + 1}"
        if ax.get_label() == "<colorbar>":
            continue
        if not _has_content(ax):
            if ax.axison:
                found.append(f"{name}: empty panel (nothing drawn in it; turn it off or remove it)")
            continue
        if not ax.axison:
            continue
        lo, hi = ax.get_ylim()
        scale = max(abs(lo), abs(hi))
        if ax.get_yscale() == "linear" and scale > 0 and abs(hi - lo) < COLLAPSED * scale:
            found.append(f"{name}: the y range {lo:.6g}..{hi:.6g} is collapsed to a point")
        elif getattr(ax.yaxis.get_major_formatter(), "offset", 0):
            found.append(f"{name}: the y axis needs an offset ({ax.yaxis.get_offset_text().get_text()}); "
                         "its range is tiny against its values")
        bars = [c for c in ax.containers if c.__class__.__name__ == "BarContainer"]
        if bars:
            vertical = all(getattr(c, "orientation", "vertical") == "vertical" for c in bars)
            vlo, vhi = ax.get_ylim() if vertical else ax.get_xlim()
            if min(vlo, vhi) > 0 or max(vlo, vhi) < 0:
                found.append(f"{name}: bars on an axis that leaves out 0 ({min(vlo, vhi):.3g}..{max(vlo, vhi):.3g}) "
                             "make small differences look large")
    # what another panel occupies: its drawing area and its title (axes turned off still show their image)
    targets = []
    for ax in axes:
        if not _has_content(ax):
            continue
        targets.append((ax, ax.get_window_extent(renderer)))
        targets += [(ax, t.get_window_extent(renderer)) for t in (ax.title, ax._left_title, ax._right_title)
                    if t.get_text().strip()]
    for ax in axes:
        texts = [t for t in [ax.title, ax._left_title, ax._right_title, *ax.texts] if t.get_text().strip()]
        for t in texts:
            tb = t.get_window_extent(renderer)
            area = max(tb.width * tb.height, 1.0)
            hit = next((other for other, ob in targets if other is not ax and _overlap(tb, ob) > 0.02 * area), None)
            if hit is not None:
                found.append(f"{_titles(ax) or 'a panel'}: the text {t.get_text()[:40]!r} runs into the panel "
                             f"{_titles(hit) or 'next to it'}")
    return found


def record(fig, path: str | Path, where: str = "") -> list[str]:
    """Check ``fig`` and append one JSON line (where, titles, problems) to ``path``; return the problems."""
    found = problems(fig)
    titles = [t for t in [fig._suptitle.get_text() if fig._suptitle else ""] + [_titles(ax) for ax in fig.axes] if t]
    line = json.dumps({"where": where, "titles": titles, "problems": found})
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    return found


def note(fig) -> None:
    """Audit a figure that is shown after being closed (a widget's static figure), where the watch is on."""
    path = os.environ.get(AUDIT_ENV)
    if path:
        record(fig, path, f"{os.environ.get('M3PO_NOTEBOOK', '')} widget")


def watch(path: str | Path | None = None) -> bool:
    """Audit every figure the kernel's cells leave open (see the module docstring); True when installed."""
    path = path or os.environ.get(AUDIT_ENV)
    if not path:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    if ip is None or getattr(ip, "_m3po_figure_audit", None) == str(path):
        return ip is not None
    where = os.environ.get("M3PO_NOTEBOOK", "")

    def audit_open_figures():
        if "matplotlib.pyplot" not in sys.modules:
            return
        plt = sys.modules["matplotlib.pyplot"]
        for num in plt.get_fignums():
            record(plt.figure(num), path, f"{where} cell {ip.execution_count}")

    # first in line, so it sees the figures before the inline backend shows and closes them
    ip.events.callbacks["post_execute"].insert(0, audit_open_figures)
    ip._m3po_figure_audit = str(path)
    return True
