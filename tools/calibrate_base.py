"""Calibrate a shapes-world base model: train it, measure it on calibration scenes, and measure the upper bound.

    python tools/calibrate_base.py OUT_DIR [key=value ...] [oracle=0] [ncal=200]
    python tools/calibrate_base.py --bars OUT_DIR [OUT_DIR ...]

Overrides are the series' own (``lvlm_train.annotation_noise=0.7``). The calibration scenes are the evaluation
split of *another draw* of the same world (``world.seed + 1000``), so choosing a default here never looks at the
run's evaluation split. The base is measured on POPE (random / popular / adversarial, with the share of
adversarial false positives that are co-occurrence mates), the MME-style subtasks (acc, acc+), per-family exact
accuracy and CHAIR_i. The upper bound ("oracle") is SFT on the *reference answers* of the preference prompts —
the same prompts and step budget as notebook 05, through the same ``dpo.train_pairs`` (best_of_n, SFT term
only) — and the script prints its paired change in POPE-adversarial F1 and in the MME-style total, with 95 %
intervals from 300 resamples of the scenes. The calibration tables of docs/history.md were measured with it.
A finished base in ``OUT_DIR/lvlm`` is reused, so the upper bound can be re-measured under changed prompts.
It ends with the three testbed bars a calibration can check (``testbed.calibration_bars``: POPE, the MME-style
subtasks, the upper bound); ``--bars`` prints them again for finished calibrations, from their JSON files only.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import time
from pathlib import Path

import datasets
import numpy as np

from m3po_utils import dpo as D
from m3po_utils import scoring as E
from m3po_utils import shapes as W
from m3po_utils import testbed
from m3po_utils.config import load_preset, parse_overrides
from m3po_utils.models.generate import greedy_answers
from m3po_utils.models.lvlm import load_lvlm, save_lvlm
from m3po_utils.models.sft import build_base, train_base
from m3po_utils.selection import assistant_turn, user_turn
from m3po_utils.shapes.prompts import shapes_prompts

ORACLE_PAIRS = 1060   # the preference pairs notebook 05 trains every strategy on under the shapes preset


def measure(model, proc, scenes, wc) -> dict:
    """POPE per setting (with per-question predictions for the paired bootstrap), MME-style, families, CHAIR_i."""
    rep: dict = {}
    imgs = [W.render(s, wc) for s in scenes]
    for setting in E.POPE_SETTINGS:
        rows = E.pope_questions(scenes, wc, setting, seed=0)
        ans = greedy_answers(model, proc, [imgs[r["scene"]] for r in rows], [r["question"] for r in rows],
                             max_new_tokens=8)
        m = E.pope_metrics(ans, [r["label"] for r in rows]) | E.partner_share(scenes, rows, ans, wc)
        rep[f"pope_{setting}"] = {k: m[k] for k in ("accuracy", "f1", "yes_ratio", "partner_share")}
        rep[f"pope_{setting}_rows"] = [(r["scene"], r["label"], E.pope_parse(a)) for r, a in zip(rows, ans, strict=True)]
    rows = E.mme_questions(scenes, wc, seed=0)
    ans = greedy_answers(model, proc, [imgs[r["scene"]] for r in rows], [r["question"] for r in rows],
                         max_new_tokens=8)
    scores = E.mme_scores([r | {"prediction": a} for r, a in zip(rows, ans, strict=True)])
    rep["mme"] = {k: {"acc": v["acc"], "acc_plus": v["acc_plus"]} for k, v in scores["subtasks"].items()}
    rep["mme_total"] = scores["total"]
    rep["mme_rows"] = [{"subtask": r["subtask"], "scene": r["scene"], "answer": r["answer"], "prediction": a}
                       for r, a in zip(rows, ans, strict=True)]
    rep["families"] = E.family_accuracy(model, proc, scenes, wc, seed=0)
    descriptions = greedy_answers(model, proc, imgs, ["Describe the image."] * len(scenes))
    rep["chair_i"] = E.description_metrics(scenes, descriptions, wc)["chair_i"]
    return rep


def line(rep: dict, tag: str) -> str:
    pope = " / ".join(f"{rep[f'pope_{s}']['accuracy']:.3f}" for s in E.POPE_SETTINGS)
    adv = rep["pope_adversarial"]
    mme = " ".join(f"{k} {v['acc']:.2f}/{v['acc_plus']:.2f}" for k, v in rep["mme"].items())
    fam = " ".join(f"{k[4:]} {v:.2f}" for k, v in sorted(rep["families"].items()))
    return (f"[{tag}] POPE {pope} advF1 {adv['f1']:.3f} yes {adv['yes_ratio']:.2f} partner {adv['partner_share']} "
            f"| MME {rep['mme_total']:.1f} {mme} | CHAIR_i {rep['chair_i']:.3f}\n   fam: {fam}")


def _resampled_f1(rows, weight: np.ndarray) -> float:
    """POPE F1 with scene ``s`` counted ``weight[s]`` times (``rows``: (scene, label, parsed answer))."""
    picked = [r for r in rows for _ in range(weight[r[0]])]
    return E.pope_metrics([p for _, _, p in picked], [lab for _, lab, _ in picked])["f1"]


def _resampled_mme(rows, weight: np.ndarray) -> float:
    """MME-style total with scene ``s`` counted ``weight[s]`` times: each copy is its own image for acc+."""
    return E.mme_scores([r | {"image": f"{r['scene']}#{k}"} for r in rows for k in range(weight[r["scene"]])])["total"]


def paired_intervals(base: dict, other: dict, n_scenes: int, n_boot: int = 300, seed: int = 0) -> dict:
    """Change other − base in POPE-adversarial F1 and the MME-style total, resampling scenes (95 % intervals)."""
    rng = np.random.default_rng(seed)
    b_rows, o_rows = base["pope_adversarial_rows"], other["pope_adversarial_rows"]
    d_f1, d_mme = [], []
    for _ in range(n_boot):
        weight = np.bincount(rng.integers(n_scenes, size=n_scenes), minlength=n_scenes)
        d_f1.append(_resampled_f1(o_rows, weight) - _resampled_f1(b_rows, weight))
        d_mme.append(_resampled_mme(other["mme_rows"], weight) - _resampled_mme(base["mme_rows"], weight))
    return {"f1": (other["pope_adversarial"]["f1"] - base["pope_adversarial"]["f1"], *np.percentile(d_f1, [2.5, 97.5])),
            "mme": (other["mme_total"] - base["mme_total"], *np.percentile(d_mme, [2.5, 97.5]))}


def bars_line(rows: list[dict]) -> str:
    """One line of ``testbed.calibration_bars`` rows: how many are met, and each one's verdict."""
    cells = [f"{r['bar'].split(' ', 1)[1]} " + ("not measured" if r["met"] is None else "yes" if r["met"] else
                                                 "no (" + ", ".join(r["misses"]) + ")") for r in rows]
    return f"BARS {testbed.met_count(rows)} of {len(rows)}: " + " | ".join(cells)


def recorded_bars(out: Path) -> tuple[int, int, str]:
    """Bars met, bars checked and the bars line of a finished calibration in ``out`` (its JSON files only)."""
    if not (out / "base.json").is_file():
        sys.exit(f"{out} holds no finished calibration (no base.json): run `python tools/calibrate_base.py {out}`")
    base = json.loads((out / "base.json").read_text())
    upper = None
    if (out / "oracle.json").is_file():
        orc = json.loads((out / "oracle.json").read_text())
        upper = orc.get("upper")
        if upper is None:    # written before the intervals were stored: the same resampling again (seed 0)
            n_scenes = 1 + max(r[0] for r in base["pope_adversarial_rows"])
            upper = paired_intervals(base, orc, n_scenes)
    rows = testbed.calibration_bars(base, upper)
    return testbed.met_count(rows), len(rows), bars_line(rows)


def reference_table(cfg, pref_scenes):
    """The preference prompts with their reference answers as a best_of_n pair table (rejected := chosen)."""
    scenes = {s.scene_id: s for s in pref_scenes}

    def png(scene_id: str) -> dict:
        buf = io.BytesIO()
        W.render(scenes[scene_id], cfg.world).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    rows = [{"prompt_id": r["prompt_id"], "prompt": user_turn(r["instruction"]),
             "chosen": assistant_turn(r["reference"]), "rejected": assistant_turn(r["reference"]),
             "images": [png(r["scene_id"])]} for r in shapes_prompts(pref_scenes, cfg)[:ORACLE_PAIRS]]
    return datasets.Dataset.from_list(rows).cast_column("images", datasets.Sequence(datasets.Image()))


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit(__doc__)
    if argv[0] == "--bars":
        total = checked = 0
        for arg in argv[1:]:
            met, n, text = recorded_bars(Path(arg))
            total, checked = total + met, checked + n
            print(f"{arg}: {text}", flush=True)
        print(f"bars met, all calibrations given: {total} of {checked}")
        return
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    overrides = parse_overrides(argv[1:])
    with_oracle = overrides.pop("oracle", "1") == "1"
    n_cal = int(overrides.pop("ncal", "200"))
    cfg = load_preset("shapes", overrides)
    t0 = time.time()
    splits = W.make_splits(cfg.world)
    cal = W.make_splits(dataclasses.replace(cfg.world, seed=cfg.world.seed + 1000))["eval"][:n_cal]
    folder = out / "lvlm"
    if not (folder / "done").exists():
        model, proc = build_base(splits["train"], cfg.world, cfg.lvlm_train)
        train_base(model, proc, splits["train"], cfg.world, cfg.lvlm_train, progress=False)
        save_lvlm(model, proc, folder)
        (folder / "done").write_text("1")
    print(f"train s {time.time() - t0:.0f}", flush=True)
    model, proc = load_lvlm(folder)
    base = measure(model, proc, cal, cfg.world)
    print(line(base, "base"), flush=True)
    (out / "base.json").write_text(json.dumps(base))
    if with_oracle:
        dcfg = dataclasses.replace(cfg, dpo=dataclasses.replace(cfg.dpo, reuse_reference=False))
        D.train_pairs(out / "oracle_ref", dcfg, reference_table(cfg, splits["pref"]), "best_of_n", sft_only=True,
                      model_loader=lambda: load_lvlm(folder))
        model, proc = load_lvlm(folder)
        D.load_adapter(model, out / "oracle_ref")
        orc = measure(model, proc, cal, cfg.world)
        print(line(orc, "oracle"), flush=True)
        d = paired_intervals(base, orc, len(cal))
        (out / "oracle.json").write_text(json.dumps(orc | {"upper": {k: [float(x) for x in v] for k, v in d.items()}}))
        print("ORACLE dF1 adv {:+.3f} [{:+.3f}, {:+.3f}]  dMME {:+.1f} [{:+.1f}, {:+.1f}]".format(*d["f1"], *d["mme"]))
    print(bars_line(testbed.calibration_bars(base, d if with_oracle else None)))
    print(f"total s {time.time() - t0:.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])
