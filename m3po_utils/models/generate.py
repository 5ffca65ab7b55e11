"""Generation machinery for any LVLM of the adapter's classes: greedy answers, batched sampling with log-probs captured from the raw logits, and teacher-forced scoring."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from m3po_utils.models.templates import image_batch, merged_patches, n_image_tokens, prompt_for
from m3po_utils.progress import Progress


def suppressed_token_ids(processor) -> list[int]:
    """Tokens a response must never contain: the image placeholder (and Qwen's vision markers), padding and BOS."""
    tok = processor.tokenizer
    ids = {tok.convert_tokens_to_ids(processor.image_token), tok.pad_token_id, tok.bos_token_id}
    for name in ("video_token", "vision_start_token", "vision_end_token"):     # Qwen2-VL family's other markers
        if getattr(tok, name, None):
            ids.add(tok.convert_tokens_to_ids(getattr(tok, name)))
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
    for start in Progress.over(starts, "answering", unit="batch", enabled=progress):
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


@contextlib.contextmanager
def quiet_datasets():
    """Silence ``datasets``' progress bars for a moment (a notebook shows its own progress)."""
    from datasets.utils import logging as dlog

    was_on = dlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            dlog.enable_progress_bar()


class GenerationInputError(ValueError):
    """A prompt, image, model or setting that generation cannot use; the message names the value."""


def check_settings(n: int, temperature: float, top_p: float, top_k: int, max_new_tokens: int,
                    batch_size: int) -> None:
    checks = [
        (isinstance(n, int) and n >= 2, f"n_candidates={n!r}", "an integer >= 2 (a preference pair needs two)"),
        (temperature > 0, f"temperature={temperature!r}", "a float > 0"),
        (0 < top_p <= 1, f"top_p={top_p!r}", "a float in (0, 1]"),
        (isinstance(top_k, int) and top_k >= 0, f"top_k={top_k!r}", "an integer >= 0 (0 turns it off)"),
        (isinstance(max_new_tokens, int) and max_new_tokens >= 1, f"max_new_tokens={max_new_tokens!r}",
         "a positive integer"),
        (isinstance(batch_size, int) and batch_size >= 1, f"batch_size={batch_size!r}", "a positive integer"),
    ]
    for ok, what, allowed in checks:
        if not ok:
            raise GenerationInputError(f"{what} is not allowed: {allowed}")


def check_instructions(instructions: Sequence[str]) -> None:
    for q in instructions:
        if not str(q).strip():
            raise GenerationInputError(f"instruction {q!r} is empty")


def check_chat_template(processor) -> None:
    """Raise when the processor has no chat template (the prompt format would be a guess)."""
    if not getattr(processor, "chat_template", None):
        name = getattr(processor.tokenizer, "name_or_path", "") or type(processor).__name__
        raise GenerationInputError(
            f"the processor of model {name!r} has chat_template=None; a LLaVA-class model needs one (LLaVA-1.5: "
            "'USER: <image>\\n{question} ASSISTANT:'), set processor.chat_template or use a chat model")


def context_length(model) -> int | None:
    """The language model's context (``text_config.max_position_embeddings``), None when the config has none."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(cfg, "max_position_embeddings", None)


def _expanded_prompt(processor, instruction: str, image=None) -> str:
    token = processor.image_token
    return prompt_for(processor, instruction).replace(token, token * n_image_tokens(processor, image))


def prompt_lengths(processor, instructions: Sequence[str]) -> list[int]:
    """Tokens of each chat-templated prompt, the image placeholder expanded to its image tokens."""
    texts = [_expanded_prompt(processor, q) for q in instructions]
    return [len(ids) for ids in processor.tokenizer(texts, add_special_tokens=True).input_ids]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def chunk_seed(seed: int, chunk: int) -> int:
    """The RNG seed of prompt chunk ``chunk``: a resumed run samples every chunk as an uninterrupted one does."""
    return int(np.random.SeedSequence([int(seed), int(chunk)]).generate_state(1)[0])


def extract_logprobs(new_tokens: torch.Tensor, logits: Sequence[torch.Tensor], eos_id: int):
    """Per-token log-probs of generated tokens from ``generate``'s raw logits, masked after the first EOS.

    ``new_tokens``: (B, T) ids after the prompt; ``logits``: T tensors (B, V) (``output_logits``). Returns
    ``(logprobs (B, T) float32, lengths (B,), ended_eos (B,))`` where ``lengths`` counts tokens up to and
    including the first EOS (all T when there is none) and log-probs past it are 0.
    """
    steps = len(logits)
    if new_tokens.shape[1] != steps:
        raise ValueError(f"{new_tokens.shape[1]} generated tokens but {steps} logit steps")
    lp = torch.empty(new_tokens.shape, dtype=torch.float32, device=new_tokens.device)
    for t, step_logits in enumerate(logits):  # one (B, V) at a time: no (B, T, V) copy
        lp[:, t] = F.log_softmax(step_logits.float(), dim=-1).gather(1, new_tokens[:, t: t + 1]).squeeze(1)
    is_eos = new_tokens == eos_id
    ended = is_eos.any(dim=1)
    first = is_eos.int().argmax(dim=1)
    lengths = torch.where(ended, first + 1, torch.full_like(first, steps))
    keep = torch.arange(steps, device=new_tokens.device)[None, :] < lengths[:, None]
    return lp * keep, lengths, ended


def _candidate_rows(processor, new_tokens, lp, lengths, ended) -> list[dict]:
    tok = processor.tokenizer
    ids_all = new_tokens.cpu().tolist()
    lp_all = lp.cpu().double().numpy()
    rows = []
    for r, (ids, n, e) in enumerate(zip(ids_all, lengths.cpu().tolist(), ended.cpu().tolist(), strict=True)):
        ids = ids[:n]
        lps = lp_all[r, :n]
        text = tok.decode(ids[:-1] if e else ids, skip_special_tokens=True).strip()
        total = float(lps.sum())
        rows.append({"text": text, "token_ids": ids, "token_logprobs": lps.tolist(), "logprob_sum": total,
                     "logprob_mean": total / n, "length": int(n), "ended_eos": bool(e)})
    return rows


@torch.no_grad()
def sample_candidates(model, processor, images: Sequence, instructions: Sequence[str], n: int,
                      temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, max_new_tokens: int = 48,
                      batch_size: int = 256, seed: int | None = 0) -> list[list[dict]]:
    """``n`` sampled candidates for each (image, instruction), with log-probs read from the raw logits.

    One ``generate`` call holds up to ``batch_size`` sequences: ``batch_size // n`` prompts × ``n`` candidates
    (a prompt's candidates are split over several calls when ``n > batch_size``). ``seed`` seeds torch's RNG for
    the whole call sequence (the global RNG state is restored afterwards); ``None`` leaves it alone.
    Returns, per prompt, ``n`` dicts with ``cand_idx, text, token_ids, token_logprobs, logprob_sum,
    logprob_mean, length, ended_eos``.
    """
    check_settings(n, temperature, top_p, top_k, max_new_tokens, batch_size)
    if len(images) != len(instructions):
        raise GenerationInputError(f"got {len(images)} images but {len(instructions)} instructions")
    check_chat_template(processor)
    check_instructions(instructions)
    tok = processor.tokenizer
    tok.padding_side = "left"
    device = _device(model)
    per_call = max(1, batch_size // n)
    group = min(n, batch_size)
    common = dict(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=int(top_k),
                  num_beams=1, max_new_tokens=int(max_new_tokens), suppress_tokens=suppressed_token_ids(processor),
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, repetition_penalty=1.0,
                  return_dict_in_generate=True, output_logits=True)
    out: list[list[dict]] = [[] for _ in instructions]
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        for start in range(0, len(instructions), per_call):
            idx = list(range(start, min(start + per_call, len(instructions))))
            texts = [prompt_for(processor, instructions[i]) for i in idx]
            inputs = processor(images=[images[i] for i in idx], text=texts, return_tensors="pt",
                               padding=True).to(device, dtype=model.dtype)   # pixels in the model's dtype
            done = 0
            while done < n:
                k = min(group, n - done)
                gen = model.generate(**inputs, num_return_sequences=k, **common)
                new = gen.sequences[:, inputs["input_ids"].shape[1]:]
                lp, lengths, ended = extract_logprobs(new, gen.logits, tok.eos_token_id)
                rows = _candidate_rows(processor, new, lp, lengths, ended)
                for j, i in enumerate(idx):
                    for c, row in enumerate(rows[j * k: (j + 1) * k]):
                        out[i].append({"cand_idx": done + c, **row})
                done += k
    return out


def _supports_mm_outputs(model) -> bool:
    return "mm_encoder_outputs" in inspect.signature(model.forward).parameters and hasattr(model,
                                                                                          "get_image_features")


def response_ids(processor, response: str | Sequence[int]) -> list[int]:
    """Token ids of a response as generation would produce them: ids are kept, text becomes ``" " + text + EOS``
    (the tokenisation of ``models.sft.encode_pair``)."""
    if isinstance(response, str):
        tok = processor.tokenizer
        return tok(" " + response, add_special_tokens=False).input_ids + [tok.eos_token_id]
    ids = [int(i) for i in response]
    if not ids:
        raise GenerationInputError("an empty list of token ids cannot be scored; pass text or at least one id")
    return ids


@torch.no_grad()
def score_responses(model, processor, images, instructions, responses, batch_size: int = 64):
    """Teacher-forced log P(token | image, instruction, earlier tokens) of every response token.

    Two call forms:

    * one prompt: ``score_responses(model, processor, image, "Describe the image.", ["A red circle.", ...])``
      → a list of 1-D arrays, one per response;
    * many prompts: ``images`` and ``instructions`` lists and ``responses`` a list of lists (the responses of
      each prompt) → a list of lists of arrays.

    A response is text (scored as ``" " + text + EOS``) or a list of token ids (scored as given, e.g. the
    ``token_ids`` of a candidate). Sequences are batched ``batch_size`` at a time; each image is encoded once
    per batch for all of its responses (``get_image_features`` → ``mm_encoder_outputs``) and each prompt is
    tokenised once. Prompts are left-padded, responses right-padded and position ids follow the attention mask,
    which is the layout ``generate`` works in, so the numbers match generation-time log-probs.
    """
    single = isinstance(instructions, str)
    if single:
        images, instructions, responses = [images], [instructions], [responses]
    if not (len(images) == len(instructions) == len(responses)):
        raise GenerationInputError(f"got {len(images)} images, {len(instructions)} instructions and "
                                   f"{len(responses)} response lists; pass one of each per prompt")
    if batch_size < 1:
        raise GenerationInputError(f"batch_size={batch_size!r} is not allowed: a positive integer")
    check_chat_template(processor)
    check_instructions(instructions)
    tok = processor.tokenizer
    device = _device(model)
    limit = context_length(model)
    mrope = merged_patches(processor)    # Qwen2-VL family: the image token count follows each image's size
    prompt_ids = [tok(_expanded_prompt(processor, str(q), images[g] if mrope else None),
                      add_special_tokens=True).input_ids for g, q in enumerate(instructions)]
    resp_ids = [[response_ids(processor, r) for r in group] for group in responses]
    for g, (p, group) in enumerate(zip(prompt_ids, resp_ids, strict=True)):
        for r in group:
            if limit is not None and len(p) + len(r) > limit:
                raise GenerationInputError(
                    f"prompt {g} ({len(p)} tokens) plus a response of {len(r)} tokens exceeds the model's context "
                    f"of {limit} tokens (text_config.max_position_embeddings)")
    flat = [(g, j) for g, group in enumerate(resp_ids) for j in range(len(group))]
    use_mm = _supports_mm_outputs(model) and not mrope
    pixels: dict[int, torch.Tensor] = {}
    out: list[list[np.ndarray | None]] = [[None] * len(group) for group in resp_ids]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for start in range(0, len(flat), batch_size):
        batch = flat[start: start + batch_size]
        groups = list(dict.fromkeys(g for g, _ in batch))
        if not mrope:
            for g in groups:
                if g not in pixels:
                    pixels[g] = processor.image_processor(images[g], return_tensors="pt")["pixel_values"][0]
            for g in [g for g in pixels if g not in groups]:
                del pixels[g]
        p_len = max(len(prompt_ids[g]) for g, _ in batch)
        r_len = max(len(resp_ids[g][j]) for g, j in batch)
        ids = torch.full((len(batch), p_len + r_len), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        targets = torch.full((len(batch), r_len), pad, dtype=torch.long)
        for row, (g, j) in enumerate(batch):
            p, r = prompt_ids[g], resp_ids[g][j]
            ids[row, p_len - len(p): p_len] = torch.tensor(p)
            ids[row, p_len: p_len + len(r)] = torch.tensor(r)
            mask[row, p_len - len(p): p_len + len(r)] = 1
            targets[row, : len(r)] = torch.tensor(r)
        keep = torch.arange(p_len - 1, p_len + r_len - 1)
        kwargs: dict[str, Any] = dict(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      logits_to_keep=keep.to(device))
        if mrope:   # the model derives its 3-D positions from ids, grids and mask; patches go in per row
            batch_pixels = image_batch(processor, [images[g] for g, _ in batch])
            kwargs["pixel_values"] = batch_pixels["pixel_values"].to(device=device, dtype=model.dtype)
            kwargs["image_grid_thw"] = batch_pixels["image_grid_thw"].to(device)
            # which tokens are image tokens: without it the model cannot compute its multimodal positions
            kwargs["mm_token_type_ids"] = torch.tensor(processor.create_mm_token_type_ids(ids.tolist()),
                                                       dtype=torch.long, device=device)
        else:       # LLaVA: positions follow the mask; each image is encoded once for all its responses
            kwargs["position_ids"] = ((mask.cumsum(-1) - 1).clamp(min=0)).to(device)
            pv = torch.stack([pixels[g] for g in groups]).to(device=device, dtype=model.dtype)
            if use_mm:
                feats = model.get_image_features(pixel_values=pv, return_dict=True)
                slot = {g: k for k, g in enumerate(groups)}
                per_image = list(feats.pooler_output)
                feats.pooler_output = [per_image[slot[g]] for g, _ in batch]
                kwargs["mm_encoder_outputs"] = {"image": feats}
            else:
                kwargs["pixel_values"] = pv[torch.tensor([groups.index(g) for g, _ in batch])]
        logits = model(**kwargs).logits
        lp = F.log_softmax(logits.float(), dim=-1).gather(2, targets.to(device)[..., None]).squeeze(-1)
        lp = lp.cpu().double().numpy()
        for row, (g, j) in enumerate(batch):
            out[g][j] = lp[row, : len(resp_ids[g][j])]
    return out[0] if single else out
