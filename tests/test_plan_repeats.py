"""How much of a window's plans repeats its earlier segments (xbook.data.inspection.plan_repeats).

A plan token that copies an earlier segment of its window teaches copying, not planning; `xbook data
inspect` reports the share per task. Measured on the conftest scaffolds (two real novels, extractive
backend) at the demo's sequence length.
"""

from __future__ import annotations

import numpy as np

from xbook.data import inspection, trajectory, vocab
from xbook.data.spec import DataSpec
from xbook.train.input_pipeline import trajectory_batches

DEMO_LEN = 256  # configs/runs/demo.gin's train.seq_len


def _example(kinds_and_ids: list[tuple[str, list[int]]]) -> dict[str, np.ndarray]:
  """A converted example of one packed sequence, weight 1, from (kind, ids) segments."""
  ids = [i for _, seg in kinds_and_ids for i in seg]
  kinds = [trajectory.KIND_ID[kind] for kind, seg in kinds_and_ids for _ in seg]
  return {"decoder_target_tokens": np.asarray(ids), "decoder_segment_kinds": np.asarray(kinds),
          "decoder_segment_ids": np.ones(len(ids), np.int32), "decoder_loss_weights": np.ones(len(ids))}


def test_plan_repeats_counts_plan_tokens_inside_runs_an_earlier_segment_holds():
  prompt = list(range(100, 120))
  premise = list(range(105, 115)) + list(range(500, 505))  # 10 ids copied from the prompt, then 5 new
  text = list(range(900, 930))
  assert inspection.plan_repeats(_example([("prompt", prompt), ("premise", premise), ("text", text)])) == (10, 15)
  # A run shorter than the n-gram is no repeat, and text is never counted.
  short = list(range(100, 107)) + [1, 2, 3]
  assert inspection.plan_repeats(_example([("prompt", prompt), ("synopsis", short), ("text", prompt)])) == (0, 10)


def test_demo_windows_repeat_a_small_share_of_their_plans(vocab_path, scaffold_file):
  """The extractive prompt names characters and places instead of pasting the premise, so at the
  demo's length windows copy few plan tokens (it was 35% on average when the prompt held the premise)."""
  vocabulary = vocab.load_vocabulary(vocab_path)
  data = DataSpec.build(str(scaffold_file), vocabulary, DEMO_LEN)
  shares = []
  for batch in trajectory_batches(data, split="train", global_batch_size=1, seed=0, repeat=False, shuffle=False):
    example = {name: value[0] for name, value in batch.items()}
    repeated, plan_tokens = inspection.plan_repeats(example, vocabulary.marker_ids())
    shares.append(repeated / max(plan_tokens, 1))
  assert len(shares) > 100
  print(f"plan repeat share at {DEMO_LEN} tokens: mean {np.mean(shares):.3f}, max {np.max(shares):.3f}")
  assert np.mean(shares) < 0.08 and np.median(shares) == 0.0
