"""Supervised training of the shapes world's tiny LLaVA (the M3PO base model).

What makes a 1-M-parameter LLaVA learn this world in minutes on two cores:

* **One image token per grid cell** (``patch_size = image_size // grid``), so the language model reads the
  scene cell by cell.
* **An auxiliary per-cell loss** on the projected image tokens: two linear heads predict each cell's shape
  (or "empty") and colour. It makes the image tokens carry the scene before the language model has learnt to
  use them; the heads are dropped after training and never saved.
* **Per-answer loss normalisation**: every answer's token losses are averaged first, then answers are
  averaged, so a short answer weighs as much as a 30-token description. With the usual per-token mean,
  existence answers are a few percent of the gradient and are learnt last. Yes/no answers are justified
  ("No, the circle is blue."), and ``lead_weight`` puts a share of their loss on the deciding first token.
* **Where the mistakes come from**: ``aux_weight`` scales the auxiliary per-cell loss below, the dial of how
  well the model sees (1.0, the default: the image tokens carry the scene). ``annotation_noise`` (default 0.9)
  is the share of training scenes captioned with an absent co-occurrence mate added (``world.annotated``) while
  the image stays true — the noisy captions real LVLMs learn their hallucinations from. Together they give a
  base whose POPE errors are the prior's (a language-side belief over a scene the image tokens do show), which
  training on the truth can undo; a weakly grounded base errs where it does not see, which a language-model
  adapter cannot fix (docs/history.md, the recalibrations of 2026-12-02).
* **Image tokens grounded in the vocabulary**: the tied language-model head must read each occupied cell's
  image token as its shape word and colour word. A question's shape word and the image token of that shape
  then start out similar, which is what "Is there a star?" needs the attention to find. With
  ``position_grounding`` (default 1.0) it also reads as the words of its cell's name ("top", "left"): the
  language model's rotary positions shift with the question's length, so the image tokens must say where they
  are. It lifts open position answers; whether the yes/no colour and position comparisons are learnt still
  depends on the seed (docs/history.md, the recalibrations of 2026-12-02).
* **Mixed precision**: with ``precision="bf16"`` (the default) each step's forward pass runs under bfloat16
  autocast with eager attention — the matrix products are 3x faster in bfloat16 on an AVX-512-BF16 CPU, while
  PyTorch's CPU flash-attention backward is slower in bfloat16 than in float32. Weights, gradients and AdamW's
  state stay float32, and the saved model is float32 with its original attention implementation.
* **A family mix** that over-samples the questions whose answer depends jointly on the question and the image
  (existence, colour, position) — see ``FAMILY_WEIGHTS`` — and batches drawn from one length bucket at a time
  (short answers / descriptions), so that a batch of yes/no questions is not padded to description length.
"""


from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from m3po_utils import dialogue
from m3po_utils import shapes as W
from m3po_utils.config import LvlmTrainConfig, WorldConfig
from m3po_utils.models.lvlm import (
    IMAGE,
    build_processor,
    build_qwen_processor,
    build_tiny_llava,
    build_tiny_qwen,
    train_qwen_tokenizer,
    train_tokenizer,
)
from m3po_utils.models.templates import image_batch, n_image_tokens, prompt_for
from m3po_utils.progress import Progress

# Sampling weight of each instruction family in the SFT mix (existence questions come in yes/no pairs).
LONG_FAMILIES = ("describe", "fmt_list", "fmt_start", "fmt_max_words", "ifeval")


FAMILY_WEIGHTS = {
    "describe": 1.0, "existence": 3.0, "color": 1.5, "count": 1.0, "position": 1.5,
    "fmt_one_word": 0.5, "fmt_list": 0.5, "fmt_start": 0.5, "fmt_max_words": 0.5,
    "yn_position": 1.0, "yn_color": 1.0, "yn_count": 1.0, "ifeval": 1.0, "dialogue": 1.0,
}


# Share of the two-turn SFT examples whose first answer makes a shape up (the follow-up then says it is not there).
# Half, as in the preference prompts, taught a base that denies whatever it is asked about (carried 0.000, follow-ups
# about the shape asked 0.42 on the reference run of issue 40's first calibration); a quarter leaves it the error.
DIALOGUE_MADE_UP = 0.25


# Families whose answers an annotator writes from the scene as a whole (annotation noise reaches these only).
MENTION_FAMILIES = ("describe", "existence", "count", "fmt_list", "fmt_start", "fmt_max_words", "yn_count")


@dataclass
class Example:
    scene: int            # index into the scene list (and the pixel tensor)
    family: str
    question: str
    answer: str


def sft_examples(scenes: Sequence[W.Scene], cfg: WorldConfig, seed: int, annotation_noise: float = 0.0
                 ) -> list[Example]:
    """Every family's instruction for every scene, plus the opposite-polarity existence question.

    With probability ``annotation_noise`` a scene's answers in ``MENTION_FAMILIES`` are written from
    ``world.annotated(scene)`` — the scene plus an absent co-occurrence partner — while the example keeps the true
    scene's image: noisy captions, the source of the prior the preference stage has to correct.
    """
    rng = np.random.default_rng(seed)
    noise_rng = np.random.default_rng([seed, 1])     # its own stream: noise 0 leaves the examples unchanged
    out: list[Example] = []
    for i, scene in enumerate(scenes):
        text_scene = scene
        if annotation_noise > 0 and noise_rng.random() < annotation_noise:
            text_scene = W.annotated(scene, cfg, noise_rng) or scene
        # the annotator mentions the partner (captions, lists, counts, "is there"); questions about one
        # object's colour or position stay about the objects the image shows. Every family is drawn before the
        # opposite-polarity question below, so the random stream (and the examples at noise 0) stay as they were.
        drawn = [W.make_instruction(f, text_scene if f in MENTION_FAMILIES else scene, cfg, rng=rng,
                                    p_hallucinated=DIALOGUE_MADE_UP)
                 for f in W.FAMILIES]
        for ins in drawn:
            out.append(Example(i, ins.family, ins.text, ins.reference))
            if ins.family == "existence":
                # pair every existence question with one of the other polarity on the same image
                present = dict(ins.params).get("shape") in text_scene.shapes()
                pool = [s for s in cfg.shapes if (s in text_scene.shapes()) != present]
                if pool:
                    other = W.existence_instruction(text_scene, pool[rng.integers(len(pool))], cfg)
                    out.append(Example(i, other.family, other.text, other.reference))
    return out


def encode_pair(processor, question: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of prompt (image placeholder expanded) and of ``" " + answer + EOS``.

    Prompt and answer are tokenised separately; the byte-level pre-tokeniser splits at the space that starts
    the answer, so this equals tokenising the whole conversation (tests check it) and equals what
    generation produces after the prompt.
    """
    tok = processor.tokenizer
    image = processor.image_token
    prompt = prompt_for(processor, question).replace(image, image * n_image_tokens(processor))
    p_ids = tok(prompt, add_special_tokens=True).input_ids
    a_ids = tok(" " + answer, add_special_tokens=False).input_ids + [tok.eos_token_id]
    return p_ids, a_ids


def encode_pairs(processor, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """``[encode_pair(processor, q, a) for q, a in pairs]``, fast: each distinct question is templated and
    tokenised once and the answers are tokenised in one batch call (the SFT set has ~80,000 pairs but a few
    hundred distinct questions)."""
    tok = processor.tokenizer
    prompts = {q: encode_pair(processor, q, "")[0] for q in dict.fromkeys(q for q, _ in pairs)}
    answers = tok([" " + a for _, a in pairs], add_special_tokens=False).input_ids if pairs else []
    return [(prompts[q], ids + [tok.eos_token_id]) for (q, _), ids in zip(pairs, answers, strict=True)]


def collate(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (-100 outside the answer)."""
    width = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), -100, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for r, (p, a) in enumerate(pairs):
        seq = p + a
        ids[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = 1
        labels[r, len(p): len(seq)] = torch.tensor(a)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def per_answer_loss(logits: torch.Tensor, labels: torch.Tensor, lead_weight: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Mean over answers of the mean token cross-entropy within each answer.

    ``lead_weight`` (one value w per answer, default 0): the answer's loss is w · CE(first token) + (1 − w) ·
    mean CE(all its tokens). A justified yes/no answer is ~8 tokens, so with a plain mean its deciding
    "Yes"/"No" token would weigh 1/8 of the answer.
    """
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    tok_loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100,
                               reduction="none").view(target.shape)
    valid = (target != -100).float()
    mean = (tok_loss * valid).sum(1) / valid.sum(1).clamp(min=1)
    if lead_weight is None:
        return mean.mean()
    first = torch.zeros_like(valid).scatter_(1, valid.argmax(1, keepdim=True), 1.0) * valid
    lead = (tok_loss * first).sum(1)
    w = lead_weight.to(mean.dtype)
    return (w * lead + (1 - w) * mean).mean()


def cell_targets(scenes: Sequence[W.Scene], cfg: WorldConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell class targets (scenes × cells): shape index + 1 and colour index + 1, 0 for an empty cell and
    -100 (ignored) for a faint object's cell."""
    n = cfg.grid * cfg.grid
    shapes = torch.zeros((len(scenes), n), dtype=torch.long)
    colors = torch.zeros((len(scenes), n), dtype=torch.long)
    for i, s in enumerate(scenes):
        faint = W.faint_cells(s, cfg)
        for o in s.objects:
            # a faint object gets no per-cell target (-100): the model learns it from the text alone
            shapes[i, o.cell] = -100 if o.cell in faint else cfg.shapes.index(o.shape) + 1
            colors[i, o.cell] = -100 if o.cell in faint else cfg.colors.index(o.color) + 1
    return shapes, colors


def token_targets(shape_t: torch.Tensor, color_t: torch.Tensor, scene_idx: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a batch's image tokens flattened scene-major — ``pooler_output`` stacked to (batch, cells, hidden),
    then ``flatten(0, 1)`` — each token's shape class, colour class (``cell_targets`` of its scene) and cell."""
    n = shape_t.shape[1]
    return shape_t[scene_idx].flatten(), color_t[scene_idx].flatten(), torch.arange(n).repeat(len(scene_idx))


def position_words(tokenizer, cfg: WorldConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cell, the first token of each word of its position name (``"top left"`` → `` top``, `` left``), padded
    to the longest name: ``(ids, mask)``, both (cells, words)."""
    names = [W.position_name(c, cfg.grid).split() for c in range(cfg.grid * cfg.grid)]
    width = max(len(n) for n in names)
    ids = torch.zeros((len(names), width), dtype=torch.long)
    mask = torch.zeros((len(names), width))
    for c, words in enumerate(names):
        for k, w in enumerate(words):
            ids[c, k] = tokenizer(" " + w, add_special_tokens=False).input_ids[0]
            mask[c, k] = 1.0
    return ids, mask


def pixel_tensor(processor, scenes: Sequence[W.Scene], cfg: WorldConfig, chunk: int = 256) -> dict[str, torch.Tensor]:
    """Render and preprocess every scene once; the training loop indexes the first dimension (one scene).

    LLaVA: ``pixel_values`` (scenes, 3, H, W). Qwen2-VL family: ``pixel_values`` (scenes, patches, patch dim) — the
    world's images are one size, so every scene has the same patches — and ``image_grid_thw`` (scenes, 3)."""
    out: dict[str, torch.Tensor] = {}
    for start in range(0, len(scenes), chunk):
        imgs = [W.render(s, cfg) for s in scenes[start: start + chunk]]
        batch = image_batch(processor, imgs)
        if "image_grid_thw" in batch:
            batch["pixel_values"] = batch["pixel_values"].view(len(imgs), -1, batch["pixel_values"].shape[-1])
        for k, v in batch.items():    # filled in place: never the chunks and their concatenation at once
            if k not in out:
                out[k] = torch.empty((len(scenes), *v.shape[1:]), dtype=v.dtype)
            out[k][start: start + len(imgs)] = v
    return out


def image_features(model, processor, pixels: dict[str, torch.Tensor], scene_idx: torch.Tensor):
    """``(image_out, extra)``: the vision side's output for these scenes (``pooler_output``: one (cells, hidden)
    tensor per scene) and the extra forward arguments the class needs beside ``mm_encoder_outputs``."""
    if "image_grid_thw" in pixels:    # Qwen2-VL family: patches of the batch concatenated, one grid row each
        grid = pixels["image_grid_thw"][scene_idx]
        out = model.model.get_image_features(pixel_values=pixels["pixel_values"][scene_idx].flatten(0, 1),
                                             image_grid_thw=grid, return_dict=True)
        return out, {"image_grid_thw": grid}
    return model.model.get_image_features(pixel_values=pixels["pixel_values"][scene_idx], return_dict=True), {}


def build_base(train_scenes: Sequence[W.Scene], world_cfg: WorldConfig, cfg: LvlmTrainConfig):
    """Tokenizer (trained on the world's text), processor and an untrained tiny LVLM of the class
    ``cfg.architecture`` names (``llava`` or ``qwen2_5_vl``)."""
    rng = np.random.default_rng(cfg.seed)
    corpus: list[str] = []
    for scene in train_scenes[: min(len(train_scenes), 2000)]:
        for ins in W.instructions_for(scene, world_cfg, rng):
            corpus += [*dialogue.texts(ins.text), " " + ins.reference]
    if cfg.architecture == "qwen2_5_vl":
        corpus += ["user\n", "assistant\n", " Yes", " No"] * 50
        tokenizer = train_qwen_tokenizer(corpus, cfg.vocab_size)
        processor = build_qwen_processor(tokenizer, world_cfg.image_size, world_cfg.grid)
        return build_tiny_qwen(tokenizer, cfg, world_cfg.image_size, world_cfg.grid), processor
    corpus += [f"USER: {IMAGE}\n ASSISTANT:", " Yes", " No"] * 50
    tokenizer = train_tokenizer(corpus, cfg.vocab_size)
    patch = world_cfg.image_size // world_cfg.grid
    processor = build_processor(tokenizer, world_cfg.image_size, patch)
    model = build_tiny_llava(tokenizer, cfg, world_cfg.image_size, patch)
    return model, processor


def _lr_at(step: int, cfg: LvlmTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def train_base(model, processor, scenes: Sequence[W.Scene], world_cfg: WorldConfig, cfg: LvlmTrainConfig,
               eval_fn=None, progress: bool = True) -> list[dict]:
    """SFT of the tiny LLaVA on ``scenes`` with the auxiliary per-cell loss; returns the training history.

    ``eval_fn(model, step)`` (optional) is called every ``cfg.eval_every`` steps and at the end; whatever dict
    it returns is merged into that step's history row (held-out accuracies per family, for example).
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    examples = sft_examples(scenes, world_cfg, cfg.seed, cfg.annotation_noise)
    encoded = encode_pairs(processor, [(e.question, e.answer) for e in examples])
    fam_w = FAMILY_WEIGHTS | {"existence": cfg.existence_weight}
    weights = np.array([fam_w.get(e.family, 1.0) for e in examples])
    weights /= weights.sum()
    pixels = pixel_tensor(processor, scenes, world_cfg)
    shape_t, color_t = cell_targets(scenes, world_cfg)
    hidden = model.config.text_config.hidden_size
    aux = torch.nn.ModuleDict({"shape": torch.nn.Linear(hidden, len(world_cfg.shapes) + 1),
                               "color": torch.nn.Linear(hidden, len(world_cfg.colors) + 1)})
    tok = processor.tokenizer
    word_ids = {w: tok(" " + w, add_special_tokens=False).input_ids[0]
                for w in (*world_cfg.shapes, *world_cfg.colors)}
    shape_word = torch.tensor([0] + [word_ids[s] for s in world_cfg.shapes])
    color_word = torch.tensor([0] + [word_ids[c] for c in world_cfg.colors])
    pos_word, pos_mask = position_words(tok, world_cfg)
    long_mask = np.array([e.family in LONG_FAMILIES for e in examples])
    buckets = [np.flatnonzero(long_mask), np.flatnonzero(~long_mask)]
    bucket_p = np.array([weights[b].sum() for b in buckets])
    bucket_p /= bucket_p.sum()
    params = list(model.parameters()) + list(aux.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    pad = processor.tokenizer.pad_token_id
    attention = model.config._attn_implementation
    bf16 = cfg.precision == "bf16"
    if bf16:   # CPU flash-attention's backward is slow in bfloat16; eager attention is matrix products
        model.set_attn_implementation("eager")
    autocast = torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16, enabled=bf16)
    model.train()
    history: list[dict] = []
    t0 = time.perf_counter()
    name = {"llava": "LLaVA", "qwen2_5_vl": "Qwen2.5-VL"}.get(cfg.architecture, cfg.architecture)
    bar = Progress(cfg.steps, f"training the tiny {name}", enabled=progress)
    try:
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg)
            b = buckets[rng.choice(2, p=bucket_p)]
            idx = rng.choice(b, size=cfg.batch_size, p=weights[b] / weights[b].sum())
            batch = collate([encoded[i] for i in idx], pad)
            scene_idx = torch.tensor([examples[i].scene for i in idx])
            with autocast:
                image_out, extra = image_features(model, processor, pixels, scene_idx)
                feats = torch.stack(list(image_out.pooler_output))            # (B, cells, hidden)
                if extra:   # Qwen2-VL family: which tokens are image tokens, for its multimodal positions
                    extra["mm_token_type_ids"] = torch.tensor(processor.create_mm_token_type_ids(batch["input_ids"].tolist()))
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            mm_encoder_outputs={"image": image_out}, **extra)
                lead_w = torch.tensor([cfg.lead_weight if examples[i].family in W.YES_NO_FAMILIES else 0.0 for i in idx])
                lm_loss = per_answer_loss(out.logits, batch["labels"], lead_w)
                cell_shape, cell_color, cell_of = token_targets(shape_t, color_t, scene_idx)
                flat = feats.flatten(0, 1)
                aux_loss = F.cross_entropy(aux["shape"](flat), cell_shape) + F.cross_entropy(aux["color"](flat), cell_color)
                occupied = cell_shape > 0
                if occupied.any():   # ground the image token in the vocabulary: read it as its shape and colour words
                    logp = F.log_softmax(model.lm_head(flat[occupied]).float(), dim=-1)
                    aux_loss = aux_loss - 0.5 * (logp.gather(1, shape_word[cell_shape[occupied]][:, None])
                                                 + logp.gather(1, color_word[cell_color[occupied]][:, None])).mean()
                    if cfg.position_grounding > 0:   # ... and as the words of its position name
                        cell = cell_of[occupied]
                        lp = logp.gather(1, pos_word[cell]) * pos_mask[cell]
                        aux_loss = aux_loss - cfg.position_grounding * (lp.sum(1) / pos_mask[cell].sum(1)).mean()
                loss = lm_loss + cfg.aux_weight * aux_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            row = {"step": step + 1, "loss": lm_loss.item(), "aux_loss": aux_loss.item(), "lr": _lr_at(step, cfg),
                   "elapsed_s": time.perf_counter() - t0}
            if eval_fn is not None and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
                model.eval()
                row.update(eval_fn(model, step + 1))
                model.train()
            history.append(row)
            bar.update(loss=round(row["loss"], 3), aux=round(row["aux_loss"], 3))
    finally:
        bar.close()
        model.set_attn_implementation(attention)
    model.eval()
    return history
