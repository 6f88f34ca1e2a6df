"""Preemption: a SIGTERM on any host makes every host save the same step and stop cleanly.

A pod's scheduler sends SIGTERM to its hosts at different moments (and sometimes to one host only).
If each host stopped at its own step, the collective checkpoint save, or the next train step of the
hosts that did not stop, would hang. So a host never acts on its own notice: it votes.

`PreemptionGuard.vote()` is dispatched right after every train step. It is a tiny jitted all-reduce
(max) of the hosts' local "SIGTERM seen" flags over the devices of the training mesh, dispatched
asynchronously like the step itself; the loop reads its result together with the step's metrics, one
step later (xbook.train.trainer.TrainLoop). Every host reads the same reduced value for the same step,
so every host decides to stop after the same step, saves it, and exits 0. On one process the vote is
the local flag itself: no device work, no collective.

This is the protocol of JAX's preemption sync point (`multihost_utils.reached_preemption_sync_point`,
which Orbax's `CheckpointManager.reached_preemption(step)` wraps and MaxText checks every step before
saving and exiting): hosts agree over the coordination service to save at one step after the largest
step any host had reached when the notice arrived. It is not used here because it exists only after
`jax.distributed.initialize` (a single process has none), and it learns of SIGTERM through a C++ signal
handler that the Python handler this guard needs on a single host replaces. The all-reduce rides on the
device stream, so it costs no host round-trip: the host only waits for it when it already waits for the
step's metrics.
"""

from __future__ import annotations

import logging
import signal
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)


class StopVote:
  """The hosts' vote on stopping, dispatched after one step; `agreed()` reads it (blocking)."""

  def __init__(self, result: Any) -> None:
    self._result = result

  def agreed(self) -> bool:
    """Whether any host had seen SIGTERM when it dispatched this vote (the same answer on every host)."""
    return bool(jax.device_get(self._result))


class PreemptionGuard:
  """While active, SIGTERM sets `requested` (this host's flag) instead of killing the process.

  Use as a context manager around the whole session (setup included: on a multi-host job
  `jax.distributed.initialize` installs a C++ SIGTERM handler that would swallow a notice arriving
  before this one is installed); the previous handler is restored on exit.

  Args:
    mesh: the training mesh, whose devices carry the vote (None, or a single process: no collective).
  """

  def __init__(self, mesh: Mesh | None = None) -> None:
    self.requested = False
    self._previous = None
    self._vote = None
    if mesh is not None and jax.process_count() > 1:
      self._sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
      self._size = mesh.devices.size
      self._vote = jax.jit(jnp.max, out_shardings=NamedSharding(mesh, PartitionSpec()))

  def vote(self) -> StopVote:
    """Start the hosts' vote on this host's flag as it is now; every host must call this in the same
    order relative to the other collectives (after each train step)."""
    if self._vote is None:
      return StopVote(self.requested)
    flag = np.int32(self.requested)
    flags = jax.make_array_from_callback((self._size,), self._sharding,
                                         lambda index: np.full((1,), flag, np.int32))
    return StopVote(self._vote(flags))

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    log.warning("received %s: all hosts will save a checkpoint at an agreed step, then stop",
                signal.Signals(signum).name)
    self.requested = True

  def __enter__(self) -> "PreemptionGuard":
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc_info: object) -> None:
    signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
