"""The series runner: execute the numbered notebooks headless, in order, into one run directory.

    python -m m3po_utils.run --preset shapes --run-dir runs/shapes            # the main series, 00-06
    python -m m3po_utils.run --preset smoke --run-dir runs/smoke -p world.n_train=400
    python -m m3po_utils.run --preset shapes --run-dir runs/shapes --from 3 --to 4 --redo
    python -m m3po_utils.run --preset shapes --run-dir runs/shapes --from 7 --to 7     # the rounds, on request
    python -m m3po_utils.run --preset shapes --run-dir runs/shapes --from 10 --to 19   # analysis notebooks

Every notebook gets three papermill parameters: ``preset``, ``run_dir`` (absolute) and ``overrides`` (the
``-p KEY=VALUE`` pairs as a dict). The executed copy is written to ``run_dir/notebooks/NN_name.ipynb`` only
when the notebook succeeds; a failed execution is kept as ``NN_name.failed.ipynb`` for inspection.

A notebook is skipped when it already finished in this run directory — ``results/NN_name.json`` holds
``"complete": true`` and the executed copy exists — and is still fresh: none of the earlier stages it consumed
has been re-run, left unfinished or removed since (:func:`m3po_utils.rundir.staleness`). ``--redo`` runs every
notebook in the range again. Once a notebook has been (re-)executed, the later notebooks of the range run too,
because they read its outputs; later notebooks outside the range become stale and run on the next call.
A re-run of a complete notebook that fails puts that stage's previous outputs back (see
:func:`m3po_utils.rundir.keep_previous`): the run directory stays as it was before the attempt.

While a notebook runs, stderr shows its cells done of total and, for a slow cell, what it is doing (the cell's
``# papermill_description=...`` comment, e.g. ``Executing training_the_tiny_LVLM``) — and, from inside its long
loops, where they are (``00_world · training the tiny LLaVA: step 1200/3000, loss 0.41, 2:10 left``): the runner
names a file in ``M3PO_PROGRESS_FILE`` for the kernel, each loop rewrites it (:mod:`m3po_utils.progress`) and a
thread here shows it — in place on a terminal, as a line every ``PROGRESS_LOG_EVERY`` seconds in a log.

Per-notebook wall time and peak memory of the kernel process tree go to ``results/timings.json``; the run
ends with ``report.md`` (see :mod:`m3po_utils.report`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from m3po_utils import preflight
from m3po_utils import progress as P
from m3po_utils import rundir as R
from m3po_utils.config import ConfigError, load_preset, parse_overrides
from m3po_utils.io import atomic_write_json
from m3po_utils.report import fmt_duration, write_report
from m3po_utils.rundir import recorded_stages, staleness, stamp, upstream_of

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
NOTEBOOK_RE = re.compile(r"^(\d\d)_[A-Za-z0-9_\-]+\.ipynb$")
DEFAULT_START, DEFAULT_STOP = 0, R.MAIN_SERIES_END   # the main series; 07 (rounds) and the analyses run on request
# Inside a notebook: cells done of total, and what a slow cell is doing (its ``# papermill_description=...``
# comment), on stderr, refreshed at most every 2 s so that a log stays short.
PROGRESS = {"unit": "cell", "desc": "  cells", "leave": False, "mininterval": 2.0}
PROGRESS_LOG_EVERY = 15.0     # seconds between the loops' progress lines when stderr is not a terminal


class _LoopProgress:
    """Show what the running notebook's loops report (:mod:`m3po_utils.progress`) beside the series bar."""

    def __init__(self, bar, path: Path, interval: float = 0.5):
        self.bar, self.path, self.interval = bar, path, interval
        self.tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.notebook = ""
        self._seen = ""
        self._shown_at = -1e9
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="m3po-loop-progress", daemon=True)

    def start(self, notebook: str) -> None:
        self.notebook = notebook
        self._seen = ""
        P.write_channel("", str(self.path))
        if not self._thread.is_alive():
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:   # never let the display break a run
                pass

    def poll(self, now: float | None = None) -> str | None:
        """Show the file's line if it changed (throttled in a log); returns what was shown."""
        text = P.read_channel(self.path)
        if not text or text == self._seen:
            return None
        now = time.monotonic() if now is None else now
        final = " done in " in text
        if not self.tty and not final and now - self._shown_at < PROGRESS_LOG_EVERY:
            return None
        self._seen, self._shown_at = text, now
        shown = f"{self.notebook} · {text}"
        if self.tty:
            self.bar.set_postfix_str(shown)
        else:
            self.bar.write(f"  {shown}", file=sys.stderr)
        return shown

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)


class NotebookFailed(RuntimeError):
    """A notebook of the series raised; the message names the notebook, the cell, the error and the copy."""

    def __init__(self, notebook: str, ename: str, evalue: str, *, cell: int | None = None,
                 exec_count: int | None = None, failed_copy: Path | None = None,
                 records: list[dict[str, Any]] | None = None, source_line: str = "", rerun: str = ""):
        self.notebook, self.ename, self.evalue = notebook, ename, evalue
        self.cell, self.exec_count, self.failed_copy = cell, exec_count, failed_copy
        self.records = records or []
        where = ""
        if cell is not None:
            where = f" in cell {cell}" + (f" (In [{exec_count}])" if exec_count is not None else "")
        error = f"{ename}: {evalue}" if evalue else ename
        lines = [f"notebook {notebook} failed{where}: {error}"]
        if source_line:
            lines.append(f"  cell starts: {source_line}")
        if failed_copy is not None:
            lines.append(f"  failed copy: {failed_copy}")
        else:
            lines.append("  no failed copy was written (the kernel did not start)")
        lines.append("  later notebooks were not run; fix it and rerun the same command (completed notebooks are "
                     "skipped)" + (f":\n    {rerun}" if rerun else ""))
        super().__init__("\n".join(lines))


class UpstreamUnfinished(RuntimeError):
    """An earlier stage than the range asked for did not finish: its outputs may be partial, so the range does not
    run; the message names the stage and the command that rebuilds it."""


@dataclass(frozen=True)
class Notebook:
    number: int
    name: str  # stem, e.g. "00_world"
    path: Path


def discover(notebooks_dir: str | Path | None = None) -> list[Notebook]:
    """All ``NN_*.ipynb`` in ``notebooks_dir`` (default: the repository's ``notebooks/``), in order."""
    folder = Path(notebooks_dir) if notebooks_dir is not None else DEFAULT_NOTEBOOKS_DIR
    if not folder.is_dir():
        raise ConfigError(f"notebooks folder {str(folder)!r} does not exist")
    found: dict[int, Notebook] = {}
    for path in sorted(folder.iterdir()):
        m = NOTEBOOK_RE.match(path.name)
        if not m or not path.is_file():
            continue
        nb = Notebook(int(m.group(1)), path.stem, path)
        if nb.number in found:
            raise ConfigError(f"two notebooks share the number {m.group(1)}: "
                              f"{found[nb.number].path.name} and {path.name}; renumber one")
        found[nb.number] = nb
    return [found[k] for k in sorted(found)]


def available_kernels() -> dict[str, str]:
    from jupyter_client.kernelspec import KernelSpecManager

    return KernelSpecManager().find_kernel_specs()


def default_kernel() -> str:
    """``m3po`` (installed by ``./m3po setup``) when present, else ``python3``."""
    return "m3po" if "m3po" in available_kernels() else "python3"


def is_complete(run_dir: Path, name: str) -> bool:
    result = run_dir / "results" / f"{name}.json"
    if not result.is_file() or not (run_dir / "notebooks" / f"{name}.ipynb").is_file():
        return False
    try:
        return json.loads(result.read_text()).get("complete") is True
    except (json.JSONDecodeError, OSError, AttributeError):
        return False


class _PeakMemory:
    """Poll the resident memory of this process's new children (the kernel and what it starts)."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import psutil
        except ImportError:  # optional: wall time is still recorded
            self._psutil = None
            return
        self._psutil = psutil
        self._me = psutil.Process()
        self._before = {p.pid for p in self._me.children(recursive=True)}

    def _sample(self) -> None:
        total = 0
        for child in self._me.children(recursive=True):
            if child.pid in self._before:
                continue
            try:
                total += child.memory_info().rss
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                pass
        self.peak = max(self.peak, total)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception:  # never let the monitor break a run
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> _PeakMemory:
        if self._psutil is not None:
            self._thread = threading.Thread(target=self._loop, name="m3po-kernel-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    @property
    def peak_mb(self) -> float | None:
        return round(self.peak / 2**20, 1) if self._psutil is not None and self.peak else None


def _read_timings(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "results" / "timings.json"
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except (json.JSONDecodeError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def _record_timing(run_dir: Path, name: str, entry: dict[str, Any]) -> None:
    """Record a notebook's time; a results folder that cannot be written (read-only, disk full) is reported, never
    raised: it must not hide the notebook's own outcome."""
    data = _read_timings(run_dir)
    data[name] = entry
    path = run_dir / "results" / "timings.json"
    try:
        atomic_write_json(path, data)
    except OSError as exc:
        print(f"warning: could not record the time of {name} in {path} ({exc.strerror or exc}); make the run "
              "directory writable and free some disk space", file=sys.stderr, flush=True)


def _source_cell_index(nb: Notebook, source: str, fallback: int) -> tuple[int, str]:
    """Index of the failing cell in the *input* notebook (papermill's index counts its injected cell)."""
    try:
        import nbformat

        cells = nbformat.read(nb.path, as_version=4).cells
        for i, cell in enumerate(cells):
            if cell.source == source:
                first = next((ln.strip() for ln in source.splitlines() if ln.strip()), "")
                return i, first[:100]
    except Exception:
        pass
    return fallback, ""


def _invalidate(run_dir: Path, name: str) -> None:
    """Forget that ``name`` finished, so a run that fails half-way is never taken for complete."""
    path = run_dir / "results" / f"{name}.json"
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot remove {path} before running {name} ({exc.strerror or exc}); make "
                          f"{path.parent} writable") from None


def _mark_incomplete(run_dir: Path, name: str) -> None:
    path = run_dir / "results" / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return
    if isinstance(data, dict) and data.get("complete") is True:
        data["complete"] = False
        try:
            atomic_write_json(path, data)
        except OSError as exc:
            print(f"warning: could not mark {path} incomplete ({exc.strerror or exc})", file=sys.stderr, flush=True)


def _execute(nb: Notebook, run_dir: Path, preset: str, overrides: dict[str, Any], kernel: str,
             records: list[dict[str, Any]]) -> dict[str, Any]:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{nb.name}.ipynb"
    failed = out_dir / f"{nb.name}.failed.ipynb"
    tmp = out_dir / f".{nb.name}.running.ipynb"
    tmp.unlink(missing_ok=True)
    _invalidate(run_dir, nb.name)

    params = {"preset": preset, "run_dir": str(run_dir), "overrides": dict(overrides)}
    t0 = time.perf_counter()
    error: BaseException | None = None
    with _PeakMemory() as mem:
        try:
            papermill.execute_notebook(str(nb.path), str(tmp), parameters=params, kernel_name=kernel,
                                       cwd=str(REPO_ROOT), progress_bar=PROGRESS | {"file": sys.stderr})
        except BaseException as exc:  # noqa: B036 - Ctrl-C also keeps the partial copy
            error = exc
    wall = time.perf_counter() - t0
    entry: dict[str, Any] = {"wall_s": round(wall, 3), "kernel": kernel,
                             "finished": datetime.now().astimezone().isoformat(timespec="seconds")}
    if mem.peak_mb is not None:
        entry["peak_rss_mb"] = mem.peak_mb

    if error is None:
        os.replace(tmp, final)
        failed.unlink(missing_ok=True)
        entry["status"] = "ok"
        _record_timing(run_dir, nb.name, entry)
        return {"notebook": nb.name, "status": "ok", "output": str(final), **entry}

    copy: Path | None = None
    if tmp.exists():
        os.replace(tmp, failed)
        copy = failed
    _mark_incomplete(run_dir, nb.name)
    entry["status"] = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
    ename, evalue = getattr(error, "ename", type(error).__name__), getattr(error, "evalue", str(error))
    entry["error"] = f"{ename}: {str(evalue).strip().splitlines()[0] if str(evalue).strip() else ''}"[:500]
    _record_timing(run_dir, nb.name, entry)
    record = {"notebook": nb.name, "status": entry["status"], "output": str(copy) if copy else None, **entry}
    records.append(record)
    if not isinstance(error, Exception):
        raise error
    if isinstance(error, PapermillExecutionError):
        cell, first = _source_cell_index(nb, error.source, error.cell_index)
        raise NotebookFailed(nb.name, error.ename, error.evalue, cell=cell, exec_count=error.exec_count,
                             rerun=R.run_command(run_dir, "--from", f"{nb.number:02d}"),
                             failed_copy=copy, records=records, source_line=first) from None
    raise NotebookFailed(nb.name, type(error).__name__, str(error).strip().splitlines()[0] if str(error) else "",
                         rerun=R.run_command(run_dir, "--from", f"{nb.number:02d}"),
                         failed_copy=copy, records=records) from error


def _attempt(nb: Notebook, run: Path, preset: str, overrides: dict[str, Any], kernel: str,
             records: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`_execute`; for a re-run of a complete stage, the previous outputs come back if it fails."""
    os.environ["M3PO_NOTEBOOK"] = nb.name    # names the notebook in the figure audit (plots.audit)
    if not R.has_previous(run, nb.name):
        return _execute(nb, run, preset, overrides, kernel, records)
    previous = _read_timings(run).get(nb.name)
    try:
        rec = _execute(nb, run, preset, overrides, kernel, records)
    except BaseException as exc:   # noqa: B036 - Ctrl-C restores too
        attempt = _read_timings(run).get(nb.name) or {}
        failed = R.restore_previous(run, nb.name)
        kept = dict(previous) if isinstance(previous, dict) and previous.get("status") == "ok" else {"status": "ok"}
        kept["rerun_failed"] = attempt.get("error") or f"{type(exc).__name__}: {exc}"[:500]
        kept["rerun_outputs"] = str(failed)
        _record_timing(run, nb.name, kept)
        print(f"kept the previous outputs of {nb.name}; what the failed re-run wrote is in {failed}",
              file=sys.stderr, flush=True)
        raise
    R.drop_previous(run, nb.name)
    return rec


def run_series(preset: str, run_dir: str | Path, overrides: dict[str, Any] | None = None, start: int = DEFAULT_START,
               stop: int = DEFAULT_STOP, redo: bool = False, kernel: str | None = None,
               notebooks_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Run notebooks ``start``..``stop`` (inclusive) into ``run_dir``; return one record per notebook.

    Raises :class:`~m3po_utils.config.ConfigError` for anything wrong before a notebook runs (preset,
    overrides, run directory, range, kernel), :class:`~m3po_utils.rundir.RunDirBusy` when another runner holds the
    run directory and :class:`NotebookFailed` at the first failing notebook.
    """
    overrides = dict(overrides or {})
    cfg = load_preset(preset, overrides)  # fail fast on a bad preset or override, before touching anything
    if not (0 <= start <= 99 and 0 <= stop <= 99):
        raise ConfigError(f"--from/--to must be notebook numbers in [0, 99] (got {start}..{stop})")
    if start > stop:
        raise ConfigError(f"--from {start:02d} is after --to {stop:02d}")
    run = Path(run_dir).expanduser()
    if run.exists() and not run.is_dir():
        raise ConfigError(f"run_dir={str(run)!r} is a file; pass a directory path (it is created if missing)")
    run = run.resolve()
    notebooks = [nb for nb in discover(notebooks_dir) if start <= nb.number <= stop]
    if not notebooks:
        folder = notebooks_dir if notebooks_dir is not None else DEFAULT_NOTEBOOKS_DIR
        raise ConfigError(f"no notebooks numbered {start:02d}..{stop:02d} in {folder}")
    preflight.check(cfg, [nb.number for nb in notebooks])   # what later stages need, before the first runs
    kernels = available_kernels()
    # Kernels started from here have no widget frontend: explorers draw static figures (widgets.STATIC_ENV), and
    # the libraries' own progress bars (tqdm widgets: blank in an executed notebook's HTML) stay off — the loops
    # report through m3po_utils.progress instead, as text.
    os.environ.setdefault("M3PO_STATIC_WIDGETS", "1")
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(name, "1")
    kernel = kernel or default_kernel()
    if kernel not in kernels:
        raise ConfigError(f"unknown kernel {kernel!r}; installed kernels: {', '.join(sorted(kernels)) or 'none'} "
                          "(./m3po setup installs 'm3po')")
    # one runner per run directory, held until the series ends (the OS releases it however the runner exits)
    with R.RunnerLock(run, command=" ".join(["python -m m3po_utils.run", *sys.argv[1:]])):
        return _run_locked(notebooks, run, preset, overrides, start, redo, kernel)


def _run_locked(notebooks: list[Notebook], run: Path, preset: str, overrides: dict[str, Any], start: int, redo: bool,
                kernel: str) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    # validates preset + overrides and binds run_dir to them; a setting no finished stage has read may change
    R.bind(run, preset, overrides, redo_from=start if redo else None)
    first = notebooks[0].number
    for nb in discover(notebooks[0].path.parent):     # the stages the range reads and will not run itself
        if nb.number < min(first, R.MAIN_SERIES_END + 1):
            found = R.unfinished(run, f"{nb.number:02d}")
            if found is not None:
                raise UpstreamUnfinished(
                    f"notebook {notebooks[0].name} reads what {found[0]} wrote, and {found[0]} did not finish "
                    f"({found[1]}): its outputs may be partial. Rebuild it first: "
                    f"{R.run_command(run, '--from', f'{nb.number:02d}', '--redo')} (the later notebooks follow)")

    print(f"M3PO series: preset {preset}, run dir {run}, notebooks {notebooks[0].name}..{notebooks[-1].name}, "
          f"kernel {kernel}" + (f", overrides {overrides}" if overrides else ""), flush=True)
    records: list[dict[str, Any]] = []
    rerun_from: str | None = None
    in_range = {nb.name for nb in notebooks}
    for name in R.interrupted_reruns(run):
        if name not in in_range:   # a killed re-run this call will not resume: put the good outputs back
            R.restore_previous(run, name)
            print(f"restored the previous outputs of {name}: its re-run was interrupted "
                  f"(what it had written is in {run / R.FAILED / name})", flush=True)
    channel = Path(tempfile.mkdtemp(prefix="m3po-progress-")) / "loops.txt"
    previous_channel = os.environ.get(P.ENV)
    os.environ[P.ENV] = str(channel)       # the kernels started below inherit it
    loops: _LoopProgress | None = None
    try:
        with tqdm(notebooks, desc="series", unit="notebook", file=sys.stderr) as bar:
            loops = _LoopProgress(bar, channel)
            for nb in bar:
                bar.set_postfix_str(nb.name)
                complete = is_complete(run, nb.name)
                stale = staleness(run, nb.name) if complete else None
                if not redo and rerun_from is None and complete and stale is None:
                    tqdm.write(f"skip {nb.name} (complete; --redo to run again)")
                    records.append({"notebook": nb.name, "status": "skipped",
                                    "output": str(run / "notebooks" / f"{nb.name}.ipynb")})
                    continue
                why = (f" (earlier stage {rerun_from} was re-run)" if rerun_from and complete
                       else f" (stale: {stale})" if stale and not redo else "")
                tqdm.write(f"run  {nb.name}{why} ...")
                if (complete and R.previous_is_good(run, nb.name)) or R.has_previous(run, nb.name):
                    R.keep_previous(run, nb.name, reuse=not redo)
                loops.start(nb.name)
                try:
                    rec = _attempt(nb, run, preset, overrides, kernel, records)
                finally:
                    loops.poll()
                    bar.set_postfix_str(nb.name)
                stamp(run, nb.name, upstream_of(nb.name, recorded_stages(run)))
                records.append(rec)
                mem = f", peak kernel memory {rec['peak_rss_mb']:.0f} MB" if rec.get("peak_rss_mb") else ""
                tqdm.write(f"done {nb.name} in {fmt_duration(rec['wall_s'])}{mem}")
                rerun_from = rerun_from or nb.name
    finally:
        if loops is not None:
            loops.stop()
        if previous_channel is None:
            os.environ.pop(P.ENV, None)
        else:
            os.environ[P.ENV] = previous_channel
        shutil.rmtree(channel.parent, ignore_errors=True)
        try:
            path = write_report(run)
            print(f"report: {path}", flush=True)
        except Exception as exc:  # the report must never hide the real outcome
            print(f"warning: could not write report.md: {type(exc).__name__}: {exc}", file=sys.stderr)
    return records


def _notebook_number(text: str) -> int:
    m = re.match(r"^(\d{1,2})(?:_.*)?$", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a notebook number such as 3, 03 or 03_confidence")
    return int(m.group(1))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m m3po_utils.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Completed notebooks are skipped; --redo runs them again.")
    p.add_argument("--preset", default="shapes", help="preset name (smoke, shapes, llava-1.5-7b, smoke-qwen, shapes-qwen, qwen2.5-vl-7b); default shapes")
    p.add_argument("--run-dir", required=True, help="run directory (created if missing), e.g. runs/shapes")
    p.add_argument("--from", dest="start", type=_notebook_number, default=DEFAULT_START, metavar="NN",
                   help=f"first notebook number (default {DEFAULT_START:02d})")
    p.add_argument("--to", dest="stop", type=_notebook_number, default=None, metavar="NN",
                   help=f"last notebook number, inclusive (default {DEFAULT_STOP:02d}, or 99 when --from is past "
                        "the main series: 07 or an analysis notebook, 10+)")
    p.add_argument("-p", "--param", dest="params", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset value with a dotted key, e.g. -p world.n_train=400 (repeatable)")
    p.add_argument("--redo", action="store_true", help="run every notebook in the range, even complete ones")
    p.add_argument("--kernel", default=None, help="Jupyter kernel name (default: m3po if installed, else python3)")
    p.add_argument("--notebooks-dir", default=None, help=argparse.SUPPRESS)  # tests and custom series
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        overrides = parse_overrides(args.params)
        stop = args.stop if args.stop is not None else (99 if args.start > DEFAULT_STOP else DEFAULT_STOP)
        run_series(args.preset, args.run_dir, overrides, start=args.start, stop=stop, redo=args.redo,
                   kernel=args.kernel, notebooks_dir=args.notebooks_dir)
    except (ConfigError, R.RunDirBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (NotebookFailed, UpstreamUnfinished) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the partial notebook is kept as NN_name.failed.ipynb", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
