"""`xbook serve`'s `/metrics`: Prometheus text format (prometheus_client), in the manner of vLLM's.

Gauges read at scrape time from the batcher's `stats()`: requests running and waiting, KV-cache use,
and tokens per second over the last `RATE_WINDOW_S`. Counters: requests, prompt, prefilled, prefix-reused
and generated tokens, prefix-cache hits, rejected requests (queue full). Histograms: time to first token
and end-to-end request latency, in seconds. Names start with `xbook_`.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

RATE_WINDOW_S = 10.0
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServeMetrics:
  """The metrics of one server (its own registry, so that several servers in a process do not clash).

  Args:
    stats: the batcher's stats() (read at every scrape).
  """

  def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
    self.registry = CollectorRegistry()
    self.stats = stats
    self.time_to_first_token = Histogram(
        "xbook_time_to_first_token_seconds", "Seconds from a request's arrival to its first generated token",
        buckets=LATENCY_BUCKETS, registry=self.registry)
    self.request_latency = Histogram(
        "xbook_request_latency_seconds", "Seconds from a request's arrival to its answer",
        buckets=LATENCY_BUCKETS, registry=self.registry)
    self.rejected = Counter("xbook_requests_rejected", "Requests answered 503 because the queue was full",
                            registry=self.registry)
    self._recent: collections.deque[tuple[float, int]] = collections.deque()
    self._lock = threading.Lock()
    self.registry.register(_StatsCollector(self))

  def record(self, completion: Any, first_token_s: float | None, latency_s: float) -> None:
    """A finished request: its latency, time to first token and generated tokens."""
    if first_token_s is not None:
      self.time_to_first_token.observe(first_token_s)
    self.request_latency.observe(latency_s)
    with self._lock:
      self._recent.append((time.monotonic(), len(completion.token_ids)))

  def tokens_per_second(self) -> float:
    """Generated tokens per second of the requests that finished in the last RATE_WINDOW_S."""
    now = time.monotonic()
    with self._lock:
      while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
        self._recent.popleft()
      return sum(n for _, n in self._recent) / RATE_WINDOW_S

  def exposition(self) -> bytes:
    return generate_latest(self.registry)


class _StatsCollector:
  """Gauges and counters read from the batcher's stats() at scrape time."""

  GAUGES = (("running", "xbook_requests_running", "Requests decoding or prefilling now"),
            ("waiting", "xbook_requests_waiting", "Requests waiting for a slot"),
            ("kv_cache_usage", "xbook_kv_cache_usage_ratio", "Tokens held by running requests over the "
             "KV cache's capacity (0-1)"))
  COUNTERS = (("requests", "xbook_requests", "Requests received"),
              ("cancelled", "xbook_requests_cancelled", "Requests cancelled (their client left)"),
              ("prompt_tokens", "xbook_prompt_tokens", "Prompt tokens of the requests admitted"),
              ("prefilled_tokens", "xbook_prefill_tokens", "Prompt tokens prefilled (not served from the cache)"),
              ("reused_tokens", "xbook_prefix_cache_reused_tokens", "Prompt tokens served from the prefix cache"),
              ("prefix_hits", "xbook_prefix_cache_hits", "Requests that reused a cached prefix"),
              ("generated_tokens", "xbook_generation_tokens", "Tokens generated"))

  def __init__(self, metrics: ServeMetrics) -> None:
    self.metrics = metrics

  def collect(self):
    stats = self.metrics.stats()
    for key, name, help_text in self.GAUGES:
      if key in stats:
        yield GaugeMetricFamily(name, help_text, value=float(stats[key]))
    for key, name, help_text in self.COUNTERS:
      if key in stats:
        yield CounterMetricFamily(name, help_text, value=float(stats[key]))
    yield GaugeMetricFamily("xbook_generation_tokens_per_second",
                            f"Generated tokens per second over the last {RATE_WINDOW_S:.0f} s",
                            value=self.metrics.tokens_per_second())
