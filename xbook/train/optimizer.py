"""AdamW with warmup then cosine decay, global-norm clipping, and no weight decay on norm scales."""

from __future__ import annotations

import dataclasses

import gin
import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Hyperparameters of the optimizer and its learning-rate schedule, and the dtype of its state."""

  learning_rate: float = 3e-4
  schedule: str = "cosine"
  warmup_steps: int = 100
  decay_steps: int = 10_000
  final_lr_fraction: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.1
  clip_norm: float = 1.0
  # Storage dtype of Adam's first moment (None: the parameters' dtype). The second moment keeps the
  # parameters' dtype (optax.adamw's `mu_dtype`; bf16 squared gradients lose too much range).
  mu_dtype: str | None = None


# `OptimizerConfig.<field> = ...` in gin; entry points build it with xbook.gin_flags.configured(OptimizerConfig),
# and `OptimizerConfig()` here or in any library code is the plain defaults.
gin.external_configurable(OptimizerConfig, module=__name__)


def learning_rate_schedule(config: OptimizerConfig) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then cosine or linear decay to `final_lr_fraction` of it by
  `decay_steps` (counted from step 0, warmup included)."""
  end_value = config.learning_rate * config.final_lr_fraction
  decay_steps = max(config.decay_steps, config.warmup_steps + 1)
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps,
        decay_steps=decay_steps, end_value=end_value)
  if config.schedule == "linear":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps),
         optax.linear_schedule(config.learning_rate, end_value, decay_steps - config.warmup_steps)],
        boundaries=[config.warmup_steps])
  raise ValueError(f"OptimizerConfig.schedule must be 'cosine' or 'linear', got {config.schedule!r}")


def decay_mask(params):
  """Weight decay on matrices only: norm scales (1-D, or 2-D when stacked over layers) are exempt."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(getattr(k, "key", None) == "scale" for k in path), params)


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(config.clip_norm),
      optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2, eps=config.eps,
                  weight_decay=config.weight_decay, mask=decay_mask,
                  mu_dtype=None if config.mu_dtype is None else jnp.dtype(config.mu_dtype)))
