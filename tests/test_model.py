"""The decoder against references: attention vs a float64 numpy softmax, RoPE vs its definition."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xbook.model import Decoder, DecoderConfig, dense_attention
from xbook.model.rope import apply_rope


def reference_attention(q, k, v, segment_ids, positions, window=None):
  """float64 loop over heads: softmax(q k^T / sqrt(d)) v with causal + same-segment masking (and at
  most `window` keys per query)."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  batch, length, n_kv, group, dim = q.shape
  out = np.zeros_like(q)
  for b in range(batch):
    visible = ((segment_ids[b][:, None] == segment_ids[b][None, :])
               & (segment_ids[b][:, None] > 0)
               & (positions[b][None, :] <= positions[b][:, None]))
    if window is not None:
      visible &= positions[b][:, None] - positions[b][None, :] < window
    for h in range(n_kv):
      for g in range(group):
        scores = q[b, :, h, g] @ k[b, :, h].T / np.sqrt(dim)
        scores = np.where(visible, scores, -np.inf)
        for i in range(length):
          if not visible[i].any():
            continue
          p = np.exp(scores[i] - scores[i].max())
          out[b, i, h, g] = (p / p.sum()) @ v[b, :, h]
  return out


@pytest.mark.parametrize("window", [None, 3])
def test_dense_attention_matches_float64_reference_with_packing_and_gqa(window):
  rng = np.random.default_rng(0)
  batch, length, n_kv, group, dim = 2, 12, 2, 3, 8
  q = rng.normal(size=(batch, length, n_kv, group, dim)).astype(np.float32)
  k = rng.normal(size=(batch, length, n_kv, dim)).astype(np.float32)
  v = rng.normal(size=(batch, length, n_kv, dim)).astype(np.float32)
  # Row 0: two packed sequences then padding; row 1: one sequence.
  segment_ids = np.array([[1] * 5 + [2] * 4 + [0] * 3, [1] * 12], np.int32)
  positions = np.array([list(range(5)) + list(range(4)) + [0] * 3, list(range(12))], np.int32)
  got = dense_attention(q, k, v, q_segment_ids=segment_ids, kv_segment_ids=segment_ids,
                        q_positions=positions, kv_positions=positions, sliding_window=window)
  want = reference_attention(q, k, v, segment_ids, positions, window)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5)
  assert not np.asarray(got)[0, 9:].any(), "padding queries must produce zeros"


def test_rope_rotates_pairs_by_position_times_frequency():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 5, 1, 8)).astype(np.float32)
  positions = np.arange(5)[None]
  got = np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(positions), theta=10_000.0))
  half = 4
  freqs = 1.0 / 10_000.0 ** (np.arange(half) / half)
  for t in range(5):
    angle = t * freqs
    x1, x2 = x[0, t, 0, :half].astype(np.float64), x[0, t, 0, half:].astype(np.float64)
    want = np.concatenate([x1 * np.cos(angle) - x2 * np.sin(angle), x2 * np.cos(angle) + x1 * np.sin(angle)])
    np.testing.assert_allclose(got[0, t, 0], want, atol=1e-5)
  # Relative property: <rope(q, m), rope(k, n)> depends only on m - n.
  q, k = rng.normal(size=(2, 8)).astype(np.float32)
  def dot_at(m, n):
    qm = apply_rope(jnp.asarray(q)[None, None, None], jnp.array([[m]]), 10_000.0)
    kn = apply_rope(jnp.asarray(k)[None, None, None], jnp.array([[n]]), 10_000.0)
    return float(jnp.sum(qm * kn))
  assert dot_at(7, 3) == pytest.approx(dot_at(14, 10), rel=1e-4)


def _tiny(**overrides) -> DecoderConfig:
  base = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=48)
  base.update(overrides)
  return DecoderConfig(**base)


def _inputs(batch=2, length=10, seed=0):
  tokens = jax.random.randint(jax.random.key(seed), (batch, length), 3, 97)
  positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
  return tokens, jnp.ones_like(tokens), positions


def test_decoder_is_causal_and_counts_its_parameters():
  config = _tiny()
  model = Decoder(config)
  tokens, segment_ids, positions = _inputs()
  params = nn.unbox(model.init(jax.random.key(0), tokens, segment_ids, positions))["params"]
  assert sum(x.size for x in jax.tree.leaves(params)) == config.num_params()
  logits = model.apply({"params": params}, tokens, segment_ids, positions)
  assert logits.shape == (2, 10, 97) and logits.dtype == jnp.float32
  changed = tokens.at[:, 6:].set(5)
  logits2 = model.apply({"params": params}, changed, segment_ids, positions)
  np.testing.assert_allclose(logits[:, :6], logits2[:, :6], atol=1e-5)
  assert not np.allclose(logits[:, 6:], logits2[:, 6:])


@pytest.mark.parametrize("remat", ["full", "save_dots", "save_attention_out"])
def test_remat_policies_do_not_change_values_or_gradients(remat):
  tokens, segment_ids, positions = _inputs()
  base, rematted = Decoder(_tiny()), Decoder(_tiny(remat=remat))
  params = nn.unbox(base.init(jax.random.key(0), tokens, segment_ids, positions))["params"]
  def loss(model, p):
    return jnp.mean(model.apply({"params": p}, tokens, segment_ids, positions) ** 2)
  g1 = jax.grad(lambda p: loss(base, p))(params)
  g2 = jax.grad(lambda p: loss(rematted, p))(params)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_unscanned_layers_compute_the_same_function_as_scanned():
  tokens, segment_ids, positions = _inputs()
  scanned, unrolled = Decoder(_tiny()), Decoder(_tiny(scan_layers=False))
  params = nn.unbox(scanned.init(jax.random.key(0), tokens, segment_ids, positions))["params"]
  want = scanned.apply({"params": params}, tokens, segment_ids, positions)
  unrolled_params = {k: v for k, v in params.items() if k != "layers"}
  for i in range(2):
    unrolled_params[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
  got = unrolled.apply({"params": unrolled_params}, tokens, segment_ids, positions)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_config_rejects_inconsistent_shapes():
  with pytest.raises(ValueError, match="multiple of n_kv_heads"):
    _tiny(n_heads=3)
  with pytest.raises(ValueError, match="remat"):
    _tiny(remat="sometimes")
  with pytest.raises(ValueError, match="sliding_window=64 needs .* attention='dense'"):
    _tiny(sliding_window=64, attention="ring")


def test_attention_biases_are_parameters_counted_and_used():
  config = _tiny(attention_bias=True)
  model = Decoder(config)
  tokens, segment_ids, positions = _inputs()
  params = nn.unbox(model.init(jax.random.key(0), tokens, segment_ids, positions))["params"]
  assert sum(x.size for x in jax.tree.leaves(params)) == config.num_params()
  assert params["layers"]["attention"]["query_bias"].shape == (2, 2, 2, 8)
  before = model.apply({"params": params}, tokens, segment_ids, positions)
  params["layers"]["attention"]["value_bias"] = params["layers"]["attention"]["value_bias"] + 1.0
  assert not np.allclose(before, model.apply({"params": params}, tokens, segment_ids, positions))
