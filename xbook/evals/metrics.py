"""Text metrics of one book, for comparison with a human baseline measured the same way.

Every figure is computed from the words of the text (lower-cased letter runs with inner apostrophes):
  - repetition: `repeat_rate_within` (share of a chapter's word 4-grams that repeat an earlier 4-gram of
    the same chapter, over all chapters), `repeat_rate_across` (share of the book's word 8-grams that
    also occur in another chapter), `longest_repeat` (words in the longest word sequence that occurs
    twice in the book, found by binary search over lengths with rolling hashes);
  - lexical diversity: `mtld` (MTLD, McCarthy & Jarvis 2010, Behavior Research Methods 42(2): the mean
    length of runs of words whose type-token ratio stays above 0.72, forward and backward averaged) and
    `distinct_1`, `distinct_2` (distinct / total n-grams), each the mean over equal 1,000-word windows so
    that books of different lengths compare;
  - `cohesion`: mean overlap (Jaccard) of the content words of adjacent sentences: shuffled or
    incoherent prose loses it;
  - `sentence_mean`, `sentence_sd` (words per sentence), `dialogue_share` (share of words inside
    quotation marks), `paragraph_mean` (words per paragraph), `flesch` (Flesch reading ease,
    on up to `READABILITY_WORDS` words spread over the book);
  - structure: `chapters`, `chapter_words_mean`, `chapter_words_cv`, `scene_words_mean`.
Over-represented phrases need the baseline's frequencies: see xbook.evals.overrep.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from typing import Any, Sequence

import numpy as np

from xbook.evals.texts import EvalBook

WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)]*\s+(?=[\"'“‘(]?[A-Z0-9])")
WINDOW_WORDS = 1000
READABILITY_WORDS = 20000
MTLD_THRESHOLD = 0.72  # McCarthy & Jarvis (2010)
STOPWORDS = frozenset("""a about above after again against all am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for from further had has
have having he her here hers herself him himself his how i if in into is it its itself just me more most my
myself no nor not now of off on once only or other our ours ourselves out over own same she should so some
such than that the their theirs them themselves then there these they this those through to too under until
up very was we were what when where which while who whom why will with would you your yours yourself
yourselves said one upon""".split())

# Which side of the human distribution is bad: a value beyond the 95th percentile on that side is marked.
HIGHER_WORSE, LOWER_WORSE, BOTH_WORSE = +1, -1, 2
# name -> (label, which side is worse: HIGHER_WORSE, LOWER_WORSE, or BOTH_WORSE where either extreme is
# unlike a novel: 2 chapters, a book that is 93% dialogue, 6-word or 60-word sentences).
METRICS: dict[str, tuple[str, int]] = {
    "repeat_rate_within": ("repeated 4-grams within a chapter (share)", HIGHER_WORSE),
    "repeat_rate_across": ("8-grams repeated across chapters (share)", HIGHER_WORSE),
    "longest_repeat": ("longest repeated span (words)", HIGHER_WORSE),
    "mtld": ("MTLD (lexical diversity, 1,000-word windows)", LOWER_WORSE),
    "distinct_1": ("distinct-1 (1,000-word windows)", LOWER_WORSE),
    "distinct_2": ("distinct-2 (1,000-word windows)", LOWER_WORSE),
    "cohesion": ("adjacent-sentence content-word overlap", LOWER_WORSE),
    "overrep_index": ("over-represented phrases per 1,000 words", HIGHER_WORSE),
    "sentence_mean": ("sentence length mean (words)", BOTH_WORSE),
    "sentence_sd": ("sentence length spread (s.d., words)", BOTH_WORSE),
    "dialogue_share": ("dialogue share (words in quotes)", BOTH_WORSE),
    "paragraph_mean": ("paragraph length mean (words)", BOTH_WORSE),
    "flesch": ("Flesch reading ease", BOTH_WORSE),
    "chapters": ("chapters", BOTH_WORSE),
    "chapter_words_mean": ("chapter length mean (words)", BOTH_WORSE),
    "chapter_words_cv": ("chapter length variation (s.d./mean)", BOTH_WORSE),
    "scene_words_mean": ("scene length mean (words)", BOTH_WORSE),
}
# What a figure needs before it means what it means for the human novels: {metric: (count, minimum)},
# the count being the book's (or chapter's) "words" or "chapters". Below it the figure is still
# computed (on the whole text, as one short window) but flagged and never placed among the human novels.
MINIMUM: dict[str, tuple[str, int]] = {
    "mtld": ("words", WINDOW_WORDS), "distinct_1": ("words", WINDOW_WORDS), "distinct_2": ("words", WINDOW_WORDS),
    "repeat_rate_across": ("chapters", 2), "chapter_words_cv": ("chapters", 2),
}
# Decimals a figure is shown with (default 3): counts as whole numbers, word lengths to one decimal.
DECIMALS: dict[str, int] = {
    "chapters": 0, "longest_repeat": 0, "words": 0, "scenes_planned": 0, "scenes_written": 0,
    "mtld": 1, "overrep_index": 1, "sentence_mean": 1, "sentence_sd": 1, "paragraph_mean": 1, "flesch": 1,
    "chapter_words_mean": 0, "scene_words_mean": 0,
}
CHAPTER_METRICS = ("repeat_rate_within", "mtld", "distinct_2", "cohesion", "sentence_mean",
                   "dialogue_share", "overrep_index")


def too_short(metric: str, figures: dict[str, float]) -> str | None:
  """Why `figures` (a book's or a chapter's, with its "words" and "chapters") are too short for
  `metric` (MINIMUM), e.g. "too short to measure: 150 words < 1,000"; None when long enough."""
  if metric not in MINIMUM:
    return None
  count, minimum = MINIMUM[metric]
  have = figures.get(count)
  if have is None or have >= minimum:
    return None
  unit = count if have != 1 else count[:-1]
  return f"too short to measure: {have:,.0f} {unit} < {minimum:,}"


def words(text: str) -> list[str]:
  """The lower-cased words of `text` (curly apostrophes read as straight ones)."""
  return WORD.findall(text.lower().replace("’", "'"))


def sentences(text: str) -> list[str]:
  """Sentences: split after . ! ? (and closing quotes) before a capital, within paragraphs."""
  out = []
  for paragraph in paragraphs(text):
    out += [s for s in SENTENCE_END.split(" ".join(paragraph.split())) if words(s)]
  return out


def paragraphs(text: str) -> list[str]:
  return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
  return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def repeat_rate(tokens: Sequence[str], n: int = 4) -> tuple[int, int]:
  """(repeated, total) n-grams: an n-gram counts as repeated from its second occurrence on."""
  grams = ngrams(tokens, n)
  return len(grams) - len(set(grams)), len(grams)


def repeat_rate_across(chapter_tokens: Sequence[Sequence[str]], n: int = 8) -> float:
  """Share of the book's n-grams that also occur in another chapter."""
  sets = [set(ngrams(t, n)) for t in chapter_tokens]
  owners = Counter(g for s in sets for g in s)
  total = sum(len(ngrams(t, n)) for t in chapter_tokens)
  shared = sum(1 for t in chapter_tokens for g in ngrams(t, n) if owners[g] > 1)
  return shared / total if total else 0.0


HASH_BASE = 1_000_003
MASK = 2**64 - 1


def _prefix_hashes(ids: Sequence[int]) -> np.ndarray:
  """prefix[i] = polynomial hash (mod 2**64) of ids[:i]."""
  prefix, acc = [0], 0
  for x in ids:
    acc = (acc * HASH_BASE + x + 1) & MASK
    prefix.append(acc)
  return np.array(prefix, np.uint64)


def longest_repeat(tokens: Sequence[str]) -> tuple[int, int]:
  """(length, start) of the longest word sequence occurring at least twice (0, 0 if none)."""
  vocab: dict[str, int] = {}
  prefix = _prefix_hashes([vocab.setdefault(t, len(vocab)) for t in tokens])

  def repeated_at(length: int) -> int | None:
    power = np.uint64(pow(HASH_BASE, length, 2**64))
    with np.errstate(over="ignore"):
      hashes = prefix[length:] - prefix[:-length] * power
    _, first, counts = np.unique(hashes, return_index=True, return_counts=True)
    hits = first[counts > 1]
    return int(hits.min()) if len(hits) else None

  low, high, start = 0, max(len(tokens) - 1, 0), 0
  while low < high:  # invariant: a repeat of `low` words exists
    mid = (low + high + 1) // 2
    found = repeated_at(mid)
    if found is None:
      high = mid - 1
    else:
      low, start = mid, found
  return low, start


def _mtld_pass(tokens: Sequence[str]) -> float:
  factors, types, count = 0.0, set(), 0
  for token in tokens:
    types.add(token)
    count += 1
    if len(types) / count <= MTLD_THRESHOLD:
      factors, types, count = factors + 1, set(), 0
  if count:  # a partial factor counts in proportion to how far its TTR fell toward the threshold
    factors += (1 - len(types) / count) / (1 - MTLD_THRESHOLD)
  return len(tokens) / factors if factors else float(len(tokens))


def mtld(tokens: Sequence[str]) -> float:
  """MTLD of a token sequence: the mean of a forward and a backward pass (McCarthy & Jarvis 2010)."""
  return (_mtld_pass(tokens) + _mtld_pass(list(reversed(tokens)))) / 2 if tokens else 0.0


def windows(tokens: Sequence[str], size: int = WINDOW_WORDS) -> list[Sequence[str]]:
  """Consecutive `size`-word windows (the remainder dropped; the whole text if shorter than one)."""
  full = [tokens[i:i + size] for i in range(0, len(tokens) - size + 1, size)]
  return full or ([tokens] if tokens else [])


def distinct(tokens: Sequence[str], n: int) -> float:
  grams = ngrams(tokens, n)
  return len(set(grams)) / len(grams) if grams else 0.0


def windowed(fn, tokens: Sequence[str]) -> float:
  values = [fn(w) for w in windows(tokens)]
  return float(np.mean(values)) if values else 0.0


def cohesion(sents: Sequence[str]) -> float:
  """Mean Jaccard overlap of the content words of adjacent sentences."""
  bags = [{w for w in words(s) if w not in STOPWORDS and len(w) > 2} for s in sents]
  pairs = [len(a & b) / len(a | b) for a, b in zip(bags, bags[1:]) if a or b]
  return float(np.mean(pairs)) if pairs else 0.0


QUOTES = (r"“([^”]*)”?", r'"([^"]*)"', r"‘(.*?)’(?![a-z])")


def dialogue_share(text: str) -> float:
  """Share of words between quotation marks: double curly, straight, or single curly quotes, whichever
  style covers the most words (a single closing quote followed by a letter is an apostrophe)."""
  total = len(words(text))
  if not total:
    return 0.0
  quoted = max(sum(len(words(q)) for q in re.findall(style, text, re.DOTALL)) for style in QUOTES)
  return min(1.0, quoted / total)


def syllables(word: str) -> int:
  """Syllables of an English word, estimated: vowel groups, less a silent final e, at least one."""
  groups = len(re.findall(r"[aeiouy]+", word))
  if word.endswith("e") and not word.endswith(("le", "ee", "ye")) and groups > 1:
    groups -= 1
  return max(1, groups)


def flesch(text: str) -> float:
  """Flesch reading ease (Flesch 1948: 206.835 - 1.015 words/sentence - 84.6 syllables/word) of up
  to READABILITY_WORDS words, taken as evenly spaced paragraphs; syllables estimated (`syllables`)."""
  paras = paragraphs(text)
  sizes = [len(p.split()) for p in paras]
  if sum(sizes) > READABILITY_WORDS:
    keep = max(1, int(len(paras) * READABILITY_WORDS / sum(sizes)))
    paras = [paras[int(i * len(paras) / keep)] for i in range(keep)]
  sample = "\n\n".join(paras)
  tokens, n_sentences = words(sample), max(len(sentences(sample)), 1)
  if not tokens:
    return 0.0
  return 206.835 - 1.015 * len(tokens) / n_sentences - 84.6 * sum(map(syllables, tokens)) / len(tokens)


def _cv(values: Sequence[float]) -> float:
  return float(np.std(values) / np.mean(values)) if len(values) > 1 and np.mean(values) else 0.0


def text_metrics(text: str, tokens: Sequence[str] | None = None) -> dict[str, float]:
  """The metrics of one stretch of text that need no chapters (see the module docstring)."""
  tokens = words(text) if tokens is None else tokens
  sents = sentences(text)
  lengths = [len(words(s)) for s in sents] or [0]
  repeated, total = repeat_rate(tokens)
  return {"words": len(tokens), "repeat_rate_within": repeated / total if total else 0.0,
          "mtld": windowed(mtld, tokens), "distinct_1": windowed(lambda w: distinct(w, 1), tokens),
          "distinct_2": windowed(lambda w: distinct(w, 2), tokens), "cohesion": cohesion(sents),
          "sentence_mean": float(np.mean(lengths)), "sentence_sd": float(np.std(lengths)),
          "dialogue_share": dialogue_share(text),
          "paragraph_mean": float(np.mean([len(p.split()) for p in paragraphs(text)] or [0]))}


def book_metrics(book: EvalBook) -> tuple[dict[str, float], list[dict[str, float]], dict[str, Any]]:
  """(book figures, per-chapter figures, examples) of `book`; examples quote the longest repeat."""
  chapter_tokens = [words(c.text) for c in book.chapters]
  all_tokens = [t for ts in chapter_tokens for t in ts]
  chapters = [text_metrics(c.text, ts) for c, ts in zip(book.chapters, chapter_tokens)]
  figures = text_metrics(book.text, all_tokens)
  repeated = sum(repeat_rate(ts)[0] for ts in chapter_tokens)
  total = sum(repeat_rate(ts)[1] for ts in chapter_tokens)
  figures["repeat_rate_within"] = repeated / total if total else 0.0
  figures["repeat_rate_across"] = repeat_rate_across(chapter_tokens)
  length, start = longest_repeat(all_tokens)
  figures["longest_repeat"] = float(length)
  figures["flesch"] = flesch(book.text)
  chapter_words = [len(ts) for ts in chapter_tokens]
  scene_words = [len(words(s)) for c in book.chapters for s in c.scenes]
  figures.update(chapters=float(len(book.chapters)), chapter_words_mean=float(np.mean(chapter_words or [0])),
                 chapter_words_cv=_cv(chapter_words), scene_words_mean=float(np.mean(scene_words or [0])))
  examples = {"longest_repeat": " ".join(all_tokens[start:start + length]) if length else ""}
  return figures, chapters, examples


def median(values: Sequence[float]) -> float:
  return float(statistics.median(values)) if values else 0.0
