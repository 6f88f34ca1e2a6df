"""Joining a multi-host job: `jax.distributed.initialize` from flags or the environment.

On a TPU pod slice every worker runs the same command and JAX finds its peers by itself
(`auto=True`). Elsewhere (several local processes, CPU or GPU hosts) each process is given the
coordinator's address, the number of processes and its own id, by flags or by the environment
variables XBOOK_COORDINATOR_ADDRESS, XBOOK_NUM_PROCESSES and XBOOK_PROCESS_ID.

`max_over_hosts` is the one blocking agreement between hosts outside the compiled steps (the number of
eval steps, xbook.train.eval_input); the per-step stop vote rides on the device stream instead
(xbook.train.preemption).
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False) -> None:
  """Join the job if one is configured; a single-process run needs none of the arguments.

  Must run before anything touches a JAX device.

  Raises:
    ValueError: some but not all of the explicit settings are given.
  """
  coordinator_address = coordinator_address or os.environ.get("XBOOK_COORDINATOR_ADDRESS")
  if num_processes is None and "XBOOK_NUM_PROCESSES" in os.environ:
    num_processes = int(os.environ["XBOOK_NUM_PROCESSES"])
  if process_id is None and "XBOOK_PROCESS_ID" in os.environ:
    process_id = int(os.environ["XBOOK_PROCESS_ID"])
  explicit = (coordinator_address, num_processes, process_id)
  if auto:
    jax.distributed.initialize()
  elif all(x is not None for x in explicit):
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif any(x is not None for x in explicit):
    raise ValueError("a multi-process run needs all of the coordinator address, the number of "
                     f"processes and the process id; got {explicit}")
  else:
    return
  log.info("process %d of %d joined the job: %d local of %d devices", jax.process_index(),
           jax.process_count(), jax.local_device_count(), jax.device_count())


def max_over_hosts(value: int) -> int:
  """The largest of every host's `value` (a blocking collective: every host must call it at the same
  point of the program); `value` itself on a single process."""
  if jax.process_count() == 1:
    return int(value)
  return int(np.max(multihost_utils.process_allgather(np.int32(value))))
