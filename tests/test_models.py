"""Tiny LLaVA: build, tokenisation consistency, save → reload through the Auto classes, clear load errors."""

import numpy as np
import pytest
import torch

from m3po_utils import shapes as W
from m3po_utils.config import load_preset
from m3po_utils.models import sft as T
from m3po_utils.models import templates as TT
from m3po_utils.models.generate import greedy_answers, suppressed_token_ids
from m3po_utils.models.lvlm import IMAGE, ModelLoadError, load_lvlm, save_lvlm


@pytest.fixture(scope="module")
def base():
    cfg = load_preset("smoke")
    splits = W.make_splits(cfg.world)
    model, processor = T.build_base(splits["train"][:200], cfg.world, cfg.lvlm_train)
    return cfg, splits, model, processor


def test_answer_words_are_single_tokens(base):
    cfg, _, _, processor = base
    tok = processor.tokenizer
    for word in (*cfg.world.shapes, *cfg.world.colors, "Yes", "No"):
        assert len(tok(" " + word, add_special_tokens=False).input_ids) == 1, word


def test_one_image_token_per_cell(base):
    cfg, splits, model, processor = base
    assert TT.n_image_tokens(processor) == cfg.world.grid ** 2
    inputs = processor(images=[W.render(splits["train"][0], cfg.world)],
                       text=[TT.prompt_for(processor, "Describe the image.")], return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE)
    assert int((inputs.input_ids == image_id).sum()) == cfg.world.grid ** 2
    assert model.config.image_token_index == image_id


def test_encode_pair_matches_processor_and_whole_conversation(base):
    _, splits, _, processor = base
    scene = splits["train"][3]
    prompt_ids, answer_ids = T.encode_pair(processor, "Is there a star in the image?", "No")
    via_processor = processor(images=[W.render(scene, load_preset("smoke").world)],
                              text=[TT.prompt_for(processor, "Is there a star in the image?")], return_tensors="pt")
    assert via_processor.input_ids[0].tolist() == prompt_ids
    tok = processor.tokenizer
    expanded = TT.prompt_for(processor, "Is there a star in the image?").replace(IMAGE, IMAGE * 9) + " No"
    assert tok(expanded).input_ids + [tok.eos_token_id] == prompt_ids + answer_ids
    assert answer_ids[-1] == tok.eos_token_id


def test_collate_masks_everything_but_the_answer():
    batch = T.collate([([1, 2, 3], [7, 8]), ([1, 2], [9])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 7, 8], [1, 2, 9, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, -100, 7, 8], [-100, -100, 9, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]


def test_annotation_noise_writes_absent_partners_into_the_answers_only():
    cfg = load_preset("smoke")
    scenes = W.make_splits(cfg.world)["train"][:300]
    clean = T.sft_examples(scenes, cfg.world, seed=0)
    assert T.sft_examples(scenes, cfg.world, seed=0, annotation_noise=0.0) == clean
    noisy = T.sft_examples(scenes, cfg.world, seed=0, annotation_noise=1.0)

    def false_mentions(examples):
        """Describe answers naming a shape the example's (true) image does not have."""
        return sum(any(s not in scenes[e.scene].shapes() for s in W.object_mentions(e.answer, cfg.world))
                   for e in examples if e.family == "describe")

    def false_counts(examples):
        return sum(e.answer != str(len(scenes[e.scene].objects)) for e in examples if e.family == "count")

    assert false_mentions(clean) == 0 and false_counts(clean) == 0
    eligible = sum(W.annotated(s, cfg.world, np.random.default_rng(0)) is not None for s in scenes)
    assert false_mentions(noisy) == eligible > 30       # every scene that has a missing partner gets it
    assert false_counts(noisy) == eligible
    for e in noisy:                                      # what is hallucinated is always a co-occurrence partner
        if e.family == "describe":
            extra = set(W.object_mentions(e.answer, cfg.world)) - scenes[e.scene].shapes()
            assert extra <= set(W.missing_mates(scenes[e.scene], cfg.world))
    half = T.sft_examples(scenes, cfg.world, seed=0, annotation_noise=0.5)
    assert 0.3 * eligible < false_mentions(half) < 0.7 * eligible


def test_per_answer_loss_weighs_answers_equally():
    # answer A: 1 token with loss ln(4) (uniform over 4); answer B: 3 tokens with ~0 loss
    logits = torch.zeros((2, 4, 4))
    labels = torch.full((2, 4), -100)
    labels[0, 1] = 2
    for t in (1, 2, 3):
        logits[1, t - 1, 1] = 50.0
        labels[1, t] = 1
    got = T.per_answer_loss(logits, labels).item()
    assert got == pytest.approx(np.log(4) / 2, rel=1e-5)   # a per-token mean would give ln(4)/4


def test_lead_weight_puts_a_share_of_the_answer_loss_on_its_first_token():
    # one answer of 4 tokens: the first has loss ln(4), the other three ~0
    logits = torch.zeros((1, 5, 4))
    labels = torch.full((1, 5), -100)
    labels[0, 1:5] = torch.tensor([2, 1, 1, 1])
    for t in (2, 3, 4):
        logits[0, t - 1, 1] = 50.0
    plain = T.per_answer_loss(logits, labels).item()
    assert plain == pytest.approx(np.log(4) / 4, rel=1e-5)
    assert T.per_answer_loss(logits, labels, torch.tensor([0.0])).item() == pytest.approx(plain, rel=1e-6)
    half = T.per_answer_loss(logits, labels, torch.tensor([0.5])).item()
    assert half == pytest.approx(0.5 * np.log(4) + 0.5 * np.log(4) / 4, rel=1e-5)


def test_cell_targets(base):
    cfg, splits, _, _ = base
    scene = splits["train"][0]
    shapes, colors = T.cell_targets([scene], cfg.world)
    for o in scene.objects:
        assert shapes[0, o.cell] == cfg.world.shapes.index(o.shape) + 1
        assert colors[0, o.cell] == cfg.world.colors.index(o.color) + 1
    assert int((shapes[0] > 0).sum()) == len(scene.objects)


def test_save_reload_identical_logits_and_generation(base, tmp_path):
    cfg, splits, model, processor = base
    folder = save_lvlm(model, processor, tmp_path / "lvlm", extra={"note": 1})
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
    loaded, proc2 = load_lvlm(folder)
    assert type(loaded).__name__ == "LlavaForConditionalGeneration"
    images = [W.render(s, cfg.world) for s in splits["eval"][:3]]
    inputs = processor(images=images, text=[TT.prompt_for(processor, "Describe the image.")] * 3,
                       return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(model.eval()(**inputs).logits, loaded(**inputs).logits)
    questions = ["Describe the image.", "Is there a circle in the image?", "How many shapes are in the image?"]
    a = greedy_answers(model, processor, images, questions, max_new_tokens=6)
    b = greedy_answers(loaded, proc2, images, questions, max_new_tokens=6)
    assert a == b and len(a) == 3


def test_suppressed_tokens_never_generated(base):
    cfg, splits, model, processor = base
    banned = suppressed_token_ids(processor)
    assert processor.tokenizer.convert_tokens_to_ids(IMAGE) in banned and processor.tokenizer.bos_token_id in banned
    images = [W.render(s, cfg.world) for s in splits["eval"][:4]]
    inputs = processor(images=images, text=[TT.prompt_for(processor, "Describe the image.")] * 4,
                       return_tensors="pt", padding=True)
    out = model.generate(**inputs, do_sample=True, top_k=0, temperature=5.0, max_new_tokens=12,
                         suppress_tokens=banned, pad_token_id=processor.tokenizer.pad_token_id)
    new = out[:, inputs.input_ids.shape[1]:]
    eos = processor.tokenizer.eos_token_id
    for row in new.tolist():
        row = row[: row.index(eos)] if eos in row else row
        assert not set(row) & set(banned)


def test_load_errors_name_the_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist; run notebook 00"):
        load_lvlm(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="incomplete"):
        load_lvlm(tmp_path / "half")


def test_greedy_answers_validates_input(base):
    _, _, model, processor = base
    with pytest.raises(ValueError, match="one image per question"):
        greedy_answers(model, processor, [], ["q"])
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        greedy_answers(model, processor, [None], ["q"], max_new_tokens=0)


def test_short_training_lowers_loss(base):
    cfg, splits, _, _ = base
    model, processor = T.build_base(splits["train"][:100], cfg.world, cfg.lvlm_train)
    hist = T.train_base(model, processor, splits["train"][:100], cfg.world, cfg.lvlm_train, progress=False)
    first = np.mean([h["loss"] for h in hist[:5]])
    last = np.mean([h["loss"] for h in hist[-5:]])
    assert last < 0.6 * first


def test_position_words_are_the_words_of_each_cells_name(base):
    cfg, _, _, processor = base
    ids, mask = T.position_words(processor.tokenizer, cfg.world)
    assert ids.shape[0] == cfg.world.grid ** 2
    for cell in range(cfg.world.grid ** 2):
        words = [processor.tokenizer.decode([int(i)]).strip() for i, m in zip(ids[cell], mask[cell], strict=True) if m]
        assert words == W.position_name(cell, cfg.world.grid).split()


def test_image_token_k_is_cell_k_and_the_grounding_targets_follow_it(base):
    cfg, splits, model, processor = base
    grid = cfg.world.grid
    cells, side = grid * grid, cfg.world.image_size // grid
    # the vision tower's patch order is the world's row-major cell order: changing the pixels of cell c changes
    # the patch embedding of image token c only (before attention mixes them; token 0 is CLS, dropped)
    embed = model.model.vision_tower.embeddings
    pixels = torch.zeros((1, 3, cfg.world.image_size, cfg.world.image_size))
    with torch.no_grad():
        ref = embed(pixels)[0, 1:]
        for c in (1, 5, cells - 1):
            r, col = divmod(c, grid)
            moved = pixels.clone()
            moved[..., r * side:(r + 1) * side, col * side:(col + 1) * side] = 1.0
            changed = (embed(moved)[0, 1:] - ref).abs().sum(-1) > 1e-6
            assert changed.nonzero().flatten().tolist() == [c]
    # the per-token targets of a batch line up with feats.flatten(0, 1): token k is cell k % cells of scene k // cells
    scenes = splits["train"][:6]
    shape_t, color_t = T.cell_targets(scenes, cfg.world)
    scene_idx = torch.tensor([4, 0, 4, 2])
    shape, color, cell = T.token_targets(shape_t, color_t, scene_idx)
    for k in range(len(scene_idx) * cells):
        b, c = divmod(k, cells)
        assert int(cell[k]) == c
        assert int(shape[k]) == int(shape_t[scene_idx[b], c]) and int(color[k]) == int(color_t[scene_idx[b], c])
    for b in range(len(scene_idx)):     # the occupied tokens of batch row b are the objects' cells of its scene
        scene = scenes[int(scene_idx[b])]
        rows = slice(b * cells, (b + 1) * cells)
        assert {int(c) for c in cell[rows][shape[rows] > 0]} == {o.cell for o in scene.objects} - W.faint_cells(
            scene, cfg.world)


def test_position_grounding_adds_its_term_to_the_auxiliary_loss(base):
    import copy
    import dataclasses

    cfg, splits, model, processor = base
    scenes = splits["train"][:40]
    short = dataclasses.replace(cfg.lvlm_train, steps=1, warmup_steps=0)
    first = {}
    for weight in (0.0, 1.0):
        hist = T.train_base(copy.deepcopy(model), processor, scenes, cfg.world,
                            dataclasses.replace(short, position_grounding=weight), progress=False)
        first[weight] = hist[0]["aux_loss"]
    # an untrained head gives each position word about 1 / vocabulary: the term adds roughly log(vocab size)
    assert first[1.0] - first[0.0] > 0.5 * np.log(len(processor.tokenizer))


def test_weight_decay_reaches_the_base_optimiser(base):
    import copy
    import dataclasses

    cfg, splits, model, processor = base
    short = dataclasses.replace(cfg.lvlm_train, steps=1, warmup_steps=0, precision="fp32")
    name = next(n for n, _ in model.named_parameters() if n.endswith("language_model.layers.0.mlp.up_proj.weight"))
    start = dict(model.named_parameters())[name].detach().clone()
    after = {}
    for wd in (0.0, 0.5):
        m = copy.deepcopy(model)
        T.train_base(m, processor, splits["train"][:40], cfg.world, dataclasses.replace(short, weight_decay=wd),
                     progress=False)
        after[wd] = dict(m.named_parameters())[name].detach()
    # AdamW's decoupled decay: the same batch and step, so the runs differ by lr * weight_decay * the old weight
    assert torch.allclose(after[0.0] - after[0.5], short.lr * 0.5 * start, atol=1e-6)


def test_precision_sets_the_training_forward_dtype_and_restores_attention(base):
    import copy
    import dataclasses

    cfg, splits, model, processor = base
    short = dataclasses.replace(cfg.lvlm_train, steps=2, warmup_steps=0)
    seen = {}
    for precision in ("bf16", "fp32"):
        m = copy.deepcopy(model)
        before = m.config._attn_implementation
        layer = next(mod for name, mod in m.named_modules() if name.endswith("language_model.layers.0.self_attn.q_proj"))
        dtypes = []     # (output dtype, attention implementation) of every training forward
        handle = layer.register_forward_hook(
            lambda _m, _i, out, d=dtypes, mm=m: d.append((out.dtype, mm.config._attn_implementation)))
        hist = T.train_base(m, processor, splits["train"][:40], cfg.world,
                            dataclasses.replace(short, precision=precision), progress=False)
        handle.remove()
        seen[precision] = set(dtypes)
        assert m.config._attn_implementation == before            # the saved config keeps its attention
        assert all(p.dtype == torch.float32 for p in m.parameters())
        assert np.isfinite(hist[-1]["loss"])
    assert seen == {"bf16": {(torch.bfloat16, "eager")}, "fp32": {(torch.float32, "sdpa")}}


def test_encode_pairs_equals_encode_pair_one_by_one(base):
    cfg, splits, _, processor = base
    examples = T.sft_examples(splits["train"][:30], cfg.world, seed=0, annotation_noise=0.5)
    pairs = [(e.question, e.answer) for e in examples]
    assert len({q for q, _ in pairs}) < len(pairs)          # questions repeat: the cache is exercised
    assert T.encode_pairs(processor, pairs) == [T.encode_pair(processor, q, a) for q, a in pairs]
    assert T.encode_pairs(processor, []) == []
