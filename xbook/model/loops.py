"""The attention kernels' loops, and a switch that unrolls them for XLA's cost analysis.

XLA's cost analysis counts the body of a loop (a `lax.scan`) once, whatever its trip count, so the
FLOPs it reports for a step with ring or blockwise attention leave out all but one block pair. Under
`fully_unrolled()` the kernels trace their loops unrolled: the program computes the same values and
its cost analysis counts every iteration (a `lax.cond` inside is counted as its costlier branch, i.e.
skipped causal blocks count as computed). Only `xbook compile` uses it, on small probe programs;
training never does (unrolled programs are larger and slower to compile).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterator

import jax

_UNROLLED = contextvars.ContextVar("xbook_unrolled_loops", default=False)


@contextlib.contextmanager
def fully_unrolled() -> Iterator[None]:
  """Within this context, kernels built on `scan` trace their loops fully unrolled."""
  token = _UNROLLED.set(True)
  try:
    yield
  finally:
    _UNROLLED.reset(token)


def scan(body: Callable[..., Any], init: Any, xs: Any = None, length: int | None = None) -> Any:
  """`jax.lax.scan`, fully unrolled under `fully_unrolled()`."""
  return jax.lax.scan(body, init, xs, length=length, unroll=_UNROLLED.get())
