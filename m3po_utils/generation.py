"""Generation with a LLaVA-class model: greedy answers, sampled candidates with log-probs, teacher-forced scores.

**Candidates (stage 01).** For every preference prompt (image, instruction) M3PO samples N responses from the
base model. :func:`sample_candidates` does it for a batch of prompts in one ``model.generate`` call: each prompt's
inputs are repeated N times (``num_return_sequences``; transformers 5 encodes each image once and repeats its
features), sampled at ``temperature`` with ``top_p`` and ``top_k`` (``top_k=0`` is *off*; it is always passed,
because transformers' own default would be 50).

**Log-probs for free.** ``generate(..., return_dict_in_generate=True, output_logits=True)`` hands back the *raw*
logits of every step — before temperature, top-p, top-k or token suppression touch them. A log-softmax of those
at temperature 1 is log P(token | image, prompt, earlier tokens) under the model itself, which is the confidence
M3PO needs and the reference log-prob DPO needs; the sampling distribution (``output_scores``) would not be.
Tokens after a sequence's first EOS are padding and are dropped.

**Teacher forcing.** :func:`score_responses` computes the same quantity for any response (another model's, a
person's, an edited one) with one forward pass over prompt + response, each image encoded once for all of its
responses. Prompts are left-padded and responses right-padded, so every response starts at the same column, and
position ids come from the attention mask exactly as ``generate`` makes them; the two paths agree to float
rounding (notebook 03 shows the difference).

**Resumable runs.** :func:`generate_candidates` works in chunks of prompts, each seeded from ``(seed, chunk)``
and written as one Parquet shard (atomically) to ``run_dir/candidates.parts/``. A rerun skips finished chunks and
samples the others exactly as an uninterrupted run would; the table ``run_dir/candidates/`` (a ``datasets``
table, ``save_to_disk``) appears only when every chunk is done, so its existence means it is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .io import AtomicDir, atomic_write_json
from .training import prompt_for

CANDIDATES_DIR = "candidates"
PARTS_DIR = "candidates.parts"
MANIFEST = "manifest.json"
INFO_FILE = "generation_info.json"
PROMPT_COLUMNS = ("prompt_id", "image", "scene_id", "family", "instruction", "reference")


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


# ----------------------------------------------------------------------------------------------- the table

def candidate_features():
    """The ``datasets`` schema of ``run_dir/candidates/``: one row per candidate (notebook 02 reads it)."""
    import datasets as D

    return D.Features({
        "prompt_id": D.Value("string"), "image": D.Value("string"), "scene_id": D.Value("string"),
        "family": D.Value("string"), "instruction": D.Value("string"), "reference": D.Value("string"),
        "cand_idx": D.Value("int64"), "text": D.Value("string"),
        "token_ids": D.List(D.Value("int64")), "token_logprobs": D.List(D.Value("float64")),
        "logprob_sum": D.Value("float64"), "logprob_mean": D.Value("float64"),
        "length": D.Value("int64"), "ended_eos": D.Value("bool"),
    })


def candidates_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CANDIDATES_DIR


def parts_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / PARTS_DIR


def generation_info(run_dir: str | Path) -> dict:
    """What the run that wrote ``run_dir/candidates/`` did: chunks, chunks generated by its last call, seconds."""
    path = candidates_dir(run_dir) / INFO_FILE
    if not path.is_file():
        return {"chunks": 0, "chunks_generated": 0, "seconds": float("nan"), "settings": {}}
    return json.loads(path.read_text())


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


def load_candidates(run_dir: str | Path):
    """The candidates table of ``run_dir`` (a ``datasets.Dataset``); a clear error when notebook 01 has not run."""
    import datasets as D

    folder = candidates_dir(run_dir)
    if not (folder / "state.json").is_file():
        extra = ""
        if parts_dir(run_dir).is_dir():
            extra = f" ({parts_dir(run_dir)} holds an unfinished run: rerun notebook 01 to finish it)"
        raise FileNotFoundError(f"no candidates table in {folder}{extra}; run notebook 01 (candidates) for this "
                                "run directory first")
    return D.load_from_disk(str(folder))


# ----------------------------------------------------------------------------------------------- checks

class GenerationInputError(ValueError):
    """A prompt, image, model or setting that generation cannot use; the message names the value."""


def _check_settings(n: int, temperature: float, top_p: float, top_k: int, max_new_tokens: int,
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


def _check_instructions(instructions: Sequence[str]) -> None:
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


def _expanded_prompt(processor, instruction: str) -> str:
    from .training import n_image_tokens

    token = processor.image_token
    return prompt_for(processor, instruction).replace(token, token * n_image_tokens(processor))


def prompt_lengths(processor, instructions: Sequence[str]) -> list[int]:
    """Tokens of each chat-templated prompt, the image placeholder expanded to its image tokens."""
    texts = [_expanded_prompt(processor, q) for q in instructions]
    return [len(ids) for ids in processor.tokenizer(texts, add_special_tokens=True).input_ids]


def check_prompts(prompts: Sequence[dict]) -> None:
    """Prompt rows need a unique ``prompt_id``, a non-empty ``instruction`` and an ``image`` reference."""
    if not prompts:
        raise GenerationInputError("no prompts given (an empty list); pass at least one preference prompt")
    seen: set[str] = set()
    for i, p in enumerate(prompts):
        pid = str(p.get("prompt_id", f"#{i}"))
        missing = [c for c in ("prompt_id", "image", "instruction") if c not in p]
        if missing:
            raise GenerationInputError(f"prompt {pid!r} lacks {', '.join(missing)}")
        if not str(p["instruction"]).strip():
            raise GenerationInputError(f"prompt {pid!r} has an empty instruction ({p['instruction']!r})")
        if pid in seen:
            raise GenerationInputError(f"prompt_id {pid!r} occurs twice; prompt ids must be unique")
        seen.add(pid)


def check_images(prompts: Sequence[dict], image_loader: Callable[[str], Any]) -> None:
    """Every prompt's image must resolve (a scene of this world or a readable file); the error names it.

    File references are opened and verified without being kept, so a large prompt set is not held in memory.
    """
    from PIL import Image

    scene_of = getattr(image_loader, "scene", None)
    for p in prompts:
        ref = str(p["image"])
        where = f"prompt {p['prompt_id']!r}: image {ref!r}"
        try:
            if ref.startswith("scene:") and scene_of is not None:
                scene_of(ref)
            elif not ref.startswith("scene:") and scene_of is not None:
                path = Path(ref)
                if not path.is_file():
                    raise FileNotFoundError(f"{where} does not exist")
                with Image.open(path) as img:
                    img.verify()
            else:
                image_loader(ref)
        except FileNotFoundError as exc:
            msg = str(exc) if where in str(exc) else f"{where} does not exist ({exc})"
            raise GenerationInputError(msg) from None
        except (KeyError, OSError, ValueError) as exc:
            raise GenerationInputError(f"{where} cannot be read ({type(exc).__name__}: {exc})") from None


def check_context(model, processor, prompts: Sequence[dict], max_new_tokens: int) -> list[int]:
    """Prompt + ``max_new_tokens`` must fit the model's context; returns the prompt lengths."""
    lengths = prompt_lengths(processor, [str(p["instruction"]) for p in prompts])
    limit = context_length(model)
    if limit is not None:
        for p, n in zip(prompts, lengths, strict=True):
            if n + max_new_tokens > limit:
                raise GenerationInputError(
                    f"prompt {p['prompt_id']!r} is {n} tokens long (image tokens included); with "
                    f"max_new_tokens={max_new_tokens} it exceeds the model's context of {limit} tokens "
                    "(text_config.max_position_embeddings): shorten the instruction or lower max_new_tokens")
    return lengths


# ----------------------------------------------------------------------------------------------- sampling

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
    _check_settings(n, temperature, top_p, top_k, max_new_tokens, batch_size)
    if len(images) != len(instructions):
        raise GenerationInputError(f"got {len(images)} images but {len(instructions)} instructions")
    check_chat_template(processor)
    _check_instructions(instructions)
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


# ----------------------------------------------------------------------------------------------- resumable run

def _fingerprint(model, processor, prompts: Sequence[dict], settings: dict) -> str:
    cfg = model.config.to_dict()
    cfg = {k: v for k, v in cfg.items() if "name_or_path" not in k}
    blob = json.dumps({"settings": settings, "prompts": [{c: str(p.get(c, "")) for c in PROMPT_COLUMNS}
                                                         for p in prompts],
                       "model": cfg, "parameters": sum(p.numel() for p in model.parameters()),
                       "template": processor.chat_template}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def plan_chunks(prompts: Sequence[dict], n: int, batch_size: int) -> list[list[int]]:
    """Prompt indices per chunk: ``batch_size // n`` prompts (at least 1), grouped by family.

    Prompts of one family have answers of similar length, so a chunk of yes/no questions stops after a few
    tokens instead of waiting for a description in the same batch. The plan depends only on the prompts and
    the settings, so a resumed run makes the same chunks.
    """
    per_chunk = max(1, batch_size // n)
    order = sorted(range(len(prompts)), key=lambda i: (str(prompts[i].get("family", "")), i))
    return [order[s: s + per_chunk] for s in range(0, len(order), per_chunk)]


def _write_shard(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=candidate_features().arrow_schema)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate_candidates(model, processor, prompts: Sequence[dict], image_loader: Callable[[str], Any],
                        n_candidates: int = 16, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                        max_new_tokens: int = 48, batch_size: int = 256, seed: int = 0,
                        run_dir: str | Path = ".", progress: bool = True,
                        on_chunk: Callable[[int, str], None] | None = None, keep_parts: bool = False):
    """Sample ``n_candidates`` per prompt and write ``run_dir/candidates/`` (resumable; returns the table).

    ``prompts``: rows with ``prompt_id, image, scene_id, family, instruction, reference`` (see ``prompts.py``);
    ``image_loader``: image reference → PIL image (``prompts.ImageResolver``). Everything is checked before
    anything is written: settings, chat template, every instruction and image, and that every prompt plus
    ``max_new_tokens`` fits the context. Finished chunks are shards in ``run_dir/candidates.parts/`` and are
    skipped by a rerun; ``on_chunk(chunk, "done" | "skipped")`` is called after each chunk. The parts folder
    is removed once the table is written, unless ``keep_parts``.
    """
    import datasets as D

    _check_settings(n_candidates, temperature, top_p, top_k, max_new_tokens, batch_size)
    check_chat_template(processor)
    check_prompts(prompts)
    check_images(prompts, image_loader)
    check_context(model, processor, prompts, max_new_tokens)

    settings = dict(n_candidates=n_candidates, temperature=temperature, top_p=top_p, top_k=top_k,
                    max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
    chunks = plan_chunks(prompts, n_candidates, batch_size)
    fingerprint = _fingerprint(model, processor, prompts, settings)
    parts = parts_dir(run_dir)
    manifest = parts / MANIFEST
    if manifest.is_file():
        old = json.loads(manifest.read_text())
        if old.get("fingerprint") != fingerprint:
            raise GenerationInputError(
                f"{parts} holds chunks of a different run (other prompts, settings or model); delete that "
                "folder to start again, or restore the settings it was made with")
    else:
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write_json(manifest, {"fingerprint": fingerprint, "settings": settings, "n_chunks": len(chunks),
                                     "n_prompts": len(prompts)})
    t0 = time.perf_counter()
    generated = 0
    bar = tqdm(chunks, desc=f"sampling {n_candidates} candidates per prompt", unit="chunk", disable=not progress)
    for c, idx in enumerate(bar):
        shard = parts / f"chunk-{c:05d}.parquet"
        if shard.is_file():
            if on_chunk is not None:
                on_chunk(c, "skipped")
            continue
        chunk_prompts = [prompts[i] for i in idx]
        images = [image_loader(str(p["image"])) for p in chunk_prompts]
        cands = sample_candidates(model, processor, images, [str(p["instruction"]) for p in chunk_prompts],
                                  n_candidates, temperature, top_p, top_k, max_new_tokens, batch_size,
                                  seed=chunk_seed(seed, c))
        rows = [{**{col: str(p.get(col, "")) for col in PROMPT_COLUMNS}, **cand}
                for p, per_prompt in zip(chunk_prompts, cands, strict=True) for cand in per_prompt]
        _write_shard(shard, rows)
        generated += 1
        if on_chunk is not None:
            on_chunk(c, "done")
    table = _assemble(parts, prompts, chunks, n_candidates)
    info = {"chunks": len(chunks), "chunks_generated": generated, "seconds": time.perf_counter() - t0,
            "settings": settings}
    ds = D.Dataset(D.table.InMemoryTable(table))
    with AtomicDir(candidates_dir(run_dir)) as tmp, quiet_datasets():
        ds.save_to_disk(str(tmp))
        atomic_write_json(tmp / INFO_FILE, info)
    if not keep_parts:
        shutil.rmtree(parts, ignore_errors=True)
    return load_candidates(run_dir)


def _assemble(parts: Path, prompts: Sequence[dict], chunks: list[list[int]], n: int):
    """Concatenate the shards in prompt order, checking that every prompt has exactly ``n`` candidates."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = candidate_features().arrow_schema
    tables = [pq.read_table(parts / f"chunk-{c:05d}.parquet").cast(schema) for c in range(len(chunks))]
    table = pa.concat_tables(tables)
    order_of = {str(p["prompt_id"]): i for i, p in enumerate(prompts)}
    pids = table.column("prompt_id").to_pylist()
    cidx = table.column("cand_idx").to_pylist()
    counts: dict[str, int] = {}
    for pid in pids:
        counts[pid] = counts.get(pid, 0) + 1
    bad = [pid for pid in order_of if counts.get(pid) != n] + [pid for pid in counts if pid not in order_of]
    if bad:
        raise RuntimeError(f"the shards in {parts} do not hold exactly {n} candidates for prompts {bad[:5]}; "
                           "delete that folder and generate again")
    sort = sorted(range(len(pids)), key=lambda r: (order_of[pids[r]], cidx[r]))
    return table.take(pa.array(sort, type=pa.int64())).replace_schema_metadata(schema.metadata)


def prepare_candidates(cfg, run_dir: str | Path, model, processor, prompts: Sequence[dict],
                       image_loader: Callable[[str], Any], progress: bool = True):
    """Notebook 01's entry: load ``run_dir/candidates/`` when complete, otherwise generate (or resume) it."""
    if (candidates_dir(run_dir) / "state.json").is_file():
        return load_candidates(run_dir)
    g = cfg.generation
    return generate_candidates(model, processor, prompts, image_loader, n_candidates=g.n_candidates,
                               temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                               max_new_tokens=g.max_new_tokens, batch_size=g.batch_size, seed=g.seed,
                               run_dir=run_dir, progress=progress)


# ----------------------------------------------------------------------------------------------- scoring

def _supports_mm_outputs(model) -> bool:
    return "mm_encoder_outputs" in inspect.signature(model.forward).parameters and hasattr(model,
                                                                                          "get_image_features")


def response_ids(processor, response: str | Sequence[int]) -> list[int]:
    """Token ids of a response as generation would produce them: ids are kept, text becomes ``" " + text + EOS``
    (the tokenisation of ``training.encode_pair``)."""
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
    _check_instructions(instructions)
    tok = processor.tokenizer
    device = _device(model)
    limit = context_length(model)
    prompt_ids = [tok(_expanded_prompt(processor, str(q)), add_special_tokens=True).input_ids for q in instructions]
    resp_ids = [[response_ids(processor, r) for r in group] for group in responses]
    for g, (p, group) in enumerate(zip(prompt_ids, resp_ids, strict=True)):
        for r in group:
            if limit is not None and len(p) + len(r) > limit:
                raise GenerationInputError(
                    f"prompt {g} ({len(p)} tokens) plus a response of {len(r)} tokens exceeds the model's context "
                    f"of {limit} tokens (text_config.max_position_embeddings)")
    flat = [(g, j) for g, group in enumerate(resp_ids) for j in range(len(group))]
    use_mm = _supports_mm_outputs(model)
    pixels: dict[int, torch.Tensor] = {}
    out: list[list[np.ndarray | None]] = [[None] * len(group) for group in resp_ids]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for start in range(0, len(flat), batch_size):
        batch = flat[start: start + batch_size]
        groups = list(dict.fromkeys(g for g, _ in batch))
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
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = torch.arange(p_len - 1, p_len + r_len - 1)
        kwargs: dict[str, Any] = dict(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      position_ids=position_ids.to(device), logits_to_keep=keep.to(device))
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


# ----------------------------------------------------------------------------------------------- analysis helpers

def verify_candidates(table, resolver, world_cfg):
    """Ground-truth verifier score and correctness of every candidate (shapes world); a DataFrame aligned with
    ``table`` (columns ``verifier_score``, ``correct``, ``explanation``)."""
    import pandas as pd

    from . import world as W

    df = table.to_pandas() if hasattr(table, "to_pandas") else pd.DataFrame(table)
    scores, correct, expl = [], [], []
    for ref, q, text in zip(df["image"], df["instruction"], df["text"], strict=True):
        v = W.verify(resolver.scene(ref), q, text, world_cfg)
        scores.append(v.score)
        correct.append(v.correct)
        expl.append(v.explanation)
    return pd.DataFrame({"verifier_score": scores, "correct": correct, "explanation": expl}, index=df.index)


def temperature_sweep(model, processor, image, instruction: str, temperatures: Sequence[float], n: int = 16,
                      max_new_tokens: int = 48, top_p: float = 1.0, top_k: int = 0, seed: int = 0):
    """Sample ``n`` answers to one prompt at each temperature: distinct answers and mean log-prob per setting.

    Returns ``(summary DataFrame, {temperature: [texts]})``. The log-probs are under the model (temperature 1),
    whatever temperature sampled them — so a hotter sampler shows up as *lower* model log-probs.
    """
    import pandas as pd

    rows, texts = [], {}
    for t in temperatures:
        cands = sample_candidates(model, processor, [image], [instruction], n, temperature=t, top_p=top_p,
                                  top_k=top_k, max_new_tokens=max_new_tokens, batch_size=max(n, 1), seed=seed)[0]
        answers = [c["text"] for c in cands]
        texts[t] = answers
        rows.append({"temperature": t, "distinct_answers": len(set(answers)),
                     "mean_logprob_sum": float(np.mean([c["logprob_sum"] for c in cands])),
                     "mean_length": float(np.mean([c["length"] for c in cands])),
                     "share_eos": float(np.mean([c["ended_eos"] for c in cands]))})
    return pd.DataFrame(rows), texts


def coverage_by_n(candidates, verdicts=None):
    """What more candidates buy: for k = 1..N, over prompts, the mean number of distinct answers among the first
    k candidates and (with ``verdicts``) the share of prompts with a correct one among them and with *both* a
    correct and a wrong one — a preference pair needs both."""
    import pandas as pd

    df = candidates.to_pandas() if hasattr(candidates, "to_pandas") else pd.DataFrame(candidates)
    df = df[["prompt_id", "cand_idx", "text"]].copy()
    df["norm"] = df["text"].str.lower().str.replace(r"[^a-z0-9 ]", "", regex=True).str.split().str.join(" ")
    if verdicts is not None:
        df["correct"] = verdicts["correct"].to_numpy()
    df = df.sort_values(["prompt_id", "cand_idx"], kind="stable")
    n = int(df.groupby("prompt_id").size().min())
    rows = []
    for k in range(1, n + 1):
        first = df.groupby("prompt_id", sort=False).head(k).groupby("prompt_id", sort=False)
        row = {"k": k, "mean_distinct": float(first["norm"].nunique().mean())}
        if verdicts is not None:
            any_ok = first["correct"].any()
            row["share_with_correct"] = float(any_ok.mean())
            row["share_with_pair"] = float((any_ok & ~first["correct"].all()).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def diversity_table(candidates, verdicts=None):
    """Per prompt: candidates, distinct answers, and (with ``verdicts``) the verifier-score spread."""
    import pandas as pd

    df = candidates.to_pandas() if hasattr(candidates, "to_pandas") else pd.DataFrame(candidates)
    df = df[["prompt_id", "family", "text", "length", "logprob_sum"]].copy()
    df["norm"] = df["text"].str.lower().str.replace(r"[^a-z0-9 ]", "", regex=True).str.split().str.join(" ")
    agg = {"n": ("text", "size"), "distinct": ("norm", "nunique"), "mean_length": ("length", "mean"),
           "logprob_spread": ("logprob_sum", lambda s: float(s.max() - s.min()))}
    if verdicts is not None:
        df["verifier_score"] = verdicts["verifier_score"].to_numpy()
        df["correct"] = verdicts["correct"].to_numpy()
        agg |= {"score_min": ("verifier_score", "min"), "score_max": ("verifier_score", "max"),
                "score_std": ("verifier_score", "std"), "share_correct": ("correct", "mean")}
    out = df.groupby(["prompt_id", "family"], sort=False).agg(**agg).reset_index()
    if verdicts is not None:
        out["score_spread"] = out["score_max"] - out["score_min"]
    return out
