"""MAS building blocks without notebook 01: CLIP scorer, normalisation, reply parsing, cache, MAS, agreement.

Candidate tables are made here from the world's reference answers and answers about other scenes
(:func:`mas.synthetic_candidates`); the CLIP is a freshly built tiny open_clip model (untrained: the tests
check mechanics, not quality).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from m3po_utils import mas
from m3po_utils import shapes as W
from m3po_utils import stats as ST
from m3po_utils.config import ClipTrainConfig, ConfigError, MasConfig, load_preset
from m3po_utils.judge import cache as mas_cache
from m3po_utils.judge import client as JC
from m3po_utils.judge import protocol as JP
from m3po_utils.judge.server import JudgeServer
from m3po_utils.models import clip_score as CS
from m3po_utils.rundir import RunDir
from m3po_utils.shapes import prompts as P


@pytest.fixture(scope="module")
def setup():
    cfg = load_preset("smoke")
    splits = W.make_splits(cfg.world)
    rows = P.shapes_prompts(splits["pref"], cfg)[:10]
    df = mas.candidates_frame(mas.synthetic_candidates(rows, splits["pref"], cfg.world, n_candidates=4))
    return cfg, splits, df, P.ImageResolver(cfg, splits)


@pytest.fixture(scope="module")
def scorer():
    from m3po_utils.models.clip import build_tiny_clip

    tc = ClipTrainConfig(embed_dim=16, vision_width=32, vision_layers=1, text_width=32, text_layers=1,
                         text_heads=2, context_length=12)
    model, preprocess, tokenizer = build_tiny_clip(tc, 96)
    return CS.ClipScorer(model, preprocess, tokenizer, image_batch_size=4, text_batch_size=8)


# ------------------------------------------------------------------------------------------- CLIP

def test_clip_embeds_each_image_once_and_matches_per_pair(setup, scorer):
    cfg, splits, df, resolver = setup
    calls = []

    def load(ref):
        calls.append(ref)
        return resolver(ref)

    scores = scorer.score(df["image"].tolist(), df["text"].tolist(), load)
    assert len(calls) == df["image"].nunique() == scores.images_encoded    # one load + embedding per image
    assert scores.texts_encoded == df["text"].nunique()
    naive = scorer.score_per_pair(df["image"].tolist(), df["text"].tolist(), resolver)
    np.testing.assert_allclose(scores.raw, naive, atol=1e-5)
    assert np.all(np.abs(scores.raw) <= 1 + 1e-6)


def test_long_texts_are_flagged_as_truncated(setup, scorer):
    _, _, _, resolver = setup
    long = "a red circle at the top left, " * 6
    s = scorer.score(["scene:pref-000000"] * 2, ["a red circle.", long], resolver)
    assert s.truncated.tolist() == [False, True]
    # truncation is open_clip's: the end of a long text is never seen
    same_start = scorer.score(["scene:pref-000000"] * 2, [long, long + " and a blue star at the bottom."], resolver)
    assert same_start.raw[0] == pytest.approx(same_start.raw[1], abs=1e-6)


def test_normalise_clip_methods():
    raw = np.array([0.10, 0.20, 0.30, 0.25, 0.25, np.nan])
    groups = np.array(["a", "a", "a", "b", "b", "b"])
    run = mas.normalise_clip(raw, groups, "run")
    assert np.isnan(run[-1]) and np.all((run[:-1] >= 0) & (run[:-1] <= 1))
    assert np.all(np.diff(mas.normalise_clip(np.linspace(-1, 1, 50), method="run")) >= 0)     # monotone
    lo, hi = mas.clip_norm_range(raw)
    assert lo == pytest.approx(np.nanquantile(raw, 0.05)) and hi == pytest.approx(np.nanquantile(raw, 0.95))
    affine = mas.normalise_clip(np.array([0.1, 0.2, 0.3, 0.4]), method="run", quantiles=(0.0, 1.0))
    assert affine.tolist() == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])           # one affine map, clipped
    prompt = mas.normalise_clip(raw, groups, "prompt")
    assert prompt[:3].tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert prompt[3:5].tolist() == [0.5, 0.5] and np.isnan(prompt[5])          # a tied prompt sits in the middle
    assert mas.normalise_clip(np.array([-1.0, 0.0, 1.0]), method="cosine").tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="groups"):
        mas.normalise_clip(raw, None, "prompt")
    with pytest.raises(ValueError, match="clip_norm"):
        mas.normalise_clip(raw, groups, "zscore")


# ------------------------------------------------------------------------------------------- judge prompt / parsing

def test_parse_reply_accepts_json_and_rejects_everything_else():
    assert JP.parse_reply('{"score": 7, "reason": "ok"}') == ([7.0], ["ok"])
    assert JP.parse_reply('```json\n{"score": "8"}\n```') == ([8.0], [""])
    assert JP.parse_reply('Sure! {"scores": [1, 10, 5.5]} Hope that helps.', n=3)[0] == [1.0, 10.0, 5.5]
    for bad, n in [("", None), ("great answer", None), ('{"score": 0}', None), ('{"score": 11}', None),
                   ('{"score": true}', None), ('{"score": "high"}', None), ('{"rating": 5}', None),
                   ('{"scores": [1, 2]}', 3), ('{"scores": 5}', 1), ("[1, 2]", 2), ('{"score": NaN}', None),
                   (None, None)]:
        with pytest.raises(JP.JudgeParseError):
            JP.parse_reply(bad, n)


def test_judge_messages_send_the_image_once():
    url = "data:image/png;base64,AAAA"
    msgs = JP.judge_messages(JP.PROMPTS["v1"], url, "Describe the image.", ["a", "b", "c"])
    parts = msgs[1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url"] and parts[1]["image_url"]["url"] == url
    assert '"responses": ["a", "b", "c"]' in parts[0]["text"] and "3 candidate responses" in parts[0]["text"]
    point = JP.judge_messages(JP.PROMPTS["v1"], url, "Describe the image.", "a")
    assert '"response": "a"' in point[1]["content"][0]["text"] and '"score"' in point[1]["content"][0]["text"]


# ------------------------------------------------------------------------------------------- cache

def test_cache_key_covers_every_field_and_survives_reopening(tmp_path):
    base = ("m", "v1/listwise", "img", "Describe the image.", "a red circle.")
    keys = {mas_cache.JudgeCache.key(*base)}
    for i in range(len(base)):
        changed = list(base)
        changed[i] = changed[i] + "x"
        keys.add(mas_cache.JudgeCache.key(*changed))
    assert len(keys) == len(base) + 1
    path = tmp_path / "c.sqlite"
    with mas_cache.JudgeCache(path) as c:
        c.put_many([(mas_cache.JudgeCache.key(*base), *base, 7.0, "fine")])
    with mas_cache.JudgeCache(path) as c:
        assert c.get_many([mas_cache.JudgeCache.key(*base), "missing"]) == {mas_cache.JudgeCache.key(*base): (7.0, "fine")}
        assert len(c) == 1


# ------------------------------------------------------------------------------------------- MAS

def test_combine_weights_range_and_failures():
    cfg = MasConfig(clip_weight=1.0, judge_weight=3.0)
    mas_, ok = mas.combine([0.0, 1.0, 0.5, 0.2], [1.0, 0.0, np.nan, 0.2], [True, True, False, True], cfg)
    assert mas_[:2].tolist() == pytest.approx([0.75, 0.25]) and mas_[3] == pytest.approx(0.2)
    assert np.isnan(mas_[2]) and ok.tolist() == [True, True, False, True]      # a failure is never scored
    clip_only, ok = mas.combine([0.3, 0.6], [np.nan, np.nan], [False, False], MasConfig(clip_weight=1, judge_weight=0))
    assert clip_only.tolist() == [0.3, 0.6] and ok.all()
    judge_only, _ = mas.combine([np.nan], [0.4], [True], MasConfig(clip_weight=0, judge_weight=1))
    assert judge_only.tolist() == [0.4]


def test_new_config_fields_are_validated():
    with pytest.raises(ConfigError, match="mas.clip_norm"):
        load_preset("smoke", {"mas.clip_norm": "zscore"})
    with pytest.raises(ConfigError, match="mas.noise_sweep"):
        load_preset("smoke", {"mas.noise_sweep": "[0, -1]"})
    assert load_preset("smoke", {"mas.noise_sweep": "[0, 2]"}).mas.noise_sweep == (0.0, 2.0)


def test_score_candidates_end_to_end(setup, scorer, tmp_path):
    cfg, splits, df, resolver = setup
    mc = dataclasses.replace(cfg.mas, concurrency=2)
    with JudgeServer(splits["pref"], cfg.world) as srv, \
            JC.JudgeClient(srv.base_url, srv.model_id, cache=RunDir(tmp_path).judge_cache) as judge:
        table = mas.score_candidates(df, mc, resolver, clip=scorer, judge=judge)
    table["truth"] = mas.verifier_truth(df, {s.scene_id: s for s in splits["pref"]}, cfg.world)
    assert list(table[["prompt_id", "cand_idx"]].itertuples(index=False)) == \
        list(df[["prompt_id", "cand_idx"]].itertuples(index=False))
    for col in ("clip_score", "judge_score", "mas"):
        assert table[col].between(0, 1).all()
    assert table["judge_ok"].all() and table["mas_ok"].all()
    # a perfect judge is the truth on a 1..10 grid
    assert np.abs(table["judge_score"] - table["truth"]).max() <= 0.5 / 9 + 1e-9
    assert ST.spearman(table["judge_score"], table["truth"]) > 0.95
    folder = mas.save_mas(table, tmp_path)
    assert RunDir(tmp_path).judge_cache.exists() and folder == tmp_path / "mas" / "scores"
    mas.save_mas(table.assign(mas=0.5), tmp_path)                     # rewriting keeps the cache
    back = RunDir(tmp_path).load_mas()
    assert (back["mas"] == 0.5).all() and RunDir(tmp_path).judge_cache.exists()
    pd.testing.assert_frame_equal(back.drop(columns="mas"), table.drop(columns="mas"), check_dtype=False)


def test_judge_weight_zero_needs_no_judge(setup, scorer):
    cfg, _, df, resolver = setup
    table = mas.score_candidates(df, MasConfig(clip_weight=1, judge_weight=0), resolver, clip=scorer)
    assert table["mas_ok"].all() and table["judge_raw"].isna().all()
    np.testing.assert_allclose(table["mas"], table["clip_score"])
    with pytest.raises(ValueError, match="judge"):
        mas.score_candidates(df, MasConfig(), resolver, clip=scorer)


def test_candidates_frame_names_missing_columns(setup):
    _, _, df, _ = setup
    with pytest.raises(ValueError, match="text"):
        mas.candidates_frame(df.drop(columns="text"))
    from datasets import Dataset

    ds = Dataset.from_pandas(df.assign(token_ids=[[1, 2]] * len(df)), preserve_index=False)
    back = mas.candidates_frame(ds)
    assert "token_ids" not in back and len(back) == len(df)


# ------------------------------------------------------------------------------------------- agreement

def test_spearman_by_hand():
    assert ST.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert ST.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties: ranks x = 1, 2.5, 2.5, 4 and y = 1, 2, 3, 4 -> Pearson of ranks = 4.5 / sqrt(4.5 * 5)
    assert ST.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / np.sqrt(4.5 * 5))
    assert np.isnan(ST.spearman([1, 1, 1], [1, 2, 3])) and np.isnan(ST.spearman([1, 2], [1, 2]))
    assert ST.spearman([1, 2, np.nan, 3, 4], [1, 2, 100, 3, 4]) == pytest.approx(1.0)


def test_top1_and_within_prompt_agreement():
    df = pd.DataFrame({"prompt_id": ["a"] * 3 + ["b"] * 3 + ["c"] * 2,
                       "truth": [1.0, 0.0, 0.0, 0.0, 1.0, 0.5, 1.0, 1.0],
                       "s": [0.9, 0.9, 0.1, 0.8, 0.2, 0.5, 0.3, 0.4]})
    # a: tie for first between a right and a wrong one -> 0.5; b: picks a wrong one -> 0; c: truth constant, skipped
    assert mas.top1_agreement(df, "s") == pytest.approx(0.25)
    assert mas.within_prompt_spearman(df, "s") == pytest.approx(
        np.mean([ST.spearman([0.9, 0.9, 0.1], [1, 0, 0]), ST.spearman([0.8, 0.2, 0.5], [0, 1, 0.5])]))
    table = mas.agreement(df.assign(t2=df["s"]), cols=("s", "t2"))
    assert list(table.index) == ["s", "t2"] and set(table.columns) >= {"spearman", "top1", "within_prompt_spearman"}


def test_contrast_pairs_are_right_versus_wrong(setup):
    cfg, splits, _, _ = setup
    pairs = mas.contrast_pairs(splits["pref"][:10], cfg.world)
    assert set(pairs["family"]) == set(mas.CONTRAST_FAMILIES)
    scenes = {s.scene_id: s for s in splits["pref"]}
    for p in pairs.itertuples():
        assert W.verify(scenes[p.scene_id], p.instruction, p.right, cfg.world).score == 1.0
        assert W.verify(scenes[p.scene_id], p.instruction, p.wrong, cfg.world).score < 1.0
    acc = mas.contrast_accuracy(pairs, np.ones(len(pairs)), np.zeros(len(pairs)))
    assert (acc == 1.0).all()
    frame = mas.contrast_frame(pairs)
    assert len(frame) == 2 * len(pairs) and frame.groupby("prompt_id").size().eq(2).all()


def test_the_noise_verdict_needs_a_lead_at_every_level():
    import pandas as pd

    from m3po_utils.mas import noise_verdict

    def sweep(judge, m):
        return pd.DataFrame({"noise": [0.0, 1.0, 2.0], "judge_spearman": judge, "mas_spearman": m})
    # the case the old sentence got wrong: +0.002 at the noisiest level, lower at noise 1
    text = noise_verdict(sweep([0.99, 0.80, 0.649], [0.99, 0.78, 0.651]))
    assert "shows no effect of the CLIP share" in text and "helps" not in text
    assert "noise 2: judge alone ρ = 0.649, MAS ρ = 0.651" in text
    assert "so the CLIP share helps" in noise_verdict(sweep([0.99, 0.7, 0.6], [0.99, 0.75, 0.66]))
    assert "so the CLIP share hurts" in noise_verdict(sweep([0.99, 0.8, 0.7], [0.99, 0.7, 0.6]))
