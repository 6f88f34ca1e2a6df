"""Human-readable views of converted examples: segment spans, kinds, loss weights, token counts."""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np

from xbook.data import trajectory


@dataclasses.dataclass(frozen=True)
class Span:
  """Tokens [start, end) of one segment in an example, all of one kind, sequence and loss weight."""

  start: int
  end: int
  kind: str
  sequence: int
  loss_weight: float


def example_spans(example: Mapping[str, np.ndarray], marker_ids: Sequence[int] = ()) -> list[Span]:
  """The segments of one converted example (features of length [length]), padding left out.

  A span ends where the packed sequence, the kind or the loss weight changes, and before any token in
  `marker_ids` (the marker symbols of an xbook vocabulary), so consecutive segments of one kind stay apart.
  """
  sequences = example["decoder_segment_ids"]
  kinds = example["decoder_segment_kinds"]
  weights = example["decoder_loss_weights"]
  tokens = example["decoder_target_tokens"]
  markers = set(marker_ids)
  spans: list[Span] = []
  start = None
  for i in range(len(tokens) + 1):
    boundary = (i == len(tokens) or start is None or sequences[i] != sequences[start]
                or kinds[i] != kinds[start] or weights[i] != weights[start] or int(tokens[i]) in markers)
    if boundary and start is not None and sequences[start] > 0:
      spans.append(Span(start, i, trajectory.SEGMENT_KINDS[kinds[start]], int(sequences[start]),
                        float(weights[start])))
    if boundary:
      start = i
  return spans


def tokens_per_kind(example: Mapping[str, np.ndarray]) -> dict[str, int]:
  """Non-padding tokens of each segment kind, for the kinds present."""
  real = example["decoder_segment_ids"] > 0
  counts = np.bincount(example["decoder_segment_kinds"][real], minlength=len(trajectory.SEGMENT_KINDS))
  return {kind: int(n) for kind, n in zip(trajectory.SEGMENT_KINDS, counts) if n}


def render_example(example: Mapping[str, np.ndarray], decode: Callable[[list[int]], str], *,
                   marker_ids: Sequence[int] = (), max_chars: int = 300) -> str:
  """The example as text: one line per span (token span, sequence, kind, loss weight, decoded text,
  cut to `max_chars` characters), then the token count per kind."""
  lines = []
  for span in example_spans(example, marker_ids):
    text = decode(example["decoder_target_tokens"][span.start:span.end].tolist())
    if len(text) > max_chars:
      text = text[:max_chars] + f" [... {len(text) - max_chars} more characters]"
    lines.append(f"[{span.start:6d}, {span.end:6d})  seq {span.sequence:<3d} {span.kind:<12s} "
                 f"weight {span.loss_weight:.2f}  {text!r}")
  counts = tokens_per_kind(example)
  lines.append("tokens per kind: " + ", ".join(f"{kind} {n}" for kind, n in counts.items()))
  return "\n".join(lines)


def paper_stage_spans(example) -> list[dict]:
  """The stages of a `paper_stages` example (xbook.data.paper_stages.PaperExample) in order: role,
  chapter (1-based, None for the book's plans), kind, token span in the example, loss weight, and
  which tokens of the stage it holds (`stage_tokens`: [start, end); a stage cut by the length does not
  start at 0)."""
  spans, offset = [], 0
  for part in example.parts:
    n = len(part.ids)
    spans.append({"role": part.role, "chapter": None if part.chapter is None else part.chapter + 1,
                  "kind": part.kind, "start": offset, "end": offset + n, "loss_weight": part.weight,
                  "stage_tokens": [part.start, part.end]})
    offset += n
  return spans


def render_paper_example(example, decode: Callable[[list[int]], str], *, max_chars: int = 300) -> str:
  """A `paper_stages` example stage by stage: one line per stage (token span, role, chapter, kind, loss
  weight, decoded text cut to `max_chars`), then what its context left out and the tokens per kind."""
  lines = []
  for span, part in zip(paper_stage_spans(example), example.parts):
    text = decode(list(part.ids))
    if len(text) > max_chars:
      text = text[:max_chars] + f" [... {len(text) - max_chars} more characters]"
    chapter = f"ch {span['chapter']:<4d}" if span["chapter"] is not None else "       "
    cut = "" if span["stage_tokens"][0] == 0 else f" (from token {span['stage_tokens'][0]} of the stage)"
    lines.append(f"[{span['start']:6d}, {span['end']:6d})  {span['role']:<30s} {chapter} {span['kind']:<12s} "
                 f"weight {span['loss_weight']:.2f}{cut}  {text!r}")
  if example.dropped_tokens:
    chapters = ", ".join(str(c + 1) for c in example.dropped_chapters)
    lines.append(f"left out of the context: {example.dropped_tokens} tokens of the stream before this example"
                 + (f" (the text of chapters {chapters})" if chapters else ""))
  counts: dict[str, int] = {}
  for part in example.parts:
    counts[part.kind] = counts.get(part.kind, 0) + len(part.ids)
  lines.append("tokens per kind: " + ", ".join(f"{kind} {n}" for kind, n in counts.items()))
  return "\n".join(lines)


# A plan token counts as a repeat when it lies in a run of this many ids that an earlier segment holds.
REPEAT_NGRAM = 8
# Kinds that are not plans: the request and the supervised prose.
NOT_PLAN_KINDS = frozenset({"prompt", "text"})


def plan_repeats(example: Mapping[str, np.ndarray], marker_ids: Sequence[int] = (),
                 ngram: int = REPEAT_NGRAM) -> tuple[int, int]:
  """(plan tokens that repeat an earlier segment, plan tokens) of one converted example.

  Segments are `example_spans`; within each packed sequence, a token of a plan segment (any kind but
  prompt and text) is a repeat when it lies inside some `ngram` consecutive ids of its segment that
  also occur, in that order, inside one earlier segment of the sequence (of any kind). Markers start
  their segment and are compared like any id. What a window teaches by copying is this share.
  """
  tokens = example["decoder_target_tokens"].tolist()
  seen: dict[int, set[tuple[int, ...]]] = {}
  repeated = total = 0
  for span in example_spans(example, marker_ids):
    ids = tokens[span.start:span.end]
    grams = {tuple(ids[i:i + ngram]) for i in range(len(ids) - ngram + 1)}
    earlier = seen.setdefault(span.sequence, set())
    if span.kind not in NOT_PLAN_KINDS:
      covered = np.zeros(len(ids), bool)
      for i in range(len(ids) - ngram + 1):
        if tuple(ids[i:i + ngram]) in earlier:
          covered[i:i + ngram] = True
      repeated += int(covered.sum())
      total += len(ids)
    earlier |= grams
  return repeated, total
