"""`xbook train` and `xbook compile`: training a run, and compiling its step (or decoding) ahead of time for
a TPU slice."""

from __future__ import annotations

import argparse
import json
import sys

from xbook.cli.common import add_command


def add_parser(subparsers) -> None:
  """The `train` and `compile` subcommands."""
  _add_train(subparsers)
  _add_compile(subparsers)


def _add_train(subparsers) -> None:
  p = add_command(subparsers, "train", "Train (or resume) a decoder on scaffold trajectories, configured by gin.",
                  "xbook train --gin_file=configs/runs/demo.gin --run_dir=runs/demo --gin.train.steps=40",
                  _train, gin_modules=("xbook.train.trainer",))
  p.add_argument("--run_dir", required=True, help="run directory (resumed if it has checkpoints)")
  p.add_argument("--json", action="store_true", help="print the last step's metrics as JSON")
  p.add_argument("--coordinator_address", default=None,
                 help="multi-process: host:port of process 0 (or XBOOK_COORDINATOR_ADDRESS)")
  p.add_argument("--num_processes", type=int, default=None, help="multi-process: (or XBOOK_NUM_PROCESSES)")
  p.add_argument("--process_id", type=int, default=None, help="multi-process: (or XBOOK_PROCESS_ID)")
  p.add_argument("--distributed_auto", action="store_true",
                 help="join a TPU pod job with jax.distributed.initialize() auto-detection")


def _add_compile(subparsers) -> None:
  p = add_command(
      subparsers, "compile", "Compile the train step ahead of time for a TPU slice on this host: memory per "
      "chip against HBM, compiler vs analytic FLOPs, projected speed (exit status 1 if it does not fit).",
      "xbook compile --gin_file=configs/paper/mistral24b_131k.gin\n"
      "xbook compile --gin_file=configs/runs/demo.gin --topology v5e-8 --json\n"
      "xbook compile --gin_file=configs/paper/ministral14b_262k.gin --memory_only",
      _compile, gin_modules=("xbook.train.trainer", "xbook.train.aot", "xbook.infer.aot_decode"))
  p.add_argument("--topology", default=None,
                 help="accelerator type (v5p-256, v6e-8) or topology (v5p:4x4x8) of one slice "
                      "(default: the config's TpuTarget.accelerator)")
  p.add_argument("--num_slices", type=int, default=None, help="slices over DCN (default: TpuTarget.num_slices)")
  p.add_argument("--assumed_mfu", type=float, default=None,
                 help="MFU for the projected step time (default: TpuTarget.assumed_mfu)")
  p.add_argument("--json", action="store_true",
                 help="print fits, hbm_bytes, total_bytes_per_chip, compiler_flops, analytic_flops, ... as JSON")
  p.add_argument("--memory_only", action="store_true",
                 help="stop after the memory verdict (about a minute at paper scale); skip counting FLOPs")
  p.add_argument("--decode", action="store_true",
                 help="compile inference instead (the engine's prefill chunk and decode step over "
                      "DecodeTarget.batch slots of DecodeTarget.context_len tokens): memory per chip, the "
                      "HBM-bandwidth floor and projected ms per token; e.g. "
                      "--gin_file=configs/inference/ministral14b_262k_v5e8.gin --decode --largest_batch")
  p.add_argument("--batch", type=int, default=None, help="--decode: cache slots (default: DecodeTarget.batch)")
  p.add_argument("--context_len", type=int, default=None,
                 help="--decode: tokens per slot (default: DecodeTarget.context_len)")
  p.add_argument("--largest_batch", action="store_true",
                 help="--decode: also find and compile the largest batch that fits (memory is linear in it)")
  p.add_argument("--batch_compiles", type=int, default=2,
                 help="--largest_batch: compiles spent narrowing the largest batch after batch 1 and 2 (default 2)")
  p.add_argument("--full_model", action="store_true",
                 help="--decode: compile every layer (minutes each at paper scale); default: compile 2- and 4-layer "
                      "programs and extrapolate linearly to all layers (each layer has its own weights and cache)")


def _train(args: argparse.Namespace) -> int:
  from xbook.train import distributed
  from xbook.train.trainer import train
  distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                         auto=args.distributed_auto)
  metrics = train(args.run_dir)
  loss = f"loss {metrics['loss']:.4f}" if "loss" in metrics else "no metrics recorded"
  print(json.dumps({"run_dir": args.run_dir, **metrics}) if args.json
        else f"run {args.run_dir}: step {int(metrics.get('step', 0))}, {loss}")
  return 0


# --------------------------------------------------------------------------------------------- compile
def _compile(args: argparse.Namespace) -> int:
  from xbook.gin_flags import configured
  from xbook.train import aot
  from xbook.train.trainer import trainer_from_gin
  if args.decode:
    return _compile_decode(args)
  target = configured(aot.TpuTarget, accelerator=args.topology, num_slices=args.num_slices,
                      assumed_mfu=args.assumed_mfu)
  report = aot.compile_for_tpu(target, trainer_from_gin, count_flops=not args.memory_only)
  print(json.dumps(report.to_json()) if args.json else aot.format_report(report))
  if not report.fits:
    print(f"error: the step needs {report.total_bytes_per_chip / 2**30:.2f} GiB per chip but a "
          f"{report.accelerator} chip has {report.hbm_bytes / 2**30:.0f} GiB of HBM: shard more (fsdp, "
          f"tensor, sequence), remat more, or use a smaller batch per chip", file=sys.stderr)
    return 1
  return 0


def _compile_decode(args: argparse.Namespace) -> int:
  """`xbook compile --decode`: the inference engine's prefill and decode step for a TPU slice."""
  from xbook.gin_flags import configured
  from xbook.infer import aot_decode
  from xbook.train.mesh import MeshConfig
  from xbook.train.trainer import train_setting
  config = train_setting("model_config")
  target = configured(aot_decode.DecodeTarget, accelerator=args.topology, batch=args.batch,
                      context_len=args.context_len)
  mesh_config = configured(MeshConfig)
  probe = not args.full_model
  report = aot_decode.compile_decode(config, target, mesh_config, probe)
  reports = {"batch_1" if target.batch == 1 else f"batch_{target.batch}": report}
  if args.largest_batch:
    batch, largest = aot_decode.largest_batch(config, target, mesh_config, report, probe_layers=probe,
                                              max_compiles=args.batch_compiles)
    if largest is not None and largest.batch != report.batch:
      reports[f"largest_batch_{batch}"] = largest
  if args.json:
    print(json.dumps({name: r.to_json() for name, r in reports.items()}))
  else:
    print("\n\n".join(f"[{name.replace('_', ' ')}]\n{aot_decode.format_report(r)}" for name, r in reports.items()))
  if not report.fits:
    print(f"error: decoding needs {report.total_bytes_per_chip / 2**30:.2f} GiB per chip but a {report.accelerator} "
          f"chip has {report.hbm_bytes / 2**30:.0f} GiB of HBM: shard more (MeshConfig.tensor, fsdp), shard the "
          "cache's length (DecodeTarget.shard_cache_length with MeshConfig.sequence), or lower "
          "DecodeTarget.batch / context_len", file=sys.stderr)
    return 1
  return 0
