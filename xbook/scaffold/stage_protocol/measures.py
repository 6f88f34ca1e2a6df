"""Measures of the format: binned word counts, embedding spaces, preview words.

An *embedding space* scores a chapter or scene 0-99 on seven axes (`EMBEDDING_AXES`), written one line
(`format_embedding`, `parse_embedding`). Word counts are binned (`bin_word_count`): tens below 100, fifties
below 1,000, hundreds below 10,000, five hundreds above, each written with 2-5 digits. A preview line counts
its words (`preview_words`) as pagestorm's preview checks do.
"""

from __future__ import annotations

import math
import re
from typing import Mapping

from xbook.scaffold.stage_protocol.framing import StageFormatError
from xbook.scaffold.stage_protocol.profiles import EMBEDDING_AXES


def _word_count_step(n: int) -> int:
  return 10 if n < 100 else 50 if n < 1_000 else 100 if n < 10_000 else 500


def bin_word_count(n_words: int) -> int:
  """`n_words` rounded to its bin: to tens below 100, fifties below 1,000, hundreds below 10,000,
  five hundreds above (ties to the even multiple), kept within 10..99,999 (2-5 digits)."""
  if n_words < 0:
    raise ValueError(f"a word count is >= 0, got {n_words}")
  step = _word_count_step(n_words)
  return min(99_999, max(10, round(n_words / step) * step))


def word_count_range(binned: int) -> tuple[int, int]:
  """The (lowest, highest) raw word counts that `bin_word_count` maps to `binned`.

  Raises:
    ValueError: for a value that is no bin.
  """
  hits = [n for n in _bin_candidates(binned) if bin_word_count(n) == binned]
  if not hits:
    raise ValueError(f"{binned} is not a binned word count (tens below 100, fifties below 1,000, "
                     "hundreds below 10,000, five hundreds above)")
  return min(hits), max(hits)


def _bin_candidates(binned: int) -> range:
  step = _word_count_step(max(binned - 1, 0))
  return range(max(0, binned - 3 * step), binned + 3 * step + 1)


def chapter_text_max_tokens(binned_words: int, tokens_per_word: float = 2.0) -> int:
  """A chapter text's generation budget: the highest raw count of its bin plus a margin (50% below
  100 words, 25% below 1,000, 15% below 10,000, 8% above), times `tokens_per_word` (pagestorm's rule,
  `orchestrator_14b.py`); a writer takes the smaller of this and the stage's max_tokens."""
  _, high = word_count_range(binned_words)
  margin = 0.5 if high < 100 else 0.25 if high < 1_000 else 0.15 if high < 10_000 else 0.08
  return math.ceil(math.ceil(high * (1 + margin)) * tokens_per_word)


def format_embedding(embedding: Mapping[str, int]) -> str:
  """`action: 12, dialog: 40, ...` in EMBEDDING_AXES order."""
  return ", ".join(f"{axis}: {int(embedding[axis])}" for axis in EMBEDDING_AXES)


_EMBEDDING = re.compile(", ".join(rf"{axis}: ([0-9]{{1,2}})" for axis in EMBEDDING_AXES))


def parse_embedding(line: str) -> dict[str, int]:
  """The scores of an embedding-space line; StageFormatError unless it is exactly the seven axes in
  order, each 0-99."""
  match = _EMBEDDING.fullmatch(line.strip())
  if not match:
    raise StageFormatError(f"an embedding space must read {format_embedding(dict.fromkeys(EMBEDDING_AXES, 0))!r} "
                           f"(each 0-99), got {line.strip()[:120]!r}")
  return {axis: int(value) for axis, value in zip(EMBEDDING_AXES, match.groups())}


# Preview words (per pagestorm's preview checks): a word is letters (Latin, with Latin-1 and Latin
# Extended-A accents) or digits with common punctuation; a word made of punctuation alone is one dash,
# quote mark, ellipsis or ampersand. Tags admit fewer punctuation marks (no , ; ! ?).
_LATIN = "A-Za-z0-9\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff\u0100-\u017f"
_TEXT_PUNCT = "&'\"`\u00b4/().,:;!?+\u2014\u2013\u201c\u201d\u2018\u2019\u2026\\-"
_TAG_PUNCT = "&'\"`\u00b4/().:+\u2014\u2013\u201c\u201d\u2018\u2019\u2026\\-"
_LONE = "&\u2014\u2013\u201c\u201d\u2018\u2019\u2026"


def _word_pattern(punctuation: str) -> re.Pattern[str]:
  return re.compile(rf"[{_LATIN}][{_LATIN}{punctuation}]*|[{punctuation}][{_LATIN}][{_LATIN}{punctuation}]*|[{_LONE}]")


_TEXT_WORD = _word_pattern(_TEXT_PUNCT)
_TAG_WORD = _word_pattern(_TAG_PUNCT)


def preview_words(text: str, tag: bool = False) -> tuple[int, list[str]]:
  """(number of words, the words that are not preview words) of one line of a preview section."""
  pattern = _TAG_WORD if tag else _TEXT_WORD
  words = text.split()
  return len(words), [w for w in words if not pattern.fullmatch(w)]
