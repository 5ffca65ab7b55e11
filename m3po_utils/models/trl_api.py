"""Every use of TRL beyond its documented surface, in one place: the trainer, the collator and their config.

The reused-reference DPO trainer relies on things TRL 1.16 does not promise to keep: ``DPOTrainer``'s private
``_compute_loss`` and ``_set_signature_columns_if_needed`` (overridden so that the batch may carry reference
log-probs read off generation), its ``compute_ref_log_probs`` (for the rows that have none), the
``precompute_ref_logps`` attribute that switches its loss to stored reference log-probs, the vision collator's
``torch_call``, and ``trl.data_utils``' template helpers. :data:`PRIVATE_API` lists each with the signature this
module was written against; ``tests/test_trl_api.py`` compares them with the installed TRL, so an upgrade that
changes one fails with the method's name instead of a wrong loss. ``pyproject.toml`` pins ``trl`` and ``peft`` to
the tested range.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import DPOConfig as TrlDPOConfig
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

from m3po_utils.config import DpoConfig
from m3po_utils.models.lora import check_lora_targets, lora_config, quiet_gc_warning
from m3po_utils.models.lvlm import resolve_device
from m3po_utils.progress import Progress

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")   # the reference log-probs a batch may carry

# What this module uses of TRL's internals, with the signatures it was written against (TRL 1.16).
PRIVATE_API: dict[str, str] = {
    "trl.DPOTrainer._compute_loss": "(self, model, inputs, return_outputs)",
    "trl.DPOTrainer._set_signature_columns_if_needed": "(self)",
    "trl.DPOTrainer.compute_ref_log_probs": "(self, model, inputs)",
    "trl.trainer.dpo_trainer.DataCollatorForVisionPreference.torch_call": "(self, examples)",
    "trl.data_utils.apply_chat_template": "(example, processing_class, tools, **template_kwargs)",
    "trl.data_utils.prepare_multimodal_messages": "(messages, images)",
}
PRIVATE_ATTRIBUTES = {"trl.DPOTrainer": ("precompute_ref_logps", "_signature_columns", "loss_types", "loss_weights")}


def training_processor(processor):
    """The processor TRL should use: a copy whose chat template renders BOS when the tokenizer adds one.

    TRL tokenises rendered templates with ``add_special_tokens=False``. If the template does not render BOS but
    the tokenizer adds it by default (LLaVA-1.5), a copy with ``{{ bos_token }}`` in front of the template is
    returned, so that the training context equals the generation context; otherwise the processor itself.
    """
    tok = processor.tokenizer
    probe = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "x"}]}],
                                          add_generation_prompt=True)
    adds_bos = tok.bos_token_id is not None and tok("x", add_special_tokens=True).input_ids[:1] == [tok.bos_token_id]
    if not adds_bos or probe.startswith(tok.bos_token):
        return processor
    out = copy.deepcopy(processor)
    out.chat_template = "{{ bos_token }}" + processor.chat_template
    return out


def trl_texts(example: dict, processor) -> dict[str, str]:
    """Prompt / chosen / rejected strings exactly as TRL's vision collator renders them."""
    from trl.data_utils import apply_chat_template, prepare_multimodal_messages

    images = example.get("images") or []
    ex = {"prompt": prepare_multimodal_messages(example["prompt"], images=images),
          "chosen": prepare_multimodal_messages(example["chosen"]),
          "rejected": prepare_multimodal_messages(example["rejected"])}
    return apply_chat_template(ex, processor)


class VisionPreferenceCollatorWithReference(DataCollatorForVisionPreference):
    """TRL's vision collator, plus the rows' ``ref_chosen_logps`` / ``ref_rejected_logps`` (NaN = none stored)."""

    def torch_call(self, examples):
        refs = {c: torch.tensor([_nan(ex.pop(c, None)) for ex in examples], dtype=torch.float32)
                for c in REF_COLUMNS if c in examples[0]}
        out = super().torch_call(examples)
        out.update(refs)
        return out


class DataParallelDPOTrainer(DPOTrainer):
    """``DPOTrainer`` whose SFT term is one token mean over the *global* batch, however many processes share it.

    TRL averages the SFT term (negative log-likelihood of the chosen tokens) over each process's own tokens, and
    DDP then averages the processes: the term weights a token by 1 / (its process's token count), so the loss
    and its gradient change with the number of processes (2 CPU processes: up to 0.48 on a smoke-run loss of
    4.5). Here each process's SFT weight is scaled by W · n_r / N (n_r its chosen tokens, N all processes'),
    which makes the average over processes the one-process token mean. One process: TRL's loss unchanged.
    """

    def _compute_loss(self, model, inputs, return_outputs):
        acc = self.accelerator
        if acc.num_processes == 1 or "sft" not in self.loss_types:
            return super()._compute_loss(model, inputs, return_outputs)
        chosen, _ = inputs["completion_mask"][..., 1:].chunk(2, dim=0)
        mine = chosen.sum().to(torch.float32).reshape(1)
        total = acc.gather(mine).sum()
        scale = float(mine[0] * acc.num_processes / total) if float(total) > 0 else 1.0
        weights = self.loss_weights
        self.loss_weights = [w * scale if t == "sft" else w for t, w in zip(self.loss_types, weights, strict=True)]
        try:
            return super()._compute_loss(model, inputs, return_outputs)
        finally:
            self.loss_weights = weights


class ReusedReferenceDPOTrainer(DataParallelDPOTrainer):
    """``DPOTrainer`` that takes the reference log-probs from the batch where it has them.

    TRL reads ``ref_chosen_logps`` / ``ref_rejected_logps`` from the batch only with
    ``precompute_ref_log_probs=True``, which it refuses for vision datasets. This subclass keeps the two columns
    (signature columns), fills the NaN rows with TRL's own ``compute_ref_log_probs`` (adapter disabled) on just
    those pairs, and then runs TRL's loss as in the precomputed case. A batch without the columns goes through
    TRL's default path (a reference forward on the whole batch). ``ref_rows`` counts reused / computed pairs.
    """

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(self._signature_columns) + [
            c for c in REF_COLUMNS if c not in self._signature_columns]

    def _compute_loss(self, model, inputs, return_outputs):
        if REF_COLUMNS[0] not in inputs or self.precompute_ref_logps:
            return super()._compute_loss(model, inputs, return_outputs)
        ref_c, ref_r = inputs[REF_COLUMNS[0]].clone(), inputs[REF_COLUMNS[1]].clone()
        missing = torch.isnan(ref_c) | torch.isnan(ref_r)
        if missing.any():
            rows = missing.nonzero().flatten()
            with quiet_gc_warning():
                c, r = self.compute_ref_log_probs(self.model, _select_pairs(inputs, rows))
            ref_c[rows] = torch.where(torch.isnan(ref_c[rows]), c.to(ref_c.dtype), ref_c[rows])
            ref_r[rows] = torch.where(torch.isnan(ref_r[rows]), r.to(ref_r.dtype), ref_r[rows])
        if self.model.training:
            counts = getattr(self, "ref_rows", {"reused": 0, "computed": 0})
            n_missing = int(missing.sum())
            self.ref_rows = {"reused": counts["reused"] + len(missing) - n_missing,
                             "computed": counts["computed"] + n_missing}
        self.precompute_ref_logps = True
        try:
            return super()._compute_loss(model, inputs | {REF_COLUMNS[0]: ref_c, REF_COLUMNS[1]: ref_r},
                                         return_outputs)
        finally:
            self.precompute_ref_logps = False


def _nan(v) -> float:
    return float("nan") if v is None else float(v)


def _select_pairs(inputs: dict, rows: torch.Tensor) -> dict:
    """The sub-batch of pairs ``rows`` (chosen rows i and rejected rows B + i), keeping TRL's [chosen, rejected].

    Per-row tensors are indexed; the Qwen2-VL family's ``pixel_values`` hold every row's patches concatenated, so
    each selected row's patches are cut out by its ``image_grid_thw`` (patches = t · h · w)."""
    b2 = inputs["input_ids"].shape[0]
    idx = torch.cat([rows, rows + b2 // 2]).to(inputs["input_ids"].device)
    grid = inputs.get("image_grid_thw")
    out = {}
    for k, v in inputs.items():
        if k in REF_COLUMNS:
            continue
        if k == "pixel_values" and grid is not None and v.shape[0] != b2:
            ends = grid.prod(-1).cumsum(0)
            starts = ends - grid.prod(-1)
            out[k] = torch.cat([v[int(starts[i]): int(ends[i])] for i in idx.tolist()])
            continue
        if not (torch.is_tensor(v) and v.dim() >= 1 and v.shape[0] == b2):
            raise ValueError(f"cannot select pairs from the batch entry {k!r} of shape "
                             f"{tuple(v.shape) if torch.is_tensor(v) else type(v).__name__}: it has no row per "
                             "sequence (a model class this trainer does not know)")
        out[k] = v.index_select(0, idx.to(v.device))
    return out


def trl_config(dcfg: DpoConfig, output_dir: str | Path, max_steps: int, sft_only: bool = False,
               device: str = "auto", dtype: str = "float32", progress: bool = True, processes: int = 1):
    """TRL's ``DPOConfig`` for one strategy. CPU: no bf16 and no gradient checkpointing (TRL defaults both on).

    ``dcfg.batch_size`` is the global batch: with ``processes`` data-parallel processes (``accelerate launch``)
    each takes ``batch_size / processes`` pairs per step, so a step sees the same pairs however many run it.
    """

    if dcfg.batch_size % processes:
        raise ValueError(f"dpo.batch_size={dcfg.batch_size} cannot be split over {processes} processes; choose a "
                         "process count that divides it (launch.dpo_processes / accelerate's --num_processes)")
    on_gpu = resolve_device(device).type == "cuda"
    loss_type, weights = (["sft"], [1.0]) if sft_only else (list(dcfg.loss_type), list(dcfg.loss_weights))
    with quiet_gc_warning():
        return TrlDPOConfig(
            output_dir=str(output_dir), learning_rate=dcfg.learning_rate,
            per_device_train_batch_size=dcfg.batch_size // processes, gradient_accumulation_steps=dcfg.grad_accum,
            max_steps=max_steps, beta=dcfg.beta, loss_type=loss_type, loss_weights=weights,
            lr_scheduler_type=dcfg.lr_scheduler, warmup_steps=dcfg.warmup_ratio,   # a float < 1 is a ratio
            weight_decay=dcfg.weight_decay, max_length=dcfg.max_length, seed=dcfg.seed, data_seed=dcfg.seed,
            bf16=on_gpu and dtype == "bfloat16", fp16=False, use_cpu=not on_gpu,
            gradient_checkpointing=on_gpu and dcfg.gradient_checkpointing,
            logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=not progress,
            dataloader_num_workers=0, remove_unused_columns=True, ddp_find_unused_parameters=False)


class StepProgress(TrainerCallback):
    """The trainer's steps as a :class:`~m3po_utils.progress.Progress` line (the runner's terminal, the notebook),
    with the last logged loss; only the main process of a launch reports."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = Progress(state.max_steps, self.desc, enabled=state.is_world_process_zero)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.info["loss"] = round(float(logs["loss"]), 3)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.set(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


def build_trainer(model, processor, table, dcfg: DpoConfig, output_dir: str | Path, max_steps: int,
                  sft_only: bool = False, device: str = "auto", dtype: str = "float32", progress: bool = True,
                  processes: int = 1, desc: str = "DPO-LoRA"):
    """A TRL trainer with a fresh LoRA adapter on ``model`` (which PEFT wraps in place).

    ``table`` with the reference columns → :class:`ReusedReferenceDPOTrainer` with the reference-carrying
    collator; without them → TRL's own ``DPOTrainer`` (a reference forward each step).
    """
    check_lora_targets(model, dcfg)
    with quiet_gc_warning():
        trainer = _build_trainer(model, processor, table, dcfg, output_dir, max_steps, sft_only, device, dtype,
                                 progress, processes)
    trainer.add_callback(StepProgress(desc))
    return trainer


def _build_trainer(model, processor, table, dcfg, output_dir, max_steps, sft_only, device, dtype, progress,
                   processes):
    args = trl_config(dcfg, output_dir, max_steps, sft_only, device, dtype, progress, processes)
    if REF_COLUMNS[0] in table.column_names:
        collator = VisionPreferenceCollatorWithReference(processor=processor, max_length=args.max_length)
        trainer = ReusedReferenceDPOTrainer(model=model, args=args, train_dataset=table, processing_class=processor,
                          peft_config=lora_config(dcfg), data_collator=collator)
    else:
        trainer = DataParallelDPOTrainer(model=model, args=args, train_dataset=table, processing_class=processor,
                                         peft_config=lora_config(dcfg))
    if not progress:   # no progress bar and no printed log dicts (the log is in trainer.state.log_history)
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer
