"""Printing and synthesizing what benchmarks need: figures as aligned text or JSON, random batches."""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np


def print_figures(figures: Mapping[str, Any], as_json: bool) -> None:
  """One JSON object, or one `name: value` line per figure (floats to 4 significant digits)."""
  if as_json:
    print(json.dumps(dict(figures)))
    return
  width = max(map(len, figures))
  for name, value in figures.items():
    print(f"{name:>{width}}: {value:,.4g}" if isinstance(value, float) else f"{name:>{width}}: {value}")


def synthetic_batch(batch_size: int, seq_len: int, vocab_size: int, *, kinds: int | None = None,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """Random tokens in the decoder example contract: one unpacked sequence per row.

  Loss weights are 1 and every token has segment kind `kinds` (an int) or a random kind in [0, 7) when
  `kinds` is None; each feature is [batch_size, seq_len].
  """
  rng = np.random.default_rng(seed)
  shape = (batch_size, seq_len)
  tokens = rng.integers(3, vocab_size, shape, dtype=np.int32)
  segment_kinds = (rng.integers(0, 7, shape, dtype=np.int32) if kinds is None
                   else np.full(shape, kinds, np.int32))
  return {"decoder_input_tokens": tokens, "decoder_target_tokens": np.roll(tokens, -1, axis=1),
          "decoder_loss_weights": np.ones(shape, np.float32),
          "decoder_segment_ids": np.ones(shape, np.int32),
          "decoder_positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), shape).copy(),
          "decoder_segment_kinds": segment_kinds}
