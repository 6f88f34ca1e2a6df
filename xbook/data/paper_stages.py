"""The `paper_stages` plan order: a record's stage stream in a profile of the paper's protocol,
cut into training examples.

A scaffold record with a `paper` field renders, in a profile of xbook.scaffold.stage_protocol, to the stream
its released model reads (framing byte for byte). This module tokenizes that stream stage by stage and
makes the examples of one book (the plan order is `train.plan_order = 'paper_stages'`, the profile
`paper_stages.profile` in gin or `--profile` on the command line; not to be confused with the `stages`
*view* of xbook.data.tasks, short one-step examples of xbook's own plan orders):

  24b_first_chapter  one example per book: prompt, book plan, first chapter plan, its scene breakdown
                     and text, up to the end of the first chapter. A stream longer than the sequence
                     length is cut at the end (the rest of the first chapter's text is dropped,
                     counted and logged).
  14b_full_book      the whole book as one example when it fits. Otherwise a *head* example (prompt,
                     preview, book plan, first chapter plan and text, the later chapters' plan and the
                     characters list) and one example per later chapter: its context holds the prompt
                     and every plan (loss weight 0), then as much of the preceding text as fits (the
                     latest chapters, whole; the earliest are dropped, counted and logged), then the
                     chapter's scene breakdown and text, which are learned. So every chapter text is
                     learned in exactly one example. Where even the plans and the chapter do not fit,
                     the chapter is learned in consecutive pieces, each after as much of the stream
                     before it as fits (the example then starts inside a stage; that too is counted).

Each stage is encoded apart: its header (with the blank line), its content (in paragraph-aligned chunks
of at most CHUNK_CHARS characters, so that no tokenizer call sees a whole book), and `<|eot_id|>`; a
writer feeds the model a context that ends with a header and stops at `<|eot_id|>`, and sees the same
ids. Decoding an example gives its stream text back for a vocabulary that round-trips text (xbook's
SentencePiece vocabulary, byte-level BPE). No EOS is added: `<|eot_id|>` ends every stage, as in the
protocol.

Loss weights are per stage role: a role's weight is `loss_weights[role]` when given, else
`loss_weights[kind]` of its segment kind (stage_protocol.StageSpec.kind), else 0 for the prompt and 1
for every other role; header and `<|eot_id|>` tokens take their stage's weight (the model learns to end
a stage). Tokens carry their stage's segment kind, so the trainer reports `loss/book_plan`,
`loss/chapter_plan`, `loss/text`, ... for this plan order too.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping, Sequence

import gin
import numpy as np

from xbook.scaffold import stage_protocol as sp
from xbook.data import trajectory
from xbook.data.pieces import Encode, Example

log = logging.getLogger(__name__)

CHUNK_CHARS = 8_000
# Stages of the 14b stream that are plans of the whole book: every per-chapter example keeps them.
GLOBAL_ROLES = ("prompt", "book_preview", "book_plan", "first_chapter_plan", "full_book_chapters_plan",
                "book_characters_list")
VIEWS = ("windows", "full")


@gin.configurable("paper_stages")
def configured_profile(profile: str = sp.DEFAULT_PROFILE) -> str:
  """The profile gin binds as `paper_stages.profile` (checked); for entry points, which pass it down."""
  sp.get_profile(profile)
  return profile


def role_weights(loss_weights: Mapping[str, float] | None = None) -> dict[str, float]:
  """Loss weight of every stage role (module docstring); keys of `loss_weights` may be roles or kinds.

  Raises:
    ValueError: for a key that is neither a stage role nor a segment kind.
  """
  loss_weights = dict(loss_weights or {})
  unknown = sorted(set(loss_weights) - set(sp.ROLES) - set(trajectory.SEGMENT_KINDS))
  if unknown:
    raise ValueError(f"loss weights given for {unknown}: neither stage roles {sp.ROLES} nor segment kinds "
                     f"{trajectory.SEGMENT_KINDS}")
  kinds = {spec.role: spec.kind for profile in sp.PROFILES.values() for spec in profile.stages}
  defaults = {role: 0.0 if role == "prompt" else 1.0 for role in sp.ROLES}
  return {role: float(loss_weights.get(role, loss_weights.get(kinds[role], defaults[role])))
          for role in sp.ROLES}


@dataclasses.dataclass(frozen=True)
class StageTokens:
  """One stage of a stream, tokenized: `ids` (header, content, `<|eot_id|>`), its role and kind, and
  the chapter (0-based) a chapter stage belongs to (None for the book's plans)."""

  role: str
  kind: str
  ids: tuple[int, ...]
  chapter: int | None

  def __len__(self) -> int:
    return len(self.ids)


def _chunks(text: str, max_chars: int = CHUNK_CHARS) -> list[str]:
  """`text` in consecutive pieces of about `max_chars` characters, cut before paragraph breaks."""
  paragraphs = text.split("\n\n")
  chunks, current = [], paragraphs[0]
  for paragraph in paragraphs[1:]:
    if len(current) + 2 + len(paragraph) > max_chars:
      chunks.append(current)
      current = "\n\n" + paragraph
    else:
      current += "\n\n" + paragraph
  return chunks + [current]


def encode_stages(stages: Sequence[tuple[str, str]], encode: Encode, profile: str | sp.Profile) -> list[StageTokens]:
  """The tokens of every stage of a stream (header, content chunks and `<|eot_id|>` encoded apart)."""
  profile = sp.get_profile(profile)
  header_ids = {role: tuple(encode(sp.stage_header(role))) for role in profile.roles}
  eot_ids = tuple(encode(sp.EOT))
  out, chapter = [], 0
  for role, content in stages:
    ids = header_ids[role] + tuple(i for chunk in _chunks(content) for i in encode(chunk)) + eot_ids
    if role == "scene_breakdown" or role in sp.TEXT_ROLES:
      index = 0 if role.startswith("first_chapter") else chapter
    elif role in ("first_chapter_plan", "first_chapter_scene_breakdown"):
      index = 0
    else:
      index = None
    if role in sp.TEXT_ROLES:
      chapter += 1
    out.append(StageTokens(role, profile.stage(role).kind, ids, index))
  return out


@dataclasses.dataclass(frozen=True)
class Part:
  """Tokens of one stage in an example: ids, role, kind, loss weight, and where they are in the stage
  (`start` > 0: the stage is cut at its start; `end` < its length: at its end)."""

  ids: tuple[int, ...]
  role: str
  kind: str
  weight: float
  chapter: int | None
  start: int
  end: int


@dataclasses.dataclass(frozen=True)
class PaperExample:
  """One example of a book: its parts in order, and what the stream before it lost to the length.

  Attributes:
    parts: the stage pieces, in stream order.
    dropped_tokens: tokens of the stream before the example's learned part that are not in it.
    dropped_chapters: chapters (0-based) whose text stages were left out of the context.
  """

  parts: tuple[Part, ...]
  dropped_tokens: int = 0
  dropped_chapters: tuple[int, ...] = ()

  def __len__(self) -> int:
    return sum(len(p.ids) for p in self.parts)

  def features(self) -> Example:
    """The task features (xbook.data.pieces): one unpacked sequence."""
    kinds = np.concatenate([np.full(len(p.ids), trajectory.KIND_ID[p.kind], np.int32) for p in self.parts])
    n = len(kinds)
    return {"targets": np.array([i for p in self.parts for i in p.ids], np.int32).reshape(n),
            "loss_weights": np.concatenate([np.full(len(p.ids), p.weight, np.float32) for p in self.parts]),
            "segment_kinds": kinds, "segment_ids": np.ones(n, np.int32),
            "positions": np.arange(n, dtype=np.int32)}


def _part(stage: StageTokens, weight: float, start: int = 0, end: int | None = None) -> Part:
  end = len(stage) if end is None else end
  return Part(stage.ids[start:end], stage.role, stage.kind, weight, stage.chapter, start, end)


def _whole(stages: Sequence[StageTokens], weights: Mapping[str, float], learned: bool = True) -> list[Part]:
  return [_part(s, weights[s.role] if learned else 0.0) for s in stages]


def _tail(parts: Sequence[Part], n: int) -> list[Part]:
  """The last `n` tokens of `parts`, each part cut at its start where needed."""
  out, left = [], n
  for p in reversed(parts):
    if left <= 0:
      break
    keep = min(left, len(p.ids))
    out.append(dataclasses.replace(p, ids=p.ids[len(p.ids) - keep:], start=p.start + len(p.ids) - keep))
    left -= keep
  return list(reversed(out))


def _pieces(context: Sequence[Part], target: Sequence[Part], length: int) -> list[PaperExample]:
  """`target` learned in consecutive pieces, each after as much of the stream before it (`context`,
  then the target so far, at weight 0) as fits in half the length."""
  flat = [(p, i) for p in target for i in range(len(p.ids))]
  examples, done, budget = [], 0, length // 2
  while done < len(flat):
    before = list(context) + _done_parts(target, done)
    lead = _tail(before, min(sum(len(p.ids) for p in before), budget))
    size = length - sum(len(p.ids) for p in lead)
    chunk = _slice_parts(target, done, done + size)
    dropped = sum(len(p.ids) for p in before) - sum(len(p.ids) for p in lead)
    examples.append(PaperExample(tuple(lead + chunk), dropped_tokens=dropped))
    done += size
  return examples


def _done_parts(target: Sequence[Part], n: int) -> list[Part]:
  return [dataclasses.replace(p, weight=0.0) for p in _slice_parts(target, 0, n)]


def _slice_parts(parts: Sequence[Part], start: int, end: int) -> list[Part]:
  """Tokens [start, end) of the concatenated parts."""
  out, offset = [], 0
  for p in parts:
    lo, hi = max(start - offset, 0), min(end - offset, len(p.ids))
    if lo < hi:
      out.append(dataclasses.replace(p, ids=p.ids[lo:hi], start=p.start + lo, end=p.start + hi))
    offset += len(p.ids)
  return out


def first_chapter_examples(stages: Sequence[StageTokens], weights: Mapping[str, float],
                           length: int) -> list[PaperExample]:
  """The 24b profile: one example up to the end of the first chapter, cut at `length`."""
  parts = _whole(stages, weights)
  total = sum(len(p.ids) for p in parts)
  if total <= length:
    return [PaperExample(tuple(parts))]
  return [PaperExample(tuple(_slice_parts(parts, 0, length)), dropped_tokens=total - length)]


def full_book_examples(stages: Sequence[StageTokens], weights: Mapping[str, float],
                       length: int) -> list[PaperExample]:
  """The 14b profile: the whole book, or a head example and one per later chapter (module docstring)."""
  if sum(len(s) for s in stages) <= length:
    return [PaperExample(tuple(_whole(stages, weights)))]
  head_end = [s.role for s in stages].index("book_characters_list") + 1
  examples = _fit([], _whole(stages[:head_end], weights), length)
  global_plans = [s for s in stages[:head_end] if s.role in GLOBAL_ROLES]
  first_text = [s for s in stages[:head_end] if s.role not in GLOBAL_ROLES]
  later = stages[head_end:]
  for k in range(0, len(later), 2):
    earlier = [first_text] + [list(later[j:j + 2]) for j in range(0, k, 2)]
    examples += _chapter_examples(global_plans, earlier, later[k:k + 2], weights, length)
  return examples


def _fit(context: Sequence[Part], target: Sequence[Part], length: int) -> list[PaperExample]:
  if sum(len(p.ids) for p in [*context, *target]) <= length:
    return [PaperExample(tuple([*context, *target]))]
  return _pieces(context, target, length)


def _chapter_examples(global_plans: Sequence[StageTokens], earlier: Sequence[Sequence[StageTokens]],
                      chapter: Sequence[StageTokens], weights: Mapping[str, float],
                      length: int) -> list[PaperExample]:
  """One later chapter: the plans, the latest earlier chapters that fit, then the chapter (learned)."""
  target = _whole(chapter, weights)
  room = length - sum(len(s) for s in global_plans) - sum(len(p.ids) for p in target)
  kept = len(earlier)
  while kept > 0 and sum(len(s) for unit in earlier[len(earlier) - kept:] for s in unit) > room:
    kept -= 1
  dropped_units = earlier[:len(earlier) - kept]
  dropped = sum(len(s) for unit in dropped_units for s in unit)
  dropped_chapters = tuple(unit[0].chapter for unit in dropped_units if unit)
  kept_units = earlier[len(earlier) - kept:]
  first_kept = bool(kept_units) and kept_units[0] is earlier[0]
  before_text = [s for s in global_plans if s.role not in ("full_book_chapters_plan", "book_characters_list")]
  after_text = [s for s in global_plans if s.role in ("full_book_chapters_plan", "book_characters_list")]
  ordered = before_text + (list(earlier[0]) if first_kept else []) + after_text
  ordered += [s for unit in kept_units[1 if first_kept else 0:] for s in unit]
  context = _whole(ordered, weights, learned=False)
  if room < 0:
    context_all = _whole(before_text + list(earlier[0]) + after_text
                         + [s for unit in earlier[1:] for s in unit], weights, learned=False)
    examples = _pieces(context_all, target, length)
    return [dataclasses.replace(e, dropped_chapters=tuple(u[0].chapter for u in earlier if u)) for e in examples]
  return [PaperExample(tuple(context + target), dropped_tokens=dropped, dropped_chapters=dropped_chapters)]


def book_examples(record: Mapping[str, Any], encode: Encode, *, profile: str | sp.Profile, length: int,
                  loss_weights: Mapping[str, float] | None = None, view: str = "windows") -> list[PaperExample]:
  """The examples of one scaffold record (with a `paper` field) in `profile` at `length` tokens.

  Args:
    record: a validated scaffold record with a `paper` field.
    encode: text -> token ids of the vocabulary.
    profile: a stage-protocol profile (name or Profile).
    length: the sequence length.
    loss_weights: per stage role or segment kind (`role_weights`).
    view: "windows" (the profile's examples, module docstring) or "full" (the whole stream as one
      example, none when it exceeds `length`).

  Returns:
    The book's examples, in order; what they drop is logged (one warning per book).
  """
  profile = sp.get_profile(profile)
  if view not in VIEWS:
    raise ValueError(f"the {trajectory.PAPER_STAGES} plan order has the views {VIEWS}, not {view!r} (the "
                     "`stages` view is xbook's short one-step examples of its own plan orders)")
  weights = role_weights(loss_weights)
  stages = encode_stages(sp.render_stages(record, profile), encode, profile)
  book_id = record["book"]["id"]
  if view == "full":
    if sum(len(s) for s in stages) > length:
      log.warning("%s full view: skipped book %s: its %s stream has %d tokens, more than %d", trajectory.PAPER_STAGES,
                  book_id, profile.name, sum(len(s) for s in stages), length)
      return []
    return [PaperExample(tuple(_whole(stages, weights)))]
  make = full_book_examples if profile.full_book else first_chapter_examples
  examples = make(stages, weights, length)
  dropping = [e.dropped_tokens for e in examples if e.dropped_tokens]
  if dropping:
    chapters = sorted({c for e in examples for c in e.dropped_chapters})
    log.warning("%s (%s): book %s: %d of its %d examples leave out part of the stream before them to fit "
                "%d tokens (up to %d tokens each%s)", trajectory.PAPER_STAGES, profile.name, book_id,
                len(dropping), len(examples), length, max(dropping),
                f"; the text of chapters {chapters[0] + 1}-{chapters[-1] + 1} from some contexts"
                if chapters else "")
  return examples


def examples_fn(vocabulary: Any, *, view: str, length: int, profile: str | sp.Profile,
                loss_weights: Mapping[str, float] | None = None) -> Callable[[Mapping[str, Any]], list[Example]]:
  """record -> task features of its examples (for xbook.data.tasks)."""
  sp.get_profile(profile)
  role_weights(loss_weights)

  def examples(record: Mapping[str, Any]) -> list[Example]:
    return [e.features() for e in book_examples(record, vocabulary.encode, profile=profile, length=length,
                                                loss_weights=loss_weights, view=view)]

  return examples
