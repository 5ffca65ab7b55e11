"""``python -m m3po_utils.judge --run-dir RUN``: serve a run's ground-truth judge on 127.0.0.1 until Ctrl-C.

An entry point (the top layer): it reads the run directory and starts :class:`~m3po_utils.judge.server.JudgeServer`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence

from m3po_utils import shapes as W
from m3po_utils.config import ConfigError, preset_from_dict
from m3po_utils.judge.server import JudgeServer
from m3po_utils.rundir import RunDir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m m3po_utils.judge",
                                description="Serve the shapes world's ground-truth judge over the OpenAI protocol "
                                            "on 127.0.0.1 (until Ctrl-C).")
    p.add_argument("--run-dir", required=True, help="run directory whose world/ and config.json to use")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: a free port)")
    p.add_argument("--noise", type=float, default=None, help="judge noise (std on the 1-10 scale; default: preset)")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: the preset's mas.seed)")
    p.add_argument("--splits", nargs="+", default=["pref", "eval"], choices=list(W.SPLITS),
                   help="world splits the judge knows (default: pref eval)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run = RunDir(args.run_dir)
    try:
        cfg = preset_from_dict(json.loads(run.config_json.read_text()))
        noise = cfg.mas.judge_noise if args.noise is None else args.noise
        seed = cfg.mas.seed if args.seed is None else args.seed
        server = JudgeServer.for_splits(cfg, run.scenes(), which=args.splits, noise=noise, seed=seed, port=args.port)
    except (FileNotFoundError, ValueError, ConfigError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    def _stop(signum, frame):  # Ctrl-C and SIGTERM both stop the server cleanly
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:   # around everything: a signal that arrives while the banner is printed still stops cleanly
        with server:
            print(f"shapes judge {server.model_id!r} on {server.base_url} ({len(server.index)} scenes); Ctrl-C "
                  "stops it", flush=True)
            print(f"  export OPENAI_BASE_URL={server.base_url}", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
