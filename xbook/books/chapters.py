"""Chapter segmentation of a cleaned novel: a general heading recognizer plus sequence validation.

The convention (the corpus's GOLD.md): a unit is the finest headed division that splits up the
narrative (chapter, stave, letter, story of a collection, numbered part where parts are the only
division). BOOK / PART / VOLUME headings are parent divisions, kept in the unit's `path`. Prologues,
epilogues, etymologies and extracts that belong to the text are units of their own kinds. Front
matter (title page, contents, preface, dedication) and back matter are not units.

How it works:
1. Paragraphs (runs of non-blank lines) are scanned for heading shapes: a label and a number
   ("CHAPTER IV", "Chapter 4 TITLE", "STAVE I:  TITLE", "Letter 1", "ADVENTURE I. TITLE",
   "CHAPTER ONE", "BOOK the First--TITLE"), a bare roman or arabic numeral alone or before a title
   ("XII.", "I. The Period", "34"), or an extra ("EPILOGUE", "ETYMOLOGY.").
2. A table of contents is a dense cluster of headings with almost no text between them; it is
   dropped.
3. A bare heading ("CHAPTER ONE") takes the short paragraph after it as its title when that is the
   book's convention: most headings of its shape are followed by a short paragraph and those
   paragraphs are mostly distinct (recurring document labels such as "DR. SEWARD'S DIARY" are body).
4. Numbered headings of one shape form a stream; a stream is valid where its numbers go up by one,
   restart at 1 after a parent heading, or skip a single misprint. A run starting above 1 is kept
   where it continues another shape's run ("ADVENTURE VI." then "VII. THE ...") or is long enough to
   stand alone (a lost first heading); a run lying inside one unit of a longer run of another shape
   is a set of sub-parts and stays body text.
5. Parent headings count only where units follow them, numbered from the first. Under a parent
   heading (BOOK, PART, VOLUME) with no unit heading of its own, letters or diary entries (step 7)
   that start within `_MAX_PARENT_INTRO_WORDS` of it are its units; divisions with chapters keep them.
   The text before the first heading is read by `xbook.books.front`: front matter is dropped for what
   it is (title page, contents, dedication, epigraph, notes, a headed preface or introduction), story
   text (an unheaded frame narrative, a prologue) is kept whole as a unit of kind prologue.
6. Without numbered units, short upper-case lines after a wide gap ("STORY OF THE DOOR") are tried
   as title-only headings (never a parent heading such as "BOOK I.").
7. Else letters and diary entries headed by a date ("3 May. Bistritz.", "London, March 3rd, 1790")
   or a salutation ("My dear Sister,") are units ("letter" where a salutation opens them, else
   "diary"), under their parent divisions: decided by the shape of the entries (at least three, the
   first within the book's first tenth, and a signature closing at least one of the letters).
8. Else parent headings numbered 1, 2, ... are the units, where they are the only division.
   Without any of these, the text is cut by length at paragraph boundaries.
"""

from __future__ import annotations

import dataclasses
import re

from xbook.books import scenes
from xbook.books.front import DATE as _DATE
from xbook.books.front import MAX_DROPPED_SHARE, FrontReading, read_front

_ROMAN = r"(?=[IVXLC])C{0,3}(?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3})"
_ARABIC = r"\d{1,3}"
_WORD = r"[A-Za-z]+(?:-[A-Za-z]+)?"
_END_OF_NUMBER = r"(?=$|[\s.:,;—–-])"
_REST = r"(?P<rest>(?:[\s.:,;—–-].*)?)"

_LABELED = re.compile(
    r"^(?P<label>CHAPTER|Chapter|CHAP\.|Chap\.|STAVE|Stave|LETTER|Letter|ADVENTURE|Adventure|"
    r"BOOK|Book|PART|Part|VOLUME|Volume|VOL\.|Vol\.)\s+(?:(?:the|THE|The)\s+)?"
    rf"(?P<number>{_ROMAN}|{_ARABIC}|{_WORD}){_END_OF_NUMBER}{_REST}$")
_BARE = re.compile(rf"^(?P<number>{_ROMAN}|{_ARABIC})(?P<rest>\.?|(?:\.\s+|\s{{2,}}|\.?\s*[—–]\s*)"
                   r"[\"'“‘(A-Z].*)$")
_EXTRA = re.compile(r"^(?P<label>PROLOGUE|Prologue|EPILOGUE|Epilogue|ETYMOLOGY|Etymology|EXTRACTS|"
                    rf"Extracts|AFTERWORD|Afterword|NOTE){_REST}$")
_SEPARATORS = " \t.:,;—–-"

_UNIT_LABELS = {"chapter": "chapter", "chap": "chapter", "stave": "chapter", "adventure": "chapter",
                "letter": "letter"}
_PARENT_LABELS = {"book", "part", "volume", "vol"}
_EXTRA_KINDS = {"prologue": "prologue", "etymology": "extracts", "extracts": "extracts",
                "epilogue": "epilogue", "afterword": "epilogue", "note": "epilogue"}
_OPENING_KINDS = {"prologue", "extracts"}

_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
          "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORDINAL_UNITS = ("zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh "
                  "twelfth thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth "
                  "nineteenth").split()
_ORDINAL_TENS = "twentieth thirtieth fortieth fiftieth sixtieth seventieth eightieth ninetieth".split()
_ROMAN_VALUES = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100}

# A heading paragraph has at most this many lines and characters; so has a title paragraph.
_MAX_HEADING_LINES = 3
_MAX_HEADING_CHARS = 200
# Table of contents: this many headings in a row, each followed by at most this many words.
_CONTENTS_MIN_RUN = 3
_CONTENTS_MAX_WORDS = 40
# A family of at least this many bare headings decides by majority whether titles follow them.
_TITLE_FAMILY_MIN = 3
_TITLE_SHARE = 0.75
_TITLE_DISTINCT_SHARE = 0.75
# A run numbered from above 1 that continues no other run needs this many headings.
_MIN_UNANCHORED_RUN = 3
# Words allowed between a parent heading and its first unit.
_MAX_PARENT_INTRO_WORDS = 150
# An extra unit needs this much text; a title-only unit this much.
_MIN_EXTRA_WORDS = 20
_MIN_TITLED_WORDS = 200
_MAX_TITLED_WORDS_IN_HEADING = 12
_MIN_TITLED_BLANK_LINES = 2
_QUOTES = "\"'“‘"
# Dated entries make the book's units only where they start within this share of its words.
_MAX_DATED_LEAD = 0.1
_SALUTATION = re.compile(r"^\W*(?:(?:My\s+)?(?:dear|dearest|Dear|Dearest)\s+\S.*|Sir|Madam|Dear Sir|"
                         r"Gentlemen)[,:—–-]+\s*$")
_VALEDICTION = re.compile(r"^\W*(?:Yours|Your|Ever|Adieu|Farewell|Believe me|I am|I remain)\b")
_MAX_SIGNATURE_WORDS = 4


@dataclasses.dataclass(frozen=True)
class Unit:
  """One segmented unit, before scene splitting.

  Attributes:
    title: the heading as printed, whitespace-normalised ("" for units cut by length).
    path: parent headings then the unit's heading.
    kind: "chapter", "letter", "diary", "prologue", "epilogue" or "extracts".
    text: the unit's body: its lines as in the cleaned text, heading excluded.
  """

  title: str
  path: tuple[str, ...]
  kind: str
  text: str


@dataclasses.dataclass(frozen=True)
class Segmentation:
  """The units of a book, and whether they were cut by length for want of headings.

  Attributes:
    units: the units in reading order.
    by_length: no usable headings were found; the units were cut by length.
    front_matter_words: words before the first unit (or its parent heading) left out as front
      matter (title page, contents, preface, dedication); story text there is a prologue unit instead.
    front: how the text before the first heading was read, section by section, and which rule
      decided (`xbook.books.front.FrontReading`); None when the units were cut by length.
  """

  units: tuple[Unit, ...]
  by_length: bool
  front_matter_words: int = 0
  front: FrontReading | None = None


@dataclasses.dataclass(frozen=True)
class _Paragraph:
  first_line: int
  end_line: int
  lines: tuple[str, ...]
  blank_lines_before: int

  @property
  def text(self) -> str:
    return " ".join(" ".join(self.lines).split())

  @property
  def n_words(self) -> int:
    return len(self.text.split())


@dataclasses.dataclass(frozen=True)
class _Heading:
  """A heading candidate.

  Attributes:
    paragraph: index of its paragraph.
    role: "unit", "parent", "extra" or "titled".
    label: normalised label word ("chapter", "book", "epilogue", ...), "" for a bare numeral.
    number: its value for numbered headings.
    numeral: "roman", "arabic", "word" or "" (unnumbered).
    inline_title: the title is printed with the label (same paragraph).
    text: the heading as printed, whitespace-normalised (title paragraph included once absorbed).
    last_paragraph: index of its last paragraph (the title paragraph once absorbed).
  """

  paragraph: int
  role: str
  label: str
  number: int | None
  numeral: str
  inline_title: bool
  text: str
  last_paragraph: int

  @property
  def kind(self) -> str:
    if self.role == "dated":
      return self.label
    if self.role == "extra":
      return _EXTRA_KINDS[self.label]
    return _UNIT_LABELS.get(self.label, "chapter")

  @property
  def shape(self) -> tuple[str, str, str, bool]:
    return (self.role, self.label, self.numeral, self.inline_title)


def segment_chapters(text: str, length_target_words: int = 4000, length_max_words: int = 5000,
                     dropped_budget_words: int | None = None) -> Segmentation:
  """Split a cleaned book into units by its headings, or by length when it has none.

  Args:
    text: the book's text with the Gutenberg header and footer removed.
    length_target_words: preferred unit size when cutting by length.
    length_max_words: largest unit when cutting by length (unless one paragraph is larger).
    dropped_budget_words: words of front matter that may be dropped before segmentation re-examines
      its choice (`xbook.books.front`); default `MAX_DROPPED_SHARE` of the text's words.

  Returns:
    The units in reading order; `by_length` is True when no usable headings were found.
  """
  lines = text.split("\n")
  paragraphs = _paragraphs(lines)
  candidates = [h for i, p in enumerate(paragraphs) if (h := _recognise(p, i)) is not None]
  candidates = _drop_contents_lists(candidates, paragraphs)
  candidates = _absorb_titles(candidates, paragraphs)
  parents = [h for h in candidates if h.role == "parent"]
  units = _numbered_units([h for h in candidates if h.role == "unit"], parents)
  units = sorted(units + _entries_under_bare_parents(paragraphs, parents, units), key=lambda h: h.paragraph)
  if len(units) < 2:
    titled = [h for i, p in enumerate(paragraphs) if (h := _recognise_titled(p, i)) is not None]
    units = [h for h in titled if _words_after(h, titled, paragraphs) >= _MIN_TITLED_WORDS]
  if len(units) < 2:
    units = _dated_entries(paragraphs, parents, 0, len(paragraphs), _MAX_DATED_LEAD * _n_words(paragraphs))
  if len(units) < 2:
    units, parents = _parents_as_units(parents, paragraphs), []
  if len(units) < 2:
    return Segmentation(_units_by_length(lines, paragraphs, length_target_words, length_max_words),
                        by_length=True)
  extras = _extra_units([h for h in candidates if h.role == "extra"], units, candidates, paragraphs)
  headed = sorted(units + extras, key=lambda h: h.paragraph)
  valid_parents = _valid_parents(parents, headed, paragraphs)
  assembled = _assemble(lines, paragraphs, headed, valid_parents)
  first = min(h.paragraph for h in headed + valid_parents)
  if dropped_budget_words is None:
    dropped_budget_words = int(MAX_DROPPED_SHARE * _n_words(paragraphs))
  reading = read_front(paragraphs[:first], dropped_budget_words, _is_heading_line)
  opening = _opening_unit(lines, paragraphs, reading.kept_paragraphs)
  if opening is not None:
    assembled = (opening,) + assembled
  return Segmentation(assembled, by_length=False, front_matter_words=reading.dropped_words, front=reading)


def _n_words(paragraphs: list[_Paragraph]) -> int:
  return sum(p.n_words for p in paragraphs)


def _opening_unit(lines: list[str], paragraphs: list[_Paragraph], kept: tuple[int, ...]) -> Unit | None:
  """The story before the first heading (the kept paragraphs) as a unit of kind prologue, or None.

  Runs of adjacent kept paragraphs keep their lines (and the blank lines between them) as printed;
  runs apart are joined by one blank line.
  """
  if not kept:
    return None
  runs: list[list[int]] = []
  for index in kept:
    if runs and runs[-1][-1] == index - 1:
      runs[-1].append(index)
    else:
      runs.append([index])
  body = "\n\n".join("\n".join(lines[paragraphs[run[0]].first_line:paragraphs[run[-1]].end_line]) for run in runs)
  return Unit(title="", path=(), kind="prologue", text=body)


# ------------------------------------------------------------------------------------ recognition
def _paragraphs(lines: list[str]) -> list[_Paragraph]:
  paragraphs: list[_Paragraph] = []
  start, blanks = None, 0
  for index, line in enumerate(lines + [""]):
    if line.strip():
      if start is None:
        start, blanks_before = index, blanks
      blanks = 0
    else:
      if start is not None:
        paragraphs.append(_Paragraph(start, index, tuple(lines[start:index]), blanks_before))
        start = None
      blanks += 1
  return paragraphs


def _number_value(token: str) -> tuple[int, str] | None:
  """(value, numeral kind) of a roman or arabic numeral or an English number word, else None."""
  if token.isdigit():
    return int(token), "arabic"
  if re.fullmatch(_ROMAN, token):
    values = [_ROMAN_VALUES[c] for c in token]
    return sum(-v if v < n else v for v, n in zip(values, values[1:] + [0])), "roman"
  word = token.lower()
  for names, tens in ((_UNITS, _TENS), (_ORDINAL_UNITS, _ORDINAL_TENS)):
    if word in names:
      return names.index(word), "word"
    if word in tens:
      return 20 + 10 * tens.index(word), "word"
    head, _, tail = word.partition("-")
    if head in _TENS and tail in names[1:10]:
      return 20 + 10 * _TENS.index(head) + names.index(tail), "word"
  return None


def _is_heading_line(line: str) -> bool:
  line = line.strip()
  return bool(_LABELED.match(line) or _BARE.match(line))


def _recognise(paragraph: _Paragraph, index: int) -> _Heading | None:
  """The numbered or extra heading this paragraph prints, if it is one."""
  if len(paragraph.lines) > _MAX_HEADING_LINES or len(paragraph.text) > _MAX_HEADING_CHARS:
    return None
  if any(_is_heading_line(line) for line in paragraph.lines[1:]):
    return None  # a list of headings: part of a table of contents
  first = paragraph.lines[0].strip()
  continued = len(paragraph.lines) > 1
  if match := _LABELED.match(first):
    parsed = _number_value(match.group("number"))
    if parsed is None:
      return None
    label = match.group("label").lower().rstrip(".")
    role = "parent" if label in _PARENT_LABELS else "unit"
    inline = bool(match.group("rest").strip(_SEPARATORS)) or continued
    return _Heading(index, role, label, parsed[0], parsed[1], inline, paragraph.text, index)
  if match := _BARE.match(first):
    inline = bool(match.group("rest").strip(_SEPARATORS))
    value, numeral = _number_value(match.group("number"))
    return _Heading(index, "unit", "", value, numeral, inline or continued, paragraph.text, index)
  if match := _EXTRA.match(first):
    label = match.group("label").lower()
    inline = bool(match.group("rest").strip(_SEPARATORS))
    if label == "note" and (inline or continued):
      return None  # only a closing "NOTE" on its own line is the book's text
    return _Heading(index, "extra", label, None, "", inline or continued, paragraph.text, index)
  return None


def _dated_entries(paragraphs: list[_Paragraph], parents: list[_Heading], start: int, end: int,
                   max_lead_words: float) -> list[_Heading]:
  """The headings of the letters or diary entries that make up paragraphs[start:end], or [].

  They are the structure where there are at least `_MIN_UNANCHORED_RUN` of them, the first within
  `max_lead_words` of `start`, and (for letters) a signature closes at least one of them; diary
  entries need only their dates.
  """
  dated = [h for i in range(start, end) if (h := _recognise_dated(paragraphs[i], i, paragraphs)) is not None]
  dated = [h for h in dated if _words_after(h, dated + parents, paragraphs) >= _MIN_EXTRA_WORDS]
  if len(dated) < _MIN_UNANCHORED_RUN or _n_words(paragraphs[start:dated[0].paragraph]) > max_lead_words:
    return []
  if any(h.label == "letter" for h in dated) and not any(
      _closes_with_signature(h, dated + parents, paragraphs, end) for h in dated):
    return []
  return dated


def _closes_with_signature(heading: _Heading, boundaries: list[_Heading], paragraphs: list[_Paragraph],
                           end: int) -> bool:
  """True when the entry's last paragraph is a signature: a valediction ("Yours ever,") or a short name."""
  following = [h.paragraph for h in boundaries if h.paragraph > heading.paragraph]
  last = paragraphs[min(following + [end]) - 1]
  if last is paragraphs[heading.last_paragraph] or len(last.lines) > _MAX_HEADING_LINES:
    return False
  if _VALEDICTION.match(last.text):
    return True
  name = last.lines[-1].strip().rstrip(".")
  return 0 < len(name.split()) <= _MAX_SIGNATURE_WORDS and all(w[:1].isupper() for w in name.split())


def _entries_under_bare_parents(paragraphs: list[_Paragraph], parents: list[_Heading],
                                units: list[_Heading]) -> list[_Heading]:
  """Letters or diary entries under parent headings (BOOK, PART, VOLUME) that hold no unit heading.

  Each such division is read on its own: its entries must start within `_MAX_PARENT_INTRO_WORDS`
  of its heading. A division that has chapter headings keeps them, whatever letters they contain.
  """
  entries = []
  ordered = sorted(parents, key=lambda h: h.paragraph)
  for parent, following in zip(ordered, ordered[1:] + [None]):
    end = following.paragraph if following is not None else len(paragraphs)
    if any(parent.paragraph < u.paragraph < end for u in units):
      continue
    entries += _dated_entries(paragraphs, parents, parent.last_paragraph + 1, end, _MAX_PARENT_INTRO_WORDS)
  return entries


def _parents_as_units(parents: list[_Heading], paragraphs: list[_Paragraph]) -> list[_Heading]:
  """Parent headings numbered 1, 2, ... as units, where they are the book's only division."""
  families: dict[tuple[str, str], list[_Heading]] = {}
  for parent in parents:
    families.setdefault((parent.label, parent.numeral), []).append(parent)
  for family in families.values():
    if len(family) >= 2 and [p.number for p in family] == list(range(1, len(family) + 1)) and all(
        _words_after(p, parents, paragraphs) >= _MIN_TITLED_WORDS for p in family):
      return [dataclasses.replace(p, role="unit") for p in family]
  return []


def _recognise_dated(paragraph: _Paragraph, index: int,
                     paragraphs: list[_Paragraph]) -> _Heading | None:
  """A letter's or diary entry's heading: a short line holding a date ("3 May", "March 3rd, 1790"),
  or a salutation ("My dear Sister,") right after a paragraph that is not one.

  Used only when a book has no numbered headings, so dated lines inside chapters stay body text.
  The unit is a "letter" when a salutation opens it (in the heading or the paragraph after), else a
  "diary" entry.
  """
  text = paragraph.text
  if (len(paragraph.lines) > 2 or len(text.split()) > _MAX_TITLED_WORDS_IN_HEADING
      or text[0] in _QUOTES):
    return None  # dialogue quoting a letter is body text
  following = paragraphs[index + 1].text if index + 1 < len(paragraphs) else ""
  if _DATE.search(text):
    kind = "letter" if _SALUTATION.match(following) else "diary"
  elif _SALUTATION.match(text) and not (index and _DATE.search(paragraphs[index - 1].text)
                                        and len(paragraphs[index - 1].lines) <= 2):
    kind = "letter"
  else:
    return None
  return _Heading(index, "dated", kind, None, "", True, text, index)


def _recognise_titled(paragraph: _Paragraph, index: int) -> _Heading | None:
  """A title-only heading: one upper-case line of a few words after a wide gap."""
  text = paragraph.text
  if (match := _LABELED.match(text)) and match.group("label").lower().rstrip(".") in _PARENT_LABELS:
    return None  # "BOOK I" is a parent division, never a title-only unit
  if (len(paragraph.lines) != 1 or paragraph.blank_lines_before < _MIN_TITLED_BLANK_LINES
      or len(text.split()) > _MAX_TITLED_WORDS_IN_HEADING or text[-1] in ",;:"
      or sum(c.isalpha() for c in text) < 2 or text != text.upper()):
    return None
  return _Heading(index, "titled", "", None, "", True, text, index)


# ------------------------------------------------------------------------- contents and titles
def _words_after(heading: _Heading, boundaries: list[_Heading], paragraphs: list[_Paragraph]) -> int:
  """Words between the heading (with its title) and the next boundary heading after it."""
  following = [h.paragraph for h in boundaries if h.paragraph > heading.paragraph]
  end = min(following, default=len(paragraphs))
  return sum(p.n_words for p in paragraphs[heading.last_paragraph + 1:end])


def _drop_contents_lists(candidates: list[_Heading], paragraphs: list[_Paragraph]) -> list[_Heading]:
  """Drop tables of contents: runs of headings with (almost) no text between them."""
  tiny = [_words_after(h, candidates, paragraphs) <= _CONTENTS_MAX_WORDS for h in candidates]
  keep = [True] * len(candidates)
  start = 0
  while start < len(candidates):
    end = start
    while end < len(candidates) and tiny[end]:
      end += 1
    if end - start >= _CONTENTS_MIN_RUN:
      keep[start:end] = [False] * (end - start)
    start = end + 1
  return [h for h, kept in zip(candidates, keep) if kept]


def _title_paragraph(heading: _Heading, paragraphs: list[_Paragraph], taken: set[int],
                     strict: bool) -> _Paragraph | None:
  """The short paragraph right after a bare heading, if it can be a title.

  A dateline or a salutation opens a letter or diary entry, never a title. Strict checking (for
  headings without a family to compare with) also refuses quotations, which open epigraphs ("AND I
  ONLY AM ESCAPED ALONE TO TELL THEE") rather than titles.
  """
  index = heading.paragraph + 1
  if index >= len(paragraphs) or index in taken:
    return None
  paragraph = paragraphs[index]
  if (len(paragraph.lines) > _MAX_HEADING_LINES or len(paragraph.text) > _MAX_HEADING_CHARS
      or scenes.is_break_marker("\n".join(paragraph.lines))):
    return None
  if _DATE.search(paragraph.text) or _SALUTATION.match(paragraph.text):
    return None  # the heading of a letter or diary entry that opens the chapter
  if strict and paragraph.text[0] in _QUOTES:
    return None  # an epigraph
  return paragraph


def _absorb_titles(candidates: list[_Heading], paragraphs: list[_Paragraph]) -> list[_Heading]:
  """Give bare headings the title paragraph after them where that is the book's convention."""
  taken = {h.paragraph for h in candidates}
  families: dict[tuple[str, str, str, bool], list[_Heading]] = {}
  for h in candidates:
    if not h.inline_title:
      families.setdefault(h.shape, []).append(h)
  absorbed: dict[int, _Paragraph] = {}
  for family in families.values():
    strict = len(family) < _TITLE_FAMILY_MIN
    titles = {h.paragraph: t for h in family
              if (t := _title_paragraph(h, paragraphs, taken, strict)) is not None}
    if not strict:
      distinct = {t.text.lower() for t in titles.values()}
      if (len(titles) < _TITLE_SHARE * len(family)
          or len(distinct) < _TITLE_DISTINCT_SHARE * len(titles)):
        continue
    absorbed.update(titles)
  return [dataclasses.replace(h, text=f"{h.text} {absorbed[h.paragraph].text}",
                              last_paragraph=h.paragraph + 1)
          if h.paragraph in absorbed else h for h in candidates]


# ------------------------------------------------------------------------------ sequence checks
def _runs(stream: list[_Heading], parents: list[_Heading]) -> list[list[tuple[_Heading, int]]]:
  """Split one stream into runs of (heading, effective number) that count up by one.

  A run goes on where the number is the next one, where it restarts at 1 after a parent heading,
  or where one misprinted number sits between two that follow on ("III.", "VI.", "V.").
  """
  parent_positions = [p.paragraph for p in parents]
  runs: list[list[tuple[_Heading, int]]] = []
  for position, heading in enumerate(stream):
    if runs:
      last, last_number = runs[-1][-1]
      expected = last_number + 1
      following = stream[position + 1] if position + 1 < len(stream) else None
      if heading.number == expected:
        runs[-1].append((heading, expected))
        continue
      if heading.number == 1 and any(last.paragraph < p < heading.paragraph for p in parent_positions):
        runs[-1].append((heading, 1))
        continue
      if following is not None and following.number == expected + 1:
        runs[-1].append((heading, expected))
        continue
    runs.append([(heading, heading.number)])
  return runs


def _nested(run: list[_Heading], other: list[_Heading]) -> bool:
  """True when all of `run` lies inside one unit of `other` (after one of its headings, before the next).

  Such a run of another shape numbers sub-parts ("I.", "II." inside "ADVENTURE I."), not units.
  """
  return (any(h.paragraph < run[0].paragraph for h in other)
          and not any(run[0].paragraph < h.paragraph < run[-1].paragraph for h in other))


def _numbered_units(candidates: list[_Heading], parents: list[_Heading]) -> list[_Heading]:
  """The numbered headings that form valid sequences (see the module docstring, step 4)."""
  streams: dict[tuple[str, str, str, bool], list[_Heading]] = {}
  for h in candidates:
    streams.setdefault(h.shape, []).append(h)
  runs = sorted((run for stream in streams.values() for run in _runs(stream, parents)),
                key=lambda run: run[0][0].paragraph)
  accepted: list[list[tuple[_Heading, int]]] = []
  for run in runs:
    first_number = run[0][1]
    if first_number == 1 and len(run) >= 2:
      accepted.append(run)
      continue
    continues = [a for a in accepted if a[-1][1] == first_number - 1
                 and a[-1][0].paragraph < run[0][0].paragraph]
    if first_number > 1 and continues:
      continues[-1].extend(run)
    elif first_number > 1 and len(run) >= _MIN_UNANCHORED_RUN:
      accepted.append(run)  # the book's first heading is missing or unreadable
  headings = [[h for h, _ in run] for run in accepted]
  kept = [run for run in headings
          if not any(len(other) > len(run) and other[0].shape != run[0].shape and _nested(run, other)
                     for other in headings)]
  return sorted((h for run in kept for h in run), key=lambda h: h.paragraph)


def _extra_units(extras: list[_Heading], units: list[_Heading], candidates: list[_Heading],
                 paragraphs: list[_Paragraph]) -> list[_Heading]:
  """Prologue-like extras before the first unit and epilogue-like ones after the last.

  An extra repeated right after itself ("EXTRACTS." twice) is one unit.
  """
  first, last = units[0].paragraph, units[-1].paragraph
  kept: list[_Heading] = []
  for h in extras:
    opening = h.kind in _OPENING_KINDS
    if (opening and h.paragraph > first) or (not opening and h.paragraph < last):
      continue
    if _words_after(h, candidates, paragraphs) < _MIN_EXTRA_WORDS:
      continue
    if kept and kept[-1].label == h.label and not any(
        kept[-1].paragraph < u.paragraph < h.paragraph for u in units):
      continue
    kept.append(h)
  return kept


def _valid_parents(parents: list[_Heading], headed: list[_Heading],
                   paragraphs: list[_Paragraph]) -> list[_Heading]:
  """Parent headings that open a division: units follow soon after, numbered from the first."""
  opening = []
  for parent in parents:
    later = [h.paragraph for h in parents + headed if h.paragraph > parent.paragraph]
    next_boundary = min(later, default=len(paragraphs))
    if not any(h.paragraph == next_boundary for h in headed):
      continue
    intro = sum(p.n_words for p in paragraphs[parent.last_paragraph + 1:next_boundary])
    if intro <= _MAX_PARENT_INTRO_WORDS:
      opening.append(parent)
  families: dict[tuple[str, str], list[_Heading]] = {}
  for parent in opening:
    families.setdefault((parent.label, parent.numeral), []).append(parent)
  return sorted((p for family in families.values()
                 if [p.number for p in family] == list(range(1, len(family) + 1)) for p in family),
                key=lambda p: p.paragraph)


# ------------------------------------------------------------------------------------- assembly
def _assemble(lines: list[str], paragraphs: list[_Paragraph], headed: list[_Heading],
              parents: list[_Heading]) -> tuple[Unit, ...]:
  """Cut the text at the accepted headings; each unit runs to the next unit or parent heading."""
  boundaries = sorted(h.paragraph for h in headed + parents)
  units = []
  for heading in headed:
    later = [b for b in boundaries if b > heading.paragraph]
    end_line = paragraphs[later[0]].first_line if later else len(lines)
    body = "\n".join(lines[paragraphs[heading.last_paragraph].end_line:end_line]).strip("\n")
    if not body.strip():
      continue
    parent = [p for p in parents if p.paragraph < heading.paragraph]
    path = (parent[-1].text, heading.text) if parent else (heading.text,)
    units.append(Unit(title=heading.text, path=path, kind=heading.kind, text=body))
  return tuple(units)


def _units_by_length(lines: list[str], paragraphs: list[_Paragraph], target_words: int,
                     max_words: int) -> tuple[Unit, ...]:
  """Units cut at paragraph boundaries to near `target_words` each."""
  if not paragraphs:
    return ()
  sizes = [p.n_words for p in paragraphs]
  pieces = scenes.pieces_for(sum(sizes), target_words, max_words)
  bounds = [0] + scenes.balanced_cuts(sizes, pieces) + [len(paragraphs)]
  return tuple(
      Unit(title="", path=(), kind="chapter",
           text="\n".join(lines[paragraphs[a].first_line:paragraphs[b - 1].end_line]))
      for a, b in zip(bounds, bounds[1:]))
