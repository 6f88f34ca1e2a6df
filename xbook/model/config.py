"""Decoder hyperparameters (Llama/Mistral family)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from xbook.model.lora import LoraConfig
from xbook.model.rope import RopeScaling

REMAT_POLICIES = ("none", "save_dots", "save_attention_out", "full")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Shape and numerics of the decoder.

  Attributes:
    vocab_size: embedding rows (SentencePiece pieces).
    d_model: residual stream width (logical axis `embed`).
    n_layers: decoder blocks (logical axis `layers` when scanned).
    n_heads: query heads (`heads`); n_kv_heads: key/value heads (`kv_heads`), dividing n_heads (GQA).
    head_dim: per-head width (`head_dim`).
    mlp_dim: SwiGLU hidden width (`mlp`).
    rope_theta: rotary embedding base.
    rope_scaling: long-context scaling of RoPE (xbook.model.rope.ROPE_SCALINGS), with its
      rope_factor, rope_original_max_position (the pretraining context), rope_low_freq_factor and
      rope_high_freq_factor (llama3), rope_beta_fast, rope_beta_slow and rope_attention_factor (yarn:
      the factor on the rotated q and k; None: YaRN's 0.1 ln(rope_factor) + 1).
    query_scale_beta, query_scale_period: position-dependent query scaling (Llama 4, Ministral 3): the
      queries of the token at position p are multiplied by 1 + beta ln(1 + floor(p / period)); a beta of
      0 turns it off.
    norm_eps: RMSNorm epsilon.
    tie_embeddings: share the input embedding with the output projection.
    dtype: compute dtype of activations and matmuls ("float32" or "bfloat16").
    param_dtype: storage dtype of parameters (master weights).
    attention: attention implementation name (xbook.model.attention.ATTENTION_IMPLS).
    attention_block: query and key/value block size of the blockwise and ring kernels (each becomes
      the largest divisor of its per-device chunk not above it); dense attention has no blocks.
    remat: rematerialization policy per layer (REMAT_POLICIES).
    sliding_window: each query sees at most this many keys (itself included); None: all before it.
      Only the dense attention implementation supports it.
    attention_bias: learned biases on the query, key and value projections (Qwen2).
    scan_layers: run the layers under `nn.scan` (one compiled layer body, params stacked on `layers`).
    lora: low-rank adapters on the projections (xbook.model.lora.LoraConfig), trained while the base
      weights stay frozen; None: none (a dict, as model.json stores it, is read as a LoraConfig).
  """

  vocab_size: int
  d_model: int = 256
  n_layers: int = 4
  n_heads: int = 4
  n_kv_heads: int = 2
  head_dim: int = 64
  mlp_dim: int = 1024
  rope_theta: float = 10_000.0
  rope_scaling: str = "none"
  rope_factor: float = 1.0
  rope_original_max_position: int = 8192
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_beta_fast: float = 32.0
  rope_beta_slow: float = 1.0
  rope_attention_factor: float | None = None
  query_scale_beta: float = 0.0
  query_scale_period: int = 8192
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention: str = "dense"
  attention_block: int = 512
  remat: str = "none"
  scan_layers: bool = True
  sliding_window: int | None = None
  attention_bias: bool = False
  lora: LoraConfig | None = None

  def __post_init__(self) -> None:
    object.__setattr__(self, "lora", LoraConfig.from_json(self.lora))
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
    _ = self.rope  # building the scaling validates its settings
    if self.query_scale_period < 1:
      raise ValueError(f"query_scale_period={self.query_scale_period} must be a positive number of "
                       "positions")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat={self.remat!r}; expected one of {REMAT_POLICIES}")
    if self.sliding_window is not None and (self.sliding_window < 1 or self.attention != "dense"):
      raise ValueError(f"sliding_window={self.sliding_window} needs a positive window and "
                       f"attention='dense' (got {self.attention!r}: its kernels have no window yet)")

  @classmethod
  def from_record(cls, fields: Any, where: Any) -> DecoderConfig:
    """The DecoderConfig a model.json records (`fields`: dataclasses.asdict of one; `where` names the file in
    errors). Fields added since only take their defaults; one this release does not know (written by a newer
    one) or a bad value is refused by name.

    Raises:
      ValueError: `fields` is not an object, names an unknown field or holds an invalid value.
    """
    if not isinstance(fields, dict):
      raise ValueError(f"{where}: `model` must be the DecoderConfig's fields (a JSON object), got {fields!r}")
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f"{where}: model.{unknown[0]} is not a DecoderConfig field of this xbook (unknown: "
                       f"{', '.join(unknown)}; written by a newer release?): update xbook to read it")
    try:
      return cls(**fields)
    except (TypeError, ValueError) as error:
      raise ValueError(f"{where}: `model` is not a valid DecoderConfig: {error}") from None

  @property
  def rope(self) -> RopeScaling:
    return RopeScaling(kind=self.rope_scaling, factor=self.rope_factor,
                       original_max_position=self.rope_original_max_position,
                       low_freq_factor=self.rope_low_freq_factor,
                       high_freq_factor=self.rope_high_freq_factor, beta_fast=self.rope_beta_fast,
                       beta_slow=self.rope_beta_slow, attention_factor=self.rope_attention_factor)

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def weights_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  def num_params(self) -> int:
    """Parameter count, embeddings included."""
    attn = self.d_model * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
    if self.attention_bias:
      attn += self.head_dim * (self.n_heads + 2 * self.n_kv_heads)
    mlp = 3 * self.d_model * self.mlp_dim
    per_layer = attn + mlp + 2 * self.d_model
    head = 0 if self.tie_embeddings else self.vocab_size * self.d_model
    return self.vocab_size * self.d_model + self.n_layers * per_layer + self.d_model + head

  def lora_params(self) -> int:
    """Parameter count of the LoRA adapters (0 without `lora`): rank x (in + out) per target and layer."""
    if self.lora is None:
      return 0
    q_width, kv_width = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
    shapes = {"q": (self.d_model, q_width), "k": (self.d_model, kv_width), "v": (self.d_model, kv_width),
              "o": (q_width, self.d_model), "gate": (self.d_model, self.mlp_dim),
              "up": (self.d_model, self.mlp_dim), "down": (self.mlp_dim, self.d_model)}
    per_layer = sum(self.lora.rank * sum(shapes[target]) for target in self.lora.targets)
    return self.n_layers * per_layer
