"""A content-addressed cache of summarizer calls, in SQLite.

The key of a call is the SHA-256 of everything that decides its output: backend, model, prompt version,
params, level, target length and input text. So a rerun, or a run resumed after a crash, never pays for
the same summary twice, and a change of backend, settings or input never reads a stale one.

The database runs in WAL mode and every `put` commits, so a process killed at any point loses at most
the call in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

from xbook.scaffold.summarizer import Summarizer, check_level, summarizer_metadata


def cache_key(summarizer: Summarizer, level: str, target_words: int, text: str) -> str:
  """The hex SHA-256 that addresses one summarizer call."""
  identity = summarizer_metadata(summarizer)
  payload = json.dumps([identity["backend"], identity["model"], identity["prompt_version"],
                        identity["params"], level, target_words, text],
                       sort_keys=True, ensure_ascii=False, separators=(",", ":"))
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class SummaryCache:
  """Summaries by cache key in an SQLite file; counts its hits and misses.

  Use as a context manager, or call `close()`.

  Attributes:
    path: the database file.
    hits: `get` calls that found a summary.
    misses: `get` calls that did not.
  """

  def __init__(self, path: str | os.PathLike[str]) -> None:
    self.path = Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.hits = 0
    self.misses = 0
    self._db = sqlite3.connect(self.path)
    self._db.execute("PRAGMA journal_mode=WAL")
    self._db.execute("CREATE TABLE IF NOT EXISTS summaries "
                     "(key TEXT PRIMARY KEY, level TEXT NOT NULL, summary TEXT NOT NULL)")
    self._db.commit()

  def get(self, key: str) -> str | None:
    """The summary stored under `key`, or None."""
    row = self._db.execute("SELECT summary FROM summaries WHERE key = ?", (key,)).fetchone()
    if row is None:
      self.misses += 1
      return None
    self.hits += 1
    return row[0]

  def put(self, key: str, level: str, summary: str) -> None:
    """Store `summary` (of scaffold `level`, or `paper/<artifact>` for the paper format) under `key`
    and commit."""
    if not level.startswith("paper/"):
      check_level(level)
    self._db.execute("INSERT OR REPLACE INTO summaries (key, level, summary) VALUES (?, ?, ?)",
                     (key, level, summary))
    self._db.commit()

  def summarize(self, summarizer: Summarizer, text: str, level: str, target_words: int) -> str:
    """`summarizer.summarize(text, level, target_words)`, called only when not already cached."""
    key = cache_key(summarizer, level, target_words, text)
    summary = self.get(key)
    if summary is None:
      summary = summarizer.summarize(text, level, target_words)
      self.put(key, level, summary)
    return summary

  def __len__(self) -> int:
    return self._db.execute("SELECT COUNT(*) FROM summaries").fetchone()[0]

  def close(self) -> None:
    self._db.close()

  def __enter__(self) -> "SummaryCache":
    return self

  def __exit__(self, *exc_info: object) -> None:
    self.close()
