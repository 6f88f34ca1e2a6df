"""`xbook bench`: speed, memory and accuracy figures (attention, decoding, serving, the engine, the input
pipeline). Each benchmark's flags come from its own module, which is imported only when the command line
runs it."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Sequence

from xbook.cli.common import add_command, add_group

_BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def add_parser(subparsers, argv: Sequence[str] | None = None) -> None:
  """The `bench` group. A benchmark whose arguments come from a heavy module gets them only when `argv`
  runs it, or always when `argv` is None (a full parser, for tests and docs)."""
  deferred: dict[tuple[str, ...], tuple[argparse.ArgumentParser, str]] = {}
  bench = add_group(subparsers, "bench", "Speed, memory and accuracy figures.",
                    "xbook bench attention --impl ring --seq 8192 --devices 8 --length_layout zigzag")
  p = add_command(
      bench, "attention", "Attention vs dense: max errors of out and dq/dk/dv, time, memory, balance.",
      "xbook bench attention --impl ring --seq 8192 --devices 8 --length_layout zigzag --json", _bench_attention)
  deferred[("bench", "attention")] = (p, "xbook.train.attention_bench")
  p = add_command(
      bench, "decode", "KV-cache decoding speed of a trained run: prefill tokens/s, decode tokens/s at batch 1 "
      "and 8, ms per token at contexts of 256, 1k and 4k, compiles; beside transformers' generate on the same "
      "weights exported to Hugging Face format (when transformers and torch are installed).",
      "xbook bench decode --run_dir runs/demo\nxbook bench decode --run_dir runs/demo --no_transformers --json",
      _bench_decode)
  deferred[("bench", "decode")] = (p, "xbook.infer.decode_bench")
  p = add_command(
      bench, "serve", "Serving benchmark of a run (as vLLM's): clients with mixed prompt and answer lengths "
      "against a real xbook serve, continuous and static batching: throughput against one client at a time, "
      "p50/p99 time to first token and inter-token latency, a short request's latency behind a long one.",
      "xbook bench serve --run_dir runs/demo --clients 16 --requests 4", _bench_serve)
  deferred[("bench", "serve")] = (p, "xbook.infer.serve_bench")
  p = add_command(bench, "engine", "The inference engine's prefix reuse (prefilled tokens per new token over growing "
                  "prompts, with and without) and structured outputs (decode tokens/s under a grammar against free).",
                  "xbook bench engine --run_dir runs/demo --stages 12 --rows 4 --tokens 128", _bench_engine)
  deferred[("bench", "engine")] = (p, "xbook.infer.engine_bench")
  if (_BENCHMARKS / "input.py").is_file():  # a source tree (benchmarks/ is not installed)
    p = add_command(bench, "input", "Input pipeline: seconds to the first batch of a fresh run and of runs resumed at "
                    "batch N (example counts unknown, then kept), batches/s after the first; on the scaffolds of real "
                    "corpus novels (built once with the extractive summarizer) or --scaffolds.",
                    "xbook bench input --seq_len 4096 --batch_size 8 --resume 1000 --resume 10000\n"
                    "xbook bench input --scaffolds out/scaffolds.jsonl --vocab out/vocab.model --json", _bench_input)
    _benchmark("input").add_arguments(p)
  for path, (subparser, module) in deferred.items():
    if argv is None or _selects(argv, path):
      importlib.import_module(module).add_arguments(subparser)


def _selects(argv: Sequence[str], path: tuple[str, ...]) -> bool:
  """Whether the command line `argv` runs the subcommand `path` (its first words, after top-level flags)."""
  words = [a for a in argv if not a.startswith("-")]
  return tuple(words[:len(path)]) == path


def _bench_attention(args: argparse.Namespace) -> int:
  from xbook.train import attention_bench
  return attention_bench.run(args)


def _bench_engine(args: argparse.Namespace) -> int:
  from xbook.infer import engine_bench
  return engine_bench.run(args)


def _bench_serve(args: argparse.Namespace) -> int:
  from xbook.infer import serve_bench
  return serve_bench.run(args)


def _bench_decode(args: argparse.Namespace) -> int:
  from xbook.infer import decode_bench
  return decode_bench.run(args)

def _benchmark(name: str):
  """The module benchmarks/<name>.py of the source tree (its top level imports nothing heavy)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(f"xbook_benchmark_{name}", _BENCHMARKS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _bench_input(args: argparse.Namespace) -> int:
  return _benchmark("input").run(args)
