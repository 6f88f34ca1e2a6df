"""Scenes: a chapter cut into contiguous runs of paragraphs.

A chapter is cut first at its explicit breaks: rows of asterisks or other ornaments (`* * *`, `#`,
`~`, ...) on a paragraph of their own, and wide gaps of 3+ blank lines. Pieces longer than the target
are then cut at paragraph boundaries into pieces near the target size, and pieces below the minimum
are merged with a neighbour. Break-marker paragraphs are dropped: they separate scenes but belong to
none. Every other paragraph lands in exactly one scene, in order.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

# A break marker: a line made only of ornament characters (asterisks, hashes, dashes, bullets ...).
_MARKER_LINE = re.compile(r"^\s*[*#~•·⁂❧☙✻✢✣✤❦+=_\-–—.]+(?:\s+[*#~•·⁂❧☙✻✢✣✤❦+=_\-–—.]+)*\s*$")
# A marker needs a non-dot ornament, so a lone "." or ". . ." line of verse is not a break.
_ORNAMENT = re.compile(r"[*#~•·⁂❧☙✻✢✣✤❦+=_\-–—]")
WIDE_GAP_BLANK_LINES = 3


def n_words(text: str) -> int:
  return len(text.split())


def is_break_marker(paragraph: str) -> bool:
  """True for a paragraph whose every line is a row of ornaments, e.g. "*     *     *"."""
  return all(_MARKER_LINE.match(line) and _ORNAMENT.search(line) for line in paragraph.split("\n"))


def paragraphs_and_breaks(text: str) -> tuple[list[str], set[int]]:
  """The text's paragraphs (marker paragraphs dropped) and where explicit breaks fall.

  A paragraph is a run of non-blank lines, kept as printed (lines joined with "\\n").

  Returns:
    (paragraphs, breaks): `i in breaks` means a scene break comes right before paragraphs[i].
  """
  paragraphs: list[str] = []
  breaks: set[int] = set()
  current: list[str] = []
  blank_run = 0
  pending_break = False

  def close_paragraph() -> None:
    nonlocal pending_break
    paragraph = "\n".join(current)
    current.clear()
    if is_break_marker(paragraph):
      pending_break = True
      return
    if pending_break and paragraphs:
      breaks.add(len(paragraphs))
    pending_break = False
    paragraphs.append(paragraph)

  for line in text.split("\n"):
    if not line.strip():
      if current:
        close_paragraph()
      blank_run += 1
      continue
    if not current and blank_run >= WIDE_GAP_BLANK_LINES and paragraphs:
      pending_break = True
    blank_run = 0
    current.append(line.rstrip())
  if current:
    close_paragraph()
  return paragraphs, breaks


def pieces_for(total_words: int, target_words: int, max_words: int) -> int:
  """How many pieces to cut `total_words` into: nearest to the target size, none above the max."""
  return max(1, round(total_words / target_words), math.ceil(total_words / max_words))


def balanced_cuts(sizes: Sequence[int], pieces: int) -> list[int]:
  """Cut points splitting items with these sizes into `pieces` runs of near-equal total size.

  Returns:
    Increasing indices 0 < c_1 < ... < c_{pieces-1} < len(sizes); run j is items[c_j:c_{j+1}].
    Fewer cut points come back when there are fewer items than pieces.
  """
  pieces = min(pieces, len(sizes))
  cumulative = [0]
  for size in sizes:
    cumulative.append(cumulative[-1] + size)
  total = cumulative[-1]
  cuts: list[int] = []
  for j in range(1, pieces):
    low = (cuts[-1] if cuts else 0) + 1
    high = len(sizes) - (pieces - j)
    goal = total * j / pieces
    cuts.append(min(range(low, high + 1), key=lambda c: abs(cumulative[c] - goal)))
  return cuts


def _cut(items: list[str], cuts: list[int]) -> list[list[str]]:
  bounds = [0] + cuts + [len(items)]
  return [items[a:b] for a, b in zip(bounds, bounds[1:])]


def _words(piece: list[str]) -> int:
  return sum(n_words(p) for p in piece)


def _split_by_size(piece: list[str], target_words: int, max_words: int) -> list[list[str]]:
  pieces = pieces_for(_words(piece), target_words, max_words)
  return _cut(piece, balanced_cuts([n_words(p) for p in piece], pieces))


def _merge_small(pieces: list[list[str]], target_words: int, min_words: int,
                 max_words: int) -> list[list[str]]:
  """Merge each piece under `min_words` into its smaller neighbour, re-cutting an oversize result.

  A merged piece over `max_words` is cut again by size when every new piece reaches the minimum;
  otherwise it stays whole (one long paragraph can make that unavoidable).
  """
  pieces = list(pieces)
  while len(pieces) > 1:
    small = [i for i, piece in enumerate(pieces) if _words(piece) < min_words]
    if not small:
      break
    i = min(small, key=lambda k: _words(pieces[k]))
    neighbours = [k for k in (i - 1, i + 1) if 0 <= k < len(pieces)]
    k = min(neighbours, key=lambda n: _words(pieces[n]))
    a, b = sorted((i, k))
    merged = pieces[a] + pieces[b]
    replacement = [merged]
    if _words(merged) > max_words:
      recut = _split_by_size(merged, target_words, max_words)
      if all(_words(piece) >= min_words for piece in recut):
        replacement = recut
    pieces[a:b + 1] = replacement
  return pieces


def split_scenes(chapter_text: str, target_words: int = 1200, min_words: int = 500,
                 max_words: int = 2500) -> list[str]:
  """Cut a chapter into scenes at explicit breaks, else at paragraph boundaries by size.

  Break-marker paragraphs (`* * *`, `#`, ornaments) are dropped; wide blank gaps (3+ blank lines)
  count as breaks too. Each scene is its paragraphs joined with a blank line, so
  `"\\n\\n".join(scenes)` is the chapter's paragraph list (markers left out), each paragraph once and
  in order. A scene is under `min_words` only when the whole chapter is, and over `max_words` only
  when a single paragraph makes a smaller cut impossible.

  Args:
    chapter_text: the chapter body, paragraphs separated by blank lines.
    target_words: preferred scene size where a piece between breaks must be cut by size.
    min_words: pieces below this are merged with a neighbour.
    max_words: pieces above this are cut.

  Returns:
    The scene texts ([] for a chapter with no text).

  Raises:
    ValueError: for sizes that are not 0 < min_words <= target_words <= max_words, or (a bug) when
      the scenes fail to tile the chapter's paragraphs.
  """
  if not 0 < min_words <= target_words <= max_words:
    raise ValueError(f"scene sizes must satisfy 0 < min_words <= target_words <= max_words, got "
                     f"min={min_words} target={target_words} max={max_words}")
  paragraphs, breaks = paragraphs_and_breaks(chapter_text)
  if not paragraphs:
    return []
  segments = _cut(paragraphs, sorted(breaks))
  pieces = [piece for segment in segments for piece in _split_by_size(segment, target_words, max_words)]
  pieces = _merge_small(pieces, target_words, min_words, max_words)
  scenes = ["\n\n".join(piece) for piece in pieces]
  if "\n\n".join(scenes).split("\n\n") != paragraphs:
    raise ValueError("scenes do not tile the chapter: a paragraph was lost, repeated or reordered")
  return scenes
