"""Single-device MFU of the training step, against a float32 matmul peak measured in the same run.

MFU = model FLOPs per step (6 x matmul parameters per token + causal attention, xbook.train.flops)
      / step time / measured peak, where the peak is the best FLOP/s of a large float32 matmul on the
same device. Each timed step is followed at once by its own peak measurement and the MFU reported is
the median over these pairs, so that a machine whose speed drifts during the run (a shared VM) is
compared with itself. Runs on whatever single device JAX gives (the CPU here); the default model has
about 22M parameters and the batch one 2,048-token sequence.

Example:
  .venv/bin/python benchmarks/cpu_mfu.py --steps 5 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from xbook.data import trajectory
from xbook.data.features import synthetic_batch
from xbook.figures import print_figures
from xbook.host_env import describe_chipless_tpu_host
from xbook.model import DecoderConfig
from xbook.train import flops
from xbook.train.mesh import MeshConfig
from xbook.train.optimizer import OptimizerConfig
from xbook.train.trainer import Trainer

MODEL = DecoderConfig(vocab_size=8192, d_model=512, n_layers=4, n_heads=8, n_kv_heads=8, head_dim=64,
                      mlp_dim=1536)


def matmul_peak_fn(size: int = 2048, repeats: int = 3) -> Callable[[], float]:
  """A function measuring the best FLOP/s of `repeats` [size, size] x [size, size] float32 matmuls."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()

  def peak() -> float:
    best = float("inf")
    for _ in range(repeats):
      began = time.perf_counter()
      matmul(a, a).block_until_ready()
      best = min(best, time.perf_counter() - began)
    return 2 * size ** 3 / best

  return peak


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--seq_len", type=int, default=2048)
  parser.add_argument("--batch_size", type=int, default=1)
  parser.add_argument("--steps", type=int, default=5,
                      help="timed steps, each paired with a peak measurement (median MFU over the pairs)")
  parser.add_argument("--attention", choices=("dense", "blockwise"), default="blockwise")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  device = jax.devices()[:1]
  model = dataclasses.replace(MODEL, attention=args.attention)
  trainer = Trainer(model_config=model, optimizer_config=OptimizerConfig(),
                    mesh_config=MeshConfig(data=1, fsdp=1, sequence=1, tensor=1),
                    batch_size=args.batch_size, seq_len=args.seq_len)
  assert trainer.mesh.size == len(device)
  batch = synthetic_batch(args.batch_size, args.seq_len, model.vocab_size,
                          kinds=trajectory.KIND_ID["text"])
  peak_fn = matmul_peak_fn()
  state = trainer.init_state(0)
  state, _ = trainer.step(state, batch)  # compiles
  step_times, peaks = [], []
  for _ in range(args.steps):
    began = time.perf_counter()
    state, metrics = trainer.step(state, batch)
    jax.block_until_ready(metrics)
    step_times.append(time.perf_counter() - began)
    peaks.append(peak_fn())
  tokens_per_step = args.batch_size * args.seq_len
  model_flops = tokens_per_step * flops.training_flops_per_token(model, args.seq_len, causal=True)
  full_flops = tokens_per_step * flops.training_flops_per_token(model, args.seq_len, causal=False)
  mfu = lambda flops_per_step: statistics.median(
      flops_per_step / step / peak for step, peak in zip(step_times, peaks))
  result = {"device": device[0].device_kind, "attention": args.attention,
            "params": model.num_params(), "tokens_per_step": tokens_per_step,
            "step_s": statistics.median(step_times), "matmul_peak_flops": statistics.median(peaks),
            "model_flops_per_step": model_flops, "mfu": mfu(model_flops),
            "mfu_full_attention": mfu(full_flops)}
  print_figures(result, args.json)
  return 0


if __name__ == "__main__":
  describe_chipless_tpu_host()  # an entry point: the environment jax starts in (xbook.host_env)
  sys.exit(main(sys.argv[1:]))
