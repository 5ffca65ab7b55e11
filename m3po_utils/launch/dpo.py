"""Entry point: notebook 05's LoRA adapters trained under ``accelerate launch`` (DDP, or DeepSpeed via TRL).

    python -m accelerate.commands.launch --config_file m3po_utils/launch/configs/cpu.yaml --num_processes 2 \\
        -m m3po_utils.launch.dpo --run-dir runs/smoke --strategy m3po

Every process reads the run directory's ``config.json`` and ``pairs/``, equalises the budget over *all* the
preset's strategies (as notebook 05 does), and trains the named strategies (default: all, ``best_of_n`` included)
with ``dpo.batch_size`` as the global batch; the main process writes ``adapters/<strategy>/``. A complete adapter
is skipped unless ``--redo``. Missing pairs stop every process with "run notebook 04 first".
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from m3po_utils import dpo as D
from m3po_utils import launch as L
from m3po_utils.config import Preset


def train_strategies(run_dir, cfg: Preset, progress: bool = False, redo: bool = False,
                     echo: Callable[[str], None] | None = print) -> dict[str, dict]:
    """Notebook 05's training: in this process when ``launch.dpo_processes`` is 1, else one ``accelerate launch``
    of :mod:`m3po_utils.launch.dpo` for every strategy. Returns every strategy's training info either way."""
    lc = cfg.launch
    if lc.dpo_processes == 1:
        return D.train_strategies(run_dir, cfg, progress=progress, redo=redo)
    L.launch_stage("dpo", run_dir, lc.dpo_processes, lc, ["--redo"] if redo else [], echo)
    names = list(dict.fromkeys([*cfg.dpo.strategies, D.SFT_ONLY]))
    return {s: D.load_training_info(run_dir, s) for s in names}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m m3po_utils.launch.dpo", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, help="the run directory (config.json, models/, pairs/)")
    p.add_argument("--strategy", action="append", default=None,
                   help="a strategy to train (repeatable; default: every strategy of dpo.strategies and best_of_n)")
    p.add_argument("--redo", action="store_true", help="retrain adapters that are already complete")
    p.add_argument("--progress", action="store_true", help="show TRL's progress bar and log lines")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    state, run, cfg, device = L.entry(args.run_dir, args.progress)
    infos = D.train_strategies(run.root, cfg, redo=args.redo, progress=args.progress and state.is_main_process,
                               only=args.strategy, processes=state.num_processes, device=device)
    if state.is_main_process:
        for s, info in infos.items():
            print(L.summary_line("dpo", {"strategy": s, "processes": state.num_processes,
                                       "skipped": bool(info.get("skipped")), "steps": info["steps"],
                                       "seconds": info["seconds"], "final_loss": info["final"]["loss"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
