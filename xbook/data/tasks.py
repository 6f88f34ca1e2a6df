"""SeqIO tasks for the views of a book, and a Mixture of them.

Views (each a seqio Task over scaffold JSONL; one scaffold record is one book):
  full     the whole trajectory as one example, for books that fit the sequence length
           (xbook.data.pieces.full_examples; longer books are skipped with a logged warning)
  windows  sequence-length windows headed by the global plan, every scene text in exactly one window
           (xbook.data.windows)
  stages   short one-step examples of the plan hierarchy, packed (xbook.data.stages)

Plan orders: xbook's own (`interleaved`, `plans_first`; xbook.data.trajectory), or `paper_stages`, the
stage stream of the paper's released models in a profile of xbook.scaffold.stage_protocol (records with a
`paper` field; xbook.data.paper_stages): its `windows` view is the profile's examples (24b: one per book
up to the end of the first chapter; 14b: the whole book, or a head and one per later chapter), its
`full` view the whole stream when it fits; it has no `stages` view (that name is xbook's short one-step
examples). The profile is `register_task(profile=...)` (the entry points pass gin's `paper_stages.profile`),
else xbook.scaffold.stage_protocol.DEFAULT_PROFILE.

Pipeline: ScaffoldDataSource (the records of a split) -> one Python call per book that tokenizes each
segment once with the vocabulary and builds the view's examples -> examples with the task features of
xbook.data.features (`targets`, `loss_weights`, `segment_kinds`, `segment_ids`, `positions`), which
xbook.data.feature_converter turns into the decoder example features.

The vocabulary (xbook.data.vocab.load_vocabulary) is an xbook SentencePiece vocabulary (markers are
single-token symbols) or a pretrained model's tokenizer: a SentencePiece tokenizer.model, a Hugging Face
tokenizer.json or a Mistral tekken.json (markers are written as plain-text tags, EOS is the model's).
The `targets` feature declares it as `Vocabulary.seqio_vocabulary()`, whose `bos_id` is the first input
token of every sequence (xbook.data.feature_converter.task_bos_id reads it from there).

Through seqio (`seqio.get_dataset`, the Beam cache build) scaffold files are the unit of sharding across
hosts when there are at least as many files as hosts. Training and evaluation read an online task by its
BookSource instead (xbook.train.input_pipeline): every host reads every file and keeps one record in N.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from xbook.data import cache, paper_stages, pieces, records, stages, trajectory, windows
from xbook.books.splits import SPLITS
from xbook.scaffold import stage_protocol as sp
from xbook.data.features import TASK_FEATURES
from xbook.data.vocab import Vocabulary, load_vocabulary

VIEWS = ("full", "windows", "stages")

_FEATURE_DTYPES = {name: tf.as_dtype(dtype) for name, dtype in TASK_FEATURES.items()}


def _record_split(line: tf.Tensor) -> str:
  return json.loads(line.numpy().decode("utf-8")).get("split", "train")


class ScaffoldDataSource(seqio.FileDataSource):
  """Scaffold JSONL files as {"record": the JSON line}; a split keeps the records whose `split` matches.

  Every split reads the same files (a book's split is a field of its record, assigned by author).
  """

  def __init__(self, scaffold_files: str | Sequence[str]) -> None:
    files = [scaffold_files] if isinstance(scaffold_files, str) else list(scaffold_files)
    super().__init__(read_file_fn=tf.data.TextLineDataset,
                     split_to_filepattern={split: files for split in SPLITS})

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, **kwargs) -> tf.data.Dataset:
    # The records to be read are validated first, in Python: a bad one is named (file, line, book, field).
    records.validate_files_to_read(self._split_to_filepattern[split], shard_info)
    lines = super().get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info,
                                **kwargs)

    def keep(line: tf.Tensor) -> tf.Tensor:
      record_split = tf.py_function(_record_split, [line], Tout=tf.string)
      record_split.set_shape([])
      return record_split == split

    return lines.filter(keep).map(lambda line: {"record": line})


BookExamples = Callable[[Mapping[str, Any]], list[pieces.Example]]


def book_examples(view: str, vocabulary: Vocabulary, *, length: int, plan_order: str = "interleaved",
                  loss_weights: Mapping[str, float] | None = None,
                  repeat_weight: float = 0.0, profile: str | None = None) -> BookExamples:
  """A function from one scaffold record to the examples of `view` (in plain Python).

  Args:
    view: one of VIEWS.
    vocabulary: the vocabulary (xbook.data.vocab.load_vocabulary).
    length: the sequence length.
    plan_order: plan order (xbook.data.trajectory.PLAN_ORDERS).
    loss_weights: {segment kind: weight}; kinds not named keep DEFAULT_LOSS_WEIGHTS.
    repeat_weight: windows only: factor on the weight of repeated plans (xbook.data.windows).
    profile: paper_stages only: the stage-protocol profile (None: stage_protocol.DEFAULT_PROFILE).
  """
  if view not in VIEWS:
    raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
  if plan_order == trajectory.PAPER_STAGES:
    return paper_stages.examples_fn(vocabulary, view=view, length=length,
                                    profile=profile or sp.DEFAULT_PROFILE,
                                    loss_weights=loss_weights)
  weight_table = trajectory.loss_weight_table(loss_weights)
  style, eos_id, encode = vocabulary.marker_style, vocabulary.eos_id, vocabulary.encode

  def examples(record: Mapping[str, Any]) -> list[pieces.Example]:
    book = pieces.encode_book(record, encode, eos_id, plan_order=plan_order, marker_style=style)
    if view == "full":
      return pieces.full_examples(book, length=length, weight_table=weight_table,
                                  book_id=record["book"]["id"])
    if view == "windows":
      return windows.window_examples(record, book, encode, length=length,
                                     weight_table=weight_table, plan_order=plan_order, marker_style=style,
                                     repeat_weight=repeat_weight)
    return stages.stage_examples(book, eos_id, length=length, weight_table=weight_table)

  return examples


@dataclasses.dataclass(frozen=True)
class BookSource:
  """A task registered online, as a reader that builds its examples itself sees it: the scaffold files
  and the function from one record to its examples (xbook.train.input_pipeline orders books and
  examples by itself, so that it can start at any batch without building the books before it)."""

  task: seqio.Task
  scaffold_files: tuple[str, ...]
  view: str
  vocabulary: Vocabulary
  view_kwargs: Mapping[str, Any]

  def examples(self, length: int) -> BookExamples:
    return book_examples(self.view, self.vocabulary, length=length, **self.view_kwargs)

  def examples_key(self, length: int) -> str:
    """A digest of everything that decides the examples of a record at `length` (not the record)."""
    described = json.dumps([self.view, length, self.vocabulary.fingerprint, self.view_kwargs],
                           sort_keys=True, default=str)
    return hashlib.sha256(described.encode()).hexdigest()[:16]


_BOOK_SOURCES: dict[str, BookSource] = {}


def book_source(name: str) -> BookSource | None:
  """The BookSource of task `name` if register_task registered it online (not for a cache) and it is
  still the registered task of that name; else None."""
  source = _BOOK_SOURCES.get(name)
  if source is None or name not in seqio.TaskRegistry.names() or seqio.TaskRegistry.get(name) is not source.task:
    return None
  return source


def _stacked(examples: list[pieces.Example]) -> list[np.ndarray]:
  """Examples as one [n_examples, longest] array per feature (zero-padded) plus their lengths [n]."""
  lengths = np.array([len(e["targets"]) for e in examples], np.int32)
  longest = int(lengths.max()) if len(examples) else 0
  stacked = []
  for name, dtype in _FEATURE_DTYPES.items():
    array = np.zeros((len(examples), longest), dtype.as_numpy_dtype)
    for i, example in enumerate(examples):
      array[i, :lengths[i]] = example[name]
    stacked.append(array)
  return stacked + [lengths]


def _view_examples(ds: tf.data.Dataset, view: str, vocabulary: Vocabulary, length: int,
                   view_kwargs: Mapping[str, Any]) -> tf.data.Dataset:
  """Each {"record"} of `ds` becomes the examples of `view` at `length` tokens."""
  to_examples = book_examples(view, vocabulary, length=length, **view_kwargs)

  def run(line: tf.Tensor) -> list[np.ndarray]:
    return _stacked(to_examples(json.loads(line.numpy().decode("utf-8"))))

  def split_book(ex: Mapping[str, tf.Tensor]) -> tf.data.Dataset:
    *arrays, lengths = tf.py_function(run, [ex["record"]],
                                      Tout=list(_FEATURE_DTYPES.values()) + [tf.int32])
    for array in arrays:
      array.set_shape([None, None])
    lengths.set_shape([None])
    rows = tf.data.Dataset.from_tensor_slices((dict(zip(_FEATURE_DTYPES, arrays)), lengths))
    return rows.map(lambda row, n: {name: value[:n] for name, value in row.items()})

  return ds.flat_map(split_book)


def view_preprocessor(view: str, vocabulary: Vocabulary, **view_kwargs) -> Callable[..., tf.data.Dataset]:
  """A seqio preprocessor turning each {"record"} into the examples of `view` at the task's length."""

  def preprocess(ds: tf.data.Dataset, sequence_length: Mapping[str, int] | None) -> tf.data.Dataset:
    if not sequence_length or not sequence_length.get("targets"):
      raise ValueError(f"the {view} view needs a sequence length: pass task_feature_lengths "
                       "(xbook.data.feature_converter.task_feature_lengths) to seqio.get_dataset")
    return _view_examples(ds, view, vocabulary, sequence_length["targets"], view_kwargs)

  return preprocess


def fixed_length_view_preprocessor(view: str, vocabulary: Vocabulary, length: int,
                                   **view_kwargs) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
  """Like `view_preprocessor` at a length fixed now, so that it may run before seqio's cache
  placeholder (seqio forbids length-dependent preprocessors there)."""
  return lambda ds: _view_examples(ds, view, vocabulary, length, view_kwargs)


def register_task(name: str, view: str, scaffold_files: str | Sequence[str],
                  vocabulary: str | os.PathLike[str] | Vocabulary, *,
                  plan_order: str = "interleaved", loss_weights: Mapping[str, float] | None = None,
                  repeat_weight: float = 0.0, cached_length: int | None = None,
                  profile: str | None = None) -> seqio.Task:
  """Register (or re-register) one view of scaffold JSONL files as a seqio Task.

  Args:
    name: task name in `seqio.TaskRegistry`.
    view: one of VIEWS.
    scaffold_files: file pattern(s) of scaffold JSONL; each split of the task keeps the records whose
      `split` field matches. Every record is validated before tf.data reads it (xbook.data.records): now,
      for a task built online, and when the files are read, for one built into a cache.
    vocabulary: a Vocabulary, or the path of one for xbook.data.vocab.load_vocabulary (an xbook
      vocabulary, a tokenizer.model, tokenizer.json, tekken.json or a model folder holding one).
    plan_order: plan order (xbook.data.trajectory.ALL_PLAN_ORDERS: interleaved, plans_first, paper_stages).
    loss_weights: {segment kind: weight}; kinds not named keep DEFAULT_LOSS_WEIGHTS (paper_stages: keys
      may also be stage roles, xbook.data.paper_stages.role_weights).
    repeat_weight: windows only: factor on the weight of repeated plans (xbook.data.windows).
    profile: paper_stages only: "24b_first_chapter" or "14b_full_book" (None:
      stage_protocol.DEFAULT_PROFILE, 14b_full_book; entry points pass gin's `paper_stages.profile`).
    cached_length: build the examples at this length, before a seqio cache placeholder, so that the
      task can be cached offline (xbook.data.cache) and read with `use_cached=True`; None: at the
      length the reader asks for, never cached.

  Returns:
    The registered task; its examples have the task features of xbook.data.pieces.
  """
  if view not in VIEWS:
    raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
  if plan_order not in trajectory.ALL_PLAN_ORDERS:
    raise ValueError(f"unknown plan order {plan_order!r}; expected one of {trajectory.ALL_PLAN_ORDERS}")
  if plan_order == trajectory.PAPER_STAGES:
    profile = profile or sp.DEFAULT_PROFILE
    paper_stages.role_weights(loss_weights)  # fail now, not inside tf.data
    if view not in paper_stages.VIEWS:
      raise ValueError(f"plan order {plan_order!r} has the views {paper_stages.VIEWS}, not {view!r}")
  else:
    trajectory.loss_weight_table(loss_weights)  # fail now, not inside tf.data, on an unknown kind
  if not isinstance(vocabulary, Vocabulary):
    vocabulary = load_vocabulary(vocabulary)
  passthrough = {name: seqio.Feature(seqio.PassThroughVocabulary(1), add_eos=False, dtype=dtype,
                                     required=False)
                 for name, dtype in _FEATURE_DTYPES.items() if name != "targets"}
  view_kwargs = dict(plan_order=plan_order, loss_weights=loss_weights, repeat_weight=repeat_weight, profile=profile)
  cached: dict[str, Any] = {}
  if cached_length is None:
    records.validate_files_to_read(scaffold_files)  # a bad record is named now, before anything is trained
    preprocessors = [view_preprocessor(view, vocabulary, **view_kwargs)]
  else:
    preprocessors = [fixed_length_view_preprocessor(view, vocabulary, cached_length, **view_kwargs),
                     seqio.CacheDatasetPlaceholder(required=True)]
    # A cache records what its examples are built from; one built for another config is refused.
    cached = dict(task_cls=cache.CachedTask, provenance=cache.provenance(
        name, view, cached_length, vocabulary, scaffold_files=scaffold_files, **view_kwargs))
  seqio.TaskRegistry.remove(name)
  _BOOK_SOURCES.pop(name, None)
  task = seqio.TaskRegistry.add(
      name, source=ScaffoldDataSource(scaffold_files), preprocessors=preprocessors,
      output_features={"targets": seqio.Feature(vocabulary.seqio_vocabulary(), add_eos=False,
                                                dtype=tf.int32),
                       **passthrough}, **cached)
  if cached_length is None:
    files = (scaffold_files,) if isinstance(scaffold_files, (str, os.PathLike)) else tuple(scaffold_files)
    _BOOK_SOURCES[name] = BookSource(task, tuple(map(os.fspath, files)), view, vocabulary, view_kwargs)
  return task


def register_mixture(name: str, scaffold_files: str | Sequence[str],
                     vocabulary: str | os.PathLike[str] | Vocabulary, *,
                     rates: Mapping[str, float] | None = None, **task_kwargs) -> seqio.Mixture:
  """Register the tasks `<name>_<view>` and the seqio Mixture `name` that samples them by `rates`.

  Args:
    name: mixture name in `seqio.MixtureRegistry`.
    scaffold_files, vocabulary: as for register_task (a path is loaded once, for every task).
    rates: {view: sampling rate}; views left out (or at rate 0) are not mixed. Default: windows 1,
      stages 1, full 1 (paper_stages: windows 1, full 1).
    **task_kwargs: plan_order, loss_weights, repeat_weight, profile for every task.
  """
  views = paper_stages.VIEWS if task_kwargs.get("plan_order") == trajectory.PAPER_STAGES else VIEWS
  rates = dict(rates if rates is not None else {view: 1.0 for view in views})
  unknown = sorted(set(rates) - set(VIEWS))
  if unknown:
    raise ValueError(f"mixture rates name unknown views {unknown}; views are {VIEWS}")
  if not isinstance(vocabulary, Vocabulary):
    vocabulary = load_vocabulary(vocabulary)
  mixed = [(register_task(f"{name}_{view}", view, scaffold_files, vocabulary, **task_kwargs).name,
            float(rate)) for view, rate in rates.items() if rate > 0]
  if not mixed:
    raise ValueError(f"mixture {name}: every rate is 0 in {rates}")
  seqio.MixtureRegistry.remove(name)
  # A view with no examples (e.g. `full` when no book fits) must not end the mixture.
  return seqio.MixtureRegistry.add(name, mixed, sample_fn=functools.partial(
      tf.data.Dataset.sample_from_datasets, stop_on_empty_dataset=False))
