"""Typed results: the notebooks write through one schema per stage and the readers read through it, so a field
renamed on one side fails here instead of silently dropping a sentence."""

import json

import pytest
from pydantic import create_model
from records import complete, record

from m3po_utils import learnt, testbed
from m3po_utils import results as R
from m3po_utils.io import load_results


def test_a_record_is_written_as_given_and_read_typed(tmp_path):
    data = complete("02_mas", {"spearman": {"clip": 0.1, "judge": 0.9, "mas": float("nan")}, "n_prompts": 3})
    R.record_results(tmp_path, "02_mas", data)
    raw = load_results(tmp_path, "02_mas")
    assert raw["spearman"] == {"clip": 0.1, "judge": 0.9, "mas": None}        # strict JSON, as before
    rec = R.load(tmp_path, "02_mas")
    assert isinstance(rec, R.MasResults) and rec.spearman.judge == 0.9 and rec.spearman.mas is None
    R.record_results(tmp_path, "02_mas", {"complete": True})                   # merges into what is there
    assert R.load(tmp_path, "02_mas").complete is True and R.load(tmp_path, "02_mas").n_prompts == 3


def test_a_key_the_schema_does_not_know_stops_the_writer_naming_it(tmp_path):
    data = complete("02_mas")
    data["rank_correlation"] = data.pop("coverage")          # a notebook that renamed a field
    with pytest.raises(R.ResultsError, match="02_mas.*coverage: Field required.*rank_correlation: Extra inputs"):
        R.record_results(tmp_path, "02_mas", data)
    assert not (tmp_path / "results" / "02_mas.json").exists()                # nothing half-right was written
    with pytest.raises(R.ResultsError, match=r"lvlm\.pope\.random\.accuracy"):
        R.parse("00_world", complete("00_world", {"lvlm": {"pope": {"random": {"accuracy": "high"}}}}))


def _renamed(schema, old: str, new: str):
    """``schema`` with its field ``old`` called ``new`` (what a rename on the writing side does to the readers)."""
    own = {k: f for k, f in schema.model_fields.items() if k not in R.Record.model_fields}
    return create_model(f"{schema.__name__}Renamed", __base__=R.Record,
                        **{(new if k == old else k): (f.annotation, f) for k, f in own.items()})


def test_a_field_renamed_in_the_schema_fails_its_readers(monkeypatch):
    """The other side: the schema renames a field but a reader still reads the old name — an error, not a
    paragraph without its sentence or a bar silently not measured."""
    mas = _renamed(R.MasResults, "spearman", "rank_correlation")
    data = complete("02_mas")
    data["rank_correlation"] = {"clip": 0.1, "judge": 0.2, "mas": 0.3}
    with pytest.raises(AttributeError, match="spearman"):
        learnt.STAGES["02_mas"](mas.model_validate(data))
    evaluation = complete("06_evaluation")
    evaluation["minimum_detectable"] = evaluation.pop("mde")
    monkeypatch.setitem(R.SCHEMAS, "06_evaluation", _renamed(R.EvaluationResults, "mde", "minimum_detectable"))
    with pytest.raises(AttributeError, match="mde"):
        testbed.check(record("00_world"), record("02_mas"), record("03_confidence"),
                      R.parse("06_evaluation", evaluation))


def test_every_stage_has_a_schema_and_an_unknown_stage_keeps_its_fields():
    assert set(R.SCHEMAS) == {"00_world", "01_candidates", "02_mas", "03_confidence", "04_selection", "05_dpo",
                              "06_evaluation", "07_rounds", "10_experiments", "11_hard_negatives"}
    rec = R.parse("11_new", {"complete": True, "anything": [1, 2]})
    assert rec.complete is True and rec.model_extra == {"anything": [1, 2]}


@pytest.mark.notebooks
def test_every_record_of_the_smoke_series_reads_through_its_schema(smoke_run):
    """Each stage's recorded results (written through the schema) read back typed, and their JSON is exactly what
    the notebook recorded (the schema validates, it does not rewrite)."""
    for path in sorted((smoke_run / "results").glob("0*.json")):
        rec = R.load(smoke_run, path.stem)
        assert type(rec) is R.SCHEMAS[path.stem] and rec.complete is True, path.stem
        raw = json.loads(path.read_text())
        assert set(rec.model_fields_set) == set(raw), path.stem


def test_every_skip_reason_of_the_rules_has_a_field():
    from m3po_utils.results import StrategyStats
    from m3po_utils.rules import SKIP_REASONS
    assert {f"skip_{r}" for r in SKIP_REASONS} <= set(StrategyStats.model_fields)
