"""Draws docs/shapes_world.png, the README's picture of the shapes world: eight training scenes of the default
preset with one instruction and its reference answer each. Run from the repository root:

    .venv/bin/python docs/make_picture.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from m3po_utils import shapes as W  # noqa: E402
from m3po_utils.config import load_preset  # noqa: E402
from m3po_utils.plots import world as plots  # noqa: E402


def main() -> Path:
    wc = load_preset("shapes").world
    scenes = W.make_splits(wc)["train"][:8]
    rng = np.random.default_rng(0)
    fig = plots.scene_grid(scenes, wc, [W.instructions_for(s, wc, rng) for s in scenes])
    out = Path(__file__).with_name("shapes_world.png")
    fig.savefig(out, dpi=80, bbox_inches="tight")
    return out


if __name__ == "__main__":
    print(main())
