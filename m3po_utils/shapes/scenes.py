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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from m3po_utils.config import WorldConfig
from m3po_utils.io import atomic_write_json

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


# A faint object (``WorldConfig.faint_prob`` of them) is drawn at 30-45 % of its cell and its colour is mixed
# this far towards the background.
FAINT_SIZE = (0.30, 0.45)


FAINT_MIX = 0.6


_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: smooth edges, still deterministic


WORLD_FILE = "scenes.json"


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


def _layout(scene: Scene, cfg: WorldConfig) -> list[tuple[bool, float, float, float]]:
    """Per object (in cell order): faint?, box size and centre offset in pixels — drawn from ``style_seed``."""
    cell = cfg.image_size // cfg.grid
    rng = np.random.default_rng(scene.style_seed)
    out = []
    for _ in scene.objects:
        faint = cfg.faint_prob > 0 and bool(rng.random() < cfg.faint_prob)   # no draw at 0: layouts unchanged
        box = float(rng.uniform(*(FAINT_SIZE if faint else (0.55, 0.85)))) * cell
        slack = (cell - box) / 2
        dx, dy = (float(v) for v in rng.uniform(-slack, slack, size=2))
        out.append((faint, box, dx, dy))
    return out


def faint_cells(scene: Scene, cfg: WorldConfig) -> set[int]:
    """The cells whose object :func:`render` draws faint."""
    return {o.cell for o, lay in zip(scene.objects, _layout(scene, cfg), strict=True) if lay[0]}


def render(scene: Scene, cfg: WorldConfig) -> Image.Image:
    """Draw ``scene`` as an RGB ``image_size`` square; the same scene always gives the same pixels.

    Each object lies inside its own cell (cell = image_size // grid), its box 55-85% of the cell, with size and
    offset jittered by ``scene.style_seed``; a ``cfg.faint_prob`` share of the objects is *faint* (small and
    washed out, see ``FAINT_SIZE`` / ``FAINT_MIX``): still in the ground truth, but hard to see.
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
    for o, (faint, box, dx, dy) in zip(scene.objects, _layout(scene, cfg), strict=True):
        r, c = divmod(o.cell, cfg.grid)
        cx, cy, h = ((c + 0.5) * cell + dx) * k, ((r + 0.5) * cell + dy) * k, box * k / 2
        fill = color_rgb(o.color)
        if faint:   # small and washed out towards the background: hard to see, so the prior fills in
            fill = tuple(round(FAINT_MIX * b + (1 - FAINT_MIX) * f) for f, b in zip(fill, BACKGROUND, strict=True))
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


def mates_of(shape: str, cfg: WorldConfig) -> set[str]:
    """The shapes that ``shape`` forms a ``cfg.partners`` pair with, on either side of the pair."""
    return {b for a, b in cfg.partners if a == shape} | {a for a, b in cfg.partners if b == shape}


def missing_mates(scene: Scene, cfg: WorldConfig) -> list[str]:
    """The absent co-occurrence mates of the scene's shapes, either side of a ``cfg.partners`` pair, sorted:
    what the prior suggests is there but is not (POPE's adversarial negatives, the annotator's additions)."""
    present = scene.shapes()
    return sorted({m for s in present for m in mates_of(s, cfg)} - present)


def annotated(scene: Scene, cfg: WorldConfig, rng: np.random.Generator) -> Scene | None:
    """The scene as a prior-following annotator writes it down: plus the absent co-occurrence partner of one of
    its shapes, in a free cell with a random colour; None when no partner is missing or no cell is free.

    The image stays the true scene; only the training text describes this one. It is how caption data teaches a
    vision-language model its co-occurrence hallucinations: the annotation mentions what usually goes with what
    is visible (``LvlmTrainConfig.annotation_noise`` is the share of training scenes annotated this way).
    """
    missing = missing_mates(scene, cfg)
    free = sorted(set(range(cfg.grid * cfg.grid)) - {o.cell for o in scene.objects})
    if not missing or not free:
        return None
    shape = missing[int(rng.integers(len(missing)))]
    obj = Obj(shape, cfg.colors[int(rng.integers(len(cfg.colors)))], free[int(rng.integers(len(free)))])
    return Scene(scene.scene_id, scene.split, (*scene.objects, obj), scene.style_seed)


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
    train may repeat its own (more data of the same distribution). ``cfg.n_eval_extra`` further eval scenes
    (``eval-{n_eval}`` on) are drawn last, from their own stream, avoiding every scene above: adding them
    changes no other scene.
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
    rng = np.random.default_rng([cfg.seed, 3])
    for i in range(cfg.n_eval, cfg.n_eval + cfg.n_eval_extra):
        scene = _sample_avoiding(rng, cfg, f"eval-{i:06d}", "eval", lambda sig: sig in taken)
        taken.add(scene.signature())
        out["eval"].append(scene)
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
