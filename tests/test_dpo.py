"""DPO with LoRA: adapters, the reused reference, the equal budget and clear errors before training.

The fixture builds a smoke-sized world of its own: a tiny LLaVA trained for the smoke preset's few steps,
candidates sampled from it (with their generation-time log-probs), a stand-in MAS (the verifier's score plus a
seeded jitter, so that prompts are rarely tied) and pairs for every strategy written as notebook 04 writes them.
"""

import dataclasses
import json

import datasets
import numpy as np
import pandas as pd
import pytest
import torch

from m3po_utils import dpo as D
from m3po_utils import rules
from m3po_utils import selection as S
from m3po_utils import shapes as W
from m3po_utils.config import load_preset, setup_run
from m3po_utils.models import lora as LORA
from m3po_utils.models import sft as T
from m3po_utils.models import templates as TT
from m3po_utils.models import trl_api as TA
from m3po_utils.models.generate import sample_candidates
from m3po_utils.models.lora import LoraTargetError, quiet_gc_warning
from m3po_utils.models.lvlm import load_lvlm, save_lvlm
from m3po_utils.rundir import RunDir
from m3po_utils.shapes.prompts import ImageResolver, shapes_prompts


def _cfg(**dpo):
    cfg = load_preset("smoke")
    return dataclasses.replace(cfg, dpo=dataclasses.replace(cfg.dpo, **dpo)) if dpo else cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = load_preset("smoke")
    run = tmp_path_factory.mktemp("dpo-run")
    setup_run(run, "smoke")
    splits = W.make_splits(cfg.world)
    model, processor = T.build_base(splits["train"], cfg.world, cfg.lvlm_train)
    T.train_base(model, processor, splits["train"], cfg.world, cfg.lvlm_train, progress=False)
    save_lvlm(model, processor, RunDir(run).lvlm, extra={"seed": 0})   # as notebook 00 leaves it
    model, processor = load_lvlm(RunDir(run).lvlm, device="cpu")
    prompts = shapes_prompts(splits["pref"], cfg)
    images = ImageResolver(cfg, splits)
    g = cfg.generation
    cands = sample_candidates(model, processor, [images(p["image"]) for p in prompts],
                              [p["instruction"] for p in prompts], n=g.n_candidates, max_new_tokens=g.max_new_tokens,
                              seed=0)
    rng = np.random.default_rng(0)
    rows = []
    for p, cs in zip(prompts, cands, strict=True):
        scene = images.scene(p["image"])
        for c in cs:
            truth = W.verify(scene, p["instruction"], c["text"], cfg.world).score
            rows.append(p | c | {"truth": truth, "mas": 0.8 * truth + 0.2 * rng.random()})
    table = pd.DataFrame(rows)
    groups = S.group_candidates(table)
    sels = S.select_all(groups, 0.5, 0.1, 0.05, truth=S.truth_by_prompt(groups, table))
    for sel in sels.values():
        S.write_pairs(run, sel, table, images)
    return run


@pytest.fixture(scope="module")
def trained(run):
    return D.train_strategies(run, _cfg(), progress=False)


def _base(run):
    return load_lvlm(RunDir(run).lvlm, device="cpu")


def _logits(model, processor, run):
    pairs = RunDir(run).load_pairs("m3po")
    row = pairs[0]
    inputs = processor(images=row["images"], text=[TT.prompt_for(processor, row["instruction"])], return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


# ----------------------------------------------------------------------------------------------- LoRA

def test_lora_targets_only_the_language_model_by_default(run):
    model, _ = _base(run)
    dcfg = _cfg().dpo
    parts = LORA.check_lora_targets(model, dcfg)
    assert set(parts) == {"language_model"}
    n_layers = model.config.text_config.num_hidden_layers
    n_targets = len(dcfg.lora_targets)
    assert len(parts["language_model"]) == n_targets * n_layers       # every target projection of every layer
    peft_model = LORA.wrap_lora(model, dcfg)
    summary = LORA.lora_summary(peft_model)
    assert summary["lora_modules"] == {"language_model": n_targets * n_layers}
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".language_model." in n for n in trainable)
    assert not any("vision_tower" in n for n in trainable)            # CLIP has q_proj / v_proj too


def test_lora_options_add_projector_and_vision_tower(run):
    model, _ = _base(run)
    dcfg = dataclasses.replace(_cfg().dpo, lora_projector=True, lora_vision=True)
    assert set(LORA.check_lora_targets(model, dcfg)) == {"language_model", "vision_tower", "multi_modal_projector"}
    modules = LORA.lora_summary(LORA.wrap_lora(model, dcfg))["lora_modules"]
    assert modules["vision_tower"] > 0 and modules["multi_modal_projector"] == 2


def test_lora_target_matching_nothing_is_a_clear_error(run):
    model, _ = _base(run)
    with pytest.raises(LoraTargetError, match="matches no linear module.*q_proj"):
        LORA.check_lora_targets(model, dataclasses.replace(_cfg().dpo, lora_targets=("query",)))


# ----------------------------------------------------------------------------------------------- processor / reference

def test_training_processor_restores_bos_without_touching_the_original(run):
    _, processor = _base(run)
    template = processor.chat_template
    tproc = TA.training_processor(processor)
    assert processor.chat_template == template and tproc is not processor
    ex = {"prompt": S.user_turn("Is there a star?"), "chosen": S.assistant_turn("Yes"),
          "rejected": S.assistant_turn("No")}
    texts = TA.trl_texts(ex | {"images": [None]}, tproc)
    tok = processor.tokenizer
    ids = tok(texts["prompt"], add_special_tokens=False).input_ids
    assert ids == tok(TT.prompt_for(processor, "Is there a star?")).input_ids   # BOS first, as in generation
    assert tok(texts["chosen"], add_special_tokens=False).input_ids == T.encode_pair(processor, "q", "Yes")[1]
    assert TA.training_processor(tproc) is tproc                                  # already renders BOS


def test_reference_columns_reuse_only_exact_token_matches(run):
    _, processor = _base(run)
    pairs = RunDir(run).load_pairs("m3po")
    ref_c, ref_r, stats = D.reference_columns(pairs, TA.training_processor(processor), processor)
    assert stats.responses == 2 * len(pairs) and 0 < stats.matched <= stats.responses
    assert stats.prompt_mismatch == 0
    # two-turn prompts too: TRL renders the history as chat turns exactly as generation did
    two_turn = [i for i, p in enumerate(pairs["prompt"]) if len(p) == 3]
    assert two_turn and all(pairs[i]["family"] == "dialogue" for i in two_turn)
    assert not all(np.isnan(ref_c[i]) and np.isnan(ref_r[i]) for i in two_turn)
    for i, row in enumerate(pairs):
        for side, ref in (("chosen", ref_c), ("rejected", ref_r)):
            if np.isnan(ref[i]):
                continue
            assert ref[i] == pytest.approx(row[f"logp_{side}"])
            assert row[f"{side}_token_ids"][-1] == processor.tokenizer.eos_token_id
    # an answer cut before its EOS can never reuse its log-prob: the chat template appends one
    cut = pairs.select([0]).map(lambda r: {"chosen_token_ids": r["chosen_token_ids"][:-1]})
    assert np.isnan(D.reference_columns(cut, TA.training_processor(processor), processor)[0][0])


def test_reused_reference_equals_trl_reference_on_one_batch(run):
    model, processor = _base(run)
    cfg = _cfg()
    prep, _ = D.prepare_strategies(run, cfg, processor, ["m3po"])
    check = D.reference_check(model, processor, prep["m3po"], cfg.dpo, batch_size=4)
    assert check["pairs"] >= 2
    assert check["max_abs_diff"] < 1e-4, check
    assert check["max_ref_logp_diff"] < 1e-3, check
    assert abs(check["trl"]["rewards/chosen"]) > 1e-3                    # the policy differs from the reference


def test_rows_without_a_stored_reference_are_computed(run):
    """A batch mixing stored and missing (NaN) reference log-probs: the missing rows get TRL's reference pass."""
    model, processor = _base(run)
    cfg = _cfg()
    prep, _ = D.prepare_strategies(run, cfg, processor, ["m3po"])
    table = prep["m3po"].table
    trainer = TA.build_trainer(model, TA.training_processor(processor), table, cfg.dpo, run / "mixed", 1,
                              progress=False)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    import math
    full = [i for i in range(len(table))
            if all(math.isfinite(float(table[i][c])) for c in TA.REF_COLUMNS)][:4]     # rows with both stored
    assert len(full) >= 2, "the fixture has fewer than 2 pairs with both reference log-probs stored"
    rows = (full * 2)[:4]                               # a batch of 4 (a pair may appear twice in a small fixture)
    batch = trainer._prepare_inputs(trainer.data_collator([table[i] for i in rows]))
    batch[TA.REF_COLUMNS[0]][::2] = float("nan")
    batch[TA.REF_COLUMNS[1]][1] = float("nan")
    shifted = batch | {TA.REF_COLUMNS[0]: batch[TA.REF_COLUMNS[0]].clone()}
    shifted[TA.REF_COLUMNS[0]][3] += 1.0                                  # a stored value is really used
    trainer.model.eval()
    with torch.no_grad(), quiet_gc_warning():
        mixed = float(trainer._compute_loss(trainer.model, batch, False))
        plain = float(trainer._compute_loss(trainer.model, {k: v for k, v in batch.items()
                                                            if k not in TA.REF_COLUMNS}, False))
        moved = float(trainer._compute_loss(trainer.model, shifted, False))
    assert abs(mixed - plain) < 1e-4
    assert abs(moved - plain) > 1e-3


# ----------------------------------------------------------------------------------------------- training

def test_every_strategy_gets_the_same_budget(trained):
    assert set(trained) == set(rules.main_names())
    assert len({i["pairs"] for i in trained.values()}) == 1
    assert len({i["steps"] for i in trained.values()}) == 1
    assert trained["m3po"]["pairs"] <= _cfg().dpo.max_pairs
    assert trained["m3po"]["steps"] == D.steps_for(trained["m3po"]["pairs"], _cfg().dpo)
    assert trained["best_of_n"]["sft_only"] and trained["best_of_n"]["loss_type"] == ["sft"]
    assert trained["m3po"]["loss_type"] == list(_cfg().dpo.loss_type)
    # the reference pass was skipped for every response whose tokens matched
    ref = trained["m3po"]["reference"]
    assert trained["m3po"]["ref_rows"]["reused"] > 0 and 0 < ref["share"] <= 1


def test_training_log_and_adapter_on_disk(run, trained):
    for s in rules.main_names():
        folder = D.adapters_dir(run, s)
        assert (folder / D.ADAPTER_FILE).is_file() and (folder / "adapter_config.json").is_file()
        log = D.load_training_log(run, s)
        assert len(log) == trained[s]["steps"]
        assert all(k in log[0] for k in D.CURVE_METRICS)
        assert json.loads((folder / D.INFO_FILE).read_text())["complete"] is True
        assert not list(folder.parent.glob(f".{s}.*"))                  # no temporary folder left behind


def test_rerun_skips_complete_adapters(run, trained):
    again = D.train_strategies(run, _cfg(), progress=False)
    assert all(i.get("skipped") for i in again.values())
    assert {s: i["fingerprint"] for s, i in again.items()} == {s: i["fingerprint"] for s, i in trained.items()}


def test_adapter_reload_gives_identical_logits_and_disabled_equals_base(run):
    model, processor = _base(run)
    cfg = _cfg()
    prep, _ = D.prepare_strategies(run, cfg, processor, ["m3po"])
    folder = run / "roundtrip"
    D.train_one(prep["m3po"], model, processor, cfg.dpo, folder, max_steps=2, progress=False)
    base, _ = _base(run)
    reloaded = D.load_adapter(_base(run)[0], folder)
    base_logits = _logits(base, processor, run)
    lora_logits = _logits(reloaded, processor, run)
    assert not torch.allclose(lora_logits, base_logits)                 # the adapter changed something
    with reloaded.disable_adapter():
        assert torch.equal(_logits(reloaded, processor, run), base_logits)
    again = D.load_adapter(_base(run)[0], folder)
    assert torch.equal(_logits(again, processor, run), lora_logits)


def test_saved_adapter_equals_the_trained_model(run):
    model, processor = _base(run)
    cfg = _cfg()
    prep, _ = D.prepare_strategies(run, cfg, processor, ["best_worst"])
    tproc = TA.training_processor(processor)
    trainer = TA.build_trainer(model, tproc, prep["best_worst"].table, cfg.dpo, run / "t", 2, progress=False)
    with quiet_gc_warning():
        trainer.train()
    trainer.model.save_pretrained(str(run / "saved"))
    trained_logits = _logits(trainer.model.eval(), processor, run)
    reloaded = D.load_adapter(_base(run)[0], run / "saved")
    assert torch.equal(_logits(reloaded, processor, run), trained_logits)


# ----------------------------------------------------------------------------------------------- bad input

def _pairs(run, strategy="m3po"):
    return RunDir(run).load_pairs(strategy)


@pytest.mark.parametrize("case", ["empty", "missing_column", "bad_image", "no_pairs", "bad_target"])
def test_bad_input_fails_before_training(run, tmp_path, case):
    import shutil

    cfg = _cfg()
    sub = tmp_path / "run"
    shutil.copytree(run / "models", sub / "models")
    shutil.copytree(run / "pairs", sub / "pairs")
    pairs = {s: _pairs(run, s) for s in rules.main_names()}
    if case == "empty":
        pairs["random"] = pairs["random"].select([])
        match = "random.*empty"
    elif case == "missing_column":
        pairs["m3po"] = pairs["m3po"].remove_columns("rejected")
        match = "m3po.*lacks column.*rejected"
    elif case == "bad_image":
        ds = pairs["best_worst"]
        col = [[{"bytes": b"not an image", "path": None}]] + [
            [{"bytes": _png(imgs[0]), "path": None}] for imgs in ds["images"][1:]]
        ds = ds.remove_columns("images").add_column("images", col)
        pairs["best_worst"] = ds.cast_column("images", datasets.Sequence(datasets.Image()))
        match = "best_worst'?, row 0.*image cannot be read"
    elif case == "no_pairs":
        shutil.rmtree(sub / "pairs" / "random")
        pairs = None
        match = "random.*has no pairs.*notebook 04"
    else:
        cfg = _cfg(lora_targets=("qkv",))
        match = "matches no linear module"
    with pytest.raises(LoraTargetError if case == "bad_target" else D.DpoInputError, match=match):
        D.train_strategies(sub, cfg, pairs=pairs, progress=False)
    assert not (sub / "adapters").exists()                                # nothing trained, nothing written


def _png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_unknown_strategy_is_a_config_error():
    from m3po_utils.config import ConfigError

    with pytest.raises(ConfigError, match="dpo.strategies"):
        load_preset("smoke", {"dpo.strategies": ["m3po", "dpo_magic"]})
    with pytest.raises(ConfigError, match="dpo.loss_weights"):
        load_preset("smoke", {"dpo.loss_type": ["sigmoid", "sft"], "dpo.loss_weights": [1.0]})


def _wait_for(predicate, proc, timeout=600.0):
    import time

    t0 = time.monotonic()
    while not predicate():
        assert proc.poll() is None, "the training process ended before the kill point"
        assert time.monotonic() - t0 < timeout, "kill point not reached"
        time.sleep(0.05)


def test_killed_training_resumes_to_the_same_adapters(run, trained, tmp_path):
    """Kill -9 notebook 05's training inside the first adapter, then again between two adapters: the resumed run
    trains only what is missing, and every adapter is byte-identical to an uninterrupted run's."""
    import shutil
    import signal
    import subprocess
    import sys

    copy = tmp_path / "run"
    copy.mkdir()
    for rel in ("models", "pairs"):
        shutil.copytree(run / rel, copy / rel)
    shutil.copy2(run / "config.json", copy / "config.json")
    script = ("from m3po_utils import dpo as D; from m3po_utils.config import load_preset; "
              f"D.train_strategies({str(copy)!r}, load_preset('smoke'), progress=False)")
    order = list(trained)
    adapters = copy / "adapters"

    def temp(s):
        return list(adapters.glob(f".{s}.*")) if adapters.is_dir() else []

    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: temp(order[0]), proc)                               # point 1: inside the first adapter
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not any(D.adapter_complete(adapters / s) for s in order)

    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: D.adapter_complete(adapters / order[0]) and temp(order[1]), proc)   # point 2: between
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    resumed = D.train_strategies(copy, _cfg(), progress=False)
    assert resumed[order[0]].get("skipped") and not any(resumed[s].get("skipped") for s in order[1:])
    for s in order:
        for name in (D.ADAPTER_FILE, D.LOG_FILE):
            assert (adapters / s / name).read_bytes() == (D.adapters_dir(run, s) / name).read_bytes(), (s, name)
    assert not list(adapters.glob(".*"))                                   # the killed runs' temporary folders


def test_a_truncated_adapter_is_set_aside_and_retrained(run, trained, tmp_path):
    import shutil

    copy = tmp_path / "run"
    copy.mkdir()
    for rel in ("models", "pairs", "adapters"):
        shutil.copytree(run / rel, copy / rel)
    shutil.copy2(run / "config.json", copy / "config.json")
    weights = D.adapters_dir(copy, "m3po") / D.ADAPTER_FILE
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    again = D.train_strategies(copy, _cfg(), progress=False)
    assert not again["m3po"].get("skipped") and all(again[s].get("skipped") for s in again if s != "m3po")
    assert weights.read_bytes() == good                                    # retrained to the same adapter
    aside = [p for p in (copy / "adapters").iterdir() if p.name.startswith("m3po.corrupt-")]
    assert len(aside) == 1 and len((aside[0] / D.ADAPTER_FILE).read_bytes()) == len(good) // 2


def test_validation_prompts_ask_existence_both_ways():
    cfg = load_preset("shapes")
    scenes = W.make_splits(cfg.world)["pref"][-100:]
    rows = D.validation_prompts(scenes, cfg.world)
    assert len(rows) == 100 * len(W.FAMILIES)
    answers = [W.verify(s, ins.text, ins.reference, cfg.world).score == 1.0 for s, ins in rows]
    assert all(answers)
    exist = [ins.reference for _, ins in rows if ins.family == "existence"]
    yes = sum(r.startswith("Yes") for r in exist) / len(exist)
    assert 0.35 < yes < 0.65                 # not all "No": a model that only says "No" scores half


def test_a_reference_mismatch_is_explained_in_words():
    from m3po_utils.dpo import mismatch_reason
    eos = 2
    assert mismatch_reason([2], [], eos).startswith("an empty answer")
    assert mismatch_reason([5, 6], [5, 6], eos).startswith("no end-of-sequence token")
    assert mismatch_reason([5, 6, 2], [5, 7, 8, 2], eos) == "the text re-tokenises into 4 tokens, not the 3 sampled"
    assert mismatch_reason([5, 6, 2], [5, 7, 2], eos) == "the text re-tokenises into other tokens of the same count"
