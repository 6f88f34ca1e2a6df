"""Ring attention: the length axis sharded over the `sequence` mesh axis.

Each device keeps its query chunk; key/value chunks, with their segment ids and positions, travel
around the ring of `sequence` devices with `jax.lax.ppermute`, one hop per step, and are folded into
a float32 online softmax by the blockwise kernels. The backward pass runs the ring again: dq builds up
locally while the dk/dv accumulators travel with their key/value chunk and arrive back at its owner
after the last hop. Causality is by position, so any layout of the length axis (contiguous or
zig-zag, xbook.data.zigzag) gives the same result; block pairs masked by causality are skipped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from xbook.model import blockwise_attention as blockwise
from xbook.model import loops

SEQUENCE_AXIS = "sequence"
BATCH_AXES = ("data", "fsdp")
HEADS_AXIS = "tensor"


def _ring_shard_fn(axis_name: str, axis_size: int, block_q: int, block_kv: int):
  """Per-device attention (q chunk vs every k/v chunk of the ring) with its custom VJP.

  The returned function maps local chunks q [b, q_chunk, h, g, d], k/v [b, kv_chunk, h, d],
  segment ids and positions [b, chunk] to (out [b, q_chunk, h, g, d], lse [b, q_chunk, h, g]). Inside,
  the chunks travel and are folded in the blockwise kernel layout (head-major,
  `blockwise.to_kernel_layout`), transposed once on the way in and once on the way out.
  """
  perm = [(i, (i + 1) % axis_size) for i in range(axis_size)]

  def rotate(tree):
    if axis_size == 1:
      return tree
    return jax.tree.map(lambda x: jax.lax.ppermute(x, axis_name, perm), tree)

  def forward(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions):
    def fold(stats, kv):
      kb, vb, kv_seg, kv_pos = kv
      return blockwise.accumulate(stats, q, kb, vb, q_segment_ids, kv_seg, q_positions, kv_pos,
                                  block_q=block_q, block_kv=block_kv)

    def step(carry, _):
      stats, kv = carry
      # The hop is independent of this step's compute, so it can overlap with it.
      return (fold(stats, kv), rotate(kv)), None

    kv = (k, v, kv_segment_ids, kv_positions)
    (stats, kv), _ = loops.scan(step, (blockwise.init_stats(q), kv), length=axis_size - 1)
    return blockwise.finalize(fold(stats, kv), q.dtype)

  @jax.custom_vjp
  def attend(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions):
    return forward(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions)

  def attend_fwd(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions):
    out, lse = forward(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions)
    return (out, lse), (q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, out, lse)

  def attend_bwd(residuals, cotangents):
    q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions, out, lse = residuals
    d_out = cotangents[0].astype(q.dtype)
    delta = blockwise.output_delta(out, d_out, cotangents[1])

    def grads(dq, kv, dkv):
      kb, vb, kv_seg, kv_pos = kv
      dq_part, dk_part, dv_part = blockwise.accumulate_grads(
          q, kb, vb, d_out, lse, delta, q_segment_ids, kv_seg, q_positions, kv_pos,
          block_q=block_q, block_kv=block_kv)
      return dq + dq_part, (dkv[0] + dk_part, dkv[1] + dv_part)

    def step(carry, _):
      dq, kv, dkv = carry
      dq, dkv = grads(dq, kv, dkv)
      return (dq, rotate(kv), rotate(dkv)), None

    kv = (k, v, kv_segment_ids, kv_positions)
    dkv = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    (dq, kv, dkv), _ = loops.scan(step, (jnp.zeros(q.shape, jnp.float32), kv, dkv),
                                    length=axis_size - 1)
    dq, dkv = grads(dq, kv, dkv)
    # The last hop brings each dk/dv accumulator home to the device that owns its k/v chunk.
    dk, dv = rotate(dkv)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None, None

  attend.defvjp(attend_fwd, attend_bwd)

  def attend_length_major(q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions):
    out, lse = attend(*blockwise.to_kernel_layout(q, k, v), q_segment_ids, kv_segment_ids,
                      q_positions, kv_positions)
    return blockwise.from_kernel_layout(out, lse)

  return attend_length_major


def ring_attention_with_lse(q: jax.Array, k: jax.Array, v: jax.Array, *, q_segment_ids: jax.Array,
                            kv_segment_ids: jax.Array, q_positions: jax.Array,
                            kv_positions: jax.Array, block_q: int = blockwise.DEFAULT_BLOCK_Q,
                            block_kv: int = blockwise.DEFAULT_BLOCK_KV
                            ) -> tuple[jax.Array, jax.Array]:
  """Ring attention returning (out, lse); see `ring_attention`.

  Returns:
    out [batch, q_len, n_kv_heads, group, head_dim] in q's dtype, sharded like q, and lse
    [batch, q_len, n_kv_heads, group] float32 (-inf for queries with no visible key), sharded
    (batch, sequence, tensor, -). Both are differentiable.
  """
  mesh = jax.sharding.get_abstract_mesh()
  sizes = {} if mesh.empty else dict(mesh.shape)
  split = lambda axis: axis if sizes.get(axis, 1) > 1 else None
  batch = tuple(a for a in BATCH_AXES if split(a)) or None
  length, heads = split(SEQUENCE_AXIS), split(HEADS_AXIS)
  n_shards = sizes.get(SEQUENCE_AXIS, 1)
  attend = _ring_shard_fn(SEQUENCE_AXIS, n_shards,
                          blockwise.block_size(q.shape[1] // n_shards, block_q),
                          blockwise.block_size(k.shape[1] // n_shards, block_kv))
  args = (q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions)
  if batch is None and length is None and heads is None:
    return attend(*args)
  q_spec = P(batch, length, heads, None, None)
  kv_spec = P(batch, length, heads, None)
  token_spec = P(batch, length)
  # check_vma off: the kernels' scan carries start as per-device zeros, and the custom VJP (not
  # shard_map's transpose) defines the backward pass.
  sharded = jax.shard_map(
      attend, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec) + (token_spec,) * 4,
      out_specs=(q_spec, P(batch, length, heads, None)), check_vma=False)
  return sharded(*args)


def ring_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, q_segment_ids: jax.Array,
                   kv_segment_ids: jax.Array, q_positions: jax.Array, kv_positions: jax.Array,
                   block_q: int = blockwise.DEFAULT_BLOCK_Q,
                   block_kv: int = blockwise.DEFAULT_BLOCK_KV) -> jax.Array:
  """Attention with the length sharded over the `sequence` axis of the ambient mesh.

  Runs `jax.shard_map` over `jax.sharding.get_abstract_mesh()` (set by `jax.set_mesh`), splitting
  batch over ("data", "fsdp"), length over "sequence" and kv heads over "tensor" (axes of size 1 or
  absent are left whole; without a mesh it runs on one device). Per device, memory is that of
  blockwise attention on a [q_chunk, kv_chunk] pair; no device gathers the full-length k/v.

  Args:
    q: [batch, q_len, n_kv_heads, group, head_dim]  (activation_batch, activation_length,
      activation_kv_heads, activation_heads, -).
    k, v: [batch, kv_len, n_kv_heads, head_dim]  (activation_batch, activation_length,
      activation_kv_heads, -).
    q_segment_ids, q_positions: [batch, q_len]; kv_segment_ids, kv_positions: [batch, kv_len]
      (activation_batch, activation_length), in the same length layout as q and k.
    block_q, block_kv: block sizes of the per-device blockwise kernel (see
      `blockwise_attention.block_size`).

  Returns:
    [batch, q_len, n_kv_heads, group, head_dim] in q's dtype, sharded like q.
  """
  return ring_attention_with_lse(
      q, k, v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, q_positions=q_positions,
      kv_positions=kv_positions, block_q=block_q, block_kv=block_kv)[0]
