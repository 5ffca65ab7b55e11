"""Preference prompts: the (image, instruction) pairs M3PO samples candidates for, and image references.

Shapes world: one instruction per preference-split scene, the family drawn with ``generation.family_weights``;
existence questions are half "Yes" (a present shape) and half "No" about an absent co-occurrence mate of a present
shape (any absent shape when there is none), which is where the base model hallucinates. The tail of the
preference split (``validation_scenes``) is kept out of the prompts: it is the held-out set that later stages
tune on (never the evaluation split).

Hub presets: prompts come from a JSON-lines file of ``{"image": path, "instruction": text}``; an optional
``"history": [[question, answer], ...]`` makes the instruction the follow-up of a dialogue (:mod:`m3po_utils.dialogue`).

Images are referenced by string so tables stay small and portable: ``scene:<scene_id>`` in the shapes world
(rendered on demand, deterministically) or a file path. :func:`load_image` resolves either.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from m3po_utils import dialogue
from m3po_utils import shapes as W
from m3po_utils.config import ConfigError, Preset


def family_weights(cfg: Preset) -> dict[str, float]:
    """``generation.family_weights`` as a dict in the order given; every name must be an instruction family."""
    weights = dict(cfg.generation.family_weights)
    unknown = [f for f in weights if f not in W.FAMILIES]
    if unknown:
        raise ConfigError(f"generation.family_weights names unknown families {unknown}; the shapes world's "
                          f"families are: {', '.join(W.FAMILIES)}")
    return weights


def n_validation(n_pref: int) -> int:
    """Scenes at the end of the preference split held out for tuning (100, or a third of a small split)."""
    return min(100, max(1, n_pref // 3))


def validation_scenes(pref: Sequence[W.Scene]) -> list[W.Scene]:
    return list(pref[len(pref) - n_validation(len(pref)):])


def scene_ref(scene: W.Scene) -> str:
    return f"scene:{scene.scene_id}"


def existence_shape(scene: W.Scene, wc, rng: np.random.Generator) -> str:
    """The shape a preference existence question asks about: half the time a present one (answer Yes) —
    one whose co-occurrence mate is present too when the scene has such a pair — and half the time an absent
    one (No): an absent mate of a present shape when the scene has one, the base model's typical
    hallucination. Balanced like POPE, so that training on these prompts teaches neither "No" nor "a mate is
    absent", only to look."""
    if rng.random() < 0.5:
        # a present shape whose mate is present too when there is one: "is it a mate of what I see?" must not
        # decide the answer, only the image may
        present = [o.shape for o in scene.objects]
        paired = [s for s in present if W.mates_of(s, wc) & set(present)]
        pool = paired or present
        return pool[rng.integers(len(pool))]
    absent = W.missing_mates(scene, wc) or [s for s in wc.shapes if not scene.has(s)]
    return absent[rng.integers(len(absent))]


def shapes_prompts(pref: Sequence[W.Scene], cfg: Preset) -> list[dict]:
    """Preference prompt rows for the shapes world (seeded by ``cfg.generation.seed``)."""
    wc = cfg.world
    usable = list(pref[: len(pref) - n_validation(len(pref))])
    n = cfg.generation.n_prompts
    if n > len(usable):
        raise ValueError(f"generation.n_prompts={n} exceeds the {len(usable)} preference scenes available "
                         f"(world.n_pref={len(pref)} minus {n_validation(len(pref))} validation scenes); lower "
                         "generation.n_prompts or raise world.n_pref")
    return _prompt_rows(usable[:n], wc, np.random.default_rng(cfg.generation.seed), "p", family_weights(cfg))


VALIDATION_PROMPTS_PER_SCENE = 2


def validation_prompt_rows(pref: Sequence[W.Scene], cfg: Preset,
                           per_scene: int = VALIDATION_PROMPTS_PER_SCENE) -> list[dict]:
    """Prompt rows for the preference split's *validation* scenes, drawn like the preference prompts (same
    family mix, same existence questions; ``per_scene`` per scene, ids ``v00000``…, their own random stream).
    Notebook 01 samples candidates for them and notebook 02 chooses the MAS weights on those candidates."""
    if per_scene < 1:
        raise ValueError(f"per_scene={per_scene!r} must be a positive integer")
    scenes = [s for s in validation_scenes(pref) for _ in range(per_scene)]
    return _prompt_rows(scenes, cfg.world, np.random.default_rng([cfg.generation.seed, 1]), "v", family_weights(cfg))


def _prompt_rows(scenes: Sequence[W.Scene], wc, rng: np.random.Generator, prefix: str,
                 weights: dict[str, float]) -> list[dict]:
    """One prompt per scene of ``scenes``, its family drawn with ``weights`` (normalised)."""
    families = list(weights)
    p = np.array([weights[f] for f in families], dtype=float)
    rows = []
    for i, scene in enumerate(scenes):
        family = families[rng.choice(len(families), p=p / p.sum())]
        if family == "existence":
            ins = W.existence_instruction(scene, existence_shape(scene, wc, rng), wc)
        else:
            ins = W.make_instruction(family, scene, wc, rng=rng)
        rows.append({"prompt_id": f"{prefix}{i:05d}", "image": scene_ref(scene), "scene_id": scene.scene_id,
                     "family": ins.family, "instruction": ins.text, "reference": ins.reference})
    return rows


def file_prompts(path: str | Path, n: int | None = None, check_images: bool = False) -> list[dict]:
    """Prompt rows from a JSON-lines file (hub presets); UTF-8, one ``{"image": path, "instruction": text}``
    object per line (optional ``id``, ``family``, ``reference``, and ``history``: earlier turns as ``[question,
    answer]`` pairs, which make the instruction a dialogue's follow-up). ``check_images``: every image must be a
    file."""
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"prompts file {str(path)!r} is a directory; set generation.prompts_file to a "
                                'JSON-lines file of {"image": path, "instruction": text}')
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {str(path)!r} does not exist; set generation.prompts_file to a "
                                'JSON-lines file of {"image": path, "instruction": text}')
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line_no = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line_no} is not UTF-8 ({exc.reason} at byte {exc.start}); save the prompts "
                         "file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    rows = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            image, instruction = item["image"], item["instruction"]
        except (json.JSONDecodeError, KeyError, TypeError, RecursionError) as exc:
            raise ValueError(f"{path}:{line_no} is not a JSON object with 'image' and 'instruction' "
                             f"({type(exc).__name__}: {str(exc)[:200]})") from None
        for key, value in (("image", image), ("instruction", instruction)):
            if not isinstance(value, str):
                raise ValueError(f"{path}:{line_no}: {key!r} is {json.dumps(value)}, not a string")
        if not instruction.strip():
            raise ValueError(f"{path}:{line_no} has an empty instruction")
        history = item.get("history") or []
        if not isinstance(history, list) or not all(
                isinstance(t, list) and len(t) == 2 and all(isinstance(x, str) for x in t) for t in history):
            raise ValueError(f"{path}:{line_no}: 'history' is {json.dumps(history)[:120]}, not a list of "
                             "[question, answer] pairs of strings")
        try:
            instruction = dialogue.encode([tuple(t) for t in history], instruction)
        except dialogue.DialogueError as exc:
            raise ValueError(f"{path}:{line_no}: {exc}") from None
        image_path = Path(image) if Path(image).is_absolute() else path.parent / image
        if check_images and not image_path.is_file():
            what = "is a directory" if image_path.is_dir() else "does not exist"
            raise FileNotFoundError(f"{path}:{line_no}: image {str(image_path)!r} {what}; give the path of an "
                                    "image file (relative paths are read from the prompts file's folder)")
        rows.append({"prompt_id": str(item.get("id", f"p{len(rows):05d}")), "image": str(image_path),
                     "scene_id": "", "family": str(item.get("family", "free")), "instruction": instruction,
                     "reference": str(item.get("reference", ""))})
    if not rows:
        raise ValueError(f"prompts file {path} holds no prompts")
    return rows[:n] if n else rows


def preference_prompts(cfg: Preset, splits: dict[str, list[W.Scene]] | None) -> list[dict]:
    if cfg.world_kind == "shapes":
        if splits is None:
            raise ValueError("the shapes world needs its splits; pass RunDir(run).scenes() (notebook 00 writes them)")
        return shapes_prompts(splits["pref"], cfg)
    return file_prompts(cfg.generation.prompts_file, cfg.generation.n_prompts)


class ImageResolver:
    """Turn image references into PIL images (shapes-world scenes are rendered once and cached)."""

    def __init__(self, cfg: Preset, splits: dict[str, list[W.Scene]] | None = None):
        self.cfg = cfg
        self.scenes = {s.scene_id: s for part in (splits or {}).values() for s in part}
        self._cache: dict[str, Image.Image] = {}

    def scene(self, ref: str) -> W.Scene:
        sid = ref.removeprefix("scene:")
        if sid not in self.scenes:
            raise KeyError(f"image reference {ref!r} names no scene of this run's world")
        return self.scenes[sid]

    def __call__(self, ref: str) -> Image.Image:
        if ref not in self._cache:
            self._cache[ref] = self._load(ref)
        return self._cache[ref]

    def _load(self, ref: str) -> Image.Image:
        if ref.startswith("scene:"):
            return W.render(self.scene(ref), self.cfg.world)
        path = Path(ref)
        if not path.is_file():
            raise FileNotFoundError(f"image {ref!r} does not exist; check the prompts file's image paths")
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except OSError as exc:
            raise ValueError(f"image {ref!r} cannot be read ({exc}); replace or remove it") from None
