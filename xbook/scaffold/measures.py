"""What the paper's plan format asks about a text that can be counted rather than read.

All deterministic, all from the text alone:
  quoted_share       the share of a text's words inside quotation marks (the measure behind the
                     `dialog` axis of an embedding space)
  narration_person   "first" or "third": which pronouns the narration (outside quotations) uses most
  merge_scenes       contiguous groups of at most 12 scenes, merged at scene boundaries
  arc_partition      the chapters as 1-12 consecutive arcs: the book's own parts (BOOK/PART
                     headings) when it has them, else word-balanced thirds or tenths
  book_title         the book's title cut to the format's 8 words
  lexicon_scores     the six embedding axes other than dialog, approximated from word lists and
                     sentence lengths (an approximation, marked so in records)
  style_bullets      a few measured facts about the prose (sentence and paragraph lengths, dialogue,
                     narration person, vocabulary)
"""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter
from typing import Sequence

from xbook.books.types import Book
from xbook.scaffold import extractive

# Bump when anything here changes what a record holds (it is part of the paper builder's version).
ALGORITHM = "paper-measures/1"

MAX_SCENES = 12
MAX_ARCS = 12
MAX_CHAPTERS_PER_ARC = 99

# A whitespace-separated word with a letter or digit in it.
_WORD = re.compile(r"[^\s\w]*\w\S*|_\S*")
_LETTER = re.compile(r"[^\W\d_]")
_OPENERS_BEFORE = set(" \t\n([{\u2014\u2013-") | {""}


_QUOTE_MARK = re.compile("[\"\u201c\u201d\u2018\u2019']")


def _quoted_spans(paragraph: str) -> list[tuple[int, int]]:
  """The [start, end) character spans of one paragraph inside quotation marks (marks included).

  Double quotes: straight ones toggle, curly ones open (\u201c) and close (\u201d). Single curly
  quotes open (\u2018) at the start of a word and close (\u2019) where no letter follows (so that
  apostrophes inside words do not close them); straight single quotes count the same way only in a
  paragraph without double quotes (British texts). A quotation left open ends with its paragraph, as
  multi-paragraph speeches reopen theirs.
  """
  doubles = '"' in paragraph or "\u201c" in paragraph or "\u201d" in paragraph
  spans, opened, kind = [], None, None
  for match in _QUOTE_MARK.finditer(paragraph):
    i, ch = match.start(), match.group()
    before = paragraph[i - 1] if i else ""
    after = paragraph[i + 1] if i + 1 < len(paragraph) else " "
    if kind is None:
      if ch in '"\u201c':
        opened, kind = i, "double"
      elif (ch == "\u2018" or (ch == "'" and not doubles)) and before in _OPENERS_BEFORE and _LETTER.match(after):
        opened, kind = i, "single"
    elif kind == "double" and ch in '"\u201d':
      spans.append((opened, i + 1))
      kind = None
    elif kind == "single" and (ch == "\u2019" or (ch == "'" and not doubles)) and not _LETTER.match(after):
      spans.append((opened, i + 1))
      kind = None
  if kind is not None:
    spans.append((opened, len(paragraph)))
  return spans


def _inside(spans: Sequence[tuple[int, int]], position: int) -> bool:
  k = bisect.bisect_right(spans, (position, math.inf)) - 1
  return k >= 0 and spans[k][0] <= position < spans[k][1]


def quoted_share(text: str) -> float:
  """The share of the words of `text` that lie inside quotation marks (0.0 for a text without words)."""
  quoted = total = 0
  for paragraph in extractive.paragraphs(text):
    spans = _quoted_spans(paragraph)
    if not spans:
      total += len(_WORD.findall(paragraph))
      continue
    for word in _WORD.finditer(paragraph):  # an opening mark is the first character of its word
      total += 1
      quoted += _inside(spans, word.start())
  return quoted / total if total else 0.0


def narration(text: str) -> str:
  """The words of `text` outside quotation marks, paragraphs a blank line apart."""
  out = []
  for paragraph in extractive.paragraphs(text):
    pieces, last = [], 0
    for start, end in _quoted_spans(paragraph):
      pieces.append(paragraph[last:start])
      last = end
    pieces.append(paragraph[last:])
    out.append(" ".join(pieces))
  return "\n\n".join(out)


FIRST_PERSON = frozenset({"i", "me", "my", "mine", "myself", "we", "us", "our", "ours", "ourselves"})
THIRD_PERSON = frozenset({"he", "him", "his", "himself", "she", "her", "hers", "herself", "they", "them",
                          "their", "theirs", "themselves"})
# Narration with at least this share of first-person pronouns (among first and third) is first person.
FIRST_PERSON_SHARE = 0.3


def narration_person(text: str) -> str:
  """"first" or "third": the person of the narration, by its pronouns outside quotations."""
  words = [w.lower() for w in re.findall(r"[A-Za-z]+", narration(text))]
  first = sum(w in FIRST_PERSON for w in words)
  third = sum(w in THIRD_PERSON for w in words)
  return "first" if first + third and first / (first + third) >= FIRST_PERSON_SHARE else "third"


def merge_scenes(word_counts: Sequence[int], max_scenes: int = MAX_SCENES) -> list[tuple[int, int]]:
  """Contiguous [start, end) groups of scenes, at most `max_scenes`, that tile `word_counts`.

  While there are too many groups, the adjacent pair with the fewest words together is merged (ties:
  the earliest), so that merged scenes stay as even as the boundaries allow.
  """
  if not word_counts:
    raise ValueError("a chapter has at least one scene")
  groups = [[i, i + 1, n] for i, n in enumerate(word_counts)]
  while len(groups) > max_scenes:
    j = min(range(len(groups) - 1), key=lambda k: (groups[k][2] + groups[k + 1][2], k))
    groups[j:j + 2] = [[groups[j][0], groups[j + 1][1], groups[j][2] + groups[j + 1][2]]]
  return [(start, end) for start, end, _ in groups]


def _balanced_cuts(weights: Sequence[int], n_groups: int) -> list[tuple[int, int]]:
  """`n_groups` contiguous non-empty groups of `weights` whose sums are close to equal."""
  total, groups, start = sum(weights), [], 0
  for g in range(1, n_groups):
    target, running, end = total * g / n_groups, sum(weights[:start]), start
    while end < len(weights) - (n_groups - g) and (end == start or running + weights[end] / 2 <= target):
      running += weights[end]
      end += 1
    groups.append((start, end))
    start = end
  groups.append((start, len(weights)))
  return groups


def _merge_small(groups: list[list], limit: int) -> list[list]:
  """Merge the adjacent pair of [name, start, end] groups with the fewest chapters until `limit`."""
  while len(groups) > limit:
    j = min(range(len(groups) - 1), key=lambda k: (groups[k + 1][2] - groups[k][1], k))
    groups[j:j + 2] = [[groups[j][0], groups[j][1], groups[j + 1][2]]]
  return groups


def arc_partition(book: Book) -> list[tuple[str, int, bool]]:
  """The chapters of `book` as consecutive arcs: [(name, number of chapters, from the book's parts)].

  A book divided into parts (chapters whose heading path has a parent, e.g. "BOOK THE FIRST") gets
  one arc per part (chapters before the first part join it; more than 12 parts are merged pairwise,
  smallest first). Otherwise, and when that gives a single arc of ten or more chapters, the chapters
  are cut into word-balanced arcs: 1 for one or two chapters, else max(3, round(n / 10)), at most 12;
  such an arc is named after its first and last chapters. No arc has more than 99 chapters.
  """
  chapters = book.chapters
  n = len(chapters)
  parts: list[list] = []
  for i, chapter in enumerate(chapters):
    parent = chapter.path[-2] if len(chapter.path) > 1 else None
    if parts and (parent is None or parent == parts[-1][0]):
      parts[-1][2] = i + 1
    elif parent is None:
      parts.append([None, i, i + 1])
    else:
      parts.append([parent, i, i + 1])
  named = [p for p in parts if p[0] is not None]
  if len(named) >= 2:
    if parts[0][0] is None and len(parts) > 1:  # front chapters join the first part
      parts[1][1] = parts[0][1]
      parts = parts[1:]
    parts = _merge_small(parts, MAX_ARCS)
    if all(end - start <= MAX_CHAPTERS_PER_ARC for _, start, end in parts):
      return [(" ".join(str(name).split()), end - start, True) for name, start, end in parts]
  n_arcs = 1 if n < 3 else min(MAX_ARCS, max(3, round(n / 10), math.ceil(n / MAX_CHAPTERS_PER_ARC)))
  arcs = []
  for start, end in _balanced_cuts([c.n_words for c in chapters], min(n_arcs, n)):
    first, last = chapter_name(chapters[start]), chapter_name(chapters[end - 1])
    arcs.append((first if start == end - 1 else f"{first} to {last}", end - start, False))
  return arcs


def chapter_name(chapter) -> str:
  """The chapter's own heading, whitespace collapsed, at most 120 characters ("Chapter N" when it has
  none, as a chapter cut by length)."""
  name = " ".join(chapter.title.split()) or f"Chapter {chapter.index + 1}"
  return name if len(name) <= 120 else name[:119].rstrip() + "\u2026"


def book_title(title: str, max_words: int = 8) -> str:
  """The book's title within `max_words` words: the part before a subtitle (";", ":", ", or") if the
  whole is longer, then without a leading article, then its first words."""
  title = " ".join(title.split()) or "Untitled"
  if len(title.split()) <= max_words:
    return title
  head = re.split(r";|:|,\s+or\b|\s+or,", title, maxsplit=1)[0].strip()
  if head and len(head.split()) <= max_words:
    return head
  words = (head or title).split()
  if words[0].lower() in ("the", "a", "an") and len(words) - 1 <= max_words:
    return " ".join(words[1:])
  return " ".join(words[:max_words])


# Word lists for the approximated axes (lowercased word forms). Our choice, not the paper's.
ACTION_WORDS = frozenset("""
struck strike strikes ran run runs running fought fight fighting fired fire shot shoot rushed rush
leaped leapt sprang spring seized seize grabbed grab threw throw flung jumped jump fled flee chased
chase pursued attacked attack killed kill blow blows sword pistol gun guns battle escape escaped dashed
hurried climbed fell crashed burst tore smashed wrestled kicked knocked galloped raced dragged pulled
pushed struggled charged stabbed wounded bleeding blood danger fled scrambled hurled
""".split())
ROMANTIC_WORDS = frozenset("""
love loved loving lover lovers heart hearts kiss kissed kisses darling dearest beloved marry married
marriage wedding passion passionate tender tenderness affection adore adored courtship sweetheart embrace
embraced caress blush blushed romance admirer suitor proposal engaged
""".split())
EROTIC_WORDS = frozenset("naked nakedness lust lustful sensual voluptuous seduce seduced seduction thighs".split())
WORLD_WORDS = frozenset("""
land lands country countries city cities town towns village street streets castle mountain mountains river
rivers sea seas island islands forest forests road roads valley kingdom empire law laws custom customs
church palace ship ships harbour harbor tower hall garden plain plains desert shore coast realm nation
nations government society century ancient machine world
""".split())
# A lexicon rate (hits per word) of this much scores 50; the score saturates towards 99.
HALF_SCORE_RATE = {"action": 0.006, "romantic": 0.004, "erotic": 0.002, "world_building": 0.01}


# A sentence end: . ! or ? (with any closing quotes or brackets) before whitespace or the end.
_SENTENCE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]_]*(?=\s|$)")


def mean_sentence_words(text: str) -> float:
  """Words per sentence, counting sentence ends by their punctuation (cheaper than
  `extractive.split_sentences`, and as good for an average)."""
  return len(text.split()) / max(1, len(_SENTENCE_END.findall(text)))


def _saturating(rate: float, half: float) -> int:
  return min(99, round(99 * (1 - 0.5 ** (rate / half))))


def lexicon_scores(text: str, quoted: float) -> dict[str, int]:
  """Approximate scores 0-99 of the axes action, world_building, exposition, romantic, erotic, pacing.

  action, romantic, erotic, world_building: the rate of their word lists, saturating (HALF_SCORE_RATE
  scores 50). exposition: narration (1 - quoted share) scaled by sentence length (30 words: full).
  pacing: shorter sentences, more action and dialogue read faster: 100 - 2 x mean sentence words,
  plus a fifth of the action score and of the dialogue percentage, within 0-99.
  """
  words = [w.lower() for w in re.findall(r"[A-Za-z]+", text)]
  n = max(len(words), 1)
  counts = Counter(words)
  rates = {axis: sum(counts[w] for w in lexicon) / n for axis, lexicon in (
      ("action", ACTION_WORDS), ("romantic", ROMANTIC_WORDS), ("erotic", EROTIC_WORDS),
      ("world_building", WORLD_WORDS))}
  scores = {axis: _saturating(rate, HALF_SCORE_RATE[axis]) for axis, rate in rates.items()}
  mean_words = mean_sentence_words(text)
  scores["exposition"] = min(99, round(99 * (1 - quoted) * min(1.0, mean_words / 30)))
  pacing = 100 - 2 * mean_words + scores["action"] / 5 + 100 * quoted / 5
  scores["pacing"] = max(0, min(99, round(pacing)))
  return scores


def dialog_score(quoted: float) -> int:
  """The dialog axis measured: the percentage of quoted words, at most 99."""
  return min(99, round(100 * quoted))


def embedding(text: str) -> tuple[dict[str, int], float]:
  """(scores of the seven axes in EMBEDDING order, measured quoted share) of a text: dialog measured,
  the others `lexicon_scores`."""
  quoted = round(quoted_share(text), 4)  # as records keep it, so that dialog_score(share) == dialog
  scores = lexicon_scores(text, quoted)
  scores["dialog"] = dialog_score(quoted)
  order = ("action", "dialog", "world_building", "exposition", "romantic", "erotic", "pacing")
  return {axis: scores[axis] for axis in order}, quoted


def style_bullets(book: Book) -> list[str]:
  """Measured facts about the prose of `book`, one line each."""
  text = "\n\n".join(c.text for c in book.chapters)
  paragraphs = extractive.paragraphs(text)
  words = [w.lower() for w in re.findall(r"[A-Za-z]+", text)]
  n_words = [c.n_words for c in book.chapters]
  person = narration_person(text)
  sentence_words = mean_sentence_words(text)
  paragraph_words = sum(len(p.split()) for p in paragraphs) / max(len(paragraphs), 1)
  sample = words[:20_000]
  return [
      f"Narrated in the {person} person",
      f"Sentences average {sentence_words:.0f} words and paragraphs {paragraph_words:.0f} words",
      f"About {round(100 * quoted_share(text))}% of the words are dialogue inside quotation marks",
      f"{len(book.chapters)} chapters of {min(n_words):,} to {max(n_words):,} words "
      f"(median {sorted(n_words)[len(n_words) // 2]:,})",
      f"Vocabulary: {len(set(sample)) * 1000 // max(len(sample), 1)} distinct words per 1,000 "
      f"(first {len(sample):,} words)",
  ]
