"""The shapes world: procedural scenes with full ground truth, instructions, and an exact verifier.

A scene is a few coloured shapes on a ``grid x grid`` board (one shape per cell, no shape twice). Every
instruction family has a template, a reference answer and a deterministic verifier that scores any free-form
response against the scene. The judge, POPE, CHAIR and the instruction-following test all rest on it.

Scenes are sampled with a co-occurrence prior (``WorldConfig.partners``): when a *lead* shape is drawn, its
partner comes along with probability ``partner_prob``. A model trained on such scenes learns to expect the
partner, and so to hallucinate it: the failure POPE measures.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .config import WorldConfig
from .io import atomic_write_json

POSITION_NAMES_3 = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom",
                    "bottom right")
SPLITS = ("train", "pref", "eval")
SHAPE_NAMES = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "hexagon")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 185),
    "orange": (245, 130, 30),
}
BACKGROUND = (247, 247, 242)
_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: smooth edges, still deterministic
WORLD_FILE = "scenes.json"


# ----------------------------------------------------------------------------------------------- positions

def position_name(cell: int, grid: int) -> str:
    """Name of a row-major ``cell``: the 3x3 names (``"top left"`` ...) or ``"row R column C"`` (1-based)."""
    if not 0 <= cell < grid * grid:
        raise ValueError(f"cell={cell} is outside a {grid}x{grid} grid (0..{grid * grid - 1})")
    if grid == 3:
        return POSITION_NAMES_3[cell]
    r, c = divmod(cell, grid)
    return f"row {r + 1} column {c + 1}"


def position_phrase(cell: int, grid: int) -> str:
    """``"at the top left"`` on a 3x3 grid, ``"at row 1 column 2"`` on other grids."""
    name = position_name(cell, grid)
    return f"at the {name}" if grid == 3 else f"at {name}"


# ----------------------------------------------------------------------------------------------- scenes

@dataclass(frozen=True)
class Obj:
    """One shape of a scene."""

    shape: str
    color: str
    cell: int


@dataclass(frozen=True)
class Scene:
    """A scene: objects sorted by cell, distinct shapes and cells; ``style_seed`` drives render jitter only."""

    scene_id: str
    split: str
    objects: tuple[Obj, ...]
    style_seed: int

    def __post_init__(self) -> None:
        objs = tuple(sorted((o if isinstance(o, Obj) else Obj(**o) for o in self.objects), key=lambda o: o.cell))
        object.__setattr__(self, "objects", objs)
        shapes = [o.shape for o in objs]
        cells = [o.cell for o in objs]
        if len(set(shapes)) != len(shapes):
            raise ValueError(f"scene {self.scene_id!r} repeats a shape: {shapes}")
        if len(set(cells)) != len(cells):
            raise ValueError(f"scene {self.scene_id!r} puts two objects in one cell: {cells}")

    def shapes(self) -> set[str]:
        return {o.shape for o in self.objects}

    def has(self, shape: str) -> bool:
        return any(o.shape == shape for o in self.objects)

    def obj(self, shape: str) -> Obj | None:
        return next((o for o in self.objects if o.shape == shape), None)

    def signature(self) -> tuple:
        """Content only (no id, split or style): ``((cell, shape, color), ...)``."""
        return tuple((o.cell, o.shape, o.color) for o in self.objects)

    def to_dict(self) -> dict:
        return {"scene_id": self.scene_id, "split": self.split, "style_seed": self.style_seed,
                "objects": [asdict(o) for o in self.objects]}

    @staticmethod
    def from_dict(d: dict) -> Scene:
        return Scene(scene_id=str(d["scene_id"]), split=str(d["split"]), style_seed=int(d["style_seed"]),
                     objects=tuple(Obj(str(o["shape"]), str(o["color"]), int(o["cell"])) for o in d["objects"]))


# ----------------------------------------------------------------------------------------------- rendering

def color_rgb(name: str) -> tuple[int, int, int]:
    """Fixed RGB of a colour name; unknown names get a stable colour derived from the name's hash."""
    if name in PALETTE:
        return PALETTE[name]
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return (30 + digest[0] % 180, 30 + digest[1] % 180, 30 + digest[2] % 180)


def _regular(cx: float, cy: float, radii: Sequence[float], start_deg: float) -> list[tuple[float, float]]:
    n = len(radii)
    return [(cx + r * math.cos(math.radians(start_deg + 360.0 * i / n)),
             cy + r * math.sin(math.radians(start_deg + 360.0 * i / n))) for i, r in enumerate(radii)]


def _shape_polygon(shape: str, cx: float, cy: float, h: float) -> list[tuple[float, float]] | None:
    """Polygon of ``shape`` inside the box of half-size ``h`` around (cx, cy); None for the circle."""
    if shape == "circle":
        return None
    if shape == "square":
        s = 0.88 * h
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - h), (cx + h, cy + 0.8 * h), (cx - h, cy + 0.8 * h)]
    if shape == "star":
        return _regular(cx, cy, [h if i % 2 == 0 else 0.42 * h for i in range(10)], -90.0)
    if shape == "heart":
        pts = []
        for i in range(48):
            t = 2 * math.pi * i / 48
            x = 16 * math.sin(t) ** 3
            y = -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
            pts.append((cx + x * h / 16.5, cy + (y - 2.5) * h / 16.5))
        return pts
    if shape == "cross":
        w = h / 3
        return [(cx - w, cy - h), (cx + w, cy - h), (cx + w, cy - w), (cx + h, cy - w), (cx + h, cy + w),
                (cx + w, cy + w), (cx + w, cy + h), (cx - w, cy + h), (cx - w, cy + w), (cx - h, cy + w),
                (cx - h, cy - w), (cx - w, cy - w)]
    if shape == "diamond":
        return [(cx, cy - h), (cx + 0.7 * h, cy), (cx, cy + h), (cx - 0.7 * h, cy)]
    if shape == "hexagon":
        return _regular(cx, cy, [h] * 6, 0.0)
    raise ValueError(f"cannot draw shape {shape!r}; drawable shapes: {', '.join(SHAPE_NAMES)}")


def render(scene: Scene, cfg: WorldConfig) -> Image.Image:
    """Draw ``scene`` as an RGB ``image_size`` square; the same scene always gives the same pixels.

    Each object lies inside its own cell (cell = image_size // grid), its box 55-85% of the cell, with size and
    offset jittered by ``scene.style_seed``.
    """
    for o in scene.objects:
        if o.shape not in SHAPE_NAMES:
            raise ValueError(f"cannot draw shape {o.shape!r}; drawable shapes: {', '.join(SHAPE_NAMES)}")
        if not 0 <= o.cell < cfg.grid * cfg.grid:
            raise ValueError(f"scene {scene.scene_id!r}: cell {o.cell} is outside the {cfg.grid}x{cfg.grid} grid")
    k = _SUPERSAMPLE
    size = cfg.image_size
    cell = size // cfg.grid
    img = Image.new("RGB", (size * k, size * k), BACKGROUND)
    draw = ImageDraw.Draw(img)
    rng = np.random.default_rng(scene.style_seed)
    for o in scene.objects:
        box = float(rng.uniform(0.55, 0.85)) * cell
        slack = (cell - box) / 2
        dx, dy = (float(v) for v in rng.uniform(-slack, slack, size=2))
        r, c = divmod(o.cell, cfg.grid)
        cx, cy, h = ((c + 0.5) * cell + dx) * k, ((r + 0.5) * cell + dy) * k, box * k / 2
        fill = color_rgb(o.color)
        poly = _shape_polygon(o.shape, cx, cy, h)
        if poly is None:
            draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
        else:
            draw.polygon(poly, fill=fill)
    return img.resize((size, size), Image.Resampling.BOX)


def image_key(img: Image.Image) -> str:
    """sha256 of the image size and its RGB pixel bytes (identifies a rendered scene)."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    h = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


class SceneIndex:
    """Map rendered images back to their scenes (a judge receives pixels and needs the ground truth)."""

    def __init__(self, scenes: Iterable[Scene], cfg: WorldConfig):
        self.cfg = cfg
        self._by_key: dict[str, Scene] = {}
        for scene in scenes:
            self.add(scene)

    def add(self, scene: Scene) -> str:
        key = image_key(render(scene, self.cfg))
        self._by_key.setdefault(key, scene)
        return key

    def lookup(self, img: Image.Image) -> Scene | None:
        """The scene whose rendering is exactly ``img``, or None."""
        return self._by_key.get(image_key(img))

    def __len__(self) -> int:
        return len(self._by_key)


# ----------------------------------------------------------------------------------------------- sampling

def sample_scene(rng: np.random.Generator, cfg: WorldConfig, scene_id: str, split: str,
                 n_objects: int | None = None) -> Scene:
    """Sample a scene: n ~ U[min_objects, max_objects] (or ``n_objects``), distinct shapes, random cells/colours.

    Shapes are drawn uniformly from those not yet used. When a drawn shape is a lead of ``cfg.partners`` and its
    partner is absent, the partner joins with probability ``partner_prob`` (it counts towards n). If the partner
    was due but there is no room left, the lead is drawn again, so that a lead seldom stands alone for lack of
    room and P(partner | lead) stays close to ``partner_prob``.
    """
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1)) if n_objects is None else int(n_objects)
    if not 1 <= n <= min(cfg.grid * cfg.grid, len(cfg.shapes)):
        raise ValueError(f"n_objects={n} does not fit a {cfg.grid}x{cfg.grid} grid with {len(cfg.shapes)} shapes")
    partner_of: dict[str, list[str]] = {}
    for lead, partner in cfg.partners:
        partner_of.setdefault(lead, []).append(partner)
    chosen: list[str] = []
    redraws = 0
    while len(chosen) < n:
        remaining = [s for s in cfg.shapes if s not in chosen]
        shape = remaining[int(rng.integers(len(remaining)))]
        due = [p for p in partner_of.get(shape, ()) if p not in chosen and rng.random() < cfg.partner_prob]
        room = n - len(chosen) - 1
        if len(due) > room:
            redraws += 1
            if redraws < 32:
                continue
            due = due[:room]
        chosen.append(shape)
        chosen.extend(due)
    cells = rng.choice(cfg.grid * cfg.grid, size=n, replace=False)
    colors = rng.integers(len(cfg.colors), size=n)
    objects = tuple(Obj(s, cfg.colors[int(c)], int(cell)) for s, c, cell in zip(chosen, colors, cells, strict=True))
    return Scene(scene_id=scene_id, split=split, objects=objects, style_seed=int(rng.integers(2**31 - 1)))


def _relayout(rng: np.random.Generator, cfg: WorldConfig, scene: Scene) -> Scene:
    """The same shapes in new cells and colours (keeps the shape co-occurrence distribution intact)."""
    cells = rng.choice(cfg.grid * cfg.grid, size=len(scene.objects), replace=False)
    colors = rng.integers(len(cfg.colors), size=len(scene.objects))
    objects = tuple(Obj(o.shape, cfg.colors[int(c)], int(cell))
                    for o, c, cell in zip(scene.objects, colors, cells, strict=True))
    return Scene(scene.scene_id, scene.split, objects, scene.style_seed)


def _sample_avoiding(rng: np.random.Generator, cfg: WorldConfig, scene_id: str, split: str,
                     blocked: Callable[[tuple], bool]) -> Scene:
    """A scene whose signature is not blocked. A collision first re-draws the layout (cells and colours) of
    the same shapes, so that which shapes appear together — the co-occurrence prior — is not skewed by the
    splits taking the common combinations; only when the layouts of that shape set run out is a new set drawn."""
    scene = sample_scene(rng, cfg, scene_id, split)
    tries = 0
    while blocked(scene.signature()):
        tries += 1
        if tries > 5000:
            raise ValueError(f"cannot find a new scene for {scene_id}: the world is too small for disjoint splits; "
                             "raise world.grid / shapes / colors / max_objects or lower n_pref / n_eval")
        scene = _relayout(rng, cfg, scene) if tries % 50 else sample_scene(rng, cfg, scene_id, split)
    return scene


def make_splits(cfg: WorldConfig) -> dict[str, list[Scene]]:
    """Train / pref / eval scenes (``cfg.n_*`` each, seeded by ``cfg.seed``); no signature is shared by two splits.

    Eval is drawn first, then pref, then train; a collision is re-drawn. Eval and pref never repeat a signature;
    train may repeat its own (more data of the same distribution).
    """
    sizes = {"train": cfg.n_train, "pref": cfg.n_pref, "eval": cfg.n_eval}
    taken: set[tuple] = set()
    out: dict[str, list[Scene]] = {}
    for idx, split in ((2, "eval"), (1, "pref"), (0, "train")):
        rng = np.random.default_rng([cfg.seed, idx])
        own: set[tuple] = set()
        unique = split != "train"
        scenes = []
        for i in range(sizes[split]):
            scene = _sample_avoiding(rng, cfg, f"{split}-{i:06d}", split,
                                     lambda sig: sig in taken or (unique and sig in own))  # noqa: B023
            own.add(scene.signature())
            scenes.append(scene)
        taken |= own
        out[split] = scenes
    return {s: out[s] for s in SPLITS}


def save_world(splits: dict[str, list[Scene]], folder: str | Path) -> Path:
    """Write all splits to ``folder/scenes.json`` atomically; returns the path."""
    data = {"format": "m3po-shapes-world", "version": 1,
            "splits": {name: [s.to_dict() for s in scenes] for name, scenes in splits.items()}}
    return atomic_write_json(Path(folder) / WORLD_FILE, data)


def load_world(folder: str | Path) -> dict[str, list[Scene]]:
    """Read ``folder/scenes.json``; FileNotFoundError / ValueError name the path when missing or corrupt."""
    path = Path(folder) / WORLD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the world first (make_splits + save_world, notebook 00)")
    try:
        data = json.loads(path.read_text())
        return {name: [Scene.from_dict(d) for d in scenes] for name, scenes in data["splits"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path} is not a valid shapes-world file ({type(exc).__name__}: {exc}); "
                         "delete it and rebuild the world") from None


def shape_frequency(scenes: Iterable[Scene], shapes: Sequence[str]) -> dict[str, int]:
    """Number of scenes that contain each shape."""
    freq = dict.fromkeys(shapes, 0)
    for scene in scenes:
        for o in scene.objects:
            if o.shape in freq:
                freq[o.shape] += 1
    return freq


def cooccurrence(scenes: Iterable[Scene], shapes: Sequence[str]) -> np.ndarray:
    """M[i, j] = P(shape j present | shape i present); diagonal 1, a zero row for a shape never seen."""
    index = {s: i for i, s in enumerate(shapes)}
    joint = np.zeros((len(shapes), len(shapes)), dtype=np.float64)
    for scene in scenes:
        present = [index[o.shape] for o in scene.objects if o.shape in index]
        for i in present:
            joint[i, present] += 1
    counts = np.diag(joint).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.where(counts[:, None] > 0, joint / np.maximum(counts[:, None], 1), 0.0)
    return m


# ----------------------------------------------------------------------------------------------- instructions

FAMILIES = ("describe", "existence", "color", "count", "position", "fmt_one_word", "fmt_list", "fmt_start",
            "fmt_max_words", "yn_position", "yn_color", "yn_count")
# Yes/no questions about an attribute (MME-style perception: half true, half false); answers "Yes" / "No".
YES_NO_FAMILIES = ("existence", "yn_position", "yn_color", "yn_count")
TEMPLATES = {
    "describe": "Describe the image.",
    "existence": "Is there a {shape} in the image?",
    "color": "What color is the {shape}?",
    "count": "How many shapes are in the image?",
    "position": "Where is the {shape}?",
    "fmt_one_word": "Answer in one word: what color is the {shape}?",
    "fmt_list": "List the shapes in the image, separated by commas.",
    "fmt_start": 'Describe the image. Start your answer with "In this picture".',
    "fmt_max_words": "Name the shapes in the image in at most {n} words.",
    # yn_position is listed before yn_color: "Is the circle at the top?" must not parse as a colour question
    "yn_position": "Is the {shape} at the {position}?",
    "yn_color": "Is the {shape} {color}?",
    "yn_count": "Are there {n} shapes in the image?",
}
SHAPE_FAMILIES = ("existence", "color", "position", "fmt_one_word", "yn_position", "yn_color")
START_PHRASE = "In this picture"


class UnknownInstruction(ValueError):
    """An instruction that matches no template, or names an unknown shape."""


@dataclass(frozen=True)
class Instruction:
    """An instruction with its reference answer; ``params`` are sorted (key, value) pairs."""

    family: str
    text: str
    reference: str
    params: tuple

    @property
    def args(self) -> dict:
        return dict(self.params)


def describe(scene: Scene, cfg: WorldConfig) -> str:
    """Canonical description: ``"a red circle at the top left, an orange square at the center."``"""
    parts = [f"{_article(o.color)} {o.color} {o.shape} {position_phrase(o.cell, cfg.grid)}" for o in scene.objects]
    return ", ".join(parts) + "."


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _instruction_text(family: str, shape: str | None = None, n: int | None = None, color: str | None = None,
                      position: str | None = None) -> str:
    text = TEMPLATES[family]
    if family == "existence":
        text = text.replace("a {shape}", f"{_article(shape or '')} {{shape}}")
    return text.format(shape=shape, n=n, color=color, position=position)


def _position_names(cfg: WorldConfig) -> list[str]:
    return [position_name(c, cfg.grid) for c in range(cfg.grid * cfg.grid)]


def _yes_no_params(family: str, scene: Scene, obj: Obj, cfg: WorldConfig, rng: np.random.Generator | None,
                   n: int | None, color: str | None, position: str | None) -> dict[str, Any]:
    """The asked value of a yes/no attribute question: true or (50 % with ``rng``) a wrong one."""
    flip = rng is not None and rng.random() < 0.5
    if family == "yn_count":
        true_n = len(scene.objects)
        if n is None:
            others = [k for k in range(1, cfg.max_objects + 1) if k != true_n]
            n = others[int(rng.integers(len(others)))] if flip and others else true_n
        return {"n": int(n)}
    if family == "yn_color":
        if color is None:
            others = [c for c in cfg.colors if c != obj.color]
            color = others[int(rng.integers(len(others)))] if flip else obj.color
        if color not in cfg.colors:
            raise UnknownInstruction(f"unknown color {color!r}; known colors: {', '.join(cfg.colors)}")
        return {"color": color}
    names = _position_names(cfg)
    if position is None:
        true_p = position_name(obj.cell, cfg.grid)
        others = [p for p in names if p != true_p]
        position = others[int(rng.integers(len(others)))] if flip else true_p
    if position not in names:
        raise UnknownInstruction(f"unknown position {position!r}; known positions: {', '.join(names)}")
    return {"position": position}


def _yes_no_truth(family: str, scene: Scene, params: dict[str, Any], cfg: WorldConfig) -> bool:
    if family == "existence":
        return scene.has(params["shape"])
    if family == "yn_count":
        return len(scene.objects) == params["n"]
    obj = scene.obj(params["shape"])
    if obj is None:
        return False
    if family == "yn_color":
        return obj.color == params["color"]
    return position_name(obj.cell, cfg.grid) == params["position"]


def make_instruction(family: str, scene: Scene, cfg: WorldConfig, rng: np.random.Generator | None = None,
                     shape: str | None = None, n: int | None = None, color: str | None = None,
                     position: str | None = None) -> Instruction:
    """Build one instruction of ``family`` for ``scene`` with its reference answer.

    Unset ``shape`` / ``n`` are drawn with ``rng`` (existence: present or absent shape 50/50; other shape
    families: a present shape; n = #objects + 0..2). Without ``rng`` the defaults are the first object and
    n = #objects + 1. A colour / position question about an absent shape has the reference
    ``"There is no {shape}."`` (one word ``"None"`` for fmt_one_word).
    """
    if family not in FAMILIES:
        raise UnknownInstruction(f"unknown instruction family {family!r}; families: {', '.join(FAMILIES)}")
    shapes = [o.shape for o in scene.objects]
    params: dict[str, Any] = {}
    if family in SHAPE_FAMILIES:
        if shape is None:
            if rng is None:
                shape = shapes[0]
            else:
                absent = [s for s in cfg.shapes if s not in shapes]
                if family == "existence" and absent and rng.random() < 0.5:
                    shape = absent[int(rng.integers(len(absent)))]
                else:
                    shape = shapes[int(rng.integers(len(shapes)))]
        if shape not in cfg.shapes:
            raise UnknownInstruction(f"unknown shape {shape!r}; known shapes: {', '.join(cfg.shapes)}")
        params["shape"] = shape
    if family == "fmt_max_words":
        if n is None:
            n = len(shapes) + (int(rng.integers(0, 3)) if rng is not None else 1)
        if int(n) < 1:
            raise ValueError(f"n={n} must be a positive word limit")
        params["n"] = n = int(n)
    obj = scene.obj(shape) if shape is not None else None
    if family in ("yn_position", "yn_color", "yn_count"):
        if family != "yn_count" and obj is None and (color is None and position is None):
            raise ValueError(f"{family} asks about a shape in the scene; {shape!r} is not in {scene.scene_id}")
        params |= _yes_no_params(family, scene, obj, cfg, rng, n, color, position)
        ref = "Yes" if _yes_no_truth(family, scene, params, cfg) else "No"
        return Instruction(family=family, text=_instruction_text(family, shape, params.get("n"),
                                                                 params.get("color"), params.get("position")),
                           reference=ref, params=tuple(sorted(params.items())))
    absent_ref = f"There is no {shape}."
    if family == "describe":
        ref = describe(scene, cfg)
    elif family == "existence":
        ref = "Yes" if obj is not None else "No"
    elif family == "color":
        ref = obj.color if obj is not None else absent_ref
    elif family == "count":
        ref = str(len(shapes))
    elif family == "position":
        ref = position_phrase(obj.cell, cfg.grid) if obj is not None else absent_ref
    elif family == "fmt_one_word":
        ref = obj.color if obj is not None else "None"
    elif family == "fmt_list":
        ref = ", ".join(shapes)
    elif family == "fmt_start":
        ref = f"{START_PHRASE}, {describe(scene, cfg)}"
    else:  # fmt_max_words
        ref = " ".join(shapes[:n])
    return Instruction(family=family, text=_instruction_text(family, shape, n), reference=ref,
                       params=tuple(sorted(params.items())))


def existence_instruction(scene: Scene, shape: str, cfg: WorldConfig) -> Instruction:
    """``"Is there a {shape} in the image?"`` with reference ``"Yes"`` / ``"No"``."""
    return make_instruction("existence", scene, cfg, shape=shape)


def instructions_for(scene: Scene, cfg: WorldConfig, rng: np.random.Generator,
                     families: Sequence[str] = FAMILIES) -> list[Instruction]:
    """One instruction per family, parameters drawn with ``rng``."""
    return [make_instruction(f, scene, cfg, rng=rng) for f in families]


def _normalise(text: str) -> str:
    text = text.replace("\u201c", '"').replace("\u201d", '"').replace("\u2019", "'")
    return re.sub(r"\s+", " ", text.strip()).lower()


def _template_regex(family: str) -> re.Pattern:
    body = TEMPLATES[family].lower().rstrip(".?")
    pattern = re.escape(body)
    pattern = pattern.replace(re.escape("a {shape}"), r"an?\ \{shape\}")
    pattern = pattern.replace(re.escape("{shape}"), r"(?P<shape>[a-z][a-z\- ]*?)")
    pattern = pattern.replace(re.escape("{n}"), r"(?P<n>\d+)")
    pattern = pattern.replace(re.escape("{color}"), r"(?P<color>[a-z]+)")
    pattern = pattern.replace(re.escape("{position}"), r"(?P<position>[a-z][a-z0-9 ]*?)")
    return re.compile(pattern + r"\s*[.?!]?")


_TEMPLATE_RES = {f: _template_regex(f) for f in FAMILIES}


def parse_instruction(text: str, cfg: WorldConfig) -> tuple[str, dict]:
    """Inverse of the templates (case and surrounding space ignored): ``(family, {"shape": ..., "n": ...})``."""
    norm = _normalise(str(text))
    for family, regex in _TEMPLATE_RES.items():
        m = regex.fullmatch(norm)
        if not m:
            continue
        params: dict[str, Any] = {}
        if "shape" in regex.groupindex:
            shape = m.group("shape").strip()
            if shape not in cfg.shapes:
                raise UnknownInstruction(f"unknown shape {shape!r} in instruction {text!r}; "
                                         f"known shapes: {', '.join(cfg.shapes)}")
            params["shape"] = shape
        if "n" in regex.groupindex:
            params["n"] = int(m.group("n"))
        if "color" in regex.groupindex:
            if m.group("color") not in cfg.colors:
                raise UnknownInstruction(f"unknown color {m.group('color')!r} in instruction {text!r}; "
                                         f"known colors: {', '.join(cfg.colors)}")
            params["color"] = m.group("color")
        if "position" in regex.groupindex:
            names = _position_names(cfg)
            if m.group("position").strip() not in names:
                raise UnknownInstruction(f"unknown position {m.group('position')!r} in instruction {text!r}; "
                                         f"known positions: {', '.join(names)}")
            params["position"] = m.group("position").strip()
        return family, params
    supported = "; ".join(repr(t) for t in TEMPLATES.values())
    raise UnknownInstruction(f"unknown instruction {text!r}; supported templates: {supported}")


# ----------------------------------------------------------------------------------------------- text analysis

@dataclass(frozen=True)
class Mention:
    """A (non-negated) shape mentioned in a text, with the colour / position attached to it, if any."""

    shape: str
    color: str | None
    position: str | None


_NEGATIONS = frozenset({"no", "not", "without", "nor", "neither", "never"})
_FILLERS = frozenset({"a", "an", "the", "any", "single", "other", "small", "big", "large", "little"})
_SENTENCE_END = frozenset({".", "!", "?", ";"})
_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_POSITION_ALIASES_3 = {"centre": "center", "middle": "center", "upper left": "top left",
                       "upper right": "top right", "lower left": "bottom left", "lower right": "bottom right"}


def _tokens(text: str) -> list[str]:
    """Lowercased words and punctuation marks; ``n't`` becomes ``not`` and hyphens split words."""
    text = str(text or "").lower().replace("\u2019", "'").replace("n't", " not").replace("-", " ")
    return re.findall(r"[a-z0-9]+|[.,;:!?]", text)


def _phrase_table(cfg: WorldConfig) -> list[tuple[tuple[str, ...], str, str]]:
    """(tokens, kind, canonical) for shapes (incl. plurals), colours and positions, longest first."""
    table: list[tuple[tuple[str, ...], str, str]] = []
    for s in cfg.shapes:
        toks = tuple(_tokens(s))
        for suffix in ("", "s", "es"):
            table.append((toks[:-1] + (toks[-1] + suffix,), "shape", s))
    for c in cfg.colors:
        table.append((tuple(_tokens(c)), "color", c))
    names = {position_name(i, cfg.grid): position_name(i, cfg.grid) for i in range(cfg.grid * cfg.grid)}
    if cfg.grid == 3:
        names.update(_POSITION_ALIASES_3)
    for alias, canonical in names.items():
        table.append((tuple(_tokens(alias)), "position", canonical))
    seen: set[tuple[str, ...]] = set()
    unique = []
    for entry in table:  # first kind wins for a phrase that is both (e.g. a colour named like a shape)
        if entry[0] not in seen:
            seen.add(entry[0])
            unique.append(entry)
    return sorted(unique, key=lambda e: -len(e[0]))


_TABLES: dict[WorldConfig, list] = {}


def _scan(text: str, cfg: WorldConfig) -> tuple[list[str], list[tuple[int, int, str, str]]]:
    """Tokens and the matched items ``(start, end, kind, canonical)`` in order, longest phrase first."""
    table = _TABLES.get(cfg)
    if table is None:
        table = _TABLES[cfg] = _phrase_table(cfg)
    toks = _tokens(text)
    items = []
    i = 0
    while i < len(toks):
        for phrase, kind, canonical in table:
            if tuple(toks[i:i + len(phrase)]) == phrase:
                items.append((i, i + len(phrase), kind, canonical))
                i += len(phrase)
                break
        else:
            i += 1
    return toks, items


def mentioned_objects(text: str, cfg: WorldConfig) -> list[Mention]:
    """Shapes a text asserts, in order, with their colour and position; negated mentions are dropped.

    A shape word (singular or plural) is a mention. Its colour is the nearest colour word among the 2 words
    before it (not across another shape); its position is the first position name after it, before the next
    shape word (longest names first: "top left" before "top"). "no star", "not a star", "there isn't any
    star", "without a star" and "no circles or stars" are negated.
    """
    toks, items = _scan(text, cfg)
    shape_items = [it for it in items if it[2] == "shape"]
    kind_at = {it[0]: it for it in items}
    negated_end: dict[int, bool] = {}
    out: list[Mention] = []
    for k, (start, end, _, shape) in enumerate(shape_items):
        prev_end = shape_items[k - 1][1] if k else 0
        next_start = shape_items[k + 1][0] if k + 1 < len(shape_items) else len(toks)
        # negation: skip colour words and fillers backwards, then look at the word reached
        j = start - 1
        while j >= 0 and (toks[j] in _FILLERS or (j in kind_at and kind_at[j][2] == "color")):
            j -= 1
        negated = j >= 0 and (toks[j] in _NEGATIONS or (toks[j] == "or" and negated_end.get(j, False)))
        negated_end[end] = negated
        if negated:
            continue
        color = None
        for j in range(start - 1, max(start - 3, prev_end - 1), -1):
            if toks[j] in _SENTENCE_END or toks[j] == ",":
                break
            if j in kind_at and kind_at[j][2] == "color":
                color = kind_at[j][3]
                break
        position = next((it[3] for it in items if it[2] == "position" and end <= it[0] < next_start), None)
        out.append(Mention(shape, color, position))
    return out


def object_mentions(text: str, cfg: WorldConfig) -> list[str]:
    """Distinct shapes a text asserts (non-negated), in order of first mention (for CHAIR)."""
    return list(dict.fromkeys(m.shape for m in mentioned_objects(text, cfg)))


def yes_no(text: str) -> str | None:
    """``"no"`` if the first sentence has the word no/not (n't counts), else ``"yes"`` if it has yes, else None."""
    for sentence in re.split(r"[.!?\n]+", str(text or "")):
        words = re.findall(r"[a-z]+", sentence.lower().replace("\u2019", "'").replace("n't", " not"))
        if not words:
            continue
        if "no" in words or "not" in words:
            return "no"
        if "yes" in words:
            return "yes"
        return None
    return None


def _colors_in(text: str, cfg: WorldConfig) -> list[str]:
    return list(dict.fromkeys(it[3] for it in _scan(text, cfg)[1] if it[2] == "color"))


def _positions_in(text: str, cfg: WorldConfig) -> list[str]:
    return list(dict.fromkeys(it[3] for it in _scan(text, cfg)[1] if it[2] == "position"))


def _numbers_in(text: str) -> list[int]:
    out = []
    for tok in _tokens(text):
        if tok.isdigit():
            out.append(int(tok))
        elif tok in _NUMBER_WORDS:
            out.append(_NUMBER_WORDS[tok])
    return list(dict.fromkeys(out))


def _denies(text: str) -> bool:
    return any(t in {"no", "not", "none", "nothing", "neither"} for t in _tokens(text))


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9]+(?:['\u2019-][A-Za-z0-9]+)*", str(text or ""))


# ----------------------------------------------------------------------------------------------- verifier

@dataclass(frozen=True)
class Verdict:
    """A verifier's score in [0, 1] with what is wrong, one line for a person and tuples for code."""

    score: float
    correct: bool
    family: str
    explanation: str
    hallucinated: tuple[str, ...] = ()
    missed: tuple[str, ...] = ()
    wrong_attributes: tuple[str, ...] = ()
    format_violations: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)


def _label(color: str | None, shape: str) -> str:
    return f"{color} {shape}" if color else shape


def _harmonic(p: float, r: float) -> float:
    return 0.0 if p <= 0 or r <= 0 else 2 * p * r / (p + r)


@dataclass
class _Content:
    score: float
    hallucinated: tuple[str, ...] = ()
    missed: tuple[str, ...] = ()
    wrong: tuple[str, ...] = ()
    note: str = ""


def _describe_content(scene: Scene, response: str, cfg: WorldConfig) -> _Content:
    mentions = mentioned_objects(response, cfg)
    truth = {o.shape: o for o in scene.objects}
    best = dict.fromkeys(truth, 0)  # credit in thirds
    total = 0
    hallucinated: list[str] = []
    wrong: list[str] = []
    for m in mentions:
        obj = truth.get(m.shape)
        if obj is None:
            hallucinated.append(_label(m.color, m.shape))
            continue
        pos = position_name(obj.cell, cfg.grid)
        credit = 1 + (m.color == obj.color) + (m.position == pos)
        total += credit
        best[m.shape] = max(best[m.shape], credit)
        if m.color != obj.color:
            wrong.append(f"{m.shape}: color {m.color or 'not given'}, truth {obj.color}")
        if m.position != pos:
            wrong.append(f"{m.shape}: position {m.position or 'not given'}, truth {pos}")
    precision = total / (3 * len(mentions)) if mentions else 0.0
    recall = sum(best.values()) / (3 * len(truth))
    score = _harmonic(precision, recall)
    missed = tuple(_label(o.color, o.shape) for o in scene.objects if best[o.shape] == 0)
    hall = tuple(dict.fromkeys(hallucinated))
    wrong_t = tuple(dict.fromkeys(wrong))
    if score == 1.0:
        note = f"all {len(truth)} objects described correctly"
    elif not mentions:
        note = "no shape mentioned"
    else:
        bits = [f"precision {precision:.2f}, recall {recall:.2f}"]
        if hall:
            bits.append("hallucinated " + ", ".join(hall))
        if missed:
            bits.append("missed " + ", ".join(missed))
        if wrong_t:
            bits.append("wrong " + "; ".join(wrong_t))
        note = "; ".join(bits)
    return _Content(score, hall, missed, wrong_t, note)


def _single_attribute(scene: Scene, shape: str, response: str, cfg: WorldConfig, attr: str) -> _Content:
    """Colour or position question: exactly one candidate, and the right one (or a denial if absent)."""
    found = _colors_in(response, cfg) if attr == "color" else _positions_in(response, cfg)
    obj = scene.obj(shape)
    if obj is None:
        if found:
            return _Content(0.0, hallucinated=(shape,),
                            note=f"there is no {shape}, but the answer gives {attr} {', '.join(found)}")
        if _denies(response):
            return _Content(1.0, note=f"correctly says there is no {shape}")
        return _Content(0.0, hallucinated=(shape,), note=f"there is no {shape}; the answer does not say so")
    truth = obj.color if attr == "color" else position_name(obj.cell, cfg.grid)
    if not found:
        return _Content(0.0, wrong=(f"{shape}: {attr} not given, truth {truth}",),
                        note=f"no {attr} in the answer; truth {truth}")
    if len(found) > 1:
        return _Content(0.0, wrong=(f"{shape}: {attr} ambiguous ({', '.join(found)}), truth {truth}",),
                        note=f"several {attr}s in the answer ({', '.join(found)}); truth {truth}")
    if found[0] != truth:
        return _Content(0.0, wrong=(f"{shape}: {attr} {found[0]}, truth {truth}",),
                        note=f"wrong {attr}: {found[0]}, truth {truth}")
    return _Content(1.0, note=f"{attr} {truth} is right")


def _shape_set_content(scene: Scene, response: str, cfg: WorldConfig) -> _Content:
    named = set(object_mentions(response, cfg))
    truth = scene.shapes()
    hit = len(named & truth)
    score = 2 * hit / (len(named) + len(truth)) if named else 0.0
    hall = tuple(s for s in cfg.shapes if s in named - truth)
    missed = tuple(o.shape for o in scene.objects if o.shape not in named)
    bits = [f"F1 {score:.2f} of named shapes"]
    if hall:
        bits.append("hallucinated " + ", ".join(hall))
    if missed:
        bits.append("missed " + ", ".join(missed))
    return _Content(score, hall, missed, note="; ".join(bits) if score < 1 else "all shapes named")


def _shape_word(item: str, cfg: WorldConfig) -> bool:
    toks = _tokens(item)
    if toks[:1] == ["and"]:
        toks = toks[1:]
    _, items = _scan(" ".join(toks), cfg)
    return len(items) == 1 and items[0][2] == "shape" and items[0][0] == 0 and items[0][1] == len(toks)


def _format_violations(family: str, response: str, params: dict, cfg: WorldConfig) -> list[str]:
    if family == "fmt_one_word":
        n = len(_words(response))
        return [] if n == 1 else [f"expected exactly one word, got {n}"]
    if family == "fmt_list":
        body = response.strip().rstrip(".!").strip()
        if not body:
            return ["empty list"]
        bad = [it.strip() for it in body.split(",") if not _shape_word(it, cfg)]
        return [f"list item {it!r} is not a shape name" for it in bad]
    if family == "fmt_start":
        return [] if response.lstrip().startswith(START_PHRASE) else [f'does not start with "{START_PHRASE}"']
    if family == "fmt_max_words":
        n = len(_words(response))
        return [] if n <= params["n"] else [f"{n} words, limit {params['n']}"]
    return []


def verify(scene: Scene, instruction_text: str, response: str, cfg: WorldConfig) -> Verdict:
    """Score ``response`` to ``instruction_text`` about ``scene`` against the ground truth (see module docs).

    Raises UnknownInstruction for a text that matches no template.
    """
    family, params = parse_instruction(instruction_text, cfg)
    response = "" if response is None else str(response)
    shape = params.get("shape")

    if family in ("yn_position", "yn_color", "yn_count"):
        truth = "yes" if _yes_no_truth(family, scene, params, cfg) else "no"
        said = yes_no(response)
        if said is None:
            return Verdict(0.0, False, family, f"no yes/no answer (truth: {truth})",
                           format_violations=("no yes/no answer",))
        ok = said == truth
        asked = {"yn_count": f"{params.get('n')} shapes", "yn_color": f"{shape} is {params.get('color')}",
                 "yn_position": f"{shape} at the {params.get('position')}"}[family]
        expl = f"answered {said} to '{asked}', truth {truth}"
        return Verdict(float(ok), ok, family, expl, wrong_attributes=() if ok else (f"{asked}: {said}",))

    if family == "existence":
        truth = "yes" if scene.has(shape) else "no"
        said = yes_no(response)
        if said is None:
            return Verdict(0.0, False, family, f"no yes/no answer (truth: {truth})",
                           format_violations=("no yes/no answer",))
        ok = said == truth
        hall = (shape,) if said == "yes" and truth == "no" else ()
        missed = (shape,) if said == "no" and truth == "yes" else ()
        expl = (f"answered {said}, truth {truth}" if ok else
                f"answered {said}, but {'there is no' if truth == 'no' else 'there is a'} {shape}")
        return Verdict(float(ok), ok, family, expl, hallucinated=hall, missed=missed)

    if family == "count":
        truth_n = len(scene.objects)
        found = _numbers_in(response)
        if len(found) == 1 and found[0] == truth_n:
            return Verdict(1.0, True, family, f"count {truth_n} is right")
        given = ", ".join(map(str, found)) or "not given"
        if not found:
            expl = f"no number in the answer; truth {truth_n}"
        elif len(found) > 1:
            expl = f"several numbers in the answer ({given}); truth {truth_n}"
        else:
            expl = f"wrong count: {given}, truth {truth_n}"
        return Verdict(0.0, False, family, expl, wrong_attributes=(f"count: {given}, truth {truth_n}",))

    if family in ("describe", "fmt_start"):
        content = _describe_content(scene, response, cfg)
    elif family in ("color", "fmt_one_word"):
        content = _single_attribute(scene, shape, response, cfg, "color")
    elif family == "position":
        content = _single_attribute(scene, shape, response, cfg, "position")
    else:  # fmt_list, fmt_max_words
        content = _shape_set_content(scene, response, cfg)

    if not family.startswith("fmt_"):
        ok = content.score == 1.0
        return Verdict(content.score, ok, family, content.note, content.hallucinated, content.missed, content.wrong)

    violations = tuple(_format_violations(family, response, params, cfg))
    fmt_ok = not violations
    score = 0.5 * fmt_ok + 0.5 * content.score
    ok = fmt_ok and content.score == 1.0
    expl = f"format {'ok' if fmt_ok else 'violated: ' + '; '.join(violations)}; content: {content.note}"
    return Verdict(score, ok, family, expl, content.hallucinated, content.missed, content.wrong, violations)
