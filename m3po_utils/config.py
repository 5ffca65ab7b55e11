"""Typed presets for the M3PO notebook series.

A preset is a frozen tree of dataclasses. Every field is checked when the object is built, so a typo or an
out-of-range value fails at once with a message that names the field and what is allowed. Overrides use dotted
keys (``world.n_train=400``) from the runner's ``-p`` flag or from papermill's ``overrides`` parameter.

Secrets never live here: the judge's API key is read from the environment (``OPENAI_API_KEY``) by the code
that calls the judge, and ``config.json`` in a run directory holds only what is below.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import math
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from pydantic import ConfigDict, TypeAdapter, ValidationError

from m3po_utils import rules
from m3po_utils.io import atomic_write_text
from m3po_utils.rules import CONFIDENCE_KINDS


class ConfigError(ValueError):
    """A preset, an override or a run directory that cannot be used; the message says how to fix it."""


def _check(cond: bool, name: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{name}={value!r} is not allowed: {allowed}")


@dataclass(frozen=True)
class WorldConfig:
    """The procedural shapes world (see ``world.py``)."""

    image_size: int = 96
    grid: int = 3
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "hexagon")
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
    min_objects: int = 1
    max_objects: int = 4
    # Co-occurrence prior: when the first shape of a pair is in a scene, the second is added with
    # probability ``partner_prob``. A model trained on such scenes learns to expect (and hallucinate) the partner.
    partners: tuple[tuple[str, str], ...] = (("circle", "square"), ("triangle", "star"), ("heart", "diamond"),
                                             ("cross", "hexagon"))
    partner_prob: float = 0.5
    # Share of objects drawn faint (small, washed out): evidence a model can miss, where the prior takes over.
    # Off by default: at 0.1-0.3 the tiny LLaVA's yes/no colour answers fall to chance (docs/history.md, the calibration of 2026-12-01).
    faint_prob: float = 0.0
    n_train: int = 6000
    n_pref: int = 1300   # 1200 preference prompts + 100 validation scenes (prompts.n_validation)
    n_eval: int = 400
    # Further evaluation scenes drawn *after* the training split (their own random stream, avoiding every other
    # scene): raising it leaves the preference and training scenes — and so the base model — as they are, and
    # the first ``n_eval`` evaluation scenes too. Raising ``n_eval`` instead redraws every split.
    n_eval_extra: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        _check(32 <= self.image_size <= 512, "world.image_size", self.image_size, "an integer in [32, 512]")
        _check(2 <= self.grid <= 5, "world.grid", self.grid, "an integer in [2, 5]")
        _check(self.image_size % self.grid == 0, "world.image_size", self.image_size,
               f"a multiple of world.grid={self.grid} so that every cell is one image patch")
        _check(len(self.shapes) >= 3 and len(set(self.shapes)) == len(self.shapes), "world.shapes", self.shapes,
               "at least 3 distinct shape names")
        _check(len(self.colors) >= 2 and len(set(self.colors)) == len(self.colors), "world.colors", self.colors,
               "at least 2 distinct colour names")
        _check(1 <= self.min_objects <= self.max_objects, "world.min_objects", self.min_objects,
               f"an integer in [1, max_objects={self.max_objects}]")
        _check(self.max_objects <= min(self.grid * self.grid, len(self.shapes)), "world.max_objects",
               self.max_objects, "at most the number of grid cells and of shapes (a scene never repeats a shape)")
        for pair in self.partners:
            _check(len(pair) == 2 and all(s in self.shapes for s in pair) and pair[0] != pair[1],
                   "world.partners", pair, f"pairs of two different shapes from {self.shapes}")
        _check(0.0 <= self.partner_prob <= 1.0, "world.partner_prob", self.partner_prob, "a float in [0, 1]")
        _check(0.0 <= self.faint_prob <= 1.0, "world.faint_prob", self.faint_prob, "a float in [0, 1]")
        for name in ("n_train", "n_pref", "n_eval"):
            _check(getattr(self, name) >= 1, f"world.{name}", getattr(self, name), "a positive integer")
        _check(isinstance(self.n_eval_extra, int) and self.n_eval_extra >= 0, "world.n_eval_extra",
               self.n_eval_extra, "an integer >= 0")


LVLM_ARCHITECTURES = ("llava", "qwen2_5_vl")


@dataclass(frozen=True)
class LvlmTrainConfig:
    """Size and SFT schedule of the shapes world's tiny LLaVA (ignored by hub presets)."""

    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_intermediate: int = 384
    vision_hidden: int = 96
    vision_layers: int = 2
    vision_heads: int = 4
    vocab_size: int = 768
    steps: int = 3000
    batch_size: int = 48
    lr: float = 2e-3
    warmup_steps: int = 100
    # AdamW's decoupled weight decay in the base's SFT step
    weight_decay: float = 0.01
    aux_weight: float = 1.0
    existence_weight: float = 3.0
    # share of a yes/no answer's loss on its first ("Yes"/"No") token; the justification shares the rest
    lead_weight: float = 0.5
    # Share of training scenes whose answers describe the scene *plus* an absent co-occurrence mate
    # (``world.annotated``): the caption noise that teaches the prior. The images and the per-cell targets stay true.
    # With strong grounding (aux_weight 1.0) it is what puts the base's POPE errors where the prior is, and what
    # training on the truth can undo (docs/history.md, the recalibrations of 2026-12-02).
    annotation_noise: float = 0.9
    # Weight of grounding each occupied cell's image token in the words of its position name ("top", "left"):
    # the language model's rotary positions shift with the question's length, so the image token itself must
    # say where it is for "Is the circle at the top left?" to be answerable by comparison (docs/history.md, the recalibrations of 2026-12-02).
    position_grounding: float = 1.0
    eval_every: int = 1000
    # "bf16": the training step's forward runs under bfloat16 autocast (weights, gradients and the optimiser stay
    # float32) with eager attention: 1.8x faster steps on an AVX-512-BF16 CPU (benchmarks/bench_base_training.py);
    # "fp32": plain float32. Inference in every later stage is float32 either way.
    precision: str = "bf16"
    seed: int = 0
    # the LVLM class notebook 00 builds: "llava" (LlavaForConditionalGeneration) or "qwen2_5_vl"
    # (Qwen2_5_VLForConditionalGeneration); every later stage runs on either through the same code
    architecture: str = "llava"

    def __post_init__(self) -> None:
        _check(self.architecture in LVLM_ARCHITECTURES, "lvlm_train.architecture", self.architecture,
               f"one of {LVLM_ARCHITECTURES}")
        for name in ("text_hidden", "text_layers", "text_heads", "text_intermediate", "vision_hidden",
                     "vision_layers", "vision_heads", "steps", "batch_size", "eval_every"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"lvlm_train.{name}",
                   getattr(self, name), "a positive integer")
        _check(self.text_hidden % self.text_heads == 0, "lvlm_train.text_heads", self.text_heads,
               f"a divisor of text_hidden={self.text_hidden}")
        _check(self.vision_hidden % self.vision_heads == 0, "lvlm_train.vision_heads", self.vision_heads,
               f"a divisor of vision_hidden={self.vision_hidden}")
        _check(128 <= self.vocab_size <= 8192, "lvlm_train.vocab_size", self.vocab_size, "an integer in [128, 8192]")
        _check(0 < self.lr < 1, "lvlm_train.lr", self.lr, "a float in (0, 1)")
        _check(0 <= self.warmup_steps < self.steps, "lvlm_train.warmup_steps", self.warmup_steps,
               f"an integer in [0, steps={self.steps})")
        _check(0 <= self.weight_decay < 1, "lvlm_train.weight_decay", self.weight_decay, "a float in [0, 1)")
        _check(self.aux_weight >= 0, "lvlm_train.aux_weight", self.aux_weight, "a float >= 0")
        _check(0 <= self.lead_weight <= 1, "lvlm_train.lead_weight", self.lead_weight, "a float in [0, 1]")
        _check(0 <= self.annotation_noise <= 1, "lvlm_train.annotation_noise", self.annotation_noise,
               "a float in [0, 1]")
        _check(self.position_grounding >= 0, "lvlm_train.position_grounding", self.position_grounding,
               "a float >= 0")
        _check(self.precision in ("bf16", "fp32"), "lvlm_train.precision", self.precision, "'bf16' or 'fp32'")
        _check(self.existence_weight > 0, "lvlm_train.existence_weight", self.existence_weight, "a float > 0")


@dataclass(frozen=True)
class ClipTrainConfig:
    """Size and contrastive schedule of the shapes world's tiny CLIP (ignored by hub presets)."""

    embed_dim: int = 64
    vision_width: int = 96
    vision_layers: int = 2
    text_width: int = 96
    text_layers: int = 2
    text_heads: int = 4
    context_length: int = 48
    steps: int = 800
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("embed_dim", "vision_width", "vision_layers", "text_width", "text_layers", "text_heads",
                     "context_length", "steps", "batch_size"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"clip_train.{name}",
                   getattr(self, name), "a positive integer")
        _check(self.batch_size >= 2, "clip_train.batch_size", self.batch_size,
               "at least 2 (a contrastive batch needs negatives)")
        _check(self.text_width % self.text_heads == 0, "clip_train.text_heads", self.text_heads,
               f"a divisor of text_width={self.text_width}")
        _check(0 < self.lr < 1, "clip_train.lr", self.lr, "a float in (0, 1)")


# The preference prompts' family mix (``generation.family_weights``); ``shapes.prompts`` checks the family names.
# Chosen on calibration scenes (tools/calibrate_base.py, another draw of the world; docs/history.md, "The preference mix"):
# the MME-style yes/no families at 8 % each (were 3-4 %) and descriptions at 16 % (were 30 %). Under the old mix
# only 9 % of the prompts asked what MME asks, and training on the truth moved the MME-style total by +11 on the
# default base; with this mix by +33 (POPE-adversarial F1 +4.5 -> +5.2 points). The old mix is in LEGACY_VALUES.
# Questions with IFEval-style constraints (``ifeval``) and two-turn follow-ups (``dialogue``) were added at weight
# 0.10 each on top (the others are normalised with them), so that a preference rule has pairs to teach them from.
PREF_FAMILY_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("describe", 0.16), ("existence", 0.2), ("color", 0.06), ("count", 0.06), ("position", 0.06),
    ("fmt_one_word", 0.055), ("fmt_list", 0.055), ("fmt_start", 0.055), ("fmt_max_words", 0.055),
    ("yn_position", 0.08), ("yn_color", 0.08), ("yn_count", 0.08), ("ifeval", 0.10), ("dialogue", 0.10),
)


@dataclass(frozen=True)
class GenerationConfig:
    """Stage 01: N sampled candidates per preference prompt (paper: N = 32 at a moderate temperature)."""

    n_candidates: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0            # 0 = off (pure temperature sampling); transformers' own default would be 50
    max_new_tokens: int = 48
    batch_size: int = 256     # sequences per generate() call (prompts x candidates), bounds memory
    n_prompts: int = 1200     # preference prompts (at most one per preference scene in the shapes world)
    # Hub presets: a JSON-lines file of {"image": path, "instruction": text} preference prompts.
    prompts_file: str = ""
    # Shapes world: how often each instruction family is drawn for a preference prompt, as (family, weight) pairs
    # (weights are normalised; a family left out is never drawn). Hub presets take their prompts from the file.
    family_weights: tuple[tuple[str, float], ...] = PREF_FAMILY_WEIGHTS
    seed: int = 0

    def __post_init__(self) -> None:
        names = [f for f, _ in self.family_weights]
        _check(len(names) == len(set(names)), "generation.family_weights", self.family_weights,
               "each family at most once")
        _check(all(w >= 0 for _, w in self.family_weights) and sum(w for _, w in self.family_weights) > 0,
               "generation.family_weights", self.family_weights, "weights >= 0 with a positive sum")
        _check(isinstance(self.n_candidates, int) and self.n_candidates >= 2, "generation.n_candidates",
               self.n_candidates, "an integer >= 2 (a preference pair needs two candidates)")
        _check(0 < self.temperature <= 5, "generation.temperature", self.temperature, "a float in (0, 5]")
        _check(0 < self.top_p <= 1, "generation.top_p", self.top_p, "a float in (0, 1]")
        _check(self.top_k >= 0, "generation.top_k", self.top_k, "an integer >= 0 (0 turns it off)")
        _check(self.max_new_tokens >= 1, "generation.max_new_tokens", self.max_new_tokens, "a positive integer")
        _check(self.batch_size >= 1, "generation.batch_size", self.batch_size, "a positive integer")
        _check(self.n_prompts >= 1, "generation.n_prompts", self.n_prompts, "a positive integer")


@dataclass(frozen=True)
class MasConfig:
    """Stage 02: the Multimodal Alignment Score, MAS = w_clip * clip_norm + w_judge * judge_norm (in [0, 1])."""

    # Chosen on the shapes preset's validation candidates (notebook 02, docs/findings.md, "MAS weights"): the judge's 1-10
    # scores tie for most prompts, and a small CLIP share breaks those ties towards truly worse rejected answers;
    # 0.3 and more lets CLIP overturn the judge. Hub presets inherit it (no verifier there to tune on).
    clip_weight: float = 0.1
    judge_weight: float = 0.9
    judge_mode: str = "listwise"       # "pointwise": one request per candidate; "listwise": one per prompt
    judge_noise: float = 0.0           # shapes-world judge only: std of the noise added to its 1-10 score
    # shapes-world judge only: the share of a yes/no answer's score its yes/no carries (0.5: a right "Yes" with a
    # wrong clause after it scores half); the ground truth (mas.truth, the oracle) keeps 0.5 whatever this is
    verdict_weight: float = 0.5
    # Notebook 02's judge-noise sweep (shapes world): noise levels re-scored through the cached judge.
    noise_sweep: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    # How cosine similarity becomes a [0, 1] CLIP score (see mas.normalise_clip): "run" = one affine map for
    # the whole run (5th / 95th percentile -> 0 / 1, clipped), "prompt" = min-max within each prompt,
    # "cosine" = (cos + 1) / 2.
    clip_norm: str = "run"
    prompt_version: str = "v1"
    concurrency: int = 4
    max_retries: int = 4
    timeout_s: float = 60.0
    # Give a broken judge up after this many consecutive failures of one kind (or 90 % of 5x as many): a wrong
    # key, an unknown model or a dead URL costs that many requests, not one per prompt. 0 = never.
    judge_fail_after: int = 8
    # The longest one judge request may take, retries and a reply that trickles in included (0 = no limit; the
    # read timeout above restarts with every byte, so it cannot stop a trickle).
    request_deadline_s: float = 90.0
    # The longest one stage may spend judging (notebook 02, notebook 06's judge score; 0 = no limit). The shapes
    # world's judge answers a stage in seconds; the hub presets, which may send thousands of requests, set 0.
    judge_deadline_s: float = 1800.0
    # A judge whose 1-10 scores over all of a stage's candidates spread (standard deviation) no more than this tells
    # the candidates apart no better than a constant: notebook 02 stops instead of ranking by it. 0 = never stop
    # (a real judge that legitimately gives every candidate of a small stage one score).
    min_judge_spread: float = 0.05
    # Notebook 02 counts as done only if at most this share of the candidates is left without a MAS.
    max_missing: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.clip_weight >= 0 and self.judge_weight >= 0 and self.clip_weight + self.judge_weight > 0,
               "mas.clip_weight", (self.clip_weight, self.judge_weight),
               "non-negative weights (clip_weight, judge_weight) that are not both 0")
        _check(self.judge_mode in ("pointwise", "listwise"), "mas.judge_mode", self.judge_mode,
               "'pointwise' or 'listwise'")
        _check(self.judge_noise >= 0, "mas.judge_noise", self.judge_noise, "a float >= 0")
        _check(0 <= self.verdict_weight <= 1, "mas.verdict_weight", self.verdict_weight, "a float in [0, 1]")
        _check(all(v >= 0 for v in self.noise_sweep), "mas.noise_sweep", self.noise_sweep, "floats >= 0")
        _check(self.clip_norm in ("run", "prompt", "cosine"), "mas.clip_norm", self.clip_norm,
               "'run', 'prompt' or 'cosine'")
        _check(self.concurrency >= 1, "mas.concurrency", self.concurrency, "a positive integer")
        _check(self.max_retries >= 0, "mas.max_retries", self.max_retries, "an integer >= 0")
        _check(self.timeout_s > 0, "mas.timeout_s", self.timeout_s, "a float > 0")
        _check(isinstance(self.judge_fail_after, int) and self.judge_fail_after >= 0, "mas.judge_fail_after",
               self.judge_fail_after, "an integer >= 0 (0 = never stop early)")
        _check(0 <= self.max_missing <= 1, "mas.max_missing", self.max_missing, "a share in [0, 1]")
        for name in ("request_deadline_s", "judge_deadline_s", "min_judge_spread"):
            _check(getattr(self, name) >= 0 and not math.isinf(getattr(self, name)), f"mas.{name}",
                   getattr(self, name), "a finite float >= 0 (0 = no limit)")


@dataclass(frozen=True)
class SelectionConfig:
    """Stage 04: the M3P-Score S(Rj) = (MAS(Rw) − MAS(Rj)) − α·max(0, log P(Rw) − log P(Rj) − δ)."""

    alpha: float = 0.5
    delta: float = 0.1
    min_margin: float = 0.05   # skip a prompt whose best pair differs by less MAS than this
    pairs_per_prompt: int = 1
    seed: int = 0
    # log P in the score: "sum" over the answer's tokens (the paper's), "mean" per token (length-normalised; δ is
    # then in nats per token) or "rank" (its rank among the prompt's candidates in [0, 1]; δ in rank units).
    # Notebook 04 shows what the choice changes.
    confidence: str = "sum"
    # Reject only answers whose yes/no verdict differs from the chosen one's (yes/no prompts; the score-based
    # rules): a negative that disagrees on what POPE and MME read, not only on the clause after it.
    opposite_verdict: bool = False

    def __post_init__(self) -> None:
        _check(self.confidence in CONFIDENCE_KINDS, "selection.confidence", self.confidence,
               f"one of {CONFIDENCE_KINDS} (the summed, the per-token or the rank-normalised log P)")
        _check(self.alpha >= 0 and not math.isinf(self.alpha), "selection.alpha", self.alpha,
               "a finite float >= 0 (paper default 0.5)")
        _check(self.delta >= 0 and not math.isinf(self.delta), "selection.delta", self.delta,
               "a finite float >= 0 (paper default 0.1)")
        _check(0 <= self.min_margin < 1, "selection.min_margin", self.min_margin, "a float in [0, 1)")
        _check(self.pairs_per_prompt >= 1, "selection.pairs_per_prompt", self.pairs_per_prompt, "an integer >= 1")
        _check(isinstance(self.opposite_verdict, bool), "selection.opposite_verdict", self.opposite_verdict,
               "True or False")



@dataclass(frozen=True)
class DpoConfig:
    """Stage 05: DPO (TRL's DPOTrainer) with a LoRA adapter, every strategy on the same budget.

    Every strategy in ``strategies`` is trained on the same number of pairs (the smallest strategy's count, or
    ``max_pairs`` when smaller) for the same number of optimizer steps. ``best_of_n`` has no negatives: it is
    trained with the SFT term alone (``loss_type=("sft",)``), the SFT-only control on the chosen responses.
    ``loss_type`` / ``loss_weights`` are TRL's: ``("sigmoid",)`` is plain DPO, ``("sigmoid", "sft")`` adds the
    negative log-likelihood of the chosen response. LoRA targets the language model's ``lora_targets``
    projections; ``lora_projector`` / ``lora_vision`` add the multimodal projector / the vision tower.
    ``reuse_reference``: take the reference log-probs from generation where the re-tokenised text equals the
    sampled tokens, instead of a reference forward pass each step.
    """

    # the pair-selection rules of m3po_utils.rules that the main series trains (each rule's ``main``)
    strategies: tuple[str, ...] = field(default_factory=rules.main_names)
    max_pairs: int = 0            # 0 = all pairs of the smallest strategy
    learning_rate: float = 2e-3    # shapes: chosen on the preference split's validation scenes (notebook 05)
    batch_size: int = 8
    grad_accum: int = 1
    epochs: float = 1.0
    beta: float = 0.1
    loss_type: tuple[str, ...] = ("sigmoid", "sft")
    loss_weights: tuple[float, ...] = (1.0, 1.0)
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    lora_projector: bool = False
    lora_vision: bool = False
    reuse_reference: bool = True
    max_length: int = 1024
    gradient_checkpointing: bool = False   # GPU only; always off on CPU
    seed: int = 0

    def __post_init__(self) -> None:

        known = rules.names()
        _check(len(self.strategies) >= 1 and all(s in known for s in self.strategies)
               and len(set(self.strategies)) == len(self.strategies)
               and any(s not in rules.sft_only_names() for s in self.strategies), "dpo.strategies", self.strategies,
               f"distinct names from {known}, at least one a DPO strategy (best_of_n, the SFT-only "
               "control, is always trained)")
        for name in ("batch_size", "grad_accum", "lora_r", "lora_alpha", "max_length"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"dpo.{name}",
                   getattr(self, name), "a positive integer")
        _check(isinstance(self.max_pairs, int) and self.max_pairs >= 0, "dpo.max_pairs", self.max_pairs,
               "an integer >= 0 (0 = every pair of the smallest strategy)")
        _check(0 < self.learning_rate < 1, "dpo.learning_rate", self.learning_rate, "a float in (0, 1)")
        _check(0 < self.epochs <= 100, "dpo.epochs", self.epochs, "a float in (0, 100]")
        _check(self.beta > 0 and not math.isinf(self.beta), "dpo.beta", self.beta, "a finite float > 0")
        losses = ("sigmoid", "hinge", "ipo", "robust", "sigmoid_norm", "apo_zero", "sft")
        _check(len(self.loss_type) >= 1 and all(t in losses for t in self.loss_type), "dpo.loss_type",
               self.loss_type, f"one or more of TRL's {losses}")
        _check(len(self.loss_weights) == len(self.loss_type) and all(w >= 0 for w in self.loss_weights),
               "dpo.loss_weights", self.loss_weights, f"{len(self.loss_type)} weights >= 0, one per loss_type")
        _check(self.lr_scheduler in ("linear", "cosine", "constant", "constant_with_warmup"), "dpo.lr_scheduler",
               self.lr_scheduler, "'linear', 'cosine', 'constant' or 'constant_with_warmup'")
        _check(0 <= self.warmup_ratio < 1, "dpo.warmup_ratio", self.warmup_ratio, "a float in [0, 1)")
        _check(self.weight_decay >= 0, "dpo.weight_decay", self.weight_decay, "a float >= 0")
        _check(0 <= self.lora_dropout < 1, "dpo.lora_dropout", self.lora_dropout, "a float in [0, 1)")
        _check(len(self.lora_targets) >= 1 and all(isinstance(t, str) and t.isidentifier() for t in self.lora_targets),
               "dpo.lora_targets", self.lora_targets, "module names such as ('q_proj', 'v_proj')")
        for name in ("lora_projector", "lora_vision", "reuse_reference", "gradient_checkpointing"):
            _check(isinstance(getattr(self, name), bool), f"dpo.{name}", getattr(self, name), "True or False")


@dataclass(frozen=True)
class EvaluationConfig:
    """Stage 06: every method on the held-out evaluation split, over several selection / training seeds.

    ``seeds``: seed ``s`` re-runs pair selection (``selection.seed = s``) and DPO training (``dpo.seed = s``); the
    seed equal to the run's own selection and DPO seeds reuses notebook 04's pairs and notebook 05's adapters.
    ``n_scenes``: the first scenes of the evaluation split (0 = all of them). ``bootstrap`` resamples of seeds and
    scenes give the ``ci`` intervals. ``pope_files`` / ``pope_images`` / ``mme_dir``: real benchmark files on
    local disk, evaluated with the same parsers when set: POPE question files (JSON lines or a JSON array, with
    ``pope_images`` their image folder; or lmms-lab parquet, images embedded) and MME (the release folder, its
    zip's nesting, or lmms-lab parquet) — see :mod:`m3po_utils.benchfiles`. ``long_answer_tokens``: the new-token
    budget of the answers that can be long (IFEval-style constraints: a description in capital letters is spelt
    nearly letter by letter by the shapes world's tokenizer, up to ~140 tokens); every other answer gets 48.
    """

    # the SFT base and the main series' rules, in the tables' order (each rule's ``rank``)
    methods: tuple[str, ...] = field(default_factory=lambda: rules.table_order(("base", *rules.main_names())))
    seeds: tuple[int, ...] = (0, 1, 2)
    n_scenes: int = 0
    bootstrap: int = 2000
    ci: float = 0.95
    batch_size: int = 100
    long_answer_tokens: int = 160
    pope_files: tuple[str, ...] = ()
    pope_images: str = ""
    mme_dir: str = ""

    def __post_init__(self) -> None:

        known = ("base", *rules.names())
        _check(len(self.methods) >= 1 and all(m in known for m in self.methods)
               and len(set(self.methods)) == len(self.methods), "evaluation.methods", self.methods,
               f"distinct names from {known}")
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds)
               and all(isinstance(s, int) and s >= 0 for s in self.seeds), "evaluation.seeds", self.seeds,
               "one or more distinct integers >= 0")
        _check(isinstance(self.n_scenes, int) and self.n_scenes >= 0, "evaluation.n_scenes", self.n_scenes,
               "an integer >= 0 (0 = the whole evaluation split)")
        _check(isinstance(self.bootstrap, int) and self.bootstrap >= 100, "evaluation.bootstrap", self.bootstrap,
               "an integer >= 100")
        _check(0.5 <= self.ci < 1, "evaluation.ci", self.ci, "a float in [0.5, 1)")
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1, "evaluation.batch_size",
               self.batch_size, "a positive integer")
        _check(isinstance(self.long_answer_tokens, int) and self.long_answer_tokens >= 1,
               "evaluation.long_answer_tokens", self.long_answer_tokens, "a positive integer")
        json_files = [f for f in self.pope_files if not str(f).lower().endswith(".parquet")]
        _check(not json_files or bool(self.pope_images), "evaluation.pope_images", self.pope_images,
               "the folder of the POPE images when evaluation.pope_files has JSON files (parquet embeds them)")


@dataclass(frozen=True)
class ExperimentsConfig:
    """Notebook 10: the α/δ grid, judge noise, candidate budget and what the negatives add.

    Every point selects pairs, trains one LoRA adapter (on at most ``max_pairs`` pairs; 0 = notebook 05's
    per-strategy count) and answers the evaluation question set, once per seed in ``seeds``. ``noise_levels``:
    MAS from the local judge at these noise levels (CLIP-only and judge-only MAS are always added).
    ``budgets``: candidates per prompt; the first N of the run's candidates, or the run's plus freshly sampled
    ones above its N.
    """

    alphas: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75)
    deltas: tuple[float, ...] = (0.0, 0.1, 0.2)
    noise_levels: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    budgets: tuple[int, ...] = (4, 8, 16, 32)
    seeds: tuple[int, ...] = (0, 1)
    max_pairs: int = 0
    n_scenes: int = 0
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        for name in ("alphas", "deltas", "noise_levels"):
            v = getattr(self, name)
            _check(len(v) >= 1 and len(set(v)) == len(v) and all(x >= 0 and not math.isinf(x) for x in v),
                   f"experiments.{name}", v, "one or more distinct finite floats >= 0")
        _check(len(self.budgets) >= 1 and len(set(self.budgets)) == len(self.budgets)
               and all(isinstance(n, int) and n >= 2 for n in self.budgets), "experiments.budgets", self.budgets,
               "distinct integers >= 2 (a pair needs two candidates)")
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds)
               and all(isinstance(x, int) and x >= 0 for x in self.seeds), "experiments.seeds", self.seeds,
               "one or more distinct integers >= 0")
        for name in ("max_pairs", "n_scenes"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, f"experiments.{name}",
                   getattr(self, name), "an integer >= 0 (0 = the default described above)")
        _check(isinstance(self.bootstrap, int) and self.bootstrap >= 100, "experiments.bootstrap", self.bootstrap,
               "an integer >= 100")


def parse_assessor(spec: str) -> tuple[str, float]:
    """``"yes:0.3"`` → ``("yes", 0.3)``; raises ValueError naming the spec for an unknown one."""
    name, _, value = spec.partition(":")
    kinds = {"truth": False, "clip": False, "self": False, "noise": True, "lownoise": True, "yes": True,
             "short": True, "prior": True, "vw": True}
    if name not in kinds or kinds[name] != bool(value):
        raise ValueError(f"assessor {spec!r} is not one of truth, clip, self, noise:<std>, lownoise:<std>, "
                         "yes:<bonus>, short:<bonus>, prior:<q>, vw:<verdict weight>")
    try:
        x = float(value) if value else 0.0
    except ValueError:
        raise ValueError(f"assessor {spec!r}: {value!r} is not a number") from None
    if not x >= 0 or math.isinf(x) or (name in ("prior", "vw") and x > 1):
        raise ValueError(f"assessor {spec!r}: the value must be finite and >= 0 (at most 1 for prior and vw)")
    return name, x


@dataclass(frozen=True)
class HardNegConfig:
    """Notebook 11: where M3PO's hard negatives help, hurt or change nothing (see :mod:`m3po_utils.hardneg`).

    ``experiments``: which of E1 (SFT weight), E1_options, E1_controls, E2 (pairs at a fixed step count), E3
    (assessors), E4 (α and the units of log P), E5 (the peers' rules) to run. ``sft_weights``: E1's weights of the
    SFT term beside DPO; ``sensitive_weight``: the weight E1_options to E5 train with (E1's most sensitive regime;
    the pilot in issue 37 found 0). ``steps``: optimiser steps of every model (0 = one epoch of the seed's
    best-vs-worst pairs). ``budgets``: E2's pair counts K (all pairs are always added). ``assessors``: E3's (the
    truth is always added; see ``hardneg.parse_assessor``). ``pool_per_seed``: seed s > 0 draws its own candidate
    pool. ``n_scenes``: evaluation scenes (0 = the whole evaluation split). ``other_bases``: run directories of the
    same preset on other base models whose notebook 11 has finished; the map's verdict needs every base.
    """

    experiments: tuple[str, ...] = ("E1", "E1_options", "E1_controls", "E2", "E3", "E4", "E5")
    seeds: tuple[int, ...] = (0, 1, 2)
    sft_weights: tuple[float, ...] = (1.0, 0.1, 0.0)
    sensitive_weight: float = 0.0
    steps: int = 0
    budgets: tuple[int, ...] = (64, 128, 256, 512)
    alphas: tuple[float, ...] = (0.02, 0.05, 0.1, 0.5)
    confidences: tuple[str, ...] = ("sum", "mean", "rank")
    assessors: tuple[str, ...] = ("noise:2", "lownoise:1", "yes:0.3", "prior:0.5", "short:0.5", "self", "clip")
    pool_per_seed: bool = True
    n_scenes: int = 0
    other_bases: tuple[str, ...] = ()
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        known = ("E1", "E1_options", "E1_controls", "E2", "E3", "E4", "E5")
        _check(len(self.experiments) >= 1 and all(e in known for e in self.experiments), "hardneg.experiments",
               self.experiments, f"one or more of {known}")
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds)
               and all(isinstance(x, int) and x >= 0 for x in self.seeds), "hardneg.seeds", self.seeds,
               "one or more distinct integers >= 0")
        _check(len(self.sft_weights) >= 1 and all(w >= 0 and not math.isinf(w) for w in self.sft_weights),
               "hardneg.sft_weights", self.sft_weights, "one or more finite floats >= 0")
        _check(self.sensitive_weight >= 0 and not math.isinf(self.sensitive_weight), "hardneg.sensitive_weight",
               self.sensitive_weight, "a finite float >= 0")
        _check(len(self.budgets) >= 1 and all(isinstance(k, int) and k >= 1 for k in self.budgets),
               "hardneg.budgets", self.budgets, "one or more integers >= 1 (pairs)")
        _check(len(self.alphas) >= 1 and all(a > 0 and not math.isinf(a) for a in self.alphas), "hardneg.alphas",
               self.alphas, "one or more finite floats > 0 (α = 0 is best-vs-worst, always included)")
        _check(len(self.confidences) >= 1 and all(c in rules.CONFIDENCE_KINDS for c in self.confidences),
               "hardneg.confidences", self.confidences, f"one or more of {rules.CONFIDENCE_KINDS}")
        for a in self.assessors:
            try:
                parse_assessor(a)
            except ValueError as exc:
                raise ConfigError(f"hardneg.assessors: {exc}") from None
        for name in ("steps", "n_scenes"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, f"hardneg.{name}",
                   getattr(self, name), "an integer >= 0 (0 = the default described above)")
        _check(isinstance(self.bootstrap, int) and self.bootstrap >= 100, "hardneg.bootstrap", self.bootstrap,
               "an integer >= 100")


ROUND_CRITERIA = ("score", "correct", "pope_adversarial_f1", "mme_total")


@dataclass(frozen=True)
class RoundsConfig:
    """Notebook 07: iterative rounds and an adaptive candidate budget (see :mod:`m3po_utils.rounds`).

    ``rounds``: how many rounds each rule trains (round r samples from round r−1's policy; round 1 from the base,
    i.e. notebook 01's candidates). ``strategies``: the rules, each with its own chain of policies. ``prompts``:
    ``"reuse"`` (every round re-samples the same preference prompts from the new policy) or ``"split"`` (round r
    gets the r-th of ``rounds`` disjoint slices of them). ``sft_weight``: the SFT term beside DPO (the series' own
    is 1). ``steps``: optimiser steps of every round (0 = one epoch of round 1's equal pair budget).
    ``choose_by``: the validation metric the kept round is chosen on (preference-split validation scenes, never
    evaluation). ``heldout_samples``: answers sampled per held-out validation prompt for the KL to the base and
    pass@k. ``n_scenes``: evaluation scenes (0 = the whole split). ``adaptive``: run the adaptive-N comparison;
    ``wave`` candidates per prompt at a time up to ``n_max`` (0 = ``generation.n_candidates``), stopping once
    some candidate has MAS ≥ ``mas_bar`` and another, at least ``gap`` below the best in MAS, has
    log P ≥ log P(best) − ``selection.delta`` (an informative pool: a good answer and a hard negative).
    """

    rounds: int = 3
    strategies: tuple[str, ...] = ("m3po", "best_worst", "random")
    prompts: str = "reuse"
    sft_weight: float = 1.0
    steps: int = 0
    choose_by: str = "score"
    heldout_samples: int = 4
    n_scenes: int = 0
    adaptive: bool = True
    wave: int = 4
    n_max: int = 0
    mas_bar: float = 0.8
    gap: float = 0.3
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        _check(isinstance(self.rounds, int) and 1 <= self.rounds <= 20, "rounds.rounds", self.rounds,
               "an integer in [1, 20]")
        known = [n for n in rules.names() if not rules.rule(n).sft_only]
        _check(len(self.strategies) >= 1 and len(set(self.strategies)) == len(self.strategies)
               and all(s in known for s in self.strategies), "rounds.strategies", self.strategies,
               f"one or more distinct pair rules of {tuple(known)}")
        _check(self.prompts in ("reuse", "split"), "rounds.prompts", self.prompts, "'reuse' or 'split'")
        _check(self.sft_weight >= 0 and not math.isinf(self.sft_weight), "rounds.sft_weight", self.sft_weight,
               "a finite float >= 0 (0: plain DPO)")
        _check(self.choose_by in ROUND_CRITERIA, "rounds.choose_by", self.choose_by, f"one of {ROUND_CRITERIA}")
        for name in ("steps", "n_scenes", "n_max"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, f"rounds.{name}",
                   getattr(self, name), "an integer >= 0 (0 = the default described in RoundsConfig)")
        _check(isinstance(self.heldout_samples, int) and self.heldout_samples >= 1, "rounds.heldout_samples",
               self.heldout_samples, "an integer >= 1")
        _check(isinstance(self.wave, int) and self.wave >= 1, "rounds.wave", self.wave, "an integer >= 1")
        _check(isinstance(self.adaptive, bool), "rounds.adaptive", self.adaptive, "True or False")
        _check(0 <= self.mas_bar <= 1, "rounds.mas_bar", self.mas_bar, "a float in [0, 1] (MAS is in [0, 1])")
        _check(0 <= self.gap <= 1, "rounds.gap", self.gap, "a float in [0, 1]")
        _check(isinstance(self.bootstrap, int) and self.bootstrap >= 100, "rounds.bootstrap", self.bootstrap,
               "an integer >= 100")


@dataclass(frozen=True)
class ModelsConfig:
    """Which models the series uses. ``lvlm`` / ``clip_model`` of ``"local"`` mean the shapes world's own."""

    lvlm: str = "local"
    clip_model: str = "local"
    clip_pretrained: str = ""
    judge_model: str = "shapes-judge"
    # Empty: the shapes world starts its own judge on 127.0.0.1; otherwise an OpenAI-compatible endpoint
    # (``OPENAI_BASE_URL`` in the environment wins over this value). The key always comes from OPENAI_API_KEY.
    judge_base_url: str = ""
    dtype: str = "float32"
    device: str = "auto"

    def __post_init__(self) -> None:
        _check(bool(self.lvlm.strip()), "models.lvlm", self.lvlm, "'local' or a model id / folder")
        _check(bool(self.clip_model.strip()), "models.clip_model", self.clip_model,
               "'local' or an open_clip model name such as 'ViT-L-14'")
        _check(self.dtype in ("float32", "bfloat16", "float16"), "models.dtype", self.dtype,
               "one of 'float32', 'bfloat16', 'float16'")
        _check(self.device in ("auto", "cpu", "cuda"), "models.device", self.device, "one of 'auto', 'cpu', 'cuda'")
        _check(not any(s in self.judge_base_url.lower() for s in ("api_key=", "key=", "token=")),
               "models.judge_base_url", "<redacted>", "an endpoint URL without credentials (set OPENAI_API_KEY)")


LAUNCH_CONFIGS = ("cpu", "gpu", "ddp", "zero2", "zero3")   # shipped accelerate configs (m3po_utils/launch/configs/)


@dataclass(frozen=True)
class LaunchConfig:
    """How stages 01 (sampling) and 05 (DPO) run: in the notebook's kernel (1 process) or under ``accelerate launch``.

    ``candidates_processes`` / ``dpo_processes`` > 1 make the notebook launch the stage's entry point
    (``python -m accelerate.commands.launch -m m3po_utils.launch.candidates|dpo``) with that many processes;
    the prompts are split over them by chunk, the DPO batches by data parallelism (DDP) with ``dpo.batch_size``
    kept as the *global* batch (each process takes ``batch_size / dpo_processes`` pairs a step).
    ``accelerate_config``: a shipped config by name (``cpu``: gloo processes on one machine; ``gpu``: one GPU;
    ``ddp``: one process per GPU; ``zero2`` / ``zero3``: DeepSpeed ZeRO through TRL) or the path of your own;
    ``""`` picks ``ddp`` where CUDA is available and ``cpu`` elsewhere. ``main_port``: the rendezvous port
    (0 = a free one). These settings say *how* a stage runs, not what it computes, so a run directory accepts
    new values for them without a new configuration.
    """

    candidates_processes: int = 1
    dpo_processes: int = 1
    accelerate_config: str = ""
    main_port: int = 0

    def __post_init__(self) -> None:
        for name in ("candidates_processes", "dpo_processes"):
            _check(isinstance(getattr(self, name), int) and 1 <= getattr(self, name) <= 1024, f"launch.{name}",
                   getattr(self, name), "an integer in [1, 1024] (1 = in the notebook's kernel)")
        _check(isinstance(self.main_port, int) and (self.main_port == 0 or 1024 <= self.main_port <= 65535),
               "launch.main_port", self.main_port, "0 (a free port) or a port in [1024, 65535]")
        _check(self.accelerate_config in ("", *LAUNCH_CONFIGS) or self.accelerate_config.endswith((".yaml", ".yml")),
               "launch.accelerate_config", self.accelerate_config,
               f"'' (automatic), one of {LAUNCH_CONFIGS} or the path of an accelerate .yaml config")


@dataclass(frozen=True)
class Preset:
    """A whole, validated configuration of the series."""

    name: str
    world_kind: str = "shapes"
    world: WorldConfig = field(default_factory=WorldConfig)
    lvlm_train: LvlmTrainConfig = field(default_factory=LvlmTrainConfig)
    clip_train: ClipTrainConfig = field(default_factory=ClipTrainConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    mas: MasConfig = field(default_factory=MasConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    experiments: ExperimentsConfig = field(default_factory=ExperimentsConfig)
    hardneg: HardNegConfig = field(default_factory=HardNegConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.world_kind in ("shapes", "hub"), "world_kind", self.world_kind, "'shapes' or 'hub'")
        for name, value in _seeds(self):
            _check(isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED, name, value,
                   f"an integer in [0, {MAX_SEED}] (numpy's and torch's seed range)")
        _check(self.dpo.batch_size % self.launch.dpo_processes == 0, "launch.dpo_processes",
               self.launch.dpo_processes, f"a divisor of dpo.batch_size={self.dpo.batch_size} (the global batch is "
               "split evenly over the processes; change one of the two)")
        if self.world_kind == "shapes":
            _check(self.models.lvlm == "local", "models.lvlm", self.models.lvlm,
                   "'local' in the shapes world (its tiny LLaVA is trained by notebook 00)")
        else:
            for name, names in (("dpo.strategies", self.dpo.strategies), ("evaluation.methods", self.evaluation.methods)):
                _check(not set(names) & set(rules.truth_names()), name, names,
                       f"no {', '.join(rules.truth_names())} outside the shapes world: it ranks candidates by the "
                       "verifier's ground truth, which only the shapes world has")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


MAX_SEED = 2**32 - 1


def _seeds(cfg: Preset) -> list[tuple[str, Any]]:
    """Every seed of a preset, as ``(setting, value)``: the ``seed`` / ``seeds`` fields of the preset and its groups."""
    out: list[tuple[str, Any]] = [("seed", cfg.seed)]
    for f in fields(cfg):
        group = getattr(cfg, f.name)
        if not is_dataclass(group):
            continue
        if hasattr(group, "seed"):
            out.append((f"{f.name}.seed", group.seed))
        for s in getattr(group, "seeds", ()):
            out.append((f"{f.name}.seeds", s))
    return out


def _smoke() -> Preset:
    return Preset(
        name="smoke",
        world=WorldConfig(n_train=400, n_pref=60, n_eval=40),
        lvlm_train=LvlmTrainConfig(text_hidden=64, text_layers=2, text_heads=2, text_intermediate=128,
                                   vision_hidden=64, vision_layers=1, vision_heads=2, steps=60, batch_size=16,
                                   warmup_steps=5, eval_every=30),
        clip_train=ClipTrainConfig(embed_dim=32, vision_width=64, vision_layers=1, text_width=64, text_layers=1,
                                   text_heads=2, steps=30, batch_size=16),
        generation=GenerationConfig(n_candidates=4, max_new_tokens=24, n_prompts=40, batch_size=64),
        dpo=DpoConfig(batch_size=4, max_pairs=16, lora_r=4, lora_alpha=8),
        evaluation=EvaluationConfig(seeds=(0, 1), bootstrap=200, long_answer_tokens=48),
        experiments=ExperimentsConfig(alphas=(0.0, 0.5), deltas=(0.0, 0.1), noise_levels=(0.0, 2.0), budgets=(2, 8),
                                      seeds=(0,), bootstrap=200),
        hardneg=HardNegConfig(experiments=("E1", "E3"), seeds=(0, 1), sft_weights=(0.0,), steps=4, budgets=(4,),
                              assessors=("yes:0.3",), bootstrap=200),
        rounds=RoundsConfig(rounds=2, steps=4, heldout_samples=2, wave=2, bootstrap=200),
    )


def _shapes() -> Preset:
    return Preset(name="shapes")


def _llava_7b() -> Preset:
    return Preset(
        name="llava-1.5-7b",
        world_kind="hub",
        models=ModelsConfig(lvlm="llava-hf/llava-1.5-7b-hf", clip_model="ViT-L-14", clip_pretrained="openai",
                            judge_model="gpt-4o", judge_base_url="", dtype="bfloat16", device="cuda"),
        generation=GenerationConfig(n_candidates=32, temperature=0.9, max_new_tokens=256, batch_size=64,
                                    n_prompts=5000),
        mas=MasConfig(judge_deadline_s=0.0),     # thousands of remote requests: no overall limit on the stage
        # Paper defaults: learning rate 5e-5, batch size 8, one epoch, beta 0.1, plain DPO. The LoRA rank is not
        # stated there; r = 16 / alpha = 32 on q_proj, v_proj is PEFT's customary choice.
        dpo=DpoConfig(learning_rate=5e-5, batch_size=8, epochs=1.0, beta=0.1, loss_type=("sigmoid",),
                      loss_weights=(1.0,), warmup_ratio=0.03, lora_r=16, lora_alpha=32, lora_dropout=0.05,
                      gradient_checkpointing=True, strategies=("m3po", "best_worst", "random", "best_of_n")),
        evaluation=EvaluationConfig(methods=("base", "best_of_n", "random", "best_worst", "m3po")),
    )


def _qwen(base: Preset, name: str) -> Preset:
    """``base`` with the tiny Qwen2.5-VL in place of the tiny LLaVA (same sizes, same training schedule)."""
    return dataclasses.replace(base, name=name,
                               lvlm_train=dataclasses.replace(base.lvlm_train, architecture="qwen2_5_vl"))


def _smoke_qwen() -> Preset:
    return _qwen(_smoke(), "smoke-qwen")


def _shapes_qwen() -> Preset:
    return _qwen(_shapes(), "shapes-qwen")


def _qwen_7b() -> Preset:
    """Qwen2.5-VL-7B-Instruct from a model hub, with the LLaVA-1.5-7B preset's settings for everything else."""
    llava = _llava_7b()
    return dataclasses.replace(llava, name="qwen2.5-vl-7b",
                               models=dataclasses.replace(llava.models, lvlm="Qwen/Qwen2.5-VL-7B-Instruct"),
                               lvlm_train=dataclasses.replace(llava.lvlm_train, architecture="qwen2_5_vl"))


PRESETS = {"smoke": _smoke, "shapes": _shapes, "llava-1.5-7b": _llava_7b, "smoke-qwen": _smoke_qwen,
           "shapes-qwen": _shapes_qwen, "qwen2.5-vl-7b": _qwen_7b}


def _field_types(obj: Any) -> dict[str, Any]:
    return get_type_hints(type(obj))


_EXPECTED = {"int_type": "an integer", "float_type": "a number", "finite_number": "a finite number",
             "string_type": "a string", "bool_type": "True or False", "tuple_type": "a list"}


@functools.cache
def _adapter(typ: Any) -> TypeAdapter:
    # strict: no bool for an int, no "3" for an int, no 2.5 for an int; an int is a valid float
    return TypeAdapter(typ, config=ConfigDict(strict=True, allow_inf_nan=False))


def _tuples(value: Any) -> Any:
    """Lists (from JSON, YAML or the command line) as tuples, recursively: the presets' sequences are tuples."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def _coerce(name: str, value: Any, typ: Any) -> Any:
    """Turn an override (maybe a string from the command line) into ``typ`` or raise a ConfigError.

    Type checking is pydantic's (strict mode); only the messages are ours, so that they name the setting.
    """
    if isinstance(value, str) and typ is not str:
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ConfigError(f"{name}={value!r} is not a valid {getattr(typ, '__name__', typ)} literal") from None
    try:
        return _adapter(typ).validate_python(_tuples(value))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = name + "".join(f"[{i}]" for i in err["loc"])
        expected = _EXPECTED.get(err["type"], err["msg"])
        raise ConfigError(f"{where}={err['input']!r} has the wrong type: expected {expected}") from None


def _apply(obj: Any, overrides: dict[str, Any], prefix: str = "") -> Any:
    """Apply dotted ``overrides`` to a dataclass in one ``replace`` per group, so that fields checked
    against each other (warmup_steps < steps) may be changed together in any order."""
    names = {f.name for f in fields(obj)}
    changes: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        full = f"{prefix}{head}"
        if head not in names or head == "name":
            allowed = sorted(n for n in names if n != "name")
            raise ConfigError(f"unknown setting {full!r}; allowed here: {', '.join(allowed)}")
        current = getattr(obj, head)
        if rest:
            if not is_dataclass(current):
                raise ConfigError(f"{full!r} is a plain value, not a group: use -p {full}=VALUE")
            nested.setdefault(head, {})[rest] = value
        elif is_dataclass(current):
            sub = sorted(f.name for f in fields(current))
            raise ConfigError(f"{full!r} is a group; set one of its fields, e.g. {full}.{sub[0]}=...")
        else:
            changes[head] = _coerce(full, value, _field_types(obj)[head])
    for head, sub in nested.items():
        changes[head] = _apply(getattr(obj, head), sub, prefix=f"{prefix}{head}.")
    return dataclasses.replace(obj, **changes) if changes else obj


def load_preset(name: str, overrides: dict[str, Any] | None = None) -> Preset:
    """Build preset ``name`` and apply dotted ``overrides``; raise ConfigError naming any bad key or value."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return _apply(PRESETS[name](), {str(k): v for k, v in (overrides or {}).items()})


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["world.n_train=400", ...]`` → dict; values stay strings and are typed by :func:`load_preset`."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not KEY=VALUE (for example -p world.n_train=400)")
        out[key.strip()] = value.strip()
    return out


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        elif k != "name" or prefix:
            out[f"{prefix}{k}"] = v
    return out


def config_overrides(data: dict[str, Any]) -> list[tuple[str, str]]:
    """The ``-p KEY=VALUE`` pairs that turn preset ``data["name"]`` into ``data`` (a run directory's config.json):
    what a command needs to continue that run. Values are written as the runner reads them back (strings as they
    are, everything else as a Python literal)."""
    base = _flat(json.loads(load_preset(data["name"]).to_json()))
    out = []
    for key, value in _flat(data).items():
        if key in base and base[key] != value:
            out.append((key, value if isinstance(value, str) else json.dumps(value) if isinstance(value, list)
                        else repr(value)))
    return out


def preset_from_dict(data: dict[str, Any]) -> Preset:
    """Rebuild a Preset from ``to_dict()`` output (e.g. a run directory's config.json)."""
    base = load_preset(data["name"]) if data.get("name") in PRESETS else Preset(name=data.get("name", "custom"))
    flat: dict[str, Any] = {}

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif k != "name" or prefix:
                flat[f"{prefix}{k}"] = v

    walk(data, "")
    return _apply(base, flat)


def setup_run(run_dir: str | Path, preset: str, overrides: dict[str, Any] | None = None) -> tuple[Preset, Path]:
    """Resolve the preset and bind it to ``run_dir``: create it and write ``config.json`` (atomically).

    A run directory remembers the configuration it was made with. Asking for a different one there is an
    error that lists the differences, so that results of two configurations never mix. Only settings both
    versions know are compared: a run directory made before a setting was added is accepted (the setting takes its
    default, which is what that run used) and its ``config.json`` is brought up to date.
    """
    cfg = load_preset(preset, overrides)
    run = Path(run_dir)
    if run.exists() and not run.is_dir():
        raise ConfigError(f"run_dir={str(run)!r} is a file; pass a directory path (it is created if missing)")
    try:
        run.mkdir(parents=True, exist_ok=True)
        probe = run / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"run_dir={str(run)!r} cannot be written ({exc.strerror or exc}); pass a directory "
                          "you can write to") from None
    path = run / "config.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}); delete it or use a new run directory") from None
        new = json.loads(cfg.to_json())
        if not isinstance(old, dict) or old.get("name") != new["name"]:
            what = (f"a {type(old).__name__}, not a configuration" if not isinstance(old, dict)
                    else f"the configuration of preset {old['name']!r}" if old.get("name")
                    else "no preset name: it is not a config.json the series wrote")
            raise ConfigError(f"{path} holds {what}; this run uses preset {preset!r} — use a new run directory "
                              "or restore that file")
        conflicts = _legacy_conflicts(old, cfg)
        if conflicts:
            key = conflicts[0]
            raise ConfigError(
                f"run_dir={str(run)!r} was made before the setting {key} existed, with {key}={LEGACY_VALUES[key]!r}; "
                f"continue it with -p {key}=\"{LEGACY_VALUES[key]!r}\" or use a new run directory")
        diffs = [d for d in _diff(_common(old, new), _common(new, old)) if not d.startswith(HOW_SETTINGS)]
        if diffs:
            raise ConfigChanged(
                f"run_dir={str(run)!r} was created with a different configuration ({'; '.join(diffs[:6])}); "
                "use a new run directory or pass the same preset and overrides",
                [d.split(":")[0] for d in diffs], cfg, run)
        if old != new:   # written by an older version: settings added since take their defaults, dropped ones go
            atomic_write_text(path, cfg.to_json() + "\n")
    else:
        atomic_write_text(path, cfg.to_json() + "\n")
    return cfg, run


HOW_SETTINGS = ("launch.",)   # how a stage runs, not what it computes: a run directory accepts new values


class ConfigChanged(ConfigError):
    """``setup_run`` found the run directory made with other values of ``keys``; ``cfg`` is the one asked for."""

    def __init__(self, message: str, keys: list[str], cfg: Preset, run: Path):
        super().__init__(message)
        self.keys, self.cfg, self.run = keys, cfg, run


# The first notebook that reads each setting (by group, a few by key): a run directory accepts a new value for a
# setting as long as no notebook from that one on has finished with the old value — or they are all about to be
# run again — because no finished output was computed with it.
FIRST_READER: dict[str, int] = {
    "seed": 0, "world_kind": 0, "world": 0, "lvlm_train": 0, "clip_train": 0, "models": 0,
    "models.judge_model": 2, "models.judge_base_url": 2, "generation": 1, "mas": 2, "selection": 2, "dpo": 5,
    "evaluation": 6, "rounds": 7, "experiments": 10, "hardneg": 11,
}


def first_reader(key: str) -> int:
    """The first notebook that reads setting ``key`` (``dpo.learning_rate`` → 5)."""
    return FIRST_READER.get(key, FIRST_READER.get(key.split(".")[0], 0))


def write_config(run: Path, cfg: Preset) -> None:
    """Record ``cfg`` as the run directory's configuration (``config.json``, atomically)."""
    atomic_write_text(Path(run) / "config.json", cfg.to_json() + "\n")


# Settings added with a default other than what the run directories made before them used, with the value those
# runs used: such a run directory continues only with that value (its stages were computed with it).
LEGACY_VALUES: dict[str, Any] = {
    "generation.family_weights": (
        ("describe", 0.3), ("existence", 0.2), ("color", 0.08), ("count", 0.06), ("position", 0.08),
        ("fmt_one_word", 0.04), ("fmt_list", 0.05), ("fmt_start", 0.04), ("fmt_max_words", 0.05),
        ("yn_position", 0.04), ("yn_color", 0.03), ("yn_count", 0.03)),
}


def _legacy_conflicts(old: dict[str, Any], cfg: Any) -> list[str]:
    """The LEGACY_VALUES settings that ``old`` (a run directory's config.json) predates and ``cfg`` sets otherwise."""
    out = []
    for key, value in LEGACY_VALUES.items():
        group, name = key.split(".")
        if isinstance(old.get(group), dict) and name not in old[group] and getattr(getattr(cfg, group), name) != value:
            out.append(key)
    return out


def _common(a: Any, b: Any) -> Any:
    """``a`` restricted to the keys ``b`` also has, recursively (a config.json from another version)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _common(v, b[k]) for k, v in a.items() if k in b}
    return a


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]
