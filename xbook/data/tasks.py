"""The seqio adapter of a DataSpec: Tasks and a Mixture of its views, and the task of its offline cache.

xbook reads its examples from a DataSpec (xbook.data.spec), not by a registered name: the trainer's input
pipeline (xbook.train.input_pipeline) builds them from the scaffold records with `DataSpec.examples`.
seqio registration stays for two uses:

* the offline cache: `cached_task(spec)` registers the CachedTask (`spec.cache_name`) that Apache Beam
  builds into sharded TFRecords (xbook.data.cache) and training reads from `spec.cache_dir`;
* users who want `seqio.get_mixture_or_task`: `register_task(name, spec, view)` and
  `register_mixture(name, spec)`.

Every task runs the same function from a record to its examples as the online reader
(`DataSpec.examples(view)`, one Python call per book through `tf.py_function`), so the two cannot
differ. Its source is ScaffoldDataSource: scaffold JSONL files whose records are kept by their `split`
field. Through seqio (`seqio.get_dataset`, the Beam cache build) scaffold files are the unit of sharding
across hosts when there are at least as many files as hosts. The `targets` feature declares the
vocabulary as `Vocabulary.seqio_vocabulary()`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Callable, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from xbook.books.splits import SPLITS
from xbook.data import cache, pieces, records
from xbook.data.features import TASK_FEATURES
from xbook.data.spec import BookExamples, DataSpec

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



def _view_examples(ds: tf.data.Dataset, to_examples: BookExamples) -> tf.data.Dataset:
  """Each {"record"} of `ds` becomes its examples (`to_examples`, in Python, one call per book)."""

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


def view_preprocessor(spec: DataSpec, view: str) -> Callable[..., tf.data.Dataset]:
  """A seqio preprocessor turning each {"record"} into the examples of `view` (`spec.examples`), at the
  length the reader asks for (`task_feature_lengths`; default: the spec's)."""

  def preprocess(ds: tf.data.Dataset, sequence_length: Mapping[str, int] | None = None) -> tf.data.Dataset:
    length = (sequence_length or {}).get("targets") or spec.seq_len
    at_length = spec if length == spec.seq_len else dataclasses.replace(spec, seq_len=int(length))
    return _view_examples(ds, at_length.examples(view))

  return preprocess


def _output_features(spec: DataSpec) -> dict[str, seqio.Feature]:
  passthrough = {name: seqio.Feature(seqio.PassThroughVocabulary(1), add_eos=False, dtype=dtype, required=False)
                 for name, dtype in _FEATURE_DTYPES.items() if name != "targets"}
  return {"targets": seqio.Feature(spec.vocabulary.seqio_vocabulary(), add_eos=False, dtype=tf.int32),
          **passthrough}


def register_task(name: str, spec: DataSpec, view: str = "windows") -> seqio.Task:
  """Register (or re-register) the examples of `view` of `spec` as the seqio Task `name`: the adapter
  for users of `seqio.get_mixture_or_task` (xbook's own readers take the DataSpec itself).

  Its examples are `spec.examples(view)` at the length the reader asks for, with the task features of
  xbook.data.features; each split keeps the records whose `split` field matches.
  """
  spec.trajectory_format.check_view(view)
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, source=ScaffoldDataSource(spec.scaffold_files),
                                preprocessors=[view_preprocessor(spec, view)], output_features=_output_features(spec))


def register_mixture(name: str, spec: DataSpec) -> seqio.Mixture:
  """Register the tasks `<name>_<view>` of `spec`'s views and the seqio Mixture `name` that samples them
  at `spec.view_rates` (a view with no examples, e.g. `full` when no book fits, does not end it)."""
  mixed = [(register_task(f"{name}_{view}", spec, view).name, spec.view_rates[view]) for view in spec.views]
  seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, mixed, sample_fn=functools.partial(
      tf.data.Dataset.sample_from_datasets, stop_on_empty_dataset=False))


def cached_task(spec: DataSpec) -> cache.CachedTask:
  """The windows of `spec`, built at `spec.seq_len` before a seqio cache placeholder, as the CachedTask
  `spec.cache_name`: what `xbook data cache` builds (xbook.data.cache.cache_task) and training reads from
  `spec.cache_dir`. It carries the provenance of its examples, and refuses a cache built for another
  config."""
  seqio.TaskRegistry.remove(spec.cache_name)
  if spec.cache_dir:
    seqio.add_global_cache_dirs([spec.cache_dir])
  return seqio.TaskRegistry.add(
      spec.cache_name, task_cls=cache.CachedTask, source=ScaffoldDataSource(spec.scaffold_files),
      preprocessors=[lambda ds: _view_examples(ds, spec.examples("windows")),
                     seqio.CacheDatasetPlaceholder(required=True)],
      output_features=_output_features(spec), provenance=cache.provenance(spec.cache_name, spec))
