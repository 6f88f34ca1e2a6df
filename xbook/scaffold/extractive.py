"""Extractive summarization: the most central sentences of a text, in their original order.

Sentences are nodes of a graph whose edges are the cosine similarities of their TF-IDF vectors
(document frequencies counted over the sentences of the text itself); a sentence's centrality is its
stationary probability under a damped random walk on that graph (LexRank with continuous weights,
computed by power iteration). The summary takes sentences from the most central down, skipping any that
would overrun the word budget or that nearly repeat one already taken, and prints them in reading order.

Everything here is deterministic: ties in centrality go to the earlier sentence.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import numpy as np

# Bump when the algorithm changes what it outputs: it is part of every cache key (as the model name).
ALGORITHM = "lexrank-tfidf/1"

# Inside a quotation, a sentence is cut at a sentence end only once it has this many words.
QUOTED_SENTENCE_WORDS = 40

# Words that end in a period without ending the sentence (compared lowercased, without the period).
ABBREVIATIONS = frozenset({
    "mr", "mrs", "messrs", "ms", "dr", "st", "mme", "mlle", "mm", "jr", "sr", "prof", "rev", "revd",
    "capt", "col", "gen", "lieut", "lt", "sgt", "maj", "hon", "gov", "fr", "viz", "vs", "cf",
    "e.g", "i.e",
})

# Function words that carry no topic; they would otherwise dominate sentence similarity.
STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing done down during each even ever every few for from
further had has have having he her here hers herself him himself his how if in into is it its itself
just let like may me might more most much must my myself never no nor not now of off on once only or
other ought our ours ourselves out over own said same say says shall she should so some such than that
the their theirs them themselves then there these they this those though through thus to too under
until up upon us very was we were what when where which while who whom whose why will with would yet
you your yours yourself yourselves one two also ll ve re don didn
""".split())

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
# Sentence-final punctuation, any closing quotes/brackets/italic marks after it, then whitespace.
_CANDIDATE_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]_]*\s+")
# What opens the next word: optional opening quotes/brackets/italic marks, then its first character.
_NEXT_START = re.compile(r"[\"'\u201c\u2018(\[_]*(\w)")
_OPENING_QUOTES = "\"\u201c\u2018"
_SINGLE_CLOSING = re.compile(r"\u2019(?![^\W_])")
_LAST_WORD = re.compile(r"(\S+)$")
_TERM = re.compile(r"[^\W_]+")


def paragraphs(text: str) -> list[str]:
  """The paragraphs of `text` (split at blank lines), whitespace in each collapsed to single spaces."""
  blocks = _PARAGRAPH_BREAK.split(text.replace("\r\n", "\n").replace("\r", "\n"))
  return [" ".join(block.split()) for block in blocks if block.strip()]


def _inside_quotation(paragraph: str, origin: int, position: int) -> bool:
  """Whether a quotation opened in `paragraph[origin:position]` is still open at `position`.

  Straight double quotes pair up by count; curly ones by opening against closing marks. A curly single
  closing mark inside a word is an apostrophe (I\u2019m), not the end of a quotation.
  """
  head = paragraph[origin:position]
  single_closings = len(_SINGLE_CLOSING.findall(head))
  return (head.count('"') % 2 == 1 or head.count("\u201c") > head.count("\u201d")
          or head.count("\u2018") > single_closings)


def _after_abbreviation(paragraph: str, end: re.Match[str]) -> bool:
  """Whether the single period matched by `end` belongs to a title, an abbreviation or an initial."""
  punctuation = end.group().rstrip()
  if not punctuation.startswith(".") or punctuation.startswith(".."):
    return False
  word = _LAST_WORD.search(paragraph, 0, end.start())
  stem = word.group(1).lstrip("\"'\u201c\u2018([_").lower() if word else ""
  is_initial = len(stem) == 1 and stem.isalpha() and stem != "i"  # as in "J. Smith"
  return stem in ABBREVIATIONS or is_initial


def split_sentences(text: str) -> list[str]:
  """Split prose into sentences.

  A sentence never spans a paragraph break; line breaks inside a paragraph are spaces. A sentence ends
  at `.`, `!` or `?` (with any closing quotes after it) when the next word starts with a capital or a
  digit, unless the period belongs to a title or abbreviation (Mr., Mrs., Dr., St., ...) or an
  initial. Inside a quotation (opened earlier in the paragraph and not closed, nor ended by a sentence
  that opens a new one) a sentence ends only once it has `QUOTED_SENTENCE_WORDS` words: an utterance
  stays whole with its attribution, while a story told inside quotation marks still splits.
  So `"Bah!" said Scrooge, "Humbug!"` is one sentence, and `Mr. Scrooge` is not cut.

  Args:
    text: prose, with paragraphs separated by blank lines (CRLF or LF).

  Returns:
    The sentences in order, each with whitespace collapsed, so each occurs verbatim in
    `" ".join(text.split())`.
  """
  return [sentence for paragraph in paragraphs(text) for sentence in _paragraph_sentences(paragraph)]


def _paragraph_sentences(paragraph: str) -> list[str]:
  """The sentences of one whitespace-collapsed paragraph (see `split_sentences`)."""
  sentences = []
  start = quote_origin = 0
  for end in _CANDIDATE_END.finditer(paragraph):
    next_word = _NEXT_START.match(paragraph, end.end())
    if (not next_word or not (next_word.group(1).isupper() or next_word.group(1).isdigit())
        or _after_abbreviation(paragraph, end)):
      continue
    opens_quotation = paragraph[end.end()] in _OPENING_QUOTES
    if (not opens_quotation and _inside_quotation(paragraph, quote_origin, end.end())
        and len(paragraph[start:end.start()].split()) < QUOTED_SENTENCE_WORDS):
      continue
    sentences.append(paragraph[start:end.end()].rstrip())
    start = end.end()
    if opens_quotation:
      quote_origin = start
  if paragraph[start:].strip():
    sentences.append(paragraph[start:].strip())
  return sentences


def content_terms(sentence: str) -> list[str]:
  """The lowercased words of `sentence` that can carry a topic (no stopwords, no single letters)."""
  return [t for t in _TERM.findall(sentence.lower()) if len(t) > 1 and t not in STOPWORDS]


def tfidf_similarity(sentences: Sequence[str]) -> np.ndarray:
  """Cosine similarity of the sentences' TF-IDF vectors, an `[n, n]` float64 matrix.

  Term frequency is `1 + log(count)`; inverse document frequency is `1 + log((1 + n) / (1 + df))`,
  with each sentence a document. A sentence without content terms has similarity 0 to everything.
  """
  counts = [Counter(content_terms(s)) for s in sentences]
  n = len(sentences)
  document_frequency = Counter(term for c in counts for term in c)
  idf = {t: 1.0 + np.log((1 + n) / (1 + df)) for t, df in document_frequency.items()}
  # Only terms shared by two or more sentences make edges; every term counts towards a sentence's norm.
  shared = sorted(t for t, df in document_frequency.items() if df > 1)
  column = {t: j for j, t in enumerate(shared)}
  vectors = np.zeros((n, len(shared)))
  norms = np.zeros(n)
  for i, sentence_counts in enumerate(counts):
    for term, count in sentence_counts.items():
      weight = (1.0 + np.log(count)) * idf[term]
      norms[i] += weight * weight
      if term in column:
        vectors[i, column[term]] = weight
  norms = np.sqrt(norms)
  norms[norms == 0] = 1.0
  vectors /= norms[:, None]
  similarity = vectors @ vectors.T
  np.fill_diagonal(similarity, 0.0)
  return similarity


def centrality(similarity: np.ndarray, damping: float = 0.85, tolerance: float = 1e-12,
               max_iterations: int = 1000) -> np.ndarray:
  """Stationary distribution of a damped random walk on a weighted sentence graph (power iteration).

  Args:
    similarity: `[n, n]` non-negative edge weights; from a row of zeros (an isolated sentence) the
      walk jumps to any sentence.
    damping: probability of following an edge rather than jumping to a random sentence.
    tolerance: stop once the L1 change of an iteration falls below this.
    max_iterations: stop after this many iterations regardless.

  Returns:
    `[n]` scores summing to 1.
  """
  n = similarity.shape[0]
  row_sums = similarity.sum(axis=1, keepdims=True)
  transition = np.where(row_sums > 0, similarity / np.where(row_sums > 0, row_sums, 1.0), 1.0 / n)
  scores = np.full(n, 1.0 / n)
  for _ in range(max_iterations):
    updated = (1.0 - damping) / n + damping * (transition.T @ scores)
    converged = np.abs(updated - scores).sum() < tolerance
    scores = updated
    if converged:
      break
  return scores / scores.sum()


def _truncate(sentence: str, n_words: int) -> str:
  return " ".join(sentence.split()[:n_words]) + "..."


def _join(sentences: Sequence[str], paragraph_of: Sequence[int]) -> str:
  """Sentences of one source paragraph joined by a space; paragraphs separated by a blank line."""
  pieces = []
  for i, sentence in enumerate(sentences):
    if i:
      pieces.append(" " if paragraph_of[i] == paragraph_of[i - 1] else "\n\n")
    pieces.append(sentence)
  return "".join(pieces)


def summarize(text: str, target_words: int, *, max_sentences: int | None = None,
              min_sentence_words: int = 6, damping: float = 0.85, redundancy: float = 0.7) -> str:
  """The most central sentences of `text` that fit in `target_words` words, in their original order.

  Sentences are taken by decreasing centrality; one that would overrun the remaining budget, or whose
  similarity to a sentence already taken exceeds `redundancy`, is passed over for the next. Sentences
  shorter than `min_sentence_words` ("Oh!", "Scrooge replied.") are candidates only when no longer one
  fits at all: on their own they say little, yet they look central because they hold only frequent
  words. When no sentence fits the budget, the best-ranked one is cut to `target_words` words and ends
  in "...". A text no longer than the budget comes back whole.

  The summary keeps the source's paragraphs: sentences taken from one paragraph are joined by a space,
  and a blank line separates those of different paragraphs (each line of dialogue stays its own
  paragraph). So when a summary is summarized again, a paragraph that ends without a full stop
  ("he said:--") or inside an unclosed quotation cannot swallow the sentence after it.

  The sentence graph is dense, so time and memory grow with the square of the number of sentences:
  fine for scenes and for a book's chapter summaries (a few thousand sentences), not for a whole novel.

  Args:
    text: the prose to summarize.
    target_words: the word budget (whitespace-separated words); the summary never exceeds it.
    max_sentences: take at most this many sentences (None: no limit).
    min_sentence_words: sentences shorter than this are taken only into an otherwise empty summary.
    damping: the random walk's damping factor (see `centrality`).
    redundancy: the highest TF-IDF cosine similarity a new sentence may have to one already taken.

  Returns:
    The summary, whitespace inside paragraphs collapsed; "" for a text without words.
  """
  if target_words < 1:
    raise ValueError(f"target_words must be at least 1, got {target_words}")
  if max_sentences is not None and max_sentences < 1:
    raise ValueError(f"max_sentences must be at least 1 or None, got {max_sentences}")
  by_paragraph = [_paragraph_sentences(paragraph) for paragraph in paragraphs(text)]
  sentences = [sentence for group in by_paragraph for sentence in group]
  paragraph_of = [k for k, group in enumerate(by_paragraph) for _ in group]
  lengths = [len(s.split()) for s in sentences]
  if sum(lengths) <= target_words and (max_sentences is None or len(sentences) <= max_sentences):
    return _join(sentences, paragraph_of)
  similarity = tfidf_similarity(sentences)
  scores = np.round(centrality(similarity, damping=damping), 12)
  too_short = np.array(lengths) < min_sentence_words
  ranking = np.lexsort((np.arange(len(sentences)), -scores, too_short))
  chosen: list[int] = []
  budget = target_words
  for i in ranking:
    if too_short[i] and chosen:
      break
    if lengths[i] > budget or any(similarity[i, j] > redundancy for j in chosen):
      continue
    chosen.append(int(i))
    budget -= lengths[i]
    if budget == 0 or len(chosen) == max_sentences:
      break
  if not chosen:
    return _truncate(sentences[ranking[0]], target_words)
  chosen.sort()
  return _join([sentences[i] for i in chosen], [paragraph_of[i] for i in chosen])
