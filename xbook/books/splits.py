"""Train/validation/test assignment by author, so that no author's books cross splits."""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata

# The splits of the corpus, here and nowhere else: scaffold records, seqio tasks and the command line
# take them from this tuple.
SPLITS = ("train", "validation", "test")


def normalise_author(author: str) -> str:
  """A spelling-insensitive key for an author name.

  Accents, case, punctuation and word order are ignored, so "Emily Brontë", "Emily Bronte" and
  "Bronte, Emily" share a key. Different forms of a name ("J. M. Barrie", "James M. Barrie") do not.
  """
  decomposed = unicodedata.normalize("NFKD", author)
  ascii_letters = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
  return " ".join(sorted(re.findall(r"[^\W_]+", ascii_letters)))


def split_for_author(author: str, fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)) -> str:
  """The split ("train", "validation" or "test") of every book by this author.

  The normalised name is hashed with SHA-256 (stable across runs and machines, unlike `hash`) to a
  number in [0, 1), which falls into one of the three fraction intervals.

  Args:
    author: the author's name as printed.
    fractions: shares of train, validation and test; non-negative, summing to 1.

  Raises:
    ValueError: for an author name with no letters or digits, or bad fractions.
  """
  key = normalise_author(author)
  if not key:
    raise ValueError(f"author name {author!r} has no letters or digits to hash")
  if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or not math.isclose(
      sum(fractions), 1.0):
    raise ValueError(f"fractions must be three non-negative shares summing to 1, got {fractions}")
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  position = int.from_bytes(digest[:8], "big") / 2**64
  bound = 0.0
  for split, fraction in zip(SPLITS, fractions):
    bound += fraction
    if position < bound:
      return split
  return SPLITS[-1]
