"""Over-represented phrases: words and phrases far more frequent in a text than in human books.

Derived from the texts themselves, not from a list: every word 1-, 2- and 3-gram of the evaluated text
that occurs at least `MIN_COUNT` times is compared with its rate in the human baseline's books (add-0.5
smoothed); for single words the reference rate is the larger of the baseline's and general English's
(`wordfreq`, Speer et al., word frequencies pooled from subtitles, Wikipedia, books, web and news), so
a corpus of a few novels does not make ordinary words look rare. An n-gram is over-represented when it
occurs `MIN_RATIO` times more often than that rate predicts. Names are left out (a word the text
capitalises in most of its occurrences), as are stopword-only n-grams: a novel's characters and places
are its own, not a tic. The index is the number of words covered by over-represented n-grams per 1,000
words of text; the top offenders are ranked by count times log ratio.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from typing import Any, Iterable, Sequence

from xbook.evals.metrics import STOPWORDS, words

MIN_COUNT = 4
MIN_RATIO = 12.0
ORDERS = (1, 2, 3)
TOP = 15


def ngram_counts(tokens: Sequence[str]) -> dict[int, Counter]:
  """{n: Counter of space-joined n-grams} for n in ORDERS."""
  return {n: Counter(" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)) for n in ORDERS}


def pooled(books: Iterable[dict[int, Counter]]) -> dict[int, Counter]:
  """The n-gram counts of several books added up."""
  total = {n: Counter() for n in ORDERS}
  for counts in books:
    for n in ORDERS:
      total[n].update(counts[n])
  return total


@dataclasses.dataclass
class Reference:
  """Reference rates: pooled human n-gram counts, less the counts of `exclude` (leave-one-out)."""

  counts: dict[int, Counter]
  exclude: dict[int, Counter] | None = None

  def __post_init__(self) -> None:
    self.totals = {n: max(sum(self.counts[n].values()) - sum((self.exclude or {}).get(n, {}).values()), 1)
                   for n in ORDERS}

  def rate(self, gram: str, n: int) -> float:
    count = self.counts[n][gram] - (self.exclude[n][gram] if self.exclude else 0)
    rate = (max(count, 0) + 0.5) / self.totals[n]
    if n == 1:
      from wordfreq import word_frequency  # loads its frequency tables on first use
      rate = max(rate, word_frequency(gram, "en"))
    return rate


def names(text: str) -> set[str]:
  """Words the text capitalises in most of their occurrences (names, places)."""
  upper, total = Counter(), Counter()
  for word in re.findall(r"[A-Za-z]+(?:'[A-Za-z]+)*", text.replace("’", "'")):
    key = word.lower()
    total[key] += 1
    upper[key] += word[0].isupper()
  return {w for w, n in total.items() if upper[w] > n / 2}


def _candidate(gram: str, proper: set[str]) -> bool:
  parts = gram.split()
  return not any(p in proper for p in parts) and not all(p in STOPWORDS for p in parts)


def offenders(text: str, reference: Reference, tokens: Sequence[str] | None = None,
              counts: dict[int, Counter] | None = None) -> list[dict[str, Any]]:
  """The over-represented n-grams of `text`: [{"phrase", "n", "count", "ratio", "per_1000"}], worst first."""
  tokens = words(text) if tokens is None else tokens
  counts = ngram_counts(tokens) if counts is None else counts
  proper = names(text)
  found = []
  for n in ORDERS:
    total = max(sum(counts[n].values()), 1)
    for gram, count in counts[n].items():
      if count < MIN_COUNT or not _candidate(gram, proper):
        continue
      ratio = count / (total * reference.rate(gram, n))
      if ratio >= MIN_RATIO:
        found.append({"phrase": gram, "n": n, "count": count, "ratio": round(ratio, 1),
                      "per_1000": round(1000 * count / max(len(tokens), 1), 3)})
  found.sort(key=lambda f: -f["count"] * f["n"] * math.log(f["ratio"]))
  return found


def index(tokens: Sequence[str], found: Iterable[dict[str, Any]]) -> float:
  """Words covered by the over-represented n-grams `found`, per 1,000 words of `tokens`."""
  by_n = {n: {f["phrase"] for f in found if f["n"] == n} for n in ORDERS}
  covered = bytearray(len(tokens))
  for n, phrases in by_n.items():
    if not phrases:
      continue
    for i in range(len(tokens) - n + 1):
      if " ".join(tokens[i:i + n]) in phrases:
        covered[i:i + n] = b"\x01" * n
  return 1000 * sum(covered) / max(len(tokens), 1)


def example(text: str, phrase: str, width: int = 160) -> str:
  """A passage of `text` around the first occurrence of `phrase` (case-insensitive), or ""."""
  pattern = r"\W+".join(re.escape(p) for p in phrase.split())
  match = re.search(r"(?i)\b" + pattern + r"\b", text.replace("’", "'"))
  if not match:
    return ""
  start, end = max(0, match.start() - width // 2), min(len(text), match.end() + width // 2)
  return ("..." if start else "") + " ".join(text[start:end].split()) + ("..." if end < len(text) else "")
