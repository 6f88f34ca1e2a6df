"""Token-level cross-entropy weighted by `decoder_loss_weights`, in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def weighted_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                           z_loss: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean negative log-likelihood over weighted tokens.

  Args:
    logits: [batch, length, vocab] (any float dtype; computed in float32).
    targets: [batch, length] int token ids.
    weights: [batch, length] loss weight per token (0 on padding and unsupervised segments).
    z_loss: coefficient of log(Z)^2, which keeps the softmax normaliser near 1.

  Returns:
    (loss, aux) with aux["weight_sum"] the total weight and aux["nll_sum"] the weighted NLL sum.
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = log_z - target_logit
  weights = weights.astype(jnp.float32)
  weight_sum = jnp.sum(weights)
  nll_sum = jnp.sum(nll * weights)
  denominator = jnp.maximum(weight_sum, 1e-8)
  loss = nll_sum / denominator
  if z_loss:
    loss = loss + z_loss * jnp.sum(jnp.square(log_z) * weights) / denominator
  return loss, {"weight_sum": weight_sum, "nll_sum": nll_sum}
