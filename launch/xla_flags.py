"""libtpu flags that overlap collectives with compute, set by the pod launcher as LIBTPU_INIT_ARGS.

TPU compiler flags are not part of OpenXLA; libtpu reads them from the LIBTPU_INIT_ARGS environment
variable when the process starts. Only flags documented in one of these sources are listed:
  [jax]     JAX, "List of XLA compiler flags", docs/xla_flags.md (https://docs.jax.dev/en/latest/xla_flags.html)
  [maxtext] MaxText, benchmarks/xla_flags_library.py (CF_FOR_ALL_REDUCE, DATA_PARALLEL_OVERLAP)
Flags are implementation details of libtpu: a flag a libtpu release does not know makes it fail at start,
so pin libtpu (jax[tpu]==the jax of requirements.txt) and override with `--libtpu_arg NAME=VALUE`.
"""

from __future__ import annotations

import argparse
from typing import Mapping, NamedTuple


class Flag(NamedTuple):
  value: str
  why: str


# Every job: hide the collectives of FSDP, tensor and ring-attention sharding behind compute.
OVERLAP_FLAGS: dict[str, Flag] = {
    "xla_enable_async_collective_permute": Flag(
        "true", "[jax] rewrites every collective-permute to its async start/done pair, so the key/value "
        "blocks ring attention passes round the `sequence` axis travel while the current block computes"),
    "xla_enable_async_all_gather": Flag(
        "true", "[jax] async all-gather: FSDP's parameter gathers overlap the previous layer's compute"),
    "xla_enable_async_all_reduce": Flag(
        "true", "[maxtext CF_FOR_ALL_REDUCE] async all-reduce: gradient reductions overlap compute"),
    "xla_tpu_enable_async_collective_fusion": Flag(
        "true", "[jax] fuses async collectives with the compute (loop/output fusions, convolutions) "
        "scheduled between their -start and -done"),
    "xla_tpu_enable_async_collective_fusion_fuse_all_gather": Flag(
        "true", "[jax] lets that fusion pass take all-gathers too"),
    "xla_tpu_enable_async_collective_fusion_multiple_steps": Flag(
        "true", "[jax] lets one async collective continue over several fusions"),
    "xla_tpu_overlap_compute_collective_tc": Flag(
        "true", "[jax] overlaps compute and communication on a single TensorCore"),
}

# Multi-slice jobs only: the `data` axis crosses slices over the data-center network (DCN).
DATA_PARALLEL_DCN_FLAGS: dict[str, Flag] = {
    "xla_tpu_enable_data_parallel_all_reduce_opt": Flag(
        "true", "[jax] more overlap for the DCN all-reduces of data-parallel gradients"),
    "xla_tpu_data_parallel_opt_different_sized_ops": Flag(
        "true", "[jax] pipelines data-parallel ops across iterations even when their sizes differ "
        "(more memory pressure)"),
}


def libtpu_flags(num_slices: int = 1, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
  """{flag name: value} for a job over `num_slices` slices; `overrides` add flags or replace values."""
  if num_slices < 1:
    raise ValueError(f"num_slices must be at least 1, got {num_slices}")
  flags = {name: flag.value for name, flag in OVERLAP_FLAGS.items()}
  if num_slices > 1:
    flags.update({name: flag.value for name, flag in DATA_PARALLEL_DCN_FLAGS.items()})
  flags.update(overrides or {})
  return flags


def libtpu_init_args(num_slices: int = 1, overrides: Mapping[str, str] | None = None) -> str:
  """The LIBTPU_INIT_ARGS value: `--name=value` for each of `libtpu_flags(...)`, space-separated."""
  return " ".join(f"--{name}={value}" for name, value in libtpu_flags(num_slices, overrides).items())


def parse_override(text: str) -> tuple[str, str]:
  """`NAME=VALUE` (NAME with or without leading dashes) from `--libtpu_arg` (an argparse type)."""
  name, sep, value = text.lstrip("-").partition("=")
  if not sep or not name or not value:
    raise argparse.ArgumentTypeError(f"expected a libtpu flag as NAME=VALUE, e.g. xla_tpu_enable_async_collective_fusion=false; "
                     f"got {text!r}")
  return name, value
