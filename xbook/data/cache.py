"""Offline cache of a tokenized task: seqio's Beam transforms write it as sharded TFRecord files.

Book-length examples are built once, by an Apache Beam pipeline (DirectRunner here; Dataflow, Flink
or Spark beyond one machine), into `<cache_dir>/<task>/`, with seqio's layout (`<split>.tfrecord-*`,
`info.<split>.json`, `stats.<split>.json`, `COMPLETED`). Training then reads the cache with
`use_cached=True`: seqio hands each host only its own files (`seqio.ShardInfo`), so a cache has at
least as many shards per split as the job has hosts.

The task must build its examples before a cache placeholder, at a fixed length:
`xbook.data.tasks.cached_task(spec)` registers a `CachedTask` for a DataSpec, which carries the
*provenance* of its examples: what they are built from (task, view, sequence length, plan order, loss
weights, repeat weight, stage-protocol profile, the vocabulary's fingerprint). `cache_task` writes it
beside the examples (`provenance.json`), and a CachedTask that finds a cache compares it with its own
before reading a single example: a cache built for another config (another `train.seq_len`, another
vocabulary, ...) is refused with a `CacheMismatchError` naming every differing field and the command
that rebuilds it (`rebuild_command`), never read as if it were right.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from typing import Any, Mapping, Sequence

import seqio
import tensorflow as tf

from xbook import __version__

log = logging.getLogger(__name__)

PROVENANCE_FILE = "provenance.json"
PROVENANCE_SCHEMA = "xbook.cache/1"

# The provenance fields two caches must agree on, and the setting each comes from (for the message).
COMPARED_FIELDS: dict[str, str] = {
    "task": "train.task_name", "view": "the task's view", "seq_len": "train.seq_len",
    "plan_order": "train.plan_order", "profile": "paper_stages.profile",
    "loss_weights": "train.loss_weights", "repeat_weight": "train.repeat_weight",
    "vocabulary": "train.vocab_path"}


class CacheMismatchError(ValueError):
  """An offline cache that was built for another configuration than the one reading it (or for none)."""


def provenance(task_name: str, spec: Any) -> dict[str, Any]:
  """What the cached windows of `spec` (an xbook.data.spec.DataSpec) are built from: COMPARED_FIELDS,
  plus recorded-only fields.

  Loss weights are recorded resolved (every kind, or every stage role for paper_stages), so that an
  unset weight and its default compare equal; the vocabulary by its content fingerprint (its path is
  recorded but not compared: a copy elsewhere is the same vocabulary).
  """
  return {"task": task_name, **spec.example_settings("windows"),
          # Recorded, not compared:
          "vocabulary_path": spec.vocabulary.path, "vocabulary_size": spec.vocabulary.size,
          "scaffold_files": list(spec.scaffold_files)}


def read_provenance(task_cache_dir: str) -> dict[str, Any] | None:
  """The provenance a cache folder records, or None for a cache written before xbook recorded one."""
  path = os.path.join(task_cache_dir, PROVENANCE_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    recorded = json.load(f)
  if "trajectory_layout" in recorded:  # a cache built before plan_order was renamed: the same field
    recorded.setdefault("plan_order", recorded.pop("trajectory_layout"))
  return recorded


def _shown(field: str, value: Any) -> str:
  if field == "vocabulary":
    return f"fingerprint {str(value)[:12]}"
  if isinstance(value, dict):
    return json.dumps(value, sort_keys=True)
  return repr(value)


def differences(recorded: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
  """One phrase per compared field where a cache's provenance differs from what a task wants."""
  found = []
  for field, setting in COMPARED_FIELDS.items():
    have, want = recorded.get(field), wanted.get(field)
    if have == want:
      continue
    if field == "loss_weights" and isinstance(have, dict) and isinstance(want, dict):
      keys = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
      have = {k: have.get(k) for k in keys}
      want = {k: want.get(k) for k in keys}
    where = ""
    if field == "vocabulary":
      where = f" ({recorded.get('vocabulary_path')} there, {wanted.get('vocabulary_path')} here)"
    found.append(f"{field} {_shown(field, have)} in the cache, {_shown(field, want)} here ({setting}){where}")
  return found


# What a rebuild command says in place of the config's gin flags when none are given: the `xbook` command
# puts its own command line's there (xbook.cli_errors.report); library code never reads the command line.
CONFIG_PLACEHOLDER = "--gin_file=YOUR_CONFIG.gin"


def config_flags(gin_files: Sequence[str], gin_bindings: Sequence[str]) -> str:
  """The `--gin_file`/`--gin.NAME=VALUE` flags of a config, shell-quoted, less train.cache_dir (which a
  cache command's --out replaces); CONFIG_PLACEHOLDER for an empty config.

  Args:
    gin_files, gin_bindings: the config's files and "NAME = VALUE" bindings (xbook.gin_flags.parsed()).
  """
  words = [f"--gin_file={f}" for f in gin_files]
  for binding in gin_bindings:
    name, _, value = binding.partition("=")
    name, value = name.strip(), value.strip()
    if name != "train.cache_dir":
      words.append(f"--gin.{name}={value}")
  return " ".join(_shell_word(word) for word in words) or CONFIG_PLACEHOLDER


def rebuild_command(cache_dir: str, *, overwrite: bool = False, gin_files: Sequence[str] = (),
                    gin_bindings: Sequence[str] = ()) -> str:
  """The `xbook data cache` command that (re)builds the cache of a gin config in `cache_dir`.

  Args:
    cache_dir: the cache folder (train.cache_dir: the parent of the task's folder).
    overwrite: add --overwrite (replace a cache built for another config).
    gin_files, gin_bindings: the config ("NAME = VALUE" bindings); none: CONFIG_PLACEHOLDER, which the
      `xbook` command replaces with its command line's flags when it prints the message.
  """
  words = ["xbook", "data", "cache", config_flags(gin_files, gin_bindings), "--out", _shell_word(cache_dir)]
  return " ".join(words + (["--overwrite"] if overwrite else []))


def _shell_word(word: str) -> str:
  """`word` quoted for a POSIX shell, readably: --gin.x="'a b'" rather than shlex's '"'"' chains."""
  if shlex.quote(word) == word:
    return word
  head, sep, value = word.partition("=")
  if sep and word.startswith("--") and shlex.quote(head) == head and not any(c in value for c in '"$`\\!'):
    return f'{head}="{value}"'
  return shlex.quote(word)


def check_cache(task_cache_dir: str, wanted: Mapping[str, Any], cache_dir: str | None = None) -> dict[str, Any]:
  """The provenance of the cache in `task_cache_dir`, if it matches `wanted`; else CacheMismatchError.

  Args:
    task_cache_dir: the task's cache folder (`<cache_dir>/<task>`).
    wanted: the provenance of the task that would read it (`provenance`).
    cache_dir: the parent folder, for the rebuild command (default: task_cache_dir's parent).
  """
  cache_dir = cache_dir or os.path.dirname(task_cache_dir.rstrip("/"))
  recorded = read_provenance(task_cache_dir)
  if recorded is None:
    raise CacheMismatchError(
        f"the offline cache {task_cache_dir} does not record what it was built from (it predates "
        f"{PROVENANCE_FILE}), so it may not fit this config: rebuild it with "
        f"`{rebuild_command(cache_dir, overwrite=True)}`")
  found = differences(recorded, wanted)
  if found:
    raise CacheMismatchError(
        f"the offline cache {task_cache_dir} was built for another config: {'; '.join(found)}. Rebuild it "
        f"for this config with `{rebuild_command(cache_dir, overwrite=True)}`, or point train.cache_dir at "
        f"another folder")
  return recorded


class CachedTask(seqio.Task):
  """A seqio Task whose examples are built before a cache placeholder, knowing what they are built from:
  the cache it finds must record the same provenance (`check_cache`), and hold the split it reads."""

  def __init__(self, *args: Any, provenance: Mapping[str, Any], **kwargs: Any) -> None:
    super().__init__(*args, **kwargs)
    self.provenance = dict(provenance)
    self._checked: tuple[str, dict[str, Any]] | None = None

  @property
  def cache_dir(self) -> str | None:
    found = seqio.Task.cache_dir.fget(self)
    if found and (self._checked is None or self._checked[0] != found):
      self._checked = (found, check_cache(found, self.provenance))
    return found

  def _get_cached_source(self, split: str, file_shuffle_buffer_size: int | None = None):
    found = self.cache_dir
    if found:
      splits = self._checked[1].get("splits")
      if splits is not None and split not in splits:
        raise CacheMismatchError(
            f"the offline cache {found} holds the split(s) {', '.join(splits)}, not {split}: rebuild it "
            f"with every split (no --split) with "
            f"`{rebuild_command(os.path.dirname(found.rstrip('/')), overwrite=True)}`")
    return super()._get_cached_source(split, file_shuffle_buffer_size)


def cache_task(task: seqio.Task, cache_dir: str, *, num_shards: int,
               splits: Sequence[str] | None = None, pipeline_args: Sequence[str] = (),
               overwrite: bool = False) -> str:
  """Run the Beam pipeline that caches `task` into `cache_dir`; returns the task's cache folder.

  A completed cache of the same provenance (and splits) is kept as it is; one built for another config
  is refused (CacheMismatchError) unless `overwrite`, which deletes and rebuilds it. Leftovers of an
  incomplete build (no COMPLETED) are deleted first, so that no stale shard joins the new ones.

  Args:
    task: a registered seqio Task with a `CacheDatasetPlaceholder` (xbook.data.tasks.cached_task).
    cache_dir: parent folder (local or gs://); the task is written to `<cache_dir>/<task name>`.
    num_shards: TFRecord files per split (at least the number of hosts that will read them).
    splits: the splits to cache (default: all of the task's).
    pipeline_args: Beam pipeline options, e.g. ["--runner=DirectRunner"].
    overwrite: replace a completed cache built for another config.
  """
  import apache_beam as beam  # heavy: only the pipeline needs it
  from seqio import beam_utils

  if not task.requires_caching:
    raise ValueError(f"task {task.name!r} has no cache placeholder: register it with "
                     "xbook.data.tasks.cached_task(spec)")
  output_dir = os.path.join(cache_dir, seqio.get_task_dir_from_name(task.name))
  splits = list(splits or task.splits)
  wanted = getattr(task, "provenance", None)
  if tf.io.gfile.exists(os.path.join(output_dir, "COMPLETED")):
    recorded = read_provenance(output_dir)
    if wanted is None:
      log.info("%s is already cached in %s (delete it to rebuild)", task.name, output_dir)
      return output_dir
    found = (["it records no provenance (built by an older xbook)"] if recorded is None
             else differences(recorded, wanted))
    missing = sorted(set(splits) - set((recorded or {}).get("splits") or ()))
    if recorded is not None and missing:
      found.append(f"it holds the split(s) {', '.join(recorded.get('splits') or ())}, not {', '.join(missing)}")
    if not found:
      log.info("%s is already cached in %s for this config (rerun with --overwrite to rebuild)", task.name,
               output_dir)
      return output_dir
    if not overwrite:
      raise CacheMismatchError(
          f"{output_dir} already holds a cache of {task.name} built for another config: {'; '.join(found)}. "
          f"Rerun with --overwrite to replace it, or pass another --out")
    log.info("replacing the cache in %s (%s)", output_dir, "; ".join(found))
    tf.io.gfile.rmtree(output_dir)
  elif tf.io.gfile.exists(output_dir) and tf.io.gfile.listdir(output_dir):
    log.info("deleting the leftovers of an incomplete cache in %s", output_dir)
    tf.io.gfile.rmtree(output_dir)
  tf.io.gfile.makedirs(output_dir)
  if wanted is not None:
    with tf.io.gfile.GFile(os.path.join(output_dir, PROVENANCE_FILE), "w") as f:
      json.dump({"schema": PROVENANCE_SCHEMA, "xbook_version": __version__, **wanted, "splits": splits,
                 "num_shards": num_shards}, f, indent=2)
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
