"""Decoder building blocks: RMSNorm, rotary embeddings, GQA attention, SwiGLU MLP.

Parameters carry logical axis names (`embed`, `mlp`, `heads`, `kv_heads`, `head_dim`, `vocab`);
activations are constrained to the `activation_*` names of xbook.model.axes. The logical axis rules in force
(xbook.train.partitioning) map both to mesh axes.

With `config.lora`, the targeted projections (attention's q, k, v, o; the MLP's gate, up, down) add the
term of their low-rank adapters (`lora_delta`, xbook.model.lora), created beside the base kernel.

Decoding (xbook.infer.decode) runs the same modules with a `LayerCache`: the keys and values of the tokens
seen before, which the new tokens' queries attend to beside their own. Without one (training, evaluation)
the tokens given attend only to each other, with `config.attention`.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from xbook.model import attention as attention_lib
from xbook.model.attention_mask import MASKED_SCORE, attention_mask
from xbook.model.axes import BATCH_LENGTH_EMBED, BATCH_LENGTH_MLP, KEY_VALUE, QUERY
from xbook.model.config import DecoderConfig
from xbook.model.lora import BASE_PARAMS
from xbook.model.rope import apply_rope

class LayerCache(NamedTuple):
  """The keys and values of the tokens decoded so far, and where the new tokens' go (one layer's view;
  the Decoder takes `keys` and `values` as sequences of the layers' arrays).

  Keys are stored transposed, so that a decode step's scores (queries [.., head_dim] against keys
  [head_dim, cache_len]) and output (probabilities [.., cache_len] against values [cache_len,
  head_dim]) both run along contiguous cache_len.

  Attributes:
    keys: [batch, n_kv_heads, head_dim, cache_len], rotated (and YaRN-scaled) as attention sees them.
    values: [batch, n_kv_heads, cache_len, head_dim].
    segment_ids: [batch, cache_len] int, already holding the new tokens' (0 marks an empty slot).
    positions: [batch, cache_len] int, already holding the new tokens'.
    slots: [batch, length] int, the slot of each new token (cache_len or more: not stored, e.g. padding).
  """

  keys: jax.Array
  values: jax.Array
  segment_ids: jax.Array
  positions: jax.Array
  slots: jax.Array


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array, positions: jax.Array,
                     cache: LayerCache, sliding_window: int | None) -> tuple[jax.Array, LayerCache]:
  """Store the new tokens' keys and values in the cache, then attend from their queries to the cache.

  Dense attention: the full score matrix, small because the queries are few (one per row in a decode
  step, a prefill chunk otherwise). What a query sees comes from the shared mask
  (xbook.model.attention_mask) over the cache's positions and segment ids, as in training; softmax
  statistics in float32, as dense_attention. Writing first and reading after lets XLA update the cache
  in place inside a decode loop; a single query (a decode step) is a multiply-and-sum, which XLA:CPU
  fuses with the reads, where a matrix product made it copy the whole cache at every step.

  Args:
    q: [batch, length, n_kv_heads, group, head_dim]; k, v: [batch, length, n_kv_heads, head_dim].
    segment_ids, positions: [batch, length] of the new tokens.
    cache: the layer's cache; `cache.slots` say where k and v go.

  Returns:
    (out [batch, length, n_kv_heads, group, head_dim] in q's dtype, the cache with k and v stored).
  """
  batch, length, n_kv, group, head_dim = q.shape
  rows = jnp.arange(batch)[:, None]
  # Indexed by (rows, slots) [batch, length] around sliced axes, the updates are [batch, length, kv, d].
  keys = cache.keys.at[rows, :, :, cache.slots].set(k.astype(cache.keys.dtype), mode="drop")
  values = cache.values.at[rows, :, cache.slots].set(v.astype(cache.values.dtype), mode="drop")
  queries = q.transpose(0, 2, 3, 1, 4).reshape(batch, n_kv, group * length, head_dim) * head_dim ** -0.5
  if length == 1:
    scores = jnp.sum(queries[..., None].astype(jnp.float32) * keys[:, :, None].astype(jnp.float32), axis=3)
  else:
    scores = jnp.einsum("bhqd,bhdk->bhqk", queries, keys.astype(q.dtype), preferred_element_type=jnp.float32)
  mask = attention_mask(segment_ids, cache.segment_ids.astype(segment_ids.dtype), positions,
                        cache.positions.astype(positions.dtype), sliding_window)  # [batch, length, cache_len]
  scores = jnp.where(mask[:, None, None], scores.reshape(batch, n_kv, group, length, -1), MASKED_SCORE)
  # Queries with no visible key (padding) get zero output rather than a uniform average.
  probs = jax.nn.softmax(scores, axis=-1) * jnp.any(mask, axis=-1)[:, None, None, :, None]
  probs = probs.reshape(batch, n_kv, group * length, -1)
  if length == 1:
    out = jnp.sum(probs[..., None] * values[:, :, None].astype(jnp.float32), axis=3)
  else:
    out = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype), values.astype(v.dtype))
  out = out.reshape(batch, n_kv, group, length, head_dim).transpose(0, 3, 1, 2, 4).astype(q.dtype)
  return out, cache._replace(keys=keys, values=values)


def _init(init_fn, names: tuple[str, ...]):
  return nn.with_logical_partitioning(init_fn, names)


def lora_delta(module: nn.Module, cfg: DecoderConfig, target: str, x: jax.Array,
               in_axes: tuple[tuple[int, str], ...], out_axes: tuple[tuple[int, str], ...]) -> jax.Array | None:
  """The LoRA term of projection `target` (xbook.model.lora): (alpha / rank) dropout(x) A B, or None when
  the config gives `target` no adapter.

  Creates the adapters in `module`: `<base>_lora_a` [*in, rank] and `<base>_lora_b` [rank, *out] (B
  zero-initialised), named by the base kernel's logical axes plus `lora_rank`. Dropout applies only when
  the call has a `dropout` rng (training steps), never in evaluation or decoding.

  Args:
    x: [..., *in] in the compute dtype; in_axes, out_axes: (size, logical name) of the base kernel's
      input and output axes.

  Returns:
    [..., *out] in the compute dtype.
  """
  lora = cfg.lora
  if lora is None or target not in lora.targets:
    return None
  name = BASE_PARAMS[target]
  in_shape, in_names = tuple(size for size, _ in in_axes), tuple(axis for _, axis in in_axes)
  out_shape, out_names = tuple(size for size, _ in out_axes), tuple(axis for _, axis in out_axes)
  fan_in = 1
  for size in in_shape:
    fan_in *= size
  a = module.param(f"{name}_lora_a", _init(nn.initializers.normal(stddev=fan_in ** -0.5), in_names + ("lora_rank",)),
                   in_shape + (lora.rank,), lora.weights_dtype)
  b = module.param(f"{name}_lora_b", _init(nn.initializers.zeros, ("lora_rank",) + out_names),
                   (lora.rank,) + out_shape, lora.weights_dtype)
  if lora.dropout and module.has_rng("dropout"):
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - lora.dropout, x.shape)
    x = jnp.where(keep, x / (1.0 - lora.dropout), 0).astype(x.dtype)
  n_in = len(in_shape)
  hidden = jnp.tensordot(x, a.astype(cfg.compute_dtype), axes=(tuple(range(x.ndim - n_in, x.ndim)),
                                                              tuple(range(n_in))))
  return jnp.tensordot(hidden * jnp.asarray(lora.scale, hidden.dtype), b.astype(cfg.compute_dtype), axes=1)


def _plus(y: jax.Array, delta: jax.Array | None) -> jax.Array:
  return y if delta is None else y + delta.astype(y.dtype)


class RMSNorm(nn.Module):
  """Root-mean-square norm over the last axis, statistics in float32. x: [..., embed]."""

  eps: float
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", _init(nn.initializers.ones, ("embed",)), (x.shape[-1],),
                       self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * scale.astype(jnp.float32)).astype(self.dtype)


def query_scale(positions: jax.Array, beta: float, period: int) -> jax.Array:
  """Llama 4's and Ministral 3's position-dependent query factor, 1 + beta ln(1 + floor(p / period)).

  transformers (models/ministral3/modeling_ministral3.py, `get_llama_4_attn_scale`, 5.x) multiplies the
  rotated queries by it, with `beta` = rope_parameters["llama_4_scaling_beta"] and `period` =
  rope_parameters["original_max_position_embeddings"]. Every attention implementation takes the queries
  as they are, so scaling them here (once, before attention) serves dense, blockwise and ring alike.

  Args:
    positions: [batch, length] int, each token's position in its own sequence (segment).

  Returns:
    [batch, length] float32.
  """
  return 1.0 + beta * jnp.log1p((positions // period).astype(jnp.float32))


class Attention(nn.Module):
  """Grouped-query self-attention. x: [batch, length, embed] -> [batch, length, embed].

  Query heads are laid out [kv_heads, heads] where `heads` counts the query heads sharing one key/value
  head (n_heads // n_kv_heads), so head h = kv * group + g, the grouping of Llama-family checkpoints.

  With a `cache` (LayerCache) the new tokens' keys and values are stored in it and the queries attend to
  it (`cached_attention`: dense, whatever `config.attention` says); the call returns (out, the cache).
  """

  config: DecoderConfig

  @nn.compact
  def __call__(self, x: jax.Array, segment_ids: jax.Array, positions: jax.Array,
               cache: LayerCache | None = None):
    cfg = self.config
    group = cfg.n_heads // cfg.n_kv_heads

    def kernel(name: str, shape: tuple[int, ...], names: tuple[str, ...], fan_in: int) -> jax.Array:
      init = _init(nn.initializers.normal(stddev=fan_in ** -0.5), names)
      return self.param(name, init, shape, cfg.weights_dtype).astype(cfg.compute_dtype)

    x = x.astype(cfg.compute_dtype)
    wq = kernel("query", (cfg.d_model, cfg.n_kv_heads, group, cfg.head_dim),
                ("embed", "kv_heads", "heads", "head_dim"), cfg.d_model)
    wk = kernel("key", (cfg.d_model, cfg.n_kv_heads, cfg.head_dim),
                ("embed", "kv_heads", "head_dim"), cfg.d_model)
    wv = kernel("value", (cfg.d_model, cfg.n_kv_heads, cfg.head_dim),
                ("embed", "kv_heads", "head_dim"), cfg.d_model)
    wo = kernel("out", (cfg.n_kv_heads, group, cfg.head_dim, cfg.d_model),
                ("kv_heads", "heads", "head_dim", "embed"), cfg.n_heads * cfg.head_dim)
    embed = ((cfg.d_model, "embed"),)
    kv_out = ((cfg.n_kv_heads, "kv_heads"), (cfg.head_dim, "head_dim"))
    q_out = ((cfg.n_kv_heads, "kv_heads"), (group, "heads"), (cfg.head_dim, "head_dim"))
    q = _plus(jnp.einsum("ble,ekgd->blkgd", x, wq), lora_delta(self, cfg, "q", x, embed, q_out))
    k = _plus(jnp.einsum("ble,ekd->blkd", x, wk), lora_delta(self, cfg, "k", x, embed, kv_out))
    v = _plus(jnp.einsum("ble,ekd->blkd", x, wv), lora_delta(self, cfg, "v", x, embed, kv_out))

    def project_out(out: jax.Array) -> jax.Array:
      return _plus(jnp.einsum("blkgd,kgde->ble", out, wo), lora_delta(self, cfg, "o", out, q_out, embed))
    if cfg.attention_bias:
      bias = lambda name, shape, names: self.param(  # noqa: E731
          name, _init(nn.initializers.zeros, names), shape, cfg.weights_dtype).astype(cfg.compute_dtype)
      q = q + bias("query_bias", (cfg.n_kv_heads, group, cfg.head_dim), ("kv_heads", "heads", "head_dim"))
      k = k + bias("key_bias", (cfg.n_kv_heads, cfg.head_dim), ("kv_heads", "head_dim"))
      v = v + bias("value_bias", (cfg.n_kv_heads, cfg.head_dim), ("kv_heads", "head_dim"))
    q = apply_rope(q, positions, cfg.rope_theta, cfg.rope)
    if cfg.query_scale_beta:
      scale = query_scale(positions, cfg.query_scale_beta, cfg.query_scale_period)
      q = q * scale.astype(q.dtype)[:, :, None, None, None]
    q = nn.with_logical_constraint(q, QUERY)
    k = nn.with_logical_constraint(apply_rope(k, positions, cfg.rope_theta, cfg.rope), KEY_VALUE)
    v = nn.with_logical_constraint(v, KEY_VALUE)
    if cache is not None:
      out, cache = cached_attention(q, k, v, segment_ids, positions, cache, cfg.sliding_window)
      out = project_out(out)
      return nn.with_logical_constraint(out, BATCH_LENGTH_EMBED), cache
    options = {} if cfg.sliding_window is None else {"sliding_window": cfg.sliding_window}
    if cfg.attention != "dense":
      options.update(block_q=cfg.attention_block, block_kv=cfg.attention_block)
    out = attention_lib.get_attention(cfg.attention)(
        q, k, v, q_segment_ids=segment_ids, kv_segment_ids=segment_ids, q_positions=positions,
        kv_positions=positions, **options)
    out = project_out(out)
    return nn.with_logical_constraint(out, BATCH_LENGTH_EMBED)


class SwiGLU(nn.Module):
  """Gated MLP: (silu(x W_gate) * x W_up) W_down. x: [batch, length, embed]."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kw = dict(use_bias=False, dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype)
    up_init = _init(nn.initializers.normal(stddev=cfg.d_model ** -0.5), ("embed", "mlp"))
    embed, mlp = ((cfg.d_model, "embed"),), ((cfg.mlp_dim, "mlp"),)
    x = x.astype(cfg.compute_dtype)
    gate = _plus(nn.Dense(cfg.mlp_dim, kernel_init=up_init, name="gate", **kw)(x),
                 lora_delta(self, cfg, "gate", x, embed, mlp))
    up = _plus(nn.Dense(cfg.mlp_dim, kernel_init=up_init, name="up", **kw)(x),
               lora_delta(self, cfg, "up", x, embed, mlp))
    hidden = nn.with_logical_constraint(nn.silu(gate) * up, BATCH_LENGTH_MLP)
    down_init = _init(nn.initializers.normal(stddev=cfg.mlp_dim ** -0.5), ("mlp", "embed"))
    out = _plus(nn.Dense(cfg.d_model, kernel_init=down_init, name="down", **kw)(hidden),
                lora_delta(self, cfg, "down", hidden, mlp, embed))
    return nn.with_logical_constraint(out, BATCH_LENGTH_EMBED)


class DecoderLayer(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then + mlp(norm(x)). Carries x: [batch, length, embed].

  Returns (x, None), or with a `cache` (LayerCache) (x, (keys, values)): the layer's cached keys and
  values with the new tokens' stored (under nn.scan, stacked on `layers`).
  """

  config: DecoderConfig

  @nn.compact
  def __call__(self, x: jax.Array, segment_ids: jax.Array, positions: jax.Array,
               cache: LayerCache | None = None):
    cfg = self.config
    norm = lambda name: RMSNorm(cfg.norm_eps, cfg.compute_dtype, cfg.weights_dtype, name=name)  # noqa: E731
    attention = Attention(cfg, name="attention")
    if cache is None:
      attn_out, new_kv = attention(norm("attention_norm")(x), segment_ids, positions), None
    else:
      attn_out, cache = attention(norm("attention_norm")(x), segment_ids, positions, cache)
      new_kv = (cache.keys, cache.values)
    attn_out = checkpoint_name(attn_out, "attention_out")
    x = x + attn_out
    x = x + SwiGLU(cfg, name="mlp")(norm("mlp_norm")(x))
    x = nn.with_logical_constraint(x, BATCH_LENGTH_EMBED)
    return x, new_kv
