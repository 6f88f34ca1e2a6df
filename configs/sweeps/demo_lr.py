"""Learning rate x warmup on the demo config: a grid of 2 learning rates, 2 random warmup lengths each.

  python -m launch.sweep run configs/sweeps/demo_lr.py --out sweeps/demo_lr --parallel 2
(after `bash launch/demo.sh` has prepared demo_out/scaffolds.jsonl and demo_out/vocab.model; point
elsewhere with --gin.SCAFFOLDS="'DIR/scaffolds.jsonl'" --gin.VOCAB="'DIR/vocab.model'").
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": "demo_lr",
      "gin_files": ["configs/runs/demo.gin"],
      # Short runs: 30 steps, one checkpoint at the end, one evaluation at the end.
      "bindings": {"train.steps": 30, "train.checkpoint_every": 30, "train.eval_every": 30,
                   "OptimizerConfig.decay_steps": 30},
      "grid": {"OptimizerConfig.learning_rate": [1e-3, 3e-3]},
      "random": {"num_samples": 2, "seed": 0,
                 # Weight decay barely moves the loss of a 30-step run; the warmup length does.
                 "params": {"OptimizerConfig.warmup_steps": {"choice": [1, 5, 15]}}},
  }, allow_dotted_keys=True)
