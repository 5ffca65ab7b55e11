"""LoRA on the language model only: target regexes, the PEFT config, wrapping and checking what an adapter touches."""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from m3po_utils.config import DpoConfig

_GC_WARNING = ".*gradient_checkpointing.* is deprecated"   # transformers 5 renamed it; TRL / PEFT still use the old name


class LoraTargetError(ValueError):
    """A LoRA target that matches no linear module of the model; the message lists the names there are."""


@contextlib.contextmanager
def quiet_gc_warning():
    """Silence transformers 5's rename warning for ``gradient_checkpointing``, which TRL 1.16 still triggers."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_GC_WARNING, category=FutureWarning)
        yield


def lora_parts(targets: Sequence[str] = ("q_proj", "v_proj"), projector: bool = False,
               vision: bool = False) -> dict[str, str]:
    """One regular expression per part of the LVLM that gets LoRA (matched with ``re.fullmatch``).

    LLaVA in transformers 5 names its parts ``model.language_model``, ``model.vision_tower`` and
    ``model.multi_modal_projector``; Qwen2-VL / Qwen2.5-VL ``model.language_model`` and ``model.visual`` (its
    projector is the vision side's ``merger``). Vision towers have attention projections too, hence the prefixes:
    the same ``q_proj`` / ``v_proj`` targets stay on the language model of either class.
    """
    names = "|".join(targets)
    parts = {"language_model": rf"model\.language_model\..*\.({names})"}
    if vision:
        parts["vision_tower"] = rf"model\.(?:vision_tower|visual\.blocks)\..*\.({names})"
    if projector:
        parts["multi_modal_projector"] = r"model\.(?:multi_modal_projector\.linear_\d+|visual\.merger\.mlp\.\d+)"
    return parts


def lora_target_regex(targets: Sequence[str] = ("q_proj", "v_proj"), projector: bool = False,
                      vision: bool = False) -> str:
    """PEFT's ``target_modules`` as one regular expression (PEFT matches a string with ``re.fullmatch``)."""
    return "|".join(f"(?:{p})" for p in lora_parts(targets, projector, vision).values())


def lora_config(dcfg: DpoConfig):
    from peft import LoraConfig

    return LoraConfig(r=dcfg.lora_r, lora_alpha=dcfg.lora_alpha, lora_dropout=dcfg.lora_dropout, bias="none",
                      target_modules=lora_target_regex(dcfg.lora_targets, dcfg.lora_projector, dcfg.lora_vision))


def wrap_lora(model, dcfg: DpoConfig):
    """``peft.get_peft_model`` with a fresh adapter of ``dcfg`` (wraps ``model`` in place), to inspect it."""
    from peft import get_peft_model

    check_lora_targets(model, dcfg)
    with quiet_gc_warning():
        return get_peft_model(model, lora_config(dcfg))


def check_lora_targets(model, dcfg: DpoConfig) -> dict[str, list[str]]:
    """Module names each LoRA part will wrap; a part that matches no module is a :class:`LoraTargetError`."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    out = {}
    for part, pattern in lora_parts(dcfg.lora_targets, dcfg.lora_projector, dcfg.lora_vision).items():
        hits = [n for n in names if re.fullmatch(pattern, n)]
        if not hits:
            inside = [n.rsplit(".", 1)[-1] for n in names if f".{part}." in f".{n}"]
            sample = ", ".join(dict.fromkeys(inside)) or ", ".join(names[:8])
            raise LoraTargetError(
                f"LoRA target {pattern!r} (dpo.lora_targets={tuple(dcfg.lora_targets)}, part {part}) matches no "
                f"linear module of {type(model).__name__}; the linear layers there are named: {sample}")
        out[part] = hits
    return out


def lora_summary(model) -> dict[str, Any]:
    """Trainable (LoRA) and total parameters of a PEFT model, and how many LoRA modules sit in each part."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    modules: dict[str, int] = {}
    for name, _ in model.named_modules():
        if name.endswith(".lora_A"):
            part = next((p for p in ("language_model", "vision_tower", "visual", "multi_modal_projector") if p in name),
                        "other")
            modules[part] = modules.get(part, 0) + 1
    return {"trainable": trainable, "total": total, "trainable_share": trainable / total, "lora_modules": modules}
