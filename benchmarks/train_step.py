"""Speed and memory of one training step of a gin-configured model on the local devices.

Prints compile time, per-device compiled memory (arguments, temporaries, outputs), mean step time and
tokens/s over timed steps, measured in one run on random tokens (the step's cost does not depend on
the text).

Example:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 .venv/bin/python benchmarks/train_step.py \
      --gin_file=configs/runs/demo.gin --steps 10 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import gin
import jax
import numpy as np

from xbook.data import trajectory
from xbook.gin_flags import parse_gin, split_gin_bindings
from xbook.train import partitioning
from xbook.train import trainer as trainer_lib
from xbook.train.mesh import MeshConfig
from xbook.train.optimizer import OptimizerConfig


def main(argv: list[str]) -> int:
  argv, bindings = split_gin_bindings(argv)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gin_file", action="append", default=[])
  parser.add_argument("--steps", type=int, default=10, help="timed steps after one warm-up step")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  parse_gin(args.gin_file, bindings)
  batch_size = gin.query_parameter("train.batch_size")
  seq_len = gin.query_parameter("train.seq_len")
  model_config = gin.get_bindings("xbook.model.DecoderConfig")
  trainer = trainer_lib.Trainer(
      model_config=trainer_lib.DecoderConfig(**model_config), optimizer_config=OptimizerConfig(),
      mesh_config=MeshConfig(), batch_size=batch_size, seq_len=seq_len,
      rules=partitioning.logical_axis_rules())
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, trainer.model_config.vocab_size, (batch_size, seq_len), dtype=np.int32)
  batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": np.roll(tokens, -1, axis=1),
           "decoder_loss_weights": np.ones((batch_size, seq_len), np.float32),
           "decoder_segment_ids": np.ones((batch_size, seq_len), np.int32),
           "decoder_positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), tokens.shape).copy(),
           "decoder_segment_kinds": np.full((batch_size, seq_len), trajectory.KIND_ID["text"], np.int32)}
  state = trainer.init_state(0)
  began = time.perf_counter()
  compiled = trainer.compile_step(state, batch)
  compile_s = time.perf_counter() - began
  memory = compiled.memory_analysis()
  state, metrics = trainer.step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(args.steps):
    began = time.perf_counter()
    state, metrics = trainer.step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - began)
  step_s = statistics.median(times)
  result = {
      "devices": jax.device_count(), "mesh": dict(trainer.mesh.shape),
      "params": trainer.model_config.num_params(), "batch_size": batch_size, "seq_len": seq_len,
      "compile_s": compile_s, "step_s": step_s, "tokens_per_s": batch_size * seq_len / step_s,
      "argument_bytes_per_device": getattr(memory, "argument_size_in_bytes", None),
      "temp_bytes_per_device": getattr(memory, "temp_size_in_bytes", None),
      "output_bytes_per_device": getattr(memory, "output_size_in_bytes", None),
  }
  if args.json:
    print(json.dumps(result))
  else:
    for key, value in result.items():
      print(f"{key:>28}: {value:,.4g}" if isinstance(value, float) else f"{key:>28}: {value}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
