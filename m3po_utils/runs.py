"""The run directory: the one contract between stages.

Every stage reads what earlier stages wrote and writes its own outputs, and nothing else. :class:`RunDir` owns
the paths of every stage's outputs and the loaders that read them. A loader that finds an output missing or
unfinished raises :class:`StageMissing`, whose message names the notebook that makes it::

    run notebook 00 (world and base models) first: models/lvlm is missing in runs/shapes

so a stage never trains, samples or judges on another stage's behalf. Only notebook 00 (``basemodels``) builds
the world and the models; only the runner and a stage's own notebook create that stage's outputs.

A sub-run (notebook 06's ``evaluation/seed1``, notebook 10's points) is a run directory of its own: ``RunDir``
works on it unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pandas as pd

from m3po_utils import world as W
from m3po_utils.config import Preset

# Notebook of each stage, for the "run notebook NN first" messages.
NOTEBOOKS = {"00": "00 (world and base models)", "01": "01 (candidates)", "02": "02 (MAS)",
             "03": "03 (confidence)", "04": "04 (selection)", "05": "05 (DPO)", "06": "06 (evaluation)",
             "10": "10 (experiments)"}
TRAINING_INFO = "m3po_training.json"   # written last into models/lvlm and models/clip: the model is finished
DATASET_STATE = "state.json"           # written by datasets.save_to_disk: the table is complete


class StageMissing(FileNotFoundError):
    """An earlier stage's output is missing or unfinished; the message names the notebook that makes it."""

    def __init__(self, notebook: str, what: str, run: Path, detail: str = ""):
        self.notebook, self.what, self.run = notebook, what, run
        extra = f" ({detail})" if detail else ""
        super().__init__(f"run notebook {NOTEBOOKS.get(notebook, notebook)} first: {what} is missing in "
                         f"{run}{extra}")


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
        """``marker`` if it exists, else :class:`StageMissing` naming ``notebook`` (``what``: the output)."""
        if not Path(marker).exists():
            raise StageMissing(notebook, self.rel(what if what is not None else marker), self.root, detail)
        return Path(marker)

    # ------------------------------------------------------------------------------------------ stage 00

    def has_world(self) -> bool:
        return (self.world / W.WORLD_FILE).is_file()

    def scenes(self) -> dict[str, list[W.Scene]]:
        """The train / pref / eval scenes notebook 00 wrote."""
        self.require(self.world / W.WORLD_FILE, "00", self.world)
        return W.load_world(self.world)

    def lvlm_info(self) -> dict:
        """The tiny LLaVA's training record (``models/lvlm/m3po_training.json``)."""
        path = self.require(self.lvlm / TRAINING_INFO, "00", self.lvlm,
                            "or unfinished" if self.lvlm.exists() else "")
        return json.loads(path.read_text())

    def clip_info(self) -> dict:
        path = self.require(self.clip / TRAINING_INFO, "00", self.clip,
                            "or unfinished" if self.clip.exists() else "")
        return json.loads(path.read_text())

    def lvlm_source(self, cfg: Preset) -> str | Path:
        """What :func:`~m3po_utils.models.lvlm.load_lvlm` loads: the hub name, or ``models/lvlm`` (checked).

        The loading itself is :func:`m3po_utils.basemodels.base_lvlm` (and ``base_clip``): this module stays
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

    def load_candidates(self) -> datasets.Dataset:
        """Notebook 01's candidates table (one row per candidate)."""
        detail = ""
        if self.candidates_parts.is_dir():
            detail = f"{self.rel(self.candidates_parts)} holds an unfinished run: rerun notebook 01 to finish it"
        self.require(self.candidates / DATASET_STATE, "01", self.candidates, detail)
        return datasets.load_from_disk(str(self.candidates))

    def load_mas(self) -> pd.DataFrame:
        """Notebook 02's MAS table (one row per candidate; join on ``prompt_id, cand_idx``)."""
        self.require(self.mas_scores / DATASET_STATE, "02", self.mas_scores)
        return datasets.load_from_disk(str(self.mas_scores)).to_pandas()

    def load_confidence(self) -> pd.DataFrame:
        """Notebook 03's confidence table."""
        self.require(self.confidence / "table" / DATASET_STATE, "03", self.confidence)
        return datasets.load_from_disk(str(self.confidence / "table")).to_pandas()

    def has_pairs(self, strategy: str) -> bool:
        return (self.pairs(strategy) / "info.json").is_file()

    def load_pairs(self, strategy: str) -> datasets.Dataset:
        """Notebook 04's pairs of ``strategy`` (what TRL reads, plus the scores behind the choice)."""
        self.require(self.pairs(strategy) / "info.json", "04", self.pairs(strategy))
        return datasets.load_from_disk(str(self.pairs(strategy) / "data"))

    def pairs_info(self, strategy: str) -> dict[str, Any]:
        path = self.require(self.pairs(strategy) / "info.json", "04", self.pairs(strategy))
        return json.loads(path.read_text())
