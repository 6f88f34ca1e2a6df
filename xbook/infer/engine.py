"""The inference engine: continuous batching over a fixed set of KV-cache slots, prefix reuse, and
per-row token masks (structured outputs), on one device or a mesh.

The engine owns one KVCache of `slots` rows (xbook.infer.decode's: the same layer code, positions and
segment ids as training) and a queue of waiting requests. Each `step()`:
  1. admits waiting requests to free slots. A request goes to the free slot whose stored tokens share
     the longest prefix with its prompt (prefix reuse: the slot's earlier request, e.g. the previous
     stage of the same book); that prefix stays in the cache and only the rest is prefilled. A slot
     with nothing to share is taken least recently used first;
  2. prefills at most `prefill_chunk` prompt tokens of every row still prefilling (chunked prefill: a
     long prompt takes several steps, and the running rows decode between its chunks);
  3. decodes every running row for up to `sync_every` tokens in one device loop, ending early when a row
     ends, so that its answer and its slot need not wait for the others (one token when a row
     is constrained by a grammar: its next mask depends on the token just drawn), then, on the host,
     matches stop strings, streams settled tokens, advances grammars and ends the rows that are done,
     freeing their slots for the next step.
A request thus joins at the next step and leaves when done; nothing waits for a batch to drain.

Sampling is decode.sample_logits: a row's draw depends on its own seed and token count only, so a request
gets the same tokens alone or beside others, up to the floating-point differences of prefilling in
chunks of other widths (see `tests/test_engine.py`, which measures them).

Structured outputs: a request may carry a `constraint` (xbook.infer.guidance.GrammarConstraint: an
llguidance matcher), which fills the row's allowed-token bitmask on the host before each draw; the
device applies it to the logits. Rows without one are never slowed down by it except that, while any
constrained row runs, segments are one token long.

Threads: `submit` and `cancel` may be called from any thread; `step` from one at a time. `start()` runs
`step` in a background thread until `stop()` (what `xbook serve` and the book writer use);
`generate()` is the blocking convenience for a list of requests.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import itertools
import logging
import threading
import time
from typing import Any, Callable, Protocol, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from xbook.infer import decode as decode_lib
from xbook.infer.decode import (MAX_STOP_TOKENS, Completion, KVCache, PlacedParams, SamplingParams, StopStrings,
                                bucket, decode_config, grow, init_cache, inference_rules, place_params,
                                sample_logits)
from xbook.model import Decoder, DecoderConfig
from xbook.train.partitioning import LogicalRules

log = logging.getLogger(__name__)

# Prefill chunks are powers of two from this many tokens (a short prompt does not pay for 256).
MIN_PREFILL_BUCKET = 32


class Constraint(Protocol):
  """A request's grammar, as the engine drives it (xbook.infer.guidance.GrammarConstraint)."""

  def fill_bitmask(self, row: np.ndarray) -> None:
    """Write the allowed next tokens into row ([words] int32, bit i of word j: token 32 j + i)."""

  def consume(self, token: int) -> None:
    """Advance past a drawn token."""

  def is_stopped(self) -> bool:
    """Whether the grammar is complete and admits no further token."""


@dataclasses.dataclass
class EngineRequest:
  """What one request asks of the engine.

  Attributes:
    prompt: the exact model input (BOS first when the model expects it), at least one token.
    sampling: temperature, filters, seed, max_tokens (required here) and stop strings.
    stop_token_ids: ids that end the request when drawn (not returned); at most MAX_STOP_TOKENS.
    constraint: the request's grammar (None: unconstrained).
    on_tokens: streaming, called on the engine's thread as on_tokens(ids, finish_reason) with newly
      settled ids (those no stop string can take back), finish_reason set on the last call. Returning
      False cancels the request.
  """

  prompt: Sequence[int]
  sampling: SamplingParams
  stop_token_ids: tuple[int, ...] = ()
  constraint: Constraint | None = None
  on_tokens: Callable[[list[int], str | None], bool | None] | None = None


class Handle:
  """A submitted request: wait for its Completion, or cancel it (from any thread)."""

  def __init__(self, request: EngineRequest, request_id: int) -> None:
    self.request, self.id = request, request_id
    self.submitted = time.perf_counter()
    self.first_token_s: float | None = None  # seconds from submit to the first generated token
    self.cancelled = False
    self._done = threading.Event()
    self._completion: Completion | None = None
    self._error: BaseException | None = None

  def cancel(self) -> None:
    self.cancelled = True

  def done(self) -> bool:
    return self._done.is_set()

  def result(self, timeout: float | None = None) -> Completion:
    """The Completion, once the request ended (raises what failed it)."""
    if not self._done.wait(timeout):
      raise TimeoutError(f"request {self.id} not done within {timeout} s")
    if self._error is not None:
      raise self._error
    return self._completion

  def _finish(self, completion: Completion | None, error: BaseException | None = None) -> None:
    self._completion, self._error = completion, error
    self._done.set()


@dataclasses.dataclass
class _Row:
  """A request in a slot."""

  handle: Handle
  todo: list[int]  # prompt tokens still to prefill
  stops: StopStrings
  reused: int  # prompt tokens served from the cache
  generated: list[int] = dataclasses.field(default_factory=list)
  sent: int = 0  # generated ids handed to on_tokens
  decoding: bool = False
  prefill_s: float = 0.0
  decode_started: float = 0.0
  stop_token: int = -1
  ended: str | None = None  # "stop", "length" or "cancelled" once decided on the host


@dataclasses.dataclass
class EngineStats:
  """Counters since the engine started (read with Engine.stats())."""

  requests: int = 0
  finished: int = 0
  cancelled: int = 0
  prompt_tokens: int = 0
  prefilled_tokens: int = 0
  reused_tokens: int = 0
  prefix_hits: int = 0
  generated_tokens: int = 0
  steps: int = 0


# ------------------------------------------------------------------------------------------ device code
def _unpack_bitmask(bitmask: jax.Array, vocab: int) -> jax.Array:
  """[rows, words] int32 -> [rows, vocab] bool (bit i of word j allows token 32 j + i)."""
  ids = jnp.arange(vocab, dtype=jnp.int32)
  words = jnp.take(bitmask, ids >> 5, axis=1)
  return (jnp.right_shift(words, ids & 31) & 1).astype(jnp.bool_)


@functools.partial(jax.jit, static_argnames=("config", "rules", "segment"),
                   donate_argnames=("cache", "logits"))
def _segment(params: PlacedParams, cache: KVCache, logits: jax.Array, counts: jax.Array, done: jax.Array,
             max_tokens: jax.Array, stop_ids: jax.Array, sampling: decode_lib.RowSampling,
             bitmask: jax.Array, vocab_size_limit: jax.Array, max_steps: jax.Array, *,
             config: DecoderConfig, rules: tuple, segment: int):
  """Up to max_steps (<= segment) decode steps of the rows not done: sample (step 0 under `bitmask`),
  record, feed. Stops early when a row ends (the host answers it and frees its slot at once, rather than
  after the other rows' segment), when no row is active, or when an active row has no free slot.

  Returns (cache, logits, counts, done, emitted [rows, segment] (-1 where nothing was drawn),
  stop_token [rows] (the stop id that ended a row in this segment, else -1))."""
  decode_lib._COMPILES["engine_segment"] += 1
  rows = cache.batch
  allowed = _unpack_bitmask(bitmask, logits.shape[-1])

  def go_on(carry):
    cache, _, _, done, _, _, step, ended = carry
    active = ~done
    room = jnp.max(jnp.where(active, cache.lengths, 0)) < cache.max_len
    return jnp.any(active) & room & (step < max_steps) & ~ended

  def body(carry):
    cache, logits, counts, done, emitted, stop_token, step, _ = carry
    masked = jnp.where((step == 0) & ~allowed, -jnp.inf, logits)
    token = sample_logits(masked, sampling, counts, vocab_size_limit)
    active = ~done
    is_stop = jnp.any(token[:, None] == stop_ids, axis=1)
    record = active & ~is_stop
    emitted = emitted.at[:, step].set(jnp.where(record, token, -1))
    counts = counts + record
    finished = active & (is_stop | (counts >= max_tokens))
    feed = (record & ~finished)[:, None]
    cache, layer_cache, positions = cache.admit(feed)
    out, (keys, values) = Decoder(config).apply(
        {"params": params.tree}, token[:, None], feed.astype(jnp.int32), positions, layer_cache,
        logits_index=jnp.zeros_like(token))
    cache = decode_lib._constrain(cache.replace(keys=keys, values=values))
    logits = jnp.where(feed, out[:, 0], logits)
    stop_token = jnp.where(active & is_stop, token, stop_token)
    return cache, logits, counts, done | finished, emitted, stop_token, step + 1, jnp.any(finished)

  emitted = jnp.full((rows, segment), -1, jnp.int32)
  stop_token = jnp.full((rows,), -1, jnp.int32)
  carry = (cache, logits, counts, done, emitted, stop_token, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.bool_))
  with nn.logical_axis_rules(rules):
    cache, logits, counts, done, emitted, stop_token, _, _ = jax.lax.while_loop(go_on, body, carry)
  return cache, logits, counts, done, emitted, stop_token


@functools.partial(jax.jit, static_argnames=("config", "rules"), donate_argnames=("cache", "logits"))
def _prefill_row(params: PlacedParams, cache: KVCache, logits: jax.Array, row: jax.Array, tokens: jax.Array,
                 n_valid: jax.Array, *, config: DecoderConfig, rules: tuple) -> tuple[KVCache, jax.Array]:
  """decode's prefill chunk for the one cache row `row` (a scalar index of a slot): its cache row and logits
  are sliced out, fed tokens [1, chunk] (the first n_valid [1] real), and written back."""
  decode_lib._COMPILES["engine_prefill"] += 1
  take = lambda x: jax.lax.dynamic_slice_in_dim(x, row, 1, axis=0)  # noqa: E731
  put = lambda full, part: jax.lax.dynamic_update_slice_in_dim(full, part, row, axis=0)  # noqa: E731
  sub = jax.tree.map(take, cache)
  sub, sub_logits = decode_lib._prefill_chunk(params, sub, tokens, n_valid, take(logits), config=config,
                                              rules=rules)
  with nn.logical_axis_rules(rules):
    cache = decode_lib._constrain(jax.tree.map(put, cache, sub))
  return cache, put(logits, sub_logits)


@functools.partial(jax.jit, donate_argnames=("cache",))
def _truncate(cache: KVCache, lengths: jax.Array) -> KVCache:
  """Each row keeps its first lengths[row] stored tokens (the rest of its slots become empty)."""
  decode_lib._COMPILES["truncate"] += 1
  keep = jnp.arange(cache.max_len)[None] < lengths[:, None]
  return cache.replace(segment_ids=jnp.where(keep, cache.segment_ids, 0), lengths=lengths)


# ------------------------------------------------------------------------------------------------ engine
class Engine:
  """Continuous batching over `slots` cache rows (see the module docstring).

  Args:
    params: Decoder(config) parameters (numpy/jax, scanned or not) or PlacedParams.
    config: the model.
    slots: rows decoded together (the most requests running at once).
    max_len: the most tokens of a prompt plus its answer (the cache grows to it, by powers of two).
    mesh, rules: shard parameters and cache (decode.place_params / init_cache); rules default
      `inference_rules()`.
    vocab_size_limit: ids at or above it are never drawn (the tokenizer's size).
    decode: ids -> text, for stop strings and Completion.text.
    prefill_chunk: the most prompt tokens per row prefilled in one step.
    sync_every: decode steps per segment (the host looks at the rows between segments).
    prefix_reuse: serve a prompt's longest cached prefix from the slots (False: always prefill all).
    param_dtype, cache_dtype: as in decode.generate.
    max_waiting: the most requests waiting for a slot (submit raises QueueFull beyond it; None: no bound).
  """

  def __init__(self, params: Any, config: DecoderConfig, *, slots: int = 8, max_len: int = 2048,
               mesh: Mesh | None = None, rules: LogicalRules | None = None, vocab_size_limit: int | None = None,
               decode: Callable[[list[int]], str] | None = None, prefill_chunk: int = 512, sync_every: int = 16,
               prefix_reuse: bool = True, param_dtype: Any = None, cache_dtype: Any = None,
               max_waiting: int | None = None) -> None:
    if slots < 1:
      raise ValueError(f"slots={slots} must be >= 1")
    if max_len < 2:
      raise ValueError(f"max_len={max_len} must be >= 2 (a prompt token and an answer token)")
    self.config, self.mesh = config, mesh
    self.rules = tuple(rules or inference_rules())
    self.slots, self.max_len = int(slots), int(max_len)
    self.cache_cap = bucket(self.max_len, minimum=decode_lib.MIN_BUCKET)
    self.vocab_size_limit = int(config.vocab_size if vocab_size_limit is None else vocab_size_limit)
    self.decode, self.prefill_chunk, self.sync_every = decode, int(prefill_chunk), int(sync_every)
    self.prefix_reuse, self.max_waiting = prefix_reuse, max_waiting
    self.words = (config.vocab_size + 31) // 32
    with self._mesh():
      self.params = place_params(params, config, dtype=param_dtype, mesh=mesh, rules=self.rules)
      self.cache = init_cache(config, self.slots, min(decode_lib.MIN_BUCKET, self.cache_cap), cache_dtype,
                              mesh=mesh, rules=self.rules)
      self.logits = jax.device_put(np.zeros((self.slots, config.vocab_size), np.float32), self._replicated())
    self.stored: list[list[int]] = [[] for _ in range(self.slots)]  # tokens each row's cache holds
    self.last_used = [0] * self.slots
    self.rows: list[_Row | None] = [None] * self.slots
    self.counts = np.zeros(self.slots, np.int32)
    self.waiting: collections.deque[Handle] = collections.deque()
    self.stats_ = EngineStats()
    self._ids = itertools.count()
    self._clock = itertools.count(1)
    self._lock = threading.Condition()
    self._thread: threading.Thread | None = None
    self._stopping = False

  # -------------------------------------------------------------------------------------------- public
  def submit(self, request: EngineRequest) -> Handle:
    """Queue a request (any thread); it joins at the next step with a free slot."""
    self._check(request)
    handle = Handle(request, next(self._ids))
    with self._lock:
      if self._stopping:
        raise RuntimeError("the engine is stopping; submit to another")
      if self.max_waiting is not None and len(self.waiting) >= self.max_waiting:
        raise QueueFull(f"{len(self.waiting)} requests are waiting already (the bound is {self.max_waiting})")
      self.waiting.append(handle)
      self.stats_.requests += 1
      self._lock.notify_all()
    return handle

  def generate(self, requests: Sequence[EngineRequest]) -> list[Completion]:
    """Run the requests to their end (stepping here unless the engine thread runs) and return their
    Completions in order."""
    handles = [self.submit(r) for r in requests]
    if self._thread is None:
      while not all(h.done() for h in handles):
        self.step()
    return [h.result() for h in handles]

  def start(self) -> Engine:
    """Step in a background thread until stop()."""
    self._thread = threading.Thread(target=self._loop, name="xbook-engine", daemon=True)
    self._thread.start()
    return self

  def stop(self, timeout_s: float = 30.0) -> None:
    """Cancel the running requests, fail the waiting ones, and end the engine thread."""
    with self._lock:
      self._stopping = True
      for handle in self.waiting:
        handle._finish(None, RuntimeError("the engine stopped before this request ran"))
      self.waiting.clear()
      for row in self.rows:
        if row is not None:
          row.handle.cancel()
      self._lock.notify_all()
    if self._thread is not None:
      self._thread.join(timeout=timeout_s)

  def stats(self) -> dict[str, Any]:
    """Counters, and what runs now: running and waiting requests, KV-cache use (stored tokens of
    running rows over the slots' capacity)."""
    with self._lock:
      running = sum(r is not None for r in self.rows)
      stored = sum(len(self.stored[i]) for i, r in enumerate(self.rows) if r is not None)
      return {**dataclasses.asdict(self.stats_), "running": running, "waiting": len(self.waiting),
              "slots": self.slots, "kv_cache_usage": stored / (self.slots * self.cache_cap),
              "cache_len": self.cache.max_len}

  # ------------------------------------------------------------------------------------------------ step
  def step(self) -> None:
    """Admit, prefill one chunk, decode one segment, settle (see the module docstring)."""
    with self._mesh():
      self._admit()
      if any(r is not None and r.todo for r in self.rows):
        self._prefill()
      if any(r is not None and r.decoding for r in self.rows):
        self._decode()
    self.stats_.steps += 1

  def _loop(self) -> None:
    while True:
      with self._lock:
        while not self._stopping and not self.waiting and all(r is None for r in self.rows):
          self._lock.wait()
        if self._stopping and all(r is None for r in self.rows):
          return
      try:
        self.step()
      except Exception as error:  # noqa: BLE001 - every request in flight fails with it; the loop goes on
        log.exception("an engine step failed; failing the requests it held")
        self._fail_all(error)

  # ------------------------------------------------------------------------------------------ admission
  def _check(self, request: EngineRequest) -> None:
    if not len(request.prompt):
      raise ValueError("every prompt needs at least one token (the model's BOS, if nothing else)")
    if request.sampling.max_tokens is None:
      raise ValueError("EngineRequest.sampling.max_tokens must be set")
    if len(request.prompt) + request.sampling.max_tokens > self.max_len:
      raise ValueError(f"a prompt of {len(request.prompt)} tokens plus max_tokens={request.sampling.max_tokens} "
                       f"does not fit the engine's max_len={self.max_len}")
    if len(set(request.stop_token_ids)) > MAX_STOP_TOKENS:
      raise ValueError(f"{len(set(request.stop_token_ids))} stop_token_ids; at most {MAX_STOP_TOKENS}")

  def _pick_slot(self, prompt: Sequence[int], free: list[int]) -> tuple[int, int]:
    """(slot, reusable prefix length): the free slot sharing the longest prefix, else the least recently
    used. At least one prompt token is always prefilled (its logits start the answer)."""
    def shared(slot: int) -> int:
      if not self.prefix_reuse:
        return 0
      stored, n = self.stored[slot], min(len(self.stored[slot]), len(prompt) - 1)
      same = np.flatnonzero(np.asarray(stored[:n]) != np.asarray(prompt[:n]))
      return int(same[0]) if same.size else n
    best = max(free, key=lambda s: (shared(s), -self.last_used[s]))
    return best, shared(best)

  def _admit(self) -> None:
    truncate = False
    with self._lock:
      self._drop_cancelled_waiting()
      free = [i for i, r in enumerate(self.rows) if r is None]
      while free and self.waiting:
        handle = self.waiting.popleft()
        slot, reused = self._pick_slot(handle.request.prompt, free)
        free.remove(slot)
        prompt = list(handle.request.prompt)
        stops = StopStrings([tuple(handle.request.sampling.stop)], self.decode)
        self.rows[slot] = _Row(handle=handle, todo=prompt[reused:], stops=stops, reused=reused)
        truncate |= len(self.stored[slot]) != reused
        self.stored[slot] = prompt[:reused]
        self.counts[slot] = 0
        self.stats_.prompt_tokens += len(prompt)
        self.stats_.reused_tokens += reused
        self.stats_.prefix_hits += reused > 0
    if truncate:
      lengths = np.asarray([len(s) for s in self.stored], np.int32)
      self.cache = _truncate(self.cache, jax.device_put(lengths, self._replicated()))

  def _drop_cancelled_waiting(self) -> None:
    for handle in [h for h in self.waiting if h.cancelled]:
      self.waiting.remove(handle)
      self.stats_.cancelled += 1
      handle._finish(Completion([], "cancelled", None, "" if self.decode else None,
                                len(handle.request.prompt), 0.0, 0.0))

  # -------------------------------------------------------------------------------------------- prefill
  def _prefill(self) -> None:
    started = time.perf_counter()
    chunks = [r.todo[:self.prefill_chunk] if r is not None else [] for r in self.rows]
    need = max(len(self.stored[i]) + len(c) for i, c in enumerate(chunks))
    self._room_for(need)
    width = bucket(max(map(len, chunks)), cap=self.prefill_chunk, minimum=min(MIN_PREFILL_BUCKET, self.prefill_chunk))
    # Only the rows that prefill are computed, one at a time (one row sliced out of the cache and written
    # back): the programs are one per chunk width and cache length, whatever the mix of requests.
    for i, chunk in enumerate(chunks):
      if not chunk:
        continue
      tokens = np.zeros((1, width), np.int32)
      tokens[0, :len(chunk)] = chunk
      if self.slots == 1:  # the whole cache is the row: no gather (which would copy a row of a long context)
        self.cache, self.logits = decode_lib._prefill_chunk(
            self.params, self.cache, self._put(tokens), self._put(np.asarray([len(chunk)], np.int32)), self.logits,
            config=decode_config(self.config), rules=self.rules)
        continue
      self.cache, self.logits = _prefill_row(
          self.params, self.cache, self.logits, self._put(np.asarray(i, np.int32)), self._put(tokens),
          self._put(np.asarray([len(chunk)], np.int32)), config=decode_config(self.config), rules=self.rules)
    jax.block_until_ready(self.logits)
    elapsed = time.perf_counter() - started
    for i, chunk in enumerate(chunks):
      row = self.rows[i]
      if row is None or not chunk:
        continue
      self.stored[i] += chunk
      row.todo = row.todo[len(chunk):]
      row.prefill_s += elapsed
      self.stats_.prefilled_tokens += len(chunk)
      if not row.todo:
        row.decoding, row.decode_started = True, time.perf_counter()

  def _room_for(self, need: int) -> None:
    if need > self.cache.max_len:
      self.cache = grow(self.cache, bucket(need, cap=self.cache_cap, minimum=self.cache.max_len), self.rules)

  # --------------------------------------------------------------------------------------------- decode
  def _decode(self) -> None:
    decoding = [i for i, r in enumerate(self.rows) if r is not None and r.decoding and r.ended is None]
    if not decoding:
      return
    self._room_for(max(len(self.stored[i]) for i in decoding) + 1)
    constrained = [i for i in decoding if self.rows[i].handle.request.constraint is not None]
    steps = 1 if constrained else self.sync_every
    done, max_tokens, stop_ids, sampling = self._row_settings(tuple(decoding))
    if constrained:
      bitmask = np.full((self.slots, self.words), -1, np.int32)
      for i in constrained:
        self.rows[i].handle.request.constraint.fill_bitmask(bitmask[i])
      bitmask = self._put(bitmask)
    else:
      bitmask = self._all_allowed()
    (self.cache, self.logits, counts, done_after, emitted, stop_token) = _segment(
        self.params, self.cache, self.logits, self._put(self.counts), done, max_tokens, stop_ids, sampling, bitmask,
        np.int32(self.vocab_size_limit), np.int32(steps), config=decode_config(self.config), rules=self.rules,
        segment=self.sync_every)
    counts, done_after, emitted, stop_token, lengths = (
        np.asarray(x) for x in (counts, done_after, emitted, stop_token, self.cache.lengths))
    self.counts = counts.astype(np.int32)
    for i in decoding:
      self._settle(i, emitted[i][emitted[i] >= 0].tolist(), bool(done_after[i]), int(stop_token[i]), int(lengths[i]))

  def _row_settings(self, decoding: tuple[int, ...]) -> tuple[jax.Array, ...]:
    """(done, max_tokens, stop ids, RowSampling) of the decoding rows on the device; kept while the same
    requests decode (placing them anew at every segment was a good part of a small model's step)."""
    key = tuple((i, self.rows[i].handle.id) for i in decoding)  # request ids are never reused (id() is)
    if getattr(self, "_settings_key", None) != key:
      done = np.ones(self.slots, bool)
      max_tokens = np.ones(self.slots, np.int32)
      stop_ids = np.full((self.slots, MAX_STOP_TOKENS), -1, np.int32)
      sampling = [decode_lib.GREEDY] * self.slots
      for i in decoding:
        request = self.rows[i].handle.request
        done[i], max_tokens[i], sampling[i] = False, request.sampling.max_tokens, request.sampling
        ids = sorted(set(request.stop_token_ids))
        stop_ids[i, :len(ids)] = ids
      self._settings_key = key
      self._settings = (self._put(done), self._put(max_tokens), self._put(stop_ids),
                        decode_lib.RowSampling.of(sampling, self.mesh))
    return self._settings

  def _all_allowed(self) -> jax.Array:
    if getattr(self, "_allowed", None) is None:
      self._allowed = self._put(np.full((self.slots, self.words), -1, np.int32))
    return self._allowed

  def _settle(self, slot: int, new: list[int], done: bool, stop_token: int, length: int) -> None:
    """After a segment: record a row's new tokens, advance its grammar, match stop strings, stream, and
    end it when done."""
    row = self.rows[slot]
    request, handle = row.handle.request, row.handle
    if new and handle.first_token_s is None:
      handle.first_token_s = time.perf_counter() - handle.submitted
    row.generated += new
    self.stats_.generated_tokens += len(new)
    self.stored[slot] = (self.stored[slot] + new)[:length]
    if request.constraint is not None:
      for token in new:
        request.constraint.consume(token)
      if request.constraint.is_stopped() and not done:
        done, row.ended = True, "stop"
    if stop_token >= 0:
      row.stop_token = stop_token
    if row.stops.check(0, row.generated):  # recorded even when the row ended otherwise: its text is cut there
      done = True
    if not done and handle.cancelled:
      done, row.ended = True, "cancelled"
    self._stream(row, done)
    if done:
      self._end(slot)

  def _stream(self, row: _Row, done: bool) -> None:
    on_tokens = row.handle.request.on_tokens
    if on_tokens is None:
      return
    if done:
      ids = row.stops.cut(0, row.generated)[0]
      settled, reason = len(ids), self._reason(row)[0]
    else:
      ids, reason = row.generated, None
      settled = row.stops.settled(0, ids)
    if settled > row.sent or done:
      if on_tokens(ids[row.sent:settled], reason) is False and not done:
        row.handle.cancel()
    row.sent = max(row.sent, settled)

  def _reason(self, row: _Row) -> tuple[str, int | str | None]:
    if row.ended == "cancelled":
      return "cancelled", None
    _, _, stop_string = row.stops.cut(0, row.generated)
    if stop_string is not None:
      return "stop", stop_string
    if row.stop_token >= 0:
      return "stop", row.stop_token
    if row.ended == "stop":  # the grammar is complete
      return "stop", None
    return "length", None

  def _end(self, slot: int) -> None:
    row = self.rows[slot]
    ids, text, _ = row.stops.cut(0, row.generated)
    reason, stop_reason = self._reason(row)
    completion = Completion(token_ids=ids, finish_reason=reason, stop_reason=stop_reason, text=text,
                            prompt_tokens=len(row.handle.request.prompt), prefill_s=row.prefill_s,
                            decode_s=time.perf_counter() - row.decode_started, cached_tokens=row.reused)
    with self._lock:
      self.rows[slot] = None
      self.last_used[slot] = next(self._clock)
      self.stats_.finished += 1
      self.stats_.cancelled += reason == "cancelled"
    row.handle._finish(completion)

  def _fail_all(self, error: BaseException) -> None:
    with self._lock:
      for slot, row in enumerate(self.rows):
        if row is not None:
          row.handle._finish(None, error)
          self.rows[slot] = None
          self.stored[slot] = []
      self.cache = _truncate(self.cache, self._put(np.zeros(self.slots, np.int32)))

  # ------------------------------------------------------------------------------------------ placement
  def _mesh(self):
    return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

  def _replicated(self) -> jax.sharding.Sharding:
    return decode_lib.default_placement(self.mesh)

  def _put(self, array: np.ndarray) -> jax.Array:
    return jax.device_put(array, self._replicated())


class QueueFull(RuntimeError):
  """Engine.submit: the waiting queue is at its bound (xbook serve answers 503 with Retry-After)."""
