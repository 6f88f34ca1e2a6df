"""Per-step metrics of a run: `metrics.jsonl` in the run directory and TensorBoard events.

The run directory may be local or in an object store (gs://). Objects cannot be appended to, so there
`metrics.jsonl` is rewritten whole (atomically) at each write, keeping the records of earlier sessions.

A resumed run replays the steps after its checkpoint: when the session starts, their earlier records are
dropped from `metrics.jsonl` and from the TensorBoard event files (rewritten without them; TensorBoard's
own purge on a SessionLog START event does not reach TF2's tensor summaries), so every step appears once.
"""

from __future__ import annotations

import json
import os
from typing import Mapping

import jax
from etils import epath

from xbook.atomic import atomic_open, is_url


class MetricsWriter:
  """Appends one JSON line per step and mirrors scalars to TensorBoard. Only process 0 writes.

  Args:
    run_dir: the run directory.
    resume_step: the step this session starts from; records of later steps (replayed now) are dropped.
  """

  def __init__(self, run_dir: str | os.PathLike[str], resume_step: int = 0) -> None:
    self.enabled = jax.process_index() == 0
    self.path = epath.Path(run_dir) / "metrics.jsonl"
    if not self.enabled:
      return
    import tensorflow as tf  # TensorBoard event files; imported lazily so readers need no TF.
    self._tf = tf
    logdir = str(self.path.parent / "tensorboard")
    lines = self._kept_lines(resume_step)
    if resume_step and tf.io.gfile.exists(logdir):
      _drop_tensorboard_after(logdir, resume_step)
    self._summary = tf.summary.create_file_writer(logdir)
    if is_url(self.path):
      self._lines = lines
      self._file = None
    else:
      self._file = open(self.path, "a", encoding="utf-8")

  def _kept_lines(self, resume_step: int) -> list[str]:
    """The lines of metrics.jsonl up to `resume_step`; the file is rewritten without the later ones."""
    if not self.path.exists():
      return []
    lines = self.path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.strip() or json.loads(line)["step"] <= resume_step]
    if len(kept) != len(lines):
      with atomic_open(self.path) as f:
        f.write("".join(kept))
    return kept

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


def _drop_tensorboard_after(logdir: str, step: int) -> None:
  """Rewrite the event files of `logdir` without the summaries of steps after `step` (atomically)."""
  import tensorflow as tf  # noqa: PLC0415
  from tensorboard.compat.proto import event_pb2  # noqa: PLC0415 - TensorBoard comes with TF
  for path in tf.io.gfile.glob(f"{logdir}/events.out.tfevents.*"):
    records = [bytes(r) for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]
    kept = [r for r in records if not _replayed(event_pb2.Event.FromString(r), step)]
    if len(kept) == len(records):
      continue
    with tf.io.TFRecordWriter(f"{path}.tmp") as writer:
      for record in kept:
        writer.write(record)
    tf.io.gfile.rename(f"{path}.tmp", path, overwrite=True)


def _replayed(event, step: int) -> bool:
  return event.HasField("summary") and event.step > step


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
