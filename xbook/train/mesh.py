"""The device mesh: axes `data`, `fsdp`, `sequence`, `tensor` (DESIGN.md "Mesh")."""

from __future__ import annotations

import dataclasses
import math

import gin
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "sequence", "tensor")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Size of each mesh axis; one axis may be -1 to take the devices left over.

  `data` replicates parameters, `fsdp` shards them (and the batch), `sequence` shards the length
  (ring attention), `tensor` shards heads and MLP width.
  """

  data: int = 1
  fsdp: int = -1
  sequence: int = 1
  tensor: int = 1

  def shape(self, num_devices: int) -> tuple[int, ...]:
    sizes = [self.data, self.fsdp, self.sequence, self.tensor]
    if sizes.count(-1) > 1:
      raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if num_devices % known:
        raise ValueError(f"{num_devices} devices cannot fill mesh {dict(zip(MESH_AXES, sizes))}")
      sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                       f"but {num_devices} are available")
    return tuple(sizes)


def make_mesh(config: MeshConfig, devices: list[jax.Device] | None = None) -> Mesh:
  """A Mesh over `devices` (default: all) with MESH_AXES, laid out for the interconnect."""
  devices = list(devices if devices is not None else jax.devices())
  shape = config.shape(len(devices))
  try:
    device_array = mesh_utils.create_device_mesh(shape, devices=devices)
  except (AssertionError, NotImplementedError, ValueError):
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES)
