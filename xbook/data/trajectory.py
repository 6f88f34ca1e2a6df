"""Invert a planning scaffold into a training trajectory: a list of typed segments.

The human prose stays the supervised target; the plans before it make book-scale generation learnable.
Each segment has a *kind* that sets its loss weight, and starts with a marker token so that the model
(and a reader of decoded tokens) sees where one level of the plan ends and the next begins.

Layouts:
  interleaved (docs/architecture.md, "Trajectory"): prompt, premise, synopsis, outline (all chapter summaries),
    then for each chapter: its chapter plan, its scene plans, its scene texts.
  plans_first: prompt, premise, synopsis, outline, every chapter's plan and scene plans, then the whole
    text, scene after scene.

  paper_stages (PAPER_STAGES): the paper's stage protocol (xbook.scaffold.stage_protocol), for records with a
    `paper` field; its examples are built by xbook.data.paper_stages, not from segments. (Not to be
    confused with the `stages` *view* of xbook.data.tasks: short one-step examples of xbook's plan orders.)

Marker styles:
  symbols: `<|premise|>`, ... are user-defined symbols of an xbook vocabulary (one token each).
  tags: `<premise>`, ... are plain text that a pretrained tokenizer (Llama, Mistral) splits into ordinary
    pieces; no new embedding rows are needed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

# Segment kinds of xbook's own plan orders, in the order they first appear in a trajectory.
XBOOK_KINDS: tuple[str, ...] = (
    "prompt", "premise", "synopsis", "outline", "chapter_plan", "scene_plan", "text")
# Kinds only the paper's stage protocol has (xbook.scaffold.stage_protocol maps each stage role to a kind:
# its book preview, book plan and characters list; its chapter plans, scene breakdowns and texts are
# chapter_plan, scene_plan and text). Appended, so that the ids of existing kinds never change.
PAPER_KINDS: tuple[str, ...] = ("book_preview", "book_plan", "characters")
# The "Previously" segment of a window (xbook.data.windows) and of the writer's context (xbook.infer.writer)
# when the global plan had to cut the outline: the outline's entries for the chapters before it. It is
# written under the outline's marker (MARKER_OF: the model reads it as outline), and weighted and reported
# as a kind of its own. Appended, like PAPER_KINDS.
PREVIOUSLY = "previously"
# Every segment kind; their integer ids (in examples, and the trainer's `loss/<kind>`) are positions here.
SEGMENT_KINDS: tuple[str, ...] = XBOOK_KINDS + PAPER_KINDS + (PREVIOUSLY,)
KIND_ID: dict[str, int] = {kind: i for i, kind in enumerate(SEGMENT_KINDS)}

# One marker per kind of xbook's plan orders (SentencePiece user-defined symbols), plus one that closes the
# book. The paper's kinds have none: its stages are framed by role headers instead.
MARKERS: dict[str, str] = {kind: f"<|{kind}|>" for kind in XBOOK_KINDS}
# Kinds written under another kind's marker.
MARKER_OF: dict[str, str] = {PREVIOUSLY: "outline"}
END_OF_BOOK = "<|end_of_book|>"
ALL_MARKERS: tuple[str, ...] = tuple(MARKERS.values()) + (END_OF_BOOK,)

# The same markers as plain-text tags, for pretrained tokenizers without xbook's symbols.
TAGS: dict[str, str] = {kind: f"<{kind}>" for kind in XBOOK_KINDS}
END_OF_BOOK_TAG = "<end_of_book>"

MARKER_STYLES = ("symbols", "tags")

# Default loss weight of each kind: the request itself is given, everything the model writes is learned.
# `previously` not named in a {kind: weight} mapping takes the weight given to `outline` (its text is
# outline entries; `loss_weight_table`).
DEFAULT_LOSS_WEIGHTS: dict[str, float] = {
    "prompt": 0.0, "premise": 1.0, "synopsis": 1.0, "outline": 1.0,
    "chapter_plan": 1.0, "scene_plan": 1.0, "text": 1.0,
    "book_preview": 1.0, "book_plan": 1.0, "characters": 1.0, PREVIOUSLY: 1.0}

# xbook's own plan orders (built from segments here), and the paper's stage stream.
PLAN_ORDERS = ("interleaved", "plans_first")
PAPER_STAGES = "paper_stages"
ALL_PLAN_ORDERS = PLAN_ORDERS + (PAPER_STAGES,)


@dataclasses.dataclass(frozen=True)
class Segment:
  """One typed piece of a trajectory; `text` already starts with its kind's marker.

  `chapter` is the list position (in the scaffold record) of the chapter that a chapter plan, scene
  plan or scene text belongs to; None for the global plan.
  """

  kind: str
  text: str
  chapter: int | None = None


def markers(style: str = "symbols") -> tuple[dict[str, str], str]:
  """({kind: marker}, end-of-book marker) of a marker style (one of MARKER_STYLES)."""
  if style == "symbols":
    return MARKERS, END_OF_BOOK
  if style == "tags":
    return TAGS, END_OF_BOOK_TAG
  raise ValueError(f"unknown marker style {style!r}; expected one of {MARKER_STYLES}")


def kind_marker(kind: str, style: str = "symbols") -> str:
  """The marker a segment of `kind` starts with in a marker style."""
  return markers(style)[0][MARKER_OF.get(kind, kind)]


def make_segment(kind: str, body: str, style: str = "symbols", chapter: int | None = None) -> Segment:
  """A segment of `kind` whose text is the kind's marker (MARKER_OF's for `previously`), `body` stripped,
  then a newline."""
  return Segment(kind=kind, text=f"{kind_marker(kind, style)}{body.strip()}\n", chapter=chapter)


def split_marker(segment: Segment) -> tuple[str, str]:
  """(marker, rest) of a segment's text, whichever the marker style."""
  for style in MARKER_STYLES:
    marker = kind_marker(segment.kind, style)
    if segment.text.startswith(marker):
      return marker, segment.text[len(marker):]
  raise ValueError(f"a {segment.kind} segment must start with its marker: {segment.text[:40]!r}")


def outline_text(chapters: Sequence[Mapping[str, Any]]) -> str:
  """All chapter summaries, one numbered paragraph each."""
  return "\n".join(f"{c['index'] + 1}. {c['title']}: {c['summary']}".strip() for c in chapters)


def scaffold_to_segments(record: Mapping[str, Any], plan_order: str = "interleaved",
                         marker_style: str = "symbols") -> list[Segment]:
  """The trajectory of one scaffold record (schema `xbook.scaffold/1`).

  Args:
    record: a validated scaffold record.
    plan_order: one of PLAN_ORDERS.
    marker_style: one of MARKER_STYLES.

  Returns:
    Segments in reading order; the last `text` segment ends with END_OF_BOOK.
  """
  if plan_order == PAPER_STAGES:
    raise ValueError(f"plan order {PAPER_STAGES!r} is not made of segments: use xbook.data.paper_stages")
  if plan_order not in PLAN_ORDERS:
    raise ValueError(f"unknown plan order {plan_order!r}; expected one of {PLAN_ORDERS}")
  chapters = record["chapters"]
  segments = [make_segment(kind, body, marker_style) for kind, body in (
      ("prompt", record["prompt"]), ("premise", record["premise"]),
      ("synopsis", record["synopsis"]), ("outline", outline_text(chapters)))]
  plans, texts = [], []
  for c, chapter in enumerate(chapters):
    chapter_plans = [make_segment("chapter_plan", f"{chapter['title']}\n{chapter['summary']}",
                                  marker_style, c)]
    chapter_plans += [make_segment("scene_plan", scene["summary"], marker_style, c)
                      for scene in chapter["scenes"]]
    chapter_texts = [make_segment("text", scene["text"], marker_style, c) for scene in chapter["scenes"]]
    if plan_order == "interleaved":
      segments += chapter_plans + chapter_texts
    else:
      plans += chapter_plans
      texts += chapter_texts
  segments += plans + texts
  segments[-1] = dataclasses.replace(segments[-1], text=segments[-1].text + markers(marker_style)[1])
  return segments


def loss_weight_table(weights: Mapping[str, float] | None = None) -> list[float]:
  """Loss weight per kind id, from a {kind: weight} mapping (missing kinds keep their default).

  `previously`, when not named, takes the weight named for `outline`: {"outline": 0.5} weights the
  outline and the "Previously" segments 0.5, {"outline": 0.5, "previously": 0.0} only the outline.
  """
  weights = dict(weights or {})
  for kind in weights:
    if kind not in KIND_ID:
      raise ValueError(f"loss weight given for unknown segment kind {kind!r}; "
                       f"kinds are {SEGMENT_KINDS}")
  if "outline" in weights:
    weights.setdefault(PREVIOUSLY, weights["outline"])
  merged = {**DEFAULT_LOSS_WEIGHTS, **{kind: float(weight) for kind, weight in weights.items()}}
  return [merged[kind] for kind in SEGMENT_KINDS]
