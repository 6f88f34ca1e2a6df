"""Scaffold files as the data path reads them: listed, and every record validated before TensorFlow runs.

The seqio tasks (xbook.data.tasks) read scaffold JSONL line by line inside tf.data, where a bad line
would only surface as an `EagerPyFunc` traceback with no file or line. So the files a task is about to
read are first read here, in Python, through the same reader and validator as `xbook scaffold show`
(xbook.scaffold.read_scaffolds): a truncated line, a field of the wrong type or an unknown field is a
`ScaffoldError` naming the file, line, book and field. Each file is validated once per process for as long
as its size and modification time stay the same.
"""

from __future__ import annotations

import glob
import os
import threading
from typing import Any, Sequence

import seqio
import tensorflow as tf

from xbook.scaffold import ScaffoldError, read_scaffolds, scaffold_lines

_VALIDATED: dict[str, tuple[int, int]] = {}
_LOCK = threading.Lock()


def list_scaffold_files(patterns: str | Sequence[str]) -> list[str]:
  """The files of the glob pattern(s) in seqio's order (xbook.data.tasks.ScaffoldDataSource shards this
  list across hosts); FileNotFoundError naming the pattern when one matches nothing or a file is missing."""
  patterns = [patterns] if isinstance(patterns, (str, os.PathLike)) else list(patterns)
  files = []
  for pattern in map(os.fspath, patterns):
    matched = seqio.utils.list_files(pattern)
    if not matched or (len(matched) == 1 and matched[0] == pattern and not tf.io.gfile.exists(pattern)):
      raise FileNotFoundError(f"no scaffold file {'matches' if glob.has_magic(pattern) else 'at'} {pattern} "
                              "(train.scaffold_files, --scaffolds): build one with `xbook scaffold build`, "
                              "or fix the path")
    files += matched
  return files


def validate_files_to_read(patterns: str | Sequence[str], shard_info: seqio.ShardInfo | None = None) -> None:
  """Validate the scaffold files that a ScaffoldDataSource reads for one shard (every file without one)."""
  files = list_scaffold_files(patterns)
  if shard_info and len(files) >= shard_info.num_shards:
    files = files[shard_info.index::shard_info.num_shards]
  validate_scaffold_files(files)


def validate_scaffold_files(files: Sequence[str]) -> int:
  """Read every record of `files` with the scaffold validator; returns how many files were read now.

  Raises:
    ScaffoldError: for the first bad line, naming file, line, book and field.
  """
  read = 0
  for path in files:
    stat = tf.io.gfile.stat(path)
    key = (stat.length, stat.mtime_nsec)
    with _LOCK:
      if _VALIDATED.get(path) == key:
        continue
    for _ in read_scaffolds(path, open_fn=open_text):
      pass
    with _LOCK:
      _VALIDATED[path] = key
    read += 1
  return read


def open_text(path: str) -> Any:
  """`path` (local or gs://) opened for reading text: how the data path opens scaffold files."""
  return tf.io.gfile.GFile(path, "r")


def read_split(patterns: str | Sequence[str], split: str) -> list[dict[str, Any]]:
  """The validated records of `split` (a record's `split` field, "train" when it has none) in the files
  of `patterns`, in file order then line order.

  Raises:
    FileNotFoundError: naming a pattern that matches nothing.
    ScaffoldError: naming the file, line, book and field of a bad record.
  """
  files = list_scaffold_files(patterns)
  validate_scaffold_files(files)  # once per process while a file is unchanged
  return [record for path in files for _, record in scaffold_lines(path, open_text, validate=False)
          if record.get("split", "train") == split]


__all__ = ["ScaffoldError", "list_scaffold_files", "open_text", "read_split", "validate_files_to_read",
           "validate_scaffold_files"]
