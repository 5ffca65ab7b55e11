"""The judge over real HTTP on 127.0.0.1 with the real ``openai`` client: protocol, errors and reliability.

Every test talks to a :class:`JudgeServer` through sockets; fault injection (429 / 500 / hang / garbage) is a
constructor argument of the server. Backoff is shortened so the suite stays fast.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image

from m3po_utils import mas
from m3po_utils import shapes as W
from m3po_utils.config import load_preset, setup_run
from m3po_utils.judge import client as JC
from m3po_utils.judge import protocol as JP
from m3po_utils.judge.server import JudgeServer, judge_score, model_id_for
from m3po_utils.rundir import RunDir
from m3po_utils.shapes import prompts as P

REPO = Path(__file__).resolve().parents[1]
FAST: dict = {}   # retries wait what the server's Retry-After says (server() sets 10 ms), not openai's 0.5-8 s


@pytest.fixture(scope="module")
def world():
    cfg = load_preset("smoke")
    splits = W.make_splits(cfg.world)
    return cfg, splits


@pytest.fixture(scope="module")
def index(world):
    cfg, splits = world
    return W.SceneIndex(splits["pref"], cfg.world)


@pytest.fixture(scope="module")
def frame(world):
    """Two candidates (right, wrong) for 20 prompts, plus a resolver for their images."""
    cfg, splits = world
    pairs = mas.contrast_pairs(splits["pref"][:4], cfg.world)
    return mas.contrast_frame(pairs), P.ImageResolver(cfg, splits)


def items_of(frame_and_resolver):
    df, resolver = frame_and_resolver
    return mas.judge_items(df, resolver)[0]


def server(world, index, **kw) -> JudgeServer:
    cfg, _ = world
    kw.setdefault("retry_after", 0.01)   # the openai client honours Retry-After: keeps the fault tests fast
    return JudgeServer(None, cfg.world, index=index, **kw)


# ------------------------------------------------------------------------------------------- protocol

def test_models_endpoint_and_a_perfect_judge(world, index, frame):
    cfg, splits = world
    with server(world, index) as srv:
        assert srv.base_url.startswith("http://127.0.0.1:")
        oa = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        assert [m.id for m in oa.models.list()] == ["shapes-judge"]
        items = items_of(frame)
        with JC.JudgeClient(srv.base_url, srv.model_id, **FAST) as client:
            out = client.judge(items)
        assert client.stats["requests"] == len(items)          # listwise: one request per prompt
        for res in out:
            assert [o.ok for o in res] == [True, True]
            assert res[0].score == 10.0 and res[1].score < 10.0   # right answer 10, wrong one lower
            assert res[0].reason
        with JC.JudgeClient(srv.base_url, srv.model_id, mode="pointwise", **FAST) as client:
            point = client.judge(items)
        assert client.stats["requests"] == 2 * len(items)
        assert [[o.score for o in r] for r in point] == [[o.score for o in r] for r in out]


def test_noise_is_seeded_per_content_and_names_the_model(world, index, frame):
    assert judge_score(1.0, 0.0, 0) == 10 and judge_score(0.0, 0.0, 0) == 1 and judge_score(0.5, 0, 0) == 6
    assert model_id_for(0.0) == "shapes-judge" and model_id_for(2.0) == "shapes-judge-noise2"
    items = items_of(frame)
    runs = []
    for seed in (0, 0, 1):
        with server(world, index, noise=3.0, seed=seed) as srv, \
                JC.JudgeClient(srv.base_url, srv.model_id, **FAST) as client:
            assert srv.model_id == "shapes-judge-noise3"
            runs.append(np.array([[o.score for o in r] for r in client.judge(items)]))
    assert (runs[0] == runs[1]).all()                      # same seed, same content: same answers
    assert (runs[0] != runs[2]).any()                      # another seed: other noise
    assert ((runs[0] >= 1) & (runs[0] <= 10)).all()
    assert (runs[0][:, 0] != 10).any()                     # noise 3 moves some right answers off 10


def _post(url: str, data: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_error_replies_are_openai_style(world, index, frame):
    items = items_of(frame)
    good = JP.judge_messages(JP.PROMPTS["v1"], JP.png_data_url(items[0].image), items[0].instruction,
                              items[0].responses)
    with server(world, index) as srv:
        status, body = _post(srv.base_url + "/chat/completions", b"{not json")
        assert status == 400 and body["error"]["code"] == "invalid_json" and body["error"]["type"]
        status, body = _post(srv.base_url + "/nowhere", b"{}")
        assert status == 404 and set(body["error"]) == {"message", "type", "param", "code"}

        oa = openai.OpenAI(base_url=srv.base_url, api_key="x", max_retries=0)
        with pytest.raises(openai.NotFoundError) as e:
            oa.chat.completions.create(model="gpt-4o", messages=good)
        assert e.value.body["code"] == "model_not_found"

        noise_img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8))
        unknown = JP.judge_messages(JP.PROMPTS["v1"], JP.png_data_url(noise_img), "Describe the image.", ["x"])
        with pytest.raises(openai.BadRequestError) as e:
            oa.chat.completions.create(model=srv.model_id, messages=unknown)
        assert e.value.body["code"] == "unknown_image"

        odd = JP.judge_messages(JP.PROMPTS["v1"], JP.png_data_url(items[0].image), "Sing me a song.", ["la"])
        with pytest.raises(openai.BadRequestError) as e:
            oa.chat.completions.create(model=srv.model_id, messages=odd)
        assert e.value.body["code"] == "unknown_instruction"

        # the client records such a request as a failure at once (no retry: a 400 will not change)
        before = srv.stats["chat_requests"]
        with JC.JudgeClient(srv.base_url, srv.model_id, **FAST) as client:
            out = client.judge([JC.JudgeItem(noise_img, "Describe the image.", ["a red circle."])])
        assert srv.stats["chat_requests"] - before == 1
        assert not out[0][0].ok and np.isnan(out[0][0].score) and "unknown_image" in out[0][0].error


# ------------------------------------------------------------------------------------------- reliability

@pytest.mark.parametrize("fault", ["429", "500", "503"])
def test_first_k_failures_are_retried(world, index, frame, fault):
    items = items_of(frame)[:1]
    with server(world, index, faults=[fault] * 3) as srv, \
            JC.JudgeClient(srv.base_url, srv.model_id, max_retries=4, **FAST) as client:
        out = client.judge(items)
        assert all(o.ok for o in out[0]) and out[0][0].attempts == 4
        assert srv.stats["chat_requests"] == 4 and srv.stats["status"][int(fault)] == 3
        assert client.stats["retries"] == 3


def test_retry_after_is_honoured(world, index, frame):
    items = items_of(frame)[:1]
    with server(world, index, faults=["429"], retry_after=0.4) as srv, \
            JC.JudgeClient(srv.base_url, srv.model_id) as client:
        t0 = time.perf_counter()
        assert client.judge(items)[0][0].ok
        assert time.perf_counter() - t0 >= 0.4


def test_persistent_failure_is_recorded_not_scored_and_not_cached(world, index, frame, tmp_path):
    items = items_of(frame)[:2]
    cache = tmp_path / "cache.sqlite"
    with server(world, index, default_fault="500") as srv:
        with JC.JudgeClient(srv.base_url, srv.model_id, max_retries=2, cache=cache, **FAST) as client:
            out = client.judge(items)
        assert srv.stats["chat_requests"] == 2 * 3           # 1 + 2 retries per prompt
        for r in out:
            for o in r:
                assert not o.ok and np.isnan(o.score) and "HTTP 500" in o.error and o.attempts == 3
        srv.default_fault = "ok"                              # the endpoint recovers: a rerun retries the failures
        with JC.JudgeClient(srv.base_url, srv.model_id, max_retries=2, cache=cache, **FAST) as client:
            assert all(o.ok for r in client.judge(items) for o in r)
            assert client.stats["cache_hits"] == 0


def test_hanging_server_times_out_and_is_retried(world, index, frame):
    items = items_of(frame)[:1]
    with server(world, index, faults=["hang"], hang_s=30) as srv, \
            JC.JudgeClient(srv.base_url, srv.model_id, timeout_s=0.5, max_retries=1, **FAST) as client:
        t0 = time.perf_counter()
        out = client.judge(items)
        assert out[0][0].ok and out[0][0].attempts == 2
        assert time.perf_counter() - t0 < 10
    with server(world, index, default_fault="hang", hang_s=30) as srv, \
            JC.JudgeClient(srv.base_url, srv.model_id, timeout_s=0.3, max_retries=1, **FAST) as client:
        out = client.judge(items)
        assert not out[0][0].ok and "timeout" in out[0][0].error and srv.stats["chat_requests"] == 2


@pytest.mark.parametrize("fault", ["garbage", "not_json"])
def test_garbage_replies_are_retried_then_recorded(world, index, frame, fault):
    items = items_of(frame)[:1]
    with server(world, index, faults=[fault]) as srv, \
            JC.JudgeClient(srv.base_url, srv.model_id, max_retries=2, **FAST) as client:
        assert client.judge(items)[0][0].ok                   # one bad reply, then a good one
        assert srv.stats["chat_requests"] == 2
    with server(world, index, default_fault=fault) as srv, \
            JC.JudgeClient(srv.base_url, srv.model_id, max_retries=2, **FAST) as client:
        out = client.judge(items)[0]
        assert not out[0].ok and np.isnan(out[0].score) and "malformed" in out[0].error
        assert srv.stats["chat_requests"] == 3


def test_concurrency_is_bounded(world, index, frame):
    cfg, splits = world
    pairs = mas.contrast_pairs(splits["pref"][:12], cfg.world)
    df = mas.contrast_frame(pairs)
    items = mas.judge_items(df, P.ImageResolver(cfg, splits))[0]
    with server(world, index) as srv, JC.JudgeClient(srv.base_url, srv.model_id, concurrency=3, **FAST) as c:
        c.judge(items)
        assert 1 <= srv.stats["max_inflight"] <= 3 and srv.stats["answered"] == len(items)


def test_cache_hits_make_no_requests(world, index, frame, tmp_path):
    items = items_of(frame)
    with server(world, index) as srv:
        for expected in (len(items), 0):
            with JC.JudgeClient(srv.base_url, srv.model_id, cache=tmp_path / "c.sqlite", **FAST) as c:
                out = c.judge(items)
                assert c.stats["requests"] == expected
        assert all(o.cached for r in out for o in r)
        # another noise level is another model: nothing is shared
        with server(world, index, noise=1.0) as noisy, \
                JC.JudgeClient(noisy.base_url, noisy.model_id, cache=tmp_path / "c.sqlite", **FAST) as c:
            c.judge(items)
            assert c.stats["requests"] == len(items)


CHILD = r"""
import sys
from m3po_utils import mas, shapes as W
from m3po_utils.judge import client as JC
from m3po_utils.shapes import prompts as P
from m3po_utils.config import load_preset
base_url, model, cache = sys.argv[1:4]
cfg = load_preset("smoke")
splits = W.make_splits(cfg.world)
df = mas.contrast_frame(mas.contrast_pairs(splits["pref"][:8], cfg.world))
items = mas.judge_items(df, P.ImageResolver(cfg, splits))[0]
with JC.JudgeClient(base_url, model, cache=cache, concurrency=2, timeout_s=120) as client:
    client.judge(items)
print("finished")
"""


def test_killed_run_resumes_from_cache_with_zero_repeated_requests(world, index, tmp_path):
    """A judge run is SIGKILLed part-way; the rerun asks only what had not been answered, nothing twice."""
    cfg, splits = world
    df = mas.contrast_frame(mas.contrast_pairs(splits["pref"][:8], cfg.world))
    items = mas.judge_items(df, P.ImageResolver(cfg, splits))[0]
    k = 12
    cache = tmp_path / "judge_cache.sqlite"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    # answer k requests, then hang: the child is killed while requests are in flight
    with server(world, index, faults=["ok"] * k, default_fault="hang", hang_s=120) as srv:
        child = subprocess.Popen([sys.executable, str(script), srv.base_url, srv.model_id, str(cache)], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.time() + 120
            while time.time() < deadline:
                rows = 0
                if cache.exists():
                    with sqlite3.connect(cache) as con:
                        try:
                            rows = con.execute("SELECT COUNT(*) FROM judge").fetchone()[0]
                        except sqlite3.OperationalError:
                            rows = 0
                if rows >= 2 * k or child.poll() is not None:
                    break
                time.sleep(0.05)
            assert child.poll() is None, child.communicate()
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
        assert srv.stats["answered"] == k and len(srv.bodies) > k   # some requests were hanging at the kill
        answered_before = set(srv.answered_bodies)

        srv.default_fault = "ok"
        n_before = len(srv.bodies)
        with JC.JudgeClient(srv.base_url, srv.model_id, cache=cache, **FAST) as client:
            out = client.judge(items)
        assert all(o.ok for r in out for o in r)
        new = srv.bodies[n_before:]
        assert len(new) == len(items) - k                  # only the unanswered prompts were asked
        assert not answered_before & set(new)              # zero repeated requests
        assert client.stats["cache_hits"] == 2 * k

        # control: the same requests without the cache *are* recognised as repeats by this bookkeeping
        with JC.JudgeClient(srv.base_url, srv.model_id, **FAST) as client:
            client.judge(items)
        assert answered_before <= set(srv.bodies[n_before + len(new):])


# ------------------------------------------------------------------------------------------- secrets

SENTINEL = "sk-test-SENTINEL-4f9c2a7e1b"


def test_api_key_is_used_but_never_recorded(world, index, frame, tmp_path, monkeypatch):
    cfg, splits = world
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    df, resolver = frame
    run = tmp_path / "run"
    with server(world, index, require_key=SENTINEL) as srv:     # the env key reaches the endpoint ...
        with JC.JudgeClient(srv.base_url, srv.model_id, cache=RunDir(run).judge_cache, **FAST) as client:
            assert SENTINEL not in repr(client)
            table = mas.score_candidates(df, cfg.mas.__class__(clip_weight=0.0, judge_weight=1.0), resolver,
                                         judge=client)
        assert table["judge_ok"].all()
        mas.save_mas(table, run)
    with server(world, index, default_fault="401") as srv:      # ... and an error echoing it is redacted
        with JC.JudgeClient(srv.base_url, srv.model_id, cache=RunDir(run).judge_cache, **FAST) as client:
            out = client.judge([JC.JudgeItem(resolver("scene:pref-000000"), "Describe the image.", ["a star."])])
        assert not out[0][0].ok and "HTTP 401" in out[0][0].error and SENTINEL not in out[0][0].error
        failed = mas.score_candidates(df.iloc[:2], cfg.mas.__class__(clip_weight=0.0, judge_weight=1.0), resolver,
                                      judge=JC.JudgeClient(srv.base_url, srv.model_id, **FAST))
        assert not failed["judge_ok"].any() and failed["mas"].isna().all() and not failed["mas_ok"].any()
        mas.save_mas(failed, tmp_path / "run-failed")
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SENTINEL.encode() not in path.read_bytes(), path
            assert b"SENTINEL" not in path.read_bytes(), path


def test_remote_endpoint_without_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(JC.JudgeConfigError, match="OPENAI_API_KEY"):
        JC.JudgeClient("https://judge.example.com/v1", "gpt-4o")
    JC.JudgeClient("http://127.0.0.1:9/v1", "shapes-judge").close()   # loopback: a placeholder will do


def test_base_url_from_environment_wins(monkeypatch):
    cfg = load_preset("smoke", {"models.judge_base_url": "http://127.0.0.1:1234/v1"})
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert JC.judge_base_url(cfg) == "http://127.0.0.1:1234/v1" and not JC.uses_local_judge(cfg)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:4321/v1")
    assert JC.judge_base_url(cfg) == "http://127.0.0.1:4321/v1"
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert JC.uses_local_judge(load_preset("smoke")) and JC.judge_base_url(load_preset("smoke")) is None


# ------------------------------------------------------------------------------------------- CLI

def test_command_line_server(tmp_path):
    from m3po_utils.world import prepare_world

    cfg, run = setup_run(tmp_path / "run", "smoke")
    prepare_world(cfg, run)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    proc = subprocess.Popen([sys.executable, "-m", "m3po_utils.judge", "--run-dir", str(run), "--noise", "1"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "shapes-judge-noise1" in line and "http://127.0.0.1:" in line, (line, proc.stderr.read())
        url = line.split(" on ")[1].split()[0]
        with urllib.request.urlopen(url + "/models", timeout=10) as r:
            assert json.loads(r.read())["data"][0]["id"] == "shapes-judge-noise1"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0 and "stopped" in proc.stdout.read()
    bad = subprocess.run([sys.executable, "-m", "m3po_utils.judge", "--run-dir", str(tmp_path / "none")],
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "error:" in bad.stderr


# ------------------------------------------------------------------------------------------- fail fast

def _many(frame, n=40):
    items = items_of(frame)
    return (items * (n // len(items) + 1))[:n] if len(items) < n else items[:n]


@pytest.mark.parametrize("case, kind, words", [
    ("wrong_key", "auth", ["OPENAI_API_KEY"]),
    ("unknown_model", "model", ["models.judge_model", "'no-such-judge'"]),
    ("garbage", "unparseable", ["one failure: malformed reply", "mas.prompt_version"]),
    ("server_error", "server", ["server errors"]),
    ("rate_limited", "rate_limit", ["mas.concurrency", "HTTP 429"]),
    ("hanging", "timeout", ["mas.timeout_s", "timeout"]),
])
def test_a_broken_judge_is_given_up_after_a_few_requests(world, index, frame, case, kind, words):
    items = _many(frame)   # listwise without a cache: one request per item, repeats too
    kw = {"require_key": "the-right-key"} if case == "wrong_key" else {}
    kw |= {"default_fault": {"garbage": "garbage", "server_error": "500", "rate_limited": "429",
                             "hanging": "hang"}.get(case, "ok"), "hang_s": 30}
    with server(world, index, **kw) as srv:
        model = "no-such-judge" if case == "unknown_model" else srv.model_id
        key = "sk-wrongwrongwrong123" if case == "wrong_key" else None
        t0 = time.perf_counter()
        with JC.JudgeClient(srv.base_url, model, api_key=key, max_retries=1, concurrency=2, fail_after=4,
                            timeout_s=0.3 if case == "hanging" else 30) as client:
            with pytest.raises(JC.JudgeUnavailable) as err:
                client.judge(items)
        assert time.perf_counter() - t0 < 20                   # within seconds, not after all 40 prompts
        assert err.value.kind == kind and err.value.total == len(items)
        streak = 2 if kind == "timeout" else 4                # a wave of 2 concurrent timeouts is a stalled judge
        assert streak <= err.value.done <= streak + 2         # the streak, plus what was in flight
        # with one retry each: the streak, those in flight, and the first tries the two workers had sent when it
        # stopped (the same bound as notebook 02's test: (fail_after + 2 x concurrency) x tries)
        assert srv.stats["chat_requests"] <= 2 * (4 + 2 * 2)
        msg = str(err.value)
        assert srv.base_url in msg and all(w in msg for w in words), msg
        assert "sk-wrong" not in msg


def test_an_unreachable_judge_is_named(frame):
    import socket
    with socket.socket() as s:                                 # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with JC.JudgeClient(url, "m", max_retries=0, concurrency=1, fail_after=3, timeout_s=2) as client:
        with pytest.raises(JC.JudgeUnavailable) as err:
            client.judge(_many(frame, 10))
    assert err.value.kind == "unreachable" and err.value.done == 3 and url in str(err.value)


def test_a_flaky_judge_is_not_given_up(world, index, frame):
    items = _many(frame, 24)
    faults = ["500", "ok"] * 40                                  # every other request fails once, then succeeds
    with server(world, index, faults=faults) as srv, \
            JC.JudgeClient(srv.base_url, srv.model_id, max_retries=0, concurrency=1, fail_after=3) as client:
        out = client.judge(items)
    assert sum(not r[0].ok for r in out) == 12 and sum(r[0].ok for r in out) == 12


def test_failure_watch_rolling_share():
    w = JC._FailureWatch(3)
    kinds = [w.add(ok, "" if ok else "HTTP 401: no") for ok in [False, False, True] * 10]
    assert all(k is None for k in kinds)                        # never 3 in a row, 67 % of a full window
    w = JC._FailureWatch(10)                                    # window of 50 requests
    out = [w.add(ok, "" if ok else "HTTP 500: no") for ok in ([False] * 9 + [True]) * 6]
    assert w.streak < 10 and out[:49] == [None] * 49 and out[49] == "server"   # 45 of 50 = 90 %: given up
    w = JC._FailureWatch(10)                                    # 90 % failing, but of two different kinds
    errs = ["HTTP 500: x", "HTTP 401: y"] * 4 + ["HTTP 404: z", ""]
    assert all(w.add(not e, e) is None for e in errs * 6)
    w = JC._FailureWatch(2)
    seq = [False] * 9 + [True]
    out = [w.add(ok, "" if ok else "malformed reply: x") for ok in seq]
    assert out[1] == "unparseable"
    assert JC._FailureWatch(0).add(False, "HTTP 401: x") is None
    assert [JC.failure_kind(e) for e in ("connection error: x", "timeout after 1 s", "HTTP 403: x", "HTTP 404: x",
                                         "HTTP 429: x", "HTTP 502: x", "malformed reply: x", "HTTP 400: x")] == \
        ["unreachable", "timeout", "auth", "model", "rate_limit", "server", "unparseable", "other"]


# ------------------------------------------------------------------------------------------- deadlines

def test_a_reply_that_trickles_in_is_stopped_at_the_request_deadline(world, index, frame):
    """A socket read timeout restarts with every byte: a judge sending one byte every 0.5 s would never time out.
    The request's overall deadline stops it, and says which setting it was."""
    items = items_of(frame)[:1]
    with server(world, index, default_fault="trickle", trickle_s=0.5) as srv, \
            JC.JudgeClient(srv.base_url, srv.model_id, timeout_s=2, max_retries=2, request_deadline_s=1.5,
                           **FAST) as client:
        t0 = time.perf_counter()
        out = client.judge(items)[0][0]
        took = time.perf_counter() - t0
    assert not out.ok and "no complete reply within mas.request_deadline_s=1.5 s" in out.error
    assert took < 1.5 + 2 * 0.5 + 1.0                     # the deadline, a trickle step, and overhead
    assert JC.failure_kind(out.error) == "timeout"


def test_a_judge_stage_stops_at_its_own_deadline_naming_it(world, index, frame):
    items = _many(frame, 12)
    with server(world, index, default_fault="hang", hang_s=30) as srv, \
            JC.JudgeClient(srv.base_url, srv.model_id, timeout_s=20, max_retries=0, concurrency=2, fail_after=0,
                           stage_deadline_s=1.0, request_deadline_s=3.0) as client:
        t0 = time.perf_counter()
        with pytest.raises(JC.JudgeUnavailable, match=r"0 of 12 requests answered within mas.judge_deadline_s=1 s"):
            client.judge(items)
        assert time.perf_counter() - t0 < 2.5                # the stage's deadline, not a request's or the hang's


def test_a_judge_that_gives_everything_one_score_carries_no_information(world, index, frame):
    import dataclasses

    df, resolver = frame
    mc = dataclasses.replace(load_preset("smoke").mas, clip_weight=0.0)       # the judge alone
    with server(world, index, default_fault="constant") as srv, \
            JC.JudgeClient(srv.base_url, srv.model_id) as client:
        table = mas.score_candidates(df, mc, resolver, judge=client)
    assert table["judge_ok"].all() and set(table["judge_raw"]) == {5.0}      # well-formed, meaningless
    with pytest.raises(mas.JudgeUninformative, match=r"1 distinct score\(s\).*mas.min_judge_spread=0.05"):
        mas.judge_information(table, mc)
    assert mas.judge_information(table, dataclasses.replace(mc, min_judge_spread=0.0)) == {"checked": False}
    with server(world, index) as srv, JC.JudgeClient(srv.base_url, srv.model_id) as client:
        good = mas.score_candidates(df, mc, resolver, judge=client)
    info = mas.judge_information(good, mc)
    assert info["checked"] and info["spread"] > 1.0
    truth = good.assign(truth=np.linspace(0, 1, len(good)))
    assert np.isfinite(mas.judge_information(truth, mc)["spearman_truth"])


# ------------------------------------------------------------------------------------------- assessors (notebook 11)

def _scored(srv, scene_image, instruction, responses):
    with JC.JudgeClient(srv.base_url, srv.model_id, **FAST) as client:
        res = client.judge([JC.JudgeItem(scene_image, instruction, list(responses))])[0]
    return [o.score for o in res]


def _existence_case(world):
    """A pref scene, an instruction about a shape it holds, and the answers: right, wrong colour, bare no."""
    cfg, splits = world
    scene = next(s for s in splits["pref"] if len(s.objects) >= 2)
    obj = scene.objects[0]
    other = next(c for c in cfg.world.colors if c != obj.color)
    instr = W.question_text("existence", shape=obj.shape)
    right = f"Yes, there is a {obj.color} {obj.shape}."
    wrong_colour = f"Yes, there is a {other} {obj.shape}."
    return scene, instr, [right, wrong_colour, "No."]


def test_assessors_tag_the_model_id_and_validate():
    from m3po_utils.judge.server import Assessor
    assert Assessor().tag() == ""
    assert Assessor("yes", 0.3).tag() == "-yes0.3"
    assert Assessor("truth", verdict_weight=0.9).tag() == "-vw0.9"
    with pytest.raises(ValueError, match="unknown"):
        Assessor("oracle")
    with pytest.raises(ValueError, match="verdict_weight"):
        Assessor("truth", verdict_weight=1.5)


def test_verdict_weight_moves_a_right_verdict_with_a_wrong_clause(world, index):
    from m3po_utils.judge.server import Assessor
    cfg, _ = world
    scene, instr, answers = _existence_case(world)
    image = W.render(scene, cfg.world)
    with server(world, index) as srv:
        half = _scored(srv, image, instr, answers)
    with server(world, index, assessor=Assessor("truth", verdict_weight=0.9)) as srv:
        assert srv.model_id.endswith("-vw0.9")
        heavy = _scored(srv, image, instr, answers)
    j = lambda v: judge_score(v, 0.0, 0)                 # the judge's 1-10 scale  # noqa: E731
    assert half[0] == heavy[0] == j(1.0)                   # right verdict, right clause: full marks either way
    assert half[1] == j(0.5) and heavy[1] == j(0.9)        # right "Yes", wrong colour: half the score, or 90 %
    assert half[2] == heavy[2] == j(0.0)                   # a wrong "No"


def test_a_yes_biased_and_a_short_biased_judge(world, index):
    from m3po_utils.judge.server import Assessor
    cfg, _ = world
    scene, instr, answers = _existence_case(world)
    image = W.render(scene, cfg.world)
    with server(world, index) as srv:
        truth = _scored(srv, image, instr, answers)
    with server(world, index, assessor=Assessor("yes", 0.3)) as srv:
        yes = _scored(srv, image, instr, answers)
    j = lambda v: judge_score(v, 0.0, 0)  # noqa: E731
    assert truth == [j(1.0), j(0.5), j(0.0)]
    assert yes == [j(1.0), j(0.8), j(0.0)]                                  # +0.3 on a "yes", capped at 1
    with server(world, index, assessor=Assessor("short", 0.5)) as srv:
        short = _scored(srv, image, instr, answers)
    assert short == [j(1.0), j(0.5 + 0.5 * (1 - 6 / 8)), j(0.5 * (1 - 1 / 8))]   # 6 words and 1 word


def test_a_judge_that_shares_the_prior_believes_absent_mates(world, index):
    from m3po_utils.judge.server import Assessor, believed_scene
    cfg, splits = world
    with_mates = [s for s in splits["pref"] if W.missing_mates(s, cfg.world)]
    assert with_mates, "the smoke world has scenes with a missing co-occurrence mate"
    for s in with_mates[:20]:
        assert believed_scene(s, cfg.world, 0.0, 0) is s
        full = believed_scene(s, cfg.world, 1.0, 0)
        added = {o.shape for o in full.objects} - {o.shape for o in s.objects}
        free = cfg.world.grid ** 2 - len(s.objects)
        assert added == set(W.missing_mates(s, cfg.world)) or len(added) == free
        assert believed_scene(s, cfg.world, 1.0, 0) == full               # seeded: the same belief every time
    s = with_mates[0]
    mate = W.missing_mates(s, cfg.world)[0]
    instr = W.question_text("existence", shape=mate)
    image = W.render(s, cfg.world)
    with server(world, index) as srv:
        truth = _scored(srv, image, instr, ["No.", "Yes."])
    with server(world, index, assessor=Assessor("prior", 1.0)) as srv:
        prior = _scored(srv, image, instr, ["No.", "Yes."])
    j = lambda v: judge_score(v, 0.0, 0)  # noqa: E731
    assert truth == [j(0.5), j(0.0)] and prior == [j(0.0), j(0.5)]                   # the judge believes the mate is there


class _FixedView:
    """A stand-in for a model's view with chosen P(yes) per question: the self-judge's arithmetic by hand."""

    def __init__(self, cfg, p):
        self.cfg, self.p, self.asked = cfg, p, []

    def p_yes(self, image, questions):
        self.asked += list(questions)
        return [self.p.get(q, 0.5) for q in questions]


def test_self_judge_scores_claims_by_the_models_p_yes(world):
    from m3po_utils.judge.self_judge import claims, self_scores
    cfg, _ = world
    q = W.question_text
    view = _FixedView(cfg.world, {q("existence", shape="circle"): 0.9, q("yn_color", shape="circle", color="red"): 0.2,
                                  q("existence", shape="square"): 0.1})
    instr = q("existence", shape="circle")
    verdict, rest = claims("existence", {"shape": "circle"}, "Yes, there is a red circle.", cfg.world)
    assert verdict == (instr, True)
    assert rest == [(q("existence", shape="circle"), True), (q("yn_color", shape="circle", color="red"), True)]
    scores, reasons = self_scores(view, None, instr, ["Yes, there is a red circle.", "No.", "Yes, there is a square."])
    # right-ish yes: 0.5·0.9 + 0.5·mean(0.9, 0.2); bare "No": 0.5·(1 − 0.9) + 0; a yes about a square: 0.5·0.9 + 0.5·0.1
    assert scores == pytest.approx([0.5 * 0.9 + 0.5 * 0.55, 0.05, 0.45 + 0.05])
    assert all("claim" in r for r in reasons)
    # verdict weight 1: only the verdict counts
    assert self_scores(view, None, instr, ["No."], verdict_weight=1.0)[0] == pytest.approx([0.1])
    # a description's score is the mean claim probability; a claim-free answer scores 0
    d = q("describe")
    assert self_scores(view, None, d, ["There is a square.", "Nothing."])[0] == pytest.approx([0.1, 0.0])
    # with IFEval-style constraints: half the share of constraints followed, half the content's score as an answer
    # to the question (its format taken off)
    c = d + " " + W.ifeval.describe("startend:quotation") + " " + W.ifeval.describe("punctuation:no_comma")
    assert self_scores(view, None, c, ['"There is a square."', "There is a square, really."])[0] == pytest.approx(
        [0.5 * 1.0 + 0.5 * 0.1, 0.5 * 0.0 + 0.5 * 0.1])


def test_self_judge_behind_the_server_with_a_real_model(world, index):
    """The tiny LVLM (untrained: its P(yes) is arbitrary but real) as the self-judge over HTTP; noise that grows with
    the answer's surprisal is seeded and never negative."""
    from m3po_utils.judge.self_judge import ModelView
    from m3po_utils.judge.server import Assessor
    from m3po_utils.models import sft as T
    cfg, splits = world
    model, processor = T.build_base(splits["train"][:50], cfg.world, cfg.lvlm_train)
    view = ModelView(model.eval(), processor, cfg.world)
    with pytest.raises(ValueError, match="model_view"):
        JudgeServer(None, cfg.world, index=index, assessor=Assessor("self"))
    scene, instr, answers = _existence_case(world)
    image = W.render(scene, cfg.world)
    with server(world, index, assessor=Assessor("self"), model_view=view) as srv:
        assert srv.model_id.endswith("-self")
        s1 = _scored(srv, image, instr, answers)
        s2 = _scored(srv, image, instr, answers)
    assert s1 == s2 and all(1 <= s <= 10 for s in s1)
    p = view.p_yes(image, [instr])[0]
    assert 0 < p < 1
    assert s1[2] == judge_score(0.5 * (1 - p), 0.0, 0)                # "No.": half its verdict's probability
    sup = view.surprisal(image, instr, answers)
    assert all(x > 0 for x in sup)
    with server(world, index, noise=0.0, assessor=Assessor("truth", noise_per_nat=1.0), model_view=view) as srv:
        noisy = _scored(srv, image, instr, answers)
    assert noisy != [judge_score(v, 0.0, 0) for v in (1.0, 0.5, 0.0)] and all(1 <= s <= 10 for s in noisy)


def test_the_series_verdict_weight_setting_reaches_the_local_judge(world, tmp_path):
    import dataclasses

    cfg, splits = world
    heavy = dataclasses.replace(cfg, mas=dataclasses.replace(cfg.mas, verdict_weight=0.9))
    with mas.open_judge(heavy, tmp_path, splits=splits, use_cache=False) as judge:
        assert judge.server.assessor.verdict_weight == 0.9 and judge.server.model_id.endswith("-vw0.9")
    with mas.open_judge(cfg, tmp_path, splits=splits, use_cache=False) as judge:
        assert judge.server.assessor.tag() == "" and judge.server.model_id == "shapes-judge"
