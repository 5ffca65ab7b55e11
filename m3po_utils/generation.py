"""Generation with a LLaVA-class model: batched answers to (image, instruction) prompts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .training import prompt_for


def suppressed_token_ids(processor) -> list[int]:
    """Tokens a response must never contain: the image placeholder, padding and BOS."""
    tok = processor.tokenizer
    ids = {tok.convert_tokens_to_ids(processor.image_token), tok.pad_token_id, tok.bos_token_id}
    return sorted(i for i in ids if i is not None and i >= 0)


@torch.no_grad()
def greedy_answers(model, processor, images: Sequence, questions: Sequence[str], max_new_tokens: int = 48,
                   batch_size: int = 64, progress: bool = False) -> list[str]:
    """Greedy (deterministic) answers, one per (image, question), batched with left padding."""
    if len(images) != len(questions):
        raise ValueError(f"got {len(images)} images but {len(questions)} questions; pass one image per question")
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be a positive integer")
    processor.tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    out: list[str] = []
    starts = range(0, len(questions), batch_size)
    for start in tqdm(starts, desc="answering", disable=not progress):
        qs = questions[start: start + batch_size]
        prompts = [prompt_for(processor, q) for q in qs]
        inputs = processor(images=list(images[start: start + batch_size]), text=prompts, return_tensors="pt",
                           padding=True).to(device)
        gen = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                             suppress_tokens=suppressed_token_ids(processor),
                             pad_token_id=processor.tokenizer.pad_token_id)
        new = gen[:, inputs["input_ids"].shape[1]:]
        out += [t.strip() for t in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]
    return out
