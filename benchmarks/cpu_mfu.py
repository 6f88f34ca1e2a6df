"""Single-device MFU of the training step, against a float32 matmul peak measured in the same run.

MFU = model FLOPs per step (6 x matmul parameters per token + causal attention, xbook.train.flops)
      / step time / measured peak, where the peak is the best FLOP/s of a large float32 matmul on the
same device. Runs on whatever single device JAX gives (the CPU here); the default model has about 22M
parameters and the batch one 2,048-token sequence.

Example:
  .venv/bin/python benchmarks/cpu_mfu.py --steps 5 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from xbook.data import trajectory
from xbook.figures import print_figures, synthetic_batch
from xbook.model import DecoderConfig
from xbook.train import flops
from xbook.train.mesh import MeshConfig
from xbook.train.optimizer import OptimizerConfig
from xbook.train.trainer import Trainer

# Layers unrolled (scan_layers=False): inside the layer scan, XLA's CPU backend lays the MLP's
# backward activations out transposed ([mlp, length]) and the step takes about a third longer.
MODEL = DecoderConfig(vocab_size=8192, d_model=512, n_layers=4, n_heads=8, n_kv_heads=8, head_dim=64,
                      mlp_dim=1536, scan_layers=False)


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
  """Best FLOP/s of a [size, size] x [size, size] float32 matmul."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), jnp.float32)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    began = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - began)
  return 2 * size ** 3 / best


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--seq_len", type=int, default=2048)
  parser.add_argument("--batch_size", type=int, default=1)
  parser.add_argument("--steps", type=int, default=5, help="timed steps (median) after a warm-up step")
  parser.add_argument("--attention", choices=("dense", "blockwise"), default="blockwise")
  parser.add_argument("--scan_layers", action="store_true",
                      help="run the layers under nn.scan (slower on the CPU, see MODEL)")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args(argv)
  device = jax.devices()[:1]
  model = dataclasses.replace(MODEL, attention=args.attention, scan_layers=args.scan_layers)
  trainer = Trainer(model_config=model, optimizer_config=OptimizerConfig(),
                    mesh_config=MeshConfig(data=1, fsdp=1, sequence=1, tensor=1),
                    batch_size=args.batch_size, seq_len=args.seq_len)
  assert trainer.mesh.size == len(device)
  batch = synthetic_batch(args.batch_size, args.seq_len, model.vocab_size,
                          kinds=trajectory.KIND_ID["text"])
  step_s = trainer.median_step_seconds(trainer.init_state(0), batch, args.steps)
  peak = matmul_peak()
  tokens_per_step = args.batch_size * args.seq_len
  model_flops = tokens_per_step * flops.training_flops_per_token(model, args.seq_len, causal=True)
  full_flops = tokens_per_step * flops.training_flops_per_token(model, args.seq_len, causal=False)
  result = {"device": device[0].device_kind, "attention": args.attention,
            "scan_layers": args.scan_layers, "params": model.num_params(), "tokens_per_step": tokens_per_step,
            "step_s": step_s, "matmul_peak_flops": peak, "model_flops_per_step": model_flops,
            "mfu": model_flops / step_s / peak, "mfu_full_attention": full_flops / step_s / peak}
  print_figures(result, args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
