"""The series' CLIP: a tiny open_clip model trained on the shapes world, or a real one loaded by name.

The shapes world trains its own CLIP. :func:`clip_model_config` writes an ordinary open_clip model config (the
same dict that open_clip keeps for ``ViT-B-32`` and friends), :func:`build_tiny_clip` instantiates it with
open_clip's own classes, transforms and bundled BPE tokenizer (nothing is downloaded), and
:func:`train_tiny_clip` fits it contrastively on (image, description) pairs. :func:`save_clip` writes the folder
exactly as a model-hub repository of open_clip looks (``open_clip_config.json`` + ``open_clip_model.safetensors``),
so :func:`load_clip` reads it back *through open_clip* (its ``local-dir:`` schema), the very code path that also
serves ``load_clip("ViT-L-14", "openai")`` at real scale.

Texts longer than the context. open_clip's ``SimpleTokenizer`` turns a text into
``<start_of_text> tokens... <end_of_text>`` and, when that exceeds ``context_length`` tokens, keeps the first
``context_length`` tokens and overwrites the last kept one with ``<end_of_text>``: the *end* of a long text is
silently dropped, the end-of-text token (whose position the text tower pools) is always kept. Nothing here warns
about it; keep descriptions short or raise ``clip_train.context_length`` (real CLIP has 77).

Duplicate texts in a batch. Scenes of the shapes world can share a description. The contrastive loss used here
is open_clip's ``ClipLoss`` (symmetric cross-entropy over the in-batch similarity matrix) with one change: when
the same text occurs several times in a batch, its target probability is split evenly over those positions
instead of calling identical texts negatives of each other. With distinct texts it equals ``ClipLoss`` exactly.
For the same reason :func:`retrieval_accuracy` ranks *distinct* texts: image ``i`` is right when its top-ranked
text is equal to ``texts[i]``.

Known failure mode. On images that are mostly one background colour, a freshly initialised tiny CLIP gives
nearly the same image embedding to every image; a learning rate that is too high (2e-3 in our tests) then
collapses both towers to one point and the loss sticks at ``ln(batch_size)``. Colour is learnt within a few
dozen steps at 1e-3; *where* a small object sits is learnt only through the positional embeddings, which
takes far longer. Check the loss history against ``ln(batch_size)`` before trusting the scores.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from m3po_utils.config import ClipTrainConfig
from m3po_utils.io import AtomicDir
from m3po_utils.progress import Progress

CONFIG_NAME = "open_clip_config.json"  # the names open_clip's hub / local-dir loader looks for
WEIGHTS_NAME = "open_clip_model.safetensors"
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pth")  # what open_clip's local-dir loader would pick up
LOGIT_SCALE_MAX = math.log(100.0)  # open_clip's training script clamps the learned temperature to 100
WEIGHT_DECAY = 0.1
WARMUP_FRAC = 0.05
_HOW_TO_FIX = "run notebook 00 to train it (or pass an open_clip model name such as 'ViT-L-14' with a pretrained tag)"


# ----------------------------------------------------------------------------------------------- build ------

def clip_model_config(cfg: ClipTrainConfig, image_size: int, patch_size: int | None = None) -> dict[str, Any]:
    """An open_clip model config for the tiny CLIP: the dict open_clip stores as ``model_cfg``.

    ``patch_size`` defaults to ``image_size // 3`` so that each cell of the shapes world's 3x3 grid is one
    patch. The vision tower has no head count in :class:`ClipTrainConfig`; it uses ``cfg.text_heads`` heads when
    that divides ``vision_width`` (otherwise their greatest common divisor), expressed as open_clip's
    ``head_width``.
    """
    import open_clip  # imported on use: it pulls in torchvision (~2 s) that most stages never need

    patch = image_size // 3 if patch_size is None else int(patch_size)
    if patch < 1 or image_size % patch != 0:
        raise ValueError(f"patch_size={patch} must be a positive divisor of image_size={image_size}")
    vision_heads = gcd(cfg.vision_width, cfg.text_heads)
    vocab_size = open_clip.SimpleTokenizer(context_length=cfg.context_length).vocab_size  # 49408
    return {
        "embed_dim": cfg.embed_dim,
        "quick_gelu": False,
        "vision_cfg": {
            "image_size": image_size,
            "layers": cfg.vision_layers,
            "width": cfg.vision_width,
            "head_width": cfg.vision_width // vision_heads,
            "patch_size": patch,
            "mlp_ratio": 4.0,
        },
        "text_cfg": {
            "context_length": cfg.context_length,
            "vocab_size": vocab_size,
            "width": cfg.text_width,
            "heads": cfg.text_heads,
            "layers": cfg.text_layers,
            "mlp_ratio": 4.0,
        },
    }


def _eval_transform(model: torch.nn.Module, preprocess_cfg: dict | None = None):
    """Attach a preprocess config to ``model`` and return open_clip's eval transform, as its factory does."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    merged = merge_preprocess_dict(PreprocessCfg(), preprocess_cfg or {})
    merged["size"] = model.visual.image_size  # what create_model sets from the instantiated tower
    open_clip.set_model_preprocess_cfg(model, merged)
    return image_transform_v2(PreprocessCfg(**merged), is_train=False)


def build_tiny_clip(cfg: ClipTrainConfig, image_size: int):
    """A freshly initialised tiny CLIP (seeded by ``cfg.seed``), its eval transform and its tokenizer.

    The model is ``open_clip.CLIP`` built from :func:`clip_model_config`, the same class and arguments that
    ``open_clip.create_model`` uses when it loads the saved folder again; no pretrained weights are involved.
    """
    import open_clip

    model_cfg = clip_model_config(cfg, image_size)
    torch.manual_seed(cfg.seed)
    model = open_clip.CLIP(**model_cfg)
    preprocess = _eval_transform(model)
    tokenizer = open_clip.SimpleTokenizer(context_length=cfg.context_length)
    model.eval()
    return model, preprocess, tokenizer


# ----------------------------------------------------------------------------------------------- train ------

def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                     text_ids: torch.Tensor | None = None) -> torch.Tensor:
    """open_clip's ClipLoss on normalised features; identical texts (equal token rows) share the target."""
    logits = logit_scale * image_features @ text_features.T
    if text_ids is None:
        labels = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    same = (text_ids[:, None, :] == text_ids[None, :, :]).all(-1).to(logits.dtype)
    targets = same / same.sum(1, keepdim=True)  # symmetric, so it serves both directions
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.visual.parameters())
    return p.device, p.dtype


def _image_tensor(preprocess, images) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images
    first = preprocess(images[0])
    out = torch.empty((len(images), *first.shape), dtype=first.dtype)   # filled in place: no list of copies
    out[0] = first
    for i in range(1, len(images)):
        out[i] = preprocess(images[i])
    return out


def train_tiny_clip(model, tokenizer, images: Sequence[Image.Image], texts: Sequence[str], cfg: ClipTrainConfig,
                    preprocess, progress: bool = True) -> list[dict]:
    """Fit ``model`` contrastively on (image, text) pairs; return ``[{"step", "loss"}, ...]`` (one per step).

    Every image is preprocessed and every text tokenized once, up front. Each step draws ``cfg.batch_size``
    distinct pairs (all pairs when there are fewer) with a ``numpy`` Generator seeded by ``cfg.seed``. The
    optimiser is AdamW, weight decay on weight matrices only (not on embeddings, gains, biases or the
    temperature), with a short linear warm-up (5 % of the steps) and a cosine decay of ``cfg.lr`` to 0. The
    learned temperature is clamped at 100 as open_clip's trainer does. The model is left in eval mode.
    """
    if len(images) != len(texts):
        raise ValueError(f"got {len(images)} images but {len(texts)} texts; pass one description per image")
    if len(images) < 2:
        raise ValueError("contrastive training needs at least 2 (image, text) pairs")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device, dtype = _model_device_dtype(model)
    pixels = _image_tensor(preprocess, images).to(device=device, dtype=dtype)
    tokens = tokenizer(list(texts)).to(device)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "embedding" in name
        (no_decay if skip else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    warmup = max(1, int(cfg.steps * WARMUP_FRAC))

    def lr_factor(step: int) -> float:  # step counts from 0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, cfg.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    n, batch = len(images), min(cfg.batch_size, len(images))
    history: list[dict] = []
    model.train()
    bar = Progress(cfg.steps, "training the tiny CLIP", enabled=progress)
    try:
        for step in range(cfg.steps):
            idx = torch.from_numpy(rng.choice(n, size=batch, replace=False)).to(device)
            text_ids = tokens[idx]
            img = model.encode_image(pixels[idx], normalize=True)
            txt = model.encode_text(text_ids, normalize=True)
            loss = contrastive_loss(img, txt, model.logit_scale.exp(), text_ids)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
            history.append({"step": step + 1, "loss": float(loss.detach())})
            bar.update(loss=round(history[-1]["loss"], 3))
    finally:
        bar.close()
        model.eval()
    return history


# ------------------------------------------------------------------------------------------- save / load ----

def save_clip(model, model_cfg: dict, folder, preprocess_cfg: dict | None = None) -> Path:
    """Write ``folder`` as an open_clip hub repository would hold it; atomically (temp dir, then rename).

    ``open_clip_config.json`` holds ``{"model_cfg": ..., "preprocess_cfg": ...}`` (by default the model's own
    mean / std / interpolation / resize mode, the keys open_clip's hub export writes) and
    ``open_clip_model.safetensors`` the state dict. No pickle files are written.
    """
    import open_clip

    if preprocess_cfg is None:
        own = open_clip.get_model_preprocess_cfg(model)
        preprocess_cfg = {k: own[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in own}
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    folder = Path(folder)
    with AtomicDir(folder) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=list) + "\n")
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
    return folder


def _resolve_device(device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_folder(folder: Path) -> None:
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} holds no {CONFIG_NAME}, so it is not a saved CLIP; {_HOW_TO_FIX}")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{config_path} is not valid JSON ({exc}); delete {folder} and {_HOW_TO_FIX}") from None
    if not isinstance(config, dict) or "model_cfg" not in config:
        raise ValueError(f"{config_path} has no 'model_cfg'; delete {folder} and {_HOW_TO_FIX}")
    if not any(any(folder.glob(p)) for p in _WEIGHT_PATTERNS):
        raise FileNotFoundError(f"{folder} has a config but no weights ({WEIGHTS_NAME}); {_HOW_TO_FIX}")


def load_clip(name_or_folder: str, pretrained: str = "", device="cpu"):
    """``(model, preprocess, tokenizer)`` from a saved folder or from an open_clip model name + pretrained tag.

    An existing directory (or ``local-dir:PATH``) is loaded by open_clip's ``local-dir:`` schema, which reads
    ``open_clip_config.json`` and the safetensors weights beside it (``pretrained`` is then ignored). Anything
    else goes to ``open_clip.create_model_and_transforms(name, pretrained=pretrained)`` and
    ``open_clip.get_tokenizer(name)`` (``hf-hub:org/repo`` included), which may download the weights.
    ``preprocess`` is the eval transform. The model is returned in eval mode.
    """
    import open_clip

    name = str(name_or_folder)
    dev = _resolve_device(device)
    if name.startswith(open_clip.factory.LOCAL_DIR_PREFIX):
        name = name[len(open_clip.factory.LOCAL_DIR_PREFIX):]
    path = Path(name).expanduser()
    is_model_name = (name.startswith(open_clip.factory.HF_HUB_PREFIX)
                     or name.replace("/", "-") in open_clip.list_models())
    if not path.is_dir() and not is_model_name:
        raise FileNotFoundError(
            f"no saved CLIP folder at {path} (and {name!r} is not an open_clip model name); {_HOW_TO_FIX}")

    if not path.is_dir():  # a real open_clip model: the hub path
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained or None,
                                                                     device=dev)
        tokenizer = open_clip.get_tokenizer(name)
    else:
        folder = path.resolve()
        _check_folder(folder)
        spec = f"{open_clip.factory.LOCAL_DIR_PREFIX}{folder}"
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(spec, device=dev)
            tokenizer = open_clip.get_tokenizer(spec)
        except Exception as exc:  # corrupt weights, a config that does not match them, ...
            raise ValueError(f"could not load the CLIP saved in {folder} ({type(exc).__name__}: {exc}); "
                             f"it is incomplete or corrupt: delete it and {_HOW_TO_FIX}") from exc
    model.eval()
    return model, preprocess, tokenizer


# ------------------------------------------------------------------------------------------ embeddings -----

@torch.no_grad()
def encode_images(model, preprocess, images, batch_size: int = 64) -> torch.Tensor:
    """L2-normalised image embeddings ``[n, embed_dim]`` (float32, on the CPU); ``images`` are PIL images
    (or an already preprocessed ``[n, 3, H, W]`` tensor)."""
    device, dtype = _model_device_dtype(model)
    out = []
    for start in range(0, len(images), batch_size):
        chunk = _image_tensor(preprocess, images[start:start + batch_size]).to(device=device, dtype=dtype)
        out.append(model.encode_image(chunk, normalize=True).float().cpu())
    if not out:
        raise ValueError("encode_images got no images")
    return torch.cat(out)


@torch.no_grad()
def encode_texts(model, tokenizer, texts, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings ``[n, embed_dim]`` (float32, on the CPU)."""
    device, _ = _model_device_dtype(model)
    texts = list(texts)
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[start:start + batch_size]).to(device)
        out.append(model.encode_text(tokens, normalize=True).float().cpu())
    if not out:
        raise ValueError("encode_texts got no texts")
    return torch.cat(out)


def retrieval_accuracy(model, preprocess, tokenizer, images, texts, k=(1, 5)) -> dict:
    """Image -> text retrieval over the whole given set: ``{"top1", "top5", ..., "n", "n_texts", "chance_top1"}``.

    ``texts[i]`` describes ``images[i]``. Candidates are the *distinct* texts, so an image whose description
    is shared by other images is right when that description ranks first (``k`` is capped at their number).
    """
    texts = list(texts)
    if len(images) != len(texts) or not texts:
        raise ValueError(f"need as many texts as images (got {len(images)} images, {len(texts)} texts), at least 1")
    unique = list(dict.fromkeys(texts))
    index = {t: i for i, t in enumerate(unique)}
    target = torch.tensor([index[t] for t in texts])
    sims = encode_images(model, preprocess, images) @ encode_texts(model, tokenizer, unique).T
    # rank of the right text = number of other texts scoring at least as high (a tie counts as a miss, so a
    # model that maps everything to one point scores 0, not 1)
    right = sims.gather(1, target[:, None])
    rank = (sims >= right).sum(1) - 1
    result: dict[str, Any] = {f"top{kk}": float((rank < kk).float().mean()) for kk in k}
    result.update(n=len(texts), n_texts=len(unique), chance_top1=1.0 / len(unique))
    return result
