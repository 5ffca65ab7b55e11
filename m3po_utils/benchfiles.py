"""Real benchmark files on disk — POPE question files and the MME release — in the layouts people have.

**POPE** (Li et al., 2023; the files of its repository's ``output/`` folder):

* the COCO settings: JSON lines ``{"question_id", "image", "text", "label"}``, LF or CRLF line ends;
* the SEEM-based A-OKVQA and GQA settings: one (pretty-printed) JSON array of the same objects;
* the lmms-lab Hugging Face export: parquet with ``id, question_id, question, answer, image_source,
  image{bytes, path}, category``, where ``category`` is the setting and the image is embedded.

**MME** (Fu et al., 2023; the release folder ``MME_Benchmark_release_version/``): one folder per subtask.
existence, count, position, color, OCR and the four cognition subtasks keep each image beside its ``.txt``;
artwork, celebrity, landmark, posters and scene put them in ``images/`` and ``questions_answers_YN/``. Each
``.txt`` holds one ``question<TAB>Yes|No`` line per question. The Hugging Face zip nests the subtasks one level
deeper (``MME_Benchmark_release_version/MME_Benchmark/<subtask>/``); the lmms-lab export is parquet with
``question_id`` (``artwork/10002.jpg``: one per image), ``image{bytes, path}``, ``question``, ``answer`` and
``category`` (the subtask). MME's calculation script groups subtasks into perception (10) and cognition (4).

Every loader returns one dict per question: ``question_id``, ``question``, ``label`` (POPE: ``yes``/``no``) or
``answer`` (MME: ``Yes``/``No``), ``image`` (a file path, or a decoded PIL image when the file embeds it),
``image_id`` (a stable key of the image: its path, or the embedded image's source name) and ``category`` (POPE
setting, where the file has one) or ``subtask`` (MME). A file or folder that holds no question is an error that
says what was expected — never zero rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_SUBTASK_NAMES = MME_PERCEPTION + MME_COGNITION
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_QA, SPLIT_IMAGES = "questions_answers_YN", "images"
POPE_PARQUET_COLUMNS = ("question_id", "question", "answer", "image")
MME_PARQUET_COLUMNS = ("question_id", "question", "answer", "image", "category")


class BenchmarkFileError(ValueError):
    """A benchmark file or folder that cannot be read as what it should be; the message names it and the fix."""


def read_text(path: Path, what: str) -> str:
    """A question file's text: UTF-8 (with or without a BOM) or UTF-16 with its BOM; anything else is an error
    naming the file and the fix, never a bare ``UnicodeDecodeError``."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise BenchmarkFileError(f"{path} starts with a UTF-16 mark but is not UTF-16 text ({exc.reason} at "
                                     f"byte {exc.start}); save it as UTF-8") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BenchmarkFileError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}: perhaps Latin-1 or "
                                 f"another legacy encoding); save it as UTF-8 — {what}") from None


def _json(text: str, where: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BenchmarkFileError(f"{where} is not {what}: {exc}") from None
    except RecursionError:
        raise BenchmarkFileError(f"{where} nests its JSON too deeply to be {what}") from None


def inside(folder: Path, name: Any, where: str) -> Path:
    """``folder / name`` when it stays inside ``folder`` once resolved (symlinks followed): a benchmark names its
    images relative to its own folder, so an absolute path, ``..`` or a link out of it is refused."""
    if not isinstance(name, str) or not name.strip():
        raise BenchmarkFileError(f"{where} names its image {name!r}; expected a file name in {folder}")
    root = folder.resolve()
    path = (folder / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(root):
        raise BenchmarkFileError(f"{where} names image {name!r}, which is outside the image folder {folder}; "
                                 "a benchmark's images are named relative to their folder")
    return path


# ------------------------------------------------------------------------------------------ parquet

def _parquet_files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*.parquet") if p.is_file())


def _parquet_rows(files: Sequence[Path], columns: Sequence[str], what: str) -> Iterator[tuple[Path, dict]]:
    """The rows of lmms-lab parquet files (pyarrow, by record batch: the embedded images are never all in memory
    as Python objects at once)."""
    import pyarrow.parquet as pq

    for f in files:
        try:
            pf = pq.ParquetFile(str(f))
        except Exception as exc:   # ArrowInvalid and friends: not parquet, truncated
            raise BenchmarkFileError(f"{f} is not a readable parquet file ({type(exc).__name__}: {exc})") from None
        names = pf.schema_arrow.names
        missing = [c for c in columns if c not in names]
        if missing:
            raise BenchmarkFileError(f"{f} lacks column(s) {missing} of the lmms-lab {what} export "
                                     f"(it has {names}); expected {list(columns)}")
        wanted = [c for c in names if c in (*columns, "category", "image_source", "id")]
        for batch in pf.iter_batches(batch_size=256, columns=wanted):
            yield from ((f, row) for row in batch.to_pylist())


class _ImageDecoder:
    """Decode embedded images (``{"bytes", "path"}``, the ``datasets`` Image feature) once per distinct image."""

    def __init__(self):
        from datasets import Image

        self._feature = Image()
        self._seen: dict[str, Any] = {}

    def __call__(self, value: Any, key: str, where: str):
        if key in self._seen:
            return self._seen[key]
        if not isinstance(value, dict) or not value.get("bytes"):
            raise BenchmarkFileError(f"{where}: the image is not embedded (no bytes); the lmms-lab exports embed "
                                     "every image")
        try:
            image = self._feature.decode_example({"bytes": value["bytes"], "path": None}).convert("RGB")
        except Exception as exc:
            raise BenchmarkFileError(f"{where}: the embedded image cannot be decoded ({type(exc).__name__}: "
                                     f"{exc})") from None
        self._seen[key] = image
        return image


def _image_key(value: Any, *names: Any) -> str:
    for n in names:
        if n not in (None, ""):
            return str(n)
    data = value.get("bytes") if isinstance(value, dict) else None
    return hashlib.sha256(data).hexdigest()[:16] if data else ""


# ------------------------------------------------------------------------------------------ POPE

def _pope_label(value: Any, where: str) -> str:
    label = str(value).strip().lower()
    if label not in ("yes", "no"):
        raise BenchmarkFileError(f"{where} has label {value!r}; POPE labels are yes / no")
    return label


def _pope_items(path: Path) -> list[tuple[int, Any]]:
    """(line or position, object) of a JSON-lines file or of one JSON array."""
    text = read_text(path, "a POPE question file is JSON lines, a JSON array or .parquet")
    if text.lstrip().startswith("["):          # SEEM-based settings: one JSON array
        items = _json(text, f"{path} starts like a JSON array but", "one")
        return list(enumerate(items, 1))
    return [(n, _json(line, f"{path}:{n}", "a JSON object"))
            for n, line in enumerate(text.splitlines(), 1) if line.strip()]   # LF or CRLF


POPE_FIELDS = {"question_id": (int, str), "image": (str,), "text": (str,), "label": (str,)}


def _pope_fields(item: Any, where: str) -> None:
    """Every POPE field present and of its type: a null ``text`` is not the question "None"."""
    if not isinstance(item, dict):
        raise BenchmarkFileError(f"{where} is not a POPE question (a JSON object with question_id, image, text, "
                                 f"label); it is a {type(item).__name__}")
    for name, types in POPE_FIELDS.items():
        if name not in item:
            raise BenchmarkFileError(f"{where} is not a POPE question (needs question_id, image, text, label): "
                                     f"missing {name!r}")
        value = item[name]
        if value is None or isinstance(value, bool) or not isinstance(value, types) or \
                (isinstance(value, str) and not value.strip()):
            raise BenchmarkFileError(f"{where} has {name}={value!r}; expected "
                                     f"{' or '.join(t.__name__ for t in types)}, not empty")


def load_pope_file(path, image_dir=None) -> list[dict]:
    """POPE questions from one file: JSON lines, a JSON array (both name images in ``image_dir``), or lmms-lab
    parquet (images embedded; ``image_dir`` is not used). See the module docs for the rows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"POPE question file {str(path)!r} does not exist")
    rows: list[dict] = []
    if path.suffix.lower() == ".parquet":
        decode = _ImageDecoder()
        for n, (f, item) in enumerate(_parquet_rows([path], POPE_PARQUET_COLUMNS, "POPE"), 1):
            where = f"{f} row {n}"
            key = _image_key(item["image"], item.get("image_source"),
                             (item["image"] or {}).get("path") if isinstance(item["image"], dict) else None)
            if item["question"] is None or not str(item["question"]).strip():
                raise BenchmarkFileError(f"{where} has question={item['question']!r}; expected the question's text")
            row = {"question_id": item["question_id"], "question": str(item["question"]).strip(),
                   "label": _pope_label(item["answer"], where), "image": decode(item["image"], key, where),
                   "image_id": key}
            if item.get("category") not in (None, ""):
                row["category"] = str(item["category"]).strip().lower()
            rows.append(row)
    else:
        if image_dir is None or not Path(image_dir).is_dir():
            raise FileNotFoundError(f"POPE image folder {str(image_dir)!r} does not exist; {path.name} names its "
                                    "images by file name — set evaluation.pope_images to their folder")
        image_dir = Path(image_dir)
        for n, item in _pope_items(path):
            where = f"{path}:{n}"
            _pope_fields(item, where)
            row = {"question_id": item["question_id"], "question": item["text"].strip(),
                   "label": _pope_label(item["label"], where), "image": str(inside(image_dir, item["image"], where))}
            if not Path(row["image"]).is_file():
                raise FileNotFoundError(f"{where} names image {item['image']!r}, missing from {image_dir}")
            row["image_id"] = row["image"]
            if item.get("category") not in (None, ""):
                row["category"] = str(item["category"]).strip().lower()
            rows.append(row)
    if not rows:
        raise BenchmarkFileError(f"{path} holds no POPE question; expected JSON lines or a JSON array of "
                                 "{question_id, image, text, label}, or the lmms-lab parquet export")
    _unique(rows, lambda r: (r.get("category"), r["question_id"]), path, "question_id")
    return rows


def _unique(rows: Sequence[dict], key, where: Any, what: str) -> None:
    """Refuse a file that asks the same question twice (it would be counted twice)."""
    seen: set = set()
    for r in rows:
        k = key(r)
        if k in seen:
            raise BenchmarkFileError(f"{where} has {what} {r[what] if what in r else k!r} twice; every question "
                                     "must be asked once")
        seen.add(k)


MME_QUESTIONS_PER_IMAGE = 2     # MME asks two questions of every image, one answered Yes and one No


def _per_image(rows: Sequence[dict], where: Any) -> None:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["image_id"]] = counts.get(r["image_id"], 0) + 1
        if counts[r["image_id"]] > MME_QUESTIONS_PER_IMAGE:
            raise BenchmarkFileError(f"{where} asks more than {MME_QUESTIONS_PER_IMAGE} questions of image "
                                     f"{r['image_id']!r}; MME asks two per image (one Yes, one No), and acc+ "
                                     "counts an image right only when both are")


# ------------------------------------------------------------------------------------------ MME

def _skip(p: Path) -> bool:
    return p.name.startswith((".", "__"))   # .DS_Store, __MACOSX/ from zips


def _question_files(folder: Path) -> tuple[Path, Path, list[Path]]:
    """(questions folder, images folder, .txt files) of one subtask folder, in either release layout."""
    if (folder / SPLIT_QA).is_dir():
        qa, img = folder / SPLIT_QA, folder / SPLIT_IMAGES
    else:
        qa = img = folder
    return qa, img, sorted(p for p in qa.glob("*.txt") if not _skip(p))


def _is_subtask(folder: Path) -> bool:
    if not folder.is_dir() or _skip(folder) or folder.name in (SPLIT_QA, SPLIT_IMAGES):
        return False
    return (
        folder.name in MME_SUBTASK_NAMES or (folder / SPLIT_QA).is_dir() or bool(_question_files(folder)[2]))


def _subtask_parent(root: Path, depth: int = 2) -> Path | None:
    """The folder whose children are MME subtask folders: ``root`` or up to ``depth`` levels below it (the
    release folder, and the Hugging Face zip's extra ``MME_Benchmark/`` level)."""
    level = [root]
    for _ in range(depth + 1):
        for d in level:
            if any(_is_subtask(c) for c in d.iterdir()):
                return d
        level = [c for d in level for c in sorted(d.iterdir()) if c.is_dir() and not _skip(c)]
    return None


def _mme_txt_rows(folder: Path, sub: str) -> list[dict]:
    qa, img_dir, files = _question_files(folder)
    if not files:
        raise BenchmarkFileError(f"MME subtask folder {folder} holds no question file (<image>.txt with "
                                 f"question<TAB>Yes|No lines, beside the image or in {SPLIT_QA}/)")
    rows = []
    for txt in files:
        images = sorted(p for p in img_dir.glob(txt.stem + ".*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise FileNotFoundError(f"{txt} has no image {txt.stem}.png/.jpg in {img_dir}")
        inside(folder, str(images[0].relative_to(folder)), str(txt))     # no link out of the subtask folder
        start = len(rows)
        text = read_text(txt, "an MME question file holds question<TAB>Yes|No lines")
        for n, line in enumerate(text.splitlines(), 1):
            line = line.rstrip()               # trailing spaces or tabs after Yes/No, as LLaVA's converter strips
            if not line.strip():
                continue
            parts = line.rsplit("\t", 1)
            if len(parts) != 2 or parts[1].strip() not in ("Yes", "No"):
                raise BenchmarkFileError(f"{txt}:{n} is not 'question<TAB>Yes|No': {line!r}")
            rows.append({"question_id": f"{sub}/{images[0].name}", "subtask": sub, "image": str(images[0]),
                         "image_id": str(images[0]), "question": parts[0].strip(), "answer": parts[1].strip()})
        _per_image(rows[start:], txt)
        _unique(rows[start:], lambda r: r["question"], txt, "question")
    return rows


def _mme_parquet_rows(files: Sequence[Path]) -> list[dict]:
    decode = _ImageDecoder()
    rows = []
    for n, (f, item) in enumerate(_parquet_rows(files, MME_PARQUET_COLUMNS, "MME"), 1):
        where = f"{f} row {n}"
        answer = str(item["answer"]).strip()
        if answer.lower() not in ("yes", "no"):
            raise BenchmarkFileError(f"{where} has answer {item['answer']!r}; MME answers are Yes / No")
        qid = str(item["question_id"])
        sub = str(item["category"] or qid.split("/")[0]).strip()
        if item["question"] is None or not str(item["question"]).strip():
            raise BenchmarkFileError(f"{where} has question={item['question']!r}; expected the question's text")
        rows.append({"question_id": qid, "subtask": sub, "image": decode(item["image"], qid, where),
                     "image_id": qid, "question": str(item["question"]).strip(), "answer": answer.capitalize()})
    where = files[0] if len(files) == 1 else f"the parquet files under {files[0].parent}"
    _per_image(rows, where)
    _unique(rows, lambda r: (r["image_id"], r["question"]), where, "question")
    return rows


def load_mme_dir(root, subtasks: Sequence[str] | None = None) -> list[dict]:
    """MME questions from the release folder (either sub-layout, the zip's extra level found by itself), one
    subtask folder, or lmms-lab parquet (a file or a folder of them). ``subtasks`` keeps only those."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"MME folder {str(root)!r} does not exist")
    expected = ("expected MME subtask folders (existence/, count/, …, artwork/ with images/ and "
                f"{SPLIT_QA}/) holding question<TAB>Yes|No .txt files — the release's "
                "MME_Benchmark_release_version/ folder or its zip's MME_Benchmark/ inside it — or lmms-lab "
                "parquet files")
    parent = _subtask_parent(root) if root.is_dir() else None
    if parent is not None:
        folders = [c for c in sorted(parent.iterdir()) if _is_subtask(c)]
        if subtasks:
            missing = sorted(set(subtasks) - {f.name for f in folders})
            if missing:
                raise FileNotFoundError(f"MME subtask folder(s) {missing} not found in {parent}")
            folders = [f for f in folders if f.name in subtasks]
        rows = [r for f in folders for r in _mme_txt_rows(f, f.name)]
    elif _is_subtask(root):                                     # one subtask folder given
        rows = _mme_txt_rows(root, root.name)
    else:
        files = _parquet_files(root) if (root.is_dir() or root.suffix.lower() == ".parquet") else []
        if not files:
            raise BenchmarkFileError(f"no MME question found under {root}: {expected}")
        rows = _mme_parquet_rows(files)
    if subtasks:
        rows = [r for r in rows if r["subtask"] in subtasks]
    if not rows:
        raise BenchmarkFileError(f"no MME question found under {root}" +
                                 (f" for subtasks {list(subtasks)}" if subtasks else f": {expected}"))
    return rows


def mme_group(subtask: str) -> str:
    """``perception``, ``cognition`` (MME's own grouping) or ``other`` for a subtask name."""
    return "perception" if subtask in MME_PERCEPTION else "cognition" if subtask in MME_COGNITION else "other"


def open_image(image: Any):
    """A row's image as RGB: decoded already (parquet) or read from its path."""
    from PIL import Image

    if isinstance(image, str | Path):
        with Image.open(image) as im:
            return im.convert("RGB")
    return image.convert("RGB") if getattr(image, "mode", "RGB") != "RGB" else image
