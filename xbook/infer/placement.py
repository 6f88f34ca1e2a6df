"""Where decoding runs: the mesh and logical axis rules of `xbook write`, `serve`, `generate`, `bench decode`
and `eval --run_dir`, built once at the entry point from a `MeshConfig` (gin) or the `--mesh` flag.

Parameters are sharded as in training (tensor over heads and MLP, fsdp over `embed` where the weights
still do not fit); the KV cache over kv heads on `tensor` and, with `shard_cache_length`, over its length
on `sequence` (xbook.infer.decode.inference_rules). Rows are replicated over `data`.
"""

from __future__ import annotations

from typing import Any

from jax.sharding import Mesh

from xbook.infer.decode import inference_rules
from xbook.train.mesh import MESH_AXES, MeshConfig, make_mesh

MESH_FLAG_EXAMPLE = "tensor=4,sequence=2"


def parse_mesh_flag(text: str) -> MeshConfig:
  """`--mesh tensor=4,sequence=2` -> MeshConfig(data=1, fsdp=1, sequence=2, tensor=4): axes not named are 1
  (one may be -1: the devices left over). Raises ValueError naming the bad part."""
  sizes = {axis: 1 for axis in MESH_AXES}
  for part in filter(None, (p.strip() for p in text.split(","))):
    axis, _, value = part.partition("=")
    if axis not in MESH_AXES or not value.lstrip("-").isdigit() or int(value) == 0 or int(value) < -1:
      raise ValueError(f"--mesh {text!r}: {part!r} is not AXIS=SIZE with AXIS one of {', '.join(MESH_AXES)} "
                       f"and SIZE a positive integer or -1 (e.g. --mesh {MESH_FLAG_EXAMPLE})")
    sizes[axis] = int(value)
  return MeshConfig(**sizes)


def inference_mesh(config: MeshConfig, shard_cache_length: bool = False) -> tuple[Mesh, tuple[tuple[str, Any], ...]]:
  """(the mesh of `config` over every device, decoding's logical axis rules)."""
  return make_mesh(config), inference_rules(shard_cache_length=shard_cache_length)
