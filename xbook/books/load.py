"""Reading one book file: bytes to text (with an encoding fallback), then cleaning and segmentation.

Unusable files raise `BookError` with the file and the reason: an empty file, a binary file (NUL
bytes), or one with no text between the Gutenberg markers. A file that is not UTF-8 is read as
Windows-1252 (else Latin-1, which takes any byte) with a warning naming the file and the first
byte that is not UTF-8. A file without a Gutenberg header is read as plain text, with a warning.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from xbook.books.chapters import segment_chapters
from xbook.books.errors import BookError
from xbook.books.gutenberg import CleaningReport, clean_gutenberg, parse_header
from xbook.books.scenes import split_scenes
from xbook.books.types import Book, Chapter, Scene, text_sha256

_log = logging.getLogger(__name__)

_UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """How a book file was read.

  Attributes:
    encoding: "utf-8", or the fallback the file was decoded with ("cp1252", "latin-1").
    cleaning: what `clean_gutenberg` found and removed; `cleaning.header_found` is False for a
      file read as plain text.
  """

  encoding: str
  cleaning: CleaningReport


def _decode(data: bytes, name: str) -> tuple[str, str]:
  """(text, encoding) of a book file's bytes: UTF-8 where they are, else Windows-1252 or Latin-1.

  Raises:
    BookError: the file is empty (or only whitespace) or binary (holds a NUL byte).
  """
  if not data.strip():
    raise BookError(f"{name}: empty file; expected a Project Gutenberg plain-text book")
  nul = data.find(b"\x00")
  if nul >= 0:
    raise BookError(f"{name}: binary file (NUL byte at offset {nul}); expected a plain-text book")
  try:
    return data.decode("utf-8"), "utf-8"
  except UnicodeDecodeError as error:
    bad = error.start
  try:
    text, encoding = data.decode("cp1252"), "cp1252"
  except UnicodeDecodeError:  # one of the five bytes Windows-1252 leaves undefined
    text, encoding = data.decode("latin-1"), "latin-1"
  _log.warning("%s: not UTF-8 (byte 0x%02x at offset %d); decoded as %s", name, data[bad], bad,
               encoding)
  return text, encoding


def read_book_text(path: str | os.PathLike[str]) -> tuple[str, str]:
  """The text of a book file and the encoding it was read with (see the module docstring).

  Raises:
    FileNotFoundError: no such file.
    BookError: the file cannot be read, is empty or is binary.
  """
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"book file not found: {path}")
  try:
    data = path.read_bytes()
  except OSError as error:
    raise BookError(f"{path}: cannot be read ({error.strerror}); expected a readable "
                    f"plain-text book") from error
  return _decode(data, str(path))


def segment_text(text: str, scene_target_words: int = 1200, scene_min_words: int = 500,
                 scene_max_words: int = 2500) -> tuple[tuple[Chapter, ...], bool]:
  """The chapters of a cleaned book, each cut into scenes, and whether they were cut by length.

  Args:
    text: the book's text with the Gutenberg header and footer removed (`clean_gutenberg`).
    scene_target_words, scene_min_words, scene_max_words: scene sizes (see `split_scenes`).
  """
  segmentation = segment_chapters(text)
  chapters = []
  for unit in segmentation.units:
    scene_texts = split_scenes(unit.text, target_words=scene_target_words,
                               min_words=scene_min_words, max_words=scene_max_words)
    if scene_texts:
      chapters.append(Chapter(index=len(chapters), title=unit.title, path=unit.path, kind=unit.kind,
                              scenes=tuple(Scene(index=i, text=t) for i, t in enumerate(scene_texts))))
  return tuple(chapters), segmentation.by_length


def load_book_with_report(path: str | os.PathLike[str], book_id: str | None = None,
                          scene_target_words: int = 1200, scene_min_words: int = 500,
                          scene_max_words: int = 2500) -> tuple[Book, LoadReport]:
  """Read a Gutenberg plain-text file and segment it into chapters and scenes; say how it went.

  Args:
    path: a Gutenberg .txt file (UTF-8, else Windows-1252 or Latin-1; a BOM and CRLF line ends are
      fine). A file without Gutenberg markers is read whole, as plain text.
    book_id: the book's id; defaults to "pg<ebook number>" from the header, else the file stem.
    scene_target_words, scene_min_words, scene_max_words: scene sizes (see `split_scenes`).

  Returns:
    The `Book` and a `LoadReport`. The book's sha256 is that of the cleaned text (header, footer and
    licence removed). Title, author and language come from the header ("unknown" where it has none;
    the title then falls back to the file stem).

  Raises:
    FileNotFoundError: no such file.
    BookError: the file cannot be read, is empty or binary, or has no text once the Gutenberg
      header and footer are removed.
  """
  path = Path(path)
  raw, encoding = read_book_text(path)
  text, cleaning = clean_gutenberg(raw)
  if not text.strip():
    raise BookError(f"{path}: no text left after removing the Gutenberg header and footer; "
                    f"expected the book between the START and END markers")
  if not cleaning.header_found:
    _log.warning("%s: no Project Gutenberg header (START marker); read as plain text", path)
  header = parse_header(raw)
  chapters, by_length = segment_text(text, scene_target_words, scene_min_words, scene_max_words)
  number = header["ebook_number"]
  book = Book(id=book_id or (f"pg{number}" if number is not None else path.stem),
              title=header["title"] or path.stem, author=header["author"] or _UNKNOWN,
              language=header["language"] or _UNKNOWN, source=str(path), sha256=text_sha256(text),
              chapters=chapters, chapters_by_length=by_length)
  return book, LoadReport(encoding=encoding, cleaning=cleaning)


def load_book(path: str | os.PathLike[str], book_id: str | None = None, scene_target_words: int = 1200,
              scene_min_words: int = 500, scene_max_words: int = 2500) -> Book:
  """The `Book` of `load_book_with_report`, without the report (same arguments and errors)."""
  book, _ = load_book_with_report(path, book_id, scene_target_words, scene_min_words,
                                  scene_max_words)
  return book
