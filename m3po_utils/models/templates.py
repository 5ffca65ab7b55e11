"""Per-architecture prompt handling: the chat-templated prompt of an instruction, the number of image tokens the
processor expands its placeholder to, and how a batch's images enter the model.

Two LVLM classes are supported: LLaVA (a fixed number of image tokens per image, pixel tensors stacked per image,
position ids that the caller derives from the attention mask) and Qwen2-VL / Qwen2.5-VL (one token per merged
patch group, so the count follows each image's size; patches of a batch concatenated with an ``image_grid_thw``
row per image; multimodal RoPE positions computed by the model from the ids, the grids and the mask).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence

from m3po_utils import dialogue

_FIXED_COUNT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # image processor -> tokens of a blank image


def prompt_for(processor, question: str) -> str:
    """The chat-templated prompt (with one image placeholder, in the first user turn) that ends where the answer
    starts; a dialogue's earlier turns (:mod:`m3po_utils.dialogue`) come before it as chat turns."""
    return processor.apply_chat_template(dialogue.messages(question), add_generation_prompt=True)


def merged_patches(processor) -> bool:
    """True for the Qwen2-VL family (image tokens = merged patch groups, multimodal RoPE)."""
    return hasattr(processor.image_processor, "merge_size")


def n_image_tokens(processor, image=None) -> int:
    """Image tokens the placeholder of one image becomes. LLaVA: fixed by the crop size and patch size. Qwen2-VL
    family: (patches of ``image``) / merge_size²; without an image, a square of the processor's largest size."""
    ip = processor.image_processor
    if merged_patches(processor):
        if image is None:     # asked once per encoded example in training: processed once per image processor
            if ip not in _FIXED_COUNT:
                from PIL import Image

                side = int(math.isqrt(int(ip.size["longest_edge"])))
                _FIXED_COUNT[ip] = n_image_tokens(processor, Image.new("RGB", (side, side)))
            return _FIXED_COUNT[ip]
        grid = ip(images=[image], return_tensors="pt")["image_grid_thw"][0]
        return int(grid.prod()) // ip.merge_size ** 2
    side = ip.crop_size["height"] if getattr(ip, "crop_size", None) else ip.size["shortest_edge"]
    return (side // processor.patch_size) ** 2 + processor.num_additional_image_tokens - (
        1 if processor.vision_feature_select_strategy == "default" else 0)


def image_batch(processor, images: Sequence) -> dict:
    """Pixel inputs for one image per row of a batch, in the model's layout: LLaVA ``pixel_values`` (B, 3, H, W);
    Qwen2-VL family ``pixel_values`` (all rows' patches, concatenated) and ``image_grid_thw`` (B, 3)."""
    out = processor.image_processor(images=list(images), return_tensors="pt")
    keys = ("pixel_values", "image_grid_thw") if merged_patches(processor) else ("pixel_values",)
    return {k: out[k] for k in keys}
