"""Blockwise and ring attention against dense attention, and the zig-zag length layout.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 set before jax is imported: ring tests
shard the length over up to 8 simulated devices and skip when fewer are present.
"""

from __future__ import annotations

import contextlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from xbook.data import zigzag
from xbook.model import Decoder, DecoderConfig
from xbook.model.attention import ATTENTION_IMPLS, dense_attention
from xbook.model.attention_mask import MASKED_SCORE, attention_mask
from xbook.model.blockwise_attention import (
  blocks_fully_visible,
  blocks_interact,
  blockwise_attention_with_lse,
)
from xbook.model.ring_attention import ring_attention_with_lse, ring_specs
from xbook.train.mesh import MeshConfig, make_mesh
from xbook.train.partitioning import DEFAULT_RULES

BATCH, LENGTH, N_KV, DIM, BLOCK = 4, 64, 2, 8, 4

needs_8_devices = pytest.mark.skipif(
    jax.device_count() < 8, reason="set XLA_FLAGS=--xla_force_host_platform_device_count=8")


def make_inputs(group: int, packed: bool, layout: str, n_shards: int, dtype=np.float32, seed: int = 0):
  """Random q/k/v [BATCH, LENGTH, ...] and token features in `layout` for `n_shards` devices.

  Packed rows hold segments of uneven length crossing shard boundaries, and some end in padding;
  every row starts with a token at position 0 that sees only itself.
  """
  rng = np.random.default_rng(seed)
  segment_ids = np.ones((BATCH, LENGTH), np.int32)
  positions = np.tile(np.arange(LENGTH, dtype=np.int32), (BATCH, 1))
  if packed:
    for row in range(BATCH):
      start, segment = 0, 1
      while start < LENGTH:
        size = int(rng.integers(3, 29))
        segment_ids[row, start:start + size] = segment
        positions[row, start:start + size] = np.arange(min(size, LENGTH - start))
        start, segment = start + size, segment + 1
      if row % 2:
        pad = int(rng.integers(1, 12))
        segment_ids[row, -pad:] = 0
        positions[row, -pad:] = 0
  features = {
      "q": rng.normal(size=(BATCH, LENGTH, N_KV, group, DIM)),
      "k": rng.normal(size=(BATCH, LENGTH, N_KV, DIM)),
      "v": rng.normal(size=(BATCH, LENGTH, N_KV, DIM)),
      "d_out": rng.normal(size=(BATCH, LENGTH, N_KV, group, DIM)),
      "d_lse": rng.normal(size=(BATCH, LENGTH, N_KV, group)),
      "segment_ids": segment_ids, "positions": positions}
  if layout == "zigzag":
    features = zigzag.apply_layout(features, n_shards)
  return {name: x.astype(dtype) if x.dtype == np.float64 else x for name, x in features.items()}


def dense_with_lse(q, k, v, *, q_segment_ids, kv_segment_ids, q_positions, kv_positions):
  """Reference (out, lse): dense attention and the log-sum-exp of its masked float32 scores."""
  out = dense_attention(q, k, v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
                        q_positions=q_positions, kv_positions=kv_positions)
  scores = jnp.einsum("bqhgd,bkhd->bqhgk", q, k, preferred_element_type=jnp.float32) * DIM ** -0.5
  mask = attention_mask(q_segment_ids, kv_segment_ids, q_positions, kv_positions)
  lse = jax.nn.logsumexp(jnp.where(mask[:, :, None, None, :], scores, MASKED_SCORE), axis=-1)
  return out, lse


def outputs_and_grads(fn, x):
  """(out, lse, (dq, dk, dv)) of fn, with grads of sum(out * d_out) + sum(lse * d_lse) on seen rows."""
  tokens = {"q_segment_ids": x["segment_ids"], "kv_segment_ids": x["segment_ids"],
            "q_positions": x["positions"], "kv_positions": x["positions"]}
  seen = (x["segment_ids"] > 0)[:, :, None, None]

  def loss(q, k, v):
    out, lse = fn(q, k, v, **tokens)
    objective = jnp.sum(out.astype(jnp.float32) * x["d_out"].astype(jnp.float32))
    return objective + jnp.sum(jnp.where(seen, lse, 0.0) * x["d_lse"].astype(jnp.float32)), (out, lse)

  grads, (out, lse) = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(x["q"], x["k"], x["v"])
  return out, jnp.where(seen, lse, 0.0), grads


def assert_close(got, want, tol):
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), atol=tol, rtol=tol)


def seq_mesh(sequence: int):
  """8 devices: `sequence` shards of the length, kv heads over tensor where devices allow."""
  tensor = 2 if sequence <= 4 else 1
  return make_mesh(MeshConfig(data=1, fsdp=8 // (sequence * tensor), sequence=sequence, tensor=tensor))


@contextlib.contextmanager
def on_mesh(mesh, rules=DEFAULT_RULES):
  """The mesh and logical axis rules under which the trainer traces its steps."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def test_implementations_are_registered():
  assert {"dense", "blockwise", "ring"} <= set(ATTENTION_IMPLS)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("group", [1, 4])
def test_blockwise_matches_dense_float32(packed, group):
  x = make_inputs(group, packed, "contiguous", 1)
  block = lambda *a, **kw: blockwise_attention_with_lse(*a, **kw, block_q=8, block_kv=16)
  assert_close(outputs_and_grads(block, x), outputs_and_grads(dense_with_lse, x), 1e-5)


def test_blockwise_on_uneven_length_and_ring_without_mesh_match_dense():
  x = {name: value[:, :60] for name, value in make_inputs(2, True, "contiguous", 1).items()}
  want = outputs_and_grads(dense_with_lse, x)
  block = lambda *a, **kw: blockwise_attention_with_lse(*a, **kw, block_q=16, block_kv=16)
  assert_close(outputs_and_grads(block, x), want, 1e-5)
  ring = lambda *a, **kw: ring_attention_with_lse(*a, **kw, block_q=16, block_kv=16)
  assert_close(outputs_and_grads(ring, x), want, 1e-5)


def test_blocks_interact_skips_by_position_and_padding():
  ids, none = np.ones((2, 4), np.int32), np.zeros((2, 4), np.int32)
  early, late = np.tile(np.arange(4), (2, 1)), np.tile(np.arange(4, 8), (2, 1))
  assert blocks_interact(ids, ids, late, early)
  assert blocks_interact(ids, ids, late, late)
  assert not blocks_interact(ids, ids, early, late)
  assert not blocks_interact(ids, none, late, early)
  assert blocks_interact(ids, ids, np.stack([early[0], late[1]]), late)  # any row of the batch


def test_blocks_fully_visible_only_below_the_diagonal_of_one_segment():
  ids = np.ones((2, 4), np.int32)
  early, late = np.tile(np.arange(4), (2, 1)), np.tile(np.arange(4, 8), (2, 1))
  assert blocks_fully_visible(ids, ids, late, early)
  assert not blocks_fully_visible(ids, ids, late, late)  # the diagonal block needs the causal mask
  assert not blocks_fully_visible(ids, ids, early, late)
  two_books = np.array([[1, 1, 2, 2], [1, 1, 1, 1]], np.int32)
  assert not blocks_fully_visible(two_books, ids, late, early)  # a segment boundary needs a mask
  assert not blocks_fully_visible(ids, 2 * ids, late, early)  # other segment: nothing visible
  padded = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], np.int32)
  assert not blocks_fully_visible(ids, padded, late, early)


def _scanned_layers_grad_temp_bytes(length: int, block: int = 64, n_layers: int = 2) -> int:
  """Temporary bytes of the compiled gradient of `n_layers` scanned blockwise-attention layers."""
  ids = jnp.ones((1, length), jnp.int32)
  positions = jnp.arange(length, dtype=jnp.int32)[None]

  def layer(x, w):  # x [1, length, 16], w [16, 16]
    q, kv = (x @ w)[:, :, None, None, :], (x @ w)[:, :, None, :]
    out = blockwise_attention_with_lse(q, kv, kv, q_segment_ids=ids, kv_segment_ids=ids,
                                       q_positions=positions, kv_positions=positions, block_q=block,
                                       block_kv=block)[0]
    return out[:, :, 0, 0, :], None

  loss = lambda ws, x: jnp.sum(jax.lax.scan(layer, x, ws)[0] ** 2)
  args = (jax.ShapeDtypeStruct((n_layers, 16, 16), jnp.float32),
          jax.ShapeDtypeStruct((1, length, 16), jnp.float32))
  return jax.jit(jax.grad(loss)).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_scanned_layers_keep_attention_memory_linear_in_length():
  """Under a layer scan, differentiating once hoisted every block pair's mask and branch outputs out
  of the loop (the token features are the same in every layer), stacked: quadratic in the length."""
  short, long = _scanned_layers_grad_temp_bytes(1024), _scanned_layers_grad_temp_bytes(2048)
  assert long / short < 2.5, (short, long)


def test_blockwise_matches_dense_bfloat16():
  x = make_inputs(4, True, "contiguous", 1, dtype=jnp.bfloat16)
  block = lambda *a, **kw: blockwise_attention_with_lse(*a, **kw, block_q=8, block_kv=16)
  got = outputs_and_grads(block, x)
  want = outputs_and_grads(dense_with_lse, {**x, **{n: x[n].astype(np.float32) for n in "qkv"}})
  assert_close(got, want, 1e-2)


# Every sequence degree x layout with (unpacked, MHA) and (packed, GQA); the other two packing x group
# pairs at sequence=4 only, to keep the file fast on two cores.
RING_CASES = [(sequence, layout, packed, group) for sequence in (1, 2, 4, 8)
              for layout in ("contiguous", "zigzag") for packed in (False, True) for group in (1, 4)]


@needs_8_devices
@pytest.mark.parametrize("sequence,layout,packed,group", RING_CASES)
def test_ring_matches_dense(sequence, layout, packed, group):
  x = make_inputs(group, packed, layout, sequence, seed=sequence)
  want = outputs_and_grads(dense_with_lse, x)
  ring = lambda *a, **kw: ring_attention_with_lse(*a, **kw, block_q=BLOCK, block_kv=BLOCK)
  with on_mesh(seq_mesh(sequence)):
    got = outputs_and_grads(ring, x)
  assert_close(got, want, 1e-5)
  # Index 0 holds the first token in both layouts: it attends only to itself.
  first = np.asarray(got[0])[:, 0]
  np.testing.assert_allclose(first, np.broadcast_to(x["v"][:, 0, :, None], first.shape), atol=1e-6)


@needs_8_devices
def test_ring_matches_dense_bfloat16():
  x = make_inputs(4, True, "zigzag", 4, dtype=jnp.bfloat16, seed=3)
  want = outputs_and_grads(dense_with_lse, {**x, **{n: x[n].astype(np.float32) for n in "qkv"}})
  ring = lambda *a, **kw: ring_attention_with_lse(*a, **kw, block_q=BLOCK, block_kv=BLOCK)
  with on_mesh(seq_mesh(4)):
    got = outputs_and_grads(ring, x)
  assert got[0].dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in got[2])
  # bf16 keeps 8 significant bits: single elements (the gradients summed over ring steps) may be a
  # couple of bf16 steps off, but the typical error stays at rounding level, with no bias.
  assert_close(got, want, 2e-2)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert np.mean(np.abs(np.asarray(g, np.float32) - np.asarray(w, np.float32))) < 2e-3


@needs_8_devices
def test_ring_hlo_permutes_and_never_gathers_full_kv():
  x = make_inputs(2, True, "zigzag", 4)
  ring = lambda *a, **kw: ring_attention_with_lse(*a, **kw, block_q=BLOCK, block_kv=BLOCK)
  with on_mesh(seq_mesh(4)):
    step = jax.jit(lambda x: outputs_and_grads(ring, x))
    hlo = step.lower(x).compile().as_text()
  assert "collective-permute" in hlo
  gathers = [line for line in hlo.splitlines() if "all-gather" in line]
  assert not [line for line in gathers if f",{LENGTH}," in line or f"[{BATCH},{LENGTH}" in line], gathers


# Logical axis rules and the specs ring attention must derive from them on a (data 1, fsdp 2, sequence 2,
# tensor 2) mesh: the defaults; query heads (the group axis) over tensor instead of kv heads, batch whole;
# the length over fsdp and sequence (a ring of 4 over two mesh axes), batch over data (size 1: whole).
RULE_CASES = {
    "default": ({}, P("fsdp", "sequence", "tensor", None, None), ("sequence",)),
    "heads over tensor, batch whole": (
        {"activation_kv_heads": None, "activation_heads": "tensor", "activation_batch": None},
        P(None, "sequence", None, "tensor", None), ("sequence",)),
    "length over fsdp and sequence": (
        {"activation_length": ("fsdp", "sequence"), "activation_batch": "data"},
        P(None, ("fsdp", "sequence"), "tensor", None, None), ("fsdp", "sequence")),
}


@needs_8_devices
@pytest.mark.parametrize("case", RULE_CASES)
def test_ring_takes_its_specs_from_the_logical_rules(case, monkeypatch):
  overrides, want_q, want_ring = RULE_CASES[case]
  rules = tuple((name, overrides.get(name, axes)) for name, axes in DEFAULT_RULES)
  mesh = make_mesh(MeshConfig(data=1, fsdp=2, sequence=2, tensor=2))
  specs = ring_specs(mesh, rules)
  assert (specs.q, specs.ring) == (want_q, want_ring)
  assert specs.kv == P(*want_q[:3], None) and specs.tokens == P(*want_q[:2]) and specs.lse == P(*want_q[:4])
  calls, shard_map = [], jax.shard_map
  monkeypatch.setattr(jax, "shard_map", lambda f, **kw: calls.append(kw) or shard_map(f, **kw))
  x = make_inputs(2, True, "zigzag", specs.ring_size, seed=5)
  ring = lambda *a, **kw: ring_attention_with_lse(*a, **kw, block_q=BLOCK, block_kv=BLOCK)
  with on_mesh(mesh, rules):
    got = outputs_and_grads(ring, x)
  assert calls and all(kw["in_specs"] == (want_q, specs.kv, specs.kv) + (specs.tokens,) * 4
                       and kw["out_specs"] == (want_q, specs.lse) for kw in calls)
  assert_close(got, outputs_and_grads(dense_with_lse, x), 1e-5)


@needs_8_devices
def test_ring_on_a_mesh_needs_logical_rules():
  x = make_inputs(1, False, "contiguous", 2)
  with jax.set_mesh(seq_mesh(2)), pytest.raises(ValueError, match="logical axis rules"):
    ring_attention_with_lse(x["q"], x["k"], x["v"], q_segment_ids=x["segment_ids"],
                            kv_segment_ids=x["segment_ids"], q_positions=x["positions"],
                            kv_positions=x["positions"])


@needs_8_devices
def test_decoder_with_ring_attention_matches_dense():
  config = DecoderConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                         mlp_dim=64)
  x = make_inputs(1, True, "zigzag", 4)
  tokens = np.random.default_rng(1).integers(0, 64, (BATCH, LENGTH), dtype=np.int32)
  mesh = make_mesh(MeshConfig(data=1, fsdp=2, sequence=4, tensor=1))
  with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
    params = jax.jit(Decoder(config).init)(jax.random.key(0), tokens, x["segment_ids"], x["positions"])
    logits = {name: jax.jit(Decoder(DecoderConfig(**{**config.__dict__, "attention": name})).apply)(
        params, tokens, x["segment_ids"], x["positions"]) for name in ("dense", "ring")}
  np.testing.assert_allclose(np.asarray(logits["ring"]), np.asarray(logits["dense"]), atol=2e-5,
                             rtol=2e-5)


@pytest.mark.parametrize("n_shards", [1, 2, 4, 8])
def test_zigzag_shard_holds_chunks_i_and_mirror(n_shards):
  length = 2 * n_shards * 3
  perm = zigzag.zigzag_permutation(length, n_shards)
  chunk_of = perm.reshape(n_shards, 2, 3) // 3
  for i in range(n_shards):
    assert chunk_of[i, 0].tolist() == [i] * 3 and chunk_of[i, 1].tolist() == [2 * n_shards - 1 - i] * 3
  assert sorted(perm.tolist()) == list(range(length))


def test_zigzag_round_trip_is_exact():
  ranks = np.arange(3 * 16)[None, :] + 1000 * np.arange(2)[:, None]  # rank-coded: row * 1000 + index
  features = {"tokens": ranks.astype(np.int32), "weights": ranks.astype(np.float32),
              "embedded": np.stack([ranks, -ranks], axis=-1)}
  laid_out = zigzag.apply_layout(features, 4)
  np.testing.assert_array_equal(laid_out["tokens"][1, :12], 1000 + np.r_[0:6, 42:48])
  restored = zigzag.undo_layout(laid_out, 4)
  for name, x in features.items():
    np.testing.assert_array_equal(restored[name], x)
    assert restored[name].dtype == x.dtype
  with pytest.raises(ValueError):
    zigzag.zigzag_permutation(10, 4)


@pytest.mark.parametrize("n_shards", [2, 4, 8, 16])
def test_ring_balance_contiguous_vs_zigzag(n_shards):
  assert zigzag.ring_balance("zigzag", n_shards) == 1.0
  assert zigzag.ring_balance("contiguous", n_shards, blocks_per_shard=1) == pytest.approx(
      (n_shards + 1) / (2 * n_shards))
  assert zigzag.ring_balance("contiguous", n_shards) < 0.75
