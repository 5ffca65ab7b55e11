"""The second LVLM class: a tiny Qwen2.5-VL built from a config with its own tokenizer and a real processor.

Built, saved with ``save_pretrained`` and reloaded through ``AutoProcessor`` / ``AutoModelForImageTextToText``
(the loader a hub id goes through); the log-probs captured while sampling equal teacher-forced ones; LoRA's
default targets stay on the language model.
"""

import numpy as np
import pytest
import torch

from m3po_utils import shapes as W
from m3po_utils.config import DpoConfig, load_preset
from m3po_utils.models import templates as TT
from m3po_utils.models.generate import sample_candidates, score_responses, suppressed_token_ids
from m3po_utils.models.lora import check_lora_targets
from m3po_utils.models.lvlm import (
    QWEN_IMAGE,
    build_qwen_processor,
    build_tiny_qwen,
    load_lvlm,
    save_lvlm,
    train_qwen_tokenizer,
)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    cfg = load_preset("smoke")
    splits = W.make_splits(cfg.world)
    rng = np.random.default_rng(0)
    corpus = [t for s in splits["train"][:100] for ins in W.instructions_for(s, cfg.world, rng)
              for t in (ins.text, " " + ins.reference)] + ["user", "assistant"] * 20
    tokenizer = train_qwen_tokenizer(corpus, 400)
    processor = build_qwen_processor(tokenizer, cfg.world.image_size, cfg.world.grid)
    model = build_tiny_qwen(tokenizer, cfg.lvlm_train, cfg.world.image_size, cfg.world.grid).eval()
    folder = save_lvlm(model, processor, tmp_path_factory.mktemp("qwen") / "lvlm")
    images = [W.render(s, cfg.world) for s in splits["eval"][:3]]
    return cfg, model, processor, folder, images


def test_one_image_token_per_grid_cell(qwen):
    cfg, model, processor, folder, images = qwen
    assert TT.merged_patches(processor) and TT.n_image_tokens(processor) == cfg.world.grid ** 2
    assert TT.n_image_tokens(processor, images[0]) == cfg.world.grid ** 2
    prompt = TT.prompt_for(processor, "Is there a circle in the image?")
    assert prompt.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Is there a circle")
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = processor(images=images[:1], text=[prompt], return_tensors="pt")["input_ids"][0]
    assert int((ids == processor.tokenizer.convert_tokens_to_ids(QWEN_IMAGE)).sum()) == cfg.world.grid ** 2


def test_save_reload_through_the_auto_classes_gives_identical_logits(qwen):
    cfg, model, processor, folder, images = qwen
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    loaded, proc2 = load_lvlm(str(folder))          # by name, as a hub id is loaded
    assert type(loaded).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(proc2).__name__ == "Qwen2_5_VLProcessor" and proc2.tokenizer.padding_side == "left"
    texts = [TT.prompt_for(processor, q) for q in ("Describe the image.", "How many shapes are in the image?",
                                                    "Is there a star in the image?")]
    processor.tokenizer.padding_side = "left"
    a = processor(images=images, text=texts, return_tensors="pt", padding=True)
    b = proc2(images=images, text=texts, return_tensors="pt", padding=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(model(**a).logits, loaded(**b).logits)


def test_captured_log_probs_equal_teacher_forced_ones(qwen):
    cfg, model, processor, folder, images = qwen
    questions = ["Describe the image.", "Is there a circle in the image?", "How many shapes are in the image?"]
    cands = sample_candidates(model, processor, images, questions, n=4, temperature=1.0, max_new_tokens=10,
                              batch_size=8, seed=0)
    banned = set(suppressed_token_ids(processor))
    assert processor.tokenizer.convert_tokens_to_ids("<|vision_start|>") in banned
    scored = score_responses(model, processor, images, questions, [[c["token_ids"] for c in g] for g in cands],
                             batch_size=5)
    worst = 0.0
    for group, lps in zip(cands, scored, strict=True):
        for c, lp in zip(group, lps, strict=True):
            assert not set(c["token_ids"][:-1]) & banned
            assert len(lp) == len(c["token_ids"])
            worst = max(worst, float(np.abs(np.asarray(c["token_logprobs"]) - lp).max()))
    assert worst < 1e-4, worst


def test_lora_defaults_stay_on_the_language_model(qwen):
    cfg, model, processor, folder, images = qwen
    hits = check_lora_targets(model, DpoConfig())
    assert set(hits) == {"language_model"}
    assert hits["language_model"] and all(n.startswith("model.language_model.") for n in hits["language_model"])
    both = check_lora_targets(model, DpoConfig(lora_projector=True, lora_vision=False))
    assert all(n.startswith("model.visual.merger.") for n in both["multi_modal_projector"])


def test_short_sft_of_the_tiny_qwen_lowers_its_loss():
    """notebook 00's training loop (answer loss + per-cell grounding loss) runs on the Qwen class unchanged."""
    import dataclasses

    from m3po_utils.models import sft as T

    cfg = load_preset("smoke")
    lc = dataclasses.replace(cfg.lvlm_train, architecture="qwen2_5_vl", steps=30, warmup_steps=5, batch_size=16)
    scenes = W.make_splits(cfg.world)["train"][:120]
    model, processor = T.build_base(scenes, cfg.world, lc)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    p_ids, a_ids = T.encode_pair(processor, "Is there a circle in the image?", "No, there is no circle.")
    assert p_ids.count(processor.tokenizer.convert_tokens_to_ids(QWEN_IMAGE)) == cfg.world.grid ** 2
    assert a_ids[-1] == processor.tokenizer.eos_token_id
    history = T.train_base(model, processor, scenes, cfg.world, lc, progress=False)
    first, last = np.mean([h["loss"] for h in history[:5]]), np.mean([h["loss"] for h in history[-5:]])
    assert last < 0.8 * first, (first, last)
    assert history[-1]["aux_loss"] < history[0]["aux_loss"]


def test_an_answer_tokenises_as_generation_produced_it(qwen):
    """What TRL renders for an assistant turn is the prompt's tokens followed by exactly " " + answer + EOS."""
    from m3po_utils.models import sft as T
    from m3po_utils.models.trl_api import trl_texts

    cfg, model, processor, folder, images = qwen
    q, a = "Is there a circle in the image?", "No, there is no circle."
    p_ids, a_ids = T.encode_pair(processor, q, a)
    row = {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
           "chosen": [{"role": "assistant", "content": [{"type": "text", "text": a}]}],
           "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "Yes."}]}], "images": [None]}
    texts = trl_texts(row, processor)
    tok = processor.tokenizer
    assert tok(texts["chosen"], add_special_tokens=False).input_ids == a_ids
    image = processor.image_token
    expanded = texts["prompt"].replace(image, image * TT.n_image_tokens(processor))
    assert tok(expanded, add_special_tokens=False).input_ids == p_ids
