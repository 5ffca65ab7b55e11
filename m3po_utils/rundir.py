"""The run directory: the one contract between stages.

Every stage reads what earlier stages wrote and writes its own outputs, and nothing else. :class:`RunDir` owns
the paths of every stage's outputs and the loaders that read them. A loader that finds an output missing or
unfinished raises :class:`StageMissing`, whose message names the notebook that makes it::

    run notebook 00 (world and base models) first: models/lvlm is missing in runs/shapes

so a stage never trains, samples or judges on another stage's behalf. Only notebook 00 (``m3po_utils.world``) builds
the world and the models; only the runner and a stage's own notebook create that stage's outputs.

A sub-run (notebook 06's ``evaluation/seed1``, notebook 10's points) is a run directory of its own: ``RunDir``
works on it unchanged.

**Freshness.** When the runner finishes a notebook it stamps ``results/NN_name.json`` with a ``run_id`` and the
``run_id`` of every earlier stage it consumed (``inputs``: every stage numbered below it in the main series 00-06;
notebook 07 and the analysis notebooks 10+ consume 00-06). A stage is *stale* when one of those inputs has been re-run, left unfinished or removed since
(:func:`staleness`); the runner re-runs a stale stage and, in turn, everything after it.

**A re-run that fails keeps the previous outputs.** Before the runner re-runs a stage that was complete, it puts
that stage's record and outputs (:data:`STAGE_OUTPUTS`; caches such as the judge's stay where they are) aside in
``.previous/NN_name/`` and clears them: an explicit ``--redo`` starts the stage from nothing, a stale re-run keeps
only what the stage checks against its new inputs (:data:`REUSABLE`). If the re-run fails, its partial outputs go to
``.failed/NN_name/`` (for inspection; the next failure replaces them) and the previous ones come back, record
and ``run_id`` included, so the later stages stay fresh (:func:`restore_previous`). A runner killed mid-re-run
leaves ``.previous/NN_name/``: the next run of that stage resumes and still restores it if it fails; a run that
does not include the stage restores it first.

**Unreadable outputs.** A loader that finds an output present but unreadable (truncated, corrupt, not what the
stage writes) raises :class:`ArtifactCorrupt`, naming the file and the command that rebuilds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pandas as pd

from m3po_utils import shapes as W
from m3po_utils.config import (
    ConfigChanged,
    ConfigError,
    Preset,
    config_overrides,
    first_reader,
    preset_from_dict,
    setup_run,
    write_config,
)
from m3po_utils.io import atomic_write_json

# Notebook of each stage, for the "run notebook NN first" messages.
NOTEBOOKS = {"00": "00 (world and base models)", "01": "01 (candidates)", "02": "02 (MAS)",
             "03": "03 (confidence)", "04": "04 (selection)", "05": "05 (DPO)", "06": "06 (evaluation)",
             "07": "07 (rounds)", "10": "10 (experiments)", "11": "11 (hard negatives)"}
TRAINING_INFO = "m3po_training.json"   # written last into models/lvlm and models/clip: the model is finished
DATASET_STATE = "state.json"           # written by datasets.save_to_disk: the table is complete


def run_command(run: Path, *args: str, config: dict[str, Any] | None = None) -> str:
    """The runner command for ``run`` with its own preset and overrides (read from its ``config.json``, or
    ``config``), so that it works as printed: ``python -m m3po_utils.run --preset P -p key=value ... --run-dir R
    ARGS``."""
    run = Path(run)
    words = ["python", "-m", "m3po_utils.run"]
    try:
        data = config if config is not None else json.loads((run / "config.json").read_text())
        name = data.get("name")
        words += ["--preset", str(name)]
        words += [w for key, value in config_overrides(data) for w in ("-p", f"{key}={value}")]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass          # no readable configuration: the runner's own check will say so
    words += ["--run-dir", str(run), *args]
    return " ".join(shlex.quote(w) for w in words)


def redo_command(run: Path, notebook: str) -> str:
    """The runner command that (re)builds ``notebook``'s outputs in ``run``, even if it is recorded complete."""
    nn = notebook[:2]
    return run_command(run, "--from", nn, "--to", nn, "--redo")


class StageMissing(FileNotFoundError):
    """An earlier stage's output is missing or unfinished; the message names the notebook that makes it."""

    def __init__(self, notebook: str, what: str, run: Path, detail: str = ""):
        self.notebook, self.what, self.run = notebook, what, run
        extra = f" ({detail})" if detail else ""
        super().__init__(f"run notebook {NOTEBOOKS.get(notebook, notebook)} first: {what} is missing in "
                         f"{run}{extra}; to rebuild it: {redo_command(run, notebook)}")


class ArtifactCorrupt(OSError):
    """An earlier stage's output exists but cannot be read; the message names the file and how to rebuild it."""

    def __init__(self, notebook: str, path: Path, run: Path, error: BaseException):
        self.notebook, self.path, self.run = notebook, path, run
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        super().__init__(f"{path} is unreadable ({type(error).__name__}: {text[:200]}); notebook "
                         f"{NOTEBOOKS.get(notebook, notebook)} wrote it — rebuild it with {redo_command(run, notebook)} "
                         "(the stages after it become stale and rerun with it)")


class StageIncomplete(StageMissing):
    """An earlier stage whose last run did not finish (it failed, was interrupted, or is running): its outputs may
    be partial, so no later stage reads them. The message names the stage, why, and the command that rebuilds it."""

    def __init__(self, notebook: str, name: str, run: Path, why: str):
        self.notebook, self.what, self.run = notebook, name, run
        FileNotFoundError.__init__(
            self, f"notebook {NOTEBOOKS.get(notebook, notebook)} has not finished in {run} ({why}), so its outputs "
                  f"may be partial and are not read; rebuild it with: {redo_command(run, notebook)}")


# The stage whose notebook is running in this process (``M3PO_STAGE``, set by :func:`begin_stage`, inherited by
# the processes it launches): it reads its own outputs freely; every earlier stage's must be finished.
STAGE_ENV = "M3PO_STAGE"


def current_stage() -> str | None:
    return os.environ.get(STAGE_ENV) or None


def _timing(run: Path, name: str) -> dict:
    try:
        data = json.loads((Path(run) / "results" / "timings.json").read_text())
    except (OSError, ValueError):
        return {}
    entry = data.get(name) if isinstance(data, dict) else None
    return entry if isinstance(entry, dict) else {}


def unfinished(run: Path, nn: str) -> tuple[str, str] | None:
    """``(stage name, why)`` when stage ``nn``'s last run in ``run`` did not finish: its record says it is not
    complete, or it has no record and the runner's timings say its last execution failed or was interrupted."""
    run = Path(run)
    records = sorted((run / "results").glob(f"{nn}_*.json")) if (run / "results").is_dir() else []
    for path in records:
        if not RESULT_RE.match(path.stem):
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return path.stem, "its results file is unreadable"
        if isinstance(data, dict) and data.get("complete") is not True:
            timing = _timing(run, path.stem)
            return path.stem, (f"its last run {timing['status']}: {timing.get('error', '')}".rstrip(": ")
                               if timing.get("status") in ("failed", "interrupted") else
                               "its results are not marked complete: it failed, was stopped or is still running")
    if not records:
        try:
            data = json.loads((run / "results" / "timings.json").read_text())
        except (OSError, ValueError):
            return None
        for name, entry in (data.items() if isinstance(data, dict) else ()):
            if name[:2] == nn and isinstance(entry, dict) and entry.get("status") in ("failed", "interrupted"):
                return name, f"its last run {entry['status']}: {entry.get('error', '')}".rstrip(": ")
    return None


def begin_stage(run: Path, stage: str) -> None:
    """Notebook ``stage`` starts in this process: its earlier record, if any, stops being complete until it
    finishes (a later stage must not read outputs it is rewriting), and it may read its own outputs."""
    os.environ[STAGE_ENV] = stage
    path = Path(run) / "results" / f"{stage}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(data, dict) and data.get("complete") is True:
        atomic_write_json(path, data | {"complete": False})


@contextmanager
def reading(run: Path, notebook: str, path: Path) -> Iterator[None]:
    """Turn any failure to read ``path`` (an output of ``notebook``) into :class:`ArtifactCorrupt`."""
    try:
        yield
    except (StageMissing, ArtifactCorrupt):
        raise
    except Exception as exc:   # truncated Arrow, bad JSON, corrupt safetensors, ...: name the file
        raise ArtifactCorrupt(notebook, Path(path), Path(run), exc) from exc


def quarantine(path: Path) -> Path:
    """Rename a corrupt output aside (``<name>.corrupt-<time>``), never delete it; returns the new path."""
    path = Path(path)
    stem = f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
    target, k = path.with_name(stem), 1
    while target.exists():
        target, k = path.with_name(f"{stem}-{k}"), k + 1
    path.rename(target)
    return target


# ------------------------------------------------------------------------------------------ re-runs

# What each stage writes, relative to the run directory (a stage's record, results/NN_name.json, goes with it);
# the first is its main output, without which a "complete" record is not worth restoring.
# The judge cache (mas/judge_cache.sqlite) is not an output: every answer in it stays valid.
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "00": ("models", "world"),
    "01": ("candidates", "candidates.parts", "candidates_validation", "candidates_validation.parts"),
    "02": ("mas/scores",),
    "03": ("confidence",), "04": ("pairs",), "05": ("adapters",), "06": ("evaluation",), "07": ("rounds",),
    "10": ("experiments",),
    "11": ("hardneg",),
}
# What a stale re-run may reuse: outputs the stage itself checks against its inputs (05: adapters fingerprinted
# with their settings and pairs; 07: rounds keyed by their settings and inputs; 10: points keyed by their pairs and settings). Everything else of the stage is
# computed again — 06's other-seed sub-runs too, whose pairs come from this run's candidates and MAS.
REUSABLE: dict[str, tuple[str, ...]] = {"05": ("adapters",), "07": ("rounds",), "10": ("experiments",),
                                        "11": ("hardneg",)}
PREVIOUS, FAILED = ".previous", ".failed"
CANDIDATE_SPLITS = ("pref", "validation")


def _kept(name: str) -> list[str]:
    return [f"results/{name}.json", *STAGE_OUTPUTS.get(name[:2], ())]


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif _present(path):
        path.unlink()


def previous_is_good(run: Path, name: str) -> bool:
    """Whether a complete ``name`` still has its main output (the first of :data:`STAGE_OUTPUTS`): only then is
    there something worth restoring if its re-run fails."""
    outputs = STAGE_OUTPUTS.get(name[:2], ())
    return not outputs or (Path(run) / outputs[0]).exists()


def has_previous(run: Path, name: str) -> bool:
    return (Path(run) / PREVIOUS / name).is_dir()


def interrupted_reruns(run: Path) -> list[str]:
    """Stages whose re-run was cut off (the runner killed): their previous outputs wait in ``.previous/``."""
    folder = Path(run) / PREVIOUS
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and RESULT_RE.match(p.name)) \
        if folder.is_dir() else []


def _outputs(run: Path, name: str) -> list[str]:
    """The outputs of ``name`` present in ``run``, relative (its record first)."""
    return [rel for rel in _kept(name) if _present(run / rel)]


def keep_previous(run: Path, name: str, reuse: bool = False) -> bool:
    """Put ``name``'s record and outputs aside in ``.previous/name`` before it is re-run; False if already there.

    The live outputs are then cleared, so that the stage computes them again — all of them for an explicit
    ``--redo`` (``reuse=False``); for a stale re-run (``reuse=True``) only what the stage cannot check against
    its new inputs (:data:`REUSABLE` stays). Copied through a temporary folder: a crash never leaves half a copy.
    """
    run = Path(run)
    backup = run / PREVIOUS / name
    if backup.is_dir():
        return False
    tmp = run / PREVIOUS / f".{name}.partial"
    _rmtree(tmp)
    tmp.mkdir(parents=True)
    present = _outputs(run, name)
    for rel in present:
        src, dst = run / rel, tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst, follow_symlinks=False)
    tmp.rename(backup)
    keep = REUSABLE.get(name[:2], ()) if reuse else ()
    for rel in present:          # only now that the copy is whole: the originals are never the only copy
        if not rel.startswith("results/") and rel not in keep:
            _rmtree(run / rel)
    return True


def restore_previous(run: Path, name: str) -> Path | None:
    """A re-run of ``name`` failed: move what it wrote to ``.failed/name`` and put the previous outputs back.

    Returns the folder holding the failed attempt's outputs (None when there was nothing to restore).
    """
    run = Path(run)
    backup = run / PREVIOUS / name
    if not backup.is_dir():
        return None
    failed = run / FAILED / name
    _rmtree(failed)
    failed.mkdir(parents=True)
    for rel in _kept(name):
        cur, prev = run / rel, backup / rel
        if _present(cur):
            (failed / rel).parent.mkdir(parents=True, exist_ok=True)
            cur.rename(failed / rel)
        if _present(prev):
            cur.parent.mkdir(parents=True, exist_ok=True)
            prev.rename(cur)
    _rmtree(backup)
    return failed


def drop_previous(run: Path, name: str) -> None:
    """The re-run of ``name`` finished: its previous outputs are no longer needed."""
    _rmtree(Path(run) / PREVIOUS / name)


# ------------------------------------------------------------------------------------------ freshness

RESULT_RE = re.compile(r"^(\d\d)_[A-Za-z0-9_\-]+$")


def stage_number(name: str) -> int:
    m = RESULT_RE.match(name)
    if not m:
        raise ValueError(f"{name!r} is not a stage name such as 01_candidates")
    return int(m.group(1))


# The main series is 00-06: each of its stages reads the ones before it; notebook 07 (rounds) and the analyses (10+)
# read the main series and nothing after it.
MAIN_SERIES_END = 6


def upstream_of(name: str, names: Sequence[str]) -> list[str]:
    """The stages ``name`` consumes among ``names``: every lower number within the main series (00-06); notebook 07
    and the analyses (10+) consume 00-06."""
    n = stage_number(name)
    limit = min(n, MAIN_SERIES_END + 1)
    return sorted(x for x in names if RESULT_RE.match(x) and stage_number(x) < limit)


def _record(run: Path, name: str) -> dict | None:
    try:
        data = json.loads((run / "results" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_id(run: str | Path, stage: str) -> str | None:
    """The ``run_id`` the runner stamped on ``stage``'s record in ``run`` (None when there is none)."""
    rec = _record(Path(run), stage)
    return rec.get("run_id") if rec else None


def recorded_stages(run: Path) -> list[str]:
    """Names of the stages that have a results file in ``run``."""
    folder = run / "results"
    return sorted(p.stem for p in folder.glob("*.json") if RESULT_RE.match(p.stem)) if folder.is_dir() else []


def _timed_stages(run: Path) -> list[str]:
    """Names of the stages the runner has timed in ``run`` (a stage that failed before recording anything)."""
    try:
        data = json.loads((run / "results" / "timings.json").read_text())
    except (OSError, ValueError):
        return []
    return [n for n in data if RESULT_RE.match(n)] if isinstance(data, dict) else []


def stamp(run: Path, name: str, upstream: Sequence[str]) -> str:
    """Give the just-finished stage a new ``run_id`` and record the ``run_id`` of each input it consumed."""
    data = _record(run, name) or {}
    records = {u: _record(run, u) for u in upstream}
    inputs = {u: rec.get("run_id") for u, rec in records.items() if rec is not None}
    data |= {"run_id": uuid.uuid4().hex, "inputs": inputs}
    atomic_write_json(run / "results" / f"{name}.json", data)
    return data["run_id"]


def staleness(run: Path, name: str) -> str | None:
    """Why ``name``'s outputs are out of date (an input re-run, unfinished or gone since), or None if fresh.

    Its inputs are what it recorded plus :func:`upstream_of` over the recorded stages. A stage from before
    freshness was recorded (no ``inputs``) is fresh unless an input has been re-run since.
    """
    run = Path(run)
    if not RESULT_RE.match(name):
        return None
    mine = _record(run, name)
    if mine is None or mine.get("complete") is not True:
        return "not complete"
    inputs = mine.get("inputs") or {}
    for u in sorted(set(upstream_of(name, recorded_stages(run) + _timed_stages(run))) | set(inputs)):
        rec = _record(run, u)
        if rec is None:
            failed = _timing(run, u)
            if failed.get("status") in ("failed", "interrupted"):
                return f"its input {u} {failed['status']}"
            if u in inputs:
                return f"its input {u} is gone"
            continue
        if rec.get("complete") is not True:
            return f"its input {u} is not complete"
        if rec.get("run_id") != inputs.get(u):
            return f"its input {u} was re-run since"
    return None


def _load_table(run: Path, notebook: str, folder: Path) -> datasets.Dataset:
    """A ``datasets`` table; a truncated or corrupt Arrow file fails here (reading it maps every record batch),
    naming itself."""
    with reading(run, notebook, folder):
        return datasets.load_from_disk(str(folder))


@dataclass(frozen=True)
class RunDir:
    """Paths and loaders of one run directory (``RunDir("runs/shapes")``)."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    def __fspath__(self) -> str:
        return str(self.root)

    # ------------------------------------------------------------------------------------------ paths

    @property
    def config_json(self) -> Path:
        return self.root / "config.json"

    @property
    def world(self) -> Path:
        return self.root / "world"

    @property
    def lvlm(self) -> Path:
        return self.root / "models" / "lvlm"

    @property
    def clip(self) -> Path:
        return self.root / "models" / "clip"

    @property
    def candidates(self) -> Path:
        return self.root / "candidates"

    @property
    def candidates_parts(self) -> Path:
        """Shards of an unfinished candidates run (resumed by notebook 01)."""
        return self.root / "candidates.parts"

    @property
    def validation_candidates(self) -> Path:
        """Candidates sampled for the preference split's validation scenes (shapes world, notebook 01): what
        notebook 02 chooses the MAS weights on. Never a preference prompt, never an evaluation scene."""
        return self.root / "candidates_validation"

    def candidates_dir(self, split: str = "pref") -> Path:
        """Notebook 01's table for ``split``: ``"pref"`` (the preference prompts) or ``"validation"``."""
        if split not in CANDIDATE_SPLITS:
            raise ValueError(f"split={split!r}: notebook 01 samples {CANDIDATE_SPLITS}")
        return self.candidates if split == "pref" else self.validation_candidates

    def candidates_parts_of(self, split: str = "pref") -> Path:
        folder = self.candidates_dir(split)
        return folder.with_name(folder.name + ".parts")

    @property
    def mas(self) -> Path:
        return self.root / "mas"

    @property
    def mas_scores(self) -> Path:
        return self.mas / "scores"

    @property
    def judge_cache(self) -> Path:
        return self.mas / "judge_cache.sqlite"

    @property
    def confidence(self) -> Path:
        return self.root / "confidence"

    def pairs(self, strategy: str) -> Path:
        return self.root / "pairs" / strategy

    def adapters(self, strategy: str | None = None) -> Path:
        base = self.root / "adapters"
        return base / strategy if strategy else base

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def experiments(self) -> Path:
        return self.root / "experiments"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def result(self, notebook: str) -> Path:
        return self.results / f"{notebook}.json"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    def rel(self, path: Path) -> str:
        """``path`` relative to the run directory, for messages."""
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    def require(self, marker: Path, notebook: str, what: Path | None = None, detail: str = "") -> Path:
        """``marker`` if it exists and stage ``notebook`` finished, else :class:`StageMissing` /
        :class:`StageIncomplete` naming ``notebook`` (``what``: the output). The running stage's own outputs
        (``M3PO_STAGE``) are read as they are."""
        if not Path(marker).exists():
            raise StageMissing(notebook, self.rel(what if what is not None else marker), self.root, detail)
        running = current_stage()
        if running is None or running[:2] > notebook:
            found = unfinished(self.root, notebook)
            if found is not None:
                raise StageIncomplete(notebook, found[0], self.root, found[1])
        return Path(marker)

    def preset(self) -> Preset:
        """The configuration this run directory was made with (its ``config.json``): what a launched stage reads."""
        self.require(self.config_json, "00", detail="every notebook writes it when it starts")
        with reading(self.root, "00", self.config_json):
            return preset_from_dict(json.loads(self.config_json.read_text()))

    # ------------------------------------------------------------------------------------------ stage 00

    def has_world(self) -> bool:
        return (self.world / W.WORLD_FILE).is_file()

    def scenes(self) -> dict[str, list[W.Scene]]:
        """The train / pref / eval scenes notebook 00 wrote."""
        self.require(self.world / W.WORLD_FILE, "00", self.world)
        with reading(self.root, "00", self.world / W.WORLD_FILE):
            return W.load_world(self.world)

    def lvlm_info(self) -> dict:
        """The tiny LLaVA's training record (``models/lvlm/m3po_training.json``)."""
        path = self.require(self.lvlm / TRAINING_INFO, "00", self.lvlm,
                            "or unfinished" if self.lvlm.exists() else "")
        with reading(self.root, "00", path):
            return json.loads(path.read_text())

    def clip_info(self) -> dict:
        path = self.require(self.clip / TRAINING_INFO, "00", self.clip,
                            "or unfinished" if self.clip.exists() else "")
        with reading(self.root, "00", path):
            return json.loads(path.read_text())

    def lvlm_source(self, cfg: Preset) -> str | Path:
        """What :func:`~m3po_utils.models.lvlm.load_lvlm` loads: the hub name, or ``models/lvlm`` (checked).

        The loading itself is :func:`m3po_utils.world.base_lvlm` (and ``base_clip``): this module stays
        light (no torch), so that every tool that only needs paths starts fast.
        """
        if cfg.world_kind == "hub":
            return cfg.models.lvlm
        self.lvlm_info()
        return self.lvlm

    def uses_local_clip(self, cfg: Preset) -> bool:
        return cfg.world_kind == "shapes" and cfg.models.clip_model == "local"

    def clip_source(self, cfg: Preset) -> tuple[str, str]:
        """``(name or folder, pretrained tag)`` that :func:`~m3po_utils.models.clip.load_clip` loads (checked)."""
        if not self.uses_local_clip(cfg):
            return cfg.models.clip_model, cfg.models.clip_pretrained
        self.clip_info()
        return str(self.clip), ""

    # ------------------------------------------------------------------------------------------ stages 01-04

    def load_candidates(self, split: str = "pref") -> datasets.Dataset:
        """Notebook 01's candidates table (one row per candidate) of ``split`` ("pref" or "validation")."""
        folder, parts = self.candidates_dir(split), self.candidates_parts_of(split)
        detail = ""
        if parts.is_dir():
            detail = f"{self.rel(parts)} holds an unfinished run: rerun notebook 01 to finish it"
        self.require(folder / DATASET_STATE, "01", folder, detail)
        return _load_table(self.root, "01", folder)

    def load_mas(self) -> pd.DataFrame:
        """Notebook 02's MAS table (one row per candidate; join on ``prompt_id, cand_idx``)."""
        self.require(self.mas_scores / DATASET_STATE, "02", self.mas_scores)
        return _load_table(self.root, "02", self.mas_scores).to_pandas()

    def load_confidence(self) -> pd.DataFrame:
        """Notebook 03's confidence table."""
        self.require(self.confidence / "table" / DATASET_STATE, "03", self.confidence)
        return _load_table(self.root, "03", self.confidence / "table").to_pandas()

    def has_pairs(self, strategy: str) -> bool:
        return (self.pairs(strategy) / "info.json").is_file()

    def load_pairs(self, strategy: str) -> datasets.Dataset:
        """Notebook 04's pairs of ``strategy`` (what TRL reads, plus the scores behind the choice)."""
        self.require(self.pairs(strategy) / "info.json", "04", self.pairs(strategy))
        return _load_table(self.root, "04", self.pairs(strategy) / "data")

    def pairs_info(self, strategy: str) -> dict[str, Any]:
        path = self.require(self.pairs(strategy) / "info.json", "04", self.pairs(strategy))
        with reading(self.root, "04", path):
            return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------ one runner at a time

LOCK_FILE = ".runner.lock"
RUNNER_ENV = "M3PO_RUNNER_PID"    # set for the kernels a runner starts: they work under its lock


class RunDirBusy(RuntimeError):
    """Another runner holds this run directory; the message names its pid and when it started."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']}, started {info['started']}" + (f": {info['command']}" if info.get("command") else "")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that left no details"


class RunnerLock:
    """An exclusive lock on a run directory for one runner (``fcntl.flock`` on ``<run>/.runner.lock``).

    The operating system drops the lock when its holder exits, however it exits (``kill -9`` included), so a lock
    file left by a killed runner is no obstacle: the next runner takes the lock and rewrites the details.
    """

    def __init__(self, run: Path, command: str = ""):
        self.path = Path(run) / LOCK_FILE
        self.command = command
        self._fd: int | None = None

    def __enter__(self) -> RunnerLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"run_dir={str(self.path.parent)!r} cannot be written ({exc.strerror or exc}); pass a "
                              "directory you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirBusy(f"another runner is working on {self.path.parent} ({_holder(self.path)}); wait for it "
                             "to finish or stop it — two runners on one run directory would do the work twice and "
                             "overwrite each other's files") from None
        info = json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                           "command": self.command})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd
        os.environ[RUNNER_ENV] = str(os.getpid())
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        os.environ.pop(RUNNER_ENV, None)


def check_not_busy(run: Path) -> None:
    """Refuse to work in ``run`` while a runner other than this process's own holds it (a notebook opened in
    JupyterLab on a directory a runner is filling)."""
    path = Path(run) / LOCK_FILE
    if not path.exists():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        try:
            mine = json.loads(path.read_text()).get("pid") == int(os.environ.get(RUNNER_ENV, "-1"))
        except (OSError, ValueError, AttributeError):
            mine = False
        if not mine:
            raise RunDirBusy(f"a runner is working on {run} ({_holder(path)}); open the notebook on another run "
                             "directory, or wait for the runner to finish") from None
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------ changing a setting

def finished_stages(run: Path) -> dict[str, int]:
    """The stages recorded complete in ``run``: name → notebook number."""
    out = {}
    for name in recorded_stages(Path(run)):
        rec = _record(Path(run), name)
        if rec is not None and rec.get("complete") is True:
            out[name] = stage_number(name)
    return out


def bind(run_dir: str | Path, preset: str, overrides: dict[str, Any] | None = None,
         redo_from: int | None = None) -> tuple[Preset, Path]:
    """:func:`~m3po_utils.config.setup_run`, accepting a changed setting when no output was computed with its old
    value: no notebook from the setting's first reader (:func:`~m3po_utils.config.first_reader`) on has finished —
    or every such notebook is about to run again (``redo_from``: the runner's ``--from`` with ``--redo``). The
    run directory then takes the new configuration, and the notebooks from that reader on stop counting as complete,
    so they run again; the ones before it are kept. Otherwise the error names each setting, the notebook that read
    it and the command that recomputes from there.
    """
    try:
        return setup_run(run_dir, preset, overrides)
    except ConfigChanged as exc:
        run = exc.run
        done = finished_stages(run)
        start = min(first_reader(k) for k in exc.keys)
        blocked = {name: n for name, n in done.items() if n >= start and (redo_from is None or n < redo_from)}
        if blocked:
            readers = ", ".join(f"{k} (first read by notebook {first_reader(k):02d})" for k in exc.keys[:6])
            raise ConfigError(
                f"{exc} — the changed settings are {readers}, and notebook(s) {', '.join(sorted(blocked))} finished "
                f"with the old values; to recompute from notebook {start:02d} with the new ones, run: "
                f"{run_command(run, '--from', f'{start:02d}', '--redo', config=json.loads(exc.cfg.to_json()))}") from None
        write_config(run, exc.cfg)
        for name, n in done.items():          # computed with the old values (unfinished) or about to be redone
            if n >= start:
                atomic_write_json(run / "results" / f"{name}.json", (_record(run, name) or {}) | {"complete": False})
        return exc.cfg, run
