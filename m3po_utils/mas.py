"""Stage 02: the Multimodal Alignment Score (MAS), CLIP similarity and an LVLM judge combined in [0, 1].

M3PO needs an external judgement of each candidate against its image. The paper combines CLIP image-text
similarity with a GPT-4V judge; this module does the same with real parts: any ``open_clip`` model (the shapes
world's tiny CLIP, or ``ViT-L-14``/``openai``) and the ``openai`` client pointed at any OpenAI-compatible endpoint
(OpenAI, vLLM, Ollama, or the shapes world's ground-truth judge in :mod:`m3po_utils.judge_server`).

CLIP score
    ``clip_raw`` = cosine(image embedding, response embedding). Every distinct image is embedded once and reused
    for all its candidates; distinct texts are embedded once, in batches (:class:`ClipScorer`).
    *Long responses*: open_clip's tokenizer keeps the first ``context_length`` tokens and ends them with the
    end-of-text token (see :mod:`m3po_utils.tiny_clip`), so CLIP never sees the end of a long response. We keep
    that behaviour (it is what every CLIP-score user gets) and flag the rows in ``clip_truncated``; the judge
    reads the whole response, one more reason MAS leans on it.
    *Normalisation* (``MasConfig.clip_norm``), :func:`normalise_clip`:

    - ``"run"`` (default): one affine map for the whole run, the 5th percentile of ``clip_raw`` -> 0 and the 95th
      -> 1, clipped to [0, 1]. Monotone, the same for every prompt, robust to outliers, and it keeps each
      prompt's CLIP differences in proportion to the spread CLIP shows over the whole run (much of which is
      between images), so a prompt whose candidates CLIP can hardly tell apart keeps small MAS differences.
      It does not judge CLIP's quality: a weak CLIP's spread is stretched to [0, 1] like a strong one's, and
      ``clip_weight`` is the knob for how much CLIP is trusted.
    - ``"prompt"``: min-max within each prompt (0.5 when all candidates tie). Every prompt's CLIP-best gets 1 and
      its CLIP-worst 0 however tiny the difference: for "Yes" vs "No" that turns CLIP noise into a full-scale
      MAS difference, so it is not the default.
    - ``"cosine"``: ``(cos + 1) / 2``: fixed and comparable across runs, but squeezed into a narrow band.

Judge
    :class:`JudgeClient` sends chat completions with the image as a base64 PNG data URL and a versioned prompt
    (:data:`PROMPTS`) that asks for JSON: ``{"score": 1-10}`` per candidate (*pointwise*, one request per
    candidate) or ``{"scores": [...]}`` for all N candidates of a prompt with the image sent once (*listwise*).
    A malformed reply is retried, then recorded as a failure (never scored 0). 429, 5xx, timeouts and dropped
    connections are retried with exponential backoff and jitter (``Retry-After`` honoured); other HTTP errors
    fail at once. Requests run on a bounded thread pool (``MasConfig.concurrency``). Every successful answer is
    written at once to an SQLite cache (:class:`JudgeCache`, ``run_dir/mas/judge_cache.sqlite``) keyed by
    (model, prompt version and mode, image hash, instruction, response), so a rerun or a crash never repeats a
    paid call; failures are not cached, so a rerun retries exactly them.
    Endpoint: ``OPENAI_BASE_URL`` wins over ``models.judge_base_url``; when both are empty the shapes world
    starts its own judge on 127.0.0.1 and hub presets use OpenAI. The key is read from ``OPENAI_API_KEY`` and is
    sent only to an endpoint that is not the local judge; it is kept out of logs, error texts (redacted), the
    cache, the tables and the notebooks.

MAS
    ``judge_score = (judge_raw - 1) / 9`` and ::

        mas = (w_clip * clip_score + w_judge * judge_score) / (w_clip + w_judge)        (MasConfig weights)

    so MAS is in [0, 1] whatever the weights. A candidate whose judge call failed is *not* scored: ``judge_ok``
    and ``mas_ok`` are False and ``mas`` is NaN (a CLIP-only fallback would mix two scales inside one prompt's
    ranking); later stages must skip such rows, and rerunning notebook 02 retries only them. With
    ``judge_weight = 0`` the judge is not called and ``mas = clip_score``.

Output: ``run_dir/mas/scores/`` (a ``datasets`` table, written atomically; :func:`save_mas` / :func:`load_mas`)
with one row per candidate: ``prompt_id, cand_idx, family, clip_raw, clip_score, clip_truncated, judge_raw,
judge_score, judge_ok, judge_error, mas, mas_ok`` and, in the shapes world, ``truth`` (the verifier's score).
"""

from __future__ import annotations

import base64
import hashlib
import io
import ipaddress
import json
import os
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
from PIL import Image

from . import world as W
from .config import MasConfig, Preset
from .io import AtomicDir
from .judge_server import INPUT_MARKER

SCORES_DIR = "scores"
CACHE_NAME = "judge_cache.sqlite"
LOCAL_KEY = "local-judge-needs-no-key"  # placeholder sent to the local judge instead of any real key
CLIP_RUN_QUANTILES = (0.05, 0.95)
CANDIDATE_COLUMNS = ("prompt_id", "image", "instruction", "cand_idx", "text")
RETRYABLE_STATUS = frozenset({408, 409, 429})  # and every 5xx


# =============================================================================================== CLIP score

@dataclass
class ClipScores:
    raw: np.ndarray          # cosine similarity per (image, text) pair
    truncated: np.ndarray    # True where the text was longer than CLIP's context (its end was not seen)
    images_encoded: int
    texts_encoded: int


class ClipScorer:
    """CLIP image-text cosine for many (image, response) pairs; each distinct image and text embedded once.

    ``model, preprocess, tokenizer`` as returned by :func:`tiny_clip.load_clip` (any open_clip model).
    """

    def __init__(self, model, preprocess, tokenizer, image_batch_size: int = 64, text_batch_size: int = 256):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.image_batch_size, self.text_batch_size = image_batch_size, text_batch_size

    @classmethod
    def from_run(cls, cfg: Preset, run_dir: str | Path, **kwargs) -> ClipScorer:
        """The run's CLIP: the shapes world's tiny CLIP from ``run_dir/models/clip`` or ``models.clip_model``."""
        from .basemodels import prepare_clip

        model, preprocess, tokenizer, _ = prepare_clip(cfg, Path(run_dir), progress=False)
        return cls(model, preprocess, tokenizer, **kwargs)

    @property
    def context_length(self) -> int | None:
        n = getattr(self.tokenizer, "context_length", None) or getattr(self.model, "context_length", None)
        return int(n) if n else None

    def truncated(self, texts: Sequence[str]) -> np.ndarray:
        """True for texts that need more than ``context_length`` tokens (start and end tokens included)."""
        n = self.context_length
        if not n or not texts:
            return np.zeros(len(texts), dtype=bool)
        try:
            longer = self.tokenizer(list(texts), context_length=n + 1)
        except TypeError:  # a tokenizer without a context_length argument: cannot tell
            return np.zeros(len(texts), dtype=bool)
        return (longer[:, n] != 0).cpu().numpy()

    def image_embeddings(self, images: Sequence[Image.Image]):
        from .tiny_clip import encode_images

        return encode_images(self.model, self.preprocess, list(images), batch_size=self.image_batch_size)

    def text_embeddings(self, texts: Sequence[str]):
        from .tiny_clip import encode_texts

        return encode_texts(self.model, self.tokenizer, list(texts), batch_size=self.text_batch_size)

    def score(self, image_refs: Sequence[str], texts: Sequence[str],
              load_image: Callable[[str], Image.Image]) -> ClipScores:
        """Cosine of ``texts[i]`` with the image ``load_image(image_refs[i])``, embedding each distinct one once."""
        if len(image_refs) != len(texts):
            raise ValueError(f"got {len(image_refs)} image refs but {len(texts)} texts; pass one image per text")
        if not texts:
            return ClipScores(np.zeros(0), np.zeros(0, dtype=bool), 0, 0)
        refs = list(dict.fromkeys(image_refs))
        uniq = list(dict.fromkeys(str(t) for t in texts))
        img = self.image_embeddings([load_image(r) for r in refs])
        txt = self.text_embeddings(uniq)
        r_map = {r: i for i, r in enumerate(refs)}
        r_idx = np.array([r_map[r] for r in image_refs])
        t_map = {t: i for i, t in enumerate(uniq)}
        t_idx = np.array([t_map[str(t)] for t in texts])
        raw = (img.numpy()[r_idx] * txt.numpy()[t_idx]).sum(1).astype(np.float64)
        trunc = self.truncated(uniq)[t_idx]
        return ClipScores(raw, trunc, len(refs), len(uniq))

    def score_per_pair(self, image_refs: Sequence[str], texts: Sequence[str],
                       load_image: Callable[[str], Image.Image]) -> np.ndarray:
        """The naive baseline (benchmarks only): embed the image and the text again for every pair."""
        img = self.image_embeddings([load_image(r) for r in image_refs])
        txt = self.text_embeddings([str(t) for t in texts])
        return (img * txt).sum(1).double().numpy()


def normalise_clip(raw: Sequence[float], groups: Sequence[Any] | None = None, method: str = "run",
                   quantiles: tuple[float, float] = CLIP_RUN_QUANTILES) -> np.ndarray:
    """Map cosine similarities to a [0, 1] CLIP score (see the module docstring for the three methods).

    ``groups`` (the prompt id of each row) is needed by ``"prompt"``. NaN stays NaN.
    """
    raw = np.asarray(raw, dtype=np.float64)
    if method == "cosine":
        return np.clip((raw + 1.0) / 2.0, 0.0, 1.0)
    if method == "run":
        finite = raw[np.isfinite(raw)]
        if finite.size == 0:
            return raw.copy()
        lo, hi = np.quantile(finite, quantiles)
        if hi - lo <= 1e-12:
            return np.where(np.isfinite(raw), 0.5, np.nan)
        return np.clip((raw - lo) / (hi - lo), 0.0, 1.0)
    if method == "prompt":
        if groups is None or len(groups) != len(raw):
            raise ValueError("clip_norm='prompt' needs the prompt id of every row (groups=)")
        s = pd.Series(raw)
        g = s.groupby(np.asarray(groups))
        lo, hi = g.transform("min"), g.transform("max")
        span = (hi - lo).to_numpy()
        out = np.where(span > 1e-12, (s - lo).to_numpy() / np.where(span > 1e-12, span, 1.0), 0.5)
        return np.where(np.isfinite(raw), out, np.nan)
    raise ValueError(f"clip_norm={method!r} is unknown; choose 'run', 'prompt' or 'cosine'")


def clip_norm_range(raw: Sequence[float], quantiles: tuple[float, float] = CLIP_RUN_QUANTILES) -> tuple[float, float]:
    """The (lo, hi) cosines that ``normalise_clip(method="run")`` maps to 0 and 1."""
    finite = np.asarray(raw, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    lo, hi = np.quantile(finite, quantiles) if finite.size else (np.nan, np.nan)
    return float(lo), float(hi)


# =============================================================================================== judge prompt

@dataclass(frozen=True)
class JudgePrompt:
    """A versioned judge prompt: one system message, and a user template per mode (before the INPUT block)."""

    version: str
    system: str
    pointwise: str
    listwise: str


PROMPTS: dict[str, JudgePrompt] = {
    "v1": JudgePrompt(
        version="v1",
        system=("You are a strict evaluator of answers about images. Look at the image, read the instruction and "
                "judge each response for: correctness with respect to the image (no objects that are not there, "
                "right colours, positions and counts), whether it answers the instruction, and whether it obeys "
                "any format constraint the instruction sets. Reply with JSON only."),
        pointwise=("Rate the response from 1 (wrong, hallucinated or ignores the instruction) to 10 (fully "
                   "correct and follows the instruction).\n"
                   'Reply with JSON only, exactly: {"score": <integer 1-10>, "reason": "<one short sentence>"}'),
        listwise=("Rate each of the {n} candidate responses independently from 1 (wrong, hallucinated or ignores "
                  "the instruction) to 10 (fully correct and follows the instruction); equal responses get equal "
                  "scores.\n"
                  'Reply with JSON only, exactly: {{"scores": [<{n} integers from 1 to 10, in the order given>]}}'),
    ),
}


def judge_messages(prompt: JudgePrompt, image_url: str, instruction: str, responses: Sequence[str] | str) -> list[dict]:
    """Chat messages for one request: ``responses`` a string (pointwise) or a list (listwise)."""
    if isinstance(responses, str):
        head = prompt.pointwise
        payload = {"instruction": instruction, "response": responses}
    else:
        head = prompt.listwise.format(n=len(responses))
        payload = {"instruction": instruction, "responses": list(responses)}
    text = f"{head}\n\n{INPUT_MARKER}\n{json.dumps(payload, ensure_ascii=False)}"
    return [{"role": "system", "content": prompt.system},
            {"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": image_url}}]}]


def png_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class JudgeParseError(ValueError):
    """A judge reply that is not the JSON the prompt asked for."""


def _as_score(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise JudgeParseError(f"{where} is a boolean, not a score")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise JudgeParseError(f"{where}={value!r} is not a number") from None
    if not isinstance(value, int | float) or not np.isfinite(value):
        raise JudgeParseError(f"{where}={value!r} is not a number")
    if not 1 <= value <= 10:
        raise JudgeParseError(f"{where}={value!r} is outside 1..10")
    return float(value)


def parse_reply(content: str | None, n: int | None = None) -> tuple[list[float], list[str]]:
    """Scores (and reasons, "" when absent) from a judge reply; ``n=None`` pointwise, else listwise with n scores.

    Accepts the JSON object alone, inside a ```json fence or surrounded by text; raises JudgeParseError otherwise.
    """
    if not isinstance(content, str) or not content.strip():
        raise JudgeParseError("empty reply")
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", content.strip())
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise JudgeParseError(f"no JSON object in the reply: {content[:80]!r}")
    try:
        obj = json.loads(text[start:end + 1])
    except json.JSONDecodeError as exc:
        raise JudgeParseError(f"invalid JSON ({exc.msg}): {content[:80]!r}") from None
    if not isinstance(obj, dict):
        raise JudgeParseError("the reply's JSON is not an object")
    if n is None:
        if "score" not in obj:
            raise JudgeParseError(f"no 'score' in the reply: {content[:80]!r}")
        reason = obj.get("reason")
        return [_as_score(obj["score"], "score")], [reason if isinstance(reason, str) else ""]
    scores = obj.get("scores")
    if not isinstance(scores, list):
        raise JudgeParseError(f"no 'scores' list in the reply: {content[:80]!r}")
    if len(scores) != n:
        raise JudgeParseError(f"{len(scores)} scores for {n} responses")
    reasons = obj.get("reasons")
    reasons = [r if isinstance(r, str) else "" for r in reasons] if isinstance(reasons, list) and len(
        reasons) == n else [""] * n
    return [_as_score(v, f"scores[{i}]") for i, v in enumerate(scores)], reasons


# =============================================================================================== cache

class JudgeCache:
    """Judge answers on disk (SQLite), one row per (model, prompt version, image hash, instruction, response).

    Each answer is committed as soon as it arrives, so a crash loses at most the requests in flight. Safe to use
    from several threads of one process. Nothing but the answer and its key fields is stored (no endpoint, no key).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS judge (key TEXT PRIMARY KEY, model TEXT, prompt_version TEXT, "
                "image_hash TEXT, instruction TEXT, response TEXT, score REAL, reason TEXT, created REAL)")
            self._conn.commit()

    @staticmethod
    def key(model: str, prompt_version: str, image_hash: str, instruction: str, response: str) -> str:
        blob = json.dumps([model, prompt_version, image_hash, instruction, response], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, tuple[float, str]]:
        out: dict[str, tuple[float, str]] = {}
        keys = list(dict.fromkeys(keys))
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                q = f"SELECT key, score, reason FROM judge WHERE key IN ({','.join('?' * len(chunk))})"
                for k, s, r in self._conn.execute(q, chunk):
                    out[k] = (float(s), r or "")
        return out

    def put_many(self, rows: Sequence[tuple[str, str, str, str, str, str, float, str]]) -> None:
        """``rows``: (key, model, prompt_version, image_hash, instruction, response, score, reason)."""
        now = time.time()
        with self._lock:
            self._conn.executemany("INSERT OR REPLACE INTO judge VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                   [(*r, now) for r in rows])
            self._conn.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM judge").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> JudgeCache:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# =============================================================================================== judge client

@dataclass
class JudgeItem:
    """One prompt to judge: its image, instruction and the candidate responses (in candidate order)."""

    image: Image.Image
    instruction: str
    responses: list[str]
    image_hash: str = ""

    def __post_init__(self) -> None:
        if not self.image_hash:
            self.image_hash = W.image_key(self.image)


@dataclass
class JudgeOutcome:
    """The judge's answer for one response: ``score`` on 1..10 (NaN when ``ok`` is False)."""

    score: float
    ok: bool
    reason: str = ""
    error: str = ""
    cached: bool = False
    attempts: int = 0


@dataclass
class _Task:
    item: int
    responses: list[str]          # distinct responses to score in one request (one, pointwise)
    keys: list[str]
    users: list[tuple[int, str]] = field(default_factory=list)  # extra (item, response) sharing this task


def _is_loopback(url: str | None) -> bool:
    if not url:
        return False
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class JudgeConfigError(ValueError):
    """The judge cannot be set up (no key for a remote endpoint, an unknown prompt version, ...)."""


class JudgeClient:
    """Scores responses with an LVLM judge over the OpenAI chat-completions protocol (see module docs).

    ``base_url=None`` is OpenAI itself. ``api_key=None`` reads ``OPENAI_API_KEY``; a loopback endpoint without a
    key gets a placeholder. ``cache``: a :class:`JudgeCache`, a path, or None (no cache). ``stats`` counts HTTP
    requests, request-body bytes, retries, cache hits and failures over the client's life.
    """

    def __init__(self, base_url: str | None, model: str, *, api_key: str | None = None, mode: str = "listwise",
                 prompt_version: str = "v1", concurrency: int = 4, max_retries: int = 4, timeout_s: float = 60.0,
                 cache: JudgeCache | str | Path | None = None, backoff_s: float = 0.5, backoff_max_s: float = 30.0,
                 json_mode: bool = True, seed: int = 0):
        import openai

        if mode not in ("pointwise", "listwise"):
            raise JudgeConfigError(f"mode={mode!r} is unknown; choose 'pointwise' or 'listwise'")
        if prompt_version not in PROMPTS:
            raise JudgeConfigError(f"prompt_version={prompt_version!r} is unknown; versions: {', '.join(PROMPTS)}")
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise JudgeConfigError("need concurrency >= 1, max_retries >= 0 and timeout_s > 0")
        key = os.environ.get("OPENAI_API_KEY", "") if api_key is None else api_key
        if not key:
            if not _is_loopback(base_url):
                raise JudgeConfigError(f"OPENAI_API_KEY is not set; the judge at {base_url or 'api.openai.com'} "
                                       "needs it (export OPENAI_API_KEY=...; never put it in a preset)")
            key = LOCAL_KEY
        self._secrets = [key] if key != LOCAL_KEY else []
        self.base_url, self.model, self.mode = base_url, model, mode
        self.prompt = PROMPTS[prompt_version]
        self.prompt_id = f"{prompt_version}/{mode}"  # the cache's "prompt version": listwise and pointwise differ
        self.concurrency, self.max_retries, self.timeout_s = concurrency, max_retries, float(timeout_s)
        self.backoff_s, self.backoff_max_s, self.json_mode = backoff_s, backoff_max_s, json_mode
        self._owns_cache = cache is not None and not isinstance(cache, JudgeCache)
        self.cache = JudgeCache(cache) if self._owns_cache else cache
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.stats: dict[str, int] = {"requests": 0, "bytes_sent": 0, "tasks": 0, "retries": 0, "failures": 0,
                                      "cache_hits": 0, "responses_scored": 0}
        self._http = openai.DefaultHttpxClient(event_hooks={"request": [self._on_request]})
        self._client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=self.timeout_s,
                                     http_client=self._http)
        self._errors = openai
        self.server = None  # the local JudgeServer when made by open_judge

    def __repr__(self) -> str:  # never shows the key
        return (f"JudgeClient(model={self.model!r}, base_url={self.base_url!r}, mode={self.mode!r}, "
                f"prompt={self.prompt_id!r}, concurrency={self.concurrency})")

    def close(self) -> None:
        self._client.close()
        if self._owns_cache and self.cache is not None:
            self.cache.close()

    def __enter__(self) -> JudgeClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def redact(self, text: str) -> str:
        """``text`` with the API key (and anything shaped like an OpenAI key or bearer token) removed."""
        for s in self._secrets:
            if s:
                text = text.replace(s, "<redacted>")
        text = re.sub(r"sk-[A-Za-z0-9_\-*]{6,}", "sk-<redacted>", text)
        return re.sub(r"(?i)(bearer\s+)\S+", r"\1<redacted>", text)

    def _on_request(self, request) -> None:
        try:
            size = len(request.content)
        except Exception:  # a streamed body: not counted
            size = 0
        with self._lock:
            self.stats["requests"] += 1
            self.stats["bytes_sent"] += size

    def _bump(self, name: str, k: int = 1) -> None:
        with self._lock:
            self.stats[name] += k

    def cache_key(self, image_hash: str, instruction: str, response: str) -> str:
        return JudgeCache.key(self.model, self.prompt_id, image_hash, instruction, response)

    # ------------------------------------------------------------------------------------------ requests

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.backoff_max_s, max(0.0, retry_after))
        base = min(self.backoff_max_s, self.backoff_s * 2 ** attempt)
        with self._lock:
            return base * (0.5 + 0.5 * self._rng.random())

    def _request(self, image_url: str, instruction: str, responses: list[str]) -> tuple[bool, list, list, str, int]:
        """One task with retries: (ok, scores, reasons, error, attempts)."""
        oa = self._errors
        pointwise = self.mode == "pointwise"
        messages = judge_messages(self.prompt, image_url, instruction, responses[0] if pointwise else responses)
        extra: dict[str, Any] = {"response_format": {"type": "json_object"}} if self.json_mode else {}
        max_tokens = 120 if pointwise else 40 + 8 * len(responses)
        error = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                completion = self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=0, max_tokens=max_tokens, **extra)
                content = completion.choices[0].message.content
                scores, reasons = parse_reply(content, None if pointwise else len(responses))
                return True, scores, reasons, "", attempt + 1
            except JudgeParseError as exc:
                error = f"malformed reply: {exc}"
            except oa.APITimeoutError:
                error = f"timeout after {self.timeout_s:g} s"
            except oa.APIConnectionError as exc:
                error = f"connection error: {exc}"
            except oa.APIStatusError as exc:
                status = exc.status_code
                error = f"HTTP {status}: {_error_message(exc)}"
                if status not in RETRYABLE_STATUS and status < 500:
                    return False, [], [], self.redact(error), attempt + 1
                retry_after = _retry_after(exc)
            except (oa.APIResponseValidationError, oa.APIError, AttributeError, IndexError, TypeError,
                    ValueError) as exc:
                error = f"malformed reply: {type(exc).__name__}: {exc}"
            if attempt < self.max_retries:
                self._bump("retries")
                time.sleep(self._backoff(attempt, retry_after))
        return False, [], [], self.redact(error), self.max_retries + 1

    def _run_task(self, task: _Task, items: Sequence[JudgeItem], urls: dict[int, str]) -> tuple[bool, list, list, str, int]:
        item = items[task.item]
        ok, scores, reasons, error, attempts = self._request(urls[task.item], item.instruction, task.responses)
        if ok and self.cache is not None:
            self.cache.put_many([(k, self.model, self.prompt_id, item.image_hash, item.instruction, r, s, rs)
                                 for k, r, s, rs in zip(task.keys, task.responses, scores, reasons, strict=True)])
        return ok, scores, reasons, error, attempts

    def judge(self, items: Sequence[JudgeItem], progress: bool = False) -> list[list[JudgeOutcome]]:
        """Score every response of every item; ``out[i][j]`` answers ``items[i].responses[j]``.

        Cached answers are used without a request; duplicates within an item (and, pointwise, across items)
        are asked once. Failed requests give ``JudgeOutcome(nan, ok=False, error=...)``.
        """
        from tqdm.auto import tqdm

        out: list[list[JudgeOutcome | None]] = [[None] * len(it.responses) for it in items]
        keys = [[self.cache_key(it.image_hash, it.instruction, str(r)) for r in it.responses] for it in items]
        hits = self.cache.get_many([k for ks in keys for k in ks]) if self.cache is not None else {}
        tasks: list[_Task] = []
        by_key: dict[str, _Task] = {}
        for i, it in enumerate(items):
            missing: dict[str, str] = {}
            for j, (r, k) in enumerate(zip(it.responses, keys[i], strict=True)):
                if k in hits:
                    s, reason = hits[k]
                    out[i][j] = JudgeOutcome(s, True, reason, cached=True)
                    self._bump("cache_hits")
                else:
                    missing.setdefault(k, str(r))
            if not missing:
                continue
            if self.mode == "listwise":
                tasks.append(_Task(i, list(missing.values()), list(missing)))
                continue
            for k, r in missing.items():
                if k in by_key:
                    by_key[k].users.append((i, r))
                else:
                    by_key[k] = _Task(i, [r], [k])
                    tasks.append(by_key[k])
        self._bump("tasks", len(tasks))
        if not tasks:
            return out  # type: ignore[return-value]

        urls: dict[int, str] = {}
        for t in tasks:
            if t.item not in urls:
                urls[t.item] = png_data_url(items[t.item].image)
        results: dict[int, tuple] = {}
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="judge")
        bar = tqdm(total=len(tasks), desc=f"judge ({self.mode})", disable=not progress, leave=False)
        try:
            pending = {pool.submit(self._run_task, t, items, urls): n for n, t in enumerate(tasks)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    results[pending.pop(fut)] = fut.result()
                    bar.update(1)
        finally:
            bar.close()
            pool.shutdown(wait=True, cancel_futures=True)

        for n, t in enumerate(tasks):
            ok, scores, reasons, error, attempts = results[n]
            if ok:
                self._bump("responses_scored", len(t.responses))
            else:
                self._bump("failures")
            answer = {}
            for idx, r in enumerate(t.responses):
                answer[r] = (JudgeOutcome(scores[idx], True, reasons[idx], attempts=attempts) if ok
                             else JudgeOutcome(float("nan"), False, error=error, attempts=attempts))
            targets = [(t.item, r) for r in t.responses] + t.users
            for i, r in targets:
                for j, resp in enumerate(items[i].responses):
                    if out[i][j] is None and str(resp) == r:
                        out[i][j] = answer[r]
        return out  # type: ignore[return-value]


def _error_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            code = inner.get("code")
            return f"{inner['message']}" + (f" ({code})" if code else "")
    return str(getattr(exc, "message", exc))


def _retry_after(exc) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


# =============================================================================================== endpoints

def judge_base_url(cfg: Preset) -> str | None:
    """``OPENAI_BASE_URL`` if set, else ``models.judge_base_url``; None when both are empty."""
    return os.environ.get("OPENAI_BASE_URL") or cfg.models.judge_base_url or None


def uses_local_judge(cfg: Preset) -> bool:
    """True when this preset's judge is the shapes world's own server (shapes world, no endpoint configured)."""
    return cfg.world_kind == "shapes" and judge_base_url(cfg) is None


def cache_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "mas" / CACHE_NAME


@contextmanager
def open_judge(cfg: Preset, run_dir: str | Path, *, noise: float | None = None,
               splits: dict[str, list[W.Scene]] | None = None, server_index: W.SceneIndex | None = None,
               use_cache: bool = True, **client_kwargs) -> Iterator[JudgeClient]:
    """A :class:`JudgeClient` for this preset, with the run's cache; starts and stops the local judge if needed.

    Shapes world without an endpoint: a :class:`~m3po_utils.judge_server.JudgeServer` on 127.0.0.1 with
    ``noise`` (default ``cfg.mas.judge_noise``); the client is given a placeholder key, never the real one, and
    ``client.server`` is the server. Otherwise the configured endpoint and ``cfg.models.judge_model``.
    """
    mc = cfg.mas
    kwargs: dict[str, Any] = dict(mode=mc.judge_mode, prompt_version=mc.prompt_version, concurrency=mc.concurrency,
                                  max_retries=mc.max_retries, timeout_s=mc.timeout_s, seed=mc.seed,
                                  cache=cache_path(run_dir) if use_cache else None)
    kwargs.update(client_kwargs)
    if uses_local_judge(cfg):
        from .judge_server import JudgeServer

        level = mc.judge_noise if noise is None else float(noise)
        if server_index is not None:
            server = JudgeServer(None, cfg.world, index=server_index, noise=level, seed=mc.seed)
        else:
            server = JudgeServer.for_run(cfg, run_dir, splits=splits, noise=level)
        with server, JudgeClient(server.base_url, server.model_id, api_key=LOCAL_KEY, **kwargs) as client:
            client.server = server
            yield client
        return
    if noise:
        raise JudgeConfigError("judge noise is a knob of the shapes world's local judge; this preset uses "
                               f"{judge_base_url(cfg) or 'OpenAI'}")
    with JudgeClient(judge_base_url(cfg), cfg.models.judge_model, **kwargs) as client:
        client.server = None
        yield client


# =============================================================================================== MAS

def read_candidates(run_dir: str | Path) -> pd.DataFrame:
    """Notebook 01's candidates (``generation.load_candidates``) as a DataFrame with the columns MAS needs."""
    try:
        from .generation import load_candidates
    except ImportError:
        load_candidates = None
    run = Path(run_dir)
    if load_candidates is not None:
        table = load_candidates(run)
    else:
        from datasets import load_from_disk

        folder = run / "candidates"
        if not folder.exists():
            raise FileNotFoundError(f"{folder} does not exist; run notebook 01 (candidates) for this run directory")
        table = load_from_disk(str(folder))
    return candidates_frame(table)


def candidates_frame(table) -> pd.DataFrame:
    """A candidates table (datasets.Dataset or DataFrame) reduced to the columns MAS reads, in prompt order."""
    wanted = [*CANDIDATE_COLUMNS, "scene_id", "family"]
    if hasattr(table, "column_names") and hasattr(table, "select_columns"):
        missing = [c for c in CANDIDATE_COLUMNS if c not in table.column_names]
        if not missing:
            table = table.select_columns([c for c in wanted if c in table.column_names])
        cols = table.column_names
        df = table.to_pandas() if not missing else None
    else:
        df = pd.DataFrame(table)
        cols = list(df.columns)
        missing = [c for c in CANDIDATE_COLUMNS if c not in cols]
    if missing:
        raise ValueError(f"the candidates table lacks column(s) {', '.join(missing)} (has {', '.join(cols)}); "
                         "rerun notebook 01")
    df = df[[c for c in wanted if c in df.columns]].copy()
    if "family" not in df:
        df["family"] = "free"
    df["text"] = df["text"].fillna("").astype(str)
    return df.reset_index(drop=True)


def judge_items(df: pd.DataFrame, load_image: Callable[[str], Image.Image]) -> tuple[list[JudgeItem], list[np.ndarray]]:
    """One JudgeItem per prompt (candidates in table order) and, for each, the row positions it covers."""
    items, rows = [], []
    hashes: dict[str, str] = {}
    for _, group in df.groupby("prompt_id", sort=False):
        ref = str(group["image"].iloc[0])
        image = load_image(ref)
        if ref not in hashes:
            hashes[ref] = W.image_key(image)
        items.append(JudgeItem(image, str(group["instruction"].iloc[0]), group["text"].tolist(), hashes[ref]))
        rows.append(group.index.to_numpy())
    return items, rows


def combine(clip_score: Sequence[float], judge_score: Sequence[float], judge_ok: Sequence[bool],
            cfg: MasConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(mas, mas_ok)``: the weighted mean of the two [0, 1] scores; NaN where the judge was needed and failed."""
    c = np.asarray(clip_score, dtype=np.float64)
    j = np.asarray(judge_score, dtype=np.float64)
    ok = np.asarray(judge_ok, dtype=bool)
    wc, wj = float(cfg.clip_weight), float(cfg.judge_weight)
    if wj == 0:
        mas = c.copy()
    else:
        mas = (wc * np.nan_to_num(c, nan=0.0) + wj * np.where(ok, j, 0.0)) / (wc + wj)
        mas = np.where(ok & (np.isfinite(c) | (wc == 0)), mas, np.nan)
    mas = np.clip(mas, 0.0, 1.0)
    return mas, np.isfinite(mas)


def score_candidates(df: pd.DataFrame, cfg: MasConfig, load_image: Callable[[str], Image.Image], *,
                     clip: ClipScorer | ClipScores | None = None, judge: JudgeClient | None = None,
                     progress: bool = False) -> pd.DataFrame:
    """CLIP score, judge score and MAS for every candidate of ``df`` (a :func:`candidates_frame`).

    ``clip``: a scorer, or the :class:`ClipScores` it already gave for these rows; None: CLIP columns are NaN
    (allowed only with ``clip_weight = 0``). ``judge`` None: judge columns are NaN (only with
    ``judge_weight = 0``).
    """
    df = df.reset_index(drop=True)
    n = len(df)
    out = pd.DataFrame({"prompt_id": df["prompt_id"].astype(str), "cand_idx": df["cand_idx"].astype(int),
                        "family": df["family"].astype(str)})
    if clip is not None:
        cs = clip if isinstance(clip, ClipScores) else clip.score(df["image"].astype(str).tolist(),
                                                                   df["text"].tolist(), load_image)
        if len(cs.raw) != n:
            raise ValueError(f"the CLIP scores cover {len(cs.raw)} rows, the table has {n}")
        out["clip_raw"] = cs.raw
        out["clip_score"] = normalise_clip(cs.raw, out["prompt_id"].to_numpy(), cfg.clip_norm)
        out["clip_truncated"] = cs.truncated
    else:
        if cfg.clip_weight > 0:
            raise ValueError("mas.clip_weight > 0 needs a CLIP scorer (clip=)")
        out["clip_raw"] = out["clip_score"] = np.full(n, np.nan)
        out["clip_truncated"] = np.zeros(n, dtype=bool)
    judge_raw = np.full(n, np.nan)
    judge_ok = np.zeros(n, dtype=bool)
    errors = np.full(n, "", dtype=object)
    if judge is not None and cfg.judge_weight > 0:
        items, rows = judge_items(df, load_image)
        outcomes = judge.judge(items, progress=progress)
        for pos, res in zip(rows, outcomes, strict=True):
            for p, o in zip(pos, res, strict=True):
                judge_raw[p], judge_ok[p], errors[p] = o.score, o.ok, o.error
    elif cfg.judge_weight > 0:
        raise ValueError("mas.judge_weight > 0 needs a judge (judge=); set it to 0 for CLIP-only MAS")
    out["judge_raw"] = judge_raw
    out["judge_score"] = (judge_raw - 1.0) / 9.0
    out["judge_ok"] = judge_ok
    out["judge_error"] = errors.astype(str)
    out["mas"], out["mas_ok"] = combine(out["clip_score"], out["judge_score"], judge_ok, cfg)
    return out


def verifier_truth(df: pd.DataFrame, scenes: dict[str, W.Scene], world_cfg) -> np.ndarray:
    """The shapes world's ground truth for each candidate: ``world.verify(...).score`` in [0, 1]."""
    out = np.empty(len(df))
    for i, (sid, ins, text) in enumerate(zip(df["scene_id"], df["instruction"], df["text"], strict=True)):
        out[i] = W.verify(scenes[sid], ins, text, world_cfg).score
    return out


def save_mas(table: pd.DataFrame, run_dir: str | Path) -> Path:
    """Write the MAS table to ``run_dir/mas/scores/`` atomically (the judge cache beside it is untouched)."""
    from datasets import Dataset

    folder = Path(run_dir) / "mas" / SCORES_DIR
    from datasets.utils import logging as dlog

    ds = Dataset.from_pandas(table.reset_index(drop=True), preserve_index=False)
    was_on = dlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()  # one bar per save clutters the notebook
    try:
        with AtomicDir(folder) as tmp:
            ds.save_to_disk(str(tmp))
    finally:
        if was_on:
            dlog.enable_progress_bar()
    return folder


def load_mas(run_dir: str | Path) -> pd.DataFrame:
    """The MAS table notebook 02 wrote (one row per candidate; join on ``prompt_id, cand_idx``)."""
    from datasets import load_from_disk

    folder = Path(run_dir) / "mas" / SCORES_DIR
    if not folder.exists():
        raise FileNotFoundError(f"{folder} does not exist; run notebook 02 (MAS) for this run directory")
    return load_from_disk(str(folder)).to_pandas()


# =============================================================================================== agreement

def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties = Pearson of the ranks); NaN pairs dropped.

    NaN when fewer than 3 pairs remain or either side is constant.
    """
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 3:
        return float("nan")
    ra = pd.Series(a).rank(method="average").to_numpy()
    rb = pd.Series(b).rank(method="average").to_numpy()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def top1_agreement(df: pd.DataFrame, col: str, truth: str = "truth") -> float:
    """Share of prompts where the candidate ranked first by ``col`` is truly best (has the prompt's max truth).

    Only prompts whose candidates differ in truth count; a tie for first place by ``col`` scores the share of
    the tied candidates that are truly best (what a random tie-break would get on average).
    """
    vals = []
    for _, g in df.groupby("prompt_id", sort=False):
        t, s = g[truth].to_numpy(float), g[col].to_numpy(float)
        keep = np.isfinite(s) & np.isfinite(t)
        t, s = t[keep], s[keep]
        if t.size < 2 or t.max() == t.min():
            continue
        top = s == s.max()
        vals.append(float((t[top] == t.max()).mean()))
    return float(np.mean(vals)) if vals else float("nan")


def within_prompt_spearman(df: pd.DataFrame, col: str, truth: str = "truth") -> float:
    """Mean over prompts of Spearman(col, truth) among a prompt's candidates (prompts where both vary)."""
    vals = [spearman(g[col], g[truth]) for _, g in df.groupby("prompt_id", sort=False)]
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.mean(vals)) if vals else float("nan")


def agreement(df: pd.DataFrame, cols: Sequence[str] = ("clip_score", "judge_score", "mas"),
              truth: str = "truth") -> pd.DataFrame:
    """Per score column: Spearman with the truth over all candidates, mean within-prompt Spearman, top-1."""
    rows = {c: {"spearman": spearman(df[c], df[truth]), "within_prompt_spearman": within_prompt_spearman(df, c, truth),
                "top1": top1_agreement(df, c, truth), "n": int(np.isfinite(df[c].to_numpy(float)).sum())}
            for c in cols}
    return pd.DataFrame(rows).T


# =============================================================================================== contrasts

CONTRAST_FAMILIES = ("existence", "count", "position", "color", "describe")


def contrast_pairs(scenes: Sequence[W.Scene], world_cfg, seed: int = 0,
                   families: Sequence[str] = CONTRAST_FAMILIES) -> pd.DataFrame:
    """A right and a wrong answer per (scene, family): where can a scorer tell them apart?

    The right answer is the reference; the wrong one changes exactly what the family asks about: yes <-> no,
    the count +-1, another position, another colour, and for descriptions one object's colour. Only pairs the
    verifier separates (right = 1, wrong < 1) are kept. Columns: scene_id, image, family, instruction, right,
    wrong.
    """
    rng = np.random.default_rng(seed)
    g = world_cfg.grid
    rows = []
    for scene in scenes:
        for fam in families:
            ins = W.make_instruction(fam, scene, world_cfg, rng=rng)
            right = ins.reference
            if fam == "existence":
                wrong = "No" if right == "Yes" else "Yes"
            elif fam == "count":
                n = len(scene.objects)
                wrong = str(n + 1 if n == 1 or rng.random() < 0.5 else n - 1)
            elif fam == "position":
                obj = scene.obj(ins.args["shape"])
                others = [c for c in range(g * g) if c != obj.cell]
                wrong = W.position_phrase(int(rng.choice(others)), g)
            elif fam == "color":
                others = [c for c in world_cfg.colors if c != right]
                wrong = str(rng.choice(others))
            elif fam == "describe":
                k = int(rng.integers(len(scene.objects)))
                objs = list(scene.objects)
                o = objs[k]
                objs[k] = W.Obj(o.shape, str(rng.choice([c for c in world_cfg.colors if c != o.color])), o.cell)
                wrong = W.describe(W.Scene(scene.scene_id, scene.split, tuple(objs), scene.style_seed), world_cfg)
            else:
                raise ValueError(f"no contrast defined for family {fam!r}; choose from {', '.join(CONTRAST_FAMILIES)}")
            if (W.verify(scene, ins.text, right, world_cfg).score == 1.0
                    and W.verify(scene, ins.text, wrong, world_cfg).score < 1.0):
                rows.append({"scene_id": scene.scene_id, "image": f"scene:{scene.scene_id}", "family": fam,
                             "instruction": ins.text, "right": right, "wrong": wrong})
    return pd.DataFrame(rows)


def contrast_accuracy(pairs: pd.DataFrame, right_scores: Sequence[float], wrong_scores: Sequence[float]) -> pd.Series:
    """Per family: the share of pairs where the right answer scores higher (a tie counts one half)."""
    r, w = np.asarray(right_scores, float), np.asarray(wrong_scores, float)
    win = np.where(r > w, 1.0, np.where(r == w, 0.5, 0.0))
    win = np.where(np.isfinite(r) & np.isfinite(w), win, np.nan)
    return pd.Series(win, index=pairs.index).groupby(pairs["family"]).mean()


def contrast_frame(pairs: pd.DataFrame) -> pd.DataFrame:
    """The contrast pairs as a two-candidate-per-prompt table that :func:`score_candidates` accepts."""
    rows = []
    for i, p in pairs.reset_index(drop=True).iterrows():
        for j, col in enumerate(("right", "wrong")):
            rows.append({"prompt_id": f"c{i:05d}", "image": p["image"], "instruction": p["instruction"],
                         "cand_idx": j, "text": p[col], "scene_id": p["scene_id"], "family": p["family"]})
    return pd.DataFrame(rows)


def synthetic_candidates(prompt_rows: Sequence[dict], scenes: Sequence[W.Scene], world_cfg, n_candidates: int = 4,
                         p_right: float = 0.4, seed: int = 0) -> pd.DataFrame:
    """A candidates table without a model (tests, benchmarks): per prompt, each candidate is the reference
    answer with probability ``p_right``, else the reference of the same instruction asked about another scene
    (a plausible answer about the wrong image). ``prompt_rows`` as from :func:`prompts.shapes_prompts`.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for row in prompt_rows:
        family, params = W.parse_instruction(row["instruction"], world_cfg)
        for j in range(n_candidates):
            text = row["reference"]
            if rng.random() >= p_right:
                other = scenes[int(rng.integers(len(scenes)))]
                text = W.make_instruction(family, other, world_cfg, **params).reference
            rows.append({**row, "cand_idx": j, "text": text})
    return pd.DataFrame(rows)


def json_safe(obj: Any) -> Any:
    """``obj`` with numpy scalars made plain and NaN / inf replaced by None (strict JSON for results files)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
