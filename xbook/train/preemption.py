"""Preemption: a SIGTERM asks the training loop to save a checkpoint and stop cleanly."""

from __future__ import annotations

import logging
import signal
import types

log = logging.getLogger(__name__)


class PreemptionGuard:
  """While active, SIGTERM sets `requested` instead of killing the process; the loop checks it.

  Use as a context manager around the training loop; the previous handler is restored on exit.
  """

  def __init__(self) -> None:
    self.requested = False
    self._previous = None

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    log.warning("received %s: saving a checkpoint after the current step, then stopping",
                signal.Signals(signum).name)
    self.requested = True

  def __enter__(self) -> "PreemptionGuard":
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc_info: object) -> None:
    signal.signal(signal.SIGTERM, self._previous)
