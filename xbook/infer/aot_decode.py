"""Ahead-of-time proof that inference fits a TPU slice (`xbook compile --decode`), on any host.

The programs are the inference engine's (xbook.infer.engine): one prefill chunk and one decode segment
over `batch` cache slots of `context_len` tokens, with the parameters and the KV cache sharded over the
slice's mesh by decoding's logical rules (xbook.infer.decode.inference_rules: tensor over heads, MLP, vocab
and kv heads, fsdp over `embed`, the cache's length over `sequence` when asked). Both are compiled by
libtpu for the slice's abstract devices (xbook.train.tpu_topology), and reported:

* memory per chip (XLA's memory analysis of each program: arguments + outputs - aliased (the cache and
  logits are donated) + temporaries + code), the larger of the two against the chip's HBM;
* the HBM-bandwidth floor of a decode step: every chip reads its shard of the weights and of the filled
  cache once per step, so no step is faster than (weights + cache) bytes per chip over the chip's HBM
  bandwidth; and the projected time of a step from XLA's cost analysis of the compiled step (bytes it
  accesses over the bandwidth, FLOPs over the peak, whichever is longer).
* the largest batch that fits: memory grows linearly with the slots (cache, logits, activations), so two
  compiles (batch 1 and 2) give the slope; the predicted largest batch is then compiled to confirm it.

HBM bandwidth per chip, from the Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v5e,
/v6e, /v5p, /v4): v5e 819 GB/s, v6e 1,640 GB/s, v5p 2,765 GB/s, v4 1,228 GB/s (v2 700, v3 900).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from xbook.infer import decode as decode_lib
from xbook.infer import engine as engine_lib
from xbook.model import DecoderConfig, abstract_params
from xbook.train.flops import PEAK_FLOPS_PER_DEVICE
from xbook.train.mesh import MeshConfig, make_mesh
from xbook.train.tpu_topology import TpuSlice, parse_slice, topology_devices

log = logging.getLogger(__name__)

HBM_BANDWIDTH = {"v2": 700e9, "v3": 900e9, "v4": 1228e9, "v5p": 2765e9, "v5e": 819e9, "v6e": 1640e9}


@dataclasses.dataclass(frozen=True)
class DecodeTarget:
  """What `xbook compile --decode` compiles: the slice, the engine's shape and the cache's sharding.

  Attributes:
    accelerator: accelerator type ("v5e-8", "v6e-8") or topology of one slice.
    batch: cache slots (requests decoded together).
    context_len: tokens per slot (a prompt plus its answer).
    prefill_chunk: prompt tokens per slot fed in one prefill call.
    sync_every: decode steps per segment (one compiled loop; the memory does not depend on it).
    shard_cache_length: shard the cache's length over the mesh's `sequence` axis.
    param_dtype, cache_dtype: the weights' and the cache's dtype on the chips.
  """

  accelerator: str = "v5e-8"
  batch: int = 1
  context_len: int = 32768
  prefill_chunk: int = 1024
  sync_every: int = 16
  shard_cache_length: bool = False
  param_dtype: str = "bfloat16"
  cache_dtype: str = "bfloat16"


gin.external_configurable(DecodeTarget, module=__name__)


@dataclasses.dataclass(frozen=True)
class DecodeCompileReport:
  """Per-chip figures of the engine's programs on one slice; bytes are per chip."""

  accelerator: str
  topology: str
  chips: int
  mesh: dict[str, int]
  params: int
  batch: int
  context_len: int
  prefill_chunk: int
  shard_cache_length: bool
  param_bytes: int
  cache_bytes: int
  hbm_bytes: int
  prefill_bytes: int  # total of the prefill program (arguments + outputs - aliased + temporaries + code)
  decode_bytes: int
  total_bytes_per_chip: int
  fits: bool
  floor_ms_per_token: float  # (weights + full cache) per chip / HBM bandwidth: one decode step
  projected_ms_per_token: float | None  # from XLA's cost analysis of the compiled step
  step_bytes_accessed: float | None
  step_flops: float | None
  compile_s: float
  extrapolated_from_layers: tuple[int, int] | None = None  # compiled at these layer counts, extrapolated

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _bytes_per_chip(tree: Any) -> int:
  return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
             for leaf in jax.tree.leaves(tree))


def _compile(lowered: jax.stages.Lowered, arguments_bytes: int) -> tuple[jax.stages.Compiled | None, int]:
  """(the compiled program, its bytes per chip: arguments + outputs - aliased + temporaries + code).

  When the TPU compiler refuses the program for lack of HBM (RESOURCE_EXHAUSTED), (None, the temporaries
  it names plus `arguments_bytes`, the donated cache and the weights)."""
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as error:
    needed = re.search(r"HLO temporaries \(([\d.]+)([KMGT])\)", str(error))
    if "RESOURCE_EXHAUSTED" not in str(error) or not needed:
      raise
    log.info("the TPU compiler ran out of HBM: %s", str(error).splitlines()[0])
    return None, int(float(needed.group(1)) * 1024 ** ("KMGT".index(needed.group(2)) + 1)) + arguments_bytes
  analysis = compiled.memory_analysis()
  return compiled, int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                       - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes
                       + analysis.generated_code_size_in_bytes)


def _abstract(shape: tuple[int, ...], dtype: Any, sharding: Any) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=sharding)


def abstract_cache(config: DecoderConfig, batch: int, max_len: int, dtype: Any, mesh: Any, rules: Any):
  """A KVCache of abstract arrays, sharded as decode.init_cache shards a real one."""
  shardings = decode_lib.cache_shardings(config.n_layers, mesh, rules)
  heads = (batch, config.n_kv_heads)
  return decode_lib.KVCache(
      keys=tuple(_abstract(heads + (config.head_dim, max_len), dtype, s) for s in shardings.keys),
      values=tuple(_abstract(heads + (max_len, config.head_dim), dtype, s) for s in shardings.values),
      segment_ids=_abstract((batch, max_len), np.int32, shardings.segment_ids),
      positions=_abstract((batch, max_len), np.int32, shardings.positions),
      lengths=_abstract((batch,), np.int32, shardings.lengths))


def lower_programs(config: DecoderConfig, target: DecodeTarget, mesh: Any, rules: Any) -> dict[str, Any]:
  """The engine's prefill chunk (of one row, as the engine prefills) and decode segment, lowered for abstract
  arguments on `mesh`."""
  run_config = decode_lib.decode_config(config)
  params = decode_lib.PlacedParams(abstract_params(run_config, mesh=mesh, rules=rules, dtype=target.param_dtype))
  cache = abstract_cache(config, target.batch, target.context_len, target.cache_dtype, mesh, rules)
  replicated = NamedSharding(mesh, PartitionSpec())
  rows = target.batch
  logits = _abstract((rows, config.vocab_size), np.float32, replicated)
  vector = lambda dtype: _abstract((rows,), dtype, replicated)  # noqa: E731
  sampling = decode_lib.RowSampling(temperature=vector(np.float32), top_k=vector(np.int32),
                                    top_p=vector(np.float32), min_p=vector(np.float32), seed=vector(np.uint32))
  scalar = _abstract((), np.int32, replicated)
  one = lambda dtype: _abstract((1,), dtype, replicated)  # noqa: E731
  chunk = _abstract((1, target.prefill_chunk), np.int32, replicated)
  with jax.set_mesh(mesh):
    if rows == 1:  # the engine prefills its one slot in place
      prefill = decode_lib._prefill_chunk.lower(params, cache, chunk, one(np.int32), logits, config=run_config,
                                                rules=rules)
    else:  # one row at a time, sliced out of the slots and written back
      prefill = engine_lib._prefill_row.lower(params, cache, logits, scalar, chunk, one(np.int32),
                                              config=run_config, rules=rules)
    segment = engine_lib._segment.lower(
        params, cache, logits, vector(np.int32), vector(np.bool_), vector(np.int32),
        _abstract((rows, decode_lib.MAX_STOP_TOKENS), np.int32, replicated), sampling,
        _abstract((rows, (config.vocab_size + 31) // 32), np.int32, replicated), scalar, scalar,
        config=run_config, rules=rules, segment=target.sync_every)
  return {"params": params, "cache": cache, "prefill": prefill, "decode": segment}


# Layer counts of the probe programs `compile_decode(..., probe_layers=True)` extrapolates from.
PROBE_LAYERS = (2, 4)


def compile_decode(config: DecoderConfig, target: DecodeTarget, mesh_config: MeshConfig,
                   probe_layers: bool = False) -> DecodeCompileReport:
  """Compile the engine's programs for `target`'s slice on this host and report on them.

  probe_layers: compile PROBE_LAYERS-layer models instead of all of config.n_layers and extrapolate every
    figure linearly to all layers: two small compiles where the full unrolled model takes minutes each. The
    weights' and cache's bytes (so the floor) are exact either way. An estimate: at the scale of
    tests/test_compile_decode.py the total was within 5% of the full compile, but the decode program alone
    came out 60% high (its temporaries are not linear in the layers); --full_model for the real figure.
  """
  if probe_layers and config.n_layers > PROBE_LAYERS[1]:
    low, high = (compile_decode(dataclasses.replace(config, n_layers=n), target, mesh_config) for n in PROBE_LAYERS)
    scale = (config.n_layers - PROBE_LAYERS[0]) / (PROBE_LAYERS[1] - PROBE_LAYERS[0])
    line = lambda a, b: None if a is None or b is None else a + (b - a) * scale  # noqa: E731
    exact = compile_layout(config, target, mesh_config)
    prefill_bytes, decode_bytes = int(line(low.prefill_bytes, high.prefill_bytes)), int(line(low.decode_bytes,
                                                                                            high.decode_bytes))
    total = max(prefill_bytes, decode_bytes)  # each program extrapolated, then the larger (not the max's line)
    accessed = line(low.step_bytes_accessed, high.step_bytes_accessed)
    projected = line(low.projected_ms_per_token, high.projected_ms_per_token)
    return dataclasses.replace(
        low, params=config.num_params(), param_bytes=exact["param_bytes"], cache_bytes=exact["cache_bytes"],
        prefill_bytes=prefill_bytes, decode_bytes=decode_bytes, total_bytes_per_chip=total,
        fits=total <= low.hbm_bytes, floor_ms_per_token=exact["floor_ms_per_token"],
        projected_ms_per_token=projected, step_bytes_accessed=accessed,
        step_flops=line(low.step_flops, high.step_flops), compile_s=low.compile_s + high.compile_s,
        extrapolated_from_layers=PROBE_LAYERS)
  tpu_slice: TpuSlice = parse_slice(target.accelerator)
  devices = topology_devices(tpu_slice)
  mesh = make_mesh(mesh_config, devices)
  rules = decode_lib.inference_rules(shard_cache_length=target.shard_cache_length)
  log.info("compiling prefill and decode for %s (%d chips), mesh %s, batch %d x %s tokens",
           tpu_slice.accelerator_type, len(devices), dict(mesh.shape), target.batch, f"{target.context_len:,}")
  began = time.perf_counter()
  programs = lower_programs(config, target, mesh, rules)
  param_bytes, cache_bytes = _bytes_per_chip(programs["params"]), _bytes_per_chip(programs["cache"])
  _, prefill_bytes = _compile(programs["prefill"], param_bytes + cache_bytes)
  decode, decode_bytes = _compile(programs["decode"], param_bytes + cache_bytes)
  compile_s = time.perf_counter() - began
  total = max(prefill_bytes, decode_bytes)
  generation = tpu_slice.generation
  bandwidth = HBM_BANDWIDTH[generation.name]
  accessed = step_flops = projected = None
  if decode is not None:
    cost = decode.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    accessed, step_flops = (float(cost.get(k, 0.0)) or None for k in ("bytes accessed", "flops"))
  if accessed is not None:
    peak = PEAK_FLOPS_PER_DEVICE.get(f"TPU {generation.name}")
    projected = 1e3 * max(accessed / bandwidth, (step_flops or 0.0) / peak if peak else 0.0)
  return DecodeCompileReport(
      accelerator=tpu_slice.accelerator_type, topology=tpu_slice.topology_name, chips=len(devices),
      mesh=dict(mesh.shape), params=config.num_params(), batch=target.batch, context_len=target.context_len,
      prefill_chunk=target.prefill_chunk, shard_cache_length=target.shard_cache_length,
      param_bytes=param_bytes, cache_bytes=cache_bytes, hbm_bytes=generation.hbm_bytes,
      prefill_bytes=prefill_bytes, decode_bytes=decode_bytes, total_bytes_per_chip=total,
      fits=total <= generation.hbm_bytes, floor_ms_per_token=1e3 * (param_bytes + cache_bytes) / bandwidth,
      projected_ms_per_token=projected, step_bytes_accessed=accessed, step_flops=step_flops, compile_s=compile_s)


# `largest_batch` looks no further than this many slots (a tiny model would fit hundreds of thousands).
MAX_BATCH_SEARCHED = 1024


def compile_layout(config: DecoderConfig, target: DecodeTarget, mesh_config: MeshConfig) -> dict[str, float]:
  """The weights' and cache's bytes per chip and the HBM floor of a step, from the abstract arrays' shardings
  on the slice (nothing compiled)."""
  tpu_slice = parse_slice(target.accelerator)
  mesh = make_mesh(mesh_config, topology_devices(tpu_slice))
  rules = decode_lib.inference_rules(shard_cache_length=target.shard_cache_length)
  run_config = decode_lib.decode_config(config)
  params = abstract_params(run_config, mesh=mesh, rules=rules, dtype=target.param_dtype)
  cache = abstract_cache(config, target.batch, target.context_len, target.cache_dtype, mesh, rules)
  param_bytes, cache_bytes = _bytes_per_chip(params), _bytes_per_chip(cache)
  bandwidth = HBM_BANDWIDTH[tpu_slice.generation.name]
  return {"param_bytes": param_bytes, "cache_bytes": cache_bytes,
          "floor_ms_per_token": 1e3 * (param_bytes + cache_bytes) / bandwidth}


def largest_batch(config: DecoderConfig, target: DecodeTarget, mesh_config: MeshConfig,
                  one: DecodeCompileReport, max_batch: int = MAX_BATCH_SEARCHED,
                  max_compiles: int = 6, probe_layers: bool = False) -> tuple[int, DecodeCompileReport | None]:
  """(the largest batch up to `max_batch` found to fit, its compiled report; (0, None) when even batch 1 does
  not fit). Memory grows about linearly with the batch: batch 1 and 2 give the first prediction; then each
  compile narrows the range between the largest batch that fit and the smallest that did not, the next
  candidate interpolated between their memory figures, until the range is within 1/16 of the batch or
  `max_compiles` compiles were spent."""
  if not one.fits:
    return 0, None
  two = compile_decode(config, dataclasses.replace(target, batch=2), mesh_config, probe_layers)
  if not two.fits:
    return 1, one
  fit, miss = two, None
  for _ in range(max_compiles):
    hbm = fit.hbm_bytes
    if miss is None:
      slope = max((fit.total_bytes_per_chip - one.total_bytes_per_chip) / max(fit.batch - 1, 1), 1.0)
      candidate = min(max_batch, fit.batch + int((hbm - fit.total_bytes_per_chip) // slope))
    else:
      slope = (miss.total_bytes_per_chip - fit.total_bytes_per_chip) / (miss.batch - fit.batch)
      candidate = fit.batch + int((hbm - fit.total_bytes_per_chip) // max(slope, 1.0))
      candidate = min(max(candidate, fit.batch + 1), miss.batch - 1)
    if candidate <= fit.batch or (miss is not None and miss.batch - fit.batch <= max(1, fit.batch // 16)):
      break
    report = compile_decode(config, dataclasses.replace(target, batch=candidate), mesh_config, probe_layers)
    if report.fits:
      fit = report
      if candidate >= max_batch:
        break
    else:
      miss = report
  return fit.batch, fit


def _gib(n: float) -> str:
  return f"{n / 2**30:.2f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:.1f} MiB"


def format_report(report: DecodeCompileReport) -> str:
  """The report as lines a researcher reads."""
  projected = ("not reported by the compiler" if report.projected_ms_per_token is None
               else f"{report.projected_ms_per_token:.3g} ms")
  return "\n".join([
      f"{report.accelerator} ({report.topology}, {report.chips} chips), mesh {report.mesh}",
      f"model {report.params / 1e9:.2f}B parameters; {report.batch} slot(s) x {report.context_len:,} tokens, "
      f"prefill chunk {report.prefill_chunk}; cache length "
      f"{'sharded over sequence' if report.shard_cache_length else 'not sharded'}",
      "memory per chip:",
      f"  weights {_gib(report.param_bytes)}, KV cache {_gib(report.cache_bytes)}",
      f"  prefill program {_gib(report.prefill_bytes)}, decode program {_gib(report.decode_bytes)}",
      f"  total {_gib(report.total_bytes_per_chip)} of {report.hbm_bytes / 2**30:.0f} GiB HBM: "
      f"{'fits' if report.fits else 'DOES NOT FIT'} ({100 * report.total_bytes_per_chip / report.hbm_bytes:.0f}%)",
      f"decode step (all {report.batch} slot(s) one token, cache full): HBM floor {report.floor_ms_per_token:.3g} ms "
      f"(weights + cache read once), projected {projected} ({report.compile_s:.0f} s to compile)",
  ] + ([f"(programs compiled with {' and '.join(map(str, report.extrapolated_from_layers))} layers, every figure "
        "extrapolated linearly to all layers; --full_model compiles them all)"]
       if report.extrapolated_from_layers else []))
