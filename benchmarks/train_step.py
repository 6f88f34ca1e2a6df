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
import sys
import time

import jax

from xbook.data import trajectory
from xbook.data.features import synthetic_batch
from xbook.figures import print_figures
from xbook.gin_flags import parse_gin, split_gin_bindings
from xbook.host_env import describe_chipless_tpu_host
from xbook.train import trainer as trainer_lib


def main(argv: list[str]) -> int:
  argv, bindings = split_gin_bindings(argv)
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gin_file", action="append", default=[])
  parser.add_argument("--steps", type=int, default=10, help="timed steps after one warm-up step")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  parse_gin(args.gin_file, bindings)
  trainer = trainer_lib.trainer_from_gin()
  batch_size, seq_len = trainer.batch_size, trainer.seq_len
  batch = synthetic_batch(batch_size, seq_len, trainer.model_config.vocab_size,
                          kinds=trajectory.KIND_ID["text"])
  state = trainer.init_state(0)
  began = time.perf_counter()
  compiled = trainer.compile_step(state, batch)
  compile_s = time.perf_counter() - began
  memory = compiled.memory_analysis()
  step_s = trainer.median_step_seconds(state, batch, args.steps)
  result = {
      "devices": jax.device_count(), "mesh": dict(trainer.mesh.shape),
      "params": trainer.model_config.num_params(), "batch_size": batch_size, "seq_len": seq_len,
      "compile_s": compile_s, "step_s": step_s, "tokens_per_s": batch_size * seq_len / step_s,
      "argument_bytes_per_device": getattr(memory, "argument_size_in_bytes", None),
      "temp_bytes_per_device": getattr(memory, "temp_size_in_bytes", None),
      "output_bytes_per_device": getattr(memory, "output_size_in_bytes", None),
  }
  print_figures(result, args.json)
  return 0


if __name__ == "__main__":
  describe_chipless_tpu_host()  # an entry point: the environment jax starts in (xbook.host_env)
  sys.exit(main(sys.argv[1:]))
