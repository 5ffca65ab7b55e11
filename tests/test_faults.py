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
    mme = tmp_path / "MME"
    mme.mkdir()
    cfg = load_preset("llava-1.5-7b", {"evaluation.mme_dir": str(mme)})
    with pytest.raises(ConfigError, match="generation.prompts_file is empty"):
        preflight.check(cfg, environ={"OPENAI_API_KEY": "k"})
    with pytest.raises(ConfigError, match="'/nowhere.jsonl' does not exist"):
        preflight.check(load_preset("llava-1.5-7b", {"generation.prompts_file": "/nowhere.jsonl",
                                                     "evaluation.mme_dir": str(mme)}), environ={"OPENAI_API_KEY": "k"})
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"image": "a.png", "instruction": "Describe it."}\n')
    cfg = load_preset("llava-1.5-7b", {"generation.prompts_file": str(prompts), "evaluation.mme_dir": str(mme)})
    with pytest.raises(ConfigError, match="OPENAI_API_KEY is not set; the judge at api.openai.com"):
        preflight.check(cfg, environ={})
    preflight.check(cfg, stages=[0, 1, 3, 4, 5, 6], environ={})       # only 02 calls a hub preset's judge
    preflight.check(load_preset("llava-1.5-7b"), stages=[2, 3], environ={"OPENAI_API_KEY": "k"})  # 01 reads it
    preflight.check(cfg, environ={"OPENAI_API_KEY": "k"})
    no_files = load_preset("llava-1.5-7b", {"generation.prompts_file": str(prompts)})
    with pytest.raises(ConfigError, match="evaluates on real benchmark files and has none"):
        preflight.check(no_files, environ={"OPENAI_API_KEY": "k"})     # 06 would have nothing to score
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
    ('{"image": "a.png", "instruction": "And its colour?", "history": ["Describe."]}',
     "'history' is .* not a list of \\[question, answer\\] pairs"),
    ('{"image": "a.png", "instruction": "And its colour?", "history": [["Describe.", ""]]}',
     "p.jsonl:1: an answer of the history is empty"),
])
def test_prompts_file_rows_are_checked(tmp_path, line, words):
    path = tmp_path / "p.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=words):
        file_prompts(path)


def test_a_prompts_file_row_with_a_history_is_a_dialogue(tmp_path):
    from m3po_utils import dialogue

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"image": "a.png", "instruction": "What color is it?",
                                "history": [["What is in the picture?", "A cat on a sofa."]]}) + "\n")
    (row,) = file_prompts(path)
    assert dialogue.decode(row["instruction"]) == ([("What is in the picture?", "A cat on a sofa.")],
                                                   "What color is it?")


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


# ------------------------------------------------------------------------------------------ settings up front

@pytest.mark.parametrize("overrides, words", [
    ({"generation.seed": -1}, r"generation.seed=-1 is not allowed: an integer in \[0, 4294967295\]"),
    ({"selection.seed": -1}, "selection.seed=-1 is not allowed"),
    ({"dpo.seed": 2**32}, "dpo.seed=4294967296 is not allowed"),
    ({"evaluation.seeds": (0, 2**32)}, "evaluation.seeds=4294967296 is not allowed"),
])
def test_seeds_out_of_numpy_and_torch_range_are_refused_at_once(overrides, words):
    with pytest.raises(ConfigError, match=words):
        load_preset("smoke", overrides)


@pytest.mark.parametrize("overrides, words, reader", [
    ({"dpo.strategies": ("m3po",)}, r"evaluation.methods=.* evaluates \['random', 'best_worst', 'oracle'\], which "
                                    r"dpo.strategies=\['m3po'\] does not train", 6),
    ({"generation.family_weights": (("describe", 1.0), ("haiku", 1.0))},
     r"generation.family_weights names \['haiku'\], which the shapes world does not have", 1),
    ({"evaluation.pope_files": ("/nowhere/coco_pope_random.json",), "evaluation.pope_images": "/tmp"},
     "evaluation.pope_files names '/nowhere/coco_pope_random.json', which does not exist", 6),
    ({"evaluation.mme_dir": "/nowhere/MME"}, "evaluation.mme_dir='/nowhere/MME' does not exist", 6),
])
def test_settings_that_only_a_later_stage_reads_are_checked_before_the_first(overrides, words, reader):
    """Refused when the run starts, before notebook 00 trains for minutes, not when the reading stage is reached."""
    with pytest.raises(ConfigError, match=words):
        preflight.check(load_preset("smoke", overrides), stages=[0, reader], environ={})
    if reader == 6:
        preflight.check(load_preset("smoke", overrides), stages=[0, 1, 2, 3, 4, 5], environ={})


# ------------------------------------------------------------------------------------------ secrets

CANARY_PW, CANARY_KEY = "Canary-PW-7f3a", "Canary-Key-91bd"


@pytest.mark.parametrize("url", [f"http://user:{CANARY_PW}@127.0.0.1:9/v1",
                                 f"http://127.0.0.1:9/v1?api-key={CANARY_KEY}",
                                 f"https://judge.example/v1?token={CANARY_KEY}&x=1"])
def test_a_credential_in_the_endpoint_url_is_refused_and_never_printed(url, monkeypatch):
    from m3po_utils.judge.client import JudgeUrlError, judge_base_url

    with pytest.raises(ConfigError, match="OPENAI_BASE_URL=.*carries a credential") as exc:
        preflight.check(load_preset("smoke"), environ={"OPENAI_BASE_URL": url})
    assert CANARY_PW not in str(exc.value) and CANARY_KEY not in str(exc.value)
    monkeypatch.setenv("OPENAI_BASE_URL", url)             # a notebook opened by hand reads the same variable
    with pytest.raises(JudgeUrlError) as exc:
        judge_base_url(load_preset("smoke"))
    assert CANARY_PW not in str(exc.value) and CANARY_KEY not in str(exc.value)


# ------------------------------------------------------------------------------------------ benchmark files

def _pope(tmp_path, lines, name="coco_pope_random.json"):
    (tmp_path / "img").mkdir(exist_ok=True)
    (tmp_path / "img" / "a.png").write_bytes(b"png")
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def _q(qid=1, image="a.png", text="Is there a cat in the image?", label="yes"):
    return {"question_id": qid, "image": image, "text": text, "label": label}


@pytest.mark.parametrize("lines, words", [
    ([_q(text=None)], r"coco_pope_random.json:1 has text=None; expected str, not empty"),
    ([_q(qid=None)], "has question_id=None"),
    ([_q(), _q(qid=1)], "has question_id 1 twice"),
    ([_q(image="../outside.png")], r"names image '\.\./outside\.png', which is outside the image folder"),
    ([_q(image="/etc/passwd")], r"names image '/etc/passwd', which is outside the image folder"),
])
def test_pope_files_that_would_be_counted_wrongly_are_refused(tmp_path, lines, words):
    from m3po_utils.benchfiles import BenchmarkFileError, load_pope_file

    with pytest.raises(BenchmarkFileError, match=words):
        load_pope_file(_pope(tmp_path, lines), tmp_path / "img")


def test_images_linked_out_of_their_folder_and_hostile_nesting_are_refused(tmp_path):
    from m3po_utils.benchfiles import BenchmarkFileError, load_pope_file

    path = _pope(tmp_path, [_q(image="link.png")])
    (tmp_path / "img" / "link.png").symlink_to("/etc/hostname")
    with pytest.raises(BenchmarkFileError, match="link.png', which is outside the image folder"):
        load_pope_file(path, tmp_path / "img")
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(BenchmarkFileError, match="nests its JSON too deeply"):
        load_pope_file(path, tmp_path / "img")


def _mme(tmp_path, text: bytes, n_images=1):
    folder = tmp_path / "MME" / "existence"
    folder.mkdir(parents=True)
    for i in range(n_images):
        (folder / f"{i}.png").write_bytes(b"png")
        (folder / f"{i}.txt").write_bytes(text)
    return tmp_path / "MME"


def test_mme_files_in_other_encodings_and_with_three_questions_per_image(tmp_path):
    from m3po_utils.benchfiles import BenchmarkFileError, load_mme_dir

    ok = "Is there a dog?\tYes\nIs there a cat?\tNo\n"
    rows = load_mme_dir(_mme(tmp_path / "utf16", ok.encode("utf-16")))          # UTF-16 with its mark: read
    assert [r["answer"] for r in rows] == ["Yes", "No"]
    with pytest.raises(BenchmarkFileError, match=r"0.txt is not UTF-8 text .*Latin-1.*save it as UTF-8"):
        load_mme_dir(_mme(tmp_path / "latin1", "Is there a café?\tYes\n".encode("latin-1")))
    with pytest.raises(BenchmarkFileError, match="asks more than 2 questions of image"):
        load_mme_dir(_mme(tmp_path / "three", (ok + "Is there a cow?\tNo\n").encode()))
    with pytest.raises(BenchmarkFileError, match="has question 'Is there a dog\\?' twice"):
        load_mme_dir(_mme(tmp_path / "twice", b"Is there a dog?\tYes\nIs there a dog?\tNo\n"))


def test_a_config_json_nested_beyond_reason_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ConfigError, match="is not valid JSON"):
        setup_run(tmp_path, "smoke")
