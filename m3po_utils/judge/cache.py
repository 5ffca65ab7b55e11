"""The judge's on-disk cache: every successful answer in SQLite, keyed by model, prompt, image, instruction and response."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class JudgeCacheCorrupt(RuntimeError):
    """The judge cache file cannot be read: the message names it and says what a rebuild costs."""

    def __init__(self, path: Path, error: str, entries: int | None = None):
        self.path, self.entries = path, entries
        held = f"it held {entries} answers; " if entries is not None else ""
        super().__init__(f"the judge cache {path} is unreadable ({error}); {held}move it aside "
                         f"(mv {path} {path}.corrupt) and rerun the notebook: every judge request it held is then "
                         "sent again (one per prompt listwise, one per distinct candidate pointwise). The series "
                         "never deletes it for you.")


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
        try:
            with self._lock:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS judge (key TEXT PRIMARY KEY, model TEXT, prompt_version TEXT, "
                    "image_hash TEXT, instruction TEXT, response TEXT, score REAL, reason TEXT, created REAL)")
                self._conn.commit()
                n = int(self._conn.execute("SELECT COUNT(*) FROM judge").fetchone()[0])
                bad = self._conn.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise JudgeCacheCorrupt(self.path, str(exc)) from exc
        if bad != "ok":
            self._conn.close()
            raise JudgeCacheCorrupt(self.path, f"integrity check: {bad}", n)

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
