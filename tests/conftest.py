"""Shared fixtures. ``smoke_run``: the whole notebook series executed once per test session under ``smoke``."""

import pytest


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    from m3po_utils.run import run_series

    run = tmp_path_factory.mktemp("smoke-run")
    run_series("smoke", run, kernel="python3")
    return run
