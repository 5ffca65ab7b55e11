"""Faults through the whole series (smoke preset, copies of the session's smoke run): a failed stage blocks its
readers, a meaningless judge stops notebook 02, no credential reaches any file, and the printed remedy works."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from m3po_utils import rundir as R
from m3po_utils import shapes as W
from m3po_utils.config import load_preset
from m3po_utils.judge.server import JudgeServer
from m3po_utils.run import NotebookFailed, main, run_series

pytestmark = pytest.mark.notebooks
REPO = Path(__file__).resolve().parents[1]
CANARY = "Canary-7f3a91bd"


def _from_02(smoke_run: Path, dst: Path) -> Path:
    """The smoke run as it was after notebook 01: stages 02 on, and the judge's cache, removed."""
    shutil.copytree(smoke_run, dst, ignore=shutil.ignore_patterns(R.LOCK_FILE))
    for rel in ("mas", "confidence", "pairs", "adapters", "evaluation", "experiments", "report.md"):
        shutil.rmtree(dst / rel, ignore_errors=True) if (dst / rel).is_dir() else (dst / rel).unlink(missing_ok=True)
    for path in (dst / "results").glob("*.json"):
        if path.stem[:2] >= "02" and path.stem != "timings":
            path.unlink()
    timings = json.loads((dst / "results" / "timings.json").read_text())
    (dst / "results" / "timings.json").write_text(json.dumps({k: v for k, v in timings.items() if k[:2] < "02"}))
    for nb in (dst / "notebooks").glob("*.ipynb"):
        if nb.name[:2] >= "02":
            nb.unlink()
    return dst


@pytest.fixture(scope="module")
def judge_for(smoke_run):
    """Start the shapes world's judge on 127.0.0.1 with a fault, as an endpoint the series reaches through
    OPENAI_BASE_URL (the same road as a remote judge)."""
    cfg = load_preset("smoke")
    splits = R.RunDir(smoke_run).scenes()
    index = W.SceneIndex(splits["pref"], cfg.world)
    started = []

    def start(**kw) -> JudgeServer:
        srv = JudgeServer(None, cfg.world, index=index, retry_after=0.01, **kw).__enter__()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.__exit__(None, None, None)


def _files(run: Path):
    for path in run.rglob("*"):
        if path.is_file():
            yield path


def test_a_failed_stage_blocks_its_readers_and_the_printed_command_rebuilds_it(smoke_run, tmp_path, judge_for,
                                                                               monkeypatch, capsys):
    run = _from_02(smoke_run, tmp_path / "run")
    prose = judge_for(faults=["garbage" if i % 8 == 0 else "ok" for i in range(4000)])   # ~1 prompt in 8: prose
    monkeypatch.setenv("OPENAI_BASE_URL", prose.base_url)
    with pytest.raises(NotebookFailed, match=r"MasIncomplete: .* candidates .* have no MAS"):
        # one request per prompt, no retry: the prose answers stay failures
        run_series("smoke", run, {"mas.max_retries": "0"}, start=2, stop=2, kernel="python3")
    assert not (run / "mas" / "scores").exists()                      # nothing a later stage could take as input
    code = main(["--preset", "smoke", "--run-dir", str(run), "-p", "mas.max_retries=0", "--from", "3", "--to", "4",
                 "--kernel", "python3"])
    err = capsys.readouterr().err
    assert code == 1 and "notebook 03_confidence reads what 02_mas wrote, and 02_mas did not finish" in err
    assert "its last run failed: MasIncomplete" in err
    assert not R.finished_stages(run).keys() & {"03_confidence", "04_selection"}
    report = (run / "report.md").read_text()
    assert "| 03_confidence | ok" not in report and "| 02_mas | failed: MasIncomplete" in report
    # the printed command, as printed, with a judge that works: 02 is rebuilt and the series goes on
    good = judge_for()
    command = err.split("Rebuild it first: ", 1)[1].split(" (the later notebooks follow)")[0]
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "m3po_utils.run"] and "-p" in words and "mas.max_retries=0" in words
    env = os.environ | {"OPENAI_BASE_URL": good.base_url}
    out = subprocess.run([sys.executable, *words[1:], "--to", "2", "--kernel", "python3"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "02_mas" in R.finished_stages(run) and (run / "mas" / "scores").is_dir()


def test_a_judge_that_scores_everything_alike_stops_notebook_02(smoke_run, tmp_path, judge_for, monkeypatch):
    run = _from_02(smoke_run, tmp_path / "run")
    monkeypatch.setenv("OPENAI_BASE_URL", judge_for(default_fault="constant").base_url)
    with pytest.raises(NotebookFailed, match=r"JudgeUninformative: the judge gave 160 candidates 1 distinct score"):
        run_series("smoke", run, start=2, stop=2, kernel="python3")
    assert not (run / "mas" / "scores").exists() and "02_mas" not in R.finished_stages(run)


def test_no_credential_reaches_any_file_the_series_writes(smoke_run, tmp_path, judge_for, monkeypatch, capsys):
    # 1. a key the judge accepts: used for every request, written nowhere
    run = _from_02(smoke_run, tmp_path / "ok")
    srv = judge_for(require_key=CANARY)
    monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    run_series("smoke", run, start=2, stop=2, kernel="python3")
    assert srv.stats["status"][200] > 0
    # 2. a key the judge refuses (and, like OpenAI, echoes in its error): the stage fails, the key stays out
    bad = _from_02(smoke_run, tmp_path / "bad")
    monkeypatch.setenv("OPENAI_API_KEY", CANARY + "-wrong")
    with pytest.raises(NotebookFailed, match="refuses the API key"):
        run_series("smoke", bad, start=2, stop=2, kernel="python3")
    assert (bad / "notebooks" / "02_mas.failed.ipynb").is_file()
    # 3. credentials inside the endpoint URL from the environment: refused before anything runs
    url = f"http://judge:{CANARY}@127.0.0.1:{srv.port}/v1?api-key={CANARY}"
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    code = main(["--preset", "smoke", "--run-dir", str(bad), "--from", "2", "--to", "2", "--kernel", "python3"])
    err = capsys.readouterr().err
    assert code == 2 and "OPENAI_BASE_URL=" in err and "carries a credential" in err and CANARY not in err
    leaks = [str(p) for run_dir in (run, bad) for p in _files(run_dir) if CANARY.encode() in p.read_bytes()]
    assert leaks == []
