"""Token-level cross-entropy weighted by `decoder_loss_weights`, in float32, and its split by segment kind."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_nll(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Negative log-likelihood of each target and the log-normaliser, both [batch, length] float32.

  Args:
    logits: [batch, length, vocab] (any float dtype; computed in float32).
    targets: [batch, length] int token ids.
  """
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return log_z - target_logit, log_z


def weighted_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                           z_loss: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean negative log-likelihood over weighted tokens.

  Args:
    logits: [batch, length, vocab].
    targets: [batch, length] int token ids.
    weights: [batch, length] loss weight per token (0 on padding and unsupervised segments).
    z_loss: coefficient of log(Z)^2, which keeps the softmax normaliser near 1.

  Returns:
    (loss, aux) with aux["nll"] the [batch, length] per-token NLL and aux["weight_sum"] the total weight.
  """
  nll, log_z = token_nll(logits, targets)
  weights = weights.astype(jnp.float32)
  weight_sum = jnp.sum(weights)
  denominator = jnp.maximum(weight_sum, 1e-8)
  loss = jnp.sum(nll * weights) / denominator
  if z_loss:
    loss = loss + z_loss * jnp.sum(jnp.square(log_z) * weights) / denominator
  return loss, {"nll": nll, "weight_sum": weight_sum}


def nll_by_kind(nll: jax.Array, kinds: jax.Array, weights: jax.Array, n_kinds: int
                ) -> tuple[jax.Array, jax.Array]:
  """Sum of `weights` * NLL and sum of `weights` over the tokens of each segment kind.

  With `weights` the mask of real tokens (segment id > 0) these are each kind's NLL sum and token count
  whatever its loss weight; with the loss weights, the weighted loss split by kind (its sums over kinds
  are weighted_cross_entropy's weighted NLL sum and weight sum).

  Args:
    nll: [batch, length] per-token NLL.
    kinds: [batch, length] segment kind ids in [0, n_kinds).
    weights: [batch, length] bool or float: 0 on padding.
    n_kinds: number of segment kinds.

  Returns:
    (nll_sums, weight_sums), each [n_kinds] float32.
  """
  one_hot = jax.nn.one_hot(kinds, n_kinds, dtype=jnp.float32) * weights[..., None].astype(jnp.float32)
  return jnp.einsum("bl,blk->k", nll, one_hot), jnp.sum(one_hot, axis=(0, 1))
