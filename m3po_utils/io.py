"""Atomic file writes and small run-directory helpers shared by every stage."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be read by anyone
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_with(path: str | Path, write, suffix: str = ".tmp") -> Path:
    """Let ``write(tmp)`` fill a temporary file beside ``path``, then rename it into place (never half a file).
    ``suffix`` ends the temporary name (``.tmp.npy`` for ``numpy.save``, which adds ``.npy`` otherwise)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save_array(path: str | Path, array) -> Path:
    """A numpy array (``.npy``), atomically."""
    return atomic_write_with(path, lambda tmp: np.save(tmp, array), suffix=".tmp.npy")


def atomic_write_frame(path: str | Path, frame) -> Path:
    """A pandas table as JSON (``orient="split"``), atomically."""
    return atomic_write_with(path, lambda tmp: frame.to_json(tmp, orient="split"))


def json_ready(data: Any) -> Any:
    """``data`` as plain JSON values: numpy scalars and arrays as Python ones, paths as text, NaN and infinities
    as None."""
    return _finite(json.loads(json.dumps(data, default=_jsonable)))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Strict JSON (NaN and infinities become null, so any JSON reader can load the file)."""
    text = json.dumps(json_ready(data), indent=2, sort_keys=True, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in JSON")


class AtomicDir:
    """Build a directory under a temporary name and move it into place on success.

    >>> with AtomicDir(run / "models" / "lvlm") as tmp:
    ...     model.save_pretrained(tmp)

    What a killed writer left under a temporary name (``.lvlm.*``) is removed by the next write of the folder.
    """

    def __init__(self, final: str | Path):
        self.final = Path(final)

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        for left in self.final.parent.glob(f".{glob.escape(self.final.name)}.*"):   # a killed writer's
            shutil.rmtree(left, ignore_errors=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", dir=self.final.parent))
        os.chmod(self.tmp, 0o755)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.final, old)
            os.replace(self.tmp, self.final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.final)


def load_results(run_dir: str | Path, notebook: str) -> dict[str, Any]:
    path = Path(run_dir) / "results" / f"{notebook}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run notebook {notebook} first")
    return json.loads(path.read_text())
