"""The features of xbook's examples: their names, dtypes and meaning, declared here and nowhere else.

Task features, per example [n] (what the views build, xbook.data.pieces / paper_stages, and the seqio
tasks of xbook.data.tasks carry):
  targets        int32    token ids of a trajectory window, a whole book or packed stage examples
  loss_weights   float32  weight of each token: its segment kind's weight times the piece's scale
  segment_kinds  int32    segment kind of each token (xbook.data.trajectory.KIND_ID)
  segment_ids    int32    1..k for the k sequences packed into the example (1 when unpacked)
  positions      int32    position of each token inside its own sequence

Example features (docs/architecture.md), [length] per example and [batch, length] once batched, with
`length` a multiple of the sequence-parallel degree (what xbook.data.feature_converter makes of the task
features, and what training, evaluation and the benchmarks read):
  decoder_input_tokens   int32    targets shifted right, the vocabulary's BOS at the start of every
                                  packed sequence
  decoder_target_tokens  int32    the tokens to predict
  decoder_loss_weights   float32  0 on padding, else the segment kind's weight
  decoder_segment_ids    int32    1..k for the k sequences packed into the row, 0 on padding
  decoder_positions      int32    position of each token inside its own sequence
  decoder_segment_kinds  int32    segment kind of each token (prompt, premise, ..., text), so that loss
                                  and perplexity are reported per kind

All zeros is padding in both: segment id 0 hides a token whatever its id (id 0 is a real token for
Llama 3 and Qwen), and weight 0 keeps it out of the loss.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

TASK_FEATURES: dict[str, np.dtype] = {
    "targets": np.dtype(np.int32),
    "loss_weights": np.dtype(np.float32),
    "segment_kinds": np.dtype(np.int32),
    "segment_ids": np.dtype(np.int32),
    "positions": np.dtype(np.int32),
}

EXAMPLE_FEATURES: dict[str, np.dtype] = {
    "decoder_input_tokens": np.dtype(np.int32),
    "decoder_target_tokens": np.dtype(np.int32),
    "decoder_loss_weights": np.dtype(np.float32),
    "decoder_segment_ids": np.dtype(np.int32),
    "decoder_positions": np.dtype(np.int32),
    "decoder_segment_kinds": np.dtype(np.int32),
}


def pad_batch(batch: Mapping[str, Any] | None, rows: int, length: int) -> dict[str, np.ndarray]:
  """`batch` ({feature: [have <= rows, length]}) with all-padding rows after its own up to `rows` rows,
  every example feature in its dtype; for None, `rows` rows of padding only (all zeros). The one padder of
  example batches: the trainer's eval step, held-out perplexity and the rows a batch is built into.

  Raises:
    ValueError: naming the feature, when `batch` lacks one, has more than `rows` rows or another length.
  """
  if batch is None:
    return {name: np.zeros((rows, length), dtype) for name, dtype in EXAMPLE_FEATURES.items()}
  padded = {}
  for name, dtype in EXAMPLE_FEATURES.items():
    if name not in batch:
      raise ValueError(f"batch has no {name!r}: example batches carry {', '.join(EXAMPLE_FEATURES)}")
    value = np.asarray(batch[name], dtype)
    if value.ndim != 2 or value.shape[0] > rows or value.shape[1] != length:
      raise ValueError(f"batch feature {name!r} is {list(value.shape)}; expected [at most {rows}, {length}]")
    padded[name] = np.pad(value, [(0, rows - value.shape[0]), (0, 0)])
  return padded


def synthetic_batch(batch_size: int, seq_len: int, vocab_size: int, *, kinds: int | None = None,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """Random tokens as a batch of example features (for benchmarks and tests): one unpacked sequence
  per row, [batch_size, seq_len] each.

  Loss weights are 1 and every token has segment kind `kinds` (an int) or a random kind in [0, 7) when
  `kinds` is None.
  """
  rng = np.random.default_rng(seed)
  shape = (batch_size, seq_len)
  tokens = rng.integers(3, vocab_size, shape, dtype=np.int32)
  values = {
      "decoder_input_tokens": tokens,
      "decoder_target_tokens": np.roll(tokens, -1, axis=1),
      "decoder_loss_weights": np.ones(shape),
      "decoder_segment_ids": np.ones(shape),
      "decoder_positions": np.broadcast_to(np.arange(seq_len), shape),
      "decoder_segment_kinds": (rng.integers(0, 7, shape, dtype=np.int32) if kinds is None
                                else np.full(shape, kinds)),
  }
  return {name: np.array(values[name], dtype) for name, dtype in EXAMPLE_FEATURES.items()}
