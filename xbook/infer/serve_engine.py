"""`xbook serve`'s continuous batcher: its requests run on xbook.infer.engine.Engine in a background thread.

A request joins the running rows at the engine's next step and leaves when done (see the engine's
docstring); the slots are `--max_batch`. Requests beyond the slots wait in a queue bounded by
`--max_waiting`: a request that finds it full is answered 503 with `Retry-After`. A request whose
client left (`Job.cancelled`) is cancelled in the engine, freeing its slot at the next step.

The interface is the static batcher's (xbook.infer.serve.Batcher): `submit(job)`, `stop()`, `stats()`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from xbook.infer.engine import Engine, EngineRequest, QueueFull
from xbook.infer.serve_metrics import ServeMetrics

log = logging.getLogger(__name__)

# Seconds a client is told to wait (Retry-After) when the queue is full.
RETRY_AFTER_S = 1


class Overloaded(RuntimeError):
  """The waiting queue is full (answered 503 with Retry-After)."""

  status = 503
  param = None
  retry_after = RETRY_AFTER_S


class ContinuousBatcher:
  """Runs the server's requests on an Engine (see the module docstring).

  Args:
    model: the ServedModel (its engine options are `engine`'s arguments).
    engine: the Engine over the model's placed parameters.
    metrics: where request figures are recorded (/metrics).
  """

  def __init__(self, model: Any, engine: Engine, metrics: ServeMetrics) -> None:
    self.model, self.engine, self.metrics = model, engine, metrics
    self.max_running_seen = 0
    self._lock = threading.Lock()
    engine.start()

  def submit(self, job: Any) -> None:
    request, decode = job.request, self.model.vocabulary.decode
    started = time.perf_counter()

    def on_tokens(ids: list[int], reason: str | None) -> bool:
      with self._lock:
        self.max_running_seen = max(self.max_running_seen, self.engine.stats()["running"])
      return job.settled(ids, decode)

    constraint = None
    if request.grammar is not None:  # closed within max_tokens (xbook.infer.structured's docstring)
      constraint = self.model.grammars.constraint(request.grammar, budget=request.sampling.max_tokens,
                                                   closers=request.sampling.stop)
    engine_request = EngineRequest(prompt=request.ids, sampling=request.sampling,
                                   stop_token_ids=request.stop_token_ids, constraint=constraint,
                                   on_tokens=on_tokens)
    try:
      handle = self.engine.submit(engine_request)
    except QueueFull as error:
      self.metrics.rejected.inc()
      raise Overloaded(f"the server is at capacity ({error}); retry in {RETRY_AFTER_S} s") from error
    job.handle = handle
    threading.Thread(target=self._answer, args=(job, handle, started), daemon=True,
                     name=f"xbook-answer-{handle.id}").start()

  def _answer(self, job: Any, handle: Any, started: float) -> None:
    try:
      completion = handle.result()
    except BaseException as error:  # noqa: BLE001 - answered as a 500
      job.post("error", error)
      return
    self.metrics.record(completion, handle.first_token_s, time.perf_counter() - started)
    job.post("done", completion)

  def stop(self, timeout_s: float = 10.0) -> None:
    self.engine.stop(timeout_s)

  def stats(self) -> dict[str, Any]:
    stats = self.engine.stats()
    return {**stats, "batching": "continuous", "max_batch_seen": self.max_running_seen}
