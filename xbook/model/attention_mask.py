"""Which keys each query may see, shared by every attention implementation."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# The score of a key a query may not see: a finite stand-in for -inf (keeps max/exp arithmetic free of NaNs).
MASKED_SCORE = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array, q_positions: jax.Array,
                   kv_positions: jax.Array, sliding_window: int | None = None) -> jax.Array:
  """Boolean [batch, q_len, kv_len]: same non-padding segment and key not after query (and, with a
  sliding window W, fewer than W positions before it, so each query sees at most W keys)."""
  same_segment = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
  not_padding = (q_segment_ids[:, :, None] > 0) & (kv_segment_ids[:, None, :] > 0)
  distance = q_positions[:, :, None] - kv_positions[:, None, :]
  visible = distance >= 0
  if sliding_window is not None:
    visible &= distance < sliding_window
  return same_segment & not_padding & visible
