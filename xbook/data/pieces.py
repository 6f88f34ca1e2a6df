"""Token-level building blocks of the book views: tokenized segments, pieces, examples, packing.

A *piece* is a run of tokens of one segment kind inside an example, with a weight scale: 1 where the
example supervises those tokens, a smaller factor where they only repeat context already supervised
elsewhere (e.g. the global plan at the head of every window) or are given as input.

An *example* is a dict of equal-length numpy arrays, the task features of every view
(xbook.data.features.TASK_FEATURES: targets, loss_weights, segment_kinds, segment_ids, positions).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from xbook.data import trajectory
from xbook.data.features import TASK_FEATURES

log = logging.getLogger(__name__)

Encode = Callable[[str], Sequence[int]]
Example = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Piece:
  """Tokens of one segment kind in an example; their loss weight is the kind's weight times `scale`."""

  ids: tuple[int, ...]
  kind: str
  scale: float = 1.0

  def __len__(self) -> int:
    return len(self.ids)

  def cut(self, start: int, end: int | None = None, scale: float | None = None) -> Piece:
    """Tokens [start, end) of this piece, optionally with another scale."""
    return Piece(self.ids[start:end], self.kind, self.scale if scale is None else scale)


@dataclasses.dataclass(frozen=True)
class EncodedSegment:
  """A trajectory segment and its token ids (the book's last text segment also holds EOS)."""

  segment: trajectory.Segment
  ids: tuple[int, ...]

  def piece(self, scale: float = 1.0) -> Piece:
    return Piece(self.ids, self.segment.kind, scale)


def encode_segment(encode: Encode, segment: trajectory.Segment) -> tuple[int, ...]:
  """The ids of one segment: its marker and the rest encoded apart, then joined.

  Generation feeds the model a prefix that ends with a marker (xbook.infer.generate.prompt_ids, built
  with this function), and must see the marker's ids as training did. Encoded together, a marker tag
  and the text after it need not split there: the pre-tokenizer regex of Llama 3, Qwen and Tekken makes
  `>The` of `<premise>The` one pre-token. An xbook vocabulary's markers are symbols, which split the text
  anyway (tests/test_vocab.py checks that its ids are those of the whole text).
  """
  marker, rest = trajectory.split_marker(segment)
  return tuple(encode(marker)) + tuple(encode(rest))


def encode_book(record: Mapping[str, Any], encode: Encode, eos_id: int, *, plan_order: str = "interleaved",
                marker_style: str = "symbols") -> list[EncodedSegment]:
  """Tokenize every trajectory segment of one scaffold record once (encode_segment); EOS, once, closes
  the last one (the end of the book).

  Each segment is one call of `encode`; the longest are scene texts, which the books segmenter bounds,
  so a book costs time linear in its length (xbook.data.hf_vocab, "Speed"; tests/test_vocab.py).
  """
  segments = trajectory.scaffold_to_segments(record, plan_order, marker_style)
  encoded = [EncodedSegment(s, encode_segment(encode, s)) for s in segments]
  encoded[-1] = dataclasses.replace(encoded[-1], ids=encoded[-1].ids + (eos_id,))
  return encoded


def total_length(pieces: Sequence[Piece]) -> int:
  return sum(len(p) for p in pieces)


def assemble(pieces: Sequence[Piece], weight_table: Sequence[float]) -> Example:
  """One unpacked example (segment id 1, positions 0..n-1) from pieces in reading order."""
  kinds = np.concatenate([np.full(len(p), trajectory.KIND_ID[p.kind], np.int32) for p in pieces])
  scales = np.concatenate([np.full(len(p), p.scale, np.float32) for p in pieces])
  n = len(kinds)
  return {
      "targets": np.array([i for p in pieces for i in p.ids], np.int32).reshape(n),
      "loss_weights": np.asarray(weight_table, np.float32)[kinds] * scales,
      "segment_kinds": kinds,
      "segment_ids": np.ones(n, np.int32),
      "positions": np.arange(n, dtype=np.int32),
  }


def pack(examples: Sequence[Example], length: int) -> list[Example]:
  """Pack unpacked examples, in order, into rows of at most `length` tokens (next fit).

  Each example keeps its tokens and weights; within a row it gets segment id 1, 2, ... and positions
  that restart at 0. Examples longer than `length` are an error (cut them first).
  """
  rows: list[list[Example]] = []
  used = length
  for example in examples:
    n = len(example["targets"])
    if n > length:
      raise ValueError(f"an example of {n} tokens cannot be packed into rows of {length}")
    if used + n > length:
      rows.append([])
      used = 0
    rows[-1].append(example)
    used += n
  packed = []
  for row in rows:
    merged = {name: np.concatenate([e[name] for e in row]) for name in TASK_FEATURES}
    merged["segment_ids"] = np.concatenate(
        [np.full(len(e["targets"]), i + 1, np.int32) for i, e in enumerate(row)])
    packed.append(merged)
  return packed


def full_examples(book: Sequence[EncodedSegment], *, length: int, weight_table: Sequence[float],
                  book_id: str = "") -> list[Example]:
  """The `full` view: the whole trajectory as one example, or none when it exceeds `length`."""
  n = sum(len(s.ids) for s in book)
  if n > length:
    log.warning("full view: skipped book %s: its trajectory has %d tokens, more than the sequence "
                "length %d (the windows view covers it)", book_id, n, length)
    return []
  return [assemble([s.piece() for s in book], weight_table)]
