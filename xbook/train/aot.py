"""Ahead-of-time compilation of the train step for a TPU slice, on any host (`xbook compile`).

The step is the one `xbook train` would run for the same gin config: same mesh (over the slice's
abstract devices from libtpu), shardings, attention, remat and microbatches. From the compiled program:

* memory per chip (XLA's memory analysis): arguments + outputs - aliased (donated) + temporaries +
  generated code, against the chip's HBM;
* FLOPs per step (XLA's cost analysis) against the analytic count of `xbook.train.flops`. XLA counts
  the body of a loop once, so the FLOPs come from two probe programs with every loop unrolled (1 and 2
  layers, one microbatch, few attention blocks per device chunk, no windowed einsum: the same
  arithmetic in a smaller program), extrapolated linearly to all layers and microbatches. Unrolled, causally skipped blocks
  count as computed, so the comparison is with the analytic count of full (non-causal) attention;
* a projected step time and tokens/s at an assumed MFU (model FLOPs with the causal mask, the
  convention of `train`'s `mfu` metric).

A LoRA config (DecoderConfig.lora) trains the adapters only: its base is frozen, so the backward pass
computes no weight gradients of the base's matrices (4 FLOPs per matmul parameter and token, not 6),
and the optimizer state is the adapters'. Its report carries the full fine-tune of the same model on
the same slice beside it (`full_finetune`: the config without `lora`, master weights in the adapters'
dtype as the full paper configs keep theirs), compiled for memory only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from typing import Any, Callable, Mapping

import gin
import jax

from xbook.model import loops
from xbook.train import flops
from xbook.train.tpu_topology import TpuSlice, parse_slice, topology_devices
from xbook.train.trainer import Trainer

log = logging.getLogger(__name__)

# Compiler options of the FLOP-counting probes. On TPU, XLA may turn a matmul whose operand is
# all-gathered (FSDP) or whose result is reduce-scattered into a loop over the shards ("windowed
# einsum", collective matmul), whose body cost analysis would count once; without it the probes do the
# same arithmetic in straight-line code. The memory report compiles with the defaults.
COUNTING_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                    "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}

# The probes cut each device's chunk of the length into at most this many attention blocks (fewer,
# larger blocks: the same FLOPs in a smaller unrolled program whose score tiles still fit HBM), and
# into fewer when the ring is long: one unrolled layer holds ring steps x blocks^2 block pairs, and
# probes of 512 pairs per layer (524k tokens over a ring of 32) ran this 24 GiB host out of memory.
PROBE_BLOCKS_PER_CHUNK = 4
PROBE_MAX_BLOCK_PAIRS = 128


def probe_blocks_per_chunk(ring_steps: int) -> int:
  """Attention blocks per device chunk in the FLOP probes: at most PROBE_BLOCKS_PER_CHUNK, and at
  most PROBE_MAX_BLOCK_PAIRS block pairs per layer over the `ring_steps` of the ring (at least 1)."""
  blocks = PROBE_BLOCKS_PER_CHUNK
  while blocks > 1 and ring_steps * blocks ** 2 > PROBE_MAX_BLOCK_PAIRS:
    blocks -= 1
  return blocks

# Tolerance of `ratio_ok`: the measured compiler/analytic FLOPs ratio against the predicted one.
RATIO_TOLERANCE = 0.10


@dataclasses.dataclass(frozen=True)
class TpuTarget:
  """The TPU a config is meant for: `xbook compile` uses it unless --topology says otherwise.

  Attributes:
    accelerator: accelerator type ("v5p-256", "v6e-8") or topology ("v5p:4x4x8") of one slice.
    num_slices: slices joined over DCN (the product of the mesh's dcn_* sizes).
    assumed_mfu: model FLOPs utilization used to project step time and tokens/s.
  """

  accelerator: str = "v5p-8"
  num_slices: int = 1
  assumed_mfu: float = 0.4


# `TpuTarget.<field> = ...` in gin; entry points build it with xbook.gin_flags.configured(TpuTarget),
# and `TpuTarget()` here or in any library code is the plain defaults.
gin.external_configurable(TpuTarget, module=__name__)


@dataclasses.dataclass(frozen=True)
class CompileReport:
  """What the compiled step needs per chip and computes per step; bytes are per chip."""

  accelerator: str
  topology: str
  num_slices: int
  chips: int
  mesh: dict[str, int]
  batch_size: int
  seq_len: int
  params: int
  remat: str
  attention: str
  compute_dtype: str
  param_dtype: str
  mu_dtype: str
  param_bytes: int  # this chip's shard of the parameters
  opt_state_bytes: int  # this chip's shard of the optimizer state (Adam's two moments)
  hbm_bytes: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int
  total_bytes_per_chip: int
  fits: bool
  compiler_flops: float | None  # None: the step does not fit, so its FLOPs were not counted
  analytic_flops: float
  analytic_flops_causal: float
  flops_ratio: float | None
  predicted_ratio: float | None
  ratio_ok: bool | None
  assumed_mfu: float
  projected_step_s: float
  projected_tokens_per_s: float
  compile_s: float
  trainable_params: int = 0  # LoRA: the adapters; else every parameter
  lora_rank: int | None = None
  adapter_dtype: str | None = None  # LoRA: of the adapters and their Adam moments (the base: param_dtype)
  # LoRA configs: the full fine-tune of the same model on the same slice, for comparison (memory only):
  # {"total_bytes_per_chip", "fits", "param_bytes", "opt_state_bytes", "param_dtype", "projected_step_s"}.
  full_finetune: Mapping[str, Any] | None = None

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def predicted_flops_ratio(trainer: Trainer) -> float | None:
  """Compiler FLOPs over analytic FLOPs (full attention) expected for this step's remat and attention.

  Analytic: 6 x matmul params per token (forward 1 + backward 2) plus attention counted as 3x its
  forward. The step does more where it recomputes: full remat runs every layer's forward twice (4/3 on
  matmuls), and the blockwise and ring kernels' backward recomputes the scores (5 attention matmuls
  against the convention's 4: 7/6, or 9/6 with full remat; dense attention is differentiated as is).
  Other remat policies save part of the forward: no single prediction (None).
  """
  config = trainer.model_config
  if config.remat not in ("none", "full"):
    return None
  tokens = trainer.batch_size * trainer.seq_len
  frozen = config.lora is not None  # no weight gradients: forward 2 + input gradients 2 per parameter
  matmuls = (4.0 if frozen else 6.0) * flops.matmul_params(config) * tokens
  attention = tokens * (flops.training_flops_per_token(config, trainer.seq_len, causal=False)
                        - 6.0 * flops.matmul_params(config))
  flash = config.attention != "dense"
  if config.remat == "none":
    matmul_factor, attention_factor = 1.0, (7 / 6 if flash else 1.0)
  else:  # the forward once more: 2 on 6 (4/3), or 2 on 4 (3/2) with a frozen base
    matmul_factor, attention_factor = (3 / 2 if frozen else 4 / 3), (9 / 6 if flash else 4 / 3)
  return (matmuls * matmul_factor + attention * attention_factor) / (matmuls + attention)


def step_flops(trainer: Trainer, causal: bool) -> float:
  """Analytic FLOPs of one train step (xbook.train.flops), with the causal mask or full attention. A LoRA
  config's frozen base computes no weight gradients (2 FLOPs per matmul parameter and token fewer); its
  adapters train in full (6 per adapter parameter and token)."""
  config = trainer.model_config
  tokens = trainer.batch_size * trainer.seq_len
  per_token = flops.training_flops_per_token(config, trainer.seq_len, causal=causal)
  if config.lora is not None:
    per_token += 6.0 * config.lora_params() - 2.0 * flops.matmul_params(config)
  return tokens * per_token


def full_finetune_of(trainer: Trainer) -> Trainer:
  """The full fine-tune a LoRA trainer is compared with: the same model, slice, mesh and batch without
  adapters, its master weights in the adapters' dtype."""
  lora = trainer.model_config.lora
  config = dataclasses.replace(trainer.model_config, lora=None, param_dtype=lora.param_dtype)
  return dataclasses.replace(trainer, model_config=config)


def _memory_total(memory: Mapping[str, int]) -> int:
  return memory["argument"] + memory["output"] - memory["alias"] + memory["temp"] + memory["code"]


def _full_finetune_report(trainer: Trainer, hbm_bytes: int, step_s: Callable[[Trainer], float]) -> dict[str, Any]:
  """Memory (compiled) and projected step time of full_finetune_of(trainer)."""
  full = full_finetune_of(trainer)
  log.info("compiling the full fine-tune of the same model for comparison (memory only)")
  total = _memory_total(step_memory(full))
  return {"total_bytes_per_chip": total, "fits": total <= hbm_bytes, "param_dtype": full.model_config.param_dtype,
          "param_bytes": _bytes_per_chip(full.abstract_state.params),
          "opt_state_bytes": _bytes_per_chip(full.abstract_state.opt_state), "projected_step_s": step_s(full)}


def _cost_flops(compiled: jax.stages.Compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0]
  return float(cost["flops"])


def _bytes_per_chip(tree: Any) -> int:
  """Bytes of one chip's shard of every abstract array in `tree` (the largest shard: uneven splits)."""
  return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
             for leaf in jax.tree.leaves(tree))


def step_memory(trainer: Trainer) -> dict[str, int]:
  """Per-chip bytes of the compiled step: argument, output, alias, temp, code.

  When the TPU compiler itself refuses the step for lack of HBM (RESOURCE_EXHAUSTED), the
  temporaries are the amount it names, and arguments and outputs are the train state's shards
  (donated, so aliased) plus the batch's.
  """
  try:
    analysis = trainer.lower_abstract_step().compile().memory_analysis()
  except jax.errors.JaxRuntimeError as error:
    needed = re.search(r"HLO temporaries \(([\d.]+)([KMGT])\)", str(error))
    if "RESOURCE_EXHAUSTED" not in str(error) or not needed:
      raise
    log.warning("the TPU compiler ran out of HBM: %s", str(error).splitlines()[0])
    temp = float(needed.group(1)) * 1024 ** "KMGT".index(needed.group(2)) * 1024
    state = _bytes_per_chip(trainer.abstract_state)
    batch = _bytes_per_chip(trainer.abstract_batch())
    return {"argument": state + batch, "output": state, "alias": state, "temp": int(temp), "code": 0}
  return {"argument": analysis.argument_size_in_bytes, "output": analysis.output_size_in_bytes,
          "alias": analysis.alias_size_in_bytes, "temp": analysis.temp_size_in_bytes,
          "code": analysis.generated_code_size_in_bytes}


def _is_tpu(devices: list[jax.Device]) -> bool:
  return devices[0].platform == "tpu"


def compiler_flops_per_step(trainer: Trainer, devices: list[jax.Device]) -> float:
  """XLA's FLOPs of one step on all chips, from unrolled 1- and 2-layer probes (module docstring).

  XLA reports the FLOPs of one SPMD partition, i.e. per chip; the step's total is that times the chips.
  """
  ring_steps = trainer.mesh.shape["sequence"]
  chunk = trainer.seq_len // ring_steps
  probe_block = max(trainer.model_config.attention_block, chunk // probe_blocks_per_chunk(ring_steps))
  per_layer_count = []
  for n_layers in (1, 2):
    config = dataclasses.replace(trainer.model_config, n_layers=n_layers, scan_layers=False,
                                 attention_block=probe_block)
    probe = dataclasses.replace(trainer, model_config=config, microbatches=1, devices=devices,
                                batch_size=trainer.batch_size // trainer.microbatches)
    with loops.fully_unrolled():
      lowered = probe.lower_abstract_step()
    compiled = lowered.compile(compiler_options=COUNTING_OPTIONS if _is_tpu(devices) else None)
    per_layer_count.append(_cost_flops(compiled) * len(devices))
  one, two = per_layer_count
  per_layer = two - one
  return (one + per_layer * (trainer.model_config.n_layers - 1)) * trainer.microbatches


def compile_for_tpu(target: TpuTarget, make_trainer: Callable[[list[jax.Device]], Trainer],
                    count_flops: bool = True) -> CompileReport:
  """Compile a train step for a TPU slice on this host and report on it.

  Args:
    target: the slice (accelerator type or topology), the number of slices and the assumed MFU
      (`xbook compile` passes gin's TpuTarget with its flags over it).
    make_trainer: the Trainer over the slice's topology devices (`xbook compile`:
      xbook.train.trainer.trainer_from_gin, the step `train()` would run).
    count_flops: count the compiler's FLOPs on unrolled probes (minutes at paper scale); False stops
      after the memory verdict (compiler_flops is then None).
  """
  tpu_slice: TpuSlice = parse_slice(target.accelerator)
  num_slices, assumed_mfu = target.num_slices, target.assumed_mfu
  devices = topology_devices(tpu_slice, num_slices)
  trainer = make_trainer(devices)
  log.info("compiling the train step for %s x %d (%d chips), mesh %s, %s parameters",
           tpu_slice.accelerator_type, num_slices, len(devices), dict(trainer.mesh.shape),
           _count(trainer.model_config.num_params()))
  began = time.perf_counter()
  memory = step_memory(trainer)
  compile_s = time.perf_counter() - began
  total = _memory_total(memory)
  fits = total <= tpu_slice.generation.hbm_bytes
  log.info("the step needs %s per chip of %.0f GiB HBM (%s; compiled in %.0f s)", _bytes(total),
           tpu_slice.generation.hbm_bytes / 2**30, "fits" if fits else "does NOT fit", compile_s)
  compiler = None
  if fits and count_flops:
    log.info("counting FLOPs on unrolled 1- and 2-layer probes of the step")
    compiler = compiler_flops_per_step(trainer, devices)
  tokens = trainer.batch_size * trainer.seq_len
  analytic, causal = step_flops(trainer, causal=False), step_flops(trainer, causal=True)
  predicted = predicted_flops_ratio(trainer)
  ratio = None if compiler is None else compiler / analytic
  peak = flops.peak_flops_per_device(devices[0])
  projected = lambda t: step_flops(t, causal=True) / (len(devices) * peak * assumed_mfu)  # noqa: E731
  step_s = projected(trainer)
  lora = trainer.model_config.lora
  full = None if lora is None else _full_finetune_report(trainer, tpu_slice.generation.hbm_bytes, projected)
  trainable = trainer.model_config.lora_params() if lora else trainer.model_config.num_params()
  return CompileReport(
      accelerator=tpu_slice.accelerator_type, topology=tpu_slice.topology_name, num_slices=num_slices,
      chips=len(devices), mesh=dict(trainer.mesh.shape), batch_size=trainer.batch_size,
      seq_len=trainer.seq_len, params=trainer.model_config.num_params(),
      remat=trainer.model_config.remat, attention=trainer.model_config.attention,
      compute_dtype=trainer.model_config.dtype, param_dtype=trainer.model_config.param_dtype,
      mu_dtype=trainer.optimizer_config.mu_dtype or (lora.param_dtype if lora else trainer.model_config.param_dtype),
      param_bytes=_bytes_per_chip(trainer.abstract_state.params),
      opt_state_bytes=_bytes_per_chip(trainer.abstract_state.opt_state),
      hbm_bytes=tpu_slice.generation.hbm_bytes, argument_bytes=memory["argument"],
      output_bytes=memory["output"], alias_bytes=memory["alias"], temp_bytes=memory["temp"],
      code_bytes=memory["code"], total_bytes_per_chip=total,
      fits=fits, compiler_flops=compiler, analytic_flops=analytic, analytic_flops_causal=causal,
      flops_ratio=ratio, predicted_ratio=predicted,
      ratio_ok=None if None in (ratio, predicted) else abs(ratio / predicted - 1) <= RATIO_TOLERANCE,
      assumed_mfu=assumed_mfu, projected_step_s=step_s, projected_tokens_per_s=tokens / step_s,
      compile_s=compile_s, trainable_params=trainable, lora_rank=lora.rank if lora else None,
      adapter_dtype=lora.param_dtype if lora else None, full_finetune=full)


def _count(n: float) -> str:
  """A count at a readable scale: 1.23B, 45.6M, 7.8K, 12."""
  for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
    if abs(n) >= scale:
      return f"{n / scale:.3g}{suffix}"
  return f"{n:.3g}"


def _bytes(n: float) -> str:
  """A size at a readable scale: 12.34 GiB, 5.60 MiB, 812 bytes."""
  for scale, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
    if abs(n) >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{n:.0f} bytes"


def _seconds(s: float) -> str:
  """A duration at a readable scale: 1.23 s, 4.56 ms, 7.8 µs."""
  if s >= 1:
    return f"{s:.2f} s"
  if s >= 1e-3:
    return f"{s * 1e3:.3g} ms"
  return f"{s * 1e6:.3g} µs"


def format_report(report: CompileReport) -> str:
  """The report as lines a researcher reads (each figure at a readable scale: a tiny config's memory in
  MiB, its step in ms)."""
  lines = [
      f"{report.accelerator} x {report.num_slices} slice(s) ({report.topology}, {report.chips} chips), "
      f"mesh {report.mesh}",
      f"model {_count(report.params)} parameters, attention {report.attention}, remat "
      f"{report.remat}; batch {report.batch_size} x {report.seq_len:,} tokens",
      *([f"LoRA rank {report.lora_rank}: {_count(report.trainable_params)} trainable adapter parameters on a "
         f"frozen base in {report.param_dtype}"] if report.lora_rank else []),
      f"precision: compute {report.compute_dtype}, parameters {report.param_dtype}, Adam first "
      f"moment {report.mu_dtype}, second moment {report.param_dtype}" if report.lora_rank is None else
      f"precision: compute {report.compute_dtype}, frozen base {report.param_dtype}, adapters "
      f"{report.adapter_dtype}, Adam first moment {report.mu_dtype}, second moment {report.adapter_dtype}",
      "memory per chip:",
      f"  arguments     {_bytes(report.argument_bytes):>12}: parameters {_bytes(report.param_bytes)}, "
      f"optimizer state {_bytes(report.opt_state_bytes)}, the batch",
      f"  outputs       {_bytes(report.output_bytes):>12} (of which {_bytes(report.alias_bytes)} reuse donated "
      f"arguments)",
      f"  temporaries   {_bytes(report.temp_bytes):>12}",
      f"  code          {_bytes(report.code_bytes):>12}",
      f"  total         {_bytes(report.total_bytes_per_chip):>12} of {report.hbm_bytes / 2**30:.0f} GiB "
      f"HBM: {'fits' if report.fits else 'DOES NOT FIT'} "
      f"({_percent(report.total_bytes_per_chip / report.hbm_bytes)})",
  ]
  if report.compiler_flops is None:
    lines.append(f"FLOPs per step: analytic {report.analytic_flops:.4g} (full attention; "
                 f"{report.analytic_flops_causal:.4g} with the causal mask); not counted by the "
                 f"compiler" + (", since the step does not fit" if not report.fits else
                                " (--memory_only)"))
  else:
    lines.append(f"FLOPs per step: compiler {report.compiler_flops:.4g}, analytic "
                 f"{report.analytic_flops:.4g} (full attention; {report.analytic_flops_causal:.4g} with "
                 f"the causal mask)")
  if report.flops_ratio is not None and report.predicted_ratio is None:
    lines.append(f"  compiler / analytic = {report.flops_ratio:.3f} (no prediction for remat "
                 f"{report.remat!r})")
  elif report.flops_ratio is not None:
    verdict = "as predicted" if report.ratio_ok else "NOT as predicted"
    lines.append(f"  compiler / analytic = {report.flops_ratio:.3f}, predicted {report.predicted_ratio:.3f} "
                 f"for remat {report.remat!r} with {report.attention} attention: {verdict} "
                 f"(within {RATIO_TOLERANCE:.0%})")
  lines.append(f"projected at {report.assumed_mfu:.0%} MFU: {_seconds(report.projected_step_s)}/step, "
               f"{_count(report.projected_tokens_per_s)} tokens/s ({report.compile_s:.0f} s to compile)")
  full = report.full_finetune
  if full is not None:
    lines += [
        f"full fine-tune of the same model on the same slice ({full['param_dtype']} master weights):",
        f"  memory per chip {_bytes(full['total_bytes_per_chip']):>12} of {report.hbm_bytes / 2**30:.0f} GiB HBM: "
        f"{'fits' if full['fits'] else 'DOES NOT FIT'} ({_percent(full['total_bytes_per_chip'] / report.hbm_bytes)}; "
        f"parameters {_bytes(full['param_bytes'])}, optimizer state {_bytes(full['opt_state_bytes'])}), "
        f"LoRA {_bytes(report.total_bytes_per_chip)}",
        f"  projected {_seconds(full['projected_step_s'])}/step, LoRA {_seconds(report.projected_step_s)}/step"]
  return "\n".join(lines)


def _percent(fraction: float) -> str:
  return f"{100 * fraction:.0f}%" if fraction >= 0.01 else f"{100 * fraction:.2g}%"
