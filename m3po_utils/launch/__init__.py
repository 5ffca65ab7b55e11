"""Stages 01 and 05 past one process, on existing engines: ``accelerate launch`` (torchrun; DDP or DeepSpeed
through TRL's Trainer) runs the same stage code in every process.

Two entry points read everything from the run directory and write what the notebook would write:

    python -m accelerate.commands.launch --config_file CONFIG --num_processes N \\
        -m m3po_utils.launch.candidates --run-dir runs/NAME              # notebook 01's sampling, sharded
    python -m accelerate.commands.launch --config_file CONFIG --num_processes N \\
        -m m3po_utils.launch.dpo --run-dir runs/NAME [--strategy S ...]  # notebook 05's adapters, data parallel

(``accelerate launch`` is the same command.) :func:`accelerate_command` builds them; the notebooks call
``launch.candidates.prepare_candidates`` and ``launch.dpo.train_strategies``, which run the stage in the kernel when the preset's
``launch.candidates_processes`` / ``launch.dpo_processes`` is 1 (the default) and launch the entry point
otherwise. The shipped accelerate configs are in ``configs/`` (:func:`config_file`).

**Sampling** is split by chunk: process r of W samples the chunks c with c mod W = r, each chunk seeded from
(seed, c) exactly as in one process, into its own atomic shard; the main process assembles the table when all
are there. **DPO** keeps ``dpo.batch_size`` as the global batch: each of W processes takes batch_size / W pairs of
every step (accelerate shards the Trainer's batches) and DDP averages the gradients; the main process writes the
adapter. The reused reference log-probs travel in the batch, so every process reuses them as one process does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from m3po_utils.config import LAUNCH_CONFIGS
from m3po_utils.rundir import RunDir

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

ENTRY_POINTS = {"candidates": "m3po_utils.launch.candidates", "dpo": "m3po_utils.launch.dpo"}


class LaunchFailed(RuntimeError):
    """A launched stage exited with an error; the message has the command and the end of its output."""


def config_file(name: str = "") -> Path:
    """The accelerate config for ``name``: a shipped one (``cpu``, ``gpu``, ``ddp``, ``zero2``, ``zero3``), a path, or
    ``""`` — ``ddp`` where CUDA is available, ``cpu`` elsewhere."""
    if not name:
        import torch

        name = "ddp" if torch.cuda.is_available() else "cpu"
    if name in LAUNCH_CONFIGS:
        return CONFIG_DIR / f"{name}.yaml"
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"launch.accelerate_config={name!r} is neither a shipped config "
                                f"({', '.join(LAUNCH_CONFIGS)}) nor an existing file; give one of the names or a path")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the rendezvous of one launch)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_command(stage: str, run_dir: str | Path, processes: int, config: str = "", port: int = 0,
                       args: Sequence[str] = ()) -> list[str]:
    """``python -m accelerate.commands.launch ... -m m3po_utils.launch.<stage> --run-dir RUN [args]`` as a list."""
    if stage not in ENTRY_POINTS:
        raise ValueError(f"stage={stage!r}: the launchable stages are {sorted(ENTRY_POINTS)}")
    if processes < 1:
        raise ValueError(f"processes={processes}: launch at least one process")
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file(config)),
            "--num_processes", str(processes), "--num_machines", "1", "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(port or free_port()), "-m", ENTRY_POINTS[stage],
            "--run-dir", str(run_dir), *args]


def run_command(cmd: Sequence[str], echo: Callable[[str], None] | None = print, keep: int = 40) -> None:
    """Run ``cmd`` with its output streamed to ``echo`` line by line; :class:`LaunchFailed` on a non-zero exit."""
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    tail: deque[str] = deque(maxlen=keep)
    with subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if echo is not None:
                echo(line.rstrip("\n"))
        rc = proc.wait()
    if rc:
        raise LaunchFailed(f"the launched stage exited with status {rc}: {' '.join(cmd)}\n--- last lines ---\n"
                           + "\n".join(tail))


def launch_stage(stage: str, run_dir, processes: int, lc, args: Sequence[str] = (),
                 echo: Callable[[str], None] | None = print) -> None:
    """Launch ``stage``'s entry point on ``processes`` processes with the preset's launch settings ``lc`` and wait."""
    cmd = accelerate_command(stage, run_dir, processes, lc.accelerate_config, lc.main_port, args)
    if echo is not None:
        echo("launching: " + " ".join(cmd))
    run_command(cmd, echo)


def entry(run_dir: str | Path, progress: bool):
    """What every launched process does first: ``(state, run, cfg, device)`` — its accelerate state, the run
    directory, the run's configuration and its GPU (None on the CPU, where the preset's device stands)."""
    state = process_state()
    if not progress:
        quiet_progress()
    run = RunDir(run_dir)
    device = str(state.device) if state.device.type == "cuda" else None
    return state, run, run.preset(), device


def process_state():
    """accelerate's ``PartialState`` of this process: CPU processes where CUDA is missing, a long timeout (a
    process may wait hours at a barrier for the slowest one on a 7B run)."""
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(hours=12))


def quiet_progress() -> None:
    """No per-process progress bars from datasets and transformers (W processes would interleave W of each)."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()


def summary_line(what: str, data: dict[str, Any]) -> str:
    """One machine-readable line a launched stage prints at the end (``M3PO-LAUNCH {json}``)."""
    return "M3PO-LAUNCH " + json.dumps({"stage": what, **data}, sort_keys=True, default=str)
