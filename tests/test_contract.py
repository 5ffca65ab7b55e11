"""The stage contract under faults: a failed stage's outputs are not read, one runner per run directory, a setting a
finished stage has not read may change, and every printed remedy is a command for this run."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from records import complete

from m3po_utils import report
from m3po_utils import rundir as R
from m3po_utils.config import ConfigError, load_preset, parse_overrides


def _run(tmp_path: Path, overrides=None, done=("00_world", "01_candidates"), failed=None) -> Path:
    """A run directory of preset smoke whose stages ``done`` are recorded complete (each stamped with its inputs)
    and whose stage ``failed`` failed after writing outputs."""
    run = tmp_path / "run"
    (run / "results").mkdir(parents=True)
    (run / "config.json").write_text(load_preset("smoke", overrides).to_json())
    for name in done:
        (run / "results" / f"{name}.json").write_text(json.dumps(complete(name, {"complete": True})))
        R.stamp(run, name, R.upstream_of(name, R.recorded_stages(run)))
    timings = {name: {"status": "ok", "wall_s": 1.0} for name in done}
    if failed:
        timings[failed] = {"status": "failed", "wall_s": 1.0,
                           "error": "MasIncomplete: 24 of 160 candidates (15.0%) have no MAS"}
    (run / "results" / "timings.json").write_text(json.dumps(timings))
    (run / "mas" / "scores").mkdir(parents=True)
    (run / "mas" / "scores" / "state.json").write_text("{}")        # what the failed stage left behind
    return run


def test_a_failed_stage_s_partial_output_is_not_read(tmp_path, monkeypatch):
    run = _run(tmp_path, {"world.n_train": 500}, failed="02_mas")
    monkeypatch.delenv(R.STAGE_ENV, raising=False)
    with pytest.raises(R.StageIncomplete) as exc:
        R.RunDir(run).load_mas()
    msg = str(exc.value)
    assert "notebook 02 (MAS) has not finished" in msg and "its last run failed: MasIncomplete: 24 of 160" in msg
    assert f"--preset smoke -p world.n_train=500 --run-dir {run} --from 02 --to 02 --redo" in msg
    monkeypatch.setenv(R.STAGE_ENV, "02_mas")                          # notebook 02 reads its own outputs
    R.RunDir(run).require(run / "mas" / "scores" / "state.json", "02")
    (run / "results" / "02_mas.json").write_text(json.dumps({"complete": False}))    # interrupted by hand
    timings = json.loads((run / "results" / "timings.json").read_text())
    (run / "results" / "timings.json").write_text(json.dumps(timings | {"02_mas": {"status": "ok"}}))
    monkeypatch.setenv(R.STAGE_ENV, "03_confidence")
    with pytest.raises(R.StageIncomplete, match="its results are not marked complete"):
        R.RunDir(run).require(run / "mas" / "scores" / "state.json", "02")


def test_a_notebook_that_starts_stops_counting_as_complete(tmp_path, monkeypatch):
    run = _run(tmp_path, done=("00_world", "01_candidates", "02_mas"))
    monkeypatch.delenv(R.STAGE_ENV, raising=False)
    R.RunDir(run).require(run / "mas" / "scores" / "state.json", "02")        # finished: readable
    R.begin_stage(run, "02_mas")                                              # re-run by hand in JupyterLab
    assert json.loads((run / "results" / "02_mas.json").read_text())["complete"] is False
    monkeypatch.setenv(R.STAGE_ENV, "03_confidence")
    with pytest.raises(R.StageIncomplete):
        R.RunDir(run).require(run / "mas" / "scores" / "state.json", "02")


def test_the_report_never_says_ok_for_a_stage_whose_input_failed(tmp_path):
    run = _run(tmp_path, done=("00_world", "01_candidates", "03_confidence"), failed="02_mas")
    assert R.staleness(run, "03_confidence") == "its input 02_mas failed"
    rows = [line for line in report.build_report(run).splitlines() if line.startswith("| 03_confidence")]
    assert rows and "stale: its input 02_mas failed" in rows[0] and "| ok |" not in rows[0]


def test_a_setting_no_finished_stage_has_read_can_be_corrected(tmp_path):
    run = _run(tmp_path, done=("00_world", "01_candidates", "02_mas", "03_confidence", "04_selection", "05_dpo"))
    cfg, _ = R.bind(run, "smoke", {"evaluation.seeds": "(0, 3)"})                 # 06 never finished: accepted
    assert cfg.evaluation.seeds == (0, 3) and json.loads((run / "config.json").read_text())["evaluation"]["seeds"] == [0, 3]
    with pytest.raises(ConfigError) as exc:
        R.bind(run, "smoke", {"evaluation.seeds": "(0, 3)", "dpo.learning_rate": "0.01"})
    msg = str(exc.value)
    assert "dpo.learning_rate (first read by notebook 05)" in msg and "05_dpo finished with the old values" in msg
    command = msg.split("run: ", 1)[1]
    assert "--from 05 --redo" in command and "-p dpo.learning_rate=0.01" in command
    assert "01_candidates" in R.finished_stages(run)
    R.bind(run, "smoke", {"evaluation.seeds": "(0, 3)", "dpo.learning_rate": "0.01"}, redo_from=5)   # --redo --from 05
    assert set(R.finished_stages(run)) == {"00_world", "01_candidates", "02_mas", "03_confidence", "04_selection"}


def test_a_printed_command_recreates_the_run_s_configuration(tmp_path):
    overrides = {"dpo.strategies": "('m3po', 'best_worst', 'best_of_n')", "evaluation.methods":
                 "('base', 'm3po', 'best_worst', 'best_of_n')", "models.judge_model": "my judge", "world.n_train": "500"}
    run = _run(tmp_path, overrides)
    words = shlex.split(R.redo_command(run, "02_mas"))
    assert words[:5] == ["python", "-m", "m3po_utils.run", "--preset", "smoke"]
    given = parse_overrides([words[i + 1] for i, w in enumerate(words) if w == "-p"])
    assert load_preset("smoke", given) == load_preset("smoke", overrides)


def test_one_runner_per_run_directory(tmp_path):
    run = tmp_path / "run"
    with R.RunnerLock(run, command="first"):
        with pytest.raises(R.RunDirBusy, match=rf"another runner is working on .*run \(pid {os.getpid()}, started "):
            with R.RunnerLock(run):
                pass
        assert os.environ[R.RUNNER_ENV] == str(os.getpid())
        R.check_not_busy(run)                                  # this process's own kernels work under its lock
    with R.RunnerLock(run):                                    # released: the next runner takes it
        pass
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom m3po_utils.rundir import RunnerLock\n"
                               f"with RunnerLock({str(run)!r}, 'the holder'):\n    print('held', flush=True)\n"
                               "    time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(R.RunDirBusy, match=rf"pid {holder.pid}, started .*: the holder"):
            with R.RunnerLock(run):
                pass
        with pytest.raises(R.RunDirBusy, match="a runner is working on"):
            R.check_not_busy(run)                              # a notebook opened by hand on the same directory
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "m3po_utils.run", "--preset", "smoke", "--run-dir", str(run)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and f"pid {holder.pid}" in out.stderr and time.perf_counter() - t0 < 60
    finally:
        holder.kill()
        holder.wait()
    with R.RunnerLock(run):                                    # a killed holder leaves the file, not the lock
        assert json.loads((run / R.LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_full_disk_when_the_runner_records_a_time_never_hides_the_outcome(tmp_path, monkeypatch, capsys):
    from m3po_utils import run as RUN

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RUN, "atomic_write_json", full)
    RUN._record_timing(tmp_path, "02_mas", {"status": "failed", "error": "MasIncomplete: …"})   # no exception
    err = capsys.readouterr().err
    assert "could not record the time of 02_mas" in err and "No space left on device" in err
