"""Bad settings and bad input files a user will meet: each is refused before any work, naming the value and the fix."""

from __future__ import annotations

import json

import pytest

from m3po_utils import preflight
from m3po_utils.config import ConfigError, load_preset, setup_run
from m3po_utils.shapes.prompts import file_prompts


def test_the_defaults_pass():
    preflight.check(load_preset("shapes"), environ={})
    preflight.check(load_preset("smoke"), environ={})


@pytest.mark.parametrize("overrides, words", [
    ({"mas.prompt_version": "v9"}, "mas.prompt_version='v9' is not a judge prompt; versions: v1"),
    ({"generation.n_candidates": 10**9}, "generation.n_candidates=1000000000 × generation.n_prompts"),
])
def test_settings_a_later_stage_needs_are_checked_up_front(overrides, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace("×", "×")):
        preflight.check(load_preset("shapes", overrides), environ={})


def test_hub_preset_needs_its_prompts_file_and_a_key(tmp_path):
    cfg = load_preset("llava-1.5-7b")
    with pytest.raises(ConfigError, match="generation.prompts_file is empty"):
        preflight.check(cfg, environ={"OPENAI_API_KEY": "k"})
    with pytest.raises(ConfigError, match="'/nowhere.jsonl' does not exist"):
        preflight.check(load_preset("llava-1.5-7b", {"generation.prompts_file": "/nowhere.jsonl"}),
                        environ={"OPENAI_API_KEY": "k"})
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"image": "a.png", "instruction": "Describe it."}\n')
    cfg = load_preset("llava-1.5-7b", {"generation.prompts_file": str(prompts)})
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set; the judge at api.openai.com"):
        preflight.check(cfg, environ={})
    preflight.check(cfg, stages=[0, 1, 3, 4, 5, 6], environ={})       # only 02 calls a hub preset's judge
    preflight.check(load_preset("llava-1.5-7b"), stages=[2, 3], environ={"OPENAI_API_KEY": "k"})  # 01 reads it
    preflight.check(cfg, environ={"OPENAI_API_KEY": "k"})
    preflight.check(cfg, environ={"OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"})   # a local endpoint


@pytest.mark.parametrize("content, words", [
    ("[1, 2]", "holds a list, not a configuration"),
    ("{}", "holds no preset name"),
    ('{"name": "shapes"}', "holds the configuration of preset 'shapes'; this run uses preset 'smoke'"),
])
def test_a_config_json_that_is_not_this_runs_is_refused(tmp_path, content, words):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ConfigError, match=words):
        setup_run(tmp_path, "smoke")
    assert (tmp_path / "config.json").read_text() == content         # left as it was


def test_an_unwritable_run_dir_is_refused():
    with pytest.raises(ConfigError, match="cannot be written"):
        setup_run("/proc/m3po-run", "smoke")


@pytest.mark.parametrize("line, words", [
    ('{"image": "a.png", "instruction": null}', "'instruction' is null, not a string"),
    ('{"image": 3, "instruction": "Describe."}', "'image' is 3, not a string"),
    ('{"image": "a.png"}', "is not a JSON object with 'image' and 'instruction'"),
])
def test_prompts_file_rows_are_checked(tmp_path, line, words):
    path = tmp_path / "p.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=words):
        file_prompts(path)


def test_prompts_file_encoding_and_image_paths(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(json.dumps({"image": "a.png", "instruction": "Décris"}, ensure_ascii=False).encode("latin-1"))
    with pytest.raises(ValueError, match=r"p.jsonl:1 is not UTF-8 .*iconv"):
        file_prompts(path)
    (tmp_path / "imgdir").mkdir()
    path.write_text('{"image": "imgdir", "instruction": "Describe."}\n')
    with pytest.raises(FileNotFoundError, match="imgdir' is a directory"):
        file_prompts(path, check_images=True)
    with pytest.raises(FileNotFoundError, match="is a directory"):
        file_prompts(tmp_path)
    path.write_text("\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        file_prompts(path)
