"""Rotary position embeddings and their long-context scalings.

Frequencies: inv_freq[i] = theta^(-2i/d) for i < d/2 (Su et al. 2021, rotate-half layout of Llama).
Scalings, chosen by `kind`:
  none     unchanged.
  linear   position interpolation: every frequency divided by `factor` (Chen et al. 2023).
  ntk      "NTK-aware" scaling: the base becomes theta * factor^(d / (d - 2)), which stretches low
           frequencies and keeps high ones (bloc97 2023; used by Code Llama-style long-context runs).
  yarn     YaRN (Peng et al. 2023): per-dimension blend of interpolated and original frequencies by a
           linear ramp between the dimensions that rotate `beta_fast` and `beta_slow` times over the
           original context, and an attention factor applied to q and k: `attention_factor` when
           given, else the paper's 0.1 ln(factor) + 1 (for factor > 1).
  llama3   Llama 3.1's scaling (Meta 2024): wavelengths longer than original / low_freq_factor are
           divided by `factor`, shorter than original / high_freq_factor kept, smoothly blended between.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

ROPE_SCALINGS = ("none", "linear", "ntk", "yarn", "llama3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """How RoPE frequencies are stretched for a context longer than the pretraining one."""

  kind: str = "none"
  factor: float = 1.0
  original_max_position: int = 8192
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  beta_fast: float = 32.0
  beta_slow: float = 1.0
  attention_factor: float | None = None

  def __post_init__(self) -> None:
    if self.kind not in ROPE_SCALINGS:
      raise ValueError(f"rope scaling {self.kind!r}; expected one of {ROPE_SCALINGS}")
    if self.kind != "none" and self.factor <= 0:
      raise ValueError(f"rope scaling factor must be positive, got {self.factor}")
    if self.attention_factor is not None and (self.kind != "yarn" or self.attention_factor <= 0):
      raise ValueError(f"rope attention_factor={self.attention_factor} needs the 'yarn' scaling (got "
                       f"{self.kind!r}) and a positive value")


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling = RopeScaling()
                     ) -> tuple[np.ndarray, float]:
  """(inverse frequencies [head_dim // 2] float64, attention factor applied to rotated q and k)."""
  exponents = np.arange(0, head_dim, 2, dtype=np.float64) / head_dim
  if scaling.kind == "ntk":
    theta = theta * scaling.factor ** (head_dim / (head_dim - 2))
  inv_freq = theta ** -exponents
  if scaling.kind == "linear":
    return inv_freq / scaling.factor, 1.0
  if scaling.kind == "yarn":
    return _yarn(inv_freq, head_dim, theta, scaling)
  if scaling.kind == "llama3":
    return _llama3(inv_freq, scaling), 1.0
  return inv_freq, 1.0


def _yarn(inv_freq: np.ndarray, head_dim: int, theta: float, scaling: RopeScaling
          ) -> tuple[np.ndarray, float]:
  def dimension_rotating(n_rotations: float) -> float:
    """The dimension whose frequency makes `n_rotations` turns over the original context."""
    turns = scaling.original_max_position / (n_rotations * 2 * math.pi)
    return head_dim * math.log(turns) / (2 * math.log(theta))

  low = max(math.floor(dimension_rotating(scaling.beta_fast)), 0)
  high = min(math.ceil(dimension_rotating(scaling.beta_slow)), head_dim - 1)
  if high == low:
    high += 0.001
  ramp = np.clip((np.arange(head_dim // 2) - low) / (high - low), 0.0, 1.0)
  # Dimensions below `low` rotate fast: keep them; above `high`: interpolate fully.
  blended = inv_freq / scaling.factor * ramp + inv_freq * (1.0 - ramp)
  return blended, yarn_attention_factor(scaling.factor, scaling.attention_factor)


def yarn_attention_factor(factor: float, attention_factor: float | None = None,
                          mscale: float | None = None, mscale_all_dim: float | None = None) -> float:
  """YaRN's factor on the rotated q and k, as transformers computes it (`_compute_yarn_parameters`
  in transformers/modeling_rope_utils.py, 5.x): `attention_factor` if given; else, when both `mscale`
  and `mscale_all_dim` are non-zero (DeepSeek's and Ministral 3's form), m(factor, mscale) /
  m(factor, mscale_all_dim); else m(factor, 1); with m(s, k) = 0.1 k ln(s) + 1 for s > 1, else 1.
  """
  if attention_factor is not None:
    return float(attention_factor)

  def m(k: float) -> float:
    return 0.1 * k * math.log(factor) + 1.0 if factor > 1 else 1.0

  if mscale and mscale_all_dim:
    return m(mscale) / m(mscale_all_dim)
  return m(1.0)


def _llama3(inv_freq: np.ndarray, scaling: RopeScaling) -> np.ndarray:
  wavelength = 2 * math.pi / inv_freq
  long_limit = scaling.original_max_position / scaling.low_freq_factor
  short_limit = scaling.original_max_position / scaling.high_freq_factor
  smooth = ((scaling.original_max_position / wavelength - scaling.low_freq_factor)
            / (scaling.high_freq_factor - scaling.low_freq_factor))
  blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
  return np.where(wavelength > long_limit, inv_freq / scaling.factor,
                  np.where(wavelength < short_limit, inv_freq, blended))


def apply_rope(x: jax.Array, positions: jax.Array, theta: float,
               scaling: RopeScaling = RopeScaling()) -> jax.Array:
  """Rotate pairs (x[..., i], x[..., i + d/2]) by position * inv_freq[i] (rotate-half convention).

  Args:
    x: [batch, length, ..., head_dim].
    positions: [batch, length] int.
    theta: frequency base.
    scaling: long-context scaling of the frequencies.
  """
  half = x.shape[-1] // 2
  inv_freq, attention_factor = rope_frequencies(x.shape[-1], theta, scaling)
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
  angles = angles.reshape(angles.shape[:2] + (1,) * (x.ndim - 3) + (half,))
  sin, cos = jnp.sin(angles) * attention_factor, jnp.cos(angles) * attention_factor
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)
