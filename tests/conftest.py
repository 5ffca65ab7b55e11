"""Shared fixtures. ``smoke_run``: the whole notebook series executed once per test session under ``smoke``."""

import os
from pathlib import Path

import pytest


def figure_audit_path(run: Path) -> Path:
    """Where the smoke series' figure audit goes: beside the run, not in it."""
    return run.with_name(run.name + "-figures.jsonl")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    from m3po_utils.run import run_series

    run = tmp_path_factory.mktemp("smoke-run")
    _audited(run_series, "smoke", run, kernel="python3")
    return run


@pytest.fixture(scope="session")
def experiments_run(smoke_run):
    """The smoke run with notebook 10 (a 2 × 2 grid, noise, budget, negatives) run on it too."""
    from m3po_utils.run import run_series

    _audited(run_series, "smoke", smoke_run, start=10, stop=10, kernel="python3")
    return smoke_run


def _audited(run_series, *args, **kwargs):
    """Run the series with every figure it shows checked as it is shown (m3po_utils.plots.audit;
    tests/test_figures.py reads the audit)."""
    os.environ["M3PO_FIGURE_AUDIT"] = str(figure_audit_path(args[1]))
    try:
        return run_series(*args, **kwargs)
    finally:
        os.environ.pop("M3PO_FIGURE_AUDIT", None)


@pytest.fixture(scope="session")
def hardneg_run(experiments_run):
    """The smoke run with notebook 11 run on it too (E1 at SFT weight 0 and E3 with one biased judge, 2 seeds)."""
    from m3po_utils.run import run_series

    _audited(run_series, "smoke", experiments_run, start=11, stop=11, kernel="python3")
    return experiments_run


@pytest.fixture(scope="session")
def rounds_run(smoke_run):
    """The smoke run with notebook 07 (3 rounds of M3PO, best-vs-worst and random pairs; adaptive N) run on it."""
    from m3po_utils.run import run_series

    _audited(run_series, "smoke", smoke_run, start=7, stop=7, kernel="python3")
    return smoke_run
