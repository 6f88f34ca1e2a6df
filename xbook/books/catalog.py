"""Choosing books from Project Gutenberg's catalog (pg_catalog.csv) by type, language and subject.

The catalog has one row per ebook, with the columns `Text#, Type, Issued, Title, Language, Authors,
Subjects, LoCC, Bookshelves`. Language, Subjects and Bookshelves hold lists separated by "; "
(`en; fr`, `England -- Fiction; Courtship -- Fiction`, `Category: Novels; Best Books Ever Listings`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from xbook.books.errors import BookError
from xbook.books.fetch import DEFAULT_BASE_URL, Fetcher

CATALOG_URL_PATTERN = "{base_url}/cache/epub/feeds/pg_catalog.csv"
CATALOG_FILE = "pg_catalog.csv"
TEXT_TYPE = "Text"

_COLUMNS = ("Text#", "Type", "Title", "Language", "Authors", "Subjects", "Bookshelves")
_SEPARATOR = ";"
_EXPECTED = f"expected Project Gutenberg's pg_catalog.csv with columns {', '.join(_COLUMNS)}"


@dataclasses.dataclass(frozen=True)
class CatalogEntry:
  """One row of the catalog; list columns split at ";" and stripped."""

  number: int
  type: str
  title: str
  authors: str
  languages: tuple[str, ...]
  subjects: tuple[str, ...]
  bookshelves: tuple[str, ...]


def download_catalog(cache_dir: str | os.PathLike[str], base_url: str = DEFAULT_BASE_URL,
                     fetcher: Fetcher | None = None) -> Path:
  """The catalog in `cache_dir`, downloaded from `{base_url}/cache/epub/feeds/pg_catalog.csv` if missing.

  A cached catalog is kept as it is; delete it to get the current one.

  Raises:
    FetchError: the download failed for good.
  """
  url = CATALOG_URL_PATTERN.format(base_url=base_url.rstrip("/"))
  return (fetcher or Fetcher()).fetch(url, Path(cache_dir) / CATALOG_FILE, "catalog")


def read_catalog(path: str | os.PathLike[str]) -> Iterator[CatalogEntry]:
  """The catalog's rows, in file order (the file is checked now, its rows are parsed as they are read).

  Raises:
    FileNotFoundError: no such file.
    BookError: the file is not a UTF-8 CSV with the catalog's columns, or (while reading) a Text# is
      not a number; the message names the file (and line).
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"catalog not found: {path}")
  try:
    text = path.read_bytes().decode("utf-8-sig")
  except UnicodeDecodeError as error:
    raise BookError(f"{path}: not UTF-8 (byte offset {error.start}); {_EXPECTED}") from error
  reader = csv.DictReader(io.StringIO(text, newline=""))
  missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
  if missing:
    raise BookError(f"{path}: no column(s) {', '.join(missing)}; {_EXPECTED}")
  return _entries(path, reader)


def _entries(path: Path, reader: csv.DictReader) -> Iterator[CatalogEntry]:
  for row in reader:
    try:
      number = int(row["Text#"])
    except (TypeError, ValueError) as error:
      raise BookError(f"{path}:{reader.line_num}: Text# {row['Text#']!r} is not an ebook number; "
                      f"{_EXPECTED}") from error
    yield CatalogEntry(number=number, type=row["Type"] or "", title=row["Title"] or "",
                       authors=row["Authors"] or "", languages=_split(row["Language"]),
                       subjects=_split(row["Subjects"]), bookshelves=_split(row["Bookshelves"]))


def select_ebooks(entries: Iterable[CatalogEntry], languages: Sequence[str] = (),
                  subjects: Sequence[str] = (), bookshelves: Sequence[str] = (),
                  limit: int | None = None) -> list[int]:
  """Ebook numbers of the text entries that pass every filter given, in catalog order.

  Filters compare case-insensitively; an empty filter passes everything. Different filters must all
  pass (language AND subject AND bookshelf); the values of one filter are alternatives.

  Args:
    entries: catalog rows (from `read_catalog`).
    languages: language codes ("en"); an entry passes if one of its languages is one of these.
    subjects: substrings; an entry passes if one of its subjects contains one of these
      ("fiction" matches "England -- Fiction" and "Science fiction").
    bookshelves: substrings, matched like `subjects` against the bookshelves.
    limit: at most this many numbers (the first ones); None for all.

  Raises:
    ValueError: a negative limit.
  """
  if limit is not None and limit < 0:
    raise ValueError(f"limit must be at least 0, got {limit}")
  wanted_languages = {language.strip().casefold() for language in languages}
  numbers: list[int] = []
  for entry in entries:
    if limit is not None and len(numbers) >= limit:
      break
    if (entry.type == TEXT_TYPE
        and (not wanted_languages or wanted_languages & {x.casefold() for x in entry.languages})
        and _any_contains(entry.subjects, subjects) and _any_contains(entry.bookshelves, bookshelves)):
      numbers.append(entry.number)
  return numbers


def _split(cell: str | None) -> tuple[str, ...]:
  return tuple(item.strip() for item in (cell or "").split(_SEPARATOR) if item.strip())


def _any_contains(values: tuple[str, ...], needles: Sequence[str]) -> bool:
  """True when no needles are given, or one of them is in one of the values (ignoring case)."""
  if not needles:
    return True
  folded = [value.casefold() for value in values]
  return any(needle.casefold() in value for needle in needles for value in folded)
