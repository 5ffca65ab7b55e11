"""Tiny CLIP: built, trained, saved and reloaded through open_clip, on synthetic squares (no world.py, no hub)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from m3po_utils.config import ClipTrainConfig
from m3po_utils.models import clip as tc

SIZE = 96
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220)}
PALETTE = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 220, 40),
           "purple": (140, 40, 170), "orange": (250, 140, 20), "black": (20, 20, 20), "white": (245, 245, 245)}
SMALL = ClipTrainConfig(embed_dim=32, vision_width=64, vision_layers=1, text_width=64, text_layers=1,
                        text_heads=2, context_length=16, steps=40, batch_size=32, lr=1e-3, seed=0)


def square_scene(color: str, row: int, col: int, rng: np.random.Generator | None = None):
    """A 96x96 image with one coloured square in grid cell (row, col), and its description."""
    img = np.full((SIZE, SIZE, 3), 245, dtype=np.uint8)
    cell = SIZE // 3
    side = 16 if rng is None else int(rng.integers(12, 21))
    jitter = (0, 0) if rng is None else rng.integers(-3, 4, size=2)
    y0 = row * cell + (cell - side) // 2 + int(jitter[0])
    x0 = col * cell + (cell - side) // 2 + int(jitter[1])
    img[y0:y0 + side, x0:x0 + side] = COLORS[color]
    return Image.fromarray(img), f"a {color} square at the {ROWS[row]} {COLS[col]}."


def dataset(copies: int, seed: int):
    rng = np.random.default_rng(seed)
    pairs = [square_scene(c, r, k, rng) for _ in range(copies) for c in COLORS for r in range(3) for k in range(3)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def colour_dataset(copies: int, seed: int):
    """The easy set: whole images of one (noisy) colour, described by that colour; chance top-1 is 1/8.

    (A tiny CLIP does not learn *where* a small square sits within a few dozen steps: position has to be
    learnt through the positional embeddings, which takes hundreds of steps. Colour is learnt at once.)
    """
    rng = np.random.default_rng(seed)
    images, texts = [], []
    for _ in range(copies):
        for name, rgb in PALETTE.items():
            pixels = np.array(rgb)[None, None] + rng.normal(0, 12, (SIZE, SIZE, 3))
            images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
            texts.append(f"a picture that is all {name}.")
    return images, texts


@pytest.fixture(scope="module")
def trained():
    """One short training run shared by the tests below (a few seconds on 2 CPU cores)."""
    model, preprocess, tokenizer = tc.build_tiny_clip(SMALL, SIZE)
    images, texts = colour_dataset(copies=8, seed=1)
    history = tc.train_tiny_clip(model, tokenizer, images, texts, SMALL, preprocess, progress=False)
    return model, preprocess, tokenizer, history


def test_config_values_reach_the_open_clip_model():
    cfg = ClipTrainConfig(embed_dim=24, vision_width=48, vision_layers=1, text_width=40, text_layers=1,
                          text_heads=4, context_length=20)
    model_cfg = tc.clip_model_config(cfg, SIZE)
    assert model_cfg["vision_cfg"]["patch_size"] == 32 and model_cfg["text_cfg"]["vocab_size"] == 49408
    model, preprocess, tokenizer = tc.build_tiny_clip(cfg, SIZE)
    assert isinstance(model, __import__("open_clip").CLIP)
    assert model.context_length == 20 and tokenizer.context_length == 20
    assert model.positional_embedding.shape == (20, 40)
    assert model.visual.conv1.kernel_size == (32, 32) and model.visual.grid_size == (3, 3)
    assert model.visual.transformer.resblocks[0].attn.num_heads == 4  # 48 wide, 4 heads of 12
    image, text = square_scene("red", 0, 0)
    pixels = preprocess(image)
    assert pixels.shape == (3, SIZE, SIZE)
    emb_i = tc.encode_images(model, preprocess, [image])
    emb_t = tc.encode_texts(model, tokenizer, [text, "x"])
    assert emb_i.shape == (1, 24) and emb_t.shape == (2, 24)
    assert torch.allclose(emb_t.norm(dim=-1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="patch_size"):
        tc.clip_model_config(cfg, SIZE, patch_size=30)


def test_long_text_is_truncated_keeping_end_of_text():
    _, _, tokenizer = tc.build_tiny_clip(SMALL, SIZE)
    ids = tokenizer(["a red square " * 20])[0]
    assert ids.shape == (SMALL.context_length,)
    assert int(ids[-1]) == tokenizer.eot_token_id and int(ids[0]) == tokenizer.sot_token_id


def test_training_lowers_the_loss_and_is_seeded(trained):
    _, _, _, history = trained
    assert [h["step"] for h in history] == list(range(1, SMALL.steps + 1))
    first = np.mean([h["loss"] for h in history[:5]])
    last = np.mean([h["loss"] for h in history[-5:]])
    assert last < 0.7 * first, (first, last)
    assert last < np.log(SMALL.batch_size) - 0.5  # not the collapsed solution (all embeddings alike: ln batch)
    # same seed, same data: same losses
    model, preprocess, tokenizer = tc.build_tiny_clip(SMALL, SIZE)
    images, texts = colour_dataset(copies=8, seed=1)
    cfg = ClipTrainConfig(**{**SMALL.__dict__, "steps": 3})
    again = tc.train_tiny_clip(model, tokenizer, images, texts, cfg, preprocess, progress=False)
    model2, preprocess2, tokenizer2 = tc.build_tiny_clip(SMALL, SIZE)
    again2 = tc.train_tiny_clip(model2, tokenizer2, images, texts, cfg, preprocess2, progress=False)
    assert again == again2


def test_retrieval_after_short_training_beats_chance(trained):
    model, preprocess, tokenizer, _ = trained
    images, texts = colour_dataset(copies=2, seed=7)  # fresh noise; each description twice
    acc = tc.retrieval_accuracy(model, preprocess, tokenizer, images, texts, k=(1, 5))
    assert acc["n"] == 16 and acc["n_texts"] == 8 and acc["chance_top1"] == pytest.approx(1 / 8)
    assert acc["top1"] > 3 * acc["chance_top1"], acc
    assert acc["top5"] >= acc["top1"]


def test_save_and_reload_through_open_clip_gives_identical_embeddings(trained, tmp_path):
    model, preprocess, tokenizer, _ = trained
    model_cfg = tc.clip_model_config(SMALL, SIZE)
    folder = tc.save_clip(model, model_cfg, tmp_path / "models" / "clip")
    assert sorted(p.name for p in folder.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))
    assert [p.name for p in folder.parent.iterdir()] == ["clip"]  # no temp dir left beside it
    saved = json.loads((folder / "open_clip_config.json").read_text())
    assert saved["model_cfg"] == model_cfg and "mean" in saved["preprocess_cfg"]

    loaded, preprocess2, tokenizer2 = tc.load_clip(str(folder))
    assert not loaded.training and type(loaded) is type(model)
    images, texts = dataset(copies=1, seed=3)
    assert torch.allclose(tc.encode_images(model, preprocess, images),
                          tc.encode_images(loaded, preprocess2, images), atol=1e-6)
    assert torch.allclose(tc.encode_texts(model, tokenizer, texts),
                          tc.encode_texts(loaded, tokenizer2, texts), atol=1e-6)
    assert tokenizer2.context_length == SMALL.context_length
    assert torch.equal(preprocess(images[0]), preprocess2(images[0]))

    # saving again over the same folder replaces it atomically
    tc.save_clip(loaded, model_cfg, folder)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["clip"]


class _OneHot(torch.nn.Module):
    """A stand-in 'CLIP' whose image i and text i embed to the same one-hot vector."""

    def __init__(self, n: int):
        super().__init__()
        self.visual = torch.nn.Linear(1, 1)
        self.n = n

    def encode_image(self, x, normalize=False):
        return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), self.n).float()

    def encode_text(self, ids, normalize=False):
        return torch.nn.functional.one_hot(ids[:, 0], self.n).float()


def test_retrieval_accuracy_hand_case():
    n = 7
    model = _OneHot(n)
    images = [torch.full((3, 2, 2), float(i)) for i in range(n)]
    texts = [f"t{i}" for i in range(n)]

    def preprocess(x):
        return x

    def tokenizer(batch):
        return torch.tensor([[int(t[1:])] for t in batch])

    perfect = tc.retrieval_accuracy(model, preprocess, tokenizer, images, texts, k=(1, 5))
    assert perfect["top1"] == 1.0 and perfect["top5"] == 1.0 and perfect["n"] == n
    shifted = tc.retrieval_accuracy(model, preprocess, tokenizer, images, texts[1:] + texts[:1], k=(1,))
    assert shifted["top1"] == 0.0


def test_missing_or_broken_folder_errors_name_the_path(tmp_path):
    missing = tmp_path / "models" / "clip"
    with pytest.raises(FileNotFoundError, match="notebook 00") as err:
        tc.load_clip(str(missing))
    assert str(missing) in str(err.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="open_clip_config.json") as err:
        tc.load_clip(str(empty))
    assert str(empty) in str(err.value)

    model, _, _ = tc.build_tiny_clip(SMALL, SIZE)
    folder = tc.save_clip(model, tc.clip_model_config(SMALL, SIZE), tmp_path / "broken")
    (folder / "open_clip_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt") as err:
        tc.load_clip(str(folder))
    assert str(folder.resolve()) in str(err.value)

    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        tc.load_clip(str(folder))


def test_model_names_take_the_open_clip_hub_path_offline():
    # no pretrained tag: open_clip builds the named architecture with random weights and downloads nothing
    model, preprocess, tokenizer = tc.load_clip("ViT-S-32")
    assert not model.training and tokenizer.context_length == 77
    assert preprocess(square_scene("red", 1, 1)[0]).shape == (3, 224, 224)
