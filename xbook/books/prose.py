"""Prose as its author wrote it: hard-wrapped lines joined into paragraphs, Gutenberg markup handled.

Paragraphs. Gutenberg plain text wraps every paragraph at a fixed width (a newline every 60-75
characters). A cleaned unit has one line per paragraph and a blank line between paragraphs. Lines
that are lines on purpose stay lines; that is decided by the shape of the text, never by book:

- The book's wrap width `W` is the 95th percentile of the lengths of lines followed by another line
  of the same paragraph (`wrap_width`).
- A line is *full* when the next line's first word would not have fitted on it:
  `len(line) + 1 + len(next_word) > W - max(4, W // 5)` (hand-wrapped editions wrap a little short).
- A line break is a *wrap* when the line is full or the next line opens with a lower-case letter
  (after quotes or brackets: a sentence going on).
- A paragraph of 3+ lines whose continuation lines all open with a capital, with at least one
  break that is no wrap, is verse (long verse lines can be full).
- Otherwise a paragraph is *prose* when most of its line breaks are wraps; its lines are joined with one
  space, except at a break that is no wrap and comes before a line indented 2+ spaces deeper than
  the paragraph's continuation lines or after a line shorter than 60% of `W` (a salutation or a
  verse quotation inside a paragraph). Every other paragraph (verse and songs, addresses,
  signatures, centred titles, lists) and every paragraph whose lines are mostly table rows (three
  spaces inside a line) keeps its lines, with the common indentation removed and the relative
  indentation kept.

Words are never changed by unwrapping: `text.split()` is the same before and after.

Markup, one convention each (`ProseOptions`):
- italics `_like this_` are kept as the edition prints them (`_..._`, a marker a tokenizer and a judge
  read); `italics="drop"` removes the underscores instead.
- `[Illustration]` and `[Illustration: caption]` tags are removed (an emptied paragraph goes with them).
- footnotes are removed: bodies (`[Footnote 3: ...]`, inline or as paragraphs) and anchors printed
  against a word (`word[3]`, `word.[A]`, `word[*]`).
- dashes and quotes are left as printed; `dashes="em"` turns a double hyphen `--` into an em dash `—`.
Each change is counted in `ProseReport`.
"""

from __future__ import annotations

import dataclasses
import re

from xbook.books.scenes import is_break_marker

_GAP = re.compile(r"(\n(?:[ \t]*\n)+)")
_TABLE_GAP = re.compile(r"\S {3,}\S")
_ILLUSTRATION = re.compile(r"\[Illustration(?:[.:][^\]]*)?\]", re.IGNORECASE)
_FOOTNOTE_BODY = re.compile(r"\[(?:Foot-?note|Note)\b[^\]]*\]", re.IGNORECASE)
_FOOTNOTE_ANCHOR = re.compile(r"(?<=[^\s\[])\[(?:\d{1,3}|[A-Z]|\*{1,3}|†|‡)\]")
_ITALIC = re.compile(r"(?<![\w_])_(?=\S)([^_]+?)(?<=\S)_(?![\w_])")
_DOUBLE_HYPHEN = re.compile(r"(?<!-)--(?!-)")
# A line is full when the next word would pass W minus this share of W (at least _MIN_SLACK).
_SLACK_SHARE = 5
_MIN_SLACK = 4
# A line shorter than this share of W, followed by a capital, ends a line on purpose inside prose.
_SHORT_SHARE = 0.6
# A continuation line indented this much deeper than the others starts a line on purpose.
_DEEPER = 2
# A paragraph of this many lines, each continuation capitalised, with a break that is no wrap, is verse.
_VERSE_MIN_LINES = 3
_OPENERS = "\"'“‘([_"
_WIDTH_PERCENTILE = 0.95
_DEFAULT_WIDTH = 72


@dataclasses.dataclass(frozen=True)
class ProseOptions:
  """Markup conventions (see the module docstring).

  Attributes:
    italics: "keep" (`_..._` as printed) or "drop" (underscores removed, words kept).
    dashes: "keep" (as printed) or "em" (`--` becomes `—`).
  """

  italics: str = "keep"
  dashes: str = "keep"

  def __post_init__(self):
    if self.italics not in ("keep", "drop"):
      raise ValueError(f"ProseOptions.italics must be 'keep' or 'drop', got {self.italics!r}")
    if self.dashes not in ("keep", "em"):
      raise ValueError(f"ProseOptions.dashes must be 'keep' or 'em', got {self.dashes!r}")


@dataclasses.dataclass
class ProseReport:
  """What `clean_prose` changed in a book (summed over its units).

  Attributes:
    wrap_width: the book's wrap width `W` in characters.
    paragraphs: paragraphs in the cleaned units (scene-break rows such as `* * *` not counted).
    prose_paragraphs: paragraphs joined into one line.
    kept_line_paragraphs: paragraphs of two or more lines that kept their lines on purpose.
    lines_joined: line breaks turned into spaces.
    italic_spans: `_..._` spans (kept or dropped as `ProseOptions.italics` says).
    illustrations_removed: `[Illustration...]` tags removed; illustration_words: their words.
    footnote_bodies_removed, footnote_anchors_removed: footnotes removed; footnote_words: their words.
    dashes_normalised: `--` turned into `—` (0 unless `ProseOptions.dashes == "em"`).
    front_matter_words: words before the first unit left out by segmentation (title page,
      contents, preface; `Segmentation.front_matter_words`).
    front_rule: which rule decided the text before the first heading, and each of its sections'
      kind, words and fate (`xbook.books.front.FrontReading.summary`).
  """

  wrap_width: int = _DEFAULT_WIDTH
  paragraphs: int = 0
  prose_paragraphs: int = 0
  kept_line_paragraphs: int = 0
  lines_joined: int = 0
  italic_spans: int = 0
  illustrations_removed: int = 0
  illustration_words: int = 0
  footnote_bodies_removed: int = 0
  footnote_anchors_removed: int = 0
  footnote_words: int = 0
  dashes_normalised: int = 0
  front_matter_words: int = 0
  front_rule: str = ""


def wrap_width(text: str) -> int:
  """The width the text is wrapped at: a high percentile of the lengths of continued lines."""
  lines = text.split("\n")
  lengths = sorted(len(a.rstrip()) for a, b in zip(lines, lines[1:]) if a.strip() and b.strip())
  if not lengths:
    return _DEFAULT_WIDTH
  return lengths[min(len(lengths) - 1, int(len(lengths) * _WIDTH_PERCENTILE))]


def _indent(line: str) -> int:
  return len(line) - len(line.lstrip())


def _full(line: str, following: str, width: int) -> bool:
  slack = max(_MIN_SLACK, width // _SLACK_SHARE)
  return len(line.rstrip()) + 1 + len(following.split()[0]) > width - slack


def _continues(line: str) -> bool:
  """True when the line opens with a lower-case letter (after any quotes or brackets): a wrap."""
  word = line.lstrip().lstrip(_OPENERS)
  return word[:1].islower()


def _capitalised(line: str) -> bool:
  return line.lstrip().lstrip(_OPENERS)[:1].isupper()


def _keep_lines(lines: list[str]) -> str:
  """The lines as printed, less their common indentation."""
  common = min(_indent(line) for line in lines)
  return "\n".join(line[common:].rstrip() for line in lines)


def unwrap_paragraph(lines: list[str], width: int) -> tuple[str, int]:
  """One paragraph (its non-blank lines) unwrapped as the module docstring says.

  Returns:
    (text, joined): the paragraph's text and how many line breaks became spaces.
  """
  if len(lines) == 1:
    return lines[0].strip(), 0
  wraps = [_full(a, b, width) or _continues(b) for a, b in zip(lines, lines[1:])]
  table_rows = sum(bool(_TABLE_GAP.search(line.strip())) for line in lines)
  verse = (len(lines) >= _VERSE_MIN_LINES and not all(wraps)
           and all(_capitalised(line) for line in lines[1:]))
  if verse or 2 * table_rows > len(lines) or 2 * sum(wraps) <= len(wraps):
    return _keep_lines(lines), 0
  base = min(_indent(line) for line in lines[1:])
  pieces, current, joined = [], [lines[0].strip()], 0
  for line, following, wrap in zip(lines, lines[1:], wraps):
    deeper = _indent(following) >= base + _DEEPER
    short = len(line.rstrip()) < _SHORT_SHARE * width
    if not wrap and (deeper or short):
      pieces.append(" ".join(current))
      current = [following.strip()]
    else:
      current.append(following.strip())
      joined += 1
  pieces.append(" ".join(current))
  return "\n".join(pieces), joined


def _remove(pattern: re.Pattern[str], text: str) -> tuple[str, int, int]:
  """(text without the matches, matches, words in them)."""
  found = pattern.findall(text)
  if not found:
    return text, 0, 0
  return pattern.sub("", text), len(found), sum(len(f.split()) for f in found)


def _tidy(text: str) -> str:
  """Spaces left by a removal: none doubled inside a line, none before punctuation, none at ends."""
  lines = [re.sub(r"(?<=\S) {2,}(?=\S)", " ", line) for line in text.split("\n")]
  lines = [re.sub(r" +(?=[,.;:!?])", "", line).rstrip() for line in lines]
  return "\n".join(line for line in lines if line.strip())


def _markup(paragraph: str, options: ProseOptions, report: ProseReport) -> str:
  """The paragraph with illustrations and footnotes removed and italics and dashes as configured."""
  text, count, words = _remove(_ILLUSTRATION, paragraph)
  report.illustrations_removed += count
  report.illustration_words += words
  removed = count
  text, count, words = _remove(_FOOTNOTE_BODY, text)
  report.footnote_bodies_removed += count
  report.footnote_words += words
  removed += count
  text, count, _ = _remove(_FOOTNOTE_ANCHOR, text)
  report.footnote_anchors_removed += count
  report.footnote_words += count
  removed += count
  report.italic_spans += len(_ITALIC.findall(text))
  if options.italics == "drop":
    text = _ITALIC.sub(r"\1", text)
  if options.dashes == "em":
    report.dashes_normalised += len(_DOUBLE_HYPHEN.findall(text))
    text = _DOUBLE_HYPHEN.sub("—", text)
  return _tidy(text) if removed else text


def clean_prose(text: str, width: int, options: ProseOptions | None = None,
                report: ProseReport | None = None) -> str:
  """A unit's text with one line per paragraph (lines on purpose kept) and its markup handled.

  Args:
    text: a unit's body as cleaned by `clean_gutenberg` (paragraphs separated by blank lines).
    width: the book's wrap width (`wrap_width` of the whole cleaned text).
    options: markup conventions; defaults keep italics and dashes as printed.
    report: counts are added to it where given.

  Returns:
    The paragraphs separated as before (one blank line, or the wide gap of 3+ blank lines that
    `scenes.paragraphs_and_breaks` reads as a scene break); a paragraph left empty by a removal
    goes with the gap before it.
  """
  options = options or ProseOptions()
  report = report if report is not None else ProseReport()
  parts = _GAP.split(text.strip("\n"))
  out: list[str] = []
  for position in range(0, len(parts), 2):
    lines = [line.rstrip() for line in parts[position].split("\n")]
    paragraph, joined = unwrap_paragraph(lines, width)
    paragraph = _markup(paragraph, options, report)
    if not paragraph.strip():
      continue
    report.paragraphs += not is_break_marker(paragraph)
    report.lines_joined += joined
    if "\n" in paragraph:
      report.kept_line_paragraphs += 1
    elif len(lines) > 1:
      report.prose_paragraphs += 1
    if out:
      out.append("\n" * max(2, parts[position - 1].count("\n")))
    out.append(paragraph)
  return "".join(out)
