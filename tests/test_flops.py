"""The MFU formula against XLA's own FLOP count of a compiled training gradient."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from xbook.model import Decoder, DecoderConfig
from xbook.train import flops
from xbook.train.loss import weighted_cross_entropy


def test_formula_by_hand():
  config = DecoderConfig(vocab_size=100, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=4,
                         mlp_dim=16)
  # q 8x8, k 8x4, v 8x4, out 8x8, mlp 3 x 8x16, lm head 8x100.
  params = 64 + 32 + 32 + 64 + 3 * 128 + 800
  assert flops.matmul_params(config) == params
  full = 6 * params + 12 * 1 * 10 * 2 * 4
  assert flops.training_flops_per_token(config, 10, causal=False) == full
  assert flops.training_flops_per_token(config, 10, causal=True) == 6 * params + 6 * 1 * 10 * 2 * 4
  assert flops.mfu(1000.0, 2e9, 4, 1e12) == pytest.approx(0.5)


def test_analytic_flops_match_the_compiler_count_of_a_training_gradient():
  # Unscanned layers: XLA's cost analysis counts a scanned loop body once, not once per layer.
  config = DecoderConfig(vocab_size=512, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=32,
                         mlp_dim=384, scan_layers=False)
  model = Decoder(config)
  batch, length = 2, 256
  tokens = jnp.ones((batch, length), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
  params = nn.unbox(model.init(jax.random.key(0), tokens, tokens, positions))["params"]

  def loss(p):
    logits = model.apply({"params": p}, tokens, tokens, positions)
    return weighted_cross_entropy(logits, tokens, jnp.ones((batch, length)))[0]

  cost = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  # Dense attention computes the whole score matrix, so the full-attention count is the one to match;
  # the rest (softmax, norms, elementwise) adds a few percent.
  analytic = batch * length * flops.training_flops_per_token(config, length, causal=False)
  assert 0.98 < cost["flops"] / analytic < 1.08


def test_peak_is_unknown_on_cpu():
  assert flops.peak_flops_per_device() is None
