"""The decoder-only language model: embeddings, a stack of DecoderLayers (scanned), final norm, logits."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from xbook.model.config import DecoderConfig
from xbook.model.layers import BATCH_LENGTH_EMBED, DecoderLayer, RMSNorm


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
  """

  config: DecoderConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, segment_ids: jax.Array, positions: jax.Array) -> jax.Array:
    cfg = self.config
    embed = nn.Embed(
        cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0),
                                                    ("vocab", "embed")),
        name="embed")
    x = nn.with_logical_constraint(embed(tokens), BATCH_LENGTH_EMBED)

    layer = DecoderLayer
    if cfg.remat != "none":
      layer = nn.remat(layer, policy=_remat_policy(cfg.remat), prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
      stack = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=(nn.broadcast, nn.broadcast), length=cfg.n_layers,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(cfg, name="layers")(x, segment_ids, positions)
    else:
      for i in range(cfg.n_layers):
        x, _ = layer(cfg, name=f"layers_{i}")(x, segment_ids, positions)

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
    return nn.with_logical_constraint(
        logits, ("activation_batch", "activation_length", "activation_vocab"))
