"""Project Gutenberg plain-text files: strip the header, footer and licence; read the header fields.

Gutenberg files changed format over the years. The body sits between a START marker
(`*** START OF THIS PROJECT GUTENBERG EBOOK ... ***`, `***START OF THE ...***`, sometimes wrapped over
two lines, or the old `*END*THE SMALL PRINT!...*END*` line) and an END marker (`*** END OF ...`, else
an `End of the Project Gutenberg EBook of ...` line, else the start of the licence). Around the body
there are producer credits, transcriber's notes and "THE END" lines, which are removed as well.
"""

from __future__ import annotations

import dataclasses
import re

_START_MARKERS = (
    re.compile(r"^\s*\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG", re.IGNORECASE),
    re.compile(r"^\s*\*END\*\s*THE SMALL PRINT", re.IGNORECASE),
)
# Tried in order: the first pattern found after the START marker ends the body.
_END_MARKERS = (
    re.compile(r"^\s*\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG", re.IGNORECASE),
    re.compile(r"^\s*End of (?:the )?Project Gutenberg", re.IGNORECASE),
    re.compile(r"^\s*\*{3}\s*START: FULL LICENSE", re.IGNORECASE),
    re.compile(r"^\s*THE FULL PROJECT GUTENBERG LICENSE", re.IGNORECASE),
)
_END_OF_EBOOK_LINE = re.compile(r"^\s*End of (?:the )?Project Gutenberg", re.IGNORECASE)
_CREDIT_PARAGRAPH = re.compile(
    r"^\s*(?:Produced by|Transcribed from|(?:Original )?Transcriber.s Notes?\b|E-?text prepared by)",
    re.IGNORECASE)
_CLOSING_LINE = re.compile(r"^\s*(?:THE END|FINIS)\.?\s*$", re.IGNORECASE)
_GUTENBERG_MENTION = re.compile(r"gutenberg", re.IGNORECASE)
_EBOOK_NUMBER = re.compile(r"\[e-?book #\s*(\d+)\s*\]", re.IGNORECASE)
_HEADER_FIELD = re.compile(r"^(Title|Author|Language):\s*(.*)$")

# A START marker spans at most this many lines (pg43.txt wraps it over two).
_MAX_MARKER_LINES = 3
# Credits and transcriber's notes are removed only from this leading fraction of the body, and a
# closing "THE END" only from this trailing fraction.
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
  """

  header_found: bool
  footer_found: bool
  fraction_removed: float
  leftover_gutenberg_mentions: int


def normalise_text(raw: str) -> str:
  """Decode-level normalisation: drop a byte-order mark, turn CRLF and CR line ends into LF."""
  return raw.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def clean_gutenberg(raw: str) -> tuple[str, CleaningReport]:
  """The book's own text, without Gutenberg header, footer, licence, credits and closing "THE END".

  Lines keep their leading indentation and lose trailing whitespace; blank lines are kept, since
  they separate paragraphs and headings. Without a START marker the text is kept from its first
  line (header_found=False); without an END marker it is kept to its last (footer_found=False).

  Args:
    raw: the file's text as decoded (a BOM and CRLF line ends are fine).

  Returns:
    The cleaned text and a `CleaningReport`.
  """
  text = normalise_text(raw)
  lines = [line.rstrip() for line in text.split("\n")]
  body_start = _body_start(lines)
  body_end = _body_end(lines, body_start or 0)
  body = lines[body_start or 0:body_end if body_end is not None else len(lines)]
  body = _drop_end_of_ebook_line(body)
  body = _drop_front_credits(body)
  body = _drop_closing_tail(body)
  cleaned = "\n".join(body).strip("\n")
  report = CleaningReport(
      header_found=body_start is not None,
      footer_found=body_end is not None,
      fraction_removed=1.0 - len(cleaned) / len(text) if text else 0.0,
      leftover_gutenberg_mentions=len(_GUTENBERG_MENTION.findall(cleaned)))
  return cleaned, report


def parse_header(raw: str) -> dict[str, str | int | None]:
  """Title, author, language and ebook number from the Gutenberg header.

  Each field is the text after "Title:", "Author:" or "Language:" on its line (indented lines below a
  title hold subtitles and are left out). The ebook number comes from "[EBook #46]" / "[eBook #46]".

  Returns:
    {"title", "author", "language": str or None, "ebook_number": int or None}.
  """
  lines = normalise_text(raw).split("\n")
  start = _body_start(lines)
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


def _body_start(lines: list[str]) -> int | None:
  """Index of the first line after the START marker (which may wrap), or None without one."""
  for index, line in enumerate(lines):
    if any(marker.match(line) for marker in _START_MARKERS):
      for offset in range(_MAX_MARKER_LINES):
        if index + offset < len(lines) and lines[index + offset].rstrip().endswith("*"):
          return index + offset + 1
      return index + 1
  return None


def _body_end(lines: list[str], body_start: int) -> int | None:
  """Index of the first footer line after `body_start`, or None without a footer."""
  for marker in _END_MARKERS:
    for index in range(body_start, len(lines)):
      if marker.match(lines[index]):
        return index
  return None


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


def _drop_end_of_ebook_line(lines: list[str]) -> list[str]:
  """Cut the "End of the Project Gutenberg EBook of ..." paragraph left before the END marker."""
  spans = _paragraph_spans(lines)
  if spans and _END_OF_EBOOK_LINE.match(lines[spans[-1][0]]):
    return lines[:spans[-1][0]]
  return lines


def _drop_front_credits(lines: list[str]) -> list[str]:
  """Remove producer credits and transcriber's notes near the start of the body.

  A credit paragraph that ends in a colon ("Original Transcriber's Notes:") is a heading, and the
  paragraph after it goes with it.
  """
  limit = len(lines) * _FRONT_FRACTION
  spans = [span for span in _paragraph_spans(lines) if span[0] < limit]
  dropped: set[int] = set()
  for position, (start, end) in enumerate(spans):
    if _CREDIT_PARAGRAPH.match(lines[start]):
      dropped.update(range(start, end))
      if lines[end - 1].rstrip().endswith(":") and position + 1 < len(spans):
        dropped.update(range(*spans[position + 1]))
  return [line for index, line in enumerate(lines) if index not in dropped]


def _drop_closing_tail(lines: list[str]) -> list[str]:
  """Cut from the last "THE END" / "FINIS" line in the tail (what follows it is back matter)."""
  tail_start = int(len(lines) * (1.0 - _TAIL_FRACTION))
  for index in range(len(lines) - 1, tail_start - 1, -1):
    if _CLOSING_LINE.match(lines[index]):
      return lines[:index]
  return lines
