import json

import pytest

from m3po_utils.config import ConfigError, load_preset, parse_overrides, preset_from_dict, setup_run


def test_presets_build_and_differ():
    smoke, shapes, big = load_preset("smoke"), load_preset("shapes"), load_preset("llava-1.5-7b")
    assert smoke.world.n_train < shapes.world.n_train
    assert smoke.lvlm_train.steps < shapes.lvlm_train.steps
    assert big.world_kind == "hub" and big.models.lvlm == "llava-hf/llava-1.5-7b-hf"
    assert (big.models.clip_model, big.models.clip_pretrained) == ("ViT-L-14", "openai")


def test_overrides_are_typed_from_strings():
    p = load_preset("smoke", parse_overrides(["world.n_train=500", "lvlm_train.lr=0.01", "evaluation.seeds=[3, 4]"]))
    assert p.world.n_train == 500 and p.lvlm_train.lr == 0.01 and p.evaluation.seeds == (3, 4)


def test_related_fields_can_change_together_in_any_order():
    p = load_preset("shapes", {"lvlm_train.warmup_steps": 5, "lvlm_train.steps": 30})
    assert (p.lvlm_train.steps, p.lvlm_train.warmup_steps) == (30, 5)


@pytest.mark.parametrize("name, overrides, needle", [
    ("nope", {}, "unknown preset 'nope'; choose one of: smoke, shapes, llava-1.5-7b"),
    ("smoke", {"world.bogus": 1}, "unknown setting 'world.bogus'; allowed here:"),
    ("smoke", {"bogus": 1}, "unknown setting 'bogus'"),
    ("smoke", {"world.n_train": "abc"}, "world.n_train='abc' is not a valid int literal"),
    ("smoke", {"world.n_train": 2.5}, "expected an integer"),
    ("smoke", {"world.partner_prob": 2}, "world.partner_prob=2.0 is not allowed: a float in [0, 1]"),
    ("smoke", {"world.n_eval_extra": -1}, "world.n_eval_extra=-1 is not allowed: an integer >= 0"),
    ("smoke", {"lvlm_train.position_grounding": -0.5}, "lvlm_train.position_grounding=-0.5 is not allowed: a float >= 0"),
    ("smoke", {"lvlm_train.weight_decay": 1.5}, "lvlm_train.weight_decay=1.5 is not allowed: a float in [0, 1)"),
    ("smoke", {"lvlm_train.precision": "fp16"}, "lvlm_train.precision='fp16' is not allowed: 'bf16' or 'fp32'"),
    ("smoke", {"world.shapes": ["circle", "circle", "star"]}, "world.shapes"),
    ("smoke", {"world": 3}, "'world' is a group"),
    ("smoke", {"world.n_train.x": 3}, "is a plain value"),
    ("smoke", {"lvlm_train.text_heads": 3}, "a divisor of text_hidden"),
    ("smoke", {"models.judge_base_url": "http://x/v1?api_key=sk-123"}, "without credentials"),
])
def test_bad_values_name_the_field(name, overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_preset(name, overrides)
    assert needle in str(err.value)


def test_parse_overrides_rejects_missing_equals():
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        parse_overrides(["world.n_train"])


def test_setup_run_writes_config_and_refuses_a_different_one(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value-123")
    cfg, run = setup_run(tmp_path / "r", "smoke", {"world.n_eval": 30})
    saved = json.loads((run / "config.json").read_text())
    assert saved["world"]["n_eval"] == 30 and saved["name"] == "smoke"
    assert "sk-secret" not in (run / "config.json").read_text()
    assert preset_from_dict(saved) == cfg
    setup_run(tmp_path / "r", "smoke", {"world.n_eval": 30})  # same config: fine
    with pytest.raises(ConfigError, match=r"world.n_eval: 30 -> 40"):
        setup_run(tmp_path / "r", "smoke", {"world.n_eval": 40})


def test_run_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        setup_run(f, "smoke")


def test_setup_run_accepts_a_run_dir_from_before_a_setting_was_added(tmp_path):
    cfg, run = setup_run(tmp_path / "r", "smoke")
    old = json.loads((run / "config.json").read_text())
    del old["evaluation"]                      # a config.json written before the evaluation group existed
    old["dpo"].pop("seed")
    old["eval_seeds"] = [0]                    # and one that had a setting since dropped
    (run / "config.json").write_text(json.dumps(old))
    cfg2, _ = setup_run(run, "smoke")
    assert cfg2 == cfg
    saved = json.loads((run / "config.json").read_text())
    assert saved["evaluation"]["seeds"] == [0, 1] and "eval_seeds" not in saved and saved["dpo"]["seed"] == 0
    old["world"]["n_eval"] = 7                 # a setting both versions know still has to match
    (run / "config.json").write_text(json.dumps(old))
    with pytest.raises(ConfigError, match=r"world.n_eval: 7 -> 40"):
        setup_run(run, "smoke")


def test_a_run_dir_from_before_the_family_mix_setting_continues_only_with_the_old_mix(tmp_path):
    from m3po_utils.config import LEGACY_VALUES
    cfg, run = setup_run(tmp_path / "r", "smoke")
    old = json.loads((run / "config.json").read_text())
    del old["generation"]["family_weights"]              # written before the setting existed: the old mix
    (run / "config.json").write_text(json.dumps(old))
    with pytest.raises(ConfigError, match=r"made before the setting generation\.family_weights existed.*"
                                          r"-p generation\.family_weights=\"\(\('describe', 0\.3\)"):
        setup_run(run, "smoke")
    assert "family_weights" not in json.loads((run / "config.json").read_text())["generation"]   # untouched
    legacy = repr(LEGACY_VALUES["generation.family_weights"])
    cfg2, _ = setup_run(run, "smoke", parse_overrides([f"generation.family_weights={legacy}"]))
    assert cfg2.generation.family_weights == LEGACY_VALUES["generation.family_weights"] != cfg.generation.family_weights
    saved = json.loads((run / "config.json").read_text())["generation"]["family_weights"]
    assert [tuple(x) for x in saved] == list(LEGACY_VALUES["generation.family_weights"])
    setup_run(run, "smoke", parse_overrides([f"generation.family_weights={legacy}"]))   # and again, now recorded
