"""Attention implementations behind one interface.

Every implementation takes
  q: [batch, q_len, n_kv_heads, group, head_dim]   (group = n_heads // n_kv_heads; GQA without
                                                    repeating key/value heads)
  k, v: [batch, kv_len, n_kv_heads, head_dim]
  q_segment_ids: [batch, q_len], kv_segment_ids: [batch, kv_len]   (0 = padding; tokens attend only
                                                                    within their own segment)
  q_positions: [batch, q_len], kv_positions: [batch, kv_len]       (causal order)
and returns [batch, q_len, n_kv_heads, group, head_dim] in q's dtype, with softmax statistics in float32.

`dense` is the reference; blockwise and ring variants (issue 6) plug in under new names.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

AttentionFn = Callable[..., jax.Array]

_MASKED = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array, q_positions: jax.Array,
                   kv_positions: jax.Array) -> jax.Array:
  """Boolean [batch, q_len, kv_len]: same non-padding segment and key not after query."""
  same_segment = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
  not_padding = (q_segment_ids[:, :, None] > 0) & (kv_segment_ids[:, None, :] > 0)
  causal = kv_positions[:, None, :] <= q_positions[:, :, None]
  return same_segment & not_padding & causal


def dense_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, q_segment_ids: jax.Array,
                    kv_segment_ids: jax.Array, q_positions: jax.Array, kv_positions: jax.Array
                    ) -> jax.Array:
  """Plain softmax attention over the full [q_len, kv_len] score matrix."""
  scale = q.shape[-1] ** -0.5
  scores = jnp.einsum("bqhgd,bkhd->bhgqk", q, k, preferred_element_type=jnp.float32) * scale
  mask = attention_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions)
  scores = jnp.where(mask[:, None, None, :, :], scores, _MASKED)
  probs = jax.nn.softmax(scores, axis=-1)
  # Rows with no visible key (padding queries) get zero output rather than a uniform average.
  probs = probs * jnp.any(mask, axis=-1)[:, None, None, :, None]
  out = jnp.einsum("bhgqk,bkhd->bqhgd", probs.astype(v.dtype), v)
  return out.astype(q.dtype)


ATTENTION_IMPLS: dict[str, AttentionFn] = {"dense": dense_attention}


def get_attention(name: str) -> AttentionFn:
  if name not in ATTENTION_IMPLS:
    raise ValueError(f"unknown attention implementation {name!r}; available: {sorted(ATTENTION_IMPLS)}")
  return ATTENTION_IMPLS[name]
