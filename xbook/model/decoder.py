"""The decoder-only language model: embeddings, a stack of DecoderLayers (scanned), final norm, logits;
and its parameter tree without allocating it (`param_shapes`, `abstract_params`), the one place every
restore and sharding of parameters takes it from."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xbook.model.config import DecoderConfig
from xbook.model.axes import BATCH_LENGTH_EMBED, BATCH_LENGTH_VOCAB, LogicalRules
from xbook.model.layers import DecoderLayer, LayerCache, RMSNorm


def _remat_policy(name: str):
  return {
      "save_dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
      "save_attention_out": jax.checkpoint_policies.save_only_these_names("attention_out"),
      "full": jax.checkpoint_policies.nothing_saveable,
  }[name]


class Decoder(nn.Module):
  """Causal LM over token ids.

  __call__(tokens, segment_ids, positions):
    tokens, segment_ids, positions: [batch, length] int32 (the example contract's
      decoder_input_tokens / decoder_segment_ids / decoder_positions).
    returns logits [batch, length, vocab] in float32, sharded (activation_batch, activation_length,
      activation_vocab).

  __call__(tokens, segment_ids, positions, cache, logits_index), for decoding (xbook.infer.decode):
    cache: a LayerCache (xbook.model.layers) whose keys and values are sequences of n_layers per-layer
      arrays, its segment ids and positions already holding the new tokens' and its slots saying where
      their keys and values go; each layer stores them, then attends to the whole cache with dense
      attention, whatever `config.attention` is; remat is not applied. Scanned layers stack the cache
      on every call (a copy); xbook.infer.decode runs the layers unrolled, each on its own arrays.
    logits_index: None, or [batch] int: compute the logits of only that token of each row.
    returns (logits [batch, length or 1, vocab] float32, (keys, values)): the layers' updated keys and
      values, tuples of n_layers arrays.
  Both compute with the same parameters and the same layer code. With `config.lora`, the targeted
  projections add their adapters' term (xbook.model.lora); its dropout applies only when apply() is
  given a `dropout` rng.
  """

  config: DecoderConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, segment_ids: jax.Array, positions: jax.Array,
               cache: LayerCache | None = None, logits_index: jax.Array | None = None):
    cfg = self.config
    embed = nn.Embed(
        cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0),
                                                    ("vocab", "embed")),
        name="embed")
    x = nn.with_logical_constraint(embed(tokens), BATCH_LENGTH_EMBED)

    new_kv = None
    if cache is not None:
      x, new_kv = self._cached_layers(x, segment_ids, positions, cache)
    else:
      layer = DecoderLayer
      if cfg.remat != "none":
        layer = nn.remat(layer, policy=_remat_policy(cfg.remat), prevent_cse=not cfg.scan_layers)
      if cfg.scan_layers:
        # Each layer its own dropout mask (LoRA dropout, when the call has a `dropout` rng).
        stack = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                        in_axes=(nn.broadcast, nn.broadcast), length=cfg.n_layers,
                        metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = stack(cfg, name="layers")(x, segment_ids, positions)
      else:
        for i in range(cfg.n_layers):
          x, _ = layer(cfg, name=f"layers_{i}")(x, segment_ids, positions)

    if logits_index is not None:
      x = x[jnp.arange(x.shape[0]), logits_index][:, None]
    x = RMSNorm(cfg.norm_eps, cfg.compute_dtype, cfg.weights_dtype, name="final_norm")(x)
    if cfg.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(
          cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.normal(stddev=cfg.d_model ** -0.5), ("embed", "vocab")),
          name="lm_head")(x)
    logits = logits.astype(jnp.float32)
    logits = nn.with_logical_constraint(logits, BATCH_LENGTH_VOCAB)
    return logits if cache is None else (logits, new_kv)

  def _cached_layers(self, x: jax.Array, segment_ids: jax.Array, positions: jax.Array, cache: LayerCache):
    """The layer stack against `cache` (per-layer key and value sequences): (x, (keys, values)), the
    layers' updated keys and values as tuples."""
    cfg = self.config
    if len(cache.keys) != cfg.n_layers or len(cache.values) != cfg.n_layers:
      raise ValueError(f"the cache holds {len(cache.keys)} layers of keys and {len(cache.values)} of values; "
                       f"the model has n_layers={cfg.n_layers}")
    if cfg.scan_layers:  # one compiled layer, but the cache is stacked (copied) on every call
      stack = nn.scan(DecoderLayer, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast, nn.broadcast,
                               LayerCache(0, 0, nn.broadcast, nn.broadcast, nn.broadcast)),
                      length=cfg.n_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      stacked = cache._replace(keys=jnp.stack(cache.keys), values=jnp.stack(cache.values))
      x, (keys, values) = stack(cfg, name="layers")(x, segment_ids, positions, stacked)
      return x, (tuple(keys), tuple(values))
    keys, values = [], []
    for i in range(cfg.n_layers):
      layer_cache = cache._replace(keys=cache.keys[i], values=cache.values[i])
      x, (k, v) = DecoderLayer(cfg, name=f"layers_{i}")(x, segment_ids, positions, layer_cache)
      keys.append(k)
      values.append(v)
    return x, (tuple(keys), tuple(values))


def param_shapes(config: DecoderConfig) -> Any:
  """Decoder(config)'s parameter tree without allocating it: jax.ShapeDtypeStruct leaves, each in an
  nn.Partitioned box that holds its logical axis names (`nn.get_partition_spec` reads them, `nn.unbox`
  drops them).

  Parameters do not depend on the attention implementation, so the tree is traced with dense attention:
  it needs no mesh and no logical axis rules, whatever `config.attention` is.
  """
  tokens = jnp.zeros((1, 1), jnp.int32)
  model = Decoder(dataclasses.replace(config, attention="dense"))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens + 1, tokens))["params"]


def abstract_params(config: DecoderConfig, sharding: jax.sharding.Sharding | None = None, *,
                    mesh: jax.sharding.Mesh | None = None, rules: LogicalRules | None = None,
                    dtype: Any = None) -> Any:
  """Decoder(config)'s parameters as unboxed jax.ShapeDtypeStruct leaves, the target Orbax restores into.

  Args:
    config: the model.
    sharding: one sharding for every leaf (e.g. a SingleDeviceSharding); or
    mesh, rules: shard each leaf by its logical axis names under these logical axis rules.
    dtype: the floating leaves' dtype (default: as the model stores them, config.param_dtype).
  """
  if mesh is not None and (sharding is not None or rules is None):
    raise ValueError("abstract_params takes either `sharding`, or `mesh` with `rules`")
  boxed = param_shapes(config)

  def abstract(leaf: jax.ShapeDtypeStruct, leaf_sharding: Any) -> jax.ShapeDtypeStruct:
    cast = dtype is not None and jnp.issubdtype(leaf.dtype, jnp.floating)
    return jax.ShapeDtypeStruct(leaf.shape, dtype if cast else leaf.dtype, sharding=leaf_sharding)

  if mesh is None:
    return jax.tree.map(lambda leaf: abstract(leaf, sharding), nn.unbox(boxed))
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  return jax.tree.map(abstract, nn.unbox(boxed), shardings)
