"""Measurements recorded in a scaffold's `checks`: tiling, compression per level, verbatim copying.

They describe a record; nothing here rejects one. An extractive summarizer copies whole sentences, so
its `max_copied_ngram` is naturally as long as its longest chosen sentence; for an abstractive backend
a long verbatim run says the summary is quoting rather than summarizing.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from xbook.books.types import Book

_TOKEN = re.compile(r"[^\W_]+")


def n_words(text: str) -> int:
  """Whitespace-separated words, the unit of every target and ratio in a scaffold."""
  return len(text.split())


def _tokens(text: str) -> list[str]:
  """Lowercased words without punctuation: what "verbatim" compares."""
  return _TOKEN.findall(text.lower())


def longest_copied_ngram(summary: str, source: str) -> int:
  """Length, in words, of the longest run of words of `summary` that occurs verbatim in `source`.

  Case and punctuation are ignored. Dynamic programming over the summary's words, vectorized over the
  source: `run[j]` is the length of the common run that ends at source word j.
  """
  vocabulary: dict[str, int] = {}
  source_ids = np.array([vocabulary.setdefault(t, len(vocabulary)) for t in _tokens(source)],
                        dtype=np.int64)
  run = np.zeros(len(source_ids) + 1, dtype=np.int64)  # shifted by one: run[j + 1] ends at word j
  longest = 0
  for token in _tokens(summary):
    extended = np.zeros_like(run)
    token_id = vocabulary.get(token)
    if token_id is not None:
      positions = np.flatnonzero(source_ids == token_id)
      extended[positions + 1] = run[positions] + 1
      longest = max(longest, int(extended[positions + 1].max()))
    run = extended
  return longest


def _ratio(out_words: int, in_words: int) -> float:
  return round(out_words / in_words, 4) if in_words else 0.0


def scaffold_checks(book: Book, record: Mapping[str, Any]) -> dict[str, Any]:
  """The `checks` field of a scaffold record built from `book`.

  Returns:
    scenes_tile_chapters: the record has the book's chapters, and each chapter's scenes are the book's
      scenes of that chapter, in order, none blank.
    compression: per level, summary words over the words of the level's input: scene summaries over
      scene texts, chapter summaries over scene summaries, synopsis over chapter summaries, premise
      over synopsis.
    max_copied_ngram: per level, the longest word n-gram that a summary of that level copies verbatim
      from the book text it stands for: a scene summary from its scene, a chapter summary from its
      chapter, the synopsis and the premise from the whole book.
  """
  chapters = record["chapters"]
  scenes_tile_chapters = len(chapters) == len(book.chapters) and all(
      [s["text"] for s in summary["scenes"]] == [s.text for s in chapter.scenes]
      and all(s.text.strip() for s in chapter.scenes)
      for summary, chapter in zip(chapters, book.chapters))

  scene_words = sum(s.n_words for c in book.chapters for s in c.scenes)
  scene_summary_words = sum(n_words(s["summary"]) for c in chapters for s in c["scenes"])
  chapter_summary_words = sum(n_words(c["summary"]) for c in chapters)
  compression = {
      "scene": _ratio(scene_summary_words, scene_words),
      "chapter": _ratio(chapter_summary_words, scene_summary_words),
      "synopsis": _ratio(n_words(record["synopsis"]), chapter_summary_words),
      "premise": _ratio(n_words(record["premise"]), n_words(record["synopsis"])),
  }

  book_text = "\n\n".join(c.text for c in book.chapters)
  pairs = zip(chapters, book.chapters)
  copied = {
      "scene": max(longest_copied_ngram(s["summary"], scene.text) for summary, chapter in pairs
                   for s, scene in zip(summary["scenes"], chapter.scenes)),
      "chapter": max(longest_copied_ngram(summary["summary"], chapter.text)
                     for summary, chapter in zip(chapters, book.chapters)),
      "synopsis": longest_copied_ngram(record["synopsis"], book_text),
      "premise": longest_copied_ngram(record["premise"], book_text),
  }
  return {"scenes_tile_chapters": scenes_tile_chapters, "compression": compression,
          "max_copied_ngram": copied}
