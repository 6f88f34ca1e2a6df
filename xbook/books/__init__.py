"""Books: Project Gutenberg novels turned into `Book`s (cleaned text, chapters, scenes).

`load_book` reads one Gutenberg plain-text file; `read_manifest` reads a corpus folder's
MANIFEST.tsv; `fetch_books` downloads books into a cache; `split_for_author` assigns a book to
train/validation/test by its author.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from xbook.books.chapters import segment_chapters
from xbook.books.fetch import FetchError, fetch_books
from xbook.books.gutenberg import CleaningReport, clean_gutenberg, parse_header
from xbook.books.scenes import split_scenes
from xbook.books.splits import split_for_author
from xbook.books.types import Book, Chapter, Scene, text_sha256

__all__ = ["Book", "Chapter", "Scene", "CleaningReport", "FetchError", "clean_gutenberg",
           "fetch_books", "load_book", "parse_header", "read_manifest", "split_for_author"]

_MANIFEST = "MANIFEST.tsv"
_MANIFEST_REQUIRED = ("file", "ebook_number")
_MANIFEST_INTEGERS = ("ebook_number", "bytes", "words")
_UNKNOWN = "unknown"


def load_book(path: str | os.PathLike[str], book_id: str | None = None, scene_target_words: int = 1200,
              scene_min_words: int = 500, scene_max_words: int = 2500) -> Book:
  """Read a Gutenberg plain-text file and segment it into chapters and scenes.

  Args:
    path: a UTF-8 Gutenberg .txt file (BOM and CRLF line ends are fine).
    book_id: the book's id; defaults to "pg<ebook number>" from the header, else the file stem.
    scene_target_words, scene_min_words, scene_max_words: scene sizes (see `split_scenes`).

  Returns:
    The `Book`; its sha256 is that of the cleaned text (header, footer and licence removed).
    Title, author and language come from the header ("unknown" where it has none; the title then
    falls back to the file stem).

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is empty, not UTF-8 (the message gives the byte offset), or has no text
      once the Gutenberg header and footer are removed.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"book file not found: {path}")
  data = path.read_bytes()
  if not data.strip():
    raise ValueError(f"{path}: empty file; expected a Project Gutenberg plain-text book")
  try:
    raw = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 (invalid byte 0x{data[e.start]:02x} at byte offset "
                     f"{e.start}); expected a UTF-8 Project Gutenberg plain-text book") from e
  text, _ = clean_gutenberg(raw)
  if not text.strip():
    raise ValueError(f"{path}: no text left after removing the Gutenberg header and footer")
  header = parse_header(raw)
  segmentation = segment_chapters(text)
  chapters = []
  for unit in segmentation.units:
    scene_texts = split_scenes(unit.text, target_words=scene_target_words,
                               min_words=scene_min_words, max_words=scene_max_words)
    if scene_texts:
      chapters.append(Chapter(index=len(chapters), title=unit.title, path=unit.path, kind=unit.kind,
                              scenes=tuple(Scene(index=i, text=t) for i, t in enumerate(scene_texts))))
  number = header["ebook_number"]
  return Book(id=book_id or (f"pg{number}" if number is not None else path.stem),
              title=header["title"] or path.stem, author=header["author"] or _UNKNOWN,
              language=header["language"] or _UNKNOWN, source=str(path), sha256=text_sha256(text),
              chapters=tuple(chapters), chapters_by_length=segmentation.by_length)


def read_manifest(corpus_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """Rows of a corpus folder's MANIFEST.tsv (tab-separated, one row per book file).

  Returns:
    One dict per row, keyed by the header's column names; ebook_number, bytes and words are ints.

  Raises:
    FileNotFoundError: the folder has no MANIFEST.tsv.
    ValueError: a required column (file, ebook_number) is missing or a number does not parse.
  """
  path = Path(corpus_dir) / _MANIFEST
  if not path.is_file():
    raise FileNotFoundError(f"manifest not found: {path}")
  with open(path, encoding="utf-8-sig", newline="") as f:
    reader = csv.DictReader(f, delimiter="\t")
    missing = [c for c in _MANIFEST_REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; found {reader.fieldnames}")
    rows = []
    for line_number, row in enumerate(reader, 2):
      for column in _MANIFEST_INTEGERS:
        if column in row:
          try:
            row[column] = int(row[column])
          except (TypeError, ValueError) as e:
            raise ValueError(f"{path}:{line_number}: column {column} is not an integer: "
                             f"{row[column]!r}") from e
      rows.append(row)
  return rows
