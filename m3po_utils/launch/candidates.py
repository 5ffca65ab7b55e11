"""Entry point: notebook 01's candidates sampled by several processes under ``accelerate launch``.

    python -m accelerate.commands.launch --config_file m3po_utils/launch/configs/cpu.yaml --num_processes 2 \\
        -m m3po_utils.launch.candidates --run-dir runs/smoke

Every process reads the run directory's ``config.json``, the preference prompts (the shapes world's scenes or
``generation.prompts_file``) and the base model, samples its share of the chunks (chunk c goes to process
c mod W, seeded from (seed, c) as in one process) into ``candidates.parts/``, and waits; the main process then
writes ``candidates/``, the same table one process writes. A process that dies loses only its unfinished chunk:
rerun the same command (with any number of processes) and the finished shards are kept.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from m3po_utils import candidates as G
from m3po_utils import launch as L
from m3po_utils import world
from m3po_utils.config import Preset
from m3po_utils.rundir import DATASET_STATE, RunDir
from m3po_utils.shapes.prompts import ImageResolver, preference_prompts


def prepare_candidates(cfg: Preset, run_dir, model, processor, prompts: Sequence[dict], image_loader,
                       progress: bool = True, echo: Callable[[str], None] | None = print):
    """Notebook 01's candidates: in this process when ``launch.candidates_processes`` is 1, else an
    ``accelerate launch`` of :mod:`m3po_utils.launch.candidates` (prompts and model from the run directory)."""
    lc = cfg.launch
    if lc.candidates_processes == 1:
        return G.prepare_candidates(cfg, run_dir, model, processor, prompts, image_loader, progress=progress)
    run = RunDir(run_dir)
    if not (run.candidates / DATASET_STATE).is_file():
        L.launch_stage("candidates", run_dir, lc.candidates_processes, lc, echo=echo)
    return run.load_candidates()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m m3po_utils.launch.candidates",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, help="the run directory (config.json, world/, models/)")
    p.add_argument("--progress", action="store_true", help="show each process's progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    state, run, cfg, device = L.entry(args.run_dir, args.progress)
    if (run.candidates / DATASET_STATE).is_file():
        if state.is_main_process:
            print(f"{run.candidates} is complete; nothing to sample (delete it to sample again)", flush=True)
        return 0
    splits = run.scenes() if cfg.world_kind == "shapes" else None
    prompts = preference_prompts(cfg, splits)
    resolver = ImageResolver(cfg, splits)
    model, processor, _ = world.base_lvlm(cfg, run.root, device=device)
    settings = G.sampling_settings(cfg) | {"run_dir": run.root}
    if state.num_processes > 1:
        G.generate_candidates(model, processor, prompts, resolver, progress=args.progress, **settings,
                              shard=(state.process_index, state.num_processes))
        state.wait_for_everyone()
    if state.is_main_process:   # samples whatever is still missing (everything, with one process) and assembles
        table = G.generate_candidates(model, processor, prompts, resolver, progress=args.progress, **settings,
                                      sharded_by=state.num_processes)
        info = G.generation_info(run.root)
        print(L.summary_line("candidates", {"processes": state.num_processes, "rows": len(table),
                                          "chunks": info["chunks"], "chunks_generated": info["chunks_generated"],
                                          "seconds": info["seconds"]}), flush=True)
    state.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
