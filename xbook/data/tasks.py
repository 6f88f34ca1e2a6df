"""SeqIO tasks that turn scaffold JSONL files into trajectory windows.

Pipeline of the `windows` view registered here (per scaffold record, i.e. per book):
  ScaffoldDataSource over scaffold JSONL (records of the requested split) -> segments of the trajectory (xbook.data.trajectory) -> SentencePiece tokens + per-token loss weights
  -> consecutive windows of `sequence_length["targets"]` tokens (every token lands in exactly one window).

Scaffold files are the unit of sharding across hosts (seqio shards file-based sources per host when there
are at least as many files as hosts).
"""

from __future__ import annotations

import functools
import json
from typing import Mapping, Sequence

import seqio
import tensorflow as tf

from xbook.data import trajectory
from xbook.data.vocab import EOS_ID

SPLITS = ("train", "validation", "test")


def _record_segments(line: tf.Tensor, layout: str) -> tuple[list[str], list[int], str]:
  record = json.loads(line.numpy().decode("utf-8"))
  segments = trajectory.scaffold_to_segments(record, layout)
  return ([s.text for s in segments], [trajectory.KIND_ID[s.kind] for s in segments],
          record.get("split", "train"))


class ScaffoldDataSource(seqio.FileDataSource):
  """Scaffold JSONL files as trajectory segments; a split keeps the records whose `split` matches.

  Every split reads the same files (a book's split is a field of its record, assigned by author), so
  examples are {"segment_text": string[n_segments], "segment_kind": int32[n_segments]}.
  """

  def __init__(self, scaffold_files: str | Sequence[str], layout: str = "interleaved") -> None:
    self._layout = layout
    files = [scaffold_files] if isinstance(scaffold_files, str) else list(scaffold_files)
    super().__init__(read_file_fn=tf.data.TextLineDataset,
                     split_to_filepattern={split: files for split in SPLITS})

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, **kwargs) -> tf.data.Dataset:
    lines = super().get_dataset(split=split, shuffle=shuffle, seed=seed, shard_info=shard_info,
                                **kwargs)

    def parse(line: tf.Tensor) -> dict[str, tf.Tensor]:
      texts, kinds, record_split = tf.py_function(
          functools.partial(_record_segments, layout=self._layout), [line],
          Tout=(tf.string, tf.int32, tf.string))
      texts.set_shape([None])
      kinds.set_shape([None])
      record_split.set_shape([])
      return {"segment_text": texts, "segment_kind": kinds, "split": record_split}

    ds = lines.map(parse).filter(lambda ex: ex["split"] == split)
    return ds.map(lambda ex: {"segment_text": ex["segment_text"], "segment_kind": ex["segment_kind"]})


@seqio.map_over_dataset
def tokenize_segments(ex: Mapping[str, tf.Tensor], output_features: Mapping[str, seqio.Feature],
                      weight_table: Sequence[float]) -> dict[str, tf.Tensor]:
  """Tokenize each segment; every token inherits its segment's kind and loss weight. Appends EOS."""
  pieces = output_features["targets"].vocabulary.encode_tf(ex["segment_text"])
  kinds = tf.repeat(ex["segment_kind"], pieces.row_lengths())
  tokens = tf.concat([tf.cast(pieces.flat_values, tf.int32), [EOS_ID]], axis=0)
  kinds = tf.concat([kinds, [trajectory.KIND_ID["text"]]], axis=0)
  weights = tf.gather(tf.constant(weight_table, tf.float32), kinds)
  return {"targets": tokens, "loss_weights": weights, "segment_kinds": kinds}


def split_into_windows(ds: tf.data.Dataset, sequence_length: Mapping[str, int]) -> tf.data.Dataset:
  """Cut each token stream into consecutive windows of the target length; the last one is padded."""
  length = sequence_length["targets"]

  def windows(ex: Mapping[str, tf.Tensor]) -> tf.data.Dataset:
    n = tf.shape(ex["targets"])[0]
    n_windows = (n + length - 1) // length
    pad = n_windows * length - n
    return tf.data.Dataset.from_tensor_slices({
        key: tf.reshape(tf.pad(ex[key], [[0, pad]]), [n_windows, length])
        for key in ("targets", "loss_weights", "segment_kinds")})

  return ds.flat_map(windows)


def register_windows_task(name: str, scaffold_files: str | Sequence[str], vocab_path: str, *,
                          layout: str = "interleaved",
                          loss_weights: Mapping[str, float] | None = None) -> seqio.Task:
  """Register (or re-register) the `windows` view of scaffold JSONL files as a seqio Task.

  Args:
    name: task name in `seqio.TaskRegistry`.
    scaffold_files: file pattern(s) of scaffold JSONL; each split of the task keeps the records whose
      `split` field matches.
    vocab_path: SentencePiece model trained with `xbook vocab train`.
    layout: trajectory layout (xbook.data.trajectory.LAYOUTS).
    loss_weights: {segment kind: weight}; kinds not named keep DEFAULT_LOSS_WEIGHTS.

  Returns:
    The registered task; its examples have features `targets`, `loss_weights` and `segment_kinds`.
  """
  vocabulary = seqio.SentencePieceVocabulary(vocab_path)
  preprocessors = [
      functools.partial(tokenize_segments, weight_table=trajectory.loss_weight_table(loss_weights)),
      split_into_windows,
  ]
  seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(
      name, source=ScaffoldDataSource(scaffold_files, layout), preprocessors=preprocessors,
      output_features={"targets": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32),
                       "loss_weights": seqio.Feature(seqio.PassThroughVocabulary(1), add_eos=False,
                                                     dtype=tf.float32, required=False),
                       "segment_kinds": seqio.Feature(seqio.PassThroughVocabulary(1), add_eos=False,
                                                      dtype=tf.int32, required=False)})

