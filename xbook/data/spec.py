"""The data a run reads, as values built once at the entry point: `TrajectoryFormat` and `DataSpec`.

`TrajectoryFormat` is how a scaffold record becomes a trajectory: one of xbook's plan orders
(`interleaved`, `plans_first`; xbook.data.trajectory) or the paper's stage stream (`paper_stages`) in one
of the stage protocol's profiles (xbook.scaffold.stage_protocol). It owns every branch on the format: its
views, how loss weights resolve, which function builds a record's examples, and the `book.json` format a
writer writes. PLAN_ORDERS and PROFILES are the command line's choices.

`DataSpec` is everything that decides a run's examples: the scaffold files, the loaded `Vocabulary` (never
a path past the entry point), the sequence length, the trajectory format, loss weights, the repeat
weight, the views mixed and their rates, and an offline cache to read them from. The trainer, the
evaluator, the cache builder, `data inspect` and held-out perplexity take one, and build examples with
`DataSpec.examples(view)`: the same function the seqio Task adapter runs (xbook.data.tasks), so the
online reader and the seqio pipeline cannot drift apart.

Views (`VIEWS`):
  full     the whole trajectory as one example, for books that fit the sequence length
           (xbook.data.pieces.full_examples; longer books are skipped with a logged warning)
  windows  sequence-length windows headed by the global plan, every scene text in exactly one window
           (xbook.data.windows; paper_stages: the profile's examples, xbook.data.paper_stages)
  stages   short one-step examples of the plan hierarchy, packed (xbook.data.stages); xbook's plan
           orders only
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Mapping, Sequence

from xbook.data import paper_stages, pieces, records, stages, trajectory, windows
from xbook.data.vocab_base import Vocabulary
from xbook.scaffold import stage_protocol as sp

VIEWS = ("full", "windows", "stages")
# Literal, so that the command line reads them without importing this module (xbook.cli.common.source_constant);
# checked below against the modules that define them.
PLAN_ORDERS = ("interleaved", "plans_first", "paper_stages")
PROFILES = ("24b_first_chapter", "14b_full_book")
if PLAN_ORDERS != trajectory.ALL_PLAN_ORDERS or set(PROFILES) != set(sp.PROFILES):
  raise ImportError(f"xbook.data.spec: PLAN_ORDERS {PLAN_ORDERS} and PROFILES {PROFILES} must list "
                    f"xbook.data.trajectory.ALL_PLAN_ORDERS and xbook.scaffold.stage_protocol.PROFILES")
DEFAULT_VIEW_RATES: Mapping[str, float] = {"windows": 1.0}

BookExamples = Callable[[Mapping[str, Any]], list[pieces.Example]]


@dataclasses.dataclass(frozen=True)
class TrajectoryFormat:
  """A plan order, and for `paper_stages` its stage-protocol profile (None for xbook's plan orders: a
  profile given with them is dropped, so equal formats compare equal).

  Raises:
    ValueError: on an unknown plan order or profile, naming the choices.
  """

  plan_order: str = "interleaved"
  profile: str | None = None

  PLAN_ORDERS = PLAN_ORDERS
  PROFILES = PROFILES

  def __post_init__(self) -> None:
    if self.plan_order not in self.PLAN_ORDERS:
      raise ValueError(f"unknown plan order {self.plan_order!r}; expected one of {self.PLAN_ORDERS}")
    if self.plan_order != trajectory.PAPER_STAGES:
      object.__setattr__(self, "profile", None)
      return
    profile = self.profile or sp.DEFAULT_PROFILE
    if profile not in self.PROFILES:
      raise ValueError(f"unknown stage-protocol profile {profile!r}; expected one of {self.PROFILES}")
    object.__setattr__(self, "profile", profile)

  @property
  def is_paper(self) -> bool:
    """Whether trajectories are the paper's stage stream (records need their `paper` field)."""
    return self.plan_order == trajectory.PAPER_STAGES

  @property
  def views(self) -> tuple[str, ...]:
    """The views this format has examples for."""
    return paper_stages.VIEWS if self.is_paper else VIEWS

  @property
  def book_format(self) -> str:
    """The format of the books a writer writes in it: "paper" (the authors' stages) or "xbook"."""
    return "paper" if self.is_paper else "xbook"

  def check_view(self, view: str) -> None:
    if view not in VIEWS:
      raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    if view not in self.views:
      raise ValueError(f"plan order {self.plan_order!r} has the views {self.views}, not {view!r} (the stages "
                       "view is xbook's short one-step examples of its own plan orders)")

  def resolved_loss_weights(self, loss_weights: Mapping[str, float] | None) -> dict[str, float]:
    """Every weight as training uses it ({stage role: weight} for paper_stages, else {segment kind:
    weight}), so that an unset weight and its default are the same. Raises ValueError on an unknown key."""
    if self.is_paper:
      return paper_stages.role_weights(loss_weights)
    return dict(zip(trajectory.SEGMENT_KINDS, trajectory.loss_weight_table(loss_weights)))

  def describe(self) -> dict[str, Any]:
    return {"plan_order": self.plan_order, "profile": self.profile}

  def book_examples(self, view: str, vocabulary: Vocabulary, *, length: int,
                    loss_weights: Mapping[str, float] | None = None, repeat_weight: float = 0.0) -> BookExamples:
    """A function from one scaffold record to its examples of `view` at `length` tokens (plain Python).

    Args:
      view: one of `views`.
      vocabulary: the loaded vocabulary.
      length: the sequence length.
      loss_weights: {segment kind (or stage role, paper_stages): weight}; unnamed ones keep their default.
      repeat_weight: windows of xbook's plan orders: factor on the weight of repeated plans.
    """
    self.check_view(view)
    if self.is_paper:
      return paper_stages.examples_fn(vocabulary, view=view, length=length, profile=self.profile,
                                      loss_weights=loss_weights)
    return _xbook_examples(view, vocabulary, length=length, plan_order=self.plan_order,
                           weight_table=trajectory.loss_weight_table(loss_weights), repeat_weight=repeat_weight)


def _xbook_examples(view: str, vocabulary: Vocabulary, *, length: int, plan_order: str,
                    weight_table: Sequence[float], repeat_weight: float) -> BookExamples:
  style, eos_id, encode = vocabulary.marker_style, vocabulary.eos_id, vocabulary.encode

  def examples(record: Mapping[str, Any]) -> list[pieces.Example]:
    book = pieces.encode_book(record, encode, eos_id, plan_order=plan_order, marker_style=style)
    if view == "full":
      return pieces.full_examples(book, length=length, weight_table=weight_table, book_id=record["book"]["id"])
    if view == "windows":
      return windows.window_examples(record, book, encode, length=length, weight_table=weight_table,
                                     plan_order=plan_order, marker_style=style, repeat_weight=repeat_weight)
    return stages.stage_examples(book, eos_id, length=length, weight_table=weight_table)

  return examples


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Everything that decides the examples a run reads (module docstring). Frozen: derive variants with
  `dataclasses.replace` (e.g. another `seq_len`).

  Fields:
    scaffold_files: scaffold JSONL files or glob patterns (local or gs://), absolute; every split reads
      the same files and keeps the records whose `split` field matches.
    vocabulary: the loaded vocabulary.
    seq_len: tokens per example.
    trajectory_format: plan order and profile.
    loss_weights: {segment kind, or stage role for paper_stages: weight}; None: the defaults.
    repeat_weight: windows of xbook's plan orders: factor on the weight of plans a window repeats.
    view_rates: {view: sampling rate} of the views read (one view: its examples alone; several: a
      mixture, xbook.train.input_pipeline.mixed); views at rate 0 are left out.
    cache_dir: read the windows from an offline cache (`xbook data cache`) under this folder instead of
      building them; None: build them online.
    cache_name: the cache's task name (its folder under `cache_dir`).

  Raises:
    ValueError: on a setting no example can be built with (named, with what was expected).
  """

  scaffold_files: tuple[str, ...]
  vocabulary: Vocabulary
  seq_len: int
  trajectory_format: TrajectoryFormat = TrajectoryFormat()
  loss_weights: Mapping[str, float] | None = None
  repeat_weight: float = 0.0
  view_rates: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_VIEW_RATES))
  cache_dir: str | None = None
  cache_name: str = "xbook_windows"

  def __post_init__(self) -> None:
    files = (self.scaffold_files,) if isinstance(self.scaffold_files, (str, os.PathLike)) else self.scaffold_files
    object.__setattr__(self, "scaffold_files", tuple(map(os.fspath, files)))
    if not self.scaffold_files:
      raise ValueError("no scaffold files given: pass the scaffold JSONL that `xbook scaffold build` wrote")
    if int(self.seq_len) < 1:
      raise ValueError(f"seq_len must be a positive number of tokens, got {self.seq_len}")
    rates = {view: float(rate) for view, rate in dict(self.view_rates).items()}
    for view in rates:
      self.trajectory_format.check_view(view)
    if not any(rate > 0 for rate in rates.values()):
      raise ValueError(f"view rates {rates}: give at least one view a rate above 0")
    object.__setattr__(self, "view_rates", rates)
    self.trajectory_format.resolved_loss_weights(self.loss_weights)  # an unknown kind fails now
    if self.cache_dir and self.views != ("windows",):
      raise ValueError(f"an offline cache holds the windows view only; read views {self.views} online "
                       "(unset train.cache_dir) or train on windows alone (unset train.view_rates)")

  @classmethod
  def build(cls, scaffold_files: str | Sequence[str], vocabulary: Vocabulary, seq_len: int,
            **settings: Any) -> "DataSpec":
    """A DataSpec whose scaffold records are validated now (a bad one is named: file, line, book, field),
    before anything is trained; records read from an offline cache are validated when it is built."""
    spec = cls(scaffold_files, vocabulary, seq_len, **settings)
    if spec.cache_dir is None:
      records.validate_files_to_read(list(spec.scaffold_files))
    return spec

  @property
  def views(self) -> tuple[str, ...]:
    """The views read, in the order of `view_rates` (those at a rate above 0)."""
    return tuple(view for view, rate in self.view_rates.items() if rate > 0)

  @property
  def bos_id(self) -> int:
    """The first input token of every sequence: the vocabulary's BOS."""
    return self.vocabulary.bos_id

  def examples(self, view: str) -> BookExamples:
    """record -> its examples of `view` at `seq_len` (the one definition of an example)."""
    return self.trajectory_format.book_examples(view, self.vocabulary, length=self.seq_len,
                                                loss_weights=self.loss_weights, repeat_weight=self.repeat_weight)

  def example_settings(self, view: str) -> dict[str, Any]:
    """Everything but the record that decides the examples of `view`, as JSON-able values."""
    return {"view": view, "seq_len": int(self.seq_len), **self.trajectory_format.describe(),
            "loss_weights": self.trajectory_format.resolved_loss_weights(self.loss_weights),
            "repeat_weight": float(self.repeat_weight), "vocabulary": self.vocabulary.fingerprint}

  def examples_key(self, view: str) -> str:
    """A digest of `example_settings(view)`: equal keys, equal examples of every record."""
    described = json.dumps(self.example_settings(view), sort_keys=True)
    return hashlib.sha256(described.encode()).hexdigest()[:16]
