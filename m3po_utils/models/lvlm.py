"""Build, save and load the LVLM (a LLaVA) and its processor.

The shapes world's tiny LLaVA is the real ``transformers`` ``LlavaForConditionalGeneration`` built from a config,
with a byte-level BPE tokenizer trained by ``tokenizers`` on the world's own text and a ``LlavaProcessor`` with a
LLaVA-1.5 style chat template. It is saved with ``save_pretrained`` (safetensors) and loaded back through
``AutoProcessor`` / ``AutoModelForImageTextToText`` — the same :func:`load_lvlm` that loads
``llava-hf/llava-1.5-7b-hf`` from a model hub on a GPU machine.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from m3po_utils.config import LvlmTrainConfig
from m3po_utils.io import AtomicDir

BOS, EOS, PAD, UNK, IMAGE = "<s>", "</s>", "<pad>", "<unk>", "<image>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD, IMAGE]

# LLaVA-1.5's conversation format ("USER: <image>\n{question} ASSISTANT: {answer}</s>"), written as a chat
# template over the structured message format that transformers' processors use.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# CLIP's normalisation constants; the tiny vision tower is trained from scratch, so any fixed pair works.
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


class ModelLoadError(RuntimeError):
    """A model folder that is missing or unusable; the message names it and how to make it."""


def _byte_bpe(texts: Iterable[str], vocab_size: int, special_tokens: list[str]):
    """A ``tokenizers`` byte-level BPE trained on ``texts`` (every pair seen twice or more merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE on ``texts`` and wrap it as a transformers fast tokenizer.

    Byte-level BPE can encode any string (a judge's edited answer, a human's), and training it on the world's
    instructions *and* answers makes the answer words ("Yes", "No", colours, shapes) single tokens.
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _byte_bpe(texts, vocab_size, SPECIAL_TOKENS)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, extra_special_tokens={"image_token": IMAGE})
    fast.padding_side = "left"
    return fast


def build_processor(tokenizer, image_size: int, patch_size: int, feature_select: str = "default"):
    """A ``LlavaProcessor`` for square images of ``image_size`` cut into ``patch_size`` patches.

    ``feature_select`` is LLaVA's ``vision_feature_select_strategy``: "default" drops the vision tower's CLS
    token (one image token per patch), "full" keeps it as one more image token.
    """
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_resize=True, do_center_crop=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=IMAGE_MEAN, image_std=IMAGE_STD, do_convert_rgb=True)
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                          vision_feature_select_strategy=feature_select, num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE, image_token=IMAGE)


def build_tiny_llava(tokenizer, cfg: LvlmTrainConfig, image_size: int, patch_size: int,
                     feature_select: str = "default"):
    """A freshly initialised ``LlavaForConditionalGeneration`` sized by ``cfg``.

    One image patch is one grid cell (``patch_size = image_size // grid``), so each image token carries exactly
    one cell. ``vision_feature_select_strategy="default"`` drops the CLS token, leaving grid² image tokens.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(cfg.seed)
    n_patches = (image_size // patch_size) ** 2 + (1 if feature_select == "full" else 0)
    vision = CLIPVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=4 * cfg.vision_hidden,
                              num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                              image_size=image_size, patch_size=patch_size, num_channels=3,
                              projection_dim=cfg.vision_hidden)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.text_hidden,
                       intermediate_size=cfg.text_intermediate, num_hidden_layers=cfg.text_layers,
                       num_attention_heads=cfg.text_heads, num_key_value_heads=cfg.text_heads,
                       max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       tie_word_embeddings=True, rms_norm_eps=1e-5,
                       # 0.02 (the default, tuned for 4096-wide models) leaves a 128-wide model's attention
                       # uniform for hundreds of steps; 1/sqrt(width) lets it learn where to look.
                       initializer_range=cfg.text_hidden ** -0.5)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE), image_seq_length=n_patches,
                         vision_feature_layer=-1, vision_feature_select_strategy=feature_select,
                         projector_hidden_act="gelu", tie_word_embeddings=True)
    config.pad_token_id = tokenizer.pad_token_id
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def save_lvlm(model, processor, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """``save_pretrained`` model and processor into ``folder`` atomically (safetensors weights)."""

    with AtomicDir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        if extra:
            (tmp / "m3po_training.json").write_text(json.dumps(extra, indent=2, sort_keys=True))
    return Path(folder)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_lvlm(name_or_path: str | Path, dtype: str = "float32", device: str = "auto",
              trust_remote_code: bool = False):
    """Load a LLaVA-class model and its processor through the Auto classes.

    ``name_or_path`` is a local folder written by :func:`save_lvlm` or a model-hub id such as
    ``llava-hf/llava-1.5-7b-hf``. Returns ``(model, processor)`` with the model in eval mode.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = Path(name_or_path)
    looks_local = path.is_absolute() or str(name_or_path).startswith((".", "runs")) or path.exists()
    if looks_local:
        if not path.is_dir():
            raise ModelLoadError(f"model folder {str(path)!r} does not exist; run notebook 00 (or the runner) "
                                 "to train the shapes world's LLaVA, or pass a model-hub id")
        missing = [f for f in ("config.json", "model.safetensors") if not (path / f).exists()]
        if missing:
            raise ModelLoadError(f"model folder {str(path)!r} is incomplete (missing {', '.join(missing)}); "
                                 "delete it and run notebook 00 again")
    torch_dtype = getattr(torch, dtype)
    try:
        processor = AutoProcessor.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(str(name_or_path), dtype=torch_dtype,
                                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"could not load LVLM {str(name_or_path)!r}: {exc}. If it is a local folder, "
                             "delete it and run notebook 00 again; if it is a hub id, check the name and "
                             "that the machine can reach the model hub") from exc
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.unk_token or processor.tokenizer.eos_token
    processor.tokenizer.padding_side = "left"
    model.to(resolve_device(device)).eval()
    return model, processor


def count_parameters(model) -> dict[str, int]:
    """Parameters of the whole model and of its vision tower, projector and language model."""
    parts = {"total": model}
    for name in ("vision_tower", "multi_modal_projector", "language_model"):
        sub = getattr(model, name, None) or getattr(getattr(model, "model", None), name, None)
        if sub is not None:
            parts[name] = sub
    return {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}


# ------------------------------------------------------------------------------- Qwen2.5-VL (the second class)

# Qwen2.5-VL's special tokens and ChatML turns ("<|im_start|>user\n…<|im_end|>\n<|im_start|>assistant\n"); the
# image is "<|vision_start|><|image_pad|><|vision_end|>", the pad token expanded by the processor to one token per
# merged 2 × 2 patch group. Two choices of this project's tiny template, both so that what TRL renders for an
# answer is exactly what the model generated (and the stored log-probs can be reused): an assistant turn's text
# starts with a space (the tiny model is trained on " " + answer, as the tiny LLaVA is) and nothing follows its
# <|im_end|> (Qwen's own template adds "\n" there, a token that generation never produced).
QWEN_PAD, QWEN_EOS, QWEN_IMAGE = "<|endoftext|>", "<|im_end|>", "<|image_pad|>"
QWEN_SPECIAL_TOKENS = [UNK, QWEN_PAD, "<|im_start|>", QWEN_EOS, "<|vision_start|>", "<|vision_end|>", QWEN_IMAGE,
                       "<|video_pad|>"]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %} {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>{% if message['role'] != 'assistant' %}\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_qwen_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE trained on ``texts`` with Qwen2.5-VL's special tokens (no BOS; EOS ends a turn)."""
    from transformers import PreTrainedTokenizerFast

    tok = _byte_bpe(texts, vocab_size, QWEN_SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=QWEN_EOS, pad_token=QWEN_PAD, unk_token=UNK,
        extra_special_tokens={"image_token": QWEN_IMAGE, "video_token": "<|video_pad|>",
                              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"})
    fast.padding_side = "left"
    return fast


def build_qwen_processor(tokenizer, image_size: int, grid: int):
    """A ``Qwen2_5_VLProcessor`` whose merged 2 × 2 patch groups are the world's grid cells.

    The patch side is half a cell (``image_size // grid // 2``), so the processor turns a square image into
    ``(2·grid)²`` patches, merged into ``grid²`` image tokens; ``min_pixels = max_pixels = image_size²`` keeps
    the world's images at their size.
    """
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    patch = image_size // grid // 2
    if patch * 2 * grid != image_size:
        raise ValueError(f"world.image_size={image_size} must be a multiple of 2·grid = {2 * grid} for Qwen2.5-VL "
                         "(each grid cell is one merged 2 × 2 patch group)")
    common = dict(patch_size=patch, merge_size=2, temporal_patch_size=2, image_mean=IMAGE_MEAN, image_std=IMAGE_STD)
    image_processor = Qwen2VLImageProcessor(min_pixels=image_size ** 2, max_pixels=image_size ** 2, **common)
    video_processor = Qwen2VLVideoProcessor(**common)   # the processor class requires one; the series has no video
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                               chat_template=QWEN_CHAT_TEMPLATE)


def build_tiny_qwen(tokenizer, cfg: LvlmTrainConfig, image_size: int, grid: int):
    """A freshly initialised ``Qwen2_5_VLForConditionalGeneration`` sized by ``cfg`` (the sizes LLaVA's uses).

    Vision: ``cfg.vision_layers`` blocks of width ``cfg.vision_hidden``, one attention window spanning the whole
    image (the world's images are small) and full attention in the last block; its patch merger projects to the
    language model's width. Language model: Qwen2 with multimodal RoPE, ``mrope_section`` splitting each head's
    rotary half in Qwen2.5-VL's 2 : 3 : 3 proportion (time, height, width).
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(cfg.seed)
    half = cfg.text_hidden // cfg.text_heads // 2
    hw = half * 3 // 8
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=cfg.vision_layers, hidden_size=cfg.vision_hidden,
                           intermediate_size=4 * cfg.vision_hidden, num_heads=cfg.vision_heads, in_channels=3,
                           patch_size=image_size // grid // 2, spatial_merge_size=2, temporal_patch_size=2,
                           out_hidden_size=cfg.text_hidden, window_size=image_size,
                           fullatt_block_indexes=[cfg.vision_layers - 1]),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=cfg.text_hidden,
                         intermediate_size=cfg.text_intermediate, num_hidden_layers=cfg.text_layers,
                         num_attention_heads=cfg.text_heads, num_key_value_heads=cfg.text_heads,
                         max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [half - 2 * hw, hw, hw]},
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         initializer_range=cfg.text_hidden ** -0.5),
        image_token_id=ids(QWEN_IMAGE), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model
