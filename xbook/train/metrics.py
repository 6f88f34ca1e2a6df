"""Per-step metrics of a run: `metrics.jsonl` in the run directory and TensorBoard events.

The run directory may be local or in an object store (gs://). Objects cannot be appended to, so there
`metrics.jsonl` is rewritten whole (atomically) at each write, keeping the records of earlier sessions.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import jax
from etils import epath

from xbook.atomic import atomic_open, is_url


class MetricsWriter:
  """Appends one JSON line per step and mirrors scalars to TensorBoard. Only process 0 writes."""

  def __init__(self, run_dir: str | os.PathLike[str]) -> None:
    self.enabled = jax.process_index() == 0
    self.path = epath.Path(run_dir) / "metrics.jsonl"
    if not self.enabled:
      return
    import tensorflow as tf  # TensorBoard event files; imported lazily so readers need no TF.
    self._tf = tf
    self._summary = tf.summary.create_file_writer(str(self.path.parent / "tensorboard"))
    if is_url(self.path):
      self._lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
      self._file = None
    else:
      self._file = open(self.path, "a", encoding="utf-8")

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    line = json.dumps(record) + "\n"
    if self._file is None:
      self._lines.append(line)
      with atomic_open(self.path) as f:
        f.write("".join(self._lines))
    else:
      self._file.write(line)
      self._file.flush()
    with self._summary.as_default():
      for name, value in scalars.items():
        self._tf.summary.scalar(name, float(value), step=int(step))

  def close(self) -> None:
    if self.enabled:
      if self._file is not None:
        self._file.close()
      self._summary.close()


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, float]]:
  """The records of `metrics.jsonl`; a later record of the same step (after a resume) wins."""
  by_step: dict[int, dict[str, float]] = {}
  path = epath.Path(run_dir) / "metrics.jsonl"
  with path.open() as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_number}: not a JSON object ({e})") from e
      by_step[int(record["step"])] = record
  return [by_step[s] for s in sorted(by_step)]
