import json
import math

from m3po_utils.io import atomic_write_json, load_results
from m3po_utils.results import record_results


def test_results_are_strict_json(tmp_path):
    record_results(tmp_path, "04_x", {"a": math.nan, "b": {"c": math.inf, "d": [1.5, -math.inf]}, "e": 2})
    text = (tmp_path / "results" / "04_x.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data == {"a": None, "b": {"c": None, "d": [1.5, None]}, "e": 2}
    record_results(tmp_path, "04_x", {"e": 3})          # merges
    assert load_results(tmp_path, "04_x")["e"] == 3 and load_results(tmp_path, "04_x")["a"] is None


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"k": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
    assert oct((tmp_path / "x.json").stat().st_mode & 0o777) == "0o644"
