"""Zig-zag layout of the length axis for load-balanced causal ring attention.

The length is cut into 2N equal chunks and shard i (of N along the `sequence` mesh axis) holds chunks
i and 2N-1-i, pairing an early chunk (few visible keys) with a late one (many). Causality is decided
by positions, so a length layout is a permutation of the length axis applied to every [batch, length]
feature together (tokens, targets, weights, segment ids, positions): attention, RoPE and the loss
are unchanged by it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

LENGTH_LAYOUTS = ("contiguous", "zigzag")


def zigzag_permutation(length: int, n_shards: int) -> np.ndarray:
  """Index array [length]: laid-out position j holds original index perm[j].

  Shard i (positions [i * length / N, (i + 1) * length / N)) holds chunks i and 2N-1-i of 2N equal
  chunks. `length` must be a multiple of 2 * n_shards.
  """
  if n_shards < 1 or length % (2 * n_shards):
    raise ValueError(f"length {length} is not a multiple of 2 * n_shards = {2 * n_shards}")
  chunks = np.arange(length).reshape(2 * n_shards, -1)
  order = [c for i in range(n_shards) for c in (i, 2 * n_shards - 1 - i)]
  return chunks[order].reshape(-1)


def layout_permutation(length_layout: str, length: int, n_shards: int) -> np.ndarray:
  """Index array [length] of `length_layout` ("contiguous": identity, "zigzag": `zigzag_permutation`)."""
  if length_layout == "contiguous":
    return np.arange(length)
  if length_layout == "zigzag":
    return zigzag_permutation(length, n_shards)
  raise ValueError(f"unknown length_layout {length_layout!r}; expected one of {LENGTH_LAYOUTS}")


def apply_layout(features: Mapping[str, np.ndarray], n_shards: int) -> dict[str, np.ndarray]:
  """Zig-zag permutes the length axis of every [batch, length, ...] feature."""
  return {name: _permute(x, n_shards, inverse=False) for name, x in features.items()}


def undo_layout(features: Mapping[str, np.ndarray], n_shards: int) -> dict[str, np.ndarray]:
  """Inverse of `apply_layout`: restores the original order of the length axis."""
  return {name: _permute(x, n_shards, inverse=True) for name, x in features.items()}


def _permute(x: np.ndarray, n_shards: int, inverse: bool) -> np.ndarray:
  perm = zigzag_permutation(x.shape[1], n_shards)
  return np.take(x, np.argsort(perm) if inverse else perm, axis=1)


def ring_balance(length_layout: str, n_shards: int, blocks_per_shard: int = 2) -> float:
  """Structural load balance of causal ring attention: mean over max of per-device work.

  Each device's length chunk is cut into `blocks_per_shard` blocks; over the N ring steps a device
  meets every key/value block once, and a (query block, key/value block) pair is active unless the
  key block's smallest position exceeds the query block's largest (the skip rule of the kernels).
  Contiguous gives about (N + 1) / (2N), zig-zag 1.

  Args:
    length_layout: "contiguous" or "zigzag".
    n_shards: N, the size of the `sequence` mesh axis.
    blocks_per_shard: blocks per device chunk; even for zig-zag so no block straddles its halves.

  Returns:
    mean(per-device active pairs) / max(per-device active pairs), in (0, 1].
  """
  length = 2 * n_shards * blocks_per_shard
  positions = layout_permutation(length_layout, length, n_shards).reshape(n_shards * blocks_per_shard, -1)
  active = positions.min(axis=1)[None, :] <= positions.max(axis=1)[:, None]  # [q block, kv block]
  per_device = active.reshape(n_shards, blocks_per_shard, -1).sum(axis=(1, 2))
  return float(per_device.mean() / per_device.max())
