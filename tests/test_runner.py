"""The series runner on tiny generated notebooks, executed by the real ``python3`` kernel."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from m3po_utils.report import build_report, flatten
from m3po_utils.run import NotebookFailed, discover, is_complete, main, run_series

PARAMS = 'preset = "smoke"\nrun_dir = ""\noverrides = {}'


def _notebook(name: str, body: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    record = (
        "from pathlib import Path\n"
        "from m3po_utils.results import record_results\n"
        f"with open(Path(run_dir) / 'counter.txt', 'a') as fh:\n"
        f"    fh.write({name!r} + '\\n')\n"
    )
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}"), params, nbformat.v4.new_code_cell(record),
                nbformat.v4.new_code_cell(body)]
    return nb


OK_BODY = (
    "import os\n"
    "record_results(run_dir, NAME, {'complete': True, 'preset': preset, 'run_dir': run_dir,\n"
    "               'overrides': overrides, 'cwd': os.getcwd(), 'x': 1, 'acc': 0.123456789,\n"
    "               'nested': {'f1': 2.0 / 3.0}, 'api_key': 'sk-do-not-leak', 'rows': [1, 2, 3],\n"
    "               'report_md': '| method | score |\\n|---|---|\\n| m3po | 9.5 |'})\n"
)


def _write(folder: Path, name: str, body: str) -> None:
    nbformat.write(_notebook(name, body.replace("NAME", repr(name))), folder / f"{name}.ipynb")


def _series(tmp_path: Path, **bodies: str) -> Path:
    """A folder of tiny notebooks, one per ``name=body``, in the given order."""
    folder = tmp_path / "nbs"
    folder.mkdir()
    for name, body in bodies.items():
        _write(folder, name, body)
    return folder


def _counter(run: Path) -> list[str]:
    path = run / "counter.txt"
    return path.read_text().split() if path.exists() else []


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder = tmp_path_factory.mktemp("notebooks")
    _write(folder, "00_a", OK_BODY)
    _write(folder, "01_b", OK_BODY)
    _write(folder, "10_analysis", OK_BODY)  # analysis band: outside the default range
    return folder


@pytest.fixture(scope="module")
def first_run(series, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "r1"
    records = run_series("smoke", run, {"world.n_train": "400"}, kernel="python3", notebooks_dir=series)
    return run, records


def test_discover_orders_and_rejects_duplicates(series, tmp_path):
    assert [nb.name for nb in discover(series)] == ["00_a", "01_b", "10_analysis"]
    _write(tmp_path, "03_x", OK_BODY)
    _write(tmp_path, "03_y", OK_BODY)
    with pytest.raises(ValueError, match="share the number 03"):
        discover(tmp_path)


@pytest.mark.notebooks   # executes notebooks in a kernel
def test_parameters_reach_notebooks_and_copies_are_kept(first_run):
    run, records = first_run
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert _counter(run) == ["00_a", "01_b"]  # 10_analysis is not in the default range 00..09
    res = json.loads((run / "results" / "00_a.json").read_text())
    assert res["preset"] == "smoke"
    assert res["run_dir"] == str(run.resolve())
    assert res["overrides"] == {"world.n_train": "400"}
    assert Path(res["cwd"]) == Path(__file__).resolve().parents[1]  # notebooks run from the repo root
    assert json.loads((run / "config.json").read_text())["world"]["n_train"] == 400
    for name in ("00_a", "01_b"):
        copy = run / "notebooks" / f"{name}.ipynb"
        executed = nbformat.read(copy, as_version=4)
        assert any(c.get("execution_count") for c in executed.cells if c.cell_type == "code")
    leftovers = [p.name for p in (run / "notebooks").iterdir() if p.name.startswith(".") or "failed" in p.name]
    assert leftovers == []
    timings = json.loads((run / "results" / "timings.json").read_text())
    assert set(timings) == {"00_a", "01_b"}
    assert all(t["status"] == "ok" and t["wall_s"] > 0 for t in timings.values())


@pytest.mark.notebooks   # executes notebooks in a kernel
def test_report_has_values_and_no_secrets(first_run):
    run, _ = first_run
    text = (run / "report.md").read_text()
    assert "preset `smoke`" in text
    appendix = text[text.index("## Appendix: every recorded figure"):]
    assert "### 00_a" in appendix and "### 01_b" in appendix
    assert "| acc | 0.1235 |" in appendix  # 4 significant digits
    assert "| nested.f1 | 0.6667 |" in appendix  # nested dicts flattened with dotted keys
    assert "| m3po | 9.5 |" in text  # report_md verbatim, up front
    assert text.index("## Key results") < text.index("| m3po | 9.5 |") < text.index("## Stages") \
        < text.index("## Appendix")
    assert "api_key" not in text and "sk-do-not-leak" not in text
    assert "rows" not in text  # lists are left out
    stages = text[text.index("## Stages"):text.index("## Appendix")]
    assert "| 00_a | ok |" in stages  # the stage table lists it


def test_flatten_skips_secret_like_keys():
    rows = dict(flatten({"a": 1, "Token_count": 3, "x": {"SECRET": "s", "OpenAI_Key": "k", "y": True}}))
    assert rows == {"a": "1", "x.y": "true"}


@pytest.mark.notebooks   # executes notebooks in a kernel
def test_complete_notebooks_are_skipped_and_redo_reruns(first_run, series, capsys):
    run, _ = first_run
    capsys.readouterr()
    records = run_series("smoke", run, {"world.n_train": "400"}, kernel="python3", notebooks_dir=series)
    assert [r["status"] for r in records] == ["skipped", "skipped"]
    assert _counter(run) == ["00_a", "01_b"]
    assert "skip 00_a (complete; --redo to run again)" in capsys.readouterr().out

    # An incomplete stage runs again, and so does everything after it (it reads that stage's outputs).
    results = run / "results" / "01_b.json"
    results.write_text(json.dumps({"complete": False}))
    records = run_series("smoke", run, {"world.n_train": "400"}, kernel="python3", notebooks_dir=series)
    assert [r["status"] for r in records] == ["skipped", "ok"]

    records = run_series("smoke", run, {"world.n_train": "400"}, redo=True, start=0, stop=10, kernel="python3",
                         notebooks_dir=series)
    assert [r["status"] for r in records] == ["ok", "ok", "ok"]
    assert _counter(run) == ["00_a", "01_b", "01_b", "00_a", "01_b", "10_analysis"]


@pytest.mark.notebooks   # executes notebooks in a kernel
def test_failure_stops_the_series_and_keeps_the_failed_copy(tmp_path, capsys):
    folder = _series(tmp_path, **{"00_a": OK_BODY, "01_bad": "x = 1\nraise ValueError('broken on purpose')",
                                  "02_c": OK_BODY})
    run = tmp_path / "run"
    rc = main(["--preset", "smoke", "--run-dir", str(run), "--kernel", "python3", "--notebooks-dir", str(folder)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "notebook 01_bad failed in cell 3" in err
    assert "ValueError: broken on purpose" in err
    failed = run / "notebooks" / "01_bad.failed.ipynb"
    assert str(failed.resolve()) in err and failed.exists()
    assert not (run / "notebooks" / "01_bad.ipynb").exists()
    assert _counter(run) == ["00_a", "01_bad"]  # 02_c never ran
    assert json.loads((run / "results" / "timings.json").read_text())["01_bad"]["status"] == "failed"
    assert (run / "report.md").exists()

    with pytest.raises(NotebookFailed) as info:  # the Python API raises; nothing complete is re-run
        run_series("smoke", run, kernel="python3", notebooks_dir=folder)
    assert info.value.notebook == "01_bad" and info.value.ename == "ValueError"
    assert [r["status"] for r in info.value.records] == ["skipped", "failed"]
    assert _counter(run) == ["00_a", "01_bad", "01_bad"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--preset", "smoke", "-p", "world.bogus=1"], "unknown setting 'world.bogus'"),
        (["--preset", "smoke", "-p", "world.n_train"], "is not KEY=VALUE"),
        (["--preset", "smoke", "-p", "world.partner_prob=2"], "world.partner_prob=2.0 is not allowed"),
        (["--preset", "smoke", "--kernel", "no-such-kernel"], "unknown kernel 'no-such-kernel'"),
        (["--preset", "smoke", "--from", "5", "--to", "2"], "--from 05 is after --to 02"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(args, message, series, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main([*args, "--run-dir", str(run), "--notebooks-dir", str(series)])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err
    assert "Traceback" not in err
    assert not run.exists()  # nothing was created


def test_run_dir_that_is_a_file_exits_2(series, tmp_path, capsys):
    path = tmp_path / "a-file"
    path.write_text("x")
    rc = main(["--preset", "smoke", "--run-dir", str(path), "--notebooks-dir", str(series)])
    assert rc == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.notebooks   # executes notebooks in a kernel
def test_run_dir_with_another_config_exits_2(first_run, series, capsys):
    run, _ = first_run
    rc = main(["--preset", "smoke", "-p", "world.n_eval=30", "--run-dir", str(run), "--notebooks-dir", str(series)])
    assert rc == 2
    assert "different configuration" in capsys.readouterr().err


def test_report_of_an_empty_run_dir(tmp_path):
    assert "No notebook has run" in build_report(tmp_path)


def test_a_rerun_stage_makes_the_later_ones_stale(series, tmp_path, capsys):
    """--redo of one stage alone: the stages after it are stale — the report says so and the next run reruns them;
    a failed rerun leaves the later stages stale, never "ok" on inputs that are gone."""
    run = tmp_path / "r"
    kw = dict(kernel="python3", notebooks_dir=series)
    run_series("smoke", run, start=0, stop=10, **kw)
    first = {n: json.loads((run / "results" / f"{n}.json").read_text()) for n in ("00_a", "01_b", "10_analysis")}
    assert first["01_b"]["inputs"] == {"00_a": first["00_a"]["run_id"]}
    assert set(first["10_analysis"]["inputs"]) == {"00_a", "01_b"}

    run_series("smoke", run, start=0, stop=0, redo=True, **kw)          # 00 alone
    report = build_report(run)
    assert "| 01_b | stale: its input 00_a was re-run since |" in report
    assert "| 10_analysis | stale: its input 00_a was re-run since |" in report
    capsys.readouterr()
    records = run_series("smoke", run, start=0, stop=10, **kw)
    assert [r["status"] for r in records] == ["skipped", "ok", "ok"]
    assert "run  01_b (stale: its input 00_a was re-run since)" in capsys.readouterr().out
    assert _counter(run) == ["00_a", "01_b", "10_analysis", "00_a", "01_b", "10_analysis"]
    assert "stale" not in build_report(run)

    # 00 fails on a rerun: 01 and 10 are stale (their input is not complete), and a plain run reruns them
    (run / "results" / "00_a.json").write_text(json.dumps({"complete": False}))
    assert "| 01_b | stale: its input 00_a is not complete |" in build_report(run)
    records = run_series("smoke", run, start=0, stop=1, **kw)
    assert [r["status"] for r in records] == ["ok", "ok"]


def test_analysis_range_needs_no_to(first_run, series, capsys):
    run, _ = first_run
    code = main(["--preset", "smoke", "--run-dir", str(run), "-p", "world.n_train=400", "--from", "10",
                 "--kernel", "python3", "--notebooks-dir", str(series)])
    assert code == 0 and "10_analysis" in capsys.readouterr().out


STAGE_BODY = (   # a stage "01_*" whose output is candidates/: notes what it found, writes, fails on request
    "out = Path(run_dir) / 'candidates'\n"
    "found = sorted(p.name for p in out.iterdir()) if out.is_dir() else []\n"
    "with open(Path(run_dir) / 'found.txt', 'a') as fh:\n"
    "    fh.write(','.join(found) + '\\n')\n"
    "out.mkdir(exist_ok=True)\n"
    "attempt = len((Path(run_dir) / 'counter.txt').read_text().split())\n"
    "(out / 'table.txt').write_text(f'attempt {attempt}')\n"
    "if (Path(run_dir) / 'fail-now').exists():\n"
    "    raise ValueError('broken on purpose')\n"
    "record_results(run_dir, NAME, {'complete': True})\n"
)


@pytest.mark.notebooks   # executes notebooks in a kernel
def test_a_failed_rerun_keeps_the_previous_outputs(tmp_path, capsys):
    """--redo starts the stage from nothing; if it fails, its previous outputs, record and run_id come back, so
    the later stages stay fresh, and what the failed attempt wrote is kept aside in .failed/."""
    folder = _series(tmp_path, **{"00_a": OK_BODY, "01_c": STAGE_BODY, "02_d": OK_BODY})
    run = tmp_path / "run"
    kw = dict(kernel="python3", notebooks_dir=folder)
    run_series("smoke", run, start=0, stop=2, **kw)
    table = run / "candidates" / "table.txt"
    assert table.read_text() == "attempt 2"
    before = json.loads((run / "results" / "01_c.json").read_text())

    (run / "fail-now").touch()
    args = ["--preset", "smoke", "--run-dir", str(run), "--from", "1", "--to", "1", "--redo",
            "--kernel", "python3", "--notebooks-dir", str(folder)]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "kept the previous outputs of 01_c" in err
    assert table.read_text() == "attempt 2"                              # the previous output is back
    assert json.loads((run / "results" / "01_c.json").read_text()) == before
    assert (run / ".failed" / "01_c" / "candidates" / "table.txt").read_text() == "attempt 4"
    assert not (run / ".previous" / "01_c").exists()
    assert (run / "found.txt").read_text().splitlines() == ["", ""]    # --redo: it started from nothing
    report = build_report(run)
    assert "| 01_c | ok, previous outputs kept: a re-run failed (ValueError: broken on purpose) |" in report
    assert "| 02_d | ok |" in report                                     # still fresh: 01_c's run_id is back
    assert [r["status"] for r in run_series("smoke", run, start=0, stop=2, **kw)] == ["skipped"] * 3

    (run / "fail-now").unlink()
    assert main(args) == 0
    assert table.read_text() == "attempt 5"
    assert "| 02_d | stale: its input 01_c was re-run since |" in build_report(run)
    assert not (run / ".previous").exists() or not any((run / ".previous").iterdir())

    # a "complete" record whose main output was deleted by hand is nothing to restore: a failed re-run leaves the
    # stage incomplete, and a plain run tries it again
    shutil.rmtree(run / "candidates")
    (run / "fail-now").touch()
    assert main(args) == 1
    assert not is_complete(run, "01_c") and not (run / ".previous" / "01_c").exists()


@pytest.mark.notebooks   # executes notebooks in a kernel
def test_an_interrupted_rerun_is_restored_or_resumed(tmp_path, capsys):
    """A runner killed during a re-run leaves .previous/NN: a run without that stage restores it; a run with it
    resumes (the stage sees its partial outputs) and drops the backup when it finishes."""
    from m3po_utils import rundir as R

    folder = _series(tmp_path, **{"00_a": OK_BODY, "01_c": STAGE_BODY})
    run = tmp_path / "run"
    kw = dict(kernel="python3", notebooks_dir=folder)
    run_series("smoke", run, start=0, stop=1, **kw)
    table = run / "candidates" / "table.txt"

    def killed_rerun():   # what the runner had done when it was killed: backup, record dropped, partial output
        R.keep_previous(run, "01_c")
        (run / "results" / "01_c.json").unlink()
        (run / "candidates").mkdir()
        table.write_text("partial")

    killed_rerun()
    capsys.readouterr()
    run_series("smoke", run, start=0, stop=0, **kw)
    assert "restored the previous outputs of 01_c" in capsys.readouterr().out
    assert table.read_text() == "attempt 2"
    assert (run / ".failed" / "01_c" / "candidates" / "table.txt").read_text() == "partial"
    assert json.loads((run / "results" / "01_c.json").read_text())["complete"] is True

    killed_rerun()
    records = run_series("smoke", run, start=0, stop=1, **kw)
    assert [r["status"] for r in records] == ["skipped", "ok"]
    assert (run / "found.txt").read_text().splitlines()[-1] == "table.txt"   # it resumed on its partial output
    assert not R.has_previous(run, "01_c")


@pytest.mark.notebooks   # executes notebooks in a kernel
def test_progress_inside_a_notebook_names_the_slow_cell(tmp_path, capsys):
    folder = _series(tmp_path, **{"00_a": "# papermill_description=training_the_model\nimport time\n"
                                          "time.sleep(0.5)\n" + OK_BODY})
    run_series("smoke", tmp_path / "run", kernel="python3", notebooks_dir=folder, stop=0)
    err = capsys.readouterr().err
    assert "Executing training_the_model" in err and "cell" in err
