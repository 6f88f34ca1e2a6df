"""Scaffold records of many books built on every core the test session may use (tests/conftest.py).

The extractive build of one book is single-threaded pure Python (no jax), and the shared corpus's 16 novels
take about 45 s on one core: `build_paper_records` spreads them over worker processes, longest books first
so that the workers finish together. Each record is what `build_scaffold` returns in the test process
itself; only where it is computed changes. Workers are spawned, never forked: the test process has
started jax's threads, which a fork would copy in an undefined state.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from typing import Any, Sequence

from xbook.books import Book


def _paper_record(book: Book) -> dict[str, Any]:
  from xbook.scaffold import ExtractiveSummarizer, build_scaffold
  return build_scaffold(book, ExtractiveSummarizer(), plan_format="paper")


def _usable_cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def build_paper_records(books: Sequence[Book]) -> dict[str, dict[str, Any]]:
  """{book id: its paper-format scaffold record (extractive summarizer)}, in the order of `books`."""
  workers = min(_usable_cores(), len(books))
  if workers <= 1:
    return {book.id: _paper_record(book) for book in books}
  longest_first = sorted(books, key=lambda book: -book.n_words)
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
    records = dict(zip((book.id for book in longest_first), pool.map(_paper_record, longest_first)))
  return {book.id: records[book.id] for book in books}
