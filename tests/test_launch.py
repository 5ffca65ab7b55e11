"""Stages 01 and 05 under ``accelerate launch`` with 2 CPU processes (gloo), against one process.

The launched tests reuse the session's smoke run (its world, base model and pairs) in fresh run directories:
* DPO: the same loss curve as one process at the same global batch, the same reused-reference counts, and an
  adapter that loads and answers as the one-process adapter does;
* sampling: the union of the two processes' shards is the one-process table row for row, and a launch that
  finds one process's shards already written samples only the rest.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from m3po_utils import candidates as G
from m3po_utils import dpo as D
from m3po_utils import launch as L
from m3po_utils.config import LAUNCH_CONFIGS, ConfigError, load_preset, setup_run
from m3po_utils.launch import candidates as LC
from m3po_utils.launch import dpo as LD
from m3po_utils.rundir import RunDir, StageMissing
from m3po_utils.shapes.prompts import ImageResolver, preference_prompts, validation_scenes


def _copy_run(src, dst, parts, overrides):
    dst.mkdir(parents=True)
    for p in parts:
        shutil.copytree(src / p, dst / p)
    setup_run(dst, "smoke", overrides)
    return dst


# ------------------------------------------------------------------------------------------ without processes

def test_command_names_the_entry_point_the_config_and_the_processes():
    cmd = L.accelerate_command("dpo", "runs/x", 4, "zero3", 29512, ["--strategy", "m3po"])
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--config_file") + 1].endswith("configs/zero3.yaml")
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[cmd.index("--main_process_port") + 1] == "29512"
    assert cmd[cmd.index("--main_process_ip") + 1] == "127.0.0.1"
    assert cmd[-6:] == ["-m", "m3po_utils.launch.dpo", "--run-dir", "runs/x", "--strategy", "m3po"]
    assert L.accelerate_command("candidates", "r", 2)[-3] == "m3po_utils.launch.candidates"
    auto = L.config_file("")
    assert auto.name == ("ddp.yaml" if torch.cuda.is_available() else "cpu.yaml")
    with pytest.raises(ValueError, match="launchable stages"):
        L.accelerate_command("mas", "r", 2)
    with pytest.raises(FileNotFoundError, match="launch.accelerate_config='nope.yaml'"):
        L.config_file("nope.yaml")


def test_every_shipped_config_is_one_accelerate_reads():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for name in LAUNCH_CONFIGS:
        c = load_config_from_file(str(L.config_file(name)))
        kinds[name] = (str(c.distributed_type).split(".")[-1], c.num_machines, c.use_cpu)
        if name.startswith("zero"):
            assert c.deepspeed_config["zero_stage"] == int(name[-1])
    assert kinds == {"cpu": ("MULTI_GPU", 1, False), "gpu": ("NO", 1, False), "ddp": ("MULTI_GPU", 1, False),
                     "zero2": ("DEEPSPEED", 1, False), "zero3": ("DEEPSPEED", 1, False)}


def test_launch_settings_do_not_make_a_new_configuration(tmp_path):
    setup_run(tmp_path, "smoke")
    cfg, _ = setup_run(tmp_path, "smoke", {"launch.dpo_processes": 2, "launch.candidates_processes": 3})
    assert RunDir(tmp_path).preset().launch.dpo_processes == 2          # config.json now says so
    with pytest.raises(ConfigError, match="dpo.batch_size"):
        setup_run(tmp_path, "smoke", {"dpo.batch_size": 2})
    with pytest.raises(ConfigError, match=r"launch.dpo_processes=3 .*divisor of dpo.batch_size=4"):
        load_preset("smoke", {"launch.dpo_processes": 3})
    with pytest.raises(StageMissing, match="config.json"):
        RunDir(tmp_path / "empty").preset()


# ------------------------------------------------------------------------------------------ 2 processes

@pytest.mark.launch
def test_dpo_on_two_processes_follows_the_one_process_curve(smoke_run, tmp_path):
    only = {"dpo.strategies": ["m3po"]}                    # m3po and the SFT-only best_of_n: both loss types
    one = _copy_run(smoke_run, tmp_path / "one", ["world", "models", "pairs"], only)
    two = _copy_run(smoke_run, tmp_path / "two", ["world", "models", "pairs"], only | {"launch.dpo_processes": 2})
    cfg1, cfg2 = RunDir(one).preset(), RunDir(two).preset()
    infos1 = LD.train_strategies(one, cfg1)                  # launch.dpo_processes = 1: in this process
    lines = []
    infos2 = LD.train_strategies(two, cfg2, echo=lines.append)
    assert lines[0].startswith("launching: ") and "--num_processes 2" in lines[0]
    done = [json.loads(x.split(" ", 1)[1]) for x in lines if x.startswith("M3PO-LAUNCH ")]
    assert {d["strategy"]: d["processes"] for d in done} == {"m3po": 2, "best_of_n": 2}
    assert set(infos1) == set(infos2) == {"m3po", "best_of_n"}
    for s in infos1:
        a, b = infos1[s], infos2[s]
        assert (a["processes"], b["processes"], b["per_process_batch"]) == (1, 2, cfg1.dpo.batch_size // 2)
        assert (a["pairs"], a["steps"]) == (b["pairs"], b["steps"]) and a["steps"] >= 4
        assert a["reference"] == b["reference"] and a["ref_rows"] == b["ref_rows"]   # the same reuse
        log1, log2 = D.load_training_log(one, s), D.load_training_log(two, s)
        assert len(log1) == len(log2) == a["steps"]
        for k in D.CURVE_METRICS:
            if k == "rewards/accuracies":
                # the share of pairs whose chosen reward beats the rejected one is a step function of margins that
                # are float noise (~1e-7) while the policy still equals the reference: compare it only on steps
                # where the policy has moved (|mean margin| > 1e-5), and insist on at least two such steps
                # (best_of_n's rejected answer is its chosen one: margins exactly 0, every step compared)
                moved = [i for i, r in enumerate(log1) if abs(r["rewards/margins"]) > 1e-5 or s == "best_of_n"]
                assert len(moved) >= 2, (s, [r["rewards/margins"] for r in log1])
                assert [log2[i][k] for i in moved] == [log1[i][k] for i in moved], (s, k)
                continue
            assert [r[k] for r in log2] == pytest.approx([r[k] for r in log1], rel=1e-5, abs=1e-6), (s, k)
    # the adapter loads and answers as the one-process adapter does (greedy, on held-out preference scenes)
    scenes = validation_scenes(RunDir(one).scenes()["pref"])[:6]
    metrics = []
    for run in (one, two):
        model, processor = D.base_loader(cfg1, run)()
        metrics.append(D.validation_metrics(D.load_adapter(model, D.adapters_dir(run, "m3po")), processor, scenes,
                                            cfg1.world))
    assert metrics[1] == pytest.approx(metrics[0], abs=1e-9) and metrics[0]["n"] > 0


@pytest.mark.launch
def test_sharded_sampling_is_the_one_process_table_and_resumes_per_process(smoke_run, tmp_path):
    cfg = load_preset("smoke")
    one = _copy_run(smoke_run, tmp_path / "one", ["world", "models"], {})
    two = _copy_run(smoke_run, tmp_path / "two", ["world", "models"], {"launch.candidates_processes": 2})
    splits = RunDir(one).scenes()
    prompts, resolver = preference_prompts(cfg, splits), ImageResolver(cfg, splits)
    g = cfg.generation
    n_chunks = len(G.plan_chunks(prompts, g.n_candidates, g.batch_size))
    assert n_chunks >= 3, "the smoke preset should make at least 3 chunks (2 for one process, 1 for the other)"
    kw = dict(n_candidates=g.n_candidates, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
              max_new_tokens=g.max_new_tokens, batch_size=g.batch_size, seed=g.seed, progress=False)
    from m3po_utils import world

    model, processor, _ = world.base_lvlm(cfg, one)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # as each launched process runs: same float summation order, bitwise results
    try:
        ref = G.generate_candidates(model, processor, prompts, resolver, run_dir=one, **kw).to_pandas()
        # process 1 of 2 finished before "a crash"; process 0 never ran
        G.generate_candidates(model, processor, prompts, resolver, run_dir=two, **kw, shard=(1, 2))
    finally:
        torch.set_num_threads(threads)
    written = sorted(p.name for p in RunDir(two).candidates_parts.glob("chunk-*.parquet"))
    assert written == [f"chunk-{c:05d}.parquet" for c in range(1, n_chunks, 2)]
    lines = []
    table = LC.prepare_candidates(RunDir(two).preset(), two, model, processor, prompts, resolver,
                                 echo=lines.append).to_pandas()
    info = G.generation_info(two)
    assert info["processes"] == 2 and info["chunks"] == n_chunks
    assert info["chunks_generated"] == len(range(0, n_chunks, 2))     # only process 0's chunks were sampled
    assert not RunDir(two).candidates_parts.exists()
    assert list(table.columns) == list(ref.columns) and len(table) == len(ref) == len(prompts) * g.n_candidates
    for col in ref.columns:                                          # row for row, every column, bitwise
        assert [np.asarray(v).tolist() for v in table[col]] == [np.asarray(v).tolist() for v in ref[col]], col
    # the session's smoke run sampled in its kernel with 2 threads: the same tokens, log-probs to float rounding
    kernel = RunDir(smoke_run).load_candidates().to_pandas()
    assert kernel["token_ids"].map(list).tolist() == table["token_ids"].map(list).tolist()
    assert np.allclose(kernel["logprob_sum"], table["logprob_sum"], atol=1e-4)
