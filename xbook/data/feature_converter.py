"""Feature converter from trajectory task features to the decoder example contract (DESIGN.md).

Task features (per example, unbatched; `task_feature_lengths(n)` gives their lengths):
  targets        int32   [n] token ids of a trajectory window
  loss_weights   float32 [n] weight of each token, set by its segment kind
  segment_kinds  int32   [n] segment kind of each token (xbook.data.trajectory.KIND_ID)

Model features (each [length] here, [batch, length] once batched):
  decoder_target_tokens  int32    the tokens to predict
  decoder_input_tokens   int32    targets shifted right (BOS id 0 at the start of every packed sequence)
  decoder_loss_weights   float32  0 on padding, else the segment kind's weight
  decoder_segment_ids    int32    1..k for the k sequences packed into the row, 0 on padding
  decoder_positions      int32    position of each token inside its own sequence
  decoder_segment_kinds  int32    segment kind of each token (prompt, premise, ..., text), so that the
                                  trainer can report the loss of plans and of prose separately

`length` must be a multiple of the sequence-parallel degree, so that ring attention can split it evenly.
"""

from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf

FeatureSpec = seqio.FeatureConverter.FeatureSpec


def task_feature_lengths(length: int) -> dict[str, int]:
  """The `task_feature_lengths` of a trajectory task at sequence length `length`."""
  return {"targets": length, "loss_weights": length, "segment_kinds": length}


class TrajectoryFeatureConverter(seqio.FeatureConverter):
  """Decoder-only conversion that keeps per-token loss weights and always emits segments/positions.

  Args:
    pack: pack several short sequences per row (seqio's packing); book windows are already full
      length and are only padded.
    length_multiple: the model length must be divisible by this (the `sequence` mesh axis size).
  """

  TASK_FEATURES = {
      "targets": FeatureSpec(dtype=tf.int32),
      "loss_weights": FeatureSpec(dtype=tf.float32),
      "segment_kinds": FeatureSpec(dtype=tf.int32),
  }
  MODEL_FEATURES = {
      "decoder_target_tokens": FeatureSpec(dtype=tf.int32),
      "decoder_input_tokens": FeatureSpec(dtype=tf.int32),
      "decoder_loss_weights": FeatureSpec(dtype=tf.float32),
      "decoder_segment_ids": FeatureSpec(dtype=tf.int32),
      "decoder_positions": FeatureSpec(dtype=tf.int32),
      "decoder_segment_kinds": FeatureSpec(dtype=tf.int32),
  }
  PACKING_FEATURE_DTYPES = {
      "decoder_segment_ids": tf.int32,
      "decoder_positions": tf.int32,
  }

  def __init__(self, pack: bool = False, length_multiple: int = 1, **kwargs) -> None:
    super().__init__(pack=pack, **kwargs)
    if length_multiple < 1:
      raise ValueError(f"length_multiple must be >= 1, got {length_multiple}")
    self._length_multiple = length_multiple

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    targets = features["targets"]
    non_padding = tf.cast(targets != 0, tf.int32)
    if self.pack:
      segment_ids = features["targets_segment_ids"]
      positions = features["targets_positions"]
    else:
      segment_ids = non_padding
      positions = tf.range(tf.size(targets), dtype=tf.int32) * non_padding
    return {
        "decoder_target_tokens": targets,
        "decoder_input_tokens": seqio.utils.make_autoregressive_inputs(
            targets, sequence_id=segment_ids if self.pack else None, bos_id=self.bos_id),
        "decoder_loss_weights": features["loss_weights"] * tf.cast(non_padding, tf.float32),
        "decoder_segment_ids": segment_ids,
        "decoder_positions": positions,
        "decoder_segment_kinds": features["segment_kinds"],
    }

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
                        ) -> tf.data.Dataset:
    self._check_lengths(task_feature_lengths)
    ds = self._pack_or_pad(ds, task_feature_lengths)
    return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
    length = task_feature_lengths["targets"]
    return {name: length for name in self.MODEL_FEATURES}

  def _check_lengths(self, task_feature_lengths: Mapping[str, int]) -> None:
    length = task_feature_lengths["targets"]
    if set(task_feature_lengths.values()) != {length}:
      raise ValueError(f"task feature lengths differ: {dict(task_feature_lengths)}; they must be equal "
                       f"(use task_feature_lengths({length}))")
    if length % self._length_multiple:
      raise ValueError(f"sequence length {length} is not a multiple of the sequence-parallel degree "
                       f"{self._length_multiple}; use {-(-length // self._length_multiple) * self._length_multiple}")
