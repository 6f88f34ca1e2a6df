"""Where each Hugging Face Llama/Mistral/Qwen2 tensor lives in xbook's parameter tree, and how it is reshaped.

HF stores torch Linear weights as [out_features, in_features]; xbook keeps kernels as [in, out...] with the
heads split out. Query head h of HF's [n_heads * head_dim] projection is xbook's (kv = h // group,
g = h % group), so the split is a plain C-order reshape after the transpose. Per-layer tensors are stacked
on a leading [n_layers] axis in xbook (layers scanned).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from xbook.model.config import DecoderConfig

LAYER = "{layer}"


@dataclasses.dataclass(frozen=True)
class TensorMap:
  """One HF tensor (or one per layer) <-> one xbook parameter.

  Attributes:
    hf_name: HF state-dict name; `{layer}` stands for the layer index in per-layer tensors.
    path: keys of the parameter in the xbook params tree.
    hf_shape: shape of the HF tensor (of one layer).
    shape: shape of the xbook parameter for one layer (without the stacked [n_layers] axis).
    transpose: the HF tensor is a torch Linear weight [out, in], transposed before the reshape.
  """

  hf_name: str
  path: tuple[str, ...]
  hf_shape: tuple[int, ...]
  shape: tuple[int, ...]
  transpose: bool

  @property
  def per_layer(self) -> bool:
    return LAYER in self.hf_name

  def hf_names(self, n_layers: int) -> list[str]:
    """The HF names of this tensor: one per layer, or just the one."""
    if not self.per_layer:
      return [self.hf_name]
    return [self.hf_name.format(layer=i) for i in range(n_layers)]

  def to_xbook(self, hf: np.ndarray) -> np.ndarray:
    """hf: [*hf_shape] -> [*shape]."""
    return (hf.T if self.transpose else hf).reshape(self.shape)

  def to_hf(self, value: np.ndarray) -> np.ndarray:
    """value: [*shape] -> [*hf_shape], C-contiguous (as safetensors writes it)."""
    if self.transpose:
      return np.ascontiguousarray(value.reshape(self.hf_shape[::-1]).T)
    return np.ascontiguousarray(value.reshape(self.hf_shape))


def tensor_maps(config: DecoderConfig) -> list[TensorMap]:
  """Every tensor of a Llama/Mistral checkpoint of `config`, lm_head only if untied.

  Raises:
    ValueError: `config.scan_layers` is false (the mapping is to stacked layer parameters).
  """
  if not config.scan_layers:
    raise ValueError("the Hugging Face mapping needs scan_layers=True (parameters stacked on `layers`)")
  c = config
  group = c.n_heads // c.n_kv_heads
  q_width, kv_width = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
  attn, mlp = "model.layers.{layer}.self_attn", "model.layers.{layer}.mlp"
  maps = [
      TensorMap("model.embed_tokens.weight", ("embed", "embedding"), (c.vocab_size, c.d_model),
                (c.vocab_size, c.d_model), transpose=False),
      TensorMap(f"{attn}.q_proj.weight", ("layers", "attention", "query"), (q_width, c.d_model),
                (c.d_model, c.n_kv_heads, group, c.head_dim), transpose=True),
      TensorMap(f"{attn}.k_proj.weight", ("layers", "attention", "key"), (kv_width, c.d_model),
                (c.d_model, c.n_kv_heads, c.head_dim), transpose=True),
      TensorMap(f"{attn}.v_proj.weight", ("layers", "attention", "value"), (kv_width, c.d_model),
                (c.d_model, c.n_kv_heads, c.head_dim), transpose=True),
      TensorMap(f"{attn}.o_proj.weight", ("layers", "attention", "out"), (c.d_model, q_width),
                (c.n_kv_heads, group, c.head_dim, c.d_model), transpose=True),
      TensorMap("model.layers.{layer}.input_layernorm.weight", ("layers", "attention_norm", "scale"),
                (c.d_model,), (c.d_model,), transpose=False),
      TensorMap("model.layers.{layer}.post_attention_layernorm.weight", ("layers", "mlp_norm", "scale"),
                (c.d_model,), (c.d_model,), transpose=False),
      TensorMap(f"{mlp}.gate_proj.weight", ("layers", "mlp", "gate", "kernel"), (c.mlp_dim, c.d_model),
                (c.d_model, c.mlp_dim), transpose=True),
      TensorMap(f"{mlp}.up_proj.weight", ("layers", "mlp", "up", "kernel"), (c.mlp_dim, c.d_model),
                (c.d_model, c.mlp_dim), transpose=True),
      TensorMap(f"{mlp}.down_proj.weight", ("layers", "mlp", "down", "kernel"), (c.d_model, c.mlp_dim),
                (c.mlp_dim, c.d_model), transpose=True),
      TensorMap("model.norm.weight", ("final_norm", "scale"), (c.d_model,), (c.d_model,), transpose=False),
  ]
  if c.attention_bias:
    maps += [
        TensorMap(f"{attn}.q_proj.bias", ("layers", "attention", "query_bias"), (q_width,),
                  (c.n_kv_heads, group, c.head_dim), transpose=False),
        TensorMap(f"{attn}.k_proj.bias", ("layers", "attention", "key_bias"), (kv_width,),
                  (c.n_kv_heads, c.head_dim), transpose=False),
        TensorMap(f"{attn}.v_proj.bias", ("layers", "attention", "value_bias"), (kv_width,),
                  (c.n_kv_heads, c.head_dim), transpose=False),
    ]
  if not c.tie_embeddings:
    maps.append(TensorMap("lm_head.weight", ("lm_head", "kernel"), (c.vocab_size, c.d_model),
                          (c.d_model, c.vocab_size), transpose=True))
  return maps
