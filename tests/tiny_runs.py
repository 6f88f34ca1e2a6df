"""Training a tiny run inside a test: the one helper the test files share.

`train_tiny` binds the mesh (8 simulated devices: data 2 x fsdp 2 x sequence 1 x tensor 2 unless told)
and the optimizer in gin, trains with `xbook.train.trainer.train` and clears gin again, so tests never
leak configuration into each other.
"""

from __future__ import annotations

from typing import Any, Sequence

import gin

from xbook.data.spec import DataSpec
from xbook.model import DecoderConfig
from xbook.train import trainer as trainer_lib
from xbook.train.run_info import RunInfo

# A 2-layer decoder of 0.2M parameters over a 1,024-piece vocabulary (conftest's `vocab_path`).
MODEL = DecoderConfig(vocab_size=1024, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                      mlp_dim=128)
MESH = (2, 2, 1, 2)


def run_data(run_dir, scaffold_file, seq_len: int) -> DataSpec:
  """The DataSpec of a run trained on `scaffold_file` with train()'s default data settings (windows, no
  loss weights given), in the run's own vocabulary (its `vocab/` copy), at `seq_len`."""
  return DataSpec.build(str(scaffold_file), RunInfo.read(run_dir).load_vocabulary(), seq_len)


def train_tiny(run_dir, scaffold_file, vocab_path, *, steps: int, model: DecoderConfig = MODEL,
               mesh: Sequence[int] = MESH, learning_rate: float = 3e-3, warmup_steps: int = 1,
               gin_bindings: Sequence[str] = (), **train_kwargs: Any) -> dict[str, float]:
  """Train (or resume) `run_dir` to `steps` on the scaffolds; returns train()'s last metrics.

  `gin_bindings` are added to the mesh and optimizer bindings; `train_kwargs` replace train()'s
  defaults here (batch 8, 256 tokens, a checkpoint at the end).
  """
  bindings = [f"MeshConfig.{axis} = {size}" for axis, size in zip(("data", "fsdp", "sequence", "tensor"), mesh)]
  bindings += [f"OptimizerConfig.learning_rate = {learning_rate}",
               f"OptimizerConfig.warmup_steps = {warmup_steps}", *gin_bindings]
  kwargs = dict(scaffold_files=str(scaffold_file), vocab_path=str(vocab_path), model_config=model,
                steps=steps, batch_size=8, seq_len=256, checkpoint_every=steps, seed=0)
  kwargs.update(train_kwargs)
  gin.clear_config()
  gin.parse_config(bindings)
  try:
    return trainer_lib.train(str(run_dir), **kwargs)
  finally:
    gin.clear_config()
