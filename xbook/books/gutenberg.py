"""Project Gutenberg plain-text files: strip the header, footer and licence; read the header fields.

Gutenberg files changed format over the years. The body sits between a START marker and an END
marker:

- START: `*** START OF THIS PROJECT GUTENBERG EBOOK ... ***`, `***START OF THE ...***` (sometimes
  wrapped over two lines), or in older files the line that closes the legal small print,
  `*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*` (also `*END THE SMALL PRINT!`).
  Where a file has several (small print, then a START line), the last one before the END marker
  counts; small print after the END marker is licence.
- END: the first of `*** END OF ...`, `End of (the|this) Project Gutenberg EBook/Etext of ...`,
  `*** START: FULL LICENSE` or `THE FULL PROJECT GUTENBERG LICENSE`.

Inside the body, producer credits ("Produced by ...", "This etext was prepared by ...") and
transcriber's notes are removed near the start, bracketed "[Transcriber's note: ...]" paragraphs
anywhere, and in the tail everything from the first back-matter paragraph (credits, transcriber's
notes, errata, a list of typographical errors, a NOTES / ENDNOTES / FOOTNOTES heading) or the last
"THE END" / "FINIS" line, whichever comes first.
"""

from __future__ import annotations

import dataclasses
import re

_START_MARKER = re.compile(
    r"^\s*(?:\*+\s*START OF (?:THE|THIS) PROJECT GUTENBERG|\*END[*\s]*THE SMALL PRINT)", re.IGNORECASE)
_END_MARKER = re.compile(
    r"^\s*(?:\*+\s*END OF (?:THE|THIS) PROJECT GUTENBERG|End of (?:the |this )?Project Gutenberg|"
    r"\*+\s*START: FULL LICENSE|THE FULL PROJECT GUTENBERG LICENSE)", re.IGNORECASE)
_CREDIT = (r"Produced by|Transcribed from|E-?text prepared by|"
           r"This e-?(?:text|book) was (?:produced|prepared|created) by")
_TRANSCRIBER_NOTE = r"(?:Original )?Transcriber.s Notes?\b"
_FRONT_MATTER = re.compile(rf"^\s*(?:{_CREDIT}|{_TRANSCRIBER_NOTE})", re.IGNORECASE)
_BACK_MATTER = re.compile(
    rf"^\s*(?:{_CREDIT}|{_TRANSCRIBER_NOTE}|Typographical errors|Errata\b|Corrigenda\b|"
    r"(?:(?:END|FOOT) ?NOTES?|NOTES)[.:]?\s*$)", re.IGNORECASE)
_BRACKETED_NOTE = re.compile(rf"^\s*\[\s*{_TRANSCRIBER_NOTE}.*\]$", re.IGNORECASE | re.DOTALL)
_CLOSING_LINE = re.compile(r"^\s*(?:THE END|FINIS)\.?\s*$", re.IGNORECASE)
_GUTENBERG_MENTION = re.compile(r"gutenberg", re.IGNORECASE)
_EBOOK_NUMBER = re.compile(r"\[e-?(?:book|text) #\s*(\d+)\s*\]", re.IGNORECASE)
_HEADER_FIELD = re.compile(r"^(Title|Author|Language):\s*(.*)$")

# A START marker spans at most this many lines (pg43.txt wraps it over two).
_MAX_MARKER_LINES = 3
# Credits and transcriber's notes are removed only from this leading fraction of the body, and back
# matter (with a closing "THE END") only from this trailing fraction.
_FRONT_FRACTION = 0.1
_TAIL_FRACTION = 0.1
# Without a START marker, header fields are looked for in this many leading lines.
_HEADER_SCAN_LINES = 60


@dataclasses.dataclass(frozen=True)
class CleaningReport:
  """What `clean_gutenberg` found and removed.

  Attributes:
    header_found: a START marker was found and everything up to it removed.
    footer_found: an END marker (or the licence) was found and everything from it removed.
    fraction_removed: share of the (newline-normalised) characters that did not survive.
    leftover_gutenberg_mentions: occurrences of "Gutenberg" still in the cleaned text.
    body_words: words between the START and END markers (the whole file without them).
    front_matter_words: words of credits and transcriber's notes removed near the start.
    notes_words: words of bracketed transcriber's notes removed anywhere.
    back_matter_words: words of the tail removed (credits, notes, errata, after "THE END").
  """

  header_found: bool
  footer_found: bool
  fraction_removed: float
  leftover_gutenberg_mentions: int
  body_words: int = 0
  front_matter_words: int = 0
  notes_words: int = 0
  back_matter_words: int = 0


def normalise_text(raw: str) -> str:
  """Decode-level normalisation: drop a byte-order mark, turn CRLF and CR line ends into LF."""
  return raw.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def clean_gutenberg(raw: str) -> tuple[str, CleaningReport]:
  """The book's own text, without Gutenberg header, footer, licence, credits and back matter.

  Lines keep their leading indentation and lose trailing whitespace; blank lines are kept, since
  they separate paragraphs and headings. Without a START marker the text is kept from its first
  line (header_found=False: plain text); without an END marker it is kept to its last
  (footer_found=False).

  Args:
    raw: the file's text as decoded (a BOM and CRLF line ends are fine).

  Returns:
    The cleaned text and a `CleaningReport`.
  """
  text = normalise_text(raw)
  lines = [line.rstrip() for line in text.split("\n")]
  body_start, body_end = _body_bounds(lines)
  body = lines[body_start or 0:body_end if body_end is not None else len(lines)]
  counts = [_words(body)]
  for step in (_drop_front_matter, _drop_bracketed_notes, _drop_back_matter):
    body = step(body)
    counts.append(_words(body))
  cleaned = "\n".join(body).strip("\n")
  report = CleaningReport(
      header_found=body_start is not None,
      footer_found=body_end is not None,
      fraction_removed=1.0 - len(cleaned) / len(text) if text else 0.0,
      leftover_gutenberg_mentions=len(_GUTENBERG_MENTION.findall(cleaned)),
      body_words=counts[0], front_matter_words=counts[0] - counts[1],
      notes_words=counts[1] - counts[2], back_matter_words=counts[2] - counts[3])
  return cleaned, report


def _words(lines: list[str]) -> int:
  return sum(len(line.split()) for line in lines)


def parse_header(raw: str) -> dict[str, str | int | None]:
  """Title, author, language and ebook number from the Gutenberg header.

  Each field is the text after "Title:", "Author:" or "Language:" on its line (indented lines below a
  title hold subtitles and are left out). The ebook number comes from "[EBook #46]", "[eBook #46]"
  or "[Etext #46]".

  Returns:
    {"title", "author", "language": str or None, "ebook_number": int or None}.
  """
  lines = normalise_text(raw).split("\n")
  start, _ = _body_bounds(lines)
  header = lines[:start] if start is not None else lines[:_HEADER_SCAN_LINES]
  fields: dict[str, str | int | None] = {"title": None, "author": None, "language": None,
                                         "ebook_number": None}
  for line in header:
    match = _HEADER_FIELD.match(line.strip())
    if match and fields[match.group(1).lower()] is None:
      fields[match.group(1).lower()] = match.group(2).strip() or None
  number = _EBOOK_NUMBER.search("\n".join(header))
  if number:
    fields["ebook_number"] = int(number.group(1))
  return fields


def _body_bounds(lines: list[str]) -> tuple[int | None, int | None]:
  """(first body line, first footer line); None where the file has no such marker.

  The body starts after the last START marker that comes before the END marker, and ends at the
  first END marker after the first START marker.
  """
  starts = [i for i, line in enumerate(lines) if _START_MARKER.match(line)]
  search_from = starts[0] + 1 if starts else 0
  end = next((i for i in range(search_from, len(lines)) if _END_MARKER.match(lines[i])), None)
  before_end = [i for i in starts if end is None or i < end]
  return (_after_marker(lines, before_end[-1]) if before_end else None), end


def _after_marker(lines: list[str], index: int) -> int:
  """The line after a START marker at `index`, which may wrap over lines up to the closing "*"."""
  for offset in range(_MAX_MARKER_LINES):
    if index + offset < len(lines) and lines[index + offset].endswith("*"):
      return index + offset + 1
  return index + 1


def _paragraph_spans(lines: list[str]) -> list[tuple[int, int]]:
  """(start, end) line ranges of the runs of non-blank lines."""
  spans, start = [], None
  for index, line in enumerate(lines + [""]):
    if line.strip() and start is None:
      start = index
    elif not line.strip() and start is not None:
      spans.append((start, index))
      start = None
  return spans


def _drop_front_matter(lines: list[str]) -> list[str]:
  """Remove producer credits and transcriber's notes near the start of the body.

  A paragraph of these that ends in a colon ("Original Transcriber's Notes:") is a heading, and the
  paragraph after it goes with it.
  """
  limit = len(lines) * _FRONT_FRACTION
  spans = [span for span in _paragraph_spans(lines) if span[0] < limit]
  dropped: set[int] = set()
  for position, (start, end) in enumerate(spans):
    if _FRONT_MATTER.match(lines[start]):
      dropped.update(range(start, end))
      if lines[end - 1].endswith(":") and position + 1 < len(spans):
        dropped.update(range(*spans[position + 1]))
  return [line for index, line in enumerate(lines) if index not in dropped]


def _drop_bracketed_notes(lines: list[str]) -> list[str]:
  """Remove "[Transcriber's note: ...]" paragraphs wherever they are, with the blank lines after them."""
  spans = _paragraph_spans(lines)
  dropped: set[int] = set()
  for position, (start, end) in enumerate(spans):
    if _BRACKETED_NOTE.match("\n".join(lines[start:end])):
      dropped.update(range(start, spans[position + 1][0] if position + 1 < len(spans) else end))
  return [line for index, line in enumerate(lines) if index not in dropped]


def _drop_back_matter(lines: list[str]) -> list[str]:
  """Cut the tail from the first back-matter paragraph or the last "THE END" line, if earlier."""
  tail_start = int(len(lines) * (1.0 - _TAIL_FRACTION))
  spans = [span for span in _paragraph_spans(lines) if span[0] >= tail_start]
  back_matter = [start for start, _ in spans if _BACK_MATTER.match(lines[start])]
  closing = [index for index in range(tail_start, len(lines)) if _CLOSING_LINE.match(lines[index])]
  cuts = back_matter[:1] + closing[-1:]
  return lines[:min(cuts)] if cuts else lines
