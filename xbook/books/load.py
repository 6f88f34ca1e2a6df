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
from xbook.books.front import MAX_DROPPED_SHARE
from xbook.books.gutenberg import CleaningReport, clean_gutenberg, parse_header
from xbook.books.prose import ProseOptions, ProseReport, clean_prose, wrap_width
from xbook.books.scenes import split_scenes
from xbook.books.types import Book, Chapter, Scene, text_sha256

_log = logging.getLogger(__name__)

_UNKNOWN = "unknown"
# A book dropping more than MAX_DROPPED_SHARE (xbook.books.front) of its body as front and back matter
# is flagged (and logged); segmentation re-examines its front matter before dropping that much.


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """How a book file was read.

  Attributes:
    encoding: "utf-8", or the fallback the file was decoded with ("cp1252", "latin-1").
    cleaning: what `clean_gutenberg` found and removed; `cleaning.header_found` is False for a
      file read as plain text.
    prose: what unwrapping and markup handling changed in the chapters (`xbook.books.prose`).
  """

  encoding: str
  cleaning: CleaningReport
  prose: ProseReport = dataclasses.field(default_factory=ProseReport)

  @property
  def front_matter_words(self) -> int:
    """Words dropped before the story: credits, notes, title page, contents, preface."""
    return self.cleaning.front_matter_words + self.prose.front_matter_words

  @property
  def back_matter_words(self) -> int:
    """Words dropped after the story (credits, errata, after "THE END") and as transcriber's notes."""
    return self.cleaning.back_matter_words + self.cleaning.notes_words

  @property
  def dropped_share(self) -> float:
    """Front and back matter words as a share of the words between the Gutenberg markers."""
    body = self.cleaning.body_words
    return (self.front_matter_words + self.back_matter_words) / body if body else 0.0

  @property
  def drops_too_much(self) -> bool:
    """True when more than `MAX_DROPPED_SHARE` of the body was dropped as front and back matter."""
    return self.dropped_share > MAX_DROPPED_SHARE


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
                 scene_max_words: int = 2500, options: ProseOptions | None = None,
                 report: ProseReport | None = None,
                 dropped_budget_words: int | None = None) -> tuple[tuple[Chapter, ...], bool]:
  """The chapters of a cleaned book, each cut into scenes, and whether they were cut by length.

  Chapters are found on the text as wrapped; each chapter's text is then unwrapped into one line
  per paragraph and its markup handled (`xbook.books.prose.clean_prose`) before it is cut into scenes.

  Args:
    text: the book's text with the Gutenberg header and footer removed (`clean_gutenberg`).
    scene_target_words, scene_min_words, scene_max_words: scene sizes (see `split_scenes`).
    options: markup conventions (`ProseOptions`; the defaults keep italics and dashes as printed).
    report: where given, the prose counts are added to it (its `wrap_width` is set, and the rule that
      decided the text before the first heading, `front_rule`).
    dropped_budget_words: front-matter words segmentation may drop before it re-examines its choice
      (`segment_chapters`).
  """
  segmentation = segment_chapters(text, dropped_budget_words=dropped_budget_words)
  width = wrap_width(text)
  if report is not None:
    report.wrap_width = width
    report.front_matter_words += segmentation.front_matter_words
    report.front_rule = segmentation.front.summary() if segmentation.front else "none (cut by length)"
  chapters = []
  for unit in segmentation.units:
    body = clean_prose(unit.text, width, options, report)
    scene_texts = split_scenes(body, target_words=scene_target_words,
                               min_words=scene_min_words, max_words=scene_max_words)
    if scene_texts:
      chapters.append(Chapter(index=len(chapters), title=unit.title, path=unit.path, kind=unit.kind,
                              scenes=tuple(Scene(index=i, text=t) for i, t in enumerate(scene_texts))))
  return tuple(chapters), segmentation.by_length


def load_book_with_report(path: str | os.PathLike[str], book_id: str | None = None,
                          scene_target_words: int = 1200, scene_min_words: int = 500,
                          scene_max_words: int = 2500,
                          options: ProseOptions | None = None) -> tuple[Book, LoadReport]:
  """Read a Gutenberg plain-text file and segment it into chapters and scenes; say how it went.

  Args:
    path: a Gutenberg .txt file (UTF-8, else Windows-1252 or Latin-1; a BOM and CRLF line ends are
      fine). A file without Gutenberg markers is read whole, as plain text.
    book_id: the book's id; defaults to "pg<ebook number>" from the header, else the file stem.
    scene_target_words, scene_min_words, scene_max_words: scene sizes (see `split_scenes`).
    options: markup conventions (`ProseOptions`).

  Returns:
    The `Book` and a `LoadReport`. Chapter texts have one line per paragraph (see `segment_text`).
    The book's sha256 is that of the cleaned text (header, footer and
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
  prose = ProseReport()
  already_dropped = cleaning.front_matter_words + cleaning.back_matter_words + cleaning.notes_words
  budget = max(0, int(MAX_DROPPED_SHARE * cleaning.body_words) - already_dropped)
  chapters, by_length = segment_text(text, scene_target_words, scene_min_words, scene_max_words,
                                     options, prose, dropped_budget_words=budget)
  number = header["ebook_number"]
  book = Book(id=book_id or (f"pg{number}" if number is not None else path.stem),
              title=header["title"] or path.stem, author=header["author"] or _UNKNOWN,
              language=header["language"] or _UNKNOWN, source=str(path), sha256=text_sha256(text),
              chapters=chapters, chapters_by_length=by_length)
  report = LoadReport(encoding=encoding, cleaning=cleaning, prose=prose)
  if report.drops_too_much:
    _log.warning("%s: %.1f%% of the body dropped as front and back matter (%d + %d words, more than "
                 "%.0f%%); check that no story text was taken for front or back matter", path,
                 100 * report.dropped_share, report.front_matter_words, report.back_matter_words,
                 100 * MAX_DROPPED_SHARE)
  return book, report


def load_book(path: str | os.PathLike[str], book_id: str | None = None, scene_target_words: int = 1200,
              scene_min_words: int = 500, scene_max_words: int = 2500,
              options: ProseOptions | None = None) -> Book:
  """The `Book` of `load_book_with_report`, without the report (same arguments and errors)."""
  book, _ = load_book_with_report(path, book_id, scene_target_words, scene_min_words,
                                  scene_max_words, options)
  return book
