"""Progress of the long loops, wherever a person is watching: the runner's terminal, a notebook, a shell.

One line says where a loop is, e.g. ``training the tiny LVLM: step 1200/3000, loss 0.41, 2:10 left``. It goes

* to the **runner's terminal** — the runner (:mod:`m3po_utils.run`) names a file in ``M3PO_PROGRESS_FILE`` before
  it starts a notebook's kernel; each loop in the kernel rewrites that file, throttled, and the runner shows the
  line next to the notebook it is running, so the minutes inside one cell are not silent;
* to the **notebook**: a plain-text output updated in place (IPython's display handles), which renders in
  JupyterLab, in an executed notebook and in its HTML without a widget frontend or a CDN — unlike
  ``tqdm.notebook``'s bar, which is a widget and shows blank offline;
* to **stderr** in a plain Python process (scripts, tools).

Updates are throttled (``every`` seconds, first and last always shown), so a loop of thousands of steps costs a
few dozen writes. Nothing here changes what a loop computes.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ENV = "M3PO_PROGRESS_FILE"


def fmt_clock(seconds: float) -> str:
    """``2:10`` (minutes:seconds) or ``1:02:03``."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _number(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if math.isfinite(v) else str(v)
    return str(v)


def line(desc: str, n: int, total: int | None, unit: str = "step", elapsed: float | None = None,
         info: dict[str, Any] | None = None) -> str:
    """The progress line: ``desc: unit n/total, k v, ..., m:ss left`` (pure; the remaining time from the mean rate
    so far, once a step is done and while steps remain)."""
    parts = [f"{unit} {n}/{total}" if total else f"{unit} {n}"]
    parts += [f"{k} {_number(v)}" for k, v in (info or {}).items()]
    if elapsed is not None:
        if total and 0 < n < total:
            parts.append(f"{fmt_clock(elapsed / n * (total - n))} left")
        elif total and n >= total:
            parts.append(f"done in {fmt_clock(elapsed)}")
    return f"{desc}: " + ", ".join(parts)


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def write_channel(text: str, path: str | None = None) -> None:
    """Replace the runner's progress file with ``text`` (a rename, so the runner never reads half a line)."""
    path = path or os.environ.get(ENV)
    if not path:
        return
    try:
        tmp = f"{path}.{os.getpid()}.tmp"
        Path(tmp).write_text(text)
        os.replace(tmp, path)
    except OSError:   # progress is never worth failing a stage for
        pass


def read_channel(path: str | Path) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


class Progress:
    """A throttled progress line for a loop of ``total`` units (``None``: unknown).

    >>> with Progress(3000, "training the tiny LVLM") as p:
    ...     for step in range(3000):
    ...         ...
    ...         p.update(loss=0.41)

    or ``for x in Progress.over(items, "answering", unit="model"): ...``. ``enabled=False`` shows nothing.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "step", every: float = 2.0, enabled: bool = True,
                 stream=None):
        self.total, self.desc, self.unit, self.every, self.enabled = total, desc, unit, every, enabled
        self.n = 0
        self.info: dict[str, Any] = {}
        self.t0 = time.perf_counter()
        self._last = -math.inf
        self._shown: int | None = None     # the count the last shown line had
        self._handle = None
        self._stream = stream
        self._kernel = enabled and stream is None and _in_kernel()
        if enabled:
            self._show(force=True)

    @classmethod
    def over(cls, items: Iterable, desc: str, unit: str = "item", total: int | None = None, **kw) -> Iterator:
        items = list(items) if total is None and not hasattr(items, "__len__") else items
        bar = cls(total if total is not None else len(items), desc, unit, **kw)
        try:
            for x in items:
                yield x
                bar.update()
        finally:
            bar.close()

    def text(self) -> str:
        return line(self.desc, self.n, self.total, self.unit, time.perf_counter() - self.t0, self.info)

    def update(self, n: int = 1, **info: Any) -> None:
        self.n += n
        self.info.update(info)
        self._show()

    def set(self, n: int, **info: Any) -> None:
        self.n = n
        self.info.update(info)
        self._show()

    def _show(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < self.every and not (self.total and self.n >= self.total):
            return
        self._last, self._shown = now, self.n
        text = self.text()
        write_channel(text)
        if self._kernel:
            from IPython.display import display

            # a plain-text output updated in place: readable in JupyterLab, nbconvert's HTML and papermill's copy
            if self._handle is None:
                self._handle = display({"text/plain": text}, raw=True, display_id=True)
            else:
                self._handle.update({"text/plain": text}, raw=True)
        else:
            stream = self._stream or sys.stderr
            end = "\n" if (self.total and self.n >= self.total) else "\r"
            try:
                stream.write(text + end)
                stream.flush()
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        """Show the last count (if not shown yet) and end the line."""
        if self.enabled:
            if self._shown != self.n:
                self._show(force=True)
            if not self._kernel and not (self.total and self.n >= self.total):
                try:
                    (self._stream or sys.stderr).write("\n")
                except (OSError, ValueError):
                    pass
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
