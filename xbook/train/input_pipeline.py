"""Batches of trajectory windows for the trainer, from a registered seqio task.

Each host reads its own shard of the scaffold files and yields numpy batches of its share of the
global batch: {feature: [per_host_batch, length]} with the features of the example contract. With the
zig-zag layout the length axis of every feature is permuted once, here, so that causal ring attention
over `sequence_shards` devices gets equal work per device (xbook.data.zigzag).
"""

from __future__ import annotations

import logging
from typing import Iterator, Mapping

import jax
import numpy as np
import seqio

from xbook.data import zigzag
from xbook.data.feature_converter import TrajectoryFeatureConverter, task_bos_id, task_feature_lengths

log = logging.getLogger(__name__)

Batch = Mapping[str, np.ndarray]


def trajectory_batches(task_name: str, *, split: str, global_batch_size: int, seq_len: int, seed: int,
                       sequence_shards: int = 1, layout: str = "contiguous", start_batch: int = 0,
                       repeat: bool = True, shuffle: bool = True, use_cached: bool = False
                       ) -> Iterator[Batch]:
  """Deterministic batches of `task_name`, skipping the `start_batch` batches already consumed.

  With `shuffle` the order depends only on `seed`; without it windows come in book order. Either way a
  resumed run sees exactly the batches an uninterrupted run would have seen. Every sequence's first
  input token is the BOS of the task's vocabulary.

  Args:
    sequence_shards: size of the `sequence` mesh axis; `seq_len` must be a multiple of it (of twice
      it for the zig-zag layout).
    layout: "contiguous" or "zigzag" (xbook.data.zigzag.LAYOUTS).
    use_cached: read the task's offline cache (xbook.data.cache) instead of building examples.
  """
  if layout not in zigzag.LAYOUTS:
    raise ValueError(f"unknown layout {layout!r}; expected one of {zigzag.LAYOUTS}")
  num_hosts = jax.process_count()
  if global_batch_size % num_hosts:
    raise ValueError(f"global batch {global_batch_size} is not divisible by {num_hosts} hosts")
  shard_info = seqio.ShardInfo(jax.process_index(), num_hosts) if num_hosts > 1 else None
  length_multiple = sequence_shards * (2 if layout == "zigzag" else 1)
  ds = seqio.get_dataset(
      task_name, task_feature_lengths=task_feature_lengths(seq_len),
      dataset_split=split, shuffle=shuffle, num_epochs=None if repeat else 1, shard_info=shard_info,
      seed=seed, use_cached=use_cached,
      feature_converter=TrajectoryFeatureConverter(bos_id=task_bos_id(task_name), pack=False,
                                                   length_multiple=length_multiple))
  ds = ds.batch(global_batch_size // num_hosts, drop_remainder=repeat)
  if start_batch:
    log.info("input pipeline: skipping %d batches already consumed", start_batch)
    ds = ds.skip(start_batch)
  batches = ds.prefetch(2).as_numpy_iterator()
  if layout == "zigzag":
    return (zigzag.apply_layout(batch, sequence_shards) for batch in batches)
  return batches
