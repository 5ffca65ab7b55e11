"""The judge client: OpenAI chat completions with retries, listwise or pointwise, cached; and the endpoint a preset uses."""

from __future__ import annotations

import ipaddress
import os
import re
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlparse, urlsplit, urlunsplit

from PIL import Image

from m3po_utils import shapes as W
from m3po_utils.config import Preset
from m3po_utils.judge.cache import JudgeCache
from m3po_utils.judge.protocol import PROMPTS, JudgeParseError, judge_messages, parse_reply, png_data_url
from m3po_utils.progress import Progress

LOCAL_KEY = "local-judge-needs-no-key"  # placeholder sent to the local judge instead of any real key

_deadline = threading.local()   # the monotonic time by which the request this thread is making must be answered


def _request_deadline() -> float | None:
    return getattr(_deadline, "at", None)


def _http_module():
    """The HTTP library the installed ``openai`` client is built on (``httpx``, or its successor ``httpx2``)."""
    import importlib

    import openai

    return importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])


def _deadline_transport():
    """A transport for the openai client's HTTP library that holds every request to the deadline of the task
    making it (``_deadline.at``): the wait for the reply is cut to the time left, and a reply that trickles in is
    stopped when it runs out — a socket read timeout alone restarts with every byte."""
    httpx = _http_module()

    class DeadlineStream(httpx.SyncByteStream):
        """A response body that stops at the request's deadline, however slowly its bytes trickle in."""

        def __init__(self, inner, at: float, request):
            self.inner, self.at, self.request = inner, at, request

        def __iter__(self):
            for chunk in self.inner:
                if time.monotonic() > self.at:
                    raise httpx.ReadTimeout("the request's overall deadline passed while its reply trickled in",
                                            request=self.request)
                yield chunk

        def close(self) -> None:
            self.inner.close()

    class DeadlineTransport(httpx.HTTPTransport):
        def handle_request(self, request):
            at = _request_deadline()
            if at is not None:
                left = at - time.monotonic()
                if left <= 0:
                    raise httpx.ReadTimeout("the request's overall deadline has passed", request=request)
                timeout = dict(request.extensions.get("timeout") or {})
                for phase in ("connect", "read", "write", "pool"):
                    timeout[phase] = min(timeout.get(phase) or left, left)
                request.extensions["timeout"] = timeout
            response = super().handle_request(request)
            if at is not None:
                response.stream = DeadlineStream(response.stream, at, request)
            return response

    return DeadlineTransport()




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


def is_loopback(url: str | None) -> bool:
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


class JudgeUnavailable(RuntimeError):
    """The judge fails every request the same way (wrong key, unknown model, dead URL, unparseable replies...):
    the client stopped instead of trying every prompt. ``kind`` is the failure class, ``done`` / ``total`` the
    requests tried / planned."""

    def __init__(self, message: str, kind: str, done: int, total: int):
        super().__init__(message)
        self.kind, self.done, self.total = kind, done, total


def failure_kind(error: str) -> str:
    """The class of one recorded failure (the ``error`` text :meth:`JudgeClient._request` returns)."""
    if error.startswith("connection error"):
        return "unreachable"
    if error.startswith("timeout"):
        return "timeout"
    m = re.match(r"HTTP (\d{3})", error)
    if m:
        code = int(m.group(1))
        return ("auth" if code in (401, 403) else "model" if code == 404 else "rate_limit" if code == 429
                else "server" if code >= 500 else "other")
    return "unparseable" if error.startswith("malformed reply") else "other"


def failure_advice(kind: str, where: str, model: str, example: str, settings: str = "") -> str:
    """One sentence per failure class: what happened and what to change."""
    return {
        "unreachable": f"the judge at {where} is unreachable; check OPENAI_BASE_URL / models.judge_base_url and "
                       "that the server is running",
        "timeout": f"requests to the judge at {where} time out; check the server, or raise mas.timeout_s (the wait "
                   "for each read) or mas.request_deadline_s (one request's whole time, retries included)",
        "auth": f"the judge at {where} refuses the API key; check OPENAI_API_KEY (it is read from the "
                "environment only)",
        "model": f"the judge at {where} does not serve model {model!r}; set models.judge_model to one it serves",
        "rate_limit": f"the judge at {where} keeps rate-limiting after every retry; lower mas.concurrency, raise "
                      "mas.max_retries or wait for the quota",
        "server": f"the judge at {where} keeps failing with server errors after every retry; try again later",
        "unparseable": f"the judge at {where} answers in a form the {settings or 'judge prompt'} cannot parse; "
                       "check models.judge_model, mas.judge_mode and mas.prompt_version",
        "other": f"the judge at {where} fails every request",
    }[kind] + f" (one failure: {example})"


class JudgeClient:
    """Scores responses with an LVLM judge over the OpenAI chat-completions protocol (see module docs).

    ``base_url=None`` is OpenAI itself. ``api_key=None`` reads ``OPENAI_API_KEY``; a loopback endpoint without a
    key gets a placeholder. ``cache``: a :class:`JudgeCache`, a path, or None (no cache). ``stats`` counts HTTP
    requests, request-body bytes, retries, cache hits and failures over the client's life.
    """

    def __init__(self, base_url: str | None, model: str, *, api_key: str | None = None, mode: str = "listwise",
                 prompt_version: str = "v1", concurrency: int = 4, max_retries: int = 4, timeout_s: float = 60.0,
                 cache: JudgeCache | str | Path | None = None, json_mode: bool = True, fail_after: int = 8,
                 request_deadline_s: float = 0.0, stage_deadline_s: float = 0.0):
        import openai

        if mode not in ("pointwise", "listwise"):
            raise JudgeConfigError(f"mode={mode!r} is unknown; choose 'pointwise' or 'listwise'")
        if prompt_version not in PROMPTS:
            raise JudgeConfigError(f"prompt_version={prompt_version!r} is unknown; versions: {', '.join(PROMPTS)}")
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0 or fail_after < 0 or request_deadline_s < 0 \
                or stage_deadline_s < 0:
            raise JudgeConfigError("need concurrency >= 1, max_retries >= 0, timeout_s > 0, fail_after >= 0 and "
                                   "deadlines >= 0")
        key = os.environ.get("OPENAI_API_KEY", "") if api_key is None else api_key
        if not key:
            if not is_loopback(base_url):
                raise JudgeConfigError(f"OPENAI_API_KEY is not set; the judge at {base_url or 'api.openai.com'} "
                                       "needs it (export OPENAI_API_KEY=...; never put it in a preset)")
            key = LOCAL_KEY
        self._secrets = [key] if key != LOCAL_KEY else []
        self.base_url, self.model, self.mode = base_url, model, mode
        self.prompt = PROMPTS[prompt_version]
        self.prompt_id = f"{prompt_version}/{mode}"  # the cache's "prompt version": listwise and pointwise differ
        self.concurrency, self.max_retries, self.timeout_s = concurrency, max_retries, float(timeout_s)
        self.json_mode = json_mode
        self.fail_after = int(fail_after)   # 0: never stop early
        self.request_deadline_s = float(request_deadline_s)   # 0: no overall limit per request (retries included)
        self.stage_deadline_s = float(stage_deadline_s)       # 0: no overall limit per judge() call
        self._owns_cache = cache is not None and not isinstance(cache, JudgeCache)
        self.cache = JudgeCache(cache) if self._owns_cache else cache
        self._lock = threading.Lock()
        self._task = threading.local()   # HTTP requests of the task this thread is running (retries included)
        self.stats: dict[str, int] = {"requests": 0, "bytes_sent": 0, "tasks": 0, "retries": 0, "failures": 0,
                                      "cache_hits": 0, "responses_scored": 0}
        self._http = openai.DefaultHttpxClient(event_hooks={"request": [self._on_request]},
                                               transport=_deadline_transport())
        # HTTP-level retries are the openai client's: 408, 409, 429, 5xx, timeouts and dropped connections, with
        # exponential backoff and jitter, honouring Retry-After; other statuses fail at once.
        self._client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=max_retries, timeout=self.timeout_s,
                                     http_client=self._http)
        self._errors = openai
        self.server = None  # the local JudgeServer when made by open_judge

    @property
    def where(self) -> str:
        """The endpoint in words (for messages): its URL, or OpenAI."""
        return self.base_url or "api.openai.com"

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
        self._task.requests = getattr(self._task, "requests", 0) + 1

    def _bump(self, name: str, k: int = 1) -> None:
        with self._lock:
            self.stats[name] += k

    def cache_key(self, image_hash: str, instruction: str, response: str) -> str:
        return JudgeCache.key(self.model, self.prompt_id, image_hash, instruction, response)

    # ------------------------------------------------------------------------------------------ requests

    def _request(self, image_url: str, instruction: str, responses: list[str]) -> tuple[bool, list, list, str, int]:
        """One task: (ok, scores, reasons, error, attempts). ``attempts`` counts HTTP requests, retries included.

        HTTP faults are retried inside the openai client (``max_retries``); a reply that is not the JSON asked for
        is asked again here, up to ``max_retries`` times, and then recorded as a failure.
        """
        pointwise = self.mode == "pointwise"
        messages = judge_messages(self.prompt, image_url, instruction, responses[0] if pointwise else responses)
        extra: dict[str, Any] = {"response_format": {"type": "json_object"}} if self.json_mode else {}
        max_tokens = 120 if pointwise else 40 + 8 * len(responses)
        self._task.requests = 0
        # the whole task — the openai client's retries and ours — must finish by this time (0: no limit)
        _deadline.at = time.monotonic() + self.request_deadline_s if self.request_deadline_s else None
        try:
            return self._attempts(messages, extra, max_tokens, pointwise, len(responses))
        finally:
            _deadline.at = None

    def _attempts(self, messages, extra, max_tokens, pointwise, n) -> tuple[bool, list, list, str, int]:
        """The requests of one task, retried on replies that cannot be parsed (see :meth:`_request`)."""
        oa = self._errors
        error, ok, scores, reasons = "", False, [], []
        for _ in range(self.max_retries + 1):
            try:
                completion = self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=0, max_tokens=max_tokens, **extra)
                content = completion.choices[0].message.content
                scores, reasons = parse_reply(content, None if pointwise else n)
                ok, error = True, ""
                break
            except JudgeParseError as exc:
                error = f"malformed reply: {exc}"
            except oa.APITimeoutError:
                at = _request_deadline()
                error = (f"timeout: no complete reply within mas.request_deadline_s={self.request_deadline_s:g} s"
                         if at is not None and time.monotonic() >= at else f"timeout after {self.timeout_s:g} s")
                break
            except oa.APIConnectionError as exc:
                error = f"connection error: {exc}"
                break
            except oa.APIStatusError as exc:
                error = f"HTTP {exc.status_code}: {_error_message(exc)}"
                break
            except (oa.APIResponseValidationError, oa.APIError, AttributeError, IndexError, TypeError,
                    ValueError) as exc:
                error = f"malformed reply: {type(exc).__name__}: {exc}"
        attempts = max(1, self._task.requests)
        self._bump("retries", attempts - 1)
        return ok, scores, reasons, self.redact(error), attempts

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
        watch = _FailureWatch(self.fail_after, timeout_after=max(2, self.concurrency))
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="judge")
        bar = Progress(len(tasks), f"judging ({self.mode})", unit="request", enabled=progress)
        stop_at = time.monotonic() + self.stage_deadline_s if self.stage_deadline_s else None
        abandoned = False
        try:
            pending = {pool.submit(self._run_task, t, items, urls): n for n, t in enumerate(tasks)}
            while pending:
                left = None if stop_at is None else max(0.0, stop_at - time.monotonic())
                done, _ = wait(pending, timeout=left, return_when=FIRST_COMPLETED)
                if not done:      # the stage's deadline passed with requests still out
                    for f in pending:
                        f.cancel()
                    abandoned = True
                    raise JudgeUnavailable(
                        f"judge stopped: {len(results)} of {len(tasks)} requests answered within "
                        f"mas.judge_deadline_s={self.stage_deadline_s:g} s, the overall time this stage may spend on "
                        f"the judge at {self.where}; check that it answers, or raise mas.judge_deadline_s (0 = no "
                        "limit). Answers already received stay in the cache; a rerun sends only the rest.",
                        "timeout", len(results), len(tasks))
                for fut in done:
                    res = results[pending.pop(fut)] = fut.result()
                    kind = watch.add(res[0], res[3])
                    bar.update(**({"failed": watch.failures} if watch.failures else {}))
                    if kind is not None:
                        for f in pending:
                            f.cancel()
                        abandoned = True      # requests still out are left to their own deadline
                        self._bump("failures", watch.failures)
                        raise JudgeUnavailable(
                            f"judge stopped after {len(results)} of {len(tasks)} requests, the last "
                            f"{watch.streak if watch.streak >= watch.timeout_after else 'most'} failing the same way: "
                            + failure_advice(kind, self.where, self.model, watch.example[kind],
                                             f"prompt {self.prompt_id}")
                            + f". Answers already received stay in the cache ({len(results) - watch.failures} "
                              "requests); after the fix, rerun the notebook and only the rest is sent.",
                            kind, len(results), len(tasks))
        finally:
            bar.close()
            # requests still out past the stage's deadline are left to their own deadline, not waited for
            pool.shutdown(wait=not abandoned, cancel_futures=True)

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


class _FailureWatch:
    """Decides when a judge is broken rather than flaky: ``fail_after`` consecutive failures of one class, or
    at least 90 % failures of one class over the last ``5 · fail_after`` requests (0 = never). Timeouts are
    expensive — each costs a request's whole deadline — so ``timeout_after`` consecutive ones are enough: a whole
    wave of concurrent requests timing out is a stalled judge, not a flaky one."""

    def __init__(self, fail_after: int, timeout_after: int | None = None):
        self.fail_after = fail_after
        self.timeout_after = min(fail_after, timeout_after) if timeout_after else fail_after
        self.recent: deque[str | None] = deque(maxlen=5 * fail_after)
        self.streak, self.last, self.failures = 0, None, 0
        self.example: dict[str, str] = {}

    def add(self, ok: bool, error: str) -> str | None:
        """Record one finished request; the failure class when the judge should be given up, else None."""
        kind = None if ok else failure_kind(error)
        if kind is not None:
            self.failures += 1
            self.example.setdefault(kind, error[:200])
        self.streak = self.streak + 1 if kind is not None and kind == self.last else int(kind is not None)
        self.last = kind
        self.recent.append(kind)
        if not self.fail_after:
            return None
        if kind is not None and self.streak >= (self.timeout_after if kind == "timeout" else self.fail_after):
            return kind
        if len(self.recent) == self.recent.maxlen:
            top = max(set(self.recent) - {None}, key=self.recent.count, default=None)
            if top is not None and self.recent.count(top) >= 0.9 * self.recent.maxlen:
                return top
        return None


def _error_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            code = inner.get("code")
            return f"{inner['message']}" + (f" ({code})" if code else "")
    return str(getattr(exc, "message", exc))


# Query parameters that carry a credential (``?api-key=...``, ``?token=...``, ``&sig=...``): compared lower-cased with
# ``-`` read as ``_``.
SECRET_PARAMS = ("key", "api_key", "apikey", "token", "access_token", "secret", "password", "sig", "signature", "auth")


def url_secrets(url: str) -> list[str]:
    """What in ``url`` is a credential: its user-info (``user:pw@``) and key-like query parameters (their names)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ["an unparseable URL"]
    found = []
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        found.append("a user name or password before the host")
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        norm = name.lower().replace("-", "_")
        if norm in SECRET_PARAMS or norm.endswith(("_key", "_token", "_secret")):
            found.append(f"the query parameter {name!r}")
    return found


def redact_url(url: str) -> str:
    """``url`` safe to print or store: user-info and the values of key-like query parameters replaced."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "&".join(f"{k}=<redacted>" if k.lower().replace("-", "_") in SECRET_PARAMS
                     or k.lower().replace("-", "_").endswith(("_key", "_token", "_secret")) else f"{k}={v}"
                     for k, v in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, ("<redacted>@" if "@" in parts.netloc else "") + netloc, parts.path, query,
                       ""))


class JudgeUrlError(JudgeConfigError):
    """An endpoint URL that carries a credential: refused before it is used, printed or stored anywhere."""


def checked_url(url: str | None, source: str) -> str | None:
    """``url`` if it carries no credential; else :class:`JudgeUrlError` naming ``source`` and what to move where
    (the URL itself appears only redacted)."""
    if not url:
        return None
    found = url_secrets(url)
    if found:
        raise JudgeUrlError(f"{source}={redact_url(url)!r} carries a credential ({', '.join(found)}); put the key in "
                            "OPENAI_API_KEY (read from the environment only) and give the endpoint without it, e.g. "
                            "http://127.0.0.1:8000/v1")
    return url


def judge_base_url(cfg: Preset) -> str | None:
    """``OPENAI_BASE_URL`` if set, else ``models.judge_base_url``; None when both are empty. Either is refused
    when it carries a credential (:func:`checked_url`), so no URL with a key reaches a message or a file."""
    env = os.environ.get("OPENAI_BASE_URL")
    if env:
        return checked_url(env, "OPENAI_BASE_URL")
    return checked_url(cfg.models.judge_base_url or None, "models.judge_base_url")


def uses_local_judge(cfg: Preset) -> bool:
    """True when this preset's judge is the shapes world's own server (shapes world, no endpoint configured)."""
    return cfg.world_kind == "shapes" and judge_base_url(cfg) is None
