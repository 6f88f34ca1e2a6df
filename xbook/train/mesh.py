"""The device mesh: axes `data`, `fsdp`, `sequence`, `tensor` (docs/architecture.md).

Each axis has a size within a slice (ICI, the fast interconnect) and a number of slices it spans
(DCN, the data-center network between slices of a multi-slice job); the mesh axis is their product.
Put only axes with little traffic (usually `data`, sometimes `fsdp`) across slices.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import gin
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "sequence", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Size of each mesh axis within a slice (one may be -1: the devices of a slice left over), and how
  many slices it spans (`dcn_*`, whose product is the number of slices).

  `data` replicates parameters, `fsdp` shards them (and the batch), `sequence` shards the length
  (ring attention), `tensor` shards heads and MLP width.
  """

  data: int = 1
  fsdp: int = -1
  sequence: int = 1
  tensor: int = 1
  dcn_data: int = 1
  dcn_fsdp: int = 1
  dcn_sequence: int = 1
  dcn_tensor: int = 1

  @property
  def dcn_shape(self) -> tuple[int, ...]:
    return (self.dcn_data, self.dcn_fsdp, self.dcn_sequence, self.dcn_tensor)

  def ici_shape(self, num_devices: int) -> tuple[int, ...]:
    """Per-slice axis sizes, with -1 resolved, for `num_devices` devices in all slices."""
    num_slices = math.prod(self.dcn_shape)
    if num_devices % num_slices:
      raise ValueError(f"{num_devices} devices cannot form {num_slices} equal slices "
                       f"(dcn sizes {dict(zip(MESH_AXES, self.dcn_shape))})")
    per_slice = num_devices // num_slices
    sizes = [self.data, self.fsdp, self.sequence, self.tensor]
    if sizes.count(-1) > 1:
      raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
      if per_slice % known:
        raise ValueError(f"{per_slice} devices per slice cannot fill mesh {dict(zip(MESH_AXES, sizes))}")
      sizes[sizes.index(-1)] = per_slice // known
    if math.prod(sizes) != per_slice:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices per slice, "
                       f"but {per_slice} are available: set MeshConfig's sizes to multiply to {per_slice} "
                       "(one may be -1: the devices left over), or, on a CPU, simulate the devices with "
                       f"XLA_FLAGS=--xla_force_host_platform_device_count={math.prod(sizes) * num_slices}")
    return tuple(sizes)

  def shape(self, num_devices: int) -> tuple[int, ...]:
    """The mesh shape: per axis, the per-slice size times the number of slices it spans."""
    return tuple(i * d for i, d in zip(self.ici_shape(num_devices), self.dcn_shape))


# `MeshConfig.<field> = ...` in gin; entry points build it with xbook.gin_flags.configured(MeshConfig),
# and `MeshConfig()` here or in any library code is the plain defaults.
gin.external_configurable(MeshConfig, module=__name__)


def make_mesh(config: MeshConfig, devices: list[jax.Device] | None = None) -> Mesh:
  """A Mesh over `devices` (default: all) with MESH_AXES, laid out for the interconnect.

  Devices without a `slice_index` (CPU, a single GPU host) form simulated slices of consecutive
  devices, so multi-slice configs can be exercised anywhere. When jax cannot lay the axis sizes onto
  the chips' physical topology, the devices are taken in `jax.devices()` order, with a warning.
  """
  devices = list(devices if devices is not None else jax.devices())
  ici, dcn = config.ici_shape(len(devices)), config.dcn_shape
  if math.prod(dcn) > 1 and hasattr(devices[0], "slice_index"):
    device_array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  elif math.prod(dcn) > 1:
    blocks = np.asarray(devices).reshape(dcn + ici)  # [dcn axes..., ici axes...]
    interleaved = blocks.transpose([j for i in range(len(MESH_AXES)) for j in (i, i + len(MESH_AXES))])
    device_array = interleaved.reshape(config.shape(len(devices)))
  else:
    try:
      device_array = mesh_utils.create_device_mesh(ici, devices=devices)
    except (AssertionError, NotImplementedError, ValueError) as error:
      log.warning(
          "mesh %s cannot be laid out on the physical topology of %d %s devices (%s: %s); using the "
          "devices in jax.devices() order instead. Results are the same, but an axis's neighbours may "
          "be chips far apart, so its collectives can be slower; axis sizes that fit the topology avoid it",
          dict(zip(MESH_AXES, ici)), len(devices), devices[0].platform, type(error).__name__, error)
      device_array = np.asarray(devices).reshape(ici)
  return Mesh(device_array, MESH_AXES)
