"""Training FLOPs per token and model FLOPs utilization (MFU).

FLOPs per token of one training step (forward + backward = 3x forward):
  6 * P + attention,   P = parameters used in matmuls (every weight matrix, the logits projection
                           included; the input embedding lookup and norm scales excluded),
  attention = 12 * n_layers * seq_len * n_heads * head_dim   counting the full score matrix (the
                           convention of PaLM, Chowdhery et al. 2022, appendix B, and of older MaxText),
  or half of it with the causal mask (the convention of MaxText since mid-2025).
Both are reported; `mfu` uses the causal count, since that is the work a causal model must do.
"""

from __future__ import annotations

import jax

from xbook.model import DecoderConfig

# Peak dense bf16 FLOP/s per chip, from the vendors' published specifications (Google Cloud TPU
# system architecture pages; NVIDIA H100/H200 datasheets, without sparsity).
PEAK_FLOPS_PER_DEVICE = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
}


def matmul_params(config: DecoderConfig) -> int:
  """Parameters that take part in matrix multiplies (see the module docstring)."""
  embedding_lookup = 0 if config.tie_embeddings else config.vocab_size * config.d_model
  norms = (2 * config.n_layers + 1) * config.d_model
  return config.num_params() - embedding_lookup - norms


def training_flops_per_token(config: DecoderConfig, seq_len: int, causal: bool = True) -> float:
  """FLOPs of forward + backward for one token in a sequence of `seq_len` tokens."""
  attention = 12.0 * config.n_layers * seq_len * config.n_heads * config.head_dim
  if causal:
    attention /= 2
  return 6.0 * matmul_params(config) + attention


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
  """Peak bf16 FLOP/s of a device, or None when unknown (e.g. a CPU)."""
  kind = (device or jax.devices()[0]).device_kind
  for name, flops in PEAK_FLOPS_PER_DEVICE.items():
    if kind.startswith(name):
      return flops
  return None


def mfu(tokens_per_s: float, flops_per_token: float, n_devices: int, peak_per_device: float) -> float:
  """Achieved training FLOP/s over the peak of all devices."""
  return tokens_per_s * flops_per_token / (n_devices * peak_per_device)
