"""The text before a book's first heading: front matter recognised by what it is, the story's opening kept.

Front matter is dropped for what it is, never for its length: a title page, a contents list, a
dedication, an epigraph, a publisher's, editor's, translator's or transcriber's note, a list of
illustrations, and a preface or an author's introduction headed as such. Everything else before the
first heading that is prose (an unheaded frame narrative, an introductory letter that is part of the
fiction, a prologue) is the story's own opening and is kept whole, whatever its length.

How it works (`read_front`):
1. The paragraphs before the first heading are cut into sections: a section opens with one or more
   heading lines (a short one-line paragraph printed as a heading: upper or title case, no opening
   quote, no trailing comma) and runs to the next heading line after its body.
2. A section is front matter of a kind when one of its heading lines names that kind ("CONTENTS",
   "PREFACE", "INTRODUCTION", "DEDICATION", "LIST OF ILLUSTRATIONS", "TRANSLATOR'S NOTE", ...) or
   opens a dedication ("TO MY DEAR FRIEND"), when its first paragraph dedicates the book, when its
   prose is all imprint (copyright, printer, publisher), or when its body is not prose (title-page
   lines, a list of headings, an indented or quoted epigraph). Any other section is story. The
   heading lines that open the first story section (the title printed again over the opening) are
   dropped with the title page, up to a dateline (a letter of the story opens there).
3. When the words dropped pass the budget (the share of the body the load report flags), every dropped
   section but a dedication is read again, and its prose is kept where it reads as narrative
   (`reads_as_narrative`: sentences, past tense over present, dialogue). `FrontReading.rule` says
   which rule decided.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Callable, Protocol, Sequence

# A book dropping more than this share of its body as front and back matter is flagged; segmentation
# re-examines its front matter before dropping more.
MAX_DROPPED_SHARE = 0.05

# A heading line has at most this many words; a prose paragraph of one line at least this many.
_MAX_HEADING_WORDS = 12
# A line indented this much is centred or set off (title page, epigraph, verse), not prose.
_SET_OFF_INDENT = 2
_QUOTES = "\"'“‘"
_SMALL_WORDS = frozenset("a an and at by for from in of on or the to with as de la le von van".split())
_FRONT_KINDS = (
    ("contents", r"(?:TABLE OF )?CONTENTS"),
    ("illustrations", r"(?:LIST OF )?ILLUSTRATIONS|LIST OF PLATES"),
    ("preface", r"(?:THE )?(?:AUTHOR'?S |AUTHOR’S )?(?:PREFACE|PREFATORY|FOREWORD|ADVERTISEMENT)"),
    ("introduction", r"(?:THE )?(?:AUTHOR'?S |AUTHOR’S )?INTRODUCTION"),
    ("dedication", r"DEDICATION|DEDICATORY|TO\b(?!\s+(?:BE|THE\s+END)\b)"),
    ("note", r"(?:A\s+)?(?:(?:THE\s+)?(?:AUTHOR|EDITOR|TRANSLATOR|TRANSCRIBER|PUBLISHER)(?:'?S|’S|S')?\b.*"
             r"|NOTE\b.*)"),
    ("epigraph", r"EPIGRAPH"),
)
_FRONT_HEADING = [(kind, re.compile(rf"^\W*(?:{pattern})(?:\W|$)")) for kind, pattern in _FRONT_KINDS]
# A date as letters and diaries print it: "3 May", "March 3rd", "12th of April".
_MONTHS = (r"(?:January|February|March|April|May|June|July|August|September|October|November|"
           r"December|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sept?|Oct|Nov|Dec)\.?")
DATE = re.compile(rf"(?:\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTHS}|\b{_MONTHS}\s+\d{{1,2}}"
                   rf"(?:st|nd|rd|th)?\b)")
_IMPRINT = re.compile(r"\b(?:copyright|all rights reserved|printed (?:in|by)|published by|publishers?|"
                      r"entered according to act of congress)\b", re.IGNORECASE)
_LIST_KINDS = ("contents", "illustrations")
_DEDICATES = re.compile(r"\bdedicat(?:ed|e|es|ion)\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[a-z][.!?][\"'”’)]*(?:\s|$)")
_WORD = re.compile(r"[a-z]+(?:['’][a-z]+)?")
_PAST = frozenset("""was were had did said came went saw took made knew thought told found looked seemed
felt gave began stood sat ran left heard got became kept brought held met lay led rose fell spoke
wrote read could would might should whispered cried replied answered turned""".split())
_PRESENT = frozenset("""is are am has have does do will shall can may must isn't aren't don't doesn't
won't i'm it's here now""".split())
_NOT_PAST = frozenset("""need indeed hundred bed red seed feed speed creed breed deed shed sled wed
sacred naked kindred wicked""".split())


class Paragraph(Protocol):
  """A run of non-blank lines of the cleaned text (`xbook.books.chapters` builds them)."""

  first_line: int
  end_line: int
  lines: tuple[str, ...]

  @property
  def text(self) -> str: ...

  @property
  def n_words(self) -> int: ...


@dataclasses.dataclass(frozen=True)
class FrontSection:
  """One section of the text before the first heading.

  Attributes:
    kind: "title page", "contents", "dedication", "epigraph", "preface", "introduction", "note",
      "illustrations" or "story".
    words: its words (heading lines included).
    kept: whether it is part of the book's opening unit.
    rule: which rule decided ("heading", "dedication", "imprint", "not prose", "story: prose",
      "re-examined: narrative", "re-examined: not narrative", "re-examined: heading").
    paragraphs: its paragraphs' indices in the front; body: those after its heading lines.
  """

  kind: str
  words: int
  kept: bool
  rule: str
  paragraphs: tuple[int, ...] = ()
  body: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class FrontReading:
  """What the text before the first heading is.

  Attributes:
    sections: its sections in reading order.
    rule: which rule decided the whole: "none" (nothing before the first heading), "front matter by
      kind", "story kept" (some story opening kept), "re-examined: narrative kept" (kept on
      re-examination), or "re-examined: still too much" (dropped past the budget; nothing reads as
      narrative).
  """

  sections: tuple[FrontSection, ...]
  rule: str

  @property
  def kept_paragraphs(self) -> tuple[int, ...]:
    """Indices (into the front's paragraphs) of the story kept as the opening unit, in order."""
    return tuple(sorted(i for s in self.sections if s.kept for i in s.paragraphs))

  @property
  def dropped_words(self) -> int:
    return sum(s.words for s in self.sections if not s.kept)

  def summary(self) -> str:
    """One line: the rule and each section's kind, words and fate."""
    merged: list[list] = []
    for s in self.sections:  # adjacent sections of one kind and fate read as one
      if merged and merged[-1][0] == (s.kind, s.kept):
        merged[-1][1] += s.words
      else:
        merged.append([(s.kind, s.kept), s.words])
    parts = [f"{kind} {words:,} {'kept' if kept else 'dropped'}" for (kind, kept), words in merged]
    return f"{self.rule}" + (f" ({', '.join(parts)})" if parts else "")


def reads_as_narrative(text: str) -> bool:
  """True when the text reads as told story: several sentences, past tense over present, or dialogue.

  An author's preface or introduction talks about the book in the present and perfect ("this story
  is", "I have tried"); a narrative tells in the past ("she said", "we went") and often quotes speech.
  """
  if len(_SENTENCE_END.findall(text)) < 3:
    return False
  words = _WORD.findall(text.lower())
  past = sum(1 for w in words if w in _PAST or (w.endswith("ed") and len(w) > 4 and w not in _NOT_PAST))
  present = sum(1 for w in words if w in _PRESENT)
  dialogue = sum(1 for line in text.split("\n") if line.strip() and line.lstrip()[0] in _QUOTES)
  return past > present or (dialogue >= 2 and 2 * past >= present)


def is_heading_line(paragraph: Paragraph) -> bool:
  """A short one-line paragraph printed as a heading: upper or title case, no quote, no trailing comma."""
  text = paragraph.text
  if len(paragraph.lines) != 1 or not text or paragraph.n_words > _MAX_HEADING_WORDS:
    return False
  if text[0] in _QUOTES or text[-1] in ",;:":
    return False
  words = re.findall(r"[^\W\d_][\w'’-]*", text)
  return all(w[0].isupper() or w.lower() in _SMALL_WORDS for w in words)


def _front_heading_kind(paragraph: Paragraph) -> str | None:
  text = paragraph.text.upper()
  for kind, pattern in _FRONT_HEADING:
    if kind == "dedication" and not paragraph.text.startswith(("TO", "DEDICAT", "Dedicat")):
      continue  # "To the Reader" in title case is a heading; "TO" in capitals opens a dedication
    if pattern.match(text):
      return kind
  return None


def _is_prose(paragraph: Paragraph, is_heading_entry: Callable[[str], bool]) -> bool:
  """A paragraph of running prose: flush left, wrapped or long, with a sentence; not a contents entry.

  Title-page lines have no sentence; an epigraph or verse is indented (set off).
  """
  lines = paragraph.lines
  if is_heading_entry(lines[0].strip()) or paragraph.text.startswith(("[", "(")):
    return False
  if min(len(line) - len(line.lstrip()) for line in lines) >= _SET_OFF_INDENT:
    return False
  if len(lines) < 2 and paragraph.n_words < _MAX_HEADING_WORDS:
    return False
  return bool(_SENTENCE_END.search(paragraph.text))


def _sections(front: Sequence[Paragraph],
              is_heading_entry: Callable[[str], bool]) -> list[tuple[list[int], list[int]]]:
  """(heading paragraph indices, body paragraph indices) of each section, in order.

  A heading line after a body, or one that names a kind of front matter after other heading lines (a
  title page, then "PREFACE"), opens a section; so does prose after a list (a contents list, then
  the story without a heading).
  """
  sections: list[tuple[list[int], list[int]]] = []
  for index, paragraph in enumerate(front):
    heading = is_heading_line(paragraph)
    prose = not heading and _is_prose(paragraph, is_heading_entry)
    if sections:
      headings, body = sections[-1]
      opens = heading and (body or _front_heading_kind(paragraph) is not None)
      after_list = prose and any(_front_heading_kind(front[i]) in _LIST_KINDS for i in headings) and not any(
          _is_prose(front[i], is_heading_entry) for i in body)
    if not sections or opens or after_list:
      sections.append(([], []))
    (sections[-1][0] if heading and not sections[-1][1] else sections[-1][1]).append(index)
  return sections


def _classify(front: Sequence[Paragraph], headings: list[int], body: list[int],
              is_heading_entry: Callable[[str], bool]) -> tuple[str, str]:
  """(kind, rule) of one section (see the module docstring, step 2)."""
  for index in headings:
    kind = _front_heading_kind(front[index])
    if kind is not None:
      return kind, "heading"
  if body and _DEDICATES.search(front[body[0]].text) and front[body[0]].text[:3].lower() == "to ":
    return "dedication", "dedication"
  prose = [front[i] for i in body if _is_prose(front[i], is_heading_entry)]
  if prose and all(_IMPRINT.search(p.text) for p in prose):
    return "title page", "imprint"  # copyright, printer and publisher lines
  if 2 * sum(p.n_words for p in prose) > sum(front[i].n_words for i in body):
    return "story", "story: prose"
  if not body:
    return "title page", "not prose"
  if any(is_heading_entry(front[i].lines[0].strip()) for i in headings + body):
    return "contents", "not prose"
  return ("epigraph" if front[body[0]].text[:1] in _QUOTES else "title page"), "not prose"


def read_front(front: Sequence[Paragraph], budget_words: int,
               is_heading_entry: Callable[[str], bool]) -> FrontReading:
  """Sort the paragraphs before the first heading into front matter and the story's opening.

  Args:
    front: the paragraphs before the book's first unit or parent heading.
    budget_words: words that may be dropped before the choice is re-examined (see step 3).
    is_heading_entry: whether a line is a chapter heading's shape (a contents list's entry).

  Returns:
    The sections, which paragraphs are kept as the opening unit, and the rule that decided.
  """
  if not front:
    return FrontReading((), "none")
  sections: list[FrontSection] = []
  for headings, body in _sections(front, is_heading_entry):
    kind, rule = _classify(front, headings, body, is_heading_entry)
    if kind == "story" and not any(s.kept for s in sections):
      title = list(itertools.takewhile(lambda i: not DATE.search(front[i].text), headings))
      if title:  # the title printed again over the opening; a letter's dateline is the story's
        sections.append(_section(front, "title page", title, [], False, "not prose"))
        headings = headings[len(title):]
    sections.append(_section(front, kind, headings, body, kind == "story", rule))
  reading = FrontReading(tuple(sections), "story kept" if any(s.kept for s in sections) else "front matter by kind")
  if reading.dropped_words > budget_words:
    reading = _reexamine(front, reading, is_heading_entry)
  return reading


def _section(front: Sequence[Paragraph], kind: str, headings: list[int], body: list[int], kept: bool,
             rule: str) -> FrontSection:
  paragraphs = headings + body
  return FrontSection(kind, sum(front[i].n_words for i in paragraphs), kept, rule, tuple(paragraphs), tuple(body))


def _reexamine(front: Sequence[Paragraph], reading: FrontReading,
               is_heading_entry: Callable[[str], bool]) -> FrontReading:
  """Keep every dropped section whose prose reads as narrative (module docstring, step 3).

  A dedication stays dropped whatever it tells ("During an illness last winter I ..."): it is what it is.
  """
  sections = []
  for section in reading.sections:
    prose = [front[i] for i in section.body if _is_prose(front[i], is_heading_entry)]
    narrative = bool(prose) and reads_as_narrative("\n".join("\n".join(p.lines) for p in prose))
    if section.kept or section.kind == "dedication" or not narrative:
      sections.append(section if section.kept else dataclasses.replace(section, rule="re-examined: not narrative"))
      continue
    headings = [i for i in section.paragraphs if i not in section.body]
    if headings:
      sections.append(_section(front, section.kind, headings, [], False, "re-examined: heading"))
    sections.append(_section(front, "story", [], list(section.body), True, "re-examined: narrative"))
  kept_more = sum(s.kept for s in sections) > sum(s.kept for s in reading.sections)
  return FrontReading(tuple(sections), "re-examined: narrative kept" if kept_more else "re-examined: still too much")
