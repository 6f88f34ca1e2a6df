"""Attention implementations behind one interface.

Every implementation takes
  q: [batch, q_len, n_kv_heads, group, head_dim]   (group = n_heads // n_kv_heads; GQA without
                                                    repeating key/value heads)
  k, v: [batch, kv_len, n_kv_heads, head_dim]
  q_segment_ids: [batch, q_len], kv_segment_ids: [batch, kv_len]   (0 = padding; tokens attend only
                                                                    within their own segment)
  q_positions: [batch, q_len], kv_positions: [batch, kv_len]       (causal order)
and returns [batch, q_len, n_kv_heads, group, head_dim] in q's dtype, with softmax statistics in float32.

`dense` is the reference; `blockwise` (one device, O(length) memory) and `ring` (length sharded over the
`sequence` mesh axis) compute the same function.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from xbook.model.attention_mask import MASKED_SCORE, attention_mask
from xbook.model.blockwise_attention import blockwise_attention
from xbook.model.ring_attention import ring_attention

AttentionFn = Callable[..., jax.Array]


def dense_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, q_segment_ids: jax.Array,
                    kv_segment_ids: jax.Array, q_positions: jax.Array, kv_positions: jax.Array,
                    sliding_window: int | None = None) -> jax.Array:
  """Plain softmax attention over the full [q_len, kv_len] score matrix (optionally windowed)."""
  scale = q.shape[-1] ** -0.5
  scores = jnp.einsum("bqhgd,bkhd->bhgqk", q, k, preferred_element_type=jnp.float32) * scale
  mask = attention_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions, sliding_window)
  scores = jnp.where(mask[:, None, None, :, :], scores, MASKED_SCORE)
  probs = jax.nn.softmax(scores, axis=-1)
  # Rows with no visible key (padding queries) get zero output rather than a uniform average.
  probs = probs * jnp.any(mask, axis=-1)[:, None, None, :, None]
  out = jnp.einsum("bhgqk,bkhd->bqhgd", probs.astype(v.dtype), v)
  return out.astype(q.dtype)


ATTENTION_IMPLS: dict[str, AttentionFn] = {
    "dense": dense_attention,
    "blockwise": blockwise_attention,
    "ring": ring_attention,
}


def get_attention(name: str) -> AttentionFn:
  if name not in ATTENTION_IMPLS:
    raise ValueError(f"unknown attention implementation {name!r}; available: {sorted(ATTENTION_IMPLS)}")
  return ATTENTION_IMPLS[name]
