"""The `stages` view: short examples, one step of the plan hierarchy each, packed to the sequence length.

Stages of one book, in order:
  1. prompt -> premise, synopsis, outline
  2. per chapter: outline, chapter plan -> its scene plans
  3. per scene: scene plan, the text before it -> the scene text

The given part (context) carries loss weight 0 and the produced part (target) its kind's weight, so every
target token is learned exactly once. A context is cut to a quarter of the sequence length, keeping its
end (the outline's latest chapters, the text right before the scene). A target too long for one example
continues in the next, whose context is the same given part followed by the end of the target so far.
The last example of a stage ends with EOS. Examples are then packed, in order, into rows of the
sequence length (xbook.data.pieces.pack).
"""

from __future__ import annotations

from typing import Sequence

from xbook.data.pieces import EncodedSegment, Example, Piece, assemble, pack, total_length


def _tail(pieces: Sequence[Piece], n: int) -> list[Piece]:
  """The last `n` tokens of `pieces`, as pieces of the same kinds."""
  out, left = [], n
  for p in reversed(pieces):
    if left <= 0:
      break
    out.append(p.cut(max(0, len(p) - left)))
    left -= len(out[-1])
  return [p for p in reversed(out) if len(p)]


def _head(pieces: Sequence[Piece], start: int, n: int) -> list[Piece]:
  """Tokens [start, start + n) of the concatenated `pieces`."""
  out, offset = [], 0
  for p in pieces:
    lo, hi = max(start - offset, 0), min(start + n - offset, len(p))
    if lo < hi:
      out.append(p.cut(lo, hi))
    offset += len(p)
  return out


def _stage(context: Sequence[Piece], history: Sequence[Piece], target: Sequence[Piece], eos: Piece,
           length: int) -> list[list[Piece]]:
  """Examples of one stage: `context` (weight 0), the end of `history` (weight 0) then `target`."""
  budget = max(1, length // 4)
  given = _tail([p.cut(0, scale=0.0) for p in context], budget)
  history = [p.cut(0, scale=0.0) for p in history]
  target = list(target) + [eos]
  n, start, examples = total_length(target), 0, []
  while start < n:
    done = _head(target, 0, start)
    lead = given + _tail(history + [p.cut(0, scale=0.0) for p in done], budget)
    size = length - total_length(lead)
    examples.append(lead + _head(target, start, size))
    start += size
  return examples


def stage_examples(book: Sequence[EncodedSegment], eos_id: int, *, length: int,
                   weight_table: Sequence[float]) -> list[Example]:
  """The `stages` view of one tokenized book (xbook.data.pieces.encode_book), packed.

  Args:
    book: the book's segments; its last text segment ends with EOS, which is dropped here (every stage
      ends with its own EOS).
    eos_id: the vocabulary's EOS id.
    length: the sequence length of the packed rows.
    weight_table: loss weight per kind id.

  Returns:
    Packed examples (segment ids 1..k per row, positions restarting per stage example).
  """
  if length < 8:
    raise ValueError(f"stages need a sequence length of at least 8 tokens, got {length}")
  pieces = [s.piece() for s in book]
  pieces[-1] = pieces[-1].cut(0, len(pieces[-1]) - 1)
  by_kind: dict[str, list[Piece]] = {}
  for piece in pieces:
    by_kind.setdefault(piece.kind, []).append(piece)
  eos = Piece((eos_id,), "text")
  outline = by_kind["outline"]
  staged = _stage(by_kind["prompt"], [], by_kind["premise"] + by_kind["synopsis"] + outline, eos, length)
  scene_plans, texts = by_kind["scene_plan"], by_kind["text"]
  chapter_of_scene = [s.segment.chapter for s in book if s.segment.kind == "scene_plan"]
  for c, chapter_plan in enumerate(by_kind["chapter_plan"]):
    plans = [p for p, chapter in zip(scene_plans, chapter_of_scene) if chapter == c]
    staged += _stage(outline + [chapter_plan], [], plans, eos, length)
  for i, (scene_plan, text) in enumerate(zip(scene_plans, texts)):
    staged += _stage([scene_plan], texts[:i], [text], eos, length)
  return pack([assemble(pieces, weight_table) for pieces in staged], length)
