"""Notebook 04 under the smoke preset (shared ``smoke_run`` series): pairs for every strategy."""

import pytest

from m3po_utils.io import load_results
from m3po_utils.rules import main_names
from m3po_utils.rundir import RunDir
from m3po_utils.shapes import yes_no

STRATEGIES = main_names()   # the rules the main series trains

pytestmark = pytest.mark.notebooks


def test_04_selection(smoke_run):
    r = load_results(smoke_run, "04_selection")
    assert r["complete"] is True and r["alpha"] == 0.5 and r["delta"] == 0.1
    strategies = r["strategies"]
    assert set(strategies) == set(STRATEGIES)
    for name in STRATEGIES:
        row = strategies[name]
        skipped = sum(v for k, v in row.items() if k.startswith("skip_"))
        assert row["pairs"] + skipped == r["prompts"], name        # k = 1: every prompt paired or skipped
    # the confidence penalty can only move the negative towards more confident answers
    assert strategies["m3po"]["hard_negative_rate"] >= strategies["best_worst"]["hard_negative_rate"]
    assert strategies["best_worst"]["differs_from_reference"] == 0.0
    for name in STRATEGIES:
        pairs = RunDir(smoke_run).load_pairs(name)
        assert {"images", "prompt", "chosen", "rejected", "mas_chosen", "logp_chosen"} <= set(pairs.column_names)
        row = pairs[0]
        assert row["images"][0].size == (96, 96)
        if name != "best_of_n":
            if name == "oracle":            # ranked by the verifier, not by MAS
                assert row["truth_chosen"] > row["truth_rejected"]
            else:
                assert row["mas_chosen"] > row["mas_rejected"]
            assert row["chosen_text"] != row["rejected_text"]
        else:
            assert row["rejected"] == []
    # the yes/no push recorded per strategy and family agrees with the pairs written for it
    leads = {(d["strategy"], d["family"]): d for d in r["yes_no_leads"]}
    assert leads and not any(s == "best_of_n" for s, _ in leads)
    for (name, fam), d in leads.items():
        rows = [p for p in RunDir(smoke_run).load_pairs(name) if p["family"] == fam]
        assert d["pairs"] == len(rows), (name, fam)
        chosen = [yes_no(p["chosen_text"]) for p in rows]
        rejected = [yes_no(p["rejected_text"]) for p in rows]
        share = {"chosen_yes": sum(a == "yes" for a in chosen) / len(rows),
                 "rejected_yes": sum(b == "yes" for b in rejected) / len(rows),
                 "same_answer": sum(a is not None and a == b for a, b in zip(chosen, rejected, strict=True)) / len(rows)}
        for k, v in share.items():
            assert d[k] == pytest.approx(v, abs=1e-4), (name, fam, k)
        assert d["push_to_no"] == pytest.approx(share["rejected_yes"] - share["chosen_yes"], abs=2e-4)
