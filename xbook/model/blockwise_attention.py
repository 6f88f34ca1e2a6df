"""Memory-efficient attention on one device: an online softmax over query and key/value blocks.

The block kernels here (`init_stats`, `accumulate`, `finalize`, `accumulate_grads`) work on one pair
of query and key/value chunks and are shared with ring attention, which feeds them the key/value
chunks that travel around the device ring.

The public functions take xbook.model.attention's length-major shapes (q [batch, q_len, n_kv_heads,
group, head_dim]). The kernels work head-major, in the *kernel layout* of `to_kernel_layout`:
q [batch, n_kv_heads, group, q_len, head_dim], k/v [batch, n_kv_heads, kv_len, head_dim], segment
ids and positions [batch, len], softmax statistics (running max, running sum, log-sum-exp) float32
[batch, n_kv_heads, group, q_len]. Then every score tile [batch, n_kv_heads, group, block_q,
block_kv] is a plain batched matmul over (batch, n_kv_heads) with contiguous operands, and no tile is
transposed on its way between the two matmuls of a block pair (on the CPU, those transposes cost
as much as the matmuls).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from xbook.model import loops
from xbook.model.attention_mask import MASKED_SCORE, attention_mask

Stats = tuple[jax.Array, jax.Array, jax.Array]

DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_KV = 512


def to_kernel_layout(q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[jax.Array, ...]:
  """q [b, q_len, h, g, d] -> [b, h, g, q_len, d]; k, v [b, kv_len, h, d] -> [b, h, kv_len, d]."""
  return jnp.transpose(q, (0, 2, 3, 1, 4)), jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)


def from_kernel_layout(out: jax.Array, lse: jax.Array) -> tuple[jax.Array, jax.Array]:
  """out [b, h, g, q_len, d] -> [b, q_len, h, g, d]; lse [b, h, g, q_len] -> [b, q_len, h, g]."""
  return jnp.transpose(out, (0, 3, 1, 2, 4)), jnp.transpose(lse, (0, 3, 1, 2))


def _blocks(x: jax.Array, size: int, axis: int) -> jax.Array:
  """Splits `axis` (the length) into blocks and moves them first, for lax.scan:
  [..., len, ...] -> [len // size, ..., size, ...]."""
  length = x.shape[axis]
  if length % size:
    raise ValueError(f"length {length} is not a multiple of the block size {size}")
  x = x.reshape(x.shape[:axis] + (length // size, size) + x.shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def _unblocks(x: jax.Array, axis: int) -> jax.Array:
  """Inverse of `_blocks(., ., axis)`: [n_blocks, ..., size, ...] -> [..., n_blocks * size, ...]."""
  x = jnp.moveaxis(x, 0, axis)
  return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2:])


# Length axis of each kernel-layout array: tokens [b, len], q-like [b, h, g, len, d], its statistics
# [b, h, g, len], k/v [b, h, len, d].
_TOKEN_AXIS, _Q_AXIS, _STAT_AXIS, _KV_AXIS = 1, 3, 3, 2


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


def blocks_fully_visible(q_segment_ids: jax.Array, kv_segment_ids: jax.Array, q_positions: jax.Array,
                         kv_positions: jax.Array) -> jax.Array:
  """Scalar bool: whether every query of a block sees every key of a block (no mask needed).

  True when, in every row of the batch, all tokens of both blocks belong to one non-padding segment
  and the largest key position is at most the smallest query position. Arguments are [batch, block].
  """
  segment = q_segment_ids[:, :1]
  one_segment = (jnp.all(q_segment_ids == segment, axis=1) & jnp.all(kv_segment_ids == segment, axis=1)
                 & (segment[:, 0] > 0))
  causal = jnp.max(kv_positions, axis=1) <= jnp.min(q_positions, axis=1)
  return jnp.all(one_segment & causal)


# What a block pair needs, the branch index of `_by_visibility`: nothing (no query sees a key), a mask
# (some scores are hidden), or the plain computation (every query sees every key).
_PAIR_SKIPPED, _PAIR_MASKED, _PAIR_FULL = 0, 1, 2


def _by_visibility(q_segment_ids, kv_segment_ids, q_positions, kv_positions, skip, masked, full,
                   *operands):
  """Runs `skip`, `masked(mask, *operands)` or `full(*operands)` for a block pair: pairs no query
  can see are skipped, pairs every query sees entirely run without building or applying a mask (the
  blocks below the causal diagonal of one long book), and the rest are masked."""
  ids = (q_segment_ids, kv_segment_ids, q_positions, kv_positions)
  branch = jnp.where(blocks_fully_visible(*ids), _PAIR_FULL,
                     jnp.where(blocks_interact(*ids), _PAIR_MASKED, _PAIR_SKIPPED))
  return jax.lax.switch(branch, [skip, lambda *xs: masked(_mask(*ids), *xs), full], *operands)


def _scores(q: jax.Array, k: jax.Array) -> jax.Array:
  """float32 scaled scores [b, h, g, q, kv] of q [b, h, g, q, d] and k [b, h, kv, d]."""
  scale = q.shape[-1] ** -0.5
  return jnp.einsum("bhgqd,bhkd->bhgqk", q, k, preferred_element_type=jnp.float32) * scale


def _mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions) -> jax.Array:
  """Boolean [b, 1, 1, q, kv], broadcasting against scores."""
  return attention_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions)[:, None, None]


def init_stats(q: jax.Array) -> Stats:
  """Empty online-softmax state for q [b, h, g, q_len, d] (kernel layout).

  Returns (acc [b, h, g, q_len, d], running max [b, h, g, q_len], running sum [b, h, g, q_len]),
  all float32.
  """
  acc = jnp.zeros(q.shape, jnp.float32)
  row_max = jnp.full(q.shape[:-1], MASKED_SCORE, jnp.float32)
  row_sum = jnp.zeros(q.shape[:-1], jnp.float32)
  return acc, row_max, row_sum


def _where_visible(mask: jax.Array | None, x: jax.Array, fill: float) -> jax.Array:
  """x where the mask lets the query see the key, `fill` elsewhere; x itself when there is no mask."""
  return x if mask is None else jnp.where(mask, x, fill)


def _update(mask: jax.Array | None, stats: Stats, q, k, v) -> Stats:
  """One online-softmax step of a query block against a key/value block (mask None: all visible)."""
  acc, row_max, row_sum = stats
  scores = _where_visible(mask, _scores(q, k), MASKED_SCORE)
  new_max = jnp.maximum(row_max, jnp.max(scores, axis=-1))
  probs = _where_visible(mask, jnp.exp(scores - new_max[..., None]), 0.0)
  correction = jnp.exp(row_max - new_max)
  row_sum = row_sum * correction + jnp.sum(probs, axis=-1)
  pv = jnp.einsum("bhgqk,bhkd->bhgqd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return acc * correction[..., None] + pv, new_max, row_sum


def _token_blocks(x: jax.Array, q_segment_ids, kv_segment_ids, q_positions, kv_positions, block_q: int,
                  block_kv: int) -> tuple[list[jax.Array], list[jax.Array]]:
  """The segment ids and positions in blocks: ([q ids, q positions], [kv ids, kv positions]), each
  [n_blocks, batch, block], after tying them to the activation `x` (no computation).

  In a scanned layer stack the segment ids and positions are the same for every layer, and when the
  step is differentiated JAX hoists what depends only on them out of the layer loop: every block
  pair's mask, branch choice and branch placeholders, stacked over all block pairs. That is
  quadratic in the length (hundreds of GiB per chip at 131k tokens); the optimization barrier keeps
  the kernel's per-block work inside the layer, where it is computed one block pair at a time.
  """
  q_segment_ids, kv_segment_ids, q_positions, kv_positions = jax.lax.optimization_barrier(
      (x, q_segment_ids, kv_segment_ids, q_positions, kv_positions))[1:]
  return ([_blocks(t, block_q, _TOKEN_AXIS) for t in (q_segment_ids, q_positions)],
          [_blocks(t, block_kv, _TOKEN_AXIS) for t in (kv_segment_ids, kv_positions)])


def accumulate(stats: Stats, q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
               kv_segment_ids: jax.Array, q_positions: jax.Array, kv_positions: jax.Array, *,
               block_q: int, block_kv: int) -> Stats:
  """Folds the keys/values of one chunk into the online-softmax state of a query chunk.

  Args:
    stats: from `init_stats(q)` or a previous `accumulate` over the same queries.
    q: [batch, n_kv_heads, group, q_len, head_dim]; k, v: [batch, n_kv_heads, kv_len, head_dim]
      (kernel layout).
    q_segment_ids, q_positions: [batch, q_len]; kv_segment_ids, kv_positions: [batch, kv_len].
    block_q, block_kv: block sizes dividing q_len and kv_len.

  Returns:
    The updated state. Block pairs masked by causality (`blocks_interact`) are skipped, and pairs
    without any masked score (`blocks_fully_visible`) skip the mask.
  """
  q_tokens, kv_tokens = _token_blocks(q, q_segment_ids, kv_segment_ids, q_positions, kv_positions,
                                      block_q, block_kv)
  q_blocks = [_blocks(q, block_q, _Q_AXIS), *q_tokens]
  stat_blocks = [_blocks(x, block_q, axis) for x, axis in zip(stats, (_Q_AXIS, _STAT_AXIS, _STAT_AXIS))]
  kv_blocks = [_blocks(k, block_kv, _KV_AXIS), _blocks(v, block_kv, _KV_AXIS), *kv_tokens]

  def per_q_block(_, xs):
    (qb, q_seg, q_pos), block_stats = xs[:3], xs[3:]

    def per_kv_block(carry, ys):
      kb, vb, kv_seg, kv_pos = ys
      update = lambda mask, c: _update(mask, c, qb, kb, vb)
      carry = _by_visibility(q_seg, kv_seg, q_pos, kv_pos, lambda c: c, update,
                             functools.partial(update, None), carry)
      return carry, None

    block_stats, _ = loops.scan(per_kv_block, tuple(block_stats), kv_blocks)
    return None, block_stats

  _, stat_blocks = loops.scan(per_q_block, None, (*q_blocks, *stat_blocks))
  return tuple(_unblocks(x, axis) for x, axis in zip(stat_blocks, (_Q_AXIS, _STAT_AXIS, _STAT_AXIS)))


def finalize(stats: Stats, dtype: jnp.dtype) -> tuple[jax.Array, jax.Array]:
  """(out [b, h, g, q_len, d] in `dtype`, lse [b, h, g, q_len] float32) from the final state.

  Queries that saw no visible key (padding) get a zero output and lse -inf.
  """
  acc, row_max, row_sum = stats
  seen = row_sum > 0
  out = acc / jnp.where(seen, row_sum, 1.0)[..., None]
  lse = jnp.where(seen, row_max + jnp.log(jnp.where(seen, row_sum, 1.0)), -jnp.inf)
  return out.astype(dtype), lse


def _pair_grads(mask: jax.Array | None, q, k, v, d_out, lse, delta):
  """float32 (dq [b, h, g, q, d], dk^T [b, h, d, kv], dv^T [b, h, d, kv]) of one query block against
  one key/value block (mask None: all visible).

  dk and dv come transposed: as q^T.dS rather than dS^T.q, the [q, kv] tile is a matmul operand in
  the layout it was produced in (contracting its leading axis costs the CPU a copy of the tile and
  halves the matmul rate).
  """
  scale = q.shape[-1] ** -0.5
  probs = _where_visible(mask, jnp.exp(_scores(q, k) - lse[..., None]), 0.0)
  dv_t = jnp.einsum("bhgqd,bhgqk->bhdk", d_out, probs.astype(d_out.dtype),
                    preferred_element_type=jnp.float32)
  d_probs = jnp.einsum("bhgqd,bhkd->bhgqk", d_out, v, preferred_element_type=jnp.float32)
  d_scores = (probs * (d_probs - delta[..., None]) * scale).astype(q.dtype)
  dq = jnp.einsum("bhgqk,bhkd->bhgqd", d_scores, k, preferred_element_type=jnp.float32)
  dk_t = jnp.einsum("bhgqd,bhgqk->bhdk", q, d_scores, preferred_element_type=jnp.float32)
  return dq, dk_t, dv_t


def accumulate_grads(q: jax.Array, k: jax.Array, v: jax.Array, d_out: jax.Array, lse: jax.Array,
                     delta: jax.Array, q_segment_ids: jax.Array, kv_segment_ids: jax.Array,
                     q_positions: jax.Array, kv_positions: jax.Array, *, block_q: int, block_kv: int
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Gradient contributions of one query chunk attending to one key/value chunk.

  Probabilities are recomputed from the saved log-sum-exp, block by block.

  Args:
    q, k, v, segment ids, positions: as in `accumulate` (kernel layout).
    d_out: [batch, n_kv_heads, group, q_len, head_dim] cotangent of the output.
    lse: [batch, n_kv_heads, group, q_len] float32 log-sum-exp over all keys (not just this chunk).
    delta: [batch, n_kv_heads, group, q_len] float32, sum(d_out * out, -1) minus the lse cotangent.
    block_q, block_kv: block sizes dividing q_len and kv_len.

  Returns:
    float32 (dq [b, h, g, q_len, d], dk [b, h, kv_len, d], dv [b, h, kv_len, d]).
  """
  q_tokens, kv_tokens = _token_blocks(d_out, q_segment_ids, kv_segment_ids, q_positions, kv_positions,
                                      block_q, block_kv)
  q_blocks = [_blocks(x, block_q, axis) for x, axis in (
      (q, _Q_AXIS), (d_out, _Q_AXIS), (lse, _STAT_AXIS), (delta, _STAT_AXIS))] + q_tokens
  kv_blocks = [_blocks(k, block_kv, _KV_AXIS), _blocks(v, block_kv, _KV_AXIS), *kv_tokens]
  kv_t_shape = lambda x: x.shape[:-2] + x.shape[-1:] + x.shape[-2:-1]  # [.., kv, d] -> [.., d, kv]
  zeros_kv_t = jnp.zeros(kv_t_shape(kv_blocks[0]), jnp.float32)

  def per_q_block(dkv_t, xs):
    qb, dob, lse_b, delta_b, q_seg, q_pos = xs

    def per_kv_block(dq, ys):
      kb, vb, kv_seg, kv_pos = ys
      zeros = (jnp.zeros(qb.shape, jnp.float32), jnp.zeros(kv_t_shape(kb), jnp.float32),
               jnp.zeros(kv_t_shape(vb), jnp.float32))
      grads_of = lambda mask: _pair_grads(mask, qb, kb, vb, dob, lse_b, delta_b)
      grads = _by_visibility(q_seg, kv_seg, q_pos, kv_pos, lambda: zeros, grads_of,
                             functools.partial(grads_of, None))
      return dq + grads[0], grads[1:]

    dq, (dk_t, dv_t) = loops.scan(per_kv_block, jnp.zeros(qb.shape, jnp.float32), kv_blocks)
    return (dkv_t[0] + dk_t, dkv_t[1] + dv_t), dq

  (dk_t, dv_t), dq = loops.scan(per_q_block, (zeros_kv_t, zeros_kv_t), q_blocks)
  # [n_blocks, b, h, d, block_kv] -> [b, h, d, kv_len] -> [b, h, kv_len, d]
  dk, dv = (jnp.swapaxes(_unblocks(x, _KV_AXIS + 1), -1, -2) for x in (dk_t, dv_t))
  return _unblocks(dq, _Q_AXIS), dk, dv


def output_delta(out: jax.Array, d_out: jax.Array, d_lse: jax.Array) -> jax.Array:
  """float32 [b, h, g, q_len]: sum(d_out * out, -1) - d_lse, the softmax-backward row term."""
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
  out, lse = _blockwise(*to_kernel_layout(q, k, v), q_segment_ids, kv_segment_ids, q_positions,
                        kv_positions, block_size(q.shape[1], block_q), block_size(k.shape[1], block_kv))
  return from_kernel_layout(out, lse)


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
