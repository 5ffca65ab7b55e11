"""Stage 05: DPO with a LoRA adapter (TRL's ``DPOTrainer`` + PEFT), every strategy on the same budget.

**The objective.** For a prompt x with a preferred answer y_w and a dispreferred y_l, DPO minimises

    L = −log σ(β · [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))])

where π is the model being trained and π_ref the frozen base. β·(log π − log π_ref) of an answer is its
"implicit reward"; TRL logs them as ``rewards/chosen`` and ``rewards/rejected``, their difference as
``rewards/margins`` and the share of pairs with a positive margin as ``rewards/accuracies``. With
``loss_type=("sigmoid", "sft")`` TRL adds the mean negative log-likelihood of the chosen tokens (weighted by
``loss_weights``), which keeps the chosen answer's probability from falling while the margin grows.

**LoRA.** The base stays frozen; PEFT adds low-rank updates to the language model's attention projections
(``q_proj``, ``v_proj``) selected by a regular expression on the module names — a plain list of names would also
hit the CLIP vision tower, which has projections of the same names. ``DpoConfig.lora_projector`` /
``lora_vision`` add the multimodal projector / the vision tower. The model is handed to TRL with a
``peft_config`` and ``ref_model=None``, so the reference is the same weights with the adapter disabled: no second
copy in memory.

**The reference pass, reused.** The candidates were sampled from the base model, which is the DPO reference, so
the log-probs generation recorded (``logp_chosen``, ``logp_rejected``: summed over the sampled tokens, EOS
included) *are* log π_ref(y|x). TRL re-tokenises the chosen / rejected text through the chat template; where the
result equals the sampled token ids exactly (and the prompt equals the generation prompt), the stored value is
the reference log-prob and the reference forward pass is skipped. The rest (a sampled token sequence that is
not the tokenizer's canonical one, an answer cut at ``max_new_tokens`` without EOS, ...) is computed with the
adapter-disabled model, row by row. TRL refuses ``precompute_ref_log_probs`` for vision datasets (it would run
the reference over the whole dataset up front); :class:`ReusedReferenceDPOTrainer` is the small subclass that
reads the reference log-probs from the batch instead — ``ref_chosen_logps`` / ``ref_rejected_logps`` carried
by :class:`VisionPreferenceCollatorWithReference`, NaN where a row has none.

**BOS.** TRL renders the chat template and tokenises it with ``add_special_tokens=False``, trusting the template
to carry BOS. LLaVA-1.5's template does not (its tokenizer adds BOS), so training would see prompts without the
BOS that generation saw. :func:`training_processor` prepends ``{{ bos_token }}`` to a *copy* of the processor's
template in that case, so training, generation and the stored reference log-probs share one context.

**Equal budget.** :func:`train_strategies` trains every strategy on the same number of pairs (the smallest
strategy's count, or ``DpoConfig.max_pairs``) for the same number of optimizer steps, prompts common to all
strategies first. ``best_of_n`` — the best candidate alone — is always trained, with TRL's SFT term only
(``loss_type=("sft",)``): the SFT-only control on the chosen responses. It runs through the same trainer,
collator, LoRA, optimizer and schedule as the DPO runs (its rejected column is a copy of the chosen one and is
never in its loss), so it differs from ``("sigmoid", "sft")`` by the preference term alone — the table can say
what the negatives add. Adapters (safetensors) and the per-step training log go to
``run_dir/adapters/<strategy>/`` atomically; a strategy whose adapter is complete is skipped by a rerun.
"""


from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m3po_utils import dialogue
from m3po_utils import shapes as W
from m3po_utils.config import DpoConfig, Preset
from m3po_utils.io import AtomicDir, atomic_write_json
from m3po_utils.models.generate import greedy_answers
from m3po_utils.models.lora import check_lora_targets, lora_summary, quiet_gc_warning
from m3po_utils.models.lvlm import load_lvlm
from m3po_utils.models.templates import n_image_tokens, prompt_for
from m3po_utils.models.trl_api import REF_COLUMNS, build_trainer, training_processor, trl_texts
from m3po_utils.rundir import RunDir, StageMissing, quarantine, reading
from m3po_utils.shapes.prompts import existence_shape

SFT_ONLY = "best_of_n"


TRL_COLUMNS = ("images", "prompt", "chosen", "rejected")


SAMPLE_COLUMNS = ("chosen_token_ids", "rejected_token_ids", "logp_chosen", "logp_rejected")


ADAPTER_FILE = "adapter_model.safetensors"


ADAPTER_FILES = (ADAPTER_FILE, "adapter_config.json", "README.md")   # what PEFT writes (no training_args.bin)


INFO_FILE = "training_info.json"


LOG_FILE = "training_log.json"


CURVE_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


class DpoInputError(ValueError):
    """Pairs, images or settings that DPO training cannot use; raised before any training starts."""


def _expand_image(text: str, processor) -> str:

    token = processor.image_token
    return text.replace(token, token * n_image_tokens(processor))


def _user_text(prompt: list[dict]) -> str:
    """The instruction string of a TRL prompt (a dialogue's history included)."""
    return dialogue.from_messages(prompt)


def check_pairs(ds, strategy: str, reuse_reference: bool = True, check_images: bool = True) -> None:
    """Raise :class:`DpoInputError` for an empty pair set, a missing column or an image that cannot be read."""
    if ds is None or len(ds) == 0:
        raise DpoInputError(f"strategy {strategy!r}: the pair set is empty (0 rows); rerun notebook 04 or drop "
                            "the strategy from dpo.strategies")
    need = list(TRL_COLUMNS) + (list(SAMPLE_COLUMNS) if reuse_reference else [])
    missing = [c for c in need if c not in ds.column_names]
    if missing:
        hint = " (or set dpo.reuse_reference=False)" if set(missing) <= set(SAMPLE_COLUMNS) else ""
        raise DpoInputError(f"strategy {strategy!r}: the pairs table lacks column(s) {', '.join(missing)}; it "
                            f"has {', '.join(ds.column_names)}. Rewrite it with notebook 04{hint}")
    if check_images:
        pid = ds["prompt_id"] if "prompt_id" in ds.column_names else None
        for i in range(len(ds)):
            where = f"strategy {strategy!r}, row {i}" + (f" (prompt {pid[i]!r})" if pid else "")
            try:
                imgs = ds[i]["images"]
                if not imgs:
                    raise ValueError("no image in the row")
                for img in imgs:
                    img.load()
            except Exception as exc:  # PIL, datasets and OS errors all mean the same to the user
                raise DpoInputError(f"{where}: the image cannot be read ({type(exc).__name__}: {exc}); rewrite "
                                    "the pairs with notebook 04") from None


def load_strategy_pairs(run_dir, strategy: str):
    """``pairs/<strategy>/`` of ``run_dir``; a clear error when the strategy has no pairs there."""
    run = RunDir(run_dir)
    try:
        return run.load_pairs(strategy)
    except StageMissing:
        raise DpoInputError(f"strategy {strategy!r} has no pairs: {run.pairs(strategy)} is missing; run "
                            "notebook 04 (selection) for this run directory or remove the strategy from "
                            "dpo.strategies") from None


def sft_rows(ds):
    """``best_of_n`` rows for the SFT-only run: the rejected columns become copies of the chosen ones.

    TRL's SFT term reads only the chosen half of the batch; the copy keeps the batch layout (and the cost of a
    step) of the DPO runs, and keeps the chosen reward curve meaningful.
    """
    def copy_chosen(row):
        out = {"rejected": row["chosen"]}
        for a, b in (("rejected_token_ids", "chosen_token_ids"), ("logp_rejected", "logp_chosen"),
                     ("rejected_text", "chosen_text")):
            if b in row:
                out[a] = row[b]
        return out

    return ds.map(copy_chosen, desc="best_of_n: rejected := chosen")


def equal_budget(tables: dict[str, Any], max_pairs: int = 0) -> tuple[dict[str, Any], int]:
    """The same number of rows from every table: prompts shared by all strategies first, in prompt order.

    Returns the truncated tables and their common size ``n = min(len(t))`` (capped by ``max_pairs`` > 0).
    """
    n = min(len(t) for t in tables.values())
    if max_pairs:
        n = min(n, max_pairs)
    ids = [set(t["prompt_id"]) for t in tables.values() if "prompt_id" in t.column_names]
    common = set.intersection(*ids) if len(ids) == len(tables) else set()
    out = {}
    for name, t in tables.items():
        if common:
            pid = t["prompt_id"]
            order = [i for i in range(len(t)) if pid[i] in common] + [i for i in range(len(t)) if pid[i] not in common]
            t = t.select(order)
        out[name] = t.select(range(n))
    return out, n


def same_chosen_share(a, b) -> float:
    """Share of prompts in both pair tables whose (first) chosen answers are the same text (NaN if unknown)."""
    if not all(c in t.column_names for t in (a, b) for c in ("prompt_id", "chosen_text")):
        return float("nan")
    first_a = dict(zip(reversed(a["prompt_id"]), reversed(a["chosen_text"]), strict=True))
    first_b = dict(zip(reversed(b["prompt_id"]), reversed(b["chosen_text"]), strict=True))
    common = set(first_a) & set(first_b)
    return sum(first_a[p] == first_b[p] for p in common) / len(common) if common else float("nan")


@dataclass
class ReferenceStats:
    """How many responses of a pair set can reuse their generation-time log-prob as the reference."""

    responses: int = 0
    matched: int = 0
    prompt_mismatch: int = 0
    completion_mismatch: int = 0
    no_eos: int = 0
    examples: list[dict] = field(default_factory=list)

    @property
    def share(self) -> float:
        return self.matched / self.responses if self.responses else 0.0

    def to_dict(self) -> dict:
        return {"responses": self.responses, "matched": self.matched, "share": self.share,
                "prompt_mismatch": self.prompt_mismatch, "completion_mismatch": self.completion_mismatch,
                "no_eos": self.no_eos}


def reference_columns(ds, processor, generation_processor=None,
                      max_examples: int = 5) -> tuple[list[float], list[float], ReferenceStats]:
    """Reference log-probs per row from the generation-time ones, NaN where TRL's tokens differ from the sampled.

    ``processor`` is the one TRL trains with (:func:`training_processor`), ``generation_processor`` the one that
    sampled the candidates (default: ``processor``). A response's stored log-prob is used when TRL's prompt
    tokens equal the generation prompt's tokens (chat template tokenised as generation does it, image
    placeholder expanded) and TRL's completion tokens equal the sampled ``*_token_ids`` (EOS included).
    """

    tok = processor.tokenizer
    gproc = generation_processor or processor
    stats = ReferenceStats()
    gen_prompt: dict[str, list[int]] = {}
    ref_c: list[float] = []
    ref_r: list[float] = []
    cols = ["prompt", "chosen", "rejected", *SAMPLE_COLUMNS]
    for row in ds.select_columns(cols):
        texts = trl_texts(row | {"images": [None] * _n_image_parts(row["prompt"])}, processor)
        trl_prompt = tok(_expand_image(texts["prompt"], processor), add_special_tokens=False).input_ids
        question = _user_text(row["prompt"])
        if question not in gen_prompt:
            gen_prompt[question] = gproc.tokenizer(_expand_image(prompt_for(gproc, question), gproc),
                                                   add_special_tokens=True).input_ids
        prompt_ok = trl_prompt == gen_prompt[question]
        for side, out in (("chosen", ref_c), ("rejected", ref_r)):
            sampled = list(row[f"{side}_token_ids"])
            ids = tok(texts[side], add_special_tokens=False).input_ids
            stats.responses += 1
            ok = prompt_ok and ids == sampled and not math.isnan(row[f"logp_{side}"])
            if ok:
                stats.matched += 1
                out.append(float(row[f"logp_{side}"]))
                continue
            out.append(float("nan"))
            if not prompt_ok:
                stats.prompt_mismatch += 1
            else:
                stats.completion_mismatch += 1
                if sampled and sampled[-1] != tok.eos_token_id:
                    stats.no_eos += 1
                reason = mismatch_reason(sampled, ids, tok.eos_token_id)
                # a few of each kind, so the table shows every reason rather than five empty answers
                if (len(stats.examples) < max_examples
                        and sum(e["reason"] == reason for e in stats.examples) < max(1, max_examples // 2)):
                    stats.examples.append({"reason": reason, "text": texts[side],
                                           "sampled": tok.convert_ids_to_tokens(sampled),
                                           "retokenised": tok.convert_ids_to_tokens(ids)})
    return ref_c, ref_r, stats


def mismatch_reason(sampled: list[int], retokenised: list[int], eos_id: int | None) -> str:
    """Why a response's sampled tokens cannot serve as its reference: in words a reader of notebook 05 can check."""
    if sampled and sampled[-1] != eos_id:
        return "no end-of-sequence token: the sample hit the length limit"
    if len(sampled) <= 1:
        return "an empty answer: the model sampled only the end-of-sequence token"
    if len(retokenised) != len(sampled):
        return f"the text re-tokenises into {len(retokenised)} tokens, not the {len(sampled)} sampled"
    return "the text re-tokenises into other tokens of the same count"


def _n_image_parts(prompt: list[dict]) -> int:
    return sum(1 for m in prompt if not isinstance(m["content"], str)
               for c in m["content"] if c.get("type") == "image")


def training_table(ds, processor, reuse_reference: bool = True, generation_processor=None):
    """The table handed to TRL: ``images, prompt, chosen, rejected`` (+ the reference columns) and the stats."""
    table = ds.select_columns(list(TRL_COLUMNS))
    if not reuse_reference:
        return table, None
    ref_c, ref_r, stats = reference_columns(ds, processor, generation_processor)
    table = table.add_column(REF_COLUMNS[0], ref_c).add_column(REF_COLUMNS[1], ref_r)
    return table, stats


def steps_for(n_pairs: int, dcfg: DpoConfig) -> int:
    return max(1, math.ceil(n_pairs * dcfg.epochs / (dcfg.batch_size * dcfg.grad_accum)))


def adapters_dir(run_dir, strategy: str | None = None) -> Path:
    return RunDir(run_dir).adapters(strategy)


def adapter_complete(folder: Path, fingerprint: str | None = None) -> bool:
    info = folder / INFO_FILE
    if not (info.is_file() and (folder / ADAPTER_FILE).is_file() and (folder / LOG_FILE).is_file()):
        return False
    try:
        data = json.loads(info.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    return data.get("complete") is True and (fingerprint is None or data.get("fingerprint") == fingerprint)


def adapter_unreadable(folder: Path) -> str | None:
    """Why the complete-looking adapter in ``folder`` cannot be used (a truncated or corrupt file), or None."""
    from safetensors import safe_open

    try:
        with safe_open(str(folder / ADAPTER_FILE), framework="pt") as fh:
            for key in fh.keys():
                fh.get_tensor(key)
        json.loads((folder / LOG_FILE).read_text())
        json.loads((folder / "adapter_config.json").read_text())
    except Exception as exc:   # SafetensorError, JSONDecodeError, OSError, ...
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
    return None


def load_adapter(model, folder: str | Path):
    """Wrap ``model`` with the LoRA adapter saved in ``folder`` (``PeftModel``, eval mode)."""
    from peft import PeftModel

    folder = Path(folder)
    if not (folder / ADAPTER_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no adapter ({ADAPTER_FILE}); run notebook 05 for this run "
                                "directory")
    # folder is <run>/adapters/<strategy>: a corrupt file names itself and notebook 05's --redo command
    with quiet_gc_warning(), reading(folder.parent.parent, "05", folder / ADAPTER_FILE):
        return PeftModel.from_pretrained(model, str(folder)).eval()


def load_training_log(run_dir, strategy: str) -> list[dict]:
    path = adapters_dir(run_dir, strategy) / LOG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run notebook 05 (DPO) for this run directory")
    return json.loads(path.read_text())


def load_training_info(run_dir, strategy: str) -> dict:
    path = adapters_dir(run_dir, strategy) / INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run notebook 05 (DPO) for this run directory")
    return json.loads(path.read_text())


def _fingerprint(dcfg: DpoConfig, strategy: str, table) -> str:
    blob = json.dumps({"dpo": asdict(dcfg), "strategy": strategy, "n": len(table),
                       "data": table._fingerprint if hasattr(table, "_fingerprint") else None}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def base_loader(cfg: Preset, run_dir, device: str | None = None) -> Callable[[], tuple[Any, Any]]:
    """A function returning a fresh ``(model, processor)`` of the base LVLM (PEFT wraps the model in place).

    ``device`` (e.g. ``cuda:3``, one process's GPU under ``accelerate launch``) overrides ``models.device``."""
    name = RunDir(run_dir).lvlm_source(cfg)
    return lambda: load_lvlm(name, dtype=cfg.models.dtype, device=device or cfg.models.device)


@dataclass
class PreparedStrategy:
    strategy: str
    table: Any                      # what TRL reads
    pairs: Any                      # the selected pair rows (all columns)
    sft_only: bool
    reference: ReferenceStats | None


def prepare_strategies(run_dir, cfg: Preset, processor, strategies: Sequence[str] | None = None,
                       pairs: dict[str, Any] | None = None) -> tuple[dict[str, PreparedStrategy], int]:
    """Load, check and equalise every strategy's pairs, and build TRL's tables — all before any training.

    ``pairs`` (optional) maps strategy → ``datasets.Dataset`` instead of reading ``run_dir/pairs/``.
    ``best_of_n`` (the SFT-only control) is always added.
    """
    dcfg = cfg.dpo
    names = list(dict.fromkeys([*(strategies or dcfg.strategies), SFT_ONLY]))
    tables = {}
    for s in names:
        ds = pairs[s] if pairs is not None and s in pairs else (
            load_strategy_pairs(run_dir, s) if pairs is None else None)
        if ds is None:
            raise DpoInputError(f"strategy {s!r} has no pairs (not among the pair sets given: {sorted(pairs)})")
        check_pairs(ds, s, dcfg.reuse_reference)
        tables[s] = sft_rows(ds) if s == SFT_ONLY else ds
    tables, n = equal_budget(tables, dcfg.max_pairs)
    tproc = training_processor(processor)
    out = {}
    for s, ds in tables.items():
        table, stats = training_table(ds, tproc, dcfg.reuse_reference, generation_processor=processor)
        out[s] = PreparedStrategy(s, table, ds, s == SFT_ONLY, stats)
    return out, n


def train_one(prep: PreparedStrategy, model, processor, dcfg: DpoConfig, folder: Path, max_steps: int,
              device: str = "auto", dtype: str = "float32", progress: bool = True, fingerprint: str = "",
              processes: int = 1) -> dict:
    """Train one strategy's adapter and write it with its log to ``folder`` (atomically); return the info.

    Under ``accelerate launch`` every process calls this with the same arguments (``processes`` of them, data
    parallel: TRL's Trainer shards each global batch of ``dcfg.batch_size`` pairs); only the main process writes,
    the others wait for it, and the reused / computed reference counts are summed over the processes.
    """
    tproc = training_processor(processor)
    main = int(os.environ.get("RANK", "0")) == 0      # torchrun / accelerate launch set RANK; a notebook has none
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="m3po-trainer-")))
        tmp = stack.enter_context(AtomicDir(folder)) if main else None
        what = "SFT-LoRA" if prep.sft_only else "DPO-LoRA"
        trainer = build_trainer(model, tproc, prep.table, dcfg, scratch / "trainer", max_steps, prep.sft_only,
                                device, dtype, progress, processes, desc=f"{what} {prep.strategy}")
        lora = lora_summary(trainer.model)
        t0 = time.perf_counter()
        with quiet_gc_warning():
            trainer.train()
        seconds = time.perf_counter() - t0
        acc = trainer.accelerator
        if acc.num_processes != processes:
            raise RuntimeError(f"the trainer runs on {acc.num_processes} processes but was told {processes}; "
                               "launch with accelerate's --num_processes equal to launch.dpo_processes")
        ref_rows = dict(getattr(trainer, "ref_rows", {}))
        if ref_rows and processes > 1:   # each process counted its own share of every batch
            counts = acc.reduce(torch.tensor([ref_rows["reused"], ref_rows["computed"]], device=acc.device), "sum")
            ref_rows = {"reused": int(counts[0]), "computed": int(counts[1])}
        log = [row for row in trainer.state.log_history if "loss" in row]
        final = log[-1] if log else {}
        info = {
            "strategy": prep.strategy, "complete": True, "fingerprint": fingerprint, "pairs": len(prep.table),
            "steps": trainer.state.global_step, "max_steps": max_steps, "seconds": seconds,
            "sft_only": prep.sft_only, "loss_type": ["sft"] if prep.sft_only else list(dcfg.loss_type),
            "loss_weights": [1.0] if prep.sft_only else list(dcfg.loss_weights), "dpo": asdict(dcfg), "lora": lora,
            "reference": prep.reference.to_dict() if prep.reference else None,
            "ref_rows": ref_rows or None,
            "final": {k: final.get(k) for k in CURVE_METRICS},
            "processes": processes, "per_process_batch": dcfg.batch_size // processes,
        }
        # Every process takes part in saving (under DeepSpeed ZeRO-3 the LoRA weights are gathered from all of
        # them); the main process writes: PEFT's adapter files only (no training_args.bin, no processor copy).
        saved = (tmp if main else scratch) / "saved"
        trainer.save_model(str(saved))
        if main:
            for name in ADAPTER_FILES:
                if (saved / name).is_file():
                    shutil.move(str(saved / name), str(tmp / name))
            shutil.rmtree(saved, ignore_errors=True)
            atomic_write_json(tmp / LOG_FILE, log)
            atomic_write_json(tmp / INFO_FILE, info)
    acc.wait_for_everyone()
    return info


def train_pairs(folder, cfg: Preset, ds, name: str, sft_only: bool = False,
                model_loader: Callable[[], tuple[Any, Any]] | None = None, max_pairs: int = 0,
                progress: bool = False, steps: int = 0) -> dict:
    """Train one adapter on one pair table (the experiments' unit): checks, budget, reference reuse, training.

    ``ds``: pairs as written by ``selection.write_pairs``; the first ``max_pairs`` rows (0 = all) are used.
    ``steps``: optimiser steps (0 = ``dpo.epochs`` over the pairs); more steps than one epoch repeat the pairs.
    ``sft_only`` trains the SFT term alone on the chosen answers. A complete adapter in ``folder`` is returned
    as it is. Returns the training info (see :func:`train_one`).
    """
    folder = Path(folder)
    if adapter_complete(folder):
        return json.loads((folder / INFO_FILE).read_text()) | {"skipped": True}
    dcfg = cfg.dpo
    check_pairs(ds, name, dcfg.reuse_reference)
    if max_pairs:
        ds = ds.select(range(min(len(ds), max_pairs)))
    ds = sft_rows(ds) if sft_only else ds
    model, processor = (model_loader or base_loader(cfg, folder))()
    check_lora_targets(model, dcfg)
    table, stats = training_table(ds, training_processor(processor), dcfg.reuse_reference,
                                  generation_processor=processor)
    prep = PreparedStrategy(name, table, ds, sft_only, stats)
    return train_one(prep, model, processor, dcfg, folder, steps or steps_for(len(table), dcfg), cfg.models.device,
                     cfg.models.dtype, progress)


def train_strategies(run_dir, cfg: Preset, strategies: Sequence[str] | None = None,
                     pairs: dict[str, Any] | None = None, model_loader: Callable[[], tuple[Any, Any]] | None = None,
                     redo: bool = False, progress: bool = False, only: Sequence[str] | None = None,
                     processes: int = 1, device: str | None = None) -> dict[str, dict]:
    """Train every strategy on the same number of pairs and steps; adapters to ``run_dir/adapters/<strategy>/``.

    All pair sets are loaded and checked first (empty set, missing column, unreadable image, LoRA target matching
    nothing: :class:`DpoInputError` before any training). A strategy whose adapter is complete for the same
    settings and data is loaded from disk, not retrained (``redo=True`` retrains); one whose files are truncated
    or corrupt is quarantined (:func:`~m3po_utils.rundir.quarantine`) and retrained. Returns the training info of
    every strategy (see :func:`train_one`), ``best_of_n`` included.

    ``only``: train just these strategies (the budget is still that of every strategy: the launched entry point
    :mod:`m3po_utils.launch.dpo` trains one strategy per launch). ``processes``: how many data-parallel processes
    run this call together (``accelerate launch``; 1 in a notebook); ``device``: this process's device.
    """
    if only is not None:
        unknown = [s for s in only if s not in {*(strategies or cfg.dpo.strategies), SFT_ONLY}]
        if unknown:
            raise DpoInputError(f"strategy {unknown[0]!r} is not among dpo.strategies "
                                f"{list(strategies or cfg.dpo.strategies)} (+ {SFT_ONLY!r}); name one of them")
    loader = model_loader or base_loader(cfg, run_dir, device)
    model, processor = loader()
    check_lora_targets(model, cfg.dpo)
    prepared, n = prepare_strategies(run_dir, cfg, processor, strategies, pairs)
    max_steps = steps_for(n, cfg.dpo)
    results: dict[str, dict] = {}
    for s, prep in prepared.items():
        if only is not None and s not in only:
            continue
        folder = adapters_dir(run_dir, s)
        fp = _fingerprint(cfg.dpo, s, prep.table)
        if not redo and adapter_complete(folder, fp):
            why = adapter_unreadable(folder)
            if why is None:
                results[s] = json.loads((folder / INFO_FILE).read_text()) | {"skipped": True}
                continue
            if int(os.environ.get("RANK", "0")) == 0:   # one process sets it aside; every process retrains
                aside = quarantine(folder)   # this stage's own output: set it aside, never delete it
                print(f"WARNING: the adapter in {folder} is unreadable ({why}); moved it to {aside} and training "
                      "it again", flush=True)
        if model is None:   # PEFT wraps the model in place: every strategy starts from a fresh base
            model, processor = loader()
        results[s] = train_one(prep, model, processor, cfg.dpo, folder, max_steps, device or cfg.models.device,
                               cfg.models.dtype, progress, fp, processes)
        model = None
    return results


def reference_check(model, processor, prep: PreparedStrategy, dcfg: DpoConfig, adapter: str | Path | None = None,
                    batch_size: int | None = None, seed: int = 0) -> dict:
    """Loss and rewards on one batch: stored reference log-probs vs TRL's own reference forward.

    Builds the reuse trainer on a fresh ``model`` and loads ``adapter``'s weights into its LoRA (without an
    adapter, LoRA's B matrices get seeded random values) so that the policy differs from the reference and the
    rewards are not trivially 0. Takes the first ``batch_size`` pairs whose reference log-probs are both stored
    and computes the loss twice: from the stored values, and — the columns removed — with TRL's own reference
    pass (adapter disabled). Returns both, their absolute differences and the largest per-response difference
    between stored and recomputed reference log-probs (nats).
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if prep.reference is None:
        raise DpoInputError("reference_check needs a table with reference columns (dpo.reuse_reference=True)")
    tproc = training_processor(processor)
    with tempfile.TemporaryDirectory(prefix="m3po-dpo-check-") as tmp:
        trainer = build_trainer(model, tproc, prep.table, dcfg, tmp, 1, prep.sft_only, progress=False)
    if adapter is not None:
        set_peft_model_state_dict(trainer.model, load_file(str(Path(adapter) / ADAPTER_FILE)))
    else:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in trainer.model.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    rc, rr = prep.table[REF_COLUMNS[0]], prep.table[REF_COLUMNS[1]]
    rows = [i for i in range(len(prep.table)) if not (math.isnan(rc[i]) or math.isnan(rr[i]))]
    rows = rows[: batch_size or dcfg.batch_size]
    if not rows:
        raise DpoInputError("no pair has both reference log-probs stored; nothing to compare")
    batch = trainer.data_collator([prep.table[i] for i in rows])
    inputs = trainer._prepare_inputs(batch)
    trainer.model.eval()
    out = {}
    with torch.no_grad(), quiet_gc_warning():
        for name, inp in (("reused", inputs), ("trl", {k: v for k, v in inputs.items() if k not in REF_COLUMNS})):
            trainer._metrics["eval"].clear()
            loss = trainer._compute_loss(trainer.model, inp, False)
            m = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
            out[name] = {"loss": float(loss), **{k: m[k] for k in CURVE_METRICS[1:]}}
        c, r = trainer.compute_ref_log_probs(trainer.model, {k: v for k, v in inputs.items() if k not in REF_COLUMNS})
    stored = torch.cat([inputs[REF_COLUMNS[0]], inputs[REF_COLUMNS[1]]]).double()
    fresh = torch.cat([c, r]).double().cpu()
    diffs = {k: abs(out["reused"][k] - out["trl"][k]) for k in out["trl"]}
    return {"pairs": len(rows), "reused": out["reused"], "trl": out["trl"], "abs_diff": diffs,
            "max_abs_diff": max(diffs.values()),
            "max_ref_logp_diff": float((stored.cpu() - fresh).abs().max())}


def final_table(infos: dict[str, dict]):
    """Final (last-step) loss, rewards and reward accuracy per strategy; NaN margin/accuracy for SFT-only."""
    import pandas as pd

    rows = {}
    for s, info in infos.items():
        f = dict(info["final"])
        if info.get("sft_only"):
            f["rewards/margins"] = f["rewards/accuracies"] = float("nan")
            f["rewards/rejected"] = float("nan")
        rows[s] = {"loss_type": "+".join(info["loss_type"]), "pairs": info["pairs"], "steps": info["steps"],
                   **f, "seconds": info["seconds"]}
    return pd.DataFrame(rows).T


def mean_over_last(log: list[dict], metric: str, k: int = 10) -> float:
    vals = [r[metric] for r in log if metric in r][-k:]
    return float(np.mean(vals)) if vals else float("nan")


def training_summary(log: Sequence[dict], beta: float, last: int = 10) -> dict[str, float]:
    """The mean over the last ``last`` logged steps of TRL's DPO metrics: the learnt margin (``rewards/margins``,
    β-scaled), reward accuracy, and the chosen / rejected answers' summed log-likelihood change against the
    reference in nats (``rewards/chosen`` / β: below 0 the chosen answer became *less* likely — likelihood
    displacement), and the final loss."""
    rows = [r for r in log if "loss" in r][-last:]
    if not rows:
        return {}

    def mean(key: str, scale: float = 1.0) -> float:
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        return float(np.mean(vals)) / scale if vals else float("nan")

    return {"margin": mean("rewards/margins"), "reward_accuracy": mean("rewards/accuracies"),
            "chosen_drift_nats": mean("rewards/chosen", beta), "rejected_drift_nats": mean("rewards/rejected", beta),
            "final_loss": mean("loss")}


def validation_prompts(scenes, world_cfg, seed: int = 0) -> list[tuple[Any, Any]]:
    """(scene, instruction) pairs: one instruction of every instruction family per validation scene.

    Every family of the world (``world.FAMILIES``), whatever the preference mix draws; the existence question is
    chosen as the preference prompts choose it (``prompts.existence_shape``): half Yes, half No about an absent
    co-occurrence mate, so the validation score of a model that only learnt to say "No" does not rise.
    """

    rng = np.random.default_rng(seed)
    out = []
    for scene in scenes:
        for family in W.FAMILIES:
            if family == "existence":
                ins = W.existence_instruction(scene, existence_shape(scene, world_cfg, rng), world_cfg)
            else:
                ins = W.make_instruction(family, scene, world_cfg, rng=rng)
            out.append((scene, ins))
    return out


def validation_metrics(model, processor, scenes, world_cfg, seed: int = 0, batch_size: int = 100) -> dict[str, float]:
    """What the shapes preset's hyper-parameters were chosen on: greedy answers on held-out *preference* scenes.

    For :func:`validation_prompts` (every preference family on every scene): the mean verifier score, the share
    of fully correct answers (overall and per family, ``acc_*``) and the hallucination rate (share of answers
    that assert an absent object). Pass :func:`m3po_utils.prompts.validation_scenes` — never the evaluation split.
    """

    rows = validation_prompts(scenes, world_cfg, seed)
    # one family per batch: a batch of yes/no answers stops after a few tokens instead of waiting for descriptions
    rows.sort(key=lambda r: r[1].family)
    images = {s.scene_id: W.render(s, world_cfg) for s in scenes}
    answers = greedy_answers(model, processor, [images[s.scene_id] for s, _ in rows], [i.text for _, i in rows],
                             batch_size=batch_size)
    verdicts = [W.verify(s, i.text, a, world_cfg) for (s, i), a in zip(rows, answers, strict=True)]
    fam: dict[str, list[float]] = {}
    for (_, ins), v in zip(rows, verdicts, strict=True):
        fam.setdefault(ins.family, []).append(float(v.correct))
    return {"score": float(np.mean([v.score for v in verdicts])),
            "correct": float(np.mean([v.correct for v in verdicts])),
            "hallucination": float(np.mean([bool(v.hallucinated) for v in verdicts])),
            "n": len(verdicts), **{f"acc_{k}": float(np.mean(v)) for k, v in fam.items()}}
