"""Feature converter from the task features to the decoder example features (both: xbook.data.features).

Views pack their own examples (the `stages` view does), so the converter only pads (`task_feature_lengths(n)`
gives the task features' lengths); padding gets segment id 0, which marks it whatever the padded id (id 0
is a real token for Llama 3 and Qwen). The inputs start every packed sequence with the vocabulary's BOS
(`bos_id`: xbook.data.spec.DataSpec.bos_id).

`length` must be a multiple of the sequence-parallel degree, so that ring attention can split it evenly.
"""

from __future__ import annotations

from typing import Any, Mapping

import seqio
import tensorflow as tf

from xbook.data.features import EXAMPLE_FEATURES, TASK_FEATURES

FeatureSpec = seqio.FeatureConverter.FeatureSpec


def task_feature_lengths(length: int) -> dict[str, int]:
  """The `task_feature_lengths` of a trajectory task at sequence length `length`."""
  return {name: length for name in TASK_FEATURES}


class TrajectoryFeatureConverter(seqio.FeatureConverter):
  """Decoder-only conversion that keeps per-token loss weights and the views' segments/positions.

  Args:
    bos_id: the first input token of every sequence: the vocabulary's BOS (DataSpec.bos_id), never assumed
      (id 0 is <unk> for Mistral and a real token for Llama 3 and Qwen).
    pack: must be False: views that pack (stages) do it themselves, with exact segment ids.
    length_multiple: the model length must be divisible by this (the `sequence` mesh axis size).
  """

  TASK_FEATURES = {name: FeatureSpec(dtype=tf.as_dtype(dtype)) for name, dtype in TASK_FEATURES.items()}
  MODEL_FEATURES = {name: FeatureSpec(dtype=tf.as_dtype(dtype)) for name, dtype in EXAMPLE_FEATURES.items()}
  PACKING_FEATURE_DTYPES = None  # never packs

  def __init__(self, *, bos_id: int, pack: bool = False, length_multiple: int = 1, **kwargs: Any) -> None:
    if pack:
      raise ValueError("TrajectoryFeatureConverter does not pack: the stages view packs its examples "
                       "itself (use pack=False)")
    super().__init__(pack=False, bos_id=bos_id, **kwargs)
    if length_multiple < 1:
      raise ValueError(f"length_multiple must be >= 1, got {length_multiple}")
    self._length_multiple = length_multiple

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    targets, segment_ids = features["targets"], features["segment_ids"]
    return {
        "decoder_target_tokens": targets,
        "decoder_input_tokens": seqio.utils.make_autoregressive_inputs(
            targets, sequence_id=segment_ids, bos_id=self.bos_id),
        "decoder_loss_weights": features["loss_weights"] * tf.cast(segment_ids > 0, tf.float32),
        "decoder_segment_ids": segment_ids,
        "decoder_positions": features["positions"],
        "decoder_segment_kinds": features["segment_kinds"],
    }

  def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
                        ) -> tf.data.Dataset:
    self._check_lengths(task_feature_lengths)
    ds = seqio.utils.trim_and_pad_dataset(ds, task_feature_lengths)
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
