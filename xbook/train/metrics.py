"""Per-step metrics of a run: `metrics.jsonl` in the run directory and TensorBoard events."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import jax


class MetricsWriter:
  """Appends one JSON line per step and mirrors scalars to TensorBoard. Only process 0 writes."""

  def __init__(self, run_dir: str | os.PathLike[str]) -> None:
    self.enabled = jax.process_index() == 0
    self.path = Path(run_dir) / "metrics.jsonl"
    if not self.enabled:
      return
    import tensorflow as tf  # TensorBoard event files; imported lazily so readers need no TF.
    self._tf = tf
    self._summary = tf.summary.create_file_writer(str(Path(run_dir) / "tensorboard"))
    self._file = open(self.path, "a", encoding="utf-8")

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    with self._summary.as_default():
      for name, value in scalars.items():
        self._tf.summary.scalar(name, float(value), step=int(step))

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      self._summary.close()


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, float]]:
  """The records of `metrics.jsonl`; a later record of the same step (after a resume) wins."""
  by_step: dict[int, dict[str, float]] = {}
  path = Path(run_dir) / "metrics.jsonl"
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_number}: not a JSON object ({e})") from e
      by_step[int(record["step"])] = record
  return [by_step[s] for s in sorted(by_step)]
