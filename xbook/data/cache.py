"""Offline cache of a tokenized task: seqio's Beam transforms write it as sharded TFRecord files.

Book-length examples are built once, by an Apache Beam pipeline (DirectRunner here; Dataflow, Flink
or Spark beyond one machine), into `<cache_dir>/<task>/`, with seqio's layout (`<split>.tfrecord-*`,
`info.<split>.json`, `stats.<split>.json`, `COMPLETED`). Training then reads the cache with
`use_cached=True`: seqio hands each host only its own files (`seqio.ShardInfo`), so a cache has at
least as many shards per split as the job has hosts.

The task must build its examples before a cache placeholder, at a fixed length:
`xbook.data.tasks.register_task(..., cached_length=N)`.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import apache_beam as beam
import seqio
import tensorflow as tf
from seqio import beam_utils

log = logging.getLogger(__name__)


def cache_task(task: seqio.Task, cache_dir: str, *, num_shards: int,
               splits: Sequence[str] | None = None, pipeline_args: Sequence[str] = ()) -> str:
  """Run the Beam pipeline that caches `task` into `cache_dir`; returns the task's cache folder.

  Args:
    task: a registered seqio Task with a `CacheDatasetPlaceholder` (cached_length set).
    cache_dir: parent folder (local or gs://); the task is written to `<cache_dir>/<task name>`.
    num_shards: TFRecord files per split (at least the number of hosts that will read them).
    splits: the splits to cache (default: all of the task's).
    pipeline_args: Beam pipeline options, e.g. ["--runner=DirectRunner"].
  """
  if not task.requires_caching:
    raise ValueError(f"task {task.name!r} has no cache placeholder: register it with "
                     "register_task(..., cached_length=N)")
  output_dir = os.path.join(cache_dir, seqio.get_task_dir_from_name(task.name))
  if tf.io.gfile.exists(os.path.join(output_dir, "COMPLETED")):
    log.info("%s is already cached in %s (delete it to rebuild)", task.name, output_dir)
    return output_dir
  tf.io.gfile.makedirs(output_dir)
  splits = list(splits or task.splits)
  log.info("caching task %s, splits %s, %d shards each, into %s", task.name, splits, num_shards,
           output_dir)
  with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(list(pipeline_args))) as p:
    written = []
    for split in splits:
      label = f"{task.name}_{split}"
      examples = (p | f"{label}_preprocess" >> beam_utils.PreprocessTask(task, split)
                  | f"{label}_shuffle" >> beam.Reshuffle())
      written.append(examples | f"{label}_write" >> beam_utils.WriteExampleTfRecord(
          seqio.get_cached_tfrecord_prefix(output_dir, split), num_shards=num_shards))
      written.append(examples | f"{label}_info" >> beam_utils.GetInfo(num_shards)
                     | f"{label}_write_info" >> beam_utils.WriteJson(
                         seqio.get_cached_info_path(output_dir, split)))
      written.append(examples | f"{label}_stats" >> beam_utils.GetStats(task.output_features)
                     | f"{label}_write_stats" >> beam_utils.WriteJson(
                         seqio.get_cached_stats_path(output_dir, split)))
    # COMPLETED is written only after every split's files: a cache without it is ignored by seqio.
    _ = (written | "flatten" >> beam.Flatten() | "nothing" >> beam.Filter(lambda _: False)
         | "completed" >> beam.io.textio.WriteToText(
             os.path.join(output_dir, "COMPLETED"), num_shards=1, shard_name_template=""))
  return output_dir
