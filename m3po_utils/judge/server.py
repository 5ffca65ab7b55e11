"""The shapes world's LVLM judge, served on 127.0.0.1 behind the OpenAI chat-completions protocol.

The judge that notebook 02 calls is an HTTP server that speaks the same protocol as OpenAI, vLLM or Ollama,
so the client code in :mod:`m3po_utils.mas` is the code that would call GPT-4o. It answers

* ``GET  /v1/models``            the one model it serves (``shapes-judge``, or ``shapes-judge-noise2`` ...);
* ``POST /v1/chat/completions``  a judge prompt built by :mod:`m3po_utils.mas` (image as a base64 data URL,
  the instruction and one or several responses as a JSON block after ``INPUT (JSON):``).

How it judges: it decodes the image, finds the scene whose rendering has exactly those pixels
(:class:`world.SceneIndex`, by :func:`world.image_key`), scores each response with the ground-truth verifier
(:func:`world.verify`, a score ``v`` in [0, 1]) and maps it to the 1-10 scale the prompt asks for::

    score = clip(round(1 + 9 * v + noise), 1, 10),   noise ~ Normal(0, judge_noise)

``judge_noise`` (0 = a perfect judge) makes it an imperfect judge in a controlled way. The noise is drawn from
a generator seeded by ``(seed, image, instruction, response)``: the same question always gets the same answer
(a retry, a rerun, pointwise or listwise), different responses get independent noise. A server with noise
reports a different model id (``shapes-judge-noise2``), so cached answers of two noise levels never mix.

Errors are OpenAI-style JSON (``{"error": {"message", "type", "param", "code"}}``) with a proper HTTP status:
400 for a body that is not JSON, a prompt it cannot parse, an image it does not know (``unknown_image``) or an
instruction that matches no template (``unknown_instruction``); 404 for an unknown model or path.

Fault injection for tests: ``faults`` lists what the i-th chat request gets (``"ok"``, ``"429"``, ``"500"``,
``"503"``, ``"401"``, ``"hang"``, ``"garbage"`` = a completion whose text is not the JSON asked for,
``"not_json"`` = a 200 reply whose body is not JSON, ``"constant"`` = a well-formed reply that gives every
response the score 5, ``"trickle"`` = the headers at once, then the body one byte every ``trickle_s`` seconds);
later requests get ``default_fault``.

From Python::

    with JudgeServer(scenes, cfg.world, noise=1.0) as srv:
        OpenAI(base_url=srv.base_url, api_key="local").chat.completions.create(model=srv.model_id, ...)

From the command line (serves until Ctrl-C or SIGTERM)::

    python -m m3po_utils.judge --run-dir runs/shapes [--port 8765] [--noise 1.0]
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from m3po_utils import dialogue
from m3po_utils import shapes as W
from m3po_utils.config import WorldConfig
from m3po_utils.judge.protocol import INPUT_MARKER
from m3po_utils.judge.self_judge import self_scores

DEFAULT_MODEL = "shapes-judge"
FAULTS = ("ok", "429", "500", "503", "401", "hang", "garbage", "not_json", "constant", "trickle")
MAX_BODY = 32 * 2**20


class JudgeRequestError(Exception):
    """A request the judge cannot answer: becomes an OpenAI-style error reply."""

    def __init__(self, status: int, message: str, code: str, etype: str = "invalid_request_error",
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.etype, self.param = status, message, code, etype, param


def judge_score(verifier_score: float, noise: float, rng_seed: int) -> int:
    """Map a verifier score in [0, 1] to the judge's 1-10 scale, with seeded Gaussian noise of std ``noise``."""
    s = 1.0 + 9.0 * float(verifier_score)
    if noise > 0:
        s += float(np.random.default_rng(rng_seed).normal(0.0, noise))
    return int(min(10, max(1, round(s))))


def noise_seed(seed: int, image_key: str, instruction: str, response: str) -> int:
    """The noise generator's seed for one (image, instruction, response): content only, never request order."""
    blob = json.dumps([int(seed), image_key, instruction, response], ensure_ascii=False).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little")


def model_id_for(noise: float, base: str = DEFAULT_MODEL) -> str:
    """``shapes-judge`` for a perfect judge, ``shapes-judge-noise1.5`` for one with noise 1.5."""
    return base if noise == 0 else f"{base}-noise{noise:g}"


ASSESSORS = ("truth", "yes", "prior", "short", "self")


@dataclass(frozen=True)
class Assessor:
    """How the local judge turns an answer into a score when it is not the truth itself (notebook 11).

    * ``truth``: the verifier's score (the default judge);
    * ``yes``: a judge biased towards "yes": a yes/no answer saying yes gets ``strength`` added;
    * ``prior``: a judge that shares the model's prior: it believes each absent co-occurrence mate of a present
      shape is there with probability ``strength`` (seeded per scene and shape) and verifies against that scene;
    * ``short``: a judge that likes short answers: up to ``strength`` added, falling to 0 at 8 words;
    * ``self``: the base model judging itself — its own P(yes) of the answer's claims
      (:mod:`m3po_utils.judge.self_judge`; the server needs a ``model_view``).

    ``verdict_weight``: the share of a yes/no answer's score its verdict carries (0.5: a right "Yes" with a wrong
    clause scores 0.5). ``noise_per_nat``: noise that grows on answers the base model finds unlikely — the
    server's noise std plus this much per nat of the answer's mean per-token surprisal (needs a ``model_view``).
    """

    name: str = "truth"
    strength: float = 0.0
    verdict_weight: float = 0.5
    noise_per_nat: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in ASSESSORS:
            raise ValueError(f"assessor {self.name!r} is unknown; choose from {ASSESSORS}")
        if not 0 <= self.verdict_weight <= 1 or self.strength < 0 or self.noise_per_nat < 0:
            raise ValueError("an assessor needs verdict_weight in [0, 1], strength >= 0 and noise_per_nat >= 0")

    @property
    def needs_model(self) -> bool:
        return self.name == "self" or self.noise_per_nat > 0

    def tag(self) -> str:
        """What the judge's model id adds for this assessor (cached answers of two assessors never mix)."""
        out = "" if self.name == "truth" else f"-{self.name}" + (f"{self.strength:g}" if self.strength else "")
        if self.verdict_weight != 0.5:
            out += f"-vw{self.verdict_weight:g}"
        if self.noise_per_nat:
            out += f"-lownoise{self.noise_per_nat:g}"
        return out


def believed_scene(scene: W.Scene, cfg: WorldConfig, q: float, seed: int) -> W.Scene:
    """``scene`` as a judge that shares the prior sees it: each absent mate of a present shape believed there with
    probability ``q`` (a seeded coin per scene and shape), in a free cell with a seeded colour."""
    objects = list(scene.objects)
    free = [c for c in range(cfg.grid * cfg.grid) if c not in {o.cell for o in objects}]
    for mate in W.missing_mates(scene, cfg):
        rng = np.random.default_rng(noise_seed(seed, scene.scene_id, "prior", mate))
        if free and rng.random() < q:
            objects.append(W.Obj(mate, cfg.colors[int(rng.integers(len(cfg.colors)))],
                                 free.pop(int(rng.integers(len(free))))))
    return scene if len(objects) == len(scene.objects) else W.Scene(scene.scene_id, scene.split, tuple(objects),
                                                                    scene.style_seed)


class JudgeServer:
    """An OpenAI-compatible judge on 127.0.0.1 that knows the ground truth of ``scenes`` (see module docs).

    ``port=0`` picks a free port; :attr:`base_url` is what an OpenAI client needs. Use it as a context manager
    (or :meth:`start` / :meth:`stop`). ``index`` lets several servers share one :class:`world.SceneIndex`.
    ``require_key``: answer 401 unless the request carries ``Authorization: Bearer <require_key>``.
    :attr:`stats` counts chat requests, replies by status, request-body bytes, the largest number of requests
    handled at the same time, and the sha256 of every chat request body (:attr:`bodies`) and of those answered
    with scores (:attr:`answered_bodies`), so tests can count repeated requests.
    """

    def __init__(self, scenes: Iterable[W.Scene] | None, world_cfg: WorldConfig, *, noise: float = 0.0, seed: int = 0,
                 model: str = DEFAULT_MODEL, host: str = "127.0.0.1", port: int = 0,
                 index: W.SceneIndex | None = None, faults: Sequence[str] = (), default_fault: str = "ok",
                 hang_s: float = 30.0, retry_after: float | None = None, require_key: str | None = None,
                 trickle_s: float = 5.0, assessor: Assessor | None = None, model_view=None):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"host={host!r}: the judge server binds to the loopback interface only (127.0.0.1)")
        if noise < 0:
            raise ValueError(f"noise={noise} must be >= 0 (the std of the noise added to the 1-10 score)")
        for f in (*faults, default_fault):
            if f not in FAULTS:
                raise ValueError(f"fault {f!r} is unknown; choose from {', '.join(FAULTS)}")
        if index is None:
            if scenes is None:
                raise ValueError("pass the scenes the judge should know (or a prebuilt SceneIndex as index=)")
            index = W.SceneIndex(scenes, world_cfg)
        self.index, self.world_cfg = index, world_cfg
        self.noise, self.seed = float(noise), int(seed)
        self.assessor = assessor or Assessor()
        if self.assessor.needs_model and model_view is None:
            raise ValueError(f"assessor {self.assessor} reads the base model: pass model_view= (a "
                             "judge.self_judge.ModelView)")
        self.model_view = model_view
        self.model_id = model_id_for(self.noise, model) + self.assessor.tag()
        self.host, self._port = host, int(port)
        self.faults, self.default_fault = list(faults), default_fault
        self.hang_s, self.retry_after, self.require_key = float(hang_s), retry_after, require_key
        self.trickle_s = float(trickle_s)
        self.stats: dict[str, Any] = {"requests": 0, "chat_requests": 0, "answered": 0, "bytes_received": 0,
                                      "status": Counter(), "max_inflight": 0}
        self.bodies: list[str] = []
        self.answered_bodies: list[str] = []
        self._inflight = 0
        self._lock = threading.Lock()
        self._release = threading.Event()  # set on stop(): wakes hanging handlers
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def for_splits(cls, cfg, splits: dict[str, list[W.Scene]], *, which: Sequence[str] = ("pref", "eval"),
                   **kwargs) -> JudgeServer:
        """A judge for a run's shapes world (the scenes of ``which`` splits; seed from ``cfg.mas``)."""
        if cfg.world_kind != "shapes":
            raise ValueError(f"preset {cfg.name!r} is not a shapes-world preset; point models.judge_base_url "
                             "(or OPENAI_BASE_URL) at an OpenAI-compatible judge instead")
        scenes = [s for name in which for s in splits.get(name, [])]
        kwargs.setdefault("seed", cfg.mas.seed)
        return cls(scenes, cfg.world, **kwargs)

    # ------------------------------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the judge server is not running; use it as a context manager or call start()")
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> JudgeServer:
        if self._httpd is not None:
            return self
        handler = type("JudgeHandler", (_Handler,), {"judge": self})
        self._release.clear()
        self._httpd = ThreadingHTTPServer((self.host, self._port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="shapes-judge", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd, self._thread = None, None

    def __enter__(self) -> JudgeServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self._httpd is not None else "stopped"
        return f"JudgeServer(model={self.model_id!r}, scenes={len(self.index)}, noise={self.noise:g}, {where})"

    # ------------------------------------------------------------------------------------------ judging

    def _next_fault(self) -> str:
        with self._lock:
            i = self.stats["chat_requests"]
            self.stats["chat_requests"] += 1
        return self.faults[i] if i < len(self.faults) else self.default_fault

    def answer(self, body: dict) -> dict:
        """The chat-completion reply to a parsed request ``body`` (raises JudgeRequestError)."""
        model = body.get("model")
        if model != self.model_id:
            raise JudgeRequestError(404, f"The model {model!r} does not exist; this judge serves {self.model_id!r}",
                                    "model_not_found", param="model")
        image, text = _user_content(body.get("messages"))
        scene = self.index.lookup(image)
        if scene is None:
            raise JudgeRequestError(400, f"the image ({image.width}x{image.height}) matches none of the "
                                    f"{len(self.index)} scenes this judge knows; it judges rendered shapes-world "
                                    "scenes only", "unknown_image", param="messages")
        payload = _input_block(text)
        instruction = payload.get("instruction")
        if not isinstance(instruction, str):
            raise JudgeRequestError(400, "the INPUT block has no 'instruction' string", "unparseable_prompt")
        history = payload.get("conversation", [])
        if history:      # a dialogue: the instruction is its last question, asked after these turns
            try:
                instruction = dialogue.from_messages([*history, {"role": "user", "content": instruction}])
            except (dialogue.DialogueError, AttributeError, KeyError, TypeError):
                raise JudgeRequestError(400, "the INPUT block's 'conversation' is not a list of alternating user / "
                                        "assistant turns {'role', 'content'}", "unparseable_prompt") from None
        listwise = "responses" in payload
        responses = payload.get("responses") if listwise else [payload.get("response")]
        if not isinstance(responses, list) or not responses or not all(isinstance(r, str) for r in responses):
            raise JudgeRequestError(400, "the INPUT block needs 'response' (a string) or 'responses' (a non-empty "
                                    "list of strings)", "unparseable_prompt")
        key = W.image_key(image)
        try:
            values, reasons = self._values(scene, image, instruction, responses)
        except W.UnknownInstruction as exc:
            raise JudgeRequestError(400, str(exc), "unknown_instruction", param="messages") from None
        noise = [self.noise] * len(responses)
        if self.assessor.noise_per_nat:
            noise = [self.noise + self.assessor.noise_per_nat * s
                     for s in self.model_view.surprisal(image, instruction, responses)]
        scores = [judge_score(v, sd, noise_seed(self.seed, key, instruction, r))
                  for v, sd, r in zip(values, noise, responses, strict=True)]
        content = ({"scores": scores, "reasons": reasons} if listwise
                   else {"score": scores[0], "reason": reasons[0]})
        return _completion(self.model_id, json.dumps(content))


def _values(self, scene: W.Scene, image, instruction: str, responses: list[str]) -> tuple[list[float], list[str]]:
    """Each response's score in [0, 1] under the server's assessor, with the reason."""
    a, cfg = self.assessor, self.world_cfg
    if a.name == "self":
        from_claims = self_scores(self.model_view, image, instruction, responses, a.verdict_weight)
        return list(from_claims[0]), list(from_claims[1])
    seen = believed_scene(scene, cfg, a.strength, self.seed) if a.name == "prior" else scene
    values, reasons = [], []
    for r in responses:
        verdict = W.verify(seen, instruction, r, cfg, verdict_weight=a.verdict_weight)
        v = verdict.score
        if a.name == "yes" and W.yes_no(r) == "yes":
            v = min(1.0, v + a.strength)
        elif a.name == "short":
            v = min(1.0, v + a.strength * max(0.0, 1.0 - len(r.split()) / 8))
        values.append(v)
        reasons.append(verdict.explanation)
    return values, reasons


JudgeServer._values = _values


def _user_content(messages: Any) -> tuple[Image.Image, str]:
    """The image and the text of the last user message (OpenAI's content-parts format)."""
    if not isinstance(messages, list) or not messages:
        raise JudgeRequestError(400, "'messages' must be a non-empty list", "invalid_messages", param="messages")
    user = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
    if user is None:
        raise JudgeRequestError(400, "no user message", "invalid_messages", param="messages")
    parts = user.get("content")
    if isinstance(parts, str):
        parts = [{"type": "text", "text": parts}]
    if not isinstance(parts, list):
        raise JudgeRequestError(400, "user content must be a string or a list of parts", "invalid_messages")
    texts = [p.get("text", "") for p in parts if isinstance(p, dict) and p.get("type") == "text"]
    urls = [p.get("image_url") for p in parts if isinstance(p, dict) and p.get("type") == "image_url"]
    if len(urls) != 1:
        raise JudgeRequestError(400, f"expected exactly one image_url part, got {len(urls)}", "missing_image"
                                if not urls else "too_many_images", param="messages")
    url = urls[0].get("url", "") if isinstance(urls[0], dict) else str(urls[0])
    head, sep, data = url.partition(",")
    if not sep or not head.startswith("data:image/") or ";base64" not in head:
        raise JudgeRequestError(400, "the image must be a base64 data URL (data:image/png;base64,...); this local "
                                "judge fetches nothing", "invalid_image", param="messages")
    try:
        with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as img:
            image = img.convert("RGB")
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as exc:
        raise JudgeRequestError(400, f"the image data URL cannot be decoded ({type(exc).__name__})",
                                "invalid_image", param="messages") from None
    return image, "\n".join(texts)


def _input_block(text: str) -> dict:
    head, sep, tail = text.rpartition(INPUT_MARKER)
    if not sep:
        raise JudgeRequestError(400, f"the prompt has no {INPUT_MARKER!r} block; this judge understands the "
                                "prompts of m3po_utils.mas only", "unparseable_prompt")
    try:
        payload = json.loads(tail.strip())
    except json.JSONDecodeError as exc:
        raise JudgeRequestError(400, f"the INPUT block is not valid JSON ({exc.msg})", "unparseable_prompt") from None
    if not isinstance(payload, dict):
        raise JudgeRequestError(400, "the INPUT block must be a JSON object", "unparseable_prompt")
    return payload


def _completion(model: str, content: str) -> dict:
    return {"id": "chatcmpl-" + hashlib.sha256(content.encode()).hexdigest()[:24], "object": "chat.completion",
            "created": int(time.time()), "model": model, "system_fingerprint": "m3po-shapes-judge",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}


def _error(message: str, etype: str, code: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": etype, "param": param, "code": code}}


class _Handler(BaseHTTPRequestHandler):
    judge: JudgeServer  # set on the subclass made by JudgeServer.start
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses its connections
    server_version = "m3po-shapes-judge"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: avoid a 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request logging
        return

    def _send(self, status: int, payload: dict | bytes, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        with self.judge._lock:
            self.judge.stats["status"][status] += 1

    def _trickle(self, payload: dict) -> None:
        """Send ``payload`` a byte at a time, ``trickle_s`` apart, until done or the server stops."""
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.close_connection = True
        try:
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
                if self.judge._release.wait(self.judge.trickle_s):
                    return
        except OSError:          # the client gave up: what the fault is for
            return

    def _count(self) -> None:
        with self.judge._lock:
            self.judge.stats["requests"] += 1

    def do_GET(self) -> None:  # noqa: N802
        self._count()
        path = self.path.split("?")[0].rstrip("/")
        if path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": self.judge.model_id, "object": "model",
                                                         "created": 0, "owned_by": "m3po"}]})
        elif path == f"/v1/models/{self.judge.model_id}":
            self._send(200, {"id": self.judge.model_id, "object": "model", "created": 0, "owned_by": "m3po"})
        else:
            self._send(404, _error(f"unknown path {path!r}; try /v1/models", "invalid_request_error", "not_found"))

    def do_POST(self) -> None:  # noqa: N802
        self._count()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            self._send(413, _error(f"request body of {length} bytes is too large", "invalid_request_error",
                                   "request_too_large"))
            return
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0].rstrip("/")
        if path != "/v1/chat/completions":
            self._send(404, _error(f"unknown path {path!r}; the judge answers POST /v1/chat/completions",
                                   "invalid_request_error", "not_found"))
            return
        judge = self.judge
        digest = hashlib.sha256(raw).hexdigest()
        with judge._lock:
            judge.stats["bytes_received"] += len(raw)
            judge.bodies.append(digest)
            judge._inflight += 1
            judge.stats["max_inflight"] = max(judge.stats["max_inflight"], judge._inflight)
        try:
            self._chat(raw, digest)
        finally:
            with judge._lock:
                judge._inflight -= 1

    def _chat(self, raw: bytes, digest: str) -> None:
        judge = self.judge
        fault = judge._next_fault()
        if judge.require_key is not None or fault == "401":
            auth = self.headers.get("Authorization", "")
            if fault == "401" or auth != f"Bearer {judge.require_key}":
                # like OpenAI, echo (part of) the key that was sent: the client must keep it out of its records
                self._send(401, _error(f"Incorrect API key provided: {auth.removeprefix('Bearer ')}",
                                       "invalid_request_error", "invalid_api_key"))
                return
        if fault in ("429", "500", "503"):
            status = int(fault)
            headers = {"Retry-After": f"{judge.retry_after:g}"} if judge.retry_after is not None else {}
            etype, code = (("requests", "rate_limit_exceeded") if status == 429 else ("server_error", "server_error"))
            self._send(status, _error(f"injected fault: HTTP {status}", etype, code), headers)
            return
        if fault == "hang":
            judge._release.wait(judge.hang_s)
            self.close_connection = True
            return
        if fault == "not_json":
            self._send(200, b"<html>upstream proxy error</html>")
            return
        try:
            body = json.loads(raw.decode("utf-8"))
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except (UnicodeDecodeError, ValueError):
            self._send(400, _error("We could not parse the JSON body of your request.", "invalid_request_error",
                                   "invalid_json"))
            return
        try:
            reply = judge.answer(body)
        except JudgeRequestError as exc:
            self._send(exc.status, _error(exc.message, exc.etype, exc.code, exc.param))
            return
        except Exception as exc:  # a bug must still be an OpenAI-style reply, not a dropped connection
            self._send(500, _error(f"judge error: {type(exc).__name__}: {exc}", "server_error", "server_error"))
            return
        if fault == "garbage":
            reply["choices"][0]["message"]["content"] = "Great answer, I would rate it highly!"
        elif fault == "constant":      # valid JSON, no information: every response scored 5
            content = json.loads(reply["choices"][0]["message"]["content"])
            for k in ("scores", "score"):
                if k in content:
                    content[k] = [5] * len(content[k]) if isinstance(content[k], list) else 5
            reply["choices"][0]["message"]["content"] = json.dumps(content)
        elif fault == "trickle":       # a reply that never finishes in time: a byte every trickle_s seconds
            self._trickle(reply)
            return
        else:
            with judge._lock:
                judge.stats["answered"] += 1
                judge.answered_bodies.append(digest)
        self._send(200, reply)
