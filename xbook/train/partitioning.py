"""Logical axis rules: how parameter and activation axis names map onto the mesh.

The rules enter at the entry points (gin: `logical_axis_rules.rules`) and are in force, through
`flax.linen.logical_axis_rules`, while a step is traced: the layers' sharding constraints and ring
attention's `shard_map` specs (xbook.model.ring_attention.ring_specs) both come from them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import gin
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from xbook.model import axes
from xbook.model.axes import LogicalRules

# Parameters are sharded by FSDP on `embed` and by tensor parallelism on heads / MLP / vocab;
# activations (xbook.model.axes) are [batch, length, ...] sharded (data+fsdp, sequence, ...), the length
# over `sequence` being ring attention's ring.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", "sequence"),
    ("activation_embed", None),
    ("activation_kv_heads", "tensor"),
    ("activation_heads", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("kv_heads", "tensor"),
    ("heads", None),
    ("head_dim", None),
    ("layers", None),
)

@gin.configurable
def logical_axis_rules(rules: LogicalRules = DEFAULT_RULES) -> tuple[tuple[str, Any], ...]:
  """The rules in force; override in gin with `logical_axis_rules.rules = [...]`."""
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """NamedShardings for a tree whose leaves are nn.Partitioned boxes (or arrays: replicated)."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh, rules: LogicalRules) -> NamedSharding:
  """Sharding of every [batch, length] input feature."""
  spec = nn.logical_to_mesh_axes(axes.BATCH_LENGTH, rules)
  return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: dict[str, Any], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Place a host-local numpy batch ([batch, length] per feature) on the mesh."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
