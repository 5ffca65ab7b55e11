"""Per-architecture prompt handling: the chat-templated prompt of an instruction and the number of image tokens the processor expands its placeholder to."""

from __future__ import annotations


def prompt_for(processor, question: str) -> str:
    """The chat-templated prompt (with one ``<image>`` placeholder) that ends where the answer starts."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def n_image_tokens(processor) -> int:
    ip = processor.image_processor
    side = ip.crop_size["height"] if getattr(ip, "crop_size", None) else ip.size["shortest_edge"]
    return (side // processor.patch_size) ** 2 + processor.num_additional_image_tokens - (
        1 if processor.vision_feature_select_strategy == "default" else 0)
