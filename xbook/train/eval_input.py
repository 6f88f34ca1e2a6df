"""The validation windows of a run: read once per host, replayed at every evaluation, and the number of
eval steps that every host agrees to run.

Each host reads its own share of the validation books (the `validation` split of
xbook.train.input_pipeline.trajectory_batches, one finite pass in book order), so hosts hold different
numbers of batches (a host without validation books holds none), and the last batch of a host is short.
The eval step is a collective over all hosts' rows, so every host must run it the same number of times:

* the count is agreed once, at the first evaluation, as the largest of the hosts' batch counts (a
  blocking all-gather of one integer, xbook.train.distributed.max_over_hosts);
* `Trainer.evaluate(params, batches, num_batches=count)` pads a short batch with all-padding rows and,
  once a host's batches run out, feeds all-padding batches (segment id 0, loss weight 0): they add
  nothing to any sum, so every validation window is counted once, on the host that read it, and the
  sums equal those of one process evaluating the same windows.

The pipeline is built and read once: its batches are kept in host memory (up to `cache_bytes`) and
replayed at every later evaluation. A larger validation set is read again at each evaluation (its first
evaluation reads it twice: once to count, once to evaluate).
"""

from __future__ import annotations

import functools
import itertools
import logging
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from xbook.data.spec import DataSpec
from xbook.train import distributed
from xbook.train.input_pipeline import trajectory_batches

log = logging.getLogger(__name__)

Batch = Mapping[str, np.ndarray]

DEFAULT_CACHE_BYTES = 1 << 30


class ValidationSet:
  """This host's validation batches and the number of eval steps all hosts run.

  Args:
    read: a fresh finite pass of this host's batches ([batch_size / hosts, seq_len] per feature).
    max_batches: at most this many batches per host and evaluation (None: all).
    cache_bytes: keep the batches in host memory up to this size.
  """

  def __init__(self, read: Callable[[], Iterable[Batch]], *, max_batches: int | None = None,
               cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
    self._read = read
    self.max_batches = max_batches
    self.cache_bytes = cache_bytes
    self._cached: list[Batch] | None = None
    self.local_batches: int | None = None  # this host's batches per evaluation, once read
    self.steps: int | None = None  # eval steps of every host per evaluation, once agreed

  @classmethod
  def of_spec(cls, spec: DataSpec, *, global_batch_size: int, sequence_shards: int, length_layout: str, seed: int,
              max_batches: int | None) -> "ValidationSet":
    """The `validation` split of `spec`, in book order, each example once."""
    return cls(functools.partial(trajectory_batches, spec, split="validation",
                                 global_batch_size=global_batch_size, sequence_shards=sequence_shards,
                                 length_layout=length_layout, seed=seed, repeat=False, shuffle=False),
               max_batches=max_batches)

  def batches(self) -> Iterator[Batch]:
    """This host's batches for one evaluation. The first call reads the set and agrees on `steps`
    with the other hosts: every host must make it at the same point (all evaluate at the same steps)."""
    if self.steps is None:
      self._first_pass()
    if self._cached is not None:
      return iter(self._cached)
    return itertools.islice(iter(self._read()), self.max_batches)

  def _first_pass(self) -> None:
    cached: list[Batch] | None = []
    count = size = 0
    for batch in itertools.islice(iter(self._read()), self.max_batches):
      count += 1
      size += sum(value.nbytes for value in batch.values())
      if cached is not None and size > self.cache_bytes:
        log.info("validation set over %d bytes: read again at every evaluation", self.cache_bytes)
        cached = None
      if cached is not None:
        cached.append(batch)
    self._cached, self.local_batches = cached, count
    self.steps = distributed.max_over_hosts(count)
    log.info("validation: %d eval steps per evaluation on every host; %d batches of this host's books",
             self.steps, count)
