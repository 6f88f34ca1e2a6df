"""Low-rank adapters (LoRA) on the decoder's projections: their configuration, and the parameter tree's
split into adapters and base, the merge of adapters into plain weights, and a fingerprint of a base.

A target projection with base kernel W (its input axes I, output axes O) gets two adapters,

  A: [*I, rank]  (`<name>_lora_a`, logical axes: W's input axes, then `lora_rank`)
  B: [rank, *O]  (`<name>_lora_b`, logical axes: `lora_rank`, then W's output axes)

and computes x W + (alpha / rank) dropout(x) A B. B starts at zero, so a fresh adapter leaves the base
model's outputs unchanged. The adapters sit beside W in the same module (the attention's `query_lora_a`
next to `query`; the MLP's `gate_lora_a` next to its `gate` Dense) and carry W's logical axis names, so
the logical axis rules in force shard them as they shard W; `lora_rank` maps to no mesh axis
(replicated) unless a rule names it.

peft (and vLLM's LoRA loader) compute the same delta with `lora_A.weight` [rank, in] = A^T and
`lora_B.weight` [out, rank] = B^T, scaled by lora_alpha / r (xbook.model.hf.adapter writes them).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

# The projections that may carry adapters, per layer kind, and the Hugging Face module name of each.
LORA_TARGETS: dict[str, tuple[str, ...]] = {"attention": ("q", "k", "v", "o"), "mlp": ("gate", "up", "down")}
HF_MODULES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj",
              "up": "up_proj", "down": "down_proj"}
# The parameter (in its module) of each target's base kernel: attention kernels are the Attention
# module's own parameters; the MLP's are nn.Dense submodules' `kernel`.
BASE_PARAMS = {"q": "query", "k": "key", "v": "value", "o": "out", "gate": "gate", "up": "up", "down": "down"}
ADAPTER_SUFFIXES = ("_lora_a", "_lora_b")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Low-rank adapters on the decoder's projections (DecoderConfig.lora).

  Attributes:
    rank: the adapters' inner width r.
    alpha: the delta is scaled by alpha / rank (peft's `lora_alpha`).
    dropout: dropout on the adapters' input while training (a step given a `dropout` rng); 0: none.
    attention: which attention projections get adapters, of LORA_TARGETS["attention"]: q, k, v, o.
    mlp: which MLP projections get adapters, of LORA_TARGETS["mlp"]: gate, up, down.
    param_dtype: storage dtype of the adapters (trained; the base stays in DecoderConfig.param_dtype).
  """

  rank: int = 16
  alpha: float = 32.0
  dropout: float = 0.0
  attention: tuple[str, ...] = LORA_TARGETS["attention"]
  mlp: tuple[str, ...] = LORA_TARGETS["mlp"]
  param_dtype: str = "float32"

  def __post_init__(self) -> None:
    for kind in LORA_TARGETS:  # one name given alone
      if isinstance(getattr(self, kind), str):
        object.__setattr__(self, kind, (getattr(self, kind),))
    if self.rank < 1:
      raise ValueError(f"LoraConfig.rank={self.rank}: must be a positive number of dimensions")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"LoraConfig.dropout={self.dropout}: must be in [0, 1)")
    for kind, allowed in LORA_TARGETS.items():
      unknown = [name for name in getattr(self, kind) if name not in allowed]
      if unknown:
        raise ValueError(f"LoraConfig.{kind}={getattr(self, kind)!r}: {', '.join(map(repr, unknown))} is not "
                         f"a {kind} projection; choose among {allowed}")
    for kind, allowed in LORA_TARGETS.items():  # tuples in one order (hashable; equal however named)
      object.__setattr__(self, kind, tuple(name for name in allowed if name in getattr(self, kind)))
    if not self.targets:
      raise ValueError("LoraConfig names no target projection: set LoraConfig.attention and/or LoraConfig.mlp")
    jnp.dtype(self.param_dtype)

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  @property
  def targets(self) -> tuple[str, ...]:
    """Every target projection (attention's, then the MLP's)."""
    return self.attention + self.mlp

  @property
  def weights_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @classmethod
  def from_json(cls, value: LoraConfig | Mapping[str, Any] | None) -> LoraConfig | None:
    """A LoraConfig from itself, its dataclasses.asdict (model.json), or None."""
    if value is None or isinstance(value, LoraConfig):
      return value
    return cls(**value)


def is_adapter_path(path: tuple[Any, ...]) -> bool:
  """Whether a parameter (its key path in the tree) is a LoRA adapter."""
  last = path[-1]
  name = getattr(last, "key", last)
  return isinstance(name, str) and name.endswith(ADAPTER_SUFFIXES)


_DROPPED = object()


def _split(tree: Any, keep_adapters: bool, path: tuple = ()) -> Any:
  if not isinstance(tree, Mapping):
    return tree if is_adapter_path(path) == keep_adapters else _DROPPED
  out = {}
  for key, value in tree.items():
    part = _split(value, keep_adapters, path + (key,))
    if part is not _DROPPED and not (isinstance(part, Mapping) and not part):
      out[key] = part
  return out


def split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """(adapters, base): the parameter tree's LoRA adapters and everything else, as two nested dicts of the
  same layout (a module keeps only the keys of its part)."""
  return _split(params, True), _split(params, False)


def merge_params(adapters: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
  """The one parameter tree of both parts (split_params' inverse)."""
  out = dict(base)
  for key, value in adapters.items():
    out[key] = merge_params(value, base.get(key, {})) if isinstance(value, Mapping) else value
  return out


def count(tree: Any) -> int:
  """Number of scalars in a parameter tree (arrays or jax.ShapeDtypeStruct leaves)."""
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def _base_kernel(module: Mapping[str, Any], target: str) -> tuple[Any, ...]:
  """(container, key) of the base kernel of `target` in its module's parameters."""
  name = BASE_PARAMS[target]
  return (module[name], "kernel") if target in LORA_TARGETS["mlp"] else (module, name)


def merged_params(params: Mapping[str, Any], lora: LoraConfig) -> dict[str, Any]:
  """Plain weights: every targeted kernel W replaced by W + (alpha / rank) A B, in W's dtype, and the
  adapters dropped; the tree of Decoder(config without lora). Layers scanned ([n_layers, ...] leaves)
  or not; arrays on any device (jax) or numpy.

  Raises:
    ValueError: a target's adapters are missing.
  """
  adapters, base = split_params(params)
  merged = jax.tree.map(lambda x: x, base)  # a copy of the dict structure (leaves shared)

  def visit(adapter_node: Mapping[str, Any], base_node: dict[str, Any], path: tuple[str, ...]) -> None:
    kind = path[-1] if path else ""
    if kind in LORA_TARGETS:
      for target in getattr(lora, kind):
        a, b = (adapter_node.get(BASE_PARAMS[target] + suffix) for suffix in ADAPTER_SUFFIXES)
        if a is None or b is None:
          raise ValueError(f"{'/'.join(path)}: no adapters for {target!r} ({BASE_PARAMS[target]}_lora_a/b)")
        container, key = _base_kernel(base_node, target)
        if target in LORA_TARGETS["mlp"]:
          container = base_node[BASE_PARAMS[target]] = dict(container)
        container[key] = _merge_one(container[key], a, b, lora.scale)
      return
    for key, child in adapter_node.items():
      if isinstance(child, Mapping):
        base_node[key] = dict(base_node[key])
        visit(child, base_node[key], path + (key,))

  visit(adapters, merged, ())
  return merged


def _merge_one(kernel: Any, a: Any, b: Any, scale: float) -> Any:
  """kernel + scale * A B over the rank axis, in float32, cast back to the kernel's dtype. A layer axis
  (scanned layers) leads all three."""
  xp = np if isinstance(kernel, np.ndarray) else jnp
  layers = a.shape[0] if kernel.ndim == a.ndim + b.ndim - 3 else None
  a32, b32 = xp.asarray(a, xp.float32), xp.asarray(b, xp.float32)
  if layers is None:
    delta = xp.tensordot(a32, b32, axes=([a.ndim - 1], [0]))
  else:
    rank = a.shape[-1]
    delta = xp.einsum("lir,lro->lio", a32.reshape(layers, -1, rank), b32.reshape(layers, rank, -1))
    delta = delta.reshape(kernel.shape)
  return (xp.asarray(kernel, xp.float32) + scale * delta).astype(kernel.dtype)


# Odd multipliers of the fingerprint's two 32-bit lanes (a Weyl sequence over each element's index).
_LANES = ((0x9E3779B1, 0x85EBCA77), (0xC2B2AE3D, 0x27D4EB2F))


def _leaf_hash(x: jax.Array, salt: int) -> jax.Array:
  """[2] uint32: sums of each element's bf16 bits times a multiplier of its index (mod 2^32), exact and
  independent of sharding and summation order."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.bfloat16), jnp.uint16).astype(jnp.uint32)
  index = jnp.zeros(x.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(x.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride & 0xFFFFFFFF)
    stride *= x.shape[axis]
  lanes = []
  for mul, add in _LANES:
    weight = (index + jnp.uint32((salt * add) & 0xFFFFFFFF)) * jnp.uint32(mul) | jnp.uint32(1)
    lanes.append(jnp.sum(bits * weight, dtype=jnp.uint32))
  return jnp.stack(lanes)


def params_fingerprint(params: Mapping[str, Any]) -> str:
  """A 64-bit hex fingerprint of a parameter tree's values (as bf16 bits) and layout: equal for the same
  weights however they are sharded or stored (float32 or bf16), different for other weights.

  Runs on the devices that hold the arrays (one pass over them); used to record the base a LoRA run's
  adapters belong to.
  """
  leaves = sorted(jax.tree_util.tree_leaves_with_path(params), key=lambda kv: jax.tree_util.keystr(kv[0]))
  names = [jax.tree_util.keystr(path) for path, _ in leaves]

  @jax.jit
  def digest(arrays):
    total = jnp.zeros(2, jnp.uint32)
    for i, (name, x) in enumerate(zip(names, arrays)):
      salt = (hash_text(name) ^ (i + 1)) & 0xFFFFFFFF
      total = total * jnp.uint32(0x01000193) + _leaf_hash(x, salt)
    return total

  lanes = np.asarray(jax.device_get(digest([x for _, x in leaves])))
  return f"{int(lanes[0]):08x}{int(lanes[1]):08x}"


def hash_text(text: str) -> int:
  """FNV-1a (32 bits) of a string: stable across processes (Python's hash() is salted)."""
  value = 0x811C9DC5
  for byte in text.encode():
    value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
  return value
