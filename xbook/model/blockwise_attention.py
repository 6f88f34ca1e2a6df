"""Memory-efficient attention on one device: an online softmax over query and key/value blocks.

The block kernels here (`init_stats`, `accumulate`, `finalize`, `accumulate_grads`) work on one pair
of query and key/value chunks and are shared with ring attention, which feeds them the key/value
chunks that travel around the device ring.

Shapes follow xbook.model.attention: q [batch, q_len, n_kv_heads, group, head_dim], k/v
[batch, kv_len, n_kv_heads, head_dim], segment ids and positions [batch, len]. Softmax statistics
(running max, running sum, log-sum-exp) are float32 [batch, q_len, n_kv_heads, group].
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from xbook.model import loops
from xbook.model.attention_mask import MASKED, attention_mask

Stats = tuple[jax.Array, jax.Array, jax.Array]

DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_KV = 512


def _blocks(x: jax.Array, size: int) -> jax.Array:
  """[batch, len, ...] -> [len // size, batch, size, ...] (blocks leading, for lax.scan)."""
  batch, length = x.shape[:2]
  if length % size:
    raise ValueError(f"length {length} is not a multiple of the block size {size}")
  x = x.reshape((batch, length // size, size) + x.shape[2:])
  return jnp.moveaxis(x, 1, 0)


def _unblocks(x: jax.Array) -> jax.Array:
  """Inverse of `_blocks`: [n_blocks, batch, size, ...] -> [batch, n_blocks * size, ...]."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape((x.shape[0], x.shape[1] * x.shape[2]) + x.shape[3:])


def block_size(length: int, requested: int) -> int:
  """The block size used for a chunk of `length`: its largest divisor not above `requested`."""
  size = max(1, min(length, requested))
  while length % size:
    size -= 1
  return size


def blocks_interact(q_segment_ids: jax.Array, kv_segment_ids: jax.Array, q_positions: jax.Array,
                    kv_positions: jax.Array) -> jax.Array:
  """Scalar bool: whether any key of a block may be visible to any query of a block.

  Decided from positions of non-padding tokens: a key/value block whose smallest position exceeds
  the query block's largest position is fully masked by causality (all-padding blocks likewise).
  Arguments are [batch, block] and the answer is taken over the whole batch.
  """
  big = jnp.iinfo(jnp.int32).max
  kv_min = jnp.min(jnp.where(kv_segment_ids > 0, kv_positions, big), axis=1)
  q_max = jnp.max(jnp.where(q_segment_ids > 0, q_positions, -big), axis=1)
  return jnp.any(kv_min <= q_max)


def _scores(q: jax.Array, k: jax.Array) -> jax.Array:
  """float32 scaled scores [batch, q, n_kv_heads, group, kv] of q [b, q, h, g, d], k [b, kv, h, d]."""
  scale = q.shape[-1] ** -0.5
  return jnp.einsum("bqhgd,bkhd->bqhgk", q, k, preferred_element_type=jnp.float32) * scale


def _mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions) -> jax.Array:
  """Boolean [batch, q, 1, 1, kv], broadcasting against scores."""
  return attention_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions)[:, :, None, None, :]


def init_stats(q: jax.Array) -> Stats:
  """Empty online-softmax state for q [b, q_len, h, g, d].

  Returns (acc [b, q_len, h, g, d], running max [b, q_len, h, g], running sum [b, q_len, h, g]),
  all float32.
  """
  acc = jnp.zeros(q.shape, jnp.float32)
  row_max = jnp.full(q.shape[:-1], MASKED, jnp.float32)
  row_sum = jnp.zeros(q.shape[:-1], jnp.float32)
  return acc, row_max, row_sum


def _update(stats: Stats, q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions) -> Stats:
  """One online-softmax step of a query block against a key/value block."""
  acc, row_max, row_sum = stats
  mask = _mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions)
  scores = jnp.where(mask, _scores(q, k), MASKED)
  new_max = jnp.maximum(row_max, jnp.max(scores, axis=-1))
  probs = jnp.where(mask, jnp.exp(scores - new_max[..., None]), 0.0)
  correction = jnp.exp(row_max - new_max)
  row_sum = row_sum * correction + jnp.sum(probs, axis=-1)
  pv = jnp.einsum("bqhgk,bkhd->bqhgd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return acc * correction[..., None] + pv, new_max, row_sum


def accumulate(stats: Stats, q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
               kv_segment_ids: jax.Array, q_positions: jax.Array, kv_positions: jax.Array, *,
               block_q: int, block_kv: int) -> Stats:
  """Folds the keys/values of one chunk into the online-softmax state of a query chunk.

  Args:
    stats: from `init_stats(q)` or a previous `accumulate` over the same queries.
    q: [batch, q_len, n_kv_heads, group, head_dim]; k, v: [batch, kv_len, n_kv_heads, head_dim].
    q_segment_ids, q_positions: [batch, q_len]; kv_segment_ids, kv_positions: [batch, kv_len].
    block_q, block_kv: block sizes dividing q_len and kv_len.

  Returns:
    The updated state. Block pairs masked by causality (`blocks_interact`) are skipped.
  """
  q_blocks = [_blocks(x, block_q) for x in (q, q_segment_ids, q_positions)]
  stat_blocks = [_blocks(x, block_q) for x in stats]
  kv_blocks = [_blocks(x, block_kv) for x in (k, v, kv_segment_ids, kv_positions)]

  def per_q_block(_, xs):
    (qb, q_seg, q_pos), block_stats = xs[:3], xs[3:]

    def per_kv_block(carry, ys):
      kb, vb, kv_seg, kv_pos = ys
      carry = jax.lax.cond(
          blocks_interact(q_seg, kv_seg, q_pos, kv_pos),
          lambda c: _update(c, qb, kb, vb, q_seg, kv_seg, q_pos, kv_pos), lambda c: c, carry)
      return carry, None

    block_stats, _ = loops.scan(per_kv_block, tuple(block_stats), kv_blocks)
    return None, block_stats

  _, stat_blocks = loops.scan(per_q_block, None, (*q_blocks, *stat_blocks))
  return tuple(_unblocks(x) for x in stat_blocks)


def finalize(stats: Stats, dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
  """(out [b, q_len, h, g, d] in `dtype`, lse [b, q_len, h, g] float32) from the final state.

  Queries that saw no visible key (padding) get a zero output and lse -inf.
  """
  acc, row_max, row_sum = stats
  seen = row_sum > 0
  out = acc / jnp.where(seen, row_sum, 1.0)[..., None]
  lse = jnp.where(seen, row_max + jnp.log(jnp.where(seen, row_sum, 1.0)), -jnp.inf)
  return out.astype(dtype), lse


def _pair_grads(q, k, v, d_out, lse, delta, q_segment_ids, kv_segment_ids, q_positions, kv_positions):
  """(dq, dk, dv) float32 of one query block against one key/value block."""
  scale = q.shape[-1] ** -0.5
  mask = _mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions)
  probs = jnp.where(mask, jnp.exp(_scores(q, k) - lse[..., None]), 0.0)
  dv = jnp.einsum("bqhgk,bqhgd->bkhd", probs.astype(d_out.dtype), d_out,
                  preferred_element_type=jnp.float32)
  d_probs = jnp.einsum("bqhgd,bkhd->bqhgk", d_out, v, preferred_element_type=jnp.float32)
  d_scores = (probs * (d_probs - delta[..., None]) * scale).astype(q.dtype)
  dq = jnp.einsum("bqhgk,bkhd->bqhgd", d_scores, k, preferred_element_type=jnp.float32)
  dk = jnp.einsum("bqhgk,bqhgd->bkhd", d_scores, q, preferred_element_type=jnp.float32)
  return dq, dk, dv


def accumulate_grads(q: jax.Array, k: jax.Array, v: jax.Array, d_out: jax.Array, lse: jax.Array,
                     delta: jax.Array, q_segment_ids: jax.Array, kv_segment_ids: jax.Array,
                     q_positions: jax.Array, kv_positions: jax.Array, *, block_q: int, block_kv: int
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Gradient contributions of one query chunk attending to one key/value chunk.

  Probabilities are recomputed from the saved log-sum-exp, block by block.

  Args:
    q, k, v, segment ids, positions: as in `accumulate`.
    d_out: [batch, q_len, n_kv_heads, group, head_dim] cotangent of the output.
    lse: [batch, q_len, n_kv_heads, group] float32 log-sum-exp over all keys (not just this chunk).
    delta: [batch, q_len, n_kv_heads, group] float32, sum(d_out * out, -1) minus the lse cotangent.
    block_q, block_kv: block sizes dividing q_len and kv_len.

  Returns:
    float32 (dq [b, q_len, h, g, d], dk [b, kv_len, h, d], dv [b, kv_len, h, d]).
  """
  q_blocks = [_blocks(x, block_q) for x in (q, d_out, lse, delta, q_segment_ids, q_positions)]
  kv_blocks = [_blocks(x, block_kv) for x in (k, v, kv_segment_ids, kv_positions)]
  zeros_kv = jnp.zeros(kv_blocks[0].shape, jnp.float32)

  def per_q_block(dkv, xs):
    qb, dob, lse_b, delta_b, q_seg, q_pos = xs

    def per_kv_block(dq, ys):
      kb, vb, kv_seg, kv_pos = ys
      zeros = (jnp.zeros(qb.shape, jnp.float32), jnp.zeros(kb.shape, jnp.float32),
               jnp.zeros(vb.shape, jnp.float32))
      grads = jax.lax.cond(
          blocks_interact(q_seg, kv_seg, q_pos, kv_pos),
          lambda: _pair_grads(qb, kb, vb, dob, lse_b, delta_b, q_seg, kv_seg, q_pos, kv_pos),
          lambda: zeros)
      return dq + grads[0], grads[1:]

    dq, (dk, dv) = loops.scan(per_kv_block, jnp.zeros(qb.shape, jnp.float32), kv_blocks)
    return (dkv[0] + dk, dkv[1] + dv), dq

  (dk, dv), dq = loops.scan(per_q_block, (zeros_kv, zeros_kv), q_blocks)
  return _unblocks(dq), _unblocks(dk), _unblocks(dv)


def output_delta(out: jax.Array, d_out: jax.Array, d_lse: jax.Array) -> jax.Array:
  """float32 [b, q_len, h, g]: sum(d_out * out, -1) - d_lse, the softmax-backward row term."""
  rowdot = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  return rowdot - d_lse.astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _blockwise(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, block_q, block_kv):
  return _blockwise_fwd(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, block_q,
                        block_kv)[0]


def _blockwise_fwd(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, block_q,
                   block_kv):
  stats = accumulate(init_stats(q), q, k, v, q_segment_ids, kv_segment_ids, q_positions,
                     kv_positions, block_q=block_q, block_kv=block_kv)
  out, lse = finalize(stats, q.dtype)
  residuals = (q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, out, lse)
  return (out, lse), residuals


def _blockwise_bwd(block_q, block_kv, residuals, cotangents):
  q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, out, lse = residuals
  d_out, d_lse = cotangents
  d_out = d_out.astype(q.dtype)
  delta = output_delta(out, d_out, d_lse)
  dq, dk, dv = accumulate_grads(q, k, v, d_out, lse, delta, q_segment_ids, kv_segment_ids,
                                q_positions, kv_positions, block_q=block_q, block_kv=block_kv)
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None, None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention_with_lse(q: jax.Array, k: jax.Array, v: jax.Array, *, q_segment_ids: jax.Array,
                                 kv_segment_ids: jax.Array, q_positions: jax.Array,
                                 kv_positions: jax.Array, block_q: int = DEFAULT_BLOCK_Q,
                                 block_kv: int = DEFAULT_BLOCK_KV) -> tuple[jax.Array, jax.Array]:
  """Blockwise attention returning (out, lse); see `blockwise_attention`.

  Returns:
    out [batch, q_len, n_kv_heads, group, head_dim] in q's dtype and lse [batch, q_len, n_kv_heads,
    group] float32 (-inf for queries with no visible key). Both are differentiable.
  """
  return _blockwise(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions,
                    block_size(q.shape[1], block_q), block_size(k.shape[1], block_kv))


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, q_segment_ids: jax.Array,
                        kv_segment_ids: jax.Array, q_positions: jax.Array, kv_positions: jax.Array,
                        block_q: int = DEFAULT_BLOCK_Q, block_kv: int = DEFAULT_BLOCK_KV) -> jax.Array:
  """Memory-efficient attention: never materializes more than a [block_q, block_kv] score tile.

  Scans query blocks and, inside, key/value blocks with an online softmax (float32 running max and
  sum), skipping block pairs fully masked by causality. A custom VJP recomputes the probabilities
  block by block from the saved log-sum-exp (flash-attention backward), so residuals are O(length),
  not O(length^2). Logical sharding is left to the caller (no collectives).

  Args:
    q: [batch, q_len, n_kv_heads, group, head_dim]  (activation_batch, activation_length,
      activation_kv_heads, activation_heads, -).
    k, v: [batch, kv_len, n_kv_heads, head_dim].
    q_segment_ids, q_positions: [batch, q_len]; kv_segment_ids, kv_positions: [batch, kv_len].
    block_q, block_kv: requested block sizes; each becomes the largest divisor of its length not above
      it (`block_size`).

  Returns:
    [batch, q_len, n_kv_heads, group, head_dim] in q's dtype.
  """
  return blockwise_attention_with_lse(
      q, k, v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, q_positions=q_positions,
      kv_positions=kv_positions, block_q=block_q, block_kv=block_kv)[0]
