"""TPU slices by accelerator type ("v5p-256", "v6e-8"): chip count, torus shape, HBM, and their devices.

Chip facts are from the Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, /v5p,
/v5e, /v6e; /v2, /v3 for the older ones): HBM per chip 16 GiB (v2), 32 GiB (v3, v4), 95 GiB (v5p),
16 GiB (v5e), 32 GiB (v6e). The number in a v2, v3, v4 or v5p accelerator type counts TensorCores
(two per chip, so v5p-256 has 128 chips); in v5e (v5litepod) and v6e types it counts chips. Peak FLOP/s per chip are in `xbook.train.flops.PEAK_FLOPS_PER_DEVICE`.

`topology_devices` returns abstract devices of a slice (or several) from libtpu, which `jax[tpu]`
installs: a program can be compiled for them on any host, but not run.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class TpuGeneration:
  """One TPU generation as the accelerator-type names and libtpu see it."""

  name: str               # as in accelerator types: "v5p"
  topology_prefix: str    # as in libtpu topology names: "v5p:4x4x8"
  dims: int               # torus dimensions (3 for v4/v5p, 2 for v5e/v6e)
  cores_per_name_unit: int  # TensorCores counted per chip in the accelerator-type number
  hbm_bytes: int          # HBM per chip
  chips_per_host: int     # chips on one TPU VM host of a multi-host slice


GENERATIONS: dict[str, TpuGeneration] = {
    "v2": TpuGeneration("v2", "v2", 2, 2, 16 * GIB, 4),
    "v3": TpuGeneration("v3", "v3", 2, 2, 32 * GIB, 4),
    "v4": TpuGeneration("v4", "v4", 3, 2, 32 * GIB, 4),
    "v5p": TpuGeneration("v5p", "v5p", 3, 2, 95 * GIB, 4),
    "v5e": TpuGeneration("v5e", "v5e", 2, 1, 16 * GIB, 4),
    "v6e": TpuGeneration("v6e", "v6e", 2, 1, 32 * GIB, 4),
}
# Single-host slices of v5e/v6e have up to 8 chips on their one host (v5e-8, v6e-8).
_SINGLE_HOST_CHIPS = 8


@dataclasses.dataclass(frozen=True)
class TpuSlice:
  """A slice: its generation, torus shape (chips per dimension) and accelerator type."""

  generation: TpuGeneration
  shape: tuple[int, ...]

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def accelerator_type(self) -> str:
    return f"{self.generation.name}-{self.chips * self.generation.cores_per_name_unit}"

  @property
  def topology_name(self) -> str:
    return f"{self.generation.topology_prefix}:{'x'.join(map(str, self.shape))}"

  @property
  def chips_per_host_bounds(self) -> tuple[int, int, int]:
    if self.generation.dims == 2 and self.chips <= _SINGLE_HOST_CHIPS:
      return (*self.shape, 1)
    return (2, 2, 1)

  @property
  def hosts(self) -> int:
    return max(1, self.chips // math.prod(self.chips_per_host_bounds))


def standard_shape(chips: int, dims: int) -> tuple[int, ...]:
  """The torus shape Cloud TPU gives a slice of `chips` chips (a power of two).

  Grown from one chip by doubling the smallest dimension, the last of equals first:
  v5p 4x4x4 (64 chips) -> 4x4x8 -> 4x8x8 -> 8x8x8; v5e/v6e 2x4 (8 chips) -> 4x4 -> ... -> 16x16.
  Slices of v4/v5p start from a 2x2x1 host.
  """
  if chips < 1 or chips & (chips - 1):
    raise ValueError(f"a TPU slice has a power-of-two number of chips, got {chips}")
  shape = [1] * dims
  if dims == 3 and chips >= 4:
    shape = [2, 2, 1]
  while math.prod(shape) < chips:
    smallest = min(shape)
    last = max(i for i, size in enumerate(shape) if size == smallest)
    shape[last] *= 2
  return tuple(shape)


def parse_slice(name: str) -> TpuSlice:
  """A slice from an accelerator type ("v5p-256", "v5litepod-16", "v6e-8") or a topology ("v5p:4x4x8")."""
  text = name.strip().lower().replace("v5litepod", "v5e")
  if match := re.fullmatch(r"(v\d+[a-z]*):(\d+(?:x\d+)+)", text):
    generation, shape = _generation(match.group(1), name), tuple(map(int, match.group(2).split("x")))
    if len(shape) != generation.dims:
      raise ValueError(f"topology {name!r}: {generation.name} slices have {generation.dims} dimensions")
    return TpuSlice(generation, shape)
  if match := re.fullmatch(r"(v\d+[a-z]*)-(\d+)", text):
    generation = _generation(match.group(1), name)
    units = int(match.group(2))
    if units % generation.cores_per_name_unit:
      raise ValueError(f"accelerator type {name!r}: the number counts TensorCores, two per "
                       f"{generation.name} chip, so it must be even")
    return TpuSlice(generation, standard_shape(units // generation.cores_per_name_unit, generation.dims))
  raise ValueError(f"cannot read TPU slice {name!r}: expected an accelerator type like 'v5p-256' or "
                   f"'v6e-8', or a topology like 'v5p:4x4x8'")


def _generation(key: str, name: str) -> TpuGeneration:
  if key not in GENERATIONS:
    raise ValueError(f"TPU slice {name!r}: unknown generation {key!r}; known: {sorted(GENERATIONS)}")
  return GENERATIONS[key]


def topology_devices(tpu_slice: TpuSlice, num_slices: int = 1) -> list[jax.Device]:
  """Abstract devices of `num_slices` slices (one per chip; `slice_index` set when num_slices > 1)."""
  from jax.experimental import topologies  # needs libtpu only when called
  try:
    topology = topologies.get_topology_desc(
        platform="tpu", topology_name=tpu_slice.topology_name, chip_config_name="default",
        chips_per_host_bounds=tpu_slice.chips_per_host_bounds, num_slices=num_slices)
  except Exception as error:  # libtpu missing, or a shape it does not know
    raise RuntimeError(f"libtpu could not describe {tpu_slice.topology_name} x {num_slices} slice(s): "
                       f"{error}. Is libtpu installed (pip install -r requirements.txt)?") from error
  devices = list(topology.devices)
  if len(devices) != tpu_slice.chips * num_slices:
    raise RuntimeError(f"libtpu described {len(devices)} devices for {tpu_slice.topology_name} x "
                       f"{num_slices}, expected {tpu_slice.chips * num_slices}")
  return devices
