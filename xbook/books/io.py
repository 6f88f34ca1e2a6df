"""Segmented books on disk: JSONL, one `Book.to_json()` record per line, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from xbook.atomic import atomic_open
from xbook.books.types import Book


def write_books(path: str | os.PathLike[str], books: Iterable[Book]) -> int:
  """Write books to `path` (replacing it only once every record is written); returns the count."""
  count = 0
  with atomic_open(path) as f:
    for book in books:
      f.write(json.dumps(book.to_json(), ensure_ascii=False) + "\n")
      count += 1
  return count


def read_books(path: str | os.PathLike[str]) -> Iterator[Book]:
  """Books from a JSONL file written by `write_books`; errors name the file and line."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"books file not found: {path} (write one with `xbook books segment`)")
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield Book.from_json(json.loads(line))
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}:{line_number}: not a book record ({type(e).__name__}: {e})") from e
