"""A JAX profiler trace of a chosen range of training steps (open it with TensorBoard or Perfetto)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import jax

log = logging.getLogger(__name__)


class StepProfiler:
  """Traces steps first..last (1-based, inclusive) into `directory`; does nothing without a range."""

  def __init__(self, directory: Path, steps: Sequence[int] | None) -> None:
    self.directory = directory
    self.first, self.last = (int(steps[0]), int(steps[1])) if steps else (0, -1)
    if steps and not 1 <= self.first <= self.last:
      raise ValueError(f"profile_steps must be (first, last) with 1 <= first <= last, got {tuple(steps)}")
    self._active = False

  def before(self, step: int) -> None:
    if step == self.first and jax.process_index() == 0:
      jax.profiler.start_trace(str(self.directory))
      self._active = True
      log.info("profiling steps %d-%d into %s", self.first, self.last, self.directory)

  def after(self, step: int) -> None:
    if step == self.last:
      self.stop()

  def stop(self) -> None:
    if self._active:
      jax.profiler.stop_trace()
      self._active = False
