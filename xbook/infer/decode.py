"""KV-cache decoding: prefill in length buckets, then one token per step in a loop on the device.

The cache (`KVCache`) holds, for a batch of rows of different lengths, every layer's keys and values and
each stored token's position and segment id, so that the decoder's one attention mask
(xbook.model.attention_mask) decides what a new token sees, as in training. The model runs with the
same parameters and the same layer code as training (`Decoder.__call__` with a LayerCache); attention
against the cache is dense (the queries are few: one per row per step, or one prefill chunk), whatever
kernel `config.attention` names for training.

A `generate` call:
  1. places the parameters (dtype as configured; sharded over `mesh` by the logical axis rules when
     given one; layers unstacked, see `decode_config`) and an empty cache as long as the longest
     prompt, rounded up to a bucket (a power of two from `min_bucket`);
  2. prefills the prompts in chunks of at most `prefill_chunk` tokens, each padded to a bucket and
     written at each row's own offset;
  3. decodes in segments, each one `jax.lax.while_loop` on the device that samples a token per active
     row and feeds it, until every row is done (a stop token or its `max_tokens`), or `sync_every`
     steps passed while the host watches the rows (stop strings, streaming), or a row reaches the end
     of the cache. Between segments the host checks stop strings on the decoded text, hands the
     settled tokens to `on_tokens` (streaming; it may cancel a request) and doubles the cache when
     it is full (up to `cache_len`).
A decode step attends to the whole cache, so its cost follows the context (to a power of two), not the
longest the request may grow; and no array is sliced on the way to a matrix product (on XLA:CPU a slice
feeding a dot is a copy: it made a step at 4k context 4x slower). Compiles are bounded by the buckets
(batch, cache length, prefill chunk); `compile_counts()` counts them.

Token ids in and out: a prompt is the exact model input (the caller puts the vocabulary's BOS first when
its training did), and `Completion.token_ids` are the generated ids without a matched stop token or stop
string. Only stop strings need text, through the caller's `decode(ids) -> str`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import time
from typing import Any, Callable, Iterable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from xbook.model import Decoder, DecoderConfig, param_shapes
from xbook.model.layers import LayerCache
from xbook.train.partitioning import DEFAULT_RULES, LogicalRules, logical_shardings

# Prefill chunks and cache lengths are powers of two from this size.
MIN_BUCKET = 256
# Logical axes of one layer's cached keys and values (xbook.model.layers.LayerCache's layouts);
# inference_rules leaves `cache_batch` and `cache_length` unsharded.
KEY_AXES = ("cache_batch", "kv_heads", "head_dim", "cache_length")
VALUE_AXES = ("cache_batch", "kv_heads", "cache_length", "head_dim")
# At most this many stop token ids per generate call (padded with -1: one compile for any number).
MAX_STOP_TOKENS = 16

_COMPILES: collections.Counter[str] = collections.Counter()


def compile_counts() -> dict[str, int]:
  """How many times each jitted decode function was traced (= compiled) in this process."""
  return {name: _COMPILES[name] for name in ("prefill", "decode", "grow", "sample", "engine_segment", "engine_prefill",
                                                    "truncate")}


def bucket(n: int, cap: int | None = None, minimum: int = MIN_BUCKET) -> int:
  """The smallest power of two >= max(n, minimum), at most `cap`."""
  size = 1 << max(int(n) - 1, int(minimum) - 1, 0).bit_length()
  return size if cap is None else min(size, cap)


def inference_rules(rules: LogicalRules = DEFAULT_RULES, *,
                    shard_cache_length: bool = False) -> tuple[tuple[str, Any], ...]:
  """Training's logical axis rules for decoding: parameters sharded as in training (fsdp on `embed`,
  tensor on heads, MLP and vocab) and the cache's kv heads as the parameters'; activations not sharded
  on batch or length (decode batches are small; rows are replicated over `data`); the cache's length
  over the `sequence` axis when `shard_cache_length` (a cache too long for the chips that hold its kv
  heads: attention's scores and softmax then reduce over the `sequence` axis), else not sharded."""
  replaced = {"activation_batch": None, "activation_length": None, "cache_batch": None,
              "cache_length": "sequence" if shard_cache_length else None}
  return tuple((name, axes) for name, axes in rules if name not in replaced) + tuple(replaced.items())


# ------------------------------------------------------------------------------------------------ params
def default_placement(mesh: Mesh | None = None) -> jax.sharding.Sharding:
  """Where unsharded decode arrays live: replicated over `mesh`, else on the first device. Every array
  is placed explicitly (committed), so that repeated calls hit the same compiled program."""
  if mesh is None:
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return NamedSharding(mesh, PartitionSpec())


def decode_config(config: DecoderConfig) -> DecoderConfig:
  """The config decoding runs: the same model with its layers unrolled (each layer's parameters and
  cache its own arrays, which XLA reads in place; a scanned stack would slice, i.e. copy, every
  layer's weights at every step), no remat, and the training attention kernel's settings reset (the
  cache path is always dense), so that models differing only in those share compiled programs."""
  return dataclasses.replace(config, scan_layers=False, remat="none", attention="dense",
                             attention_block=DecoderConfig.attention_block)


def unstack_layers(params: dict[str, Any], config: DecoderConfig) -> dict[str, Any]:
  """Parameters of a scanned Decoder(config) (`layers`, stacked) as the unrolled model's (`layers_0`,
  `layers_1`, ...); unrolled ones unchanged."""
  if not config.scan_layers:
    return params
  if "layers" not in params:
    raise ValueError(f"config.scan_layers is true but the parameters have no 'layers' entry (they have "
                     f"{sorted(params)}); pass the config the parameters were made with")
  rest = {name: value for name, value in params.items() if name != "layers"}
  return {**rest, **{f"layers_{i}": jax.tree.map(lambda x, i=i: x[i], params["layers"])
                     for i in range(config.n_layers)}}


@flax.struct.dataclass
class PlacedParams:
  """Parameters laid out for decoding (`place_params`): `tree` is Decoder(decode_config(config))'s."""

  tree: dict[str, Any]


def place_params(params: dict[str, Any] | PlacedParams, config: DecoderConfig, *, dtype: Any = None,
                 mesh: Mesh | None = None, rules: LogicalRules | None = None) -> PlacedParams:
  """The parameters of Decoder(config) laid out for Decoder(decode_config(config)) on the device(s).

  Floating leaves are cast to `dtype` (default config.param_dtype); with a `mesh`, each leaf is sharded
  by its logical axes and `rules` (default `inference_rules()`: fsdp on `embed`, tensor on heads, MLP
  and vocab); else it goes to the default device. PlacedParams are returned as they are.

  Args:
    params: the unboxed tree of Decoder(config), numpy or jax arrays.
  """
  if isinstance(params, PlacedParams):
    return params
  dtype = jnp.dtype(dtype or config.weights_dtype)
  def cast(x):
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != dtype else x

  params = jax.tree.map(cast, unstack_layers(params, config))
  if mesh is None:
    return PlacedParams(jax.device_put(params, default_placement()))
  shardings = logical_shardings(param_shapes(decode_config(config)), mesh, rules or inference_rules())
  return PlacedParams(jax.device_put(params, shardings))


# ------------------------------------------------------------------------------------------------- cache
@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for a batch of rows, each row filled from slot 0 to its length.

  One array per layer (a tuple), so that each layer reads its own in place; layouts are
  xbook.model.layers.LayerCache's (keys transposed: see there why).

  Attributes:
    keys: n_layers arrays [batch, n_kv_heads, head_dim, max_len], rotated as attention uses them.
    values: n_layers arrays [batch, n_kv_heads, max_len, head_dim].
    segment_ids: [batch, max_len] int32, 1 on stored tokens and 0 on empty slots.
    positions: [batch, max_len] int32, the stored tokens' positions (slot i holds position i).
    lengths: [batch] int32, the tokens stored per row (the next token's slot and position).
  """

  keys: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]
  segment_ids: jax.Array
  positions: jax.Array
  lengths: jax.Array

  @property
  def batch(self) -> int:
    return self.segment_ids.shape[0]

  @property
  def max_len(self) -> int:
    return self.segment_ids.shape[1]

  def admit(self, valid: jax.Array) -> tuple[KVCache, LayerCache, jax.Array]:
    """Take slots for new tokens after each row's last one, for the Decoder to store them in.

    Args:
      valid: [batch, n] bool, true on a prefix of each row (its real tokens; the rest is padding and
        gets no slot).

    Returns:
      (the cache with the valid tokens' segment ids and positions recorded and `lengths` advanced;
      the LayerCache to hand the Decoder, whose `slots` are lengths .. lengths + count - 1, or max_len
      (not stored) for padding; the new tokens' positions [batch, n]). Slots past max_len are dropped,
      never wrapped or clamped.
    """
    n = valid.shape[1]
    positions = self.lengths[:, None] + jnp.arange(n, dtype=jnp.int32)[None]
    slots = jnp.where(valid, positions, self.max_len)
    rows = jnp.arange(self.batch)[:, None]
    cache = self.replace(segment_ids=self.segment_ids.at[rows, slots].set(1, mode="drop"),
                         positions=self.positions.at[rows, slots].set(slots, mode="drop"),
                         lengths=self.lengths + jnp.sum(valid, axis=1, dtype=jnp.int32))
    return cache, LayerCache(cache.keys, cache.values, cache.segment_ids, cache.positions, slots), positions


def cache_shardings(n_layers: int, mesh: Mesh, rules: LogicalRules) -> KVCache:
  """NamedShardings of a KVCache's fields on `mesh`: keys and values by KEY_AXES / VALUE_AXES (kv heads
  over `tensor` with the default rules), the rest replicated."""
  keys, values = (nn.logical_to_mesh_sharding(PartitionSpec(*axes), mesh, rules)
                  for axes in (KEY_AXES, VALUE_AXES))
  replicated = NamedSharding(mesh, PartitionSpec())
  return KVCache((keys,) * n_layers, (values,) * n_layers, replicated, replicated, replicated)


def init_cache(config: DecoderConfig, batch: int, max_len: int, dtype: Any = None, *,
               mesh: Mesh | None = None, rules: LogicalRules | None = None) -> KVCache:
  """An empty cache of `max_len` slots per row (`grow` makes room for more).

  Args:
    config: the model's shape (n_layers, n_kv_heads, head_dim).
    batch: rows.
    max_len: slots per row.
    dtype: of keys and values; default the compute dtype (config.dtype).
    mesh, rules: place it sharded by `cache_shardings` (rules default `inference_rules()`).
  """
  dtype = jnp.dtype(dtype or config.compute_dtype)
  heads = (batch, config.n_kv_heads)
  # Built on the host and transferred: no compile per shape.
  layers = range(config.n_layers)
  cache = KVCache(keys=tuple(np.zeros(heads + (config.head_dim, max_len), dtype) for _ in layers),
                  values=tuple(np.zeros(heads + (max_len, config.head_dim), dtype) for _ in layers),
                  segment_ids=np.zeros((batch, max_len), np.int32),
                  positions=np.zeros((batch, max_len), np.int32), lengths=np.zeros((batch,), np.int32))
  if mesh is None:
    return jax.device_put(cache, default_placement())
  return jax.device_put(cache, cache_shardings(config.n_layers, mesh, rules or inference_rules()))


def _constrain(cache: KVCache) -> KVCache:
  """Keep keys and values sharded by KEY_AXES / VALUE_AXES (a no-op without a mesh in context)."""
  return cache.replace(keys=tuple(nn.with_logical_constraint(k, KEY_AXES) for k in cache.keys),
                       values=tuple(nn.with_logical_constraint(v, VALUE_AXES) for v in cache.values))


@functools.partial(jax.jit, static_argnames=("max_len", "rules"))
def _grow(cache: KVCache, *, max_len: int, rules: tuple) -> KVCache:
  _COMPILES["grow"] += 1
  extra = max_len - cache.max_len
  pad_last = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])  # noqa: E731
  with nn.logical_axis_rules(rules):
    return _constrain(KVCache(
        keys=tuple(pad_last(k) for k in cache.keys),
        values=tuple(jnp.pad(v, [(0, 0), (0, 0), (0, extra), (0, 0)]) for v in cache.values),
        segment_ids=pad_last(cache.segment_ids), positions=pad_last(cache.positions), lengths=cache.lengths))


def grow(cache: KVCache, max_len: int, rules: LogicalRules | None = None) -> KVCache:
  """The cache with `max_len` slots per row (>= its own), its contents kept."""
  if max_len < cache.max_len:
    raise ValueError(f"grow to max_len={max_len}: the cache has {cache.max_len} slots already")
  if max_len == cache.max_len:
    return cache
  return _grow(cache, max_len=max_len, rules=tuple(rules or inference_rules()))


# ---------------------------------------------------------------------------------------------- sampling
@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How one request samples; the filters apply in this order, each to what the previous kept.

  Attributes:
    temperature: logits are divided by it; 0 is greedy (argmax, the lowest id on ties).
    top_k: keep the k most likely ids (0: all).
    top_p: keep the smallest set of most likely ids whose probability (after top_k, renormalized)
      reaches top_p (1: all); the most likely id always stays.
    min_p: keep ids whose probability is at least min_p times the most likely one's (0: all).
    seed: the request's own random stream (mod 2**32): the same seed and prompt give the same tokens
      whatever else shares the batch.
    max_tokens: the most tokens to generate for this request (None: generate's `max_tokens`).
    stop: stop strings of this request, beside generate's `stop`.
  """

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  min_p: float = 0.0
  seed: int = 0
  max_tokens: int | None = None
  stop: tuple[str, ...] = ()

  def __post_init__(self) -> None:
    problems = []
    if not self.temperature >= 0:
      problems.append(f"temperature={self.temperature} must be >= 0 (0 is greedy)")
    if self.top_k < 0:
      problems.append(f"top_k={self.top_k} must be >= 0 (0 keeps every id)")
    if not 0 < self.top_p <= 1:
      problems.append(f"top_p={self.top_p} must be in (0, 1] (1 keeps every id)")
    if not 0 <= self.min_p <= 1:
      problems.append(f"min_p={self.min_p} must be in [0, 1] (0 keeps every id)")
    if self.max_tokens is not None and self.max_tokens < 1:
      problems.append(f"max_tokens={self.max_tokens} must be >= 1 (or None: generate's)")
    if isinstance(self.stop, str):
      problems.append(f"stop={self.stop!r} must be a tuple of strings, e.g. ({self.stop!r},)")
    if problems:
      raise ValueError("SamplingParams: " + "; ".join(problems))


GREEDY = SamplingParams(temperature=0.0)


@flax.struct.dataclass
class RowSampling:
  """Every row's SamplingParams as device arrays, [batch] each (no recompile when they change)."""

  temperature: jax.Array
  top_k: jax.Array
  top_p: jax.Array
  min_p: jax.Array
  seed: jax.Array

  @classmethod
  def of(cls, rows: Sequence[SamplingParams], mesh: Mesh | None = None) -> RowSampling:
    """The rows' settings, placed by default_placement(mesh)."""
    rows = cls(temperature=np.asarray([r.temperature for r in rows], np.float32),
               top_k=np.asarray([r.top_k for r in rows], np.int32),
               top_p=np.asarray([r.top_p for r in rows], np.float32),
               min_p=np.asarray([r.min_p for r in rows], np.float32),
               seed=np.asarray([r.seed % 2**32 for r in rows], np.uint32))
    return jax.device_put(rows, default_placement(mesh))


def _filtered_sorted(logits: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array,
                     min_p: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One row: (its scaled logits from most to least likely, the filtered-out ones at -inf; their ids)."""
  vocab = logits.shape[-1]
  scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
  # A stable sort of the negated logits: most likely first, the lower id first among equals.
  negated, ids = jax.lax.sort_key_val(-scaled, jnp.arange(vocab, dtype=jnp.int32), is_stable=True)
  ordered = -negated
  rank = jnp.arange(vocab)
  keep = rank < jnp.where(top_k > 0, top_k, vocab)
  probs = jax.nn.softmax(jnp.where(keep, ordered, -jnp.inf))
  keep &= jnp.cumsum(probs) - probs < top_p  # the more likely ids' mass is still short of top_p
  keep &= ordered - ordered[0] >= jnp.log(min_p)  # p / p_max >= min_p
  keep = keep.at[0].set(True)
  return jnp.where(keep, ordered, -jnp.inf), ids


def sample_logits(logits: jax.Array, sampling: RowSampling, counts: jax.Array,
                  vocab_size_limit: jax.Array) -> jax.Array:
  """One token per row (traceable; the decode loop's sampler).

  Args:
    logits: [batch, vocab] float32.
    sampling: the rows' settings.
    counts: [batch] int32, tokens each row has generated: with its seed, the key of this draw
      (fold_in(key(seed), count)), so a row's stream does not depend on its batch.
    vocab_size_limit: ids at or above it (embedding rows no tokenizer id has) are never chosen.

  Returns:
    [batch] int32.
  """
  logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_size_limit, logits, -jnp.inf)
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

  def draw(_):
    keys = jax.vmap(lambda seed, count: jax.random.fold_in(jax.random.key(seed), count))(sampling.seed, counts)

    def one(row_logits, key, temperature, top_k, top_p, min_p):
      kept, ids = _filtered_sorted(row_logits, temperature, top_k, top_p, min_p)
      return ids[jax.random.categorical(key, kept)]

    drawn = jax.vmap(one)(logits, keys, sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_p)
    return jnp.where(sampling.temperature > 0, drawn, greedy)

  # All-greedy batches skip the sort.
  return jax.lax.cond(jnp.any(sampling.temperature > 0), draw, lambda _: greedy, None)


@jax.jit
def sample(logits: jax.Array, sampling: RowSampling, counts: jax.Array, vocab_size_limit: jax.Array) -> jax.Array:
  """`sample_logits`, compiled (for host-side callers and tests)."""
  _COMPILES["sample"] += 1
  return sample_logits(logits, sampling, counts, vocab_size_limit)


# ----------------------------------------------------------------------------------------------- prefill
@functools.partial(jax.jit, static_argnames=("config", "rules"), donate_argnames=("cache",))
def _prefill_chunk(params: PlacedParams, cache: KVCache, tokens: jax.Array, n_valid: jax.Array, logits: jax.Array,
                   *, config: DecoderConfig, rules: tuple) -> tuple[KVCache, jax.Array]:
  """Feed tokens [batch, chunk] (the first n_valid [batch] of each row real) after each row's stored
  ones; returns the cache and the logits [batch, vocab] after each row's last real token (`logits`
  kept for rows without any)."""
  _COMPILES["prefill"] += 1
  valid = jnp.arange(tokens.shape[1])[None] < n_valid[:, None]
  cache, layer_cache, positions = cache.admit(valid)
  with nn.logical_axis_rules(rules):
    out, (keys, values) = Decoder(config).apply(
        {"params": params.tree}, tokens, valid.astype(jnp.int32), positions, layer_cache,
        logits_index=jnp.maximum(n_valid - 1, 0))
    cache = _constrain(cache.replace(keys=keys, values=values))
  return cache, jnp.where((n_valid > 0)[:, None], out[:, 0], logits)


def prefill(params: PlacedParams, config: DecoderConfig, cache: KVCache, prompts: Sequence[Sequence[int]], *,
            chunk: int = 1024, min_bucket: int = MIN_BUCKET, rules: LogicalRules | None = None,
            logits: jax.Array | None = None) -> tuple[KVCache, jax.Array]:
  """Write the prompts into the cache after each row's stored tokens, in chunks of at most `chunk`
  tokens per row, each padded to a bucket (a power of two from `min_bucket`, at most `chunk`).

  Args:
    params: placed parameters (`place_params(params, config)`).
    config: the model (its decode_config runs).
    cache: len(prompts) rows with room for the prompts (`grow` first if needed).
    prompts: token ids per row (an empty one leaves its row as it was).
    chunk: the most tokens per row fed in one call (bounds attention's [chunk, max_len] scores).
    min_bucket: the smallest chunk.
    rules: logical axis rules in force (default `inference_rules()`; a mesh, if any, is the caller's
      `jax.set_mesh` context).
    logits: [batch, vocab] to keep for rows with an empty prompt (default zeros).

  Returns:
    (cache, logits [batch, vocab] float32 after each row's last prompt token).
  """
  rules = tuple(rules or inference_rules())
  if len(prompts) != cache.batch:
    raise ValueError(f"{len(prompts)} prompts for a cache of {cache.batch} rows")
  lengths = [len(p) for p in prompts]
  stored = np.asarray(cache.lengths)
  if max(s + n for s, n in zip(stored, lengths)) > cache.max_len:
    raise ValueError(f"prompts of up to {max(lengths)} tokens after the {stored.max()} stored do not fit a "
                     f"cache of {cache.max_len} slots per row; grow() it first")
  if logits is None:
    logits = jax.device_put(np.zeros((cache.batch, config.vocab_size), np.float32), cache.lengths.sharding)
  for start in range(0, max(lengths, default=0), chunk):
    n_valid = np.asarray([max(0, min(n - start, chunk)) for n in lengths], np.int32)
    tokens = np.zeros((cache.batch, bucket(int(n_valid.max()), cap=chunk, minimum=min(min_bucket, chunk))),
                      np.int32)
    for row, prompt in enumerate(prompts):
      tokens[row, :n_valid[row]] = prompt[start:start + n_valid[row]]
    cache, logits = _prefill_chunk(params, cache, jax.device_put(tokens, cache.lengths.sharding),
                                   jax.device_put(n_valid, cache.lengths.sharding), logits,
                                   config=decode_config(config), rules=rules)
  return cache, logits


# ------------------------------------------------------------------------------------------------ decode
@flax.struct.dataclass
class DecodeState:
  """Per-row progress of a decode, on the device.

  Attributes:
    logits: [batch, vocab] float32, the distribution of each row's next token.
    generated: [batch, max_new] int32, the tokens generated so far (the first `counts` of each row).
    counts: [batch] int32.
    done: [batch] bool.
    stop_token: [batch] int32, the stop token that ended the row (-1: none).
    max_tokens: [batch] int32 (at most max_new).
  """

  logits: jax.Array
  generated: jax.Array
  counts: jax.Array
  done: jax.Array
  stop_token: jax.Array
  max_tokens: jax.Array


def _step(params: PlacedParams, cache: KVCache, state: DecodeState, sampling: RowSampling, stop_ids: jax.Array,
          vocab_size_limit: jax.Array, config: DecoderConfig) -> tuple[KVCache, DecodeState]:
  """Sample one token per active row, record it, and feed it to the rows that go on."""
  token = sample_logits(state.logits, sampling, state.counts, vocab_size_limit)
  active = ~state.done
  is_stop = jnp.any(token[:, None] == stop_ids[None], axis=1)
  record = active & ~is_stop
  slot = jnp.where(record, state.counts, state.generated.shape[1])
  generated = state.generated.at[jnp.arange(cache.batch), slot].set(token, mode="drop")
  counts = state.counts + record
  finished = active & (is_stop | (counts >= state.max_tokens))
  feed = (record & ~finished)[:, None]
  cache, layer_cache, positions = cache.admit(feed)
  out, (keys, values) = Decoder(config).apply(
      {"params": params.tree}, token[:, None], feed.astype(jnp.int32), positions, layer_cache,
      logits_index=jnp.zeros_like(token))
  cache = _constrain(cache.replace(keys=keys, values=values))
  return cache, state.replace(
      logits=jnp.where(feed, out[:, 0], state.logits), generated=generated, counts=counts,
      done=state.done | finished, stop_token=jnp.where(active & is_stop, token, state.stop_token))


@functools.partial(jax.jit, static_argnames=("config", "rules"), donate_argnames=("cache", "state"))
def _decode_segment(params: PlacedParams, cache: KVCache, state: DecodeState, sampling: RowSampling,
                    stop_ids: jax.Array, vocab_size_limit: jax.Array, max_steps: jax.Array, *,
                    config: DecoderConfig, rules: tuple) -> tuple[KVCache, DecodeState]:
  """Steps while a row is active, fewer than max_steps were taken and every active row has a free slot."""
  _COMPILES["decode"] += 1

  def go_on(carry):
    cache, state, steps = carry
    active = ~state.done
    room = jnp.max(jnp.where(active, cache.lengths, 0)) < cache.max_len
    return jnp.any(active) & room & (steps < max_steps)

  def body(carry):
    cache, state, steps = carry
    cache, state = _step(params, cache, state, sampling, stop_ids, vocab_size_limit, config)
    return cache, state, steps + 1

  with nn.logical_axis_rules(rules):
    cache, state, _ = jax.lax.while_loop(go_on, body, (cache, state, jnp.zeros((), jnp.int32)))
  return cache, state


def decode(params: PlacedParams, config: DecoderConfig, cache: KVCache, state: DecodeState,
           sampling: RowSampling, *, stop_token_ids: Sequence[int] = (), vocab_size_limit: int | None = None,
           max_steps: int | None = None, rules: LogicalRules | None = None) -> tuple[KVCache, DecodeState]:
  """One decode segment on the device: until every row is done, `max_steps` steps (default no limit)
  passed, or an active row's next token finds no free slot (then `grow` the cache and call again).

  Args:
    params: placed parameters (`place_params(params, config)`).
    config: the model (its decode_config runs).
    cache, state: donated; use the returned ones.
    sampling: the rows' settings (`RowSampling.of`).
    stop_token_ids: ids that end a row when sampled (at most MAX_STOP_TOKENS).
    vocab_size_limit: ids at or above it are never sampled (default config.vocab_size).
    rules: logical axis rules in force (the mesh, if any, is the caller's `jax.set_mesh` context).
  """
  stop_ids = sorted({int(t) for t in stop_token_ids})
  if len(stop_ids) > MAX_STOP_TOKENS:
    raise ValueError(f"{len(stop_ids)} stop_token_ids; at most {MAX_STOP_TOKENS}")
  return _decode_segment(
      params, cache, state, sampling, np.asarray(stop_ids + [-1] * (MAX_STOP_TOKENS - len(stop_ids)), np.int32),
      np.int32(config.vocab_size if vocab_size_limit is None else vocab_size_limit),
      np.int32(np.iinfo(np.int32).max if max_steps is None else max_steps),
      config=decode_config(config), rules=tuple(rules or inference_rules()))


# ---------------------------------------------------------------------------------------------- generate
@dataclasses.dataclass
class Completion:
  """One request's result.

  Attributes:
    token_ids: the generated ids, without a matched stop token, and ending with the last token whose
      text ends before a matched stop string.
    finish_reason: "stop" (a stop token or stop string), "length" (max_tokens) or "cancelled" (by
      generate's on_tokens).
    stop_reason: the stop token id or stop string that matched, else None.
    text: when generate was given `decode`: the decoded text, cut right before a matched stop string
      (so it may end with part of a token that token_ids leave out).
    prompt_tokens: the prompt's length.
    prefill_s, decode_s: wall seconds of the batch's prefill and decode (shared by its rows; a first
      call of a shape includes compiling).
    cached_tokens: prompt tokens served from the cache rather than prefilled (xbook.infer.engine's
      prefix reuse; 0 for generate).
  """

  token_ids: list[int]
  finish_reason: str
  stop_reason: int | str | None
  text: str | None
  prompt_tokens: int
  prefill_s: float
  decode_s: float
  cached_tokens: int = 0


class StopStrings:
  """Host-side stop string matching, per row, on decode(generated ids)."""

  def __init__(self, stops: Sequence[Sequence[str]], decode: Callable[[list[int]], str] | None) -> None:
    """stops: per row, its stop strings (empty: none)."""
    if any(stops) and decode is None:
      raise ValueError("stop strings need decode(ids) -> str to read the generated text; pass decode= "
                       "(e.g. vocabulary.decode), or stop on token ids with stop_token_ids")
    self.stops = [tuple(s) for s in stops]
    self.decode = decode
    self._searched = [0] * len(stops)  # characters of each row's text already searched
    self._matches: dict[int, tuple[int, str]] = {}

  def __bool__(self) -> bool:
    return any(self.stops)

  def check(self, row: int, ids: list[int]) -> bool:
    """Whether row's text holds one of its stop strings (the earliest match is kept for `cut`)."""
    if row in self._matches or not self.stops[row]:
      return row in self._matches
    text = self.decode(ids)
    start = max(0, self._searched[row] - max(map(len, self.stops[row])) + 1)
    found = [(i, s) for s in self.stops[row] if (i := text.find(s, start)) >= 0]
    self._searched[row] = len(text)
    if found:
      self._matches[row] = min(found)
    return bool(found)

  def settled(self, row: int, ids: list[int]) -> int:
    """How many of row's ids no stop string can take back any more: all without stop strings; those
    before a matched one; else those whose text ends before the last characters that could still
    begin a stop string."""
    if row in self._matches:
      return len(self.cut(row, ids)[0])
    if not self.stops[row]:
      return len(ids)
    end = len(self.decode(ids)) - max(map(len, self.stops[row])) + 1
    n = len(ids)
    while n > 0 and len(self.decode(ids[:n])) > end:
      n -= 1
    return n

  def cut(self, row: int, ids: list[int]) -> tuple[list[int], str | None, str | None]:
    """(the ids before row's stop string, their text, the stop string); text None without decode."""
    if row not in self._matches:
      return ids, (self.decode(ids) if self.decode else None), None
    index, stop = self._matches[row]
    n = len(ids)
    while n > 0 and len(self.decode(ids[:n])) > index:  # drop the tokens that reach into the stop string
      n -= 1
    return ids[:n], self.decode(ids)[:index], stop


def generate(params: dict[str, Any] | PlacedParams, config: DecoderConfig, prompts: Sequence[Sequence[int]],
             sampling: SamplingParams | Sequence[SamplingParams] = GREEDY, max_tokens: int = 256, *,
             stop: Iterable[str] = (), stop_token_ids: Iterable[int] = (),
             decode: Callable[[list[int]], str] | None = None, vocab_size_limit: int | None = None,
             mesh: Mesh | None = None, rules: LogicalRules | None = None, cache_len: int | None = None,
             prefill_chunk: int = 1024, min_bucket: int = MIN_BUCKET, sync_every: int = 32,
             param_dtype: Any = None, cache_dtype: Any = None,
             on_tokens: Callable[[int, list[int], str | None], bool | None] | None = None) -> list[Completion]:
  """Continue every prompt, all in one batch with a KV cache.

  Args:
    params: the Decoder(config) parameter tree (numpy or jax, scanned or unrolled as config says), or
      PlacedParams (`place_params(params, config, ...)`, reused as they are: place once when calling
      often).
    config: the model.
    prompts: token ids per request, the exact model input (BOS first if the model expects it); each
      at least one token.
    sampling: one SamplingParams for every request, or one per request (default greedy).
    max_tokens: the most tokens per request (a request's own max_tokens overrides it).
    stop: stop strings of every request (beside each request's own), matched on decode(generated ids)
      every `sync_every` tokens; the text from the stop string on is not returned.
    stop_token_ids: ids that end a request when sampled (EOS, an end-of-turn token), checked on the
      device at every step and not returned; at most MAX_STOP_TOKENS.
    decode: ids -> text; needed for stop strings; also fills Completion.text.
    vocab_size_limit: ids at or above it are never sampled (the tokenizer's size when the embedding is
      padded; default every row).
    mesh: shard parameters (fsdp / tensor by `rules`) and cache (kv heads over tensor) over it;
      default one device.
    rules: logical axis rules (default `inference_rules()`).
    cache_len: the most slots a row's cache may grow to (default: the longest prompt plus max_tokens,
      to a power of two from min_bucket); every prompt plus its max_tokens must fit.
    prefill_chunk: the most prompt tokens per row fed in one prefill call.
    min_bucket: the smallest prefill chunk and cache length.
    sync_every: decode steps between the host's looks at the rows (stop strings, on_tokens); without
      either, a segment runs until every row is done or the cache is full.
    param_dtype: the parameters' dtype for decoding (default config.param_dtype); cache_dtype: the
      keys' and values' (default config.dtype).
    on_tokens: streaming: called between decode segments as on_tokens(index, ids, finish_reason) with
      a request's newly settled ids (those no stop string can take back: the text that could still
      begin one is held back) and, on its last call, its finish_reason (else None); the ids of all its
      calls are Completion.token_ids. Returning False cancels the request and frees its row
      (finish_reason "cancelled").

  Returns:
    One Completion per prompt, in order.
  """
  rows, limits = _request_rows(prompts, sampling, max_tokens)
  cache_len = _checked_cache_len(prompts, limits, cache_len, min_bucket)
  vocab_size_limit = _checked_vocab_size_limit(config, vocab_size_limit)
  stops = StopStrings([(*stop, *r.stop) for r in rows], decode)
  rules = tuple(rules or inference_rules())
  n = len(prompts)
  batch = 1 << (n - 1).bit_length()  # a power of two: padding rows bound the compiles
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    params = place_params(params, config, dtype=param_dtype, mesh=mesh, rules=rules)
    started = time.perf_counter()
    cache, logits = _prefill_batch(params, config, prompts, batch, cache_len=cache_len, cache_dtype=cache_dtype,
                                   prefill_chunk=prefill_chunk, min_bucket=min_bucket, mesh=mesh, rules=rules)
    prefill_s = time.perf_counter() - started
    state = _first_state(logits, limits, batch, min_bucket, mesh)
    started = time.perf_counter()
    rows_view = _Rows(stops, n, on_tokens)
    state = _decode_all(params, config, cache, state, RowSampling.of(rows + [GREEDY] * (batch - n), mesh), rows_view,
                        cache_len=cache_len, sync_every=sync_every, rules=rules,
                        stop_token_ids=tuple(stop_token_ids), vocab_size_limit=vocab_size_limit)
    decode_s = time.perf_counter() - started
  return _completions(state, prompts, stops, rows_view, prefill_s=prefill_s, decode_s=decode_s)


def _request_rows(prompts: Sequence[Sequence[int]], sampling: SamplingParams | Sequence[SamplingParams],
                  max_tokens: int) -> tuple[list[SamplingParams], list[int]]:
  """(each prompt's SamplingParams, each one's max_tokens: its own, else `max_tokens`).

  Raises:
    ValueError: no prompt, an empty prompt, a count of SamplingParams that is neither one nor one per
      prompt, or a max_tokens below 1.
  """
  n = len(prompts)
  rows = list(sampling) if isinstance(sampling, Sequence) else [sampling] * n
  if len(rows) != n:
    raise ValueError(f"{len(rows)} SamplingParams for {n} prompts; give one, or one per prompt")
  if not n or any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token (the model's BOS, if nothing else)")
  limits = [r.max_tokens or max_tokens for r in rows]
  if min(limits) < 1:
    raise ValueError(f"max_tokens={max_tokens} must be >= 1")
  return rows, limits


def _checked_cache_len(prompts: Sequence[Sequence[int]], limits: list[int], cache_len: int | None,
                       min_bucket: int) -> int:
  """The most slots a row's cache may grow to: `cache_len`, else the longest prompt plus its max_tokens
  (`limits`) to a power of two from min_bucket. Raises ValueError when a prompt plus its max_tokens does
  not fit it."""
  needed = max(len(p) + m for p, m in zip(prompts, limits))
  cache_len = cache_len or bucket(needed, minimum=min_bucket)
  if needed > cache_len:
    raise ValueError(f"a prompt plus its max_tokens needs {needed} cache slots but cache_len={cache_len}; "
                     "raise cache_len or lower max_tokens")
  return cache_len


def _checked_vocab_size_limit(config: DecoderConfig, vocab_size_limit: int | None) -> int:
  """The first id never sampled: `vocab_size_limit`, else every embedding row. Raises ValueError outside
  [1, config.vocab_size]."""
  vocab_size_limit = config.vocab_size if vocab_size_limit is None else int(vocab_size_limit)
  if not 0 < vocab_size_limit <= config.vocab_size:
    raise ValueError(f"vocab_size_limit={vocab_size_limit} must be in [1, {config.vocab_size}] "
                     "(the tokenizer's size, at most the embedding rows)")
  return vocab_size_limit


def _prefill_batch(params: PlacedParams, config: DecoderConfig, prompts: Sequence[Sequence[int]], batch: int, *,
                   cache_len: int, cache_dtype: Any, prefill_chunk: int, min_bucket: int, mesh: Mesh | None,
                   rules: tuple) -> tuple[KVCache, jax.Array]:
  """A cache of `batch` rows (the prompts, then empty padding rows) with room for the longest prompt
  (prefill attends to all of it; decoding doubles it as needed, up to cache_len), the prompts prefilled
  into it, and the logits [batch, vocab] after each prompt, computed (blocks until they are)."""
  first_len = bucket(max(map(len, prompts)), cap=cache_len, minimum=min_bucket)
  cache = init_cache(config, batch, first_len, cache_dtype, mesh=mesh, rules=rules)
  cache, logits = prefill(params, config, cache, [*prompts, *[[]] * (batch - len(prompts))], chunk=prefill_chunk,
                          min_bucket=min_bucket, rules=rules)
  jax.block_until_ready(logits)
  return cache, logits


def _first_state(logits: jax.Array, limits: list[int], batch: int, min_bucket: int, mesh: Mesh | None
                 ) -> DecodeState:
  """The DecodeState before the first decode step, placed (decode.default_placement): the prompts' rows
  active with their max_tokens (`limits`), the padding rows after them done."""
  n, pad = len(limits), batch - len(limits)
  state = DecodeState(
      logits=logits, generated=np.zeros((batch, bucket(max(limits), minimum=min_bucket)), np.int32),
      counts=np.zeros((batch,), np.int32), done=np.asarray([False] * n + [True] * pad),
      stop_token=np.full((batch,), -1, np.int32), max_tokens=np.asarray(limits + [1] * pad, np.int32))
  return jax.device_put(state, default_placement(mesh))


def _completions(state: DecodeState, prompts: Sequence[Sequence[int]], stops: StopStrings, rows: _Rows, *,
                 prefill_s: float, decode_s: float) -> list[Completion]:
  """One Completion per prompt from the final state: its ids cut at a matched stop string, and its finish
  reason (`_Rows.finish`)."""
  generated, counts, stop_token = (np.asarray(x) for x in (state.generated, state.counts, state.stop_token))
  completions = []
  for row, prompt in enumerate(prompts):
    ids, text, stop_string = stops.cut(row, generated[row, :counts[row]].tolist())
    reason, stop_reason = rows.finish(row, stop_string, stop_token[row])
    completions.append(Completion(token_ids=ids, finish_reason=reason, stop_reason=stop_reason, text=text,
                                  prompt_tokens=len(prompt), prefill_s=prefill_s, decode_s=decode_s))
  return completions


class _Rows:
  """The host's view of the requests between decode segments: stop strings, streaming, cancelling."""

  def __init__(self, stops: StopStrings, n: int,
               on_tokens: Callable[[int, list[int], str | None], bool | None] | None) -> None:
    self.stops, self.n, self.on_tokens = stops, n, on_tokens
    self.sent = [0] * n  # ids already handed to on_tokens, per request
    self.closed = [False] * n  # requests whose last on_tokens call was made
    self.cancelled: set[int] = set()

  @property
  def watching(self) -> bool:
    """Whether the host needs to look at the rows every sync_every steps."""
    return bool(self.stops) or self.on_tokens is not None

  def finish(self, row: int, stop_string: str | None, stop_token: int) -> tuple[str, int | str | None]:
    """(finish_reason, stop_reason) of an ended request."""
    if row in self.cancelled:
      return "cancelled", None
    if stop_string is not None:
      return "stop", stop_string
    return ("stop", int(stop_token)) if stop_token >= 0 else ("length", None)

  def update(self, generated: np.ndarray, counts: np.ndarray, done: np.ndarray, stop_token: np.ndarray,
             ended_now: np.ndarray) -> list[int]:
    """After a segment: search the rows that ran (or just ended) for stop strings and stream what
    settled. Returns the rows to end now (a stop string matched, or on_tokens cancelled them)."""
    end = []
    for row in np.flatnonzero(~done[:self.n] | ended_now[:self.n]):
      ids = generated[row, :counts[row]].tolist()
      if self.stops.check(row, ids) and not done[row]:
        end.append(row)
      if self.on_tokens is None or self.closed[row]:
        continue
      finished = bool(done[row]) or row in end
      if finished:
        ids, _, stop_string = self.stops.cut(row, ids)
        settled, reason = len(ids), self.finish(row, stop_string, stop_token[row])[0]
      else:
        settled, reason = self.stops.settled(row, ids), None
      if settled > self.sent[row] or finished:
        go_on = self.on_tokens(row, ids[self.sent[row]:settled], reason)
        if go_on is False and not finished:
          self.cancelled.add(row)
          end.append(row)
      self.sent[row] = max(self.sent[row], settled)
      self.closed[row] = finished or row in self.cancelled
    return end


def _decode_all(params: PlacedParams, config: DecoderConfig, cache: KVCache, state: DecodeState,
                sampling: RowSampling, rows: _Rows, *, cache_len: int, sync_every: int, rules: tuple,
                **options: Any) -> DecodeState:
  """Decode segments until every row is done: the cache doubles (to cache_len) when full; between
  segments the host looks at the rows (`_Rows.update`)."""
  done, lengths = np.array(state.done), np.asarray(cache.lengths)
  while not done.all():
    if lengths[~done].max() >= cache.max_len:
      if cache.max_len >= cache_len:  # cannot happen when cache_len fits every prompt plus max_tokens
        raise RuntimeError(f"rows outgrew cache_len={cache_len}")
      cache = grow(cache, min(2 * cache.max_len, cache_len), rules)
    cache, state = decode(params, config, cache, state, sampling,
                          max_steps=sync_every if rows.watching else None, rules=rules, **options)
    was_done, (done, lengths) = done, (np.array(state.done), np.asarray(cache.lengths))
    if rows.watching:
      generated, counts, stop_token = (np.asarray(x) for x in (state.generated, state.counts, state.stop_token))
      end = rows.update(generated, counts, done, stop_token, ended_now=done & ~was_done)
      if end:
        done[end] = True
        state = state.replace(done=jax.device_put(done, state.done.sharding))
  return state
