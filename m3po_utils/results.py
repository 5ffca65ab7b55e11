"""One typed schema per stage's ``results/NN_name.json``: what the notebooks write and everything else reads.

Each notebook collects its named figures in a dict and records it with :func:`m3po_utils.io.record_results`,
which validates the merged record against the stage's schema here (:data:`SCHEMAS`) before writing: a key that
is not in the schema, a value of the wrong type or a missing required field stops the notebook with the field's
name. The readers — the generated conclusions (:mod:`m3po_utils.learnt`), the testbed's bars
(:mod:`m3po_utils.testbed`), the report and the tools — get the record through :func:`parse` / :func:`load` as a
typed object and read attributes, so a field renamed on one side fails a test on the other instead of silently
dropping a sentence.

The schemas describe the JSON as written: numbers that may be NaN are ``float | None`` (strict JSON stores NaN as
null), tables kept for reading (one row per family, per strategy, ...) are typed as mappings of rows, and the
parts a reader uses by name are models of their own. The JSON itself is written as the notebook built it (the
schema validates, it does not rewrite), so a record's bytes do not depend on this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from m3po_utils.io import atomic_write_json, json_ready, load_results

Num = float | None          # a number that may have been NaN (stored as null)
Table = dict[str, dict[str, Any]]     # rows by name, columns by name: kept for reading, not read by name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class Record(_Strict):
    """The fields every stage's record carries: the runner stamps ``run_id`` / ``inputs``, the notebook the rest."""

    preset: str | None = None
    learnt: str | None = None
    complete: bool | None = None
    run_id: str | None = None
    inputs: dict[str, str | None] | None = None


# ------------------------------------------------------------------------------------------ 00 world

class PopeSetting(_Strict):
    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    n: int
    false_positives: int
    partner: int
    partner_share: Num = None


class Descriptions(_Strict):
    precision: float
    recall: float
    chair_i: float
    chair_s: float
    verifier_score: float
    n: int


class BaseModelReport(_Strict):
    pope: dict[str, PopeSetting]
    describe: Descriptions
    families: dict[str, float]      # acc_<family>: greedy exact-answer accuracy
    train_seconds: float
    parameters: dict[str, int]


class Retrieval(_Strict):
    top1: float
    top5: float
    chance_top1: float
    n: int
    n_texts: int


class ClipReport(_Strict):
    retrieval: Retrieval
    train_seconds: float


class WorldResults(Record):
    partner_given_lead: dict[str, float] | None = None
    verifier_demo: dict[str, Any] | None = None
    lvlm: BaseModelReport | None = None      # shapes world: the trained base, measured on the evaluation split
    clip: ClipReport | None = None


# ------------------------------------------------------------------------------------------ 01 candidates

class Generation(_Strict):
    rows: int
    prompts: int
    n_candidates: int
    seconds: float
    chunks: int


class Diversity(_Strict):
    mean_distinct: float
    by_family: Table
    mean_score_spread: Num = None
    share_prompts_with_spread: Num = None
    candidate_accuracy: Num = None


class CoverageByN(_Strict):
    k: list[int]
    mean_distinct: list[float]
    share_with_correct: list[float] | None = None
    share_with_pair: list[float] | None = None


class CandidatesResults(Record):
    temperature_sweep: dict[str, list[Any]]
    generation: Generation
    validation_generation: dict[str, Any] | None = None
    eos_share: float
    mean_length: float
    diversity: Diversity
    coverage_by_n: CoverageByN


# ------------------------------------------------------------------------------------------ 02 MAS

class Coverage(_Strict):
    candidates: int
    missing: int
    missing_share: float
    max_missing: float
    failures_by_kind: dict[str, int]


class Spearman(_Strict):
    clip: Num
    judge: Num
    mas: Num


class Agreement(_Strict):
    n: Num
    spearman: Num
    within_prompt_spearman: Num
    top1: Num


class WeightRow(_Strict):
    clip_weight: float
    pairs: int
    ordered: Num
    truth_gap: Num
    chosen_right: Num
    rejected_wrong: Num


class WeightSweep(_Strict):
    prompts: int
    candidates: int
    preset_clip_weight: float
    best_clip_weights: list[float]
    rows: list[WeightRow]


class MasResults(Record):
    n_prompts: int
    n_candidates: int
    clip: dict[str, Any]
    judge: dict[str, Any]
    coverage: Coverage
    mas_missing: int
    judge_information: dict[str, Any] | None = None
    agreement: dict[str, Agreement] | None = None
    spearman: Spearman | None = None
    contrast: dict[str, Any] | None = None          # n_pairs and one row per family: CLIP, judge, MAS
    weight_sweep: WeightSweep | None = None
    top1_by_family: Table | None = None
    noise_sweep: list[dict[str, Any]] | None = None
    wall_s: float | None = None


# ------------------------------------------------------------------------------------------ 03 confidence

class Calibration(_Strict):
    mean_accuracy: Num
    top1_accuracy: Num
    p_wrong_given_confident: Num
    p_wrong_given_unsure: Num
    prompts_with_confident_wrong: Num


class Headroom(_Strict):
    """One family's room for self-sampling (notebook 03's table; the JSON keeps the table's column names)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    prompts: int
    pass_1: Num = Field(None, alias="pass@1")
    pass_n: Num = Field(None, alias="pass@N")
    greedy: Num = None
    room: Num = Field(None, alias="pass@N − greedy")
    confident_wrong: Num = None


class LengthEffect(_Strict):
    mean_length: Num
    length_vs_sum: Num
    length_vs_mean: Num


class ConfidenceResults(Record):
    max_abs_logprob_diff: float
    max_abs_token_logprob_diff: float
    checked_sequences: int
    correlations: Table | None = None
    length_effect: dict[str, LengthEffect] | None = None
    self_consistency_mean: Num = None
    quadrants: dict[str, int] | None = None
    calibration: Calibration | None = None
    ece_short_answers: Num = None
    headroom: dict[str, Headroom] | None = None


# ------------------------------------------------------------------------------------------ 04 selection

class StrategyStats(_Strict):
    pairs: float
    skip_fewer_than_two_distinct: float
    skip_all_mas_equal: float
    skip_margin_below_min: float
    skip_mas_missing: float
    skip_length_filter: float = 0.0
    hard_negative_rate: Num = None
    mean_mas_gap: Num = None
    rejected_wrong: Num = None
    chosen_right: Num = None
    differs_from_reference: Num = None


class YesNoLead(_Strict):
    strategy: str
    family: str
    pairs: int
    chosen_yes: float
    rejected_yes: float
    push_to_no: float
    same_answer: float


class UnitScales(_Strict):
    median_mas_gap: float
    p90_mas_gap: float
    share_penalised: float
    median_excess_nats: float
    p90_excess_nats: float
    alpha_balance: Num


class ConfidenceKind(_Strict):
    pairs: float
    len_chosen: Num
    len_rejected: Num
    rejected_shorter: Num
    hard_negative_rate: Num
    rejected_wrong: Num = None


class SelectionResults(Record):
    alpha: float
    delta: float
    confidence: str
    prompts: int
    alpha_sweep: dict[str, list[Any]]
    unit_scales: UnitScales
    confidence_kinds: dict[str, ConfidenceKind]
    length_logp_spearman: Num
    strategies: dict[str, StrategyStats]
    disagreements: int
    yes_no_leads: list[YesNoLead]
    pair_agreement: list[dict[str, Any]] | None = None
    m3po_agreement: list[dict[str, Any]] | None = None   # selection.agreement_with: M3PO's pair vs bvw / random / oracle


# ------------------------------------------------------------------------------------------ 05 DPO

class LoraSummary(_Strict):
    trainable: int
    total: int
    trainable_share: float
    lora_modules: dict[str, int]
    target_regex: str


class ReferenceCheck(_Strict):
    pairs: int | None = None
    max_abs_diff: Num = None
    max_ref_logp_diff: Num = None
    reused: dict[str, Num] | None = None
    trl: dict[str, Num] | None = None
    skipped: str | None = None


class ValidationScores(_Strict):
    model_config = ConfigDict(extra="allow", frozen=True)   # acc_<family> per family, as measured
    score: Num
    correct: Num
    hallucination: Num
    n: int


class DpoResults(Record):
    hyper_parameters: dict[str, Any]
    lora: LoraSummary
    pairs_per_strategy: int
    steps: int
    retokenisation_match_share: Num = None
    retokenisation: Table | None = None
    sft_same_chosen_share: Num = None
    reference_check: ReferenceCheck | None = None
    strategies: Table
    validation: dict[str, ValidationScores] | None = None


# ------------------------------------------------------------------------------------------ 06 evaluation

class Interval(_Strict):
    mean: Num
    lo: Num
    hi: Num


class Delta(_Strict):
    comparison: str
    metric: str
    delta: Num
    lo: Num
    hi: Num
    p_le_0: Num = None


class PairedDelta(_Strict):
    delta: Num
    lo: Num
    hi: Num
    p_le_0: Num = None


class Mde(_Strict):
    comparison: str
    metric: str
    mde: Num
    observed: Num = None


class MdeByScenes(_Strict):
    comparison: str
    metric: str
    scenes: int
    mde: Num


class Bar(_Strict):
    bar: str
    target: str
    measured: str
    met: bool | None
    misses: list[str]


class Verdicts(_Strict):
    better: list[str]
    worse: list[str]
    no_difference: list[str]


class EvaluationResults(Record):
    settings: dict[str, Any]
    alpha: float
    delta: float
    training: list[dict[str, Any]]
    scenes: int
    questions: int
    judge_requests: dict[str, Any] | None = None
    metrics: dict[str, dict[str, Interval]]
    per_seed: list[dict[str, Any]]
    deltas: list[Delta]
    oracle: Table | None = None          # per metric: gain, gain_lo, gain_hi, moves, <method>[_lo, _hi]
    mde: list[Mde]
    mde_by_scenes: list[MdeByScenes] | None = None
    testbed_bars: list[Bar] | None = None
    mme_subtask_deltas: dict[str, dict[str, PairedDelta]] | None = None
    ifeval: dict[str, dict[str, Interval]] | None = None     # method -> "<seen|held>_<measure>" (ifeval_intervals)
    ifeval_types: Table | None = None    # constraint type -> trained on, n, share followed strictly per method
    dialogue: dict[str, dict[str, Interval]] | None = None   # method -> right, clean_right, carried, history, image
    dialogue_example: dict[str, Any] | None = None           # question, truth, every model's follow-up answer
    hallucination_changes: dict[str, Any] | None = None
    benchmark_files: dict[str, Any] | None = None
    m3po_vs_best_of_n: Verdicts | None = None
    verdict: str | None = None                      # learnt.verdict: does M3PO beat each control here, and why
    report_md: str | None = None


# ------------------------------------------------------------------------------------------ 10 experiments

class ExperimentsResults(Record):
    settings: dict[str, Any]
    points: int
    sweep_seconds: float
    distinct_models: int
    trained_now: int
    train_and_eval_seconds: float
    grid: Table | None = None
    grid_selection: Table | None = None
    best_vs_default: Table | None = None
    confidence_ablation: Table | None = None
    noise: Table | None = None
    noise_selection: Table | None = None
    budget: Table | None = None
    budget_selection: Table | None = None
    negatives: Table | None = None
    negatives_vs_sft: list[Delta] | None = None


# ------------------------------------------------------------------------------------------ 07 rounds

class ChosenRound(_Strict):
    round: int
    criterion: str
    value: Num
    by_round: dict[str, Num]


class RoundPrediction(_Strict):
    prediction: str
    measured: str
    outcome: str            # "as predicted", "opposite", "not shown" or "not run"


class AdaptiveResults(_Strict):
    pools: Table            # adaptive / fixed / all: candidates, pairs, hard-negative rate, verifier checks
    families: Table         # mean candidates per prompt, per family and pool
    evaluation: Table       # base, M3PO on each pool: metrics with intervals
    delta: Table            # adaptive − fixed per metric: delta, lo, hi
    total: int
    prompts: int
    n_max: int


class RoundsResults(Record):
    settings: dict[str, Any]
    key: str
    steps: int
    rounds: list[dict[str, Any]]            # one row per (rule, round), the base first (round 0)
    families: Table                         # pool pass@1 / pass@N per family, per (rule, round)
    chosen: dict[str, ChosenRound]
    evaluation: Table                       # every model's evaluation metrics with intervals
    versus: list[dict[str, Any]]
    eval_scenes: int
    round_seconds: dict[str, float]         # wall time of each round (all rules), as first computed
    judge: dict[str, int]                   # judge requests and cache hits of this execution
    lines: list[str]                        # what the rounds did, in sentences written from the numbers
    predictions: list[RoundPrediction]
    adaptive: AdaptiveResults | None = None


# ------------------------------------------------------------------------------------------ 11 hard negatives

class PredictionOutcome(_Strict):
    setting: str
    comparison: str
    metric: str
    predicted: str
    delta: Num
    lo: Num
    hi: Num
    outcome: str            # "as predicted", "opposite", "not shown" or "not run"


class VersusRow(_Strict):
    setting: str
    method: str
    versus: str
    f1: Num
    f1_lo: Num
    f1_hi: Num
    mme: Num
    mme_lo: Num
    mme_hi: Num


class HardNegExperiment(_Strict):
    conditions: int
    models: int
    trained_now: int
    seconds: float
    train_and_eval_seconds: float
    metrics: Table
    selection: Table
    predictions: list[PredictionOutcome]
    versus: list[VersusRow] = []
    prediction_text: str


class MapRow(_Strict):
    base: str
    experiment: str
    setting: str
    method: str
    f1: Num
    f1_lo: Num
    f1_hi: Num
    mme: Num
    mme_lo: Num
    mme_hi: Num
    f1_vs_sft: Num = None
    f1_vs_sft_lo: Num = None
    f1_vs_sft_hi: Num = None
    mme_vs_sft: Num = None
    mme_vs_sft_lo: Num = None
    mme_vs_sft_hi: Num = None
    f1_mde: Num = None
    mme_mde: Num = None
    same_pair_as_bvw: Num = None
    same_rejected_verdict_as_bvw: Num = None
    margin_m3po: Num = None
    margin_bvw: Num = None
    chosen_drift_m3po: Num = None
    chosen_drift_bvw: Num = None
    yes_ratio_m3po: Num = None
    yes_ratio_bvw: Num = None
    verdict: str


class HardNegResults(Record):
    settings: dict[str, Any]
    steps: dict[str, int]
    eval_scenes: int
    eval_questions: int
    experiments: dict[str, HardNegExperiment]
    totals: dict[str, float] | None = None
    assessor_agreement: Table | None = None
    map: list[MapRow] = []
    bases: list[str] = []
    map_paragraph: str | None = None
    defaults: str | None = None


SCHEMAS: dict[str, type[Record]] = {
    "00_world": WorldResults, "01_candidates": CandidatesResults, "02_mas": MasResults,
    "03_confidence": ConfidenceResults, "04_selection": SelectionResults, "05_dpo": DpoResults,
    "06_evaluation": EvaluationResults, "07_rounds": RoundsResults, "10_experiments": ExperimentsResults,
    "11_hard_negatives": HardNegResults,
}


class ResultsError(ValueError):
    """A stage's record that does not match its schema; the message names the stage and the fields."""


def schema(stage: str) -> type[Record]:
    """The schema of ``stage`` (``"02_mas"``); a stage without one gets the common fields and keeps the rest."""
    if stage in SCHEMAS:
        return SCHEMAS[stage]
    return type(f"Record_{stage}", (Record,), {"model_config": ConfigDict(extra="allow", frozen=True)})


def parse(stage: str, data: dict[str, Any]) -> Record:
    """``data`` as the typed record of ``stage``; :class:`ResultsError` names every field that does not fit."""
    try:
        return schema(stage).model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(record)'}: {e['msg']}"
                             for e in exc.errors()[:8])
        raise ResultsError(f"results of {stage} do not match their schema (m3po_utils.results."
                           f"{schema(stage).__name__}): {problems}") from None


def load(run_dir: str | Path, stage: str) -> Record:
    """The typed record of ``stage`` in ``run_dir`` (``FileNotFoundError`` naming the notebook when missing)."""
    return parse(stage, load_results(run_dir, stage))


def record_results(run_dir: str | Path, stage: str, values: dict[str, Any]) -> Path:
    """Merge ``values`` into ``run_dir/results/<stage>.json`` through the stage's schema: the merged record is
    validated (:func:`parse`) before it is written, and written as given."""
    path = Path(run_dir) / "results" / f"{stage}.json"
    current = load_results(run_dir, stage) if path.exists() else {}
    merged = current | values
    parse(stage, atomic_json(merged))
    return atomic_write_json(path, merged)


def atomic_json(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as strict JSON reads it back (NaN and infinities as null, tuples as lists): what is validated."""
    return json_ready(data)
