"""Accuracy, speed and memory of one attention implementation's forward + backward pass.

On random float32 inputs (one causal sequence, laid out contiguous or zig-zag over the devices),
prints the max abs error against dense attention of the outputs and of dq/dk/dv, the median wall time
of a jitted forward + backward, per-device compiled temporary bytes (`compiled.memory_analysis()`) and,
for ring attention, the structural load balance of the length layout (xbook.data.zigzag.ring_balance).
`ring` shards the length over `--devices` devices (mesh axis `sequence`); `blockwise` and `dense`
run on one device. `--memory_sweep` compiles, without running, ring at 4k to 256k tokens on 8
devices and dense at 8k on one, and prints per-device temporary bytes.

Simulated CPU devices are requested automatically (XLA_FLAGS) when the flag is not already set.

Example:
  xbook bench attention --impl ring --seq 8192 --devices 8 --length_layout zigzag --json
  xbook bench attention --memory_sweep
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from xbook.data import zigzag
from xbook.figures import print_figures
from xbook.model.attention import ATTENTION_IMPLS, dense_attention
from xbook.model.blockwise_attention import block_size
from xbook.train.mesh import MeshConfig, make_mesh
from xbook.train.partitioning import DEFAULT_RULES

SWEEP_LENGTHS = (4096, 8192, 16384, 32768, 65536, 131072, 262144)
SWEEP_DEVICES = 8


def _request_host_devices(count: int) -> None:
  """Ask XLA for `count` simulated CPU devices unless XLA_FLAGS already says how many."""
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def _inputs(args: argparse.Namespace) -> dict[str, np.ndarray]:
  """Random q [b, S, h, g, d], k/v [b, S, h, d], output cotangent, and one causal sequence per row."""
  rng = np.random.default_rng(0)
  shape = (args.batch, args.seq, args.kv_heads)
  features = {
      "q": rng.normal(size=shape + (args.group, args.head_dim)).astype(np.float32),
      "k": rng.normal(size=shape + (args.head_dim,)).astype(np.float32),
      "v": rng.normal(size=shape + (args.head_dim,)).astype(np.float32),
      "d_out": rng.normal(size=shape + (args.group, args.head_dim)).astype(np.float32),
      "segment_ids": np.ones((args.batch, args.seq), np.int32),
      "positions": np.tile(np.arange(args.seq, dtype=np.int32), (args.batch, 1)),
  }
  if args.length_layout == "zigzag":
    features = zigzag.apply_layout(features, args.devices)
  return features


def _forward_backward(fn, block: int | None):
  """jit-able (inputs) -> (out, (dq, dk, dv)): the output and its VJP with cotangent d_out."""
  kwargs = {} if block is None else {"block_q": block, "block_kv": block}

  def step(x):
    tokens = {"q_segment_ids": x["segment_ids"], "kv_segment_ids": x["segment_ids"],
              "q_positions": x["positions"], "kv_positions": x["positions"]}
    out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, **tokens, **kwargs), x["q"], x["k"], x["v"])
    return out, vjp(x["d_out"])

  return step


def _ring_mesh(devices: int):
  return make_mesh(MeshConfig(data=1, fsdp=1, sequence=devices, tensor=1),
                   jax.devices()[:devices])


@contextlib.contextmanager
def _on_mesh(mesh):
  """The mesh and the default logical axis rules, from which ring attention takes its sharding."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
    yield


def _shardings(mesh, x: dict[str, np.ndarray]) -> dict[str, NamedSharding]:
  """Length over `sequence`, everything else whole."""
  return {name: NamedSharding(mesh, P(None, "sequence")) for name in x}


def _temp_bytes(compiled) -> int | None:
  return getattr(compiled.memory_analysis(), "temp_size_in_bytes", None)


def _timed(compiled, x, repeats: int):
  """(result, median seconds) of `repeats` timed calls after one warm-up call."""
  result = jax.block_until_ready(compiled(x))
  times = []
  for _ in range(repeats):
    began = time.perf_counter()
    result = jax.block_until_ready(compiled(x))
    times.append(time.perf_counter() - began)
  return result, statistics.median(times)


def benchmark(args: argparse.Namespace) -> dict[str, float | int | None]:
  """Runs `args.impl` and dense on the same inputs; returns the figures printed by main()."""
  x = _inputs(args)
  reference = jax.jit(_forward_backward(dense_attention, None))
  want_out, want_grads = reference(x)
  fn = ATTENTION_IMPLS[args.impl]
  step = _forward_backward(fn, None if args.impl == "dense" else args.block)
  context = contextlib.nullcontext()
  if args.impl == "ring":
    mesh = _ring_mesh(args.devices)
    x = jax.device_put(x, _shardings(mesh, x))
    context = _on_mesh(mesh)
  with context:
    compiled = jax.jit(step).lower(x).compile()
    (out, grads), seconds = _timed(compiled, x, args.repeats)
  local = args.seq // args.devices
  blocks_per_shard = local // block_size(local, args.block)
  return {
      "impl": args.impl, "seq": args.seq, "devices": args.devices if args.impl == "ring" else 1,
      "length_layout": args.length_layout,
      "max_err_out": float(jnp.max(jnp.abs(out - want_out))),
      "max_err_grad": max(float(jnp.max(jnp.abs(g - w))) for g, w in zip(grads, want_grads)),
      "max_err_dq_dk_dv": [float(jnp.max(jnp.abs(g - w))) for g, w in zip(grads, want_grads)],
      "seconds": seconds,
      "temp_bytes_per_device": _temp_bytes(compiled),
      "balance": (zigzag.ring_balance(args.length_layout, args.devices, blocks_per_shard)
                  if args.impl == "ring" else None),
  }


def memory_sweep(args: argparse.Namespace) -> list[dict[str, int | str | None]]:
  """Per-device temporary bytes of compiled forward + backward, compiled without running."""
  rows = []

  def compile_temp(impl: str, seq: int, devices: int) -> int | None:
    shapes = {"q": (args.batch, seq, args.kv_heads, args.group, args.head_dim),
              "k": (args.batch, seq, args.kv_heads, args.head_dim),
              "v": (args.batch, seq, args.kv_heads, args.head_dim),
              "d_out": (args.batch, seq, args.kv_heads, args.group, args.head_dim),
              "segment_ids": (args.batch, seq), "positions": (args.batch, seq)}
    mesh = _ring_mesh(devices)
    abstract = {name: jax.ShapeDtypeStruct(
        shape, jnp.int32 if len(shape) == 2 else jnp.float32,
        sharding=NamedSharding(mesh, P(None, "sequence"))) for name, shape in shapes.items()}
    step = _forward_backward(ATTENTION_IMPLS[impl], None if impl == "dense" else args.block)
    with _on_mesh(mesh):
      return _temp_bytes(jax.jit(step).lower(abstract).compile())

  for seq in SWEEP_LENGTHS:
    rows.append({"impl": "ring", "seq": seq, "devices": SWEEP_DEVICES,
                 "temp_bytes_per_device": compile_temp("ring", seq, SWEEP_DEVICES)})
  rows.append({"impl": "dense", "seq": 8192, "devices": 1,
               "temp_bytes_per_device": compile_temp("dense", 8192, 1)})
  return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The benchmark's flags (shared by `xbook bench attention` and benchmarks/attention.py)."""
  parser.add_argument("--impl", choices=("ring", "blockwise", "dense"), default="ring")
  parser.add_argument("--seq", type=int, default=8192, help="sequence length S")
  parser.add_argument("--devices", type=int, default=8, help="ring size (mesh axis `sequence`)")
  parser.add_argument("--length_layout", "--layout", choices=zigzag.LENGTH_LAYOUTS, default="zigzag",
                      help="order of the length axis (--layout: its old name)")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--kv_heads", type=int, default=1)
  parser.add_argument("--group", type=int, default=2, help="query heads per kv head")
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--block", type=int, default=512, help="query and key/value block size")
  parser.add_argument("--repeats", type=int, default=3, help="timed runs (median) after a warm-up")
  parser.add_argument("--memory_sweep", action="store_true",
                      help="compile ring at 4k..256k on 8 devices and dense at 8k on one; no run")
  parser.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
  """Run the benchmark (or the memory sweep) the parsed flags describe and print its figures."""
  _request_host_devices(SWEEP_DEVICES if args.memory_sweep else args.devices)
  if args.memory_sweep:
    rows = memory_sweep(args)
    if args.json:
      print(json.dumps(rows))
    else:
      for row in rows:
        print(f"{row['impl']:>6} S={row['seq']:>7} devices={row['devices']}: "
              f"{row['temp_bytes_per_device'] / 2**20:,.1f} MiB temp per device")
    return 0
  print_figures(benchmark(args), args.json)
  return 0
