"""Characters and settings of a book, found in its text without any model.

The `characters` and `settings` fields of a scaffold record come from here whatever the summarizer
backend is, so records of different backends list the same people and places. (An LLM backend may later
fill these fields from a call of its own; the schema does not care which did.)

How it reads the text:

- A *name word* is a capitalized word that is rarely written in lowercase and that occurs capitalized
  in mid-sentence, not only at the start of sentences or quotations ("Scrooge" yes, "Then" no).
- A *mention* is a run of name words joined by single spaces, optionally after an honorific
  ("Mr. Scrooge", "Ebenezer Scrooge", "Bob Cratchit"). Possessive `'s` is dropped.
- A form is a *person* when it takes an honorific, or is the subject or object of a speech verb
  ("said Scrooge", "Scrooge replied") or a possessive, more often than it follows a locative
  preposition; it is a *place* when it follows a locative preposition ("in London", "on the Heath")
  at least twice and more often than it shows person evidence. Forms mostly written after "the"
  ("the Ghost") are not people.
- Aliases are merged, most-mentioned form first: a form joins the earlier character that shares a
  word with it and whose honorific class (Mr / Mrs / Miss) does not conflict, preferring one that
  shares its first word. So "Scrooge", "Mr. Scrooge" and "Ebenezer Scrooge" are one person, while
  "Mr. Fezziwig" and "Mrs. Fezziwig" stay two.
- Role by mention rank: the most mentioned character is the protagonist; the next `MAJOR_RANKS` with
  at least `MAJOR_SHARE` of the protagonist's mentions are major, the rest minor. Settings alike,
  with two roles: "primary" for the first and the next `MAJOR_RANKS`, "secondary" for the rest.
- A description is the most central (`xbook.scaffold.extractive.centrality`) short sentence among
  those that mention the entity, narration preferred to dialogue.

Everything here is deterministic: ties go to the form seen first in the book.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from xbook.books.types import Book
from xbook.scaffold import extractive
from xbook.scaffold.schema import CHARACTER_ROLES, SETTING_ROLES

# Bump when the extractor's output changes.
ALGORITHM = "entities-capitalized/1"
MAX_CHARACTERS = 12
MAX_SETTINGS = 8
# Major characters (primary settings): the next MAJOR_RANKS after the first, with MAJOR_SHARE of its mentions.
MAJOR_RANKS = 3
MAJOR_SHARE = 0.05
# A description is a sentence of this many words (inclusive) that mentions the entity.
DESCRIPTION_WORDS = (6, 30)
# Centrality is computed over at most this many candidate sentences (evenly spaced through the book).
MAX_DESCRIPTION_CANDIDATES = 300

# Honorific (without its period, lowercased) -> class; forms of different classes are different people.
# The class also gives a gender: "mr" male, "mrs" and "miss" female.
HONORIFICS: dict[str, str] = {
    **dict.fromkeys(("mr", "messrs", "sir", "lord", "dr", "doctor", "professor", "prof", "captain",
                     "capt", "colonel", "col", "general", "major", "lieutenant", "sergeant", "rev",
                     "father", "uncle", "master", "king", "prince", "count", "baron", "judge"), "mr"),
    **dict.fromkeys(("mrs", "lady", "madame", "mme", "aunt", "mother", "queen", "princess",
                     "countess", "duchess"), "mrs"),
    **dict.fromkeys(("miss", "mlle", "mademoiselle", "ms"), "miss"),
}
SPEECH_VERBS = frozenset("""
said says say cried replied asked answered returned exclaimed observed whispered shouted muttered
added continued remarked rejoined repeated began inquired enquired called thought laughed
""".split())
LOCATIVE_PREPOSITIONS = frozenset("""
in at on near into towards toward through across beyond outside inside around within reached
""".split())
# "to London", "from London": evidence of a place only for a name never seen acting as a person.
DIRECTIONAL_PREPOSITIONS = frozenset({"to", "from"})
MALE_PRONOUNS = frozenset({"he", "him", "his", "himself"})
FEMALE_PRONOUNS = frozenset({"she", "her", "hers", "herself"})
# A pronoun this many words after a mention, within its sentence, counts towards the name's gender.
PRONOUN_WINDOW = 8
# Capitalized words that are never names of people or places of a story.
NOT_NAMES = frozenset("""
i god heaven heavens christmas christ english french sunday monday tuesday wednesday
thursday friday saturday january february march april may june july august september october november
december chapter stave book part volume the ah oh o yes no madam ma'am dear saint
one two three four five six seven eight nine ten eleven twelve
""".split())

_WORD = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)*")
_POSSESSIVE = re.compile(r"['\u2019]s$")
_APOSTROPHE = re.compile(r"['\u2019]")
_OPENING_QUOTES = set("\"'\u201c\u2018(_[")
_QUOTES = set("\"\u201c\u201d\u2018")


@dataclass
class _Token:
  """One word of a sentence and what is around it."""

  text: str            # the word, possessive 's removed
  lower: str
  capitalized: bool    # first letter upper case, and not an all-capitals word ("STAVE")
  initial: bool        # first word of its sentence or of a quotation inside it
  possessive: bool
  joined: bool         # separated from the previous word by spaces only, or by "." after a title
  after_period: bool   # separated from the previous word by "." (as in "Mr. Scrooge")


def _tokens(sentence: str) -> list[_Token]:
  tokens: list[_Token] = []
  previous_end = 0
  for match in _WORD.finditer(sentence):
    raw = match.group()
    gap = sentence[previous_end:match.start()]
    previous_end = match.end()
    word = _POSSESSIVE.sub("", raw)
    after_period = bool(tokens) and gap.strip() == "."
    after_title = after_period and tokens[-1].lower in HONORIFICS
    shouted = len(word) > 1 and word.isupper()
    tokens.append(_Token(
        text=word, lower=word.lower(), capitalized=word[:1].isupper() and not shouted,
        initial=not tokens or bool(_OPENING_QUOTES & set(gap)), possessive=word != raw,
        joined=bool(tokens) and (gap.isspace() or after_title), after_period=after_period))
  return tokens


@dataclass
class _Form:
  """One surface form of a name ("Mr. Scrooge") and what its contexts say about it."""

  honorific: str      # "" or the honorific as written ("Mr.")
  core: tuple[str, ...]
  first_seen: int
  mentions: int = 0
  person: int = 0     # honorific, speech verb or possessive next to it
  place: int = 0      # after a locative preposition
  directional: int = 0  # after "to" or "from"
  after_the: int = 0
  male: int = 0       # he/his/him soon after it
  female: int = 0     # she/her soon after it

  @property
  def name(self) -> str:
    return " ".join(((self.honorific,) if self.honorific else ()) + self.core)

  @property
  def honorific_class(self) -> str:
    return HONORIFICS.get(self.honorific.rstrip(".").lower(), "") if self.honorific else ""

  @property
  def gender(self) -> str:
    """"m" or "f" from the honorific, else from pronouns that follow it twice as often as the other."""
    if self.honorific_class:
      return "m" if self.honorific_class == "mr" else "f"
    if self.male >= 2 and self.male >= 2 * self.female:
      return "m"
    if self.female >= 2 and self.female >= 2 * self.male:
      return "f"
    return ""


@dataclass
class _Entity:
  forms: list[_Form] = field(default_factory=list)
  honorific_class: str = ""
  gender: str = ""

  @property
  def mentions(self) -> int:
    return sum(f.mentions for f in self.forms)

  @property
  def words(self) -> set[str]:
    return {w for f in self.forms for w in f.core}


def _name_words(sentences: list[list[_Token]]) -> set[str]:
  """Words that the book writes capitalized in mid-sentence and seldom in lowercase."""
  lower, capital, mid = Counter(), Counter(), Counter()
  for tokens in sentences:
    for token in tokens:
      if not token.capitalized:
        lower[token.lower] += 1
        continue
      capital[token.lower] += 1
      if not token.initial:
        mid[token.lower] += 1
  return {w for w, n in capital.items()
          if _APOSTROPHE.split(w)[0] not in NOT_NAMES and w not in HONORIFICS and len(w) > 1
          and mid[w] >= 2 and mid[w] >= 0.3 * n and lower[w] <= 0.2 * n}


def _mention_at(tokens: list[_Token], i: int, name_words: set[str]) -> tuple[int, int] | None:
  """(first name word, end) of the mention that starts at `tokens[i]`, if one does.

  A mention is an optional honorific, then one to three name words joined by spaces; it stops after
  a possessive and at a repeated word ("Scrooge, Scrooge").
  """
  def is_name(token: _Token) -> bool:
    return token.capitalized and token.lower in name_words

  first = i + 1 if tokens[i].capitalized and tokens[i].lower in HONORIFICS else i
  if first >= len(tokens) or not is_name(tokens[first]) or (first > i and not tokens[first].joined):
    return None
  end = first + 1
  while (end < len(tokens) and end - first < 3 and tokens[end].joined and is_name(tokens[end])
         and not tokens[end - 1].possessive and tokens[end].lower != tokens[end - 1].lower):
    end += 1
  return first, end


def _observe(form: _Form, tokens: list[_Token], start: int, end: int) -> None:
  """Add the evidence of the mention `tokens[start:end]` to its form."""
  before = tokens[start - 1].lower if start > 0 else ""
  before2 = tokens[start - 2].lower if start > 1 else ""
  after = tokens[end].lower if end < len(tokens) and tokens[end].joined else ""
  form.mentions += 1
  form.person += (bool(form.honorific) + (before in SPEECH_VERBS and tokens[start].joined)
                  + (after in SPEECH_VERBS) + tokens[end - 1].possessive)
  form.after_the += before == "the"
  form.place += before in LOCATIVE_PREPOSITIONS or (before == "the" and before2 in LOCATIVE_PREPOSITIONS)
  form.directional += before in DIRECTIONAL_PREPOSITIONS
  pronoun = next((t.lower for t in tokens[end:end + PRONOUN_WINDOW]
                  if t.lower in MALE_PRONOUNS or t.lower in FEMALE_PRONOUNS), "")
  form.male += pronoun in MALE_PRONOUNS
  form.female += pronoun in FEMALE_PRONOUNS


def _forms(sentences: list[list[_Token]], name_words: set[str]) -> list[_Form]:
  """Every mention of name words in the book, grouped by surface form, with its context evidence."""
  forms: dict[tuple[str, tuple[str, ...]], _Form] = {}
  for tokens in sentences:
    i = 0
    while i < len(tokens):
      span = _mention_at(tokens, i, name_words)
      if span is None:
        i += 1
        continue
      first, end = span
      honorific = (tokens[i].text + ("." if tokens[first].after_period else "")) if first > i else ""
      key = (honorific, tuple(t.text for t in tokens[first:end]))
      if key not in forms:
        forms[key] = _Form(honorific, key[1], first_seen=len(forms))
      _observe(forms[key], tokens, i, end)
      i = end
  return list(forms.values())


def _compatible(form: _Form, entity: _Entity) -> bool:
  shares = bool(set(form.core) & entity.words)
  conflict = bool(form.honorific_class and entity.honorific_class
                  and form.honorific_class != entity.honorific_class) or bool(
                      form.gender and entity.gender and form.gender != entity.gender)
  if form.honorific_class and len(form.core) == 1:
    # A titled single name ("Mrs. Cratchit") joins only an entity known by that very name, not one
    # whose full name merely contains it ("Bob Cratchit").
    conflict = conflict or not any(f.core == form.core for f in entity.forms)
  return shares and not conflict


def _merge_people(forms: Iterable[_Form]) -> list[_Entity]:
  """Characters from person forms, most mentioned form first, aliases joined (see the module doc)."""
  entities: list[_Entity] = []
  for form in sorted(forms, key=lambda f: (-f.mentions, f.first_seen)):
    candidates = [e for e in entities if _compatible(form, e)]
    if candidates:
      same_first = [e for e in candidates if any(f.core[0] == form.core[0] for f in e.forms)]
      entity = max(same_first or candidates, key=lambda e: e.mentions)
    else:
      entity = _Entity()
      entities.append(entity)
    entity.forms.append(form)
    entity.honorific_class = entity.honorific_class or form.honorific_class
    entity.gender = entity.gender or form.gender
  return sorted(entities, key=lambda e: (-e.mentions, min(f.first_seen for f in e.forms)))


def _describe(names: list[str], sentences: list[str]) -> str:
  """The most central sentence of moderate length among those that mention one of `names`."""
  pattern = re.compile(r"\b(?:" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
                       + r")\b")
  low, high = DESCRIPTION_WORDS
  candidates = [s for s in sentences if low <= len(s.split()) <= high and pattern.search(s)]
  # Narration describes; dialogue mostly addresses. Prefer sentences without quotation marks.
  candidates = [s for s in candidates if not _QUOTES & set(s)] or candidates
  if not candidates:
    candidates = [s for s in sentences if pattern.search(s)][:1]
  if len(candidates) > MAX_DESCRIPTION_CANDIDATES:
    picks = np.linspace(0, len(candidates) - 1, MAX_DESCRIPTION_CANDIDATES).round().astype(int)
    candidates = [candidates[i] for i in picks]
  if len(candidates) <= 2:
    return candidates[0] if candidates else ""
  scores = np.round(extractive.centrality(extractive.tfidf_similarity(candidates)), 12)
  return candidates[int(np.lexsort((np.arange(len(candidates)), -scores))[0])]


def _role(rank: int, mentions: int, top: int, roles: tuple[str, ...]) -> str:
  """The first role for rank 0; the middle one for the next `MAJOR_RANKS` with `MAJOR_SHARE` of the
  top mentions; the last one for the rest."""
  if rank == 0:
    return roles[0]
  return roles[-2] if rank <= MAJOR_RANKS and mentions >= MAJOR_SHARE * top else roles[-1]


def extract_entities(book: Book, max_characters: int = MAX_CHARACTERS, max_settings: int = MAX_SETTINGS
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """The characters and settings of `book`, most mentioned first.

  Args:
    book: a segmented book.
    max_characters: the most characters returned.
    max_settings: the most settings returned.

  Returns:
    (characters, settings), each a list of `{"name", "aliases", "role", "description", "mentions"}`:
    `name` is the most mentioned form, `aliases` the other forms by decreasing mentions, `role` one of
    CHARACTER_ROLES (characters) or SETTING_ROLES (settings), `description` one sentence of the book
    that mentions the entity, `mentions` how many times any of its forms occurs.
  """
  sentences = [s for chapter in book.chapters for s in extractive.split_sentences(chapter.text)]
  tokenized = [_tokens(s) for s in sentences]
  name_words = _name_words(tokenized)
  # A plural of a name ("the Cratchits") is a family, not a character.
  forms = [f for f in _forms(tokenized, name_words)
           if not (len(f.core) == 1 and f.core[0].endswith("s") and f.core[0][:-1].lower() in name_words)]
  people = [f for f in forms if f.person >= 1 and f.person >= f.place and f.after_the * 2 < f.mentions]
  for f in forms:
    f.place += f.directional if f.person == 0 else 0
  places = [f for f in forms if not f.honorific and f.place >= 2 and f.place > f.person]

  characters = _merge_people(people)[:max_characters]
  taken = {w for e in characters for w in e.words}
  places = sorted((f for f in places if not set(f.core) & taken), key=lambda f: (-f.place, f.first_seen))
  place_entities = [_Entity([f]) for f in places[:max_settings]]

  def records(entities: list[_Entity], roles: tuple[str, ...], with_the: bool) -> list[dict[str, Any]]:
    # A bare word that is part of several entities' names ("Cratchit") does not pick a description.
    shared = {w for w, n in Counter(w for e in entities for w in e.words).items() if n > 1}
    out = []
    for rank, entity in enumerate(entities):
      forms_ = sorted(entity.forms, key=lambda f: (-f.mentions, f.first_seen))
      names = [("the " if with_the and f.after_the * 2 >= f.mentions else "") + f.name for f in forms_]
      telling = [f.name for f in forms_ if f.honorific or len(f.core) > 1 or f.core[0] not in shared]
      out.append({"name": names[0], "aliases": names[1:],
                  "role": _role(rank, entity.mentions, entities[0].mentions, roles),
                  "description": _describe(telling or [f.name for f in forms_], sentences),
                  "mentions": entity.mentions})
    return out

  place_entities.sort(key=lambda e: (-e.mentions, e.forms[0].first_seen))
  return records(characters, CHARACTER_ROLES, False), records(place_entities, SETTING_ROLES, True)


# The most people and places a prompt brief names.
BRIEF_CHARACTERS = 4
BRIEF_SETTINGS = 2


def _listed(names: list[str]) -> str:
  return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def prompt_brief(characters: list[dict[str, Any]], settings: list[dict[str, Any]]) -> str:
  """Who and where a book is about, as a phrase for a prompt: the protagonist and the major characters
  (at most BRIEF_CHARACTERS), then "in" the primary settings (at most BRIEF_SETTINGS), e.g. "Scrooge,
  Bob Cratchit and Fred, in London". It names no event of the plot, so a prompt built from it repeats
  none of the premise. Empty lists give "people of the author's choosing"."""
  people = [c["name"] for c in characters if c["role"] in ("protagonist", "major")][:BRIEF_CHARACTERS]
  places = [s["name"] for s in settings if s["role"] == "primary"][:BRIEF_SETTINGS]
  if not people and not places:
    return "people of the author's choosing"
  return ", in ".join(filter(None, [_listed(people) if people else "people", _listed(places) if places else ""]))
