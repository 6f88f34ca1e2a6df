"""Ring attention: the length axis sharded over the mesh axes that the logical axis rules give it.

Each device keeps its query chunk; key/value chunks, with their segment ids and positions, travel
around the ring of devices that shard the length with `jax.lax.ppermute`, one hop per step, and are
folded into a float32 online softmax by the blockwise kernels. The backward pass runs the ring again: dq
builds up locally while the dk/dv accumulators travel with their key/value chunk and arrive back at its
owner after the last hop. Causality is by position, so any layout of the length axis (contiguous or
zig-zag, xbook.data.zigzag) gives the same result; block pairs masked by causality are skipped.

Sharding comes from the logical axis rules in force (`flax.linen.logical_axis_rules`, which the trainer
sets from xbook.train.partitioning's gin-configurable rules) applied to the query's logical axes
(xbook.model.axes.QUERY): the mesh axes of `activation_length` form the ring, and those of
`activation_batch`, `activation_kv_heads` and `activation_heads` split the batch and the heads.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from xbook.model import axes as logical
from xbook.model import blockwise_attention as blockwise
from xbook.model import loops
from xbook.model.axes import LogicalRules


@dataclasses.dataclass(frozen=True)
class RingSpecs:
  """How ring attention lays its operands on the mesh (`ring_specs`).

  Attributes:
    q: PartitionSpec of q and the output [batch, length, n_kv_heads, group, head_dim].
    kv: of k and v [batch, length, n_kv_heads, head_dim] (q's, without the group axis).
    tokens: of segment ids and positions [batch, length].
    lse: of the log-sum-exp [batch, length, n_kv_heads, group].
    ring: the mesh axes the length is sharded over, in the order of its shards ((): no ring).
    ring_size: the number of length shards (the product of the ring axes' sizes).
  """

  q: P
  kv: P
  tokens: P
  lse: P
  ring: tuple[str, ...]
  ring_size: int

  @property
  def sharded(self) -> bool:
    return any(axis is not None for axis in self.q)


def ring_specs(mesh: jax.sharding.AbstractMesh | jax.sharding.Mesh,
               rules: LogicalRules | None = None) -> RingSpecs:
  """The specs of ring attention on `mesh` under `rules` (default: the rules in force).

  Each axis of q takes the mesh axes that the rules give its logical name (xbook.model.axes.QUERY),
  keeping only those of size > 1 in `mesh`; k, v, segment ids and positions follow q's batch, length
  and kv-head axes, so the operands of a device always belong together. head_dim is never split
  (attention contracts it).

  Raises:
    ValueError: `mesh` has more than one device and no rules are given or in force.
  """
  sizes = {} if mesh.empty else dict(mesh.shape)
  if rules is None:
    rules = nn.get_logical_axis_rules()
  if not rules and math.prod(sizes.values()) > 1:
    raise ValueError(
        "ring attention on a mesh needs logical axis rules: call it inside flax.linen.logical_axis_rules("
        "rules) (xbook.train.partitioning.logical_axis_rules() gives the configured ones) or pass rules=")
  mapped = nn.logical_to_mesh_axes(logical.QUERY, rules) if rules else P(*[None] * len(logical.QUERY))

  def on_mesh(axes: Any) -> tuple[str, ...]:
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return tuple(axis for axis in axes if sizes.get(axis, 1) > 1)

  batch, length, kv_heads, heads, _ = (on_mesh(axes) for axes in mapped)
  entry = lambda axes: None if not axes else axes[0] if len(axes) == 1 else axes  # noqa: E731
  q = P(entry(batch), entry(length), entry(kv_heads), entry(heads), None)
  return RingSpecs(q=q, kv=P(*q[:3], None), tokens=P(*q[:2]), lse=P(*q[:4]), ring=length,
                   ring_size=math.prod(sizes[axis] for axis in length))


def _ring_shard_fn(axis_name: tuple[str, ...], axis_size: int, block_q: int, block_kv: int):
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
                            block_kv: int = blockwise.DEFAULT_BLOCK_KV, rules: LogicalRules | None = None
                            ) -> tuple[jax.Array, jax.Array]:
  """Ring attention returning (out, lse); see `ring_attention`.

  Returns:
    out [batch, q_len, n_kv_heads, group, head_dim] in q's dtype, sharded like q, and lse
    [batch, q_len, n_kv_heads, group] float32 (-inf for queries with no visible key), sharded like q
    without head_dim. Both are differentiable.
  """
  mesh = jax.sharding.get_abstract_mesh()
  specs = ring_specs(mesh, rules)
  attend = _ring_shard_fn(specs.ring, specs.ring_size,
                          blockwise.block_size(q.shape[1] // specs.ring_size, block_q),
                          blockwise.block_size(k.shape[1] // specs.ring_size, block_kv))
  args = (q, k, v, q_segment_ids, kv_segment_ids, q_positions, kv_positions)
  if not specs.sharded:
    return attend(*args)
  # check_vma off: the kernels' scan carries start as per-device zeros, and the custom VJP (not
  # shard_map's transpose) defines the backward pass.
  sharded = jax.shard_map(
      attend, mesh=mesh, in_specs=(specs.q, specs.kv, specs.kv) + (specs.tokens,) * 4,
      out_specs=(specs.q, specs.lse), check_vma=False)
  return sharded(*args)


def ring_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, q_segment_ids: jax.Array,
                   kv_segment_ids: jax.Array, q_positions: jax.Array, kv_positions: jax.Array,
                   block_q: int = blockwise.DEFAULT_BLOCK_Q, block_kv: int = blockwise.DEFAULT_BLOCK_KV,
                   rules: LogicalRules | None = None) -> jax.Array:
  """Attention with the length sharded over the ambient mesh as the logical axis rules say.

  Runs `jax.shard_map` over `jax.sharding.get_abstract_mesh()` (set by `jax.set_mesh`) with the specs
  of `ring_specs`: under xbook.train.partitioning.DEFAULT_RULES, batch over ("data", "fsdp"), length
  over "sequence" (the ring) and kv heads over "tensor"; mesh axes of size 1 are left out, and without a
  mesh it runs on one device. Per device, memory is that of blockwise attention on a [q_chunk,
  kv_chunk] pair; no device gathers the full-length k/v.

  Args:
    q: [batch, q_len, n_kv_heads, group, head_dim]  (xbook.model.axes.QUERY: activation_batch,
      activation_length, activation_kv_heads, activation_heads, -).
    k, v: [batch, kv_len, n_kv_heads, head_dim]  (activation_batch, activation_length,
      activation_kv_heads, -).
    q_segment_ids, q_positions: [batch, q_len]; kv_segment_ids, kv_positions: [batch, kv_len]
      (activation_batch, activation_length), in the same length layout as q and k.
    block_q, block_kv: block sizes of the per-device blockwise kernel (see
      `blockwise_attention.block_size`).
    rules: logical axis rules; default: those in force (`flax.linen.logical_axis_rules`), which a mesh
      of more than one device requires.

  Returns:
    [batch, q_len, n_kv_heads, group, head_dim] in q's dtype, sharded like q.
  """
  return ring_attention_with_lse(
      q, k, v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, q_positions=q_positions,
      kv_positions=kv_positions, block_q=block_q, block_kv=block_kv, rules=rules)[0]
