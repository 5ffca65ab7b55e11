"""Stage 00: the world and the base models, each made once per run directory and loaded afterwards.

``prepare_world`` / ``prepare_lvlm`` / ``prepare_clip`` return what exists in ``run_dir`` when it is complete
and build it otherwise, writing atomically — so notebook 00 can be re-run or resumed. They are notebook 00's
alone: every later stage loads these outputs through :class:`~m3po_utils.rundir.RunDir`, which stops with "run
notebook 00 first" when one is missing. Hub presets (``world_kind == "hub"``) load their models by name instead.
"""

from __future__ import annotations

import time
from pathlib import Path

from m3po_utils import shapes as W
from m3po_utils.config import Preset
from m3po_utils.io import atomic_write_json
from m3po_utils.models import clip as C
from m3po_utils.models.lvlm import count_parameters, load_lvlm, resolve_device, save_lvlm
from m3po_utils.models.sft import build_base, train_base
from m3po_utils.rundir import TRAINING_INFO, RunDir, reading
from m3po_utils.scoring import base_model_report, family_accuracy
from m3po_utils.shapes.prompts import validation_scenes


def base_lvlm(cfg: Preset, run_dir: str | Path, device: str | None = None):
    """``(model, processor, info)`` of the base LVLM notebook 00 made (``info`` is None for hub models).

    Every later stage loads the base model through this; a missing ``models/lvlm`` is "run notebook 00 first".
    ``device`` (one process's GPU under ``accelerate launch``, e.g. ``cuda:3``) overrides ``models.device``.
    """
    run = RunDir(run_dir)
    source = run.lvlm_source(cfg)
    device = device or cfg.models.device
    if cfg.world_kind == "hub":
        model, processor = load_lvlm(source, dtype=cfg.models.dtype, device=device)
        return model, processor, None
    with reading(run.root, "00", run.lvlm):      # a truncated or corrupt weights file names the folder
        model, processor = load_lvlm(source, device=device)
    return model, processor, run.lvlm_info()


def base_clip(cfg: Preset, run_dir: str | Path):
    """``(model, preprocess, tokenizer, info)`` of the run's CLIP (``info`` is None for open_clip models)."""
    run = RunDir(run_dir)
    name, pretrained = run.clip_source(cfg)
    if not run.uses_local_clip(cfg):
        model, preprocess, tokenizer = C.load_clip(name, pretrained, device=str(resolve_device(cfg.models.device)))
        return model, preprocess, tokenizer, None
    with reading(run.root, "00", run.clip):
        model, preprocess, tokenizer = C.load_clip(name)
    return model, preprocess, tokenizer, run.clip_info()


def prepare_world(cfg: Preset, run_dir: Path) -> dict[str, list[W.Scene]]:
    """The train / pref / eval scenes of this run (made from the preset's seed on first use)."""
    if cfg.world_kind != "shapes":
        raise ValueError(f"preset {cfg.name!r} has world_kind={cfg.world_kind!r}; only the shapes world has scenes")
    run = RunDir(run_dir)
    if run.has_world():
        return run.scenes()
    splits = W.make_splits(cfg.world)
    W.save_world(splits, run.world)
    return splits


def _validation_scenes(splits: dict[str, list[W.Scene]]) -> list[W.Scene]:
    """Scenes used to watch training: the preference split's validation tail (never the evaluation split)."""
    return validation_scenes(splits["pref"])


def prepare_lvlm(cfg: Preset, run_dir: Path, splits: dict[str, list[W.Scene]] | None = None,
                 progress: bool = True):
    """The base LVLM and its processor, plus its training record (``None`` for hub models).

    Shapes world: loads ``run_dir/models/lvlm`` when it holds a finished model, otherwise trains the tiny
    LLaVA on the train split, measures it on held-out evaluation scenes and saves model, processor and the
    training record together (atomically).
    """
    run = RunDir(run_dir)
    if cfg.world_kind == "hub" or (run.lvlm / TRAINING_INFO).exists():
        return base_lvlm(cfg, run_dir)
    folder = run.lvlm
    if splits is None:
        splits = prepare_world(cfg, run_dir)

    world_cfg, tcfg = cfg.world, cfg.lvlm_train
    model, processor = build_base(splits["train"], world_cfg, tcfg)
    val = _validation_scenes(splits)

    def watch(m, step):
        return family_accuracy(m, processor, val, world_cfg, seed=tcfg.seed)

    t0 = time.perf_counter()
    history = train_base(model, processor, splits["train"], world_cfg, tcfg, eval_fn=watch, progress=progress)
    train_s = time.perf_counter() - t0
    report = base_model_report(model, processor, splits["eval"], world_cfg, seed=cfg.seed)
    info = {"history": history, "train_seconds": train_s, "parameters": count_parameters(model),
            "heldout": report, "seed": tcfg.seed}
    save_lvlm(model, processor, folder, extra=info)
    model, processor, _ = base_lvlm(cfg, run_dir)
    return model, processor, info


def prepare_clip(cfg: Preset, run_dir: Path, splits: dict[str, list[W.Scene]] | None = None,
                 progress: bool = True):
    """The CLIP scorer's model, preprocess and tokenizer, plus its training record (``None`` for hub models)."""
    run = RunDir(run_dir)
    folder = run.clip
    info_path = folder / TRAINING_INFO
    if not run.uses_local_clip(cfg) or info_path.exists():
        return base_clip(cfg, run_dir)
    if splits is None:
        splits = prepare_world(cfg, run_dir)
    wc, tc = cfg.world, cfg.clip_train
    model, preprocess, tokenizer = C.build_tiny_clip(tc, wc.image_size)
    train = splits["train"]
    t0 = time.perf_counter()
    history = C.train_tiny_clip(model, tokenizer, [W.render(s, wc) for s in train],
                                [W.describe(s, wc) for s in train], tc, preprocess, progress=progress)
    train_s = time.perf_counter() - t0
    ev = splits["eval"]
    retrieval = C.retrieval_accuracy(model, preprocess, tokenizer, [W.render(s, wc) for s in ev],
                                     [W.describe(s, wc) for s in ev])
    info = {"history": history, "train_seconds": train_s, "retrieval": retrieval,
            "chance_top1": 1.0 / len({W.describe(s, wc) for s in ev}),
            "parameters": sum(p.numel() for p in model.parameters())}
    C.save_clip(model, C.clip_model_config(tc, wc.image_size), folder)
    atomic_write_json(info_path, info)
    model, preprocess, tokenizer, _ = base_clip(cfg, run_dir)
    return model, preprocess, tokenizer, info


def hallucination_examples(info: dict, k: int = 8) -> list[dict]:
    """Held-out descriptions whose verifier explanation reports something wrong (hallucinations first)."""
    rows = info["heldout"]["examples"]
    bad = [r for r in rows if "hallucinated" in r["explanation"]]
    other = [r for r in rows if r not in bad and r["truth"] != r["model"]]
    return (bad + other)[:k]


def verifier_demo(scene: W.Scene, cfg) -> dict:
    """Score the ground-truth description of ``scene`` and the same with one absent object added."""
    truth = W.describe(scene, cfg)
    used = {o.cell for o in scene.objects}
    # a full grid (world.grid=2 with 4 objects) has no free cell: the absent shape is then claimed in an
    # occupied one, which the verifier flags all the same
    free = next((c for c in range(cfg.grid * cfg.grid) if c not in used), scene.objects[0].cell)
    absent = next((s for s in cfg.shapes if s not in scene.shapes()), None)
    if absent is None:
        raise ValueError(f"scene {scene.scene_id} holds every shape; pick a scene with an absent one for the demo")
    extra = truth.rstrip(".") + f", a {cfg.colors[0]} {absent} at the {W.position_name(free, cfg.grid)}."
    v_truth = W.verify(scene, "Describe the image.", truth, cfg)
    v_extra = W.verify(scene, "Describe the image.", extra, cfg)
    return {"truth": truth, "truth_score": v_truth.score, "truth_explanation": v_truth.explanation,
            "extra": extra, "extra_object": f"{cfg.colors[0]} {absent}", "extra_score": v_extra.score,
            "extra_explanation": v_extra.explanation, "extra_hallucinated": list(v_extra.hallucinated)}
