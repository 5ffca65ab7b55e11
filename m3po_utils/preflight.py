"""Settings checked when a run starts, before any notebook: what a later stage would otherwise find out late.

:func:`config.load_preset` checks each value on its own. This module checks what needs more than one value or
something outside the configuration — the judge's prompt versions, the prompts file of a hub preset, the API key
of a remote judge, the memory that ``N × prompts × length`` implies — with the same kind of message: the setting,
its value and how to fix it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from m3po_utils import rules
from m3po_utils.config import ConfigError, Preset
from m3po_utils.judge.client import JudgeUrlError, checked_url, is_loopback
from m3po_utils.judge.protocol import PROMPTS
from m3po_utils.shapes.instructions import FAMILIES

# Bytes a candidate's token costs in the candidates table and while it is sampled (ids, log-probs, logits row
# slices kept per step): a deliberately generous bound, so that the check only stops settings that cannot work.
BYTES_PER_TOKEN = 64


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def candidate_bytes(cfg: Preset) -> int:
    g = cfg.generation
    return g.n_prompts * g.n_candidates * g.max_new_tokens * BYTES_PER_TOKEN


def check(cfg: Preset, stages: Sequence[int] = tuple(range(100)), environ: dict[str, str] | None = None) -> None:
    """Raise :class:`ConfigError` for the first setting that a stage in ``stages`` could not work with."""
    env = os.environ if environ is None else environ
    mc, g = cfg.mas, cfg.generation
    if mc.prompt_version not in PROMPTS:
        raise ConfigError(f"mas.prompt_version={mc.prompt_version!r} is not a judge prompt; versions: "
                          f"{', '.join(PROMPTS)}")
    total = memory_bytes()
    need = candidate_bytes(cfg)
    if total and need > total // 2:
        raise ConfigError(
            f"generation.n_candidates={g.n_candidates} × generation.n_prompts={g.n_prompts} × "
            f"generation.max_new_tokens={g.max_new_tokens} implies ~{need / 2**30:.0f} GiB of candidates, more "
            f"than half of this machine's {total / 2**30:.0f} GiB; lower one of them")
    if cfg.world_kind == "hub" and 1 in stages:          # notebook 01 samples the prompts file's prompts
        if not g.prompts_file:
            raise ConfigError("generation.prompts_file is empty; a hub preset samples candidates for your own "
                              'prompts: set it to a JSON-lines file of {"image": path, "instruction": text}')
        path = Path(g.prompts_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"generation.prompts_file={g.prompts_file!r} "
                              f"{'is a directory' if path.is_dir() else 'does not exist'}; set it to a "
                              'JSON-lines file of {"image": path, "instruction": text}')
    try:                                     # as judge.client.judge_base_url: the environment wins
        url = (checked_url(env.get("OPENAI_BASE_URL"), "OPENAI_BASE_URL")
               or checked_url(cfg.models.judge_base_url or None, "models.judge_base_url"))
    except JudgeUrlError as exc:
        raise ConfigError(str(exc)) from None
    remote = cfg.world_kind == "hub" or bool(url)
    # the judge is called by notebook 02 and, in the shapes world, by notebook 06 (judge score of the answers)
    judged = 2 in stages or (cfg.world_kind == "shapes" and 6 in stages)
    if remote and mc.judge_weight > 0 and judged and not is_loopback(url):
        if not env.get("OPENAI_API_KEY"):
            raise ConfigError(f"OPENAI_API_KEY is not set; the judge at {url or 'api.openai.com'} needs it for "
                              "notebook 02 (and 06 in the shapes world); export OPENAI_API_KEY=... — it is never "
                              "read from a preset")
    _check_series(cfg, stages)


def _check_series(cfg: Preset, stages: Sequence[int]) -> None:
    """What one stage's settings must agree with another's, and the files a later stage reads."""
    trained = [m for m in cfg.evaluation.methods if m != "base"]
    missing = [m for m in trained if m not in cfg.dpo.strategies and m not in rules.sft_only_names()]
    if missing and 6 in stages:
        raise ConfigError(
            f"evaluation.methods={list(cfg.evaluation.methods)} evaluates {missing}, which dpo.strategies="
            f"{list(cfg.dpo.strategies)} does not train (notebook 05 trains dpo.strategies and best_of_n; notebook 06 "
            f"evaluates their adapters); add {missing} to dpo.strategies or drop {'it' if len(missing) == 1 else 'them'} "
            "from evaluation.methods")
    if cfg.world_kind == "shapes":
        unknown = [f for f, _ in cfg.generation.family_weights if f not in FAMILIES]
        if unknown:
            raise ConfigError(f"generation.family_weights names {unknown}, which the shapes world does not have; its "
                              f"instruction families are {list(FAMILIES)}")
    ec = cfg.evaluation
    if 6 in stages:
        for f in ec.pope_files:
            path = Path(f).expanduser()
            if not path.is_file():
                raise ConfigError(f"evaluation.pope_files names {str(f)!r}, which "
                                  f"{'is a directory' if path.is_dir() else 'does not exist'}; give the POPE question "
                                  "files (JSON lines, a JSON array or lmms-lab parquet)")
        if ec.pope_images and not Path(ec.pope_images).expanduser().is_dir():
            raise ConfigError(f"evaluation.pope_images={ec.pope_images!r} is not a folder; give the folder of the "
                              "images the POPE files name")
        if ec.mme_dir and not Path(ec.mme_dir).expanduser().exists():
            raise ConfigError(f"evaluation.mme_dir={ec.mme_dir!r} does not exist; give the MME release folder or the "
                              "lmms-lab parquet export")
    rc = cfg.rounds
    if 7 in stages:
        if rc.n_max > cfg.generation.n_candidates:
            raise ConfigError(f"rounds.n_max={rc.n_max} exceeds generation.n_candidates={cfg.generation.n_candidates}: "
                              "the adaptive budget reveals notebook 01's candidates wave by wave; lower rounds.n_max "
                              "(0 = all of them) or raise generation.n_candidates")
        if rc.wave > (rc.n_max or cfg.generation.n_candidates):
            raise ConfigError(f"rounds.wave={rc.wave} is more than the most candidates a prompt may get "
                              f"({rc.n_max or cfg.generation.n_candidates}); lower rounds.wave")
        if rc.prompts == "split" and cfg.generation.n_prompts < rc.rounds:
            raise ConfigError(f"rounds.prompts='split' gives each of rounds.rounds={rc.rounds} rounds a slice of "
                              f"generation.n_prompts={cfg.generation.n_prompts} prompts; use 'reuse' or fewer rounds")
    if cfg.world_kind == "hub" and 6 in stages and not (ec.pope_files or ec.mme_dir):
        raise ConfigError("a hub preset evaluates on real benchmark files and has none: set evaluation.pope_files "
                          "(with evaluation.pope_images for JSON files) and/or evaluation.mme_dir")
