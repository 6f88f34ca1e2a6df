"""The `windows` view: a book cut into sequence-length windows, each headed by the global plan.

Every window reads
  global plan   prompt, premise, synopsis, outline (the first 3/8 of the length of them; a longer
                global plan is cut at the end, i.e. in the outline, with a logged warning)
  previously    only when the global plan had to cut the outline: a segment of kind `previously` (the
                outline's marker, "Previously:", then the numbered summaries of the chapters before the window,
                the most recent ones that fit in half the length with the global plan); absent in a
                window that starts at chapter 1, and when the whole outline is in the global plan
                (it would only repeat summaries the window already holds)
  body          a span of chapters: their chapter plans, scene plans and scene texts, in the trajectory
                plan_order (`plans_first` holds within each window)

Chapters are packed greedily, whole, while they fit. A chapter longer than a fresh window's body is split
at scene boundaries, each part repeating the chapter plan; a scene longer than that is split into
consecutive pieces, each repeating the scene plan. In a split chapter a plan is cut to 3/8 of the
body where it first appears (one warning per book says how many plan tokens that dropped) and to 1/8
where it is repeated, so that text always has room. Every scene text token (and the book's closing EOS) lands in exactly one
window, in order.

Weights: the first window's global plan, and the first occurrence of each chapter or scene plan, carry
their kind's loss weight. Repeats (the global plan of later windows, the "previously" segment, a plan
repeated by a continued chapter or scene) carry it times `repeat_weight` (default 0: no plan token is
counted twice).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

from xbook.data import trajectory
from xbook.data.pieces import Encode, EncodedSegment, Example, Piece, assemble, encode_segment, total_length

log = logging.getLogger(__name__)

GLOBAL_KINDS = ("prompt", "premise", "synopsis", "outline")

# (book, what, length) already warned about in this process: the windows of a book are built again at
# every pass over the data, and the warning would repeat with them.
_WARNED: set[tuple[str, str, int]] = set()


def _warn_once(book_id: str, what: str, length: int, message: str, *args: Any) -> None:
  """Log a warning about one book's windows once per process (not at every pass over the data)."""
  if (book_id, what, length) not in _WARNED:
    _WARNED.add((book_id, what, length))
    log.warning(message, *args)


def _earliest_fitting(end: int, fits: Callable[[int], bool]) -> int | None:
  """The smallest `first` in [0, end) with `fits(first)`, for a `fits` that holds from some point on
  (fewer summaries take fewer tokens); None when not even `end - 1` fits.

  Searched from the end, doubling the step, then bisected: a few encodings of texts about the size of
  the answer, where trying `first` = 0, 1, ... would encode the whole outline once per chapter (the
  windowing of a long book was quadratic in its chapters).
  """
  if end <= 0 or not fits(end - 1):
    return None
  good, step = end - 1, 1  # `good` fits
  while good > 0:
    candidate = max(0, good - step)
    if not fits(candidate):
      break
    good, step = candidate, 2 * step
  else:
    return 0
  bad = candidate  # does not fit; the answer is in (bad, good]
  while good - bad > 1:
    middle = (bad + good) // 2
    if fits(middle):
      good = middle
    else:
      bad = middle
  return good


class _Chapter:
  """A chapter's tokenized plan and scenes."""

  def __init__(self, plan: EncodedSegment) -> None:
    self.plan = plan
    self.scene_plans: list[EncodedSegment] = []
    self.texts: list[EncodedSegment] = []

  def length(self) -> int:
    return len(self.plan.ids) + sum(len(s.ids) for s in self.scene_plans + self.texts)


class _Block:
  """The part of one chapter inside a window: its plans, then its texts."""

  def __init__(self) -> None:
    self.plans: list[Piece] = []
    self.texts: list[Piece] = []


class _WindowPlanner:
  """Greedy packing of one book's chapters into windows (see the module docstring)."""

  def __init__(self, record: Mapping[str, Any], book: Sequence[EncodedSegment], encode: Encode, *,
               length: int, plan_order: str, marker_style: str, repeat_weight: float) -> None:
    self.record, self.encode, self.length = record, encode, length
    self.plan_order, self.marker_style, self.repeat_weight = plan_order, marker_style, repeat_weight
    self.prefix_budget = length // 2
    self.global_budget = 3 * length // 8
    self.outline_cut = False
    self.global_plan = self._global_plan([s for s in book if s.segment.kind in GLOBAL_KINDS])
    self.chapters: list[_Chapter] = []
    for s in book:
      if s.segment.kind == "chapter_plan":
        self.chapters.append(_Chapter(s))
      elif s.segment.kind == "scene_plan":
        self.chapters[s.segment.chapter].scene_plans.append(s)
      elif s.segment.kind == "text":
        self.chapters[s.segment.chapter].texts.append(s)
    self.windows: list[tuple[list[Piece], list[_Block]]] = []
    self.remaining = 0
    # The closing marker (one symbol, or several ids of a pretrained tokenizer's tag), its newline and the
    # EOS end the book's last text; a split of that text never separates them.
    closing = trajectory.markers(marker_style)[1]
    self.last_text = book[-1] if book and book[-1].segment.kind == "text" else None
    self.closing_length = len(encode("\n" + closing)) + 1
    self._previously_cache: dict[int, list[Piece]] = {}
    self.plan_tokens_cut = 0

  def _global_plan(self, segments: Sequence[EncodedSegment]) -> list[Piece]:
    pieces, room = [], self.global_budget
    for s in segments:
      pieces.append(s.piece().cut(0, room))
      room -= len(pieces[-1])
    dropped = sum(len(s.ids) for s in segments) - total_length(pieces)
    if dropped:
      self.outline_cut = True
      _warn_once(self.record["book"]["id"], "global plan cut", self.length,
                 "windows view: book %s: the global plan is cut by %d tokens to fit 3/8 of the sequence "
                 "length %d; raise the sequence length to keep the whole outline",
                 self.record["book"]["id"], dropped, self.length)
    return [p for p in pieces if len(p)]

  def _previously(self, chapter: int) -> list[Piece]:
    """The "previously" segment before `chapter`: the latest earlier summaries that fit; none when the
    global plan holds the whole outline."""
    if not self.outline_cut:
      return []
    if chapter not in self._previously_cache:
      room = self.prefix_budget - total_length(self.global_plan)
      encoded: dict[int, tuple[int, ...]] = {}

      def fits(first: int) -> bool:
        body = "Previously:\n" + trajectory.outline_text(self.record["chapters"][first:chapter])
        encoded[first] = encode_segment(
            self.encode, trajectory.make_segment(trajectory.PREVIOUSLY, body, self.marker_style))
        return len(encoded[first]) <= room

      first = _earliest_fitting(chapter, fits)
      self._previously_cache[chapter] = (
          [] if first is None else [Piece(encoded[first], trajectory.PREVIOUSLY, self.repeat_weight)])
    return self._previously_cache[chapter]

  def _open_window(self, chapter: int) -> None:
    prefix = [p.cut(0, scale=1.0 if not self.windows else self.repeat_weight) for p in self.global_plan]
    prefix += self._previously(chapter)
    self.windows.append((prefix, []))
    self.remaining = self.length - total_length(prefix)

  def _fresh_budget(self, chapter: int) -> int:
    return self.length - total_length(self.global_plan) - total_length(self._previously(chapter))

  def _add_whole_chapter(self, chapter: _Chapter) -> None:
    block = _Block()
    block.plans = [chapter.plan.piece()] + [s.piece() for s in chapter.scene_plans]
    block.texts = [s.piece() for s in chapter.texts]
    self.windows[-1][1].append(block)
    self.remaining -= chapter.length()

  def _add_split_chapter(self, c: int, chapter: _Chapter) -> None:
    """Scenes of a chapter too long for one window: each whole where it fits, else in pieces."""
    fresh_budget = self._fresh_budget(c)
    first_limit, repeat_limit = max(1, 3 * fresh_budget // 8), max(1, fresh_budget // 8)
    chapter_plan = chapter.plan.piece().cut(0, first_limit)
    block: _Block | None = None  # this chapter's block in the current window
    for scene_plan, text in zip(chapter.scene_plans, chapter.texts):
      start, opened = 0, False
      while start < len(text.ids):
        scene_context = scene_plan.piece().cut(0, first_limit if start == 0 else repeat_limit,
                                               scale=1.0 if start == 0 else self.repeat_weight)
        plans_cost = (len(chapter_plan) if block is None else 0) + len(scene_context)
        rest = len(text.ids) - start
        fits_fresh = rest <= fresh_budget - len(chapter_plan) - len(scene_context)
        end = min(len(text.ids), start + self.remaining - plans_cost)
        closing_start = len(text.ids) - self.closing_length
        if text is self.last_text and end > closing_start and end < len(text.ids) and (
            closing_start > start or not opened):  # (a fresh window too small for them splits them)
          end = closing_start  # the book's closing ids go whole into the next window
        if (plans_cost + rest > self.remaining and (fits_fresh or plans_cost >= self.remaining)) or end <= start:
          self._open_window(c)
          block, opened = None, True
          continue
        opened = False
        if block is None:
          block = _Block()
          block.plans.append(chapter_plan)
          # Later parts of this chapter repeat a shorter chapter plan.
          chapter_plan = chapter_plan.cut(0, repeat_limit, scale=self.repeat_weight)
          self.windows[-1][1].append(block)
        block.plans.append(scene_context)
        self.remaining -= plans_cost
        block.texts.append(text.piece().cut(start, end))
        self.remaining -= end - start
        start = end
    self.plan_tokens_cut += sum(max(0, len(s.ids) - first_limit)
                                for s in [chapter.plan] + chapter.scene_plans)

  def plan(self) -> list[list[Piece]]:
    """Pieces of each window in reading order."""
    for c, chapter in enumerate(self.chapters):
      if self.windows and self.windows[-1][1] and chapter.length() <= self.remaining:
        self._add_whole_chapter(chapter)
      elif chapter.length() <= self._fresh_budget(c):
        self._open_window(c)
        self._add_whole_chapter(chapter)
      else:
        if not self.windows:
          self._open_window(c)
        self._add_split_chapter(c, chapter)
    if self.plan_tokens_cut:
      _warn_once(self.record["book"]["id"], "plans cut", self.length,
                 "windows view: book %s: %d tokens of long chapter and scene plans were cut to split "
                 "their chapters into windows of %d tokens", self.record["book"]["id"],
                 self.plan_tokens_cut, self.length)
    return [self._render(prefix, blocks) for prefix, blocks in self.windows if blocks]

  def _render(self, prefix: list[Piece], blocks: list[_Block]) -> list[Piece]:
    if self.plan_order == "plans_first":
      body = [p for b in blocks for p in b.plans] + [p for b in blocks for p in b.texts]
    else:
      body = [p for b in blocks for p in b.plans + b.texts]
    return [p for p in prefix + body if len(p)]


def window_examples(record: Mapping[str, Any], book: Sequence[EncodedSegment], encode: Encode, *,
                    length: int, weight_table: Sequence[float], plan_order: str = "interleaved",
                    marker_style: str = "symbols", repeat_weight: float = 0.0) -> list[Example]:
  """The `windows` view of one book.

  Args:
    record: the scaffold record (for its chapter summaries and id).
    book: its tokenized trajectory (xbook.data.pieces.encode_book with the same plan_order and style).
    encode: text -> token ids of the same vocabulary.
    length: the sequence length; every window has at most this many tokens.
    weight_table: loss weight per kind id (xbook.data.trajectory.loss_weight_table).
    plan_order, marker_style: as the trajectory's.
    repeat_weight: factor on the loss weight of repeated plans (module docstring).

  Returns:
    One unpacked example (xbook.data.pieces) per window, in book order.
  """
  if length < 8:
    raise ValueError(f"windows need a sequence length of at least 8 tokens, got {length}")
  planner = _WindowPlanner(record, book, encode, length=length, plan_order=plan_order,
                           marker_style=marker_style, repeat_weight=repeat_weight)
  return [assemble(pieces, weight_table) for pieces in planner.plan()]
