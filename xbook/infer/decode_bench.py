"""Decoding speed of a trained run with the KV cache (xbook.infer.decode), and of transformers on its weights.

For the run's parameters (dtype as configured, one device) on random prompts, greedy, the median of
--repeats timed calls after a warm-up call of each shape (compiles are not timed; they are counted):
  prefill_tokens_per_s      one --prefill-token prompt, batch 1
  decode_tokens_per_s_bN    --tokens new tokens after a prompt of 256 - --tokens, batch N (1 and 8):
                            the tokens of all rows per second of the decode loop
  ms_per_token_at_C         batch 1, --tokens new tokens after a prompt of C - --tokens, so that the
                            context runs up to C (256, 1024 and 4096): decode seconds per token
  compiles_*                compiles of each jitted decode function in the whole benchmark
and what memory allows, since a batch-1 decode step reads every weight and the whole cache once:
  host_read_gb_per_s        this process's single-thread read bandwidth (numpy sum of a 64 MiB array)
  weight_bytes_per_token    the parameters a step reads (all but an untied embedding table, of which
                            it gathers one row)
  cache_bytes_per_token_at_C  the keys and values a step reads at context C (the cache is C rounded up to
                            a power of two, xbook.infer.decode.bucket)
  floor_ms_per_token_at_C   (weights + cache bytes) / host_read_gb_per_s: the time to stream them from
                            memory (a step whose bytes fit in the CPU's caches can beat it)
  latency_ratio, floor_ratio  ms_per_token at the longest context over the shortest, measured and floor:
                            on a small model the cache outweighs the weights at long contexts, so even
                            the floor grows with the context; on a large one the weights dominate and
                            both ratios approach 1
Then, in the same process, the same figures for transformers' `generate` (greedy, its own KV cache, torch
on the CPU, float32) on the weights exported to Hugging Face format with xbook.model.hf, and
`greedy_match`: the fraction of the batch-1 greedy tokens the two agree on before they first differ.
transformers and torch are test-only dependencies (requirements-test.txt): without them, or with
--no_transformers, only xbook's figures are printed.

Example:
  xbook bench decode --run_dir runs/demo --json
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

import numpy as np

from xbook.figures import print_figures
from xbook.infer import decode
from xbook.infer.generate import load_run
from xbook.infer.placement import inference_mesh, parse_mesh_flag
from xbook.model.hf import default_model_type, write_hf_checkpoint

CONTEXTS = (256, 1024, 4096)
BATCHES = (1, 8)
DECODE_CONTEXT = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The benchmark's flags (shared by `xbook bench decode` and benchmarks/decode.py)."""
  parser.add_argument("--run_dir", required=True, help="run directory of `xbook train`")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--tokens", type=int, default=64, help="new tokens per decode measurement")
  parser.add_argument("--prefill", type=int, default=1024, help="prompt tokens of the prefill measurement")
  parser.add_argument("--contexts", default=",".join(map(str, CONTEXTS)),
                      help="comma-separated contexts of the per-token latencies")
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per figure (the median is shown)")
  parser.add_argument("--no_transformers", action="store_true", help="skip the transformers comparison")
  parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPU count)")
  parser.add_argument("--json", action="store_true")
  parser.add_argument("--mesh", default=None, metavar="AXIS=N,...",
                      help="decode on a device mesh, e.g. tensor=4,sequence=2 (xbook.infer.placement)")
  parser.add_argument("--shard_cache_length", action="store_true",
                      help="with --mesh: shard the KV cache's length over the sequence axis")


def _prompts(batch: int, length: int, vocab: int, seed: int) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return rng.integers(3, vocab, (batch, length)).tolist()


def _xbook_figures(params: Any, config: Any, args: argparse.Namespace, contexts: list[int], mesh: Any = None,
                   rules: Any = None) -> tuple[dict[str, Any], list[int]]:
  """xbook's figures, and its greedy tokens after the batch-1 decode prompt (on `mesh` when given)."""
  params = decode.place_params(params, config, mesh=mesh, rules=rules)
  on = dict(mesh=mesh, rules=rules)

  def timed(prompts: list[list[int]], max_tokens: int) -> tuple[float, float, list[int]]:
    """Median prefill and decode seconds, and the first row's tokens."""
    decode.generate(params, config, prompts, max_tokens=max_tokens, **on)  # warm-up: compiles this shape
    runs = [decode.generate(params, config, prompts, max_tokens=max_tokens, **on)[0] for _ in range(args.repeats)]
    return (statistics.median(c.prefill_s for c in runs), statistics.median(c.decode_s for c in runs),
            runs[0].token_ids)

  figures: dict[str, Any] = {}
  prefill_s, _, _ = timed(_prompts(1, args.prefill, config.vocab_size, 0), 1)
  figures["prefill_tokens_per_s"] = args.prefill / prefill_s
  greedy: list[int] = []
  for batch in BATCHES:
    _, decode_s, tokens = timed(_prompts(batch, DECODE_CONTEXT - args.tokens, config.vocab_size, 1), args.tokens)
    figures[f"decode_tokens_per_s_b{batch}"] = batch * args.tokens / decode_s
    greedy = greedy or tokens
  for context in contexts:
    _, decode_s, _ = timed(_prompts(1, context - args.tokens, config.vocab_size, 2), args.tokens)
    figures[f"ms_per_token_at_{context}"] = 1e3 * decode_s / args.tokens
  figures.update({f"compiles_{name}": count for name, count in decode.compile_counts().items()})
  figures.update(_memory_floor(params, config, contexts, figures))
  return figures, greedy


def read_bandwidth(megabytes: int = 64, repeats: int = 20) -> float:
  """Bytes per second one thread of this host reads (the median numpy sum of a float32 array)."""
  array = np.ones(megabytes * 2 ** 20 // 4, np.float32)
  array.sum()
  seconds = []
  for _ in range(repeats):
    started = time.perf_counter()
    array.sum()
    seconds.append(time.perf_counter() - started)
  return array.nbytes / statistics.median(seconds)


def _memory_floor(params: Any, config: Any, contexts: list[int], measured: dict[str, Any]) -> dict[str, Any]:
  """The memory-bound floor of a batch-1 decode step at each context, beside the measured latencies."""
  import jax

  bandwidth = read_bandwidth()
  leaves = jax.tree_util.tree_leaves_with_path(params.tree)
  # The input embedding is gathered (one row), unless tied to the output layer, which reads all of it.
  table = 0 if config.tie_embeddings else sum(
      x.nbytes for path, x in leaves if "'embed'" in jax.tree_util.keystr(path))
  weights = sum(x.nbytes for _, x in leaves) - table + table // config.vocab_size
  cache_item = np.dtype(config.compute_dtype).itemsize
  figures: dict[str, Any] = {"host_read_gb_per_s": bandwidth / 1e9, "weight_bytes_per_token": weights}
  for context in contexts:
    cache = 2 * config.n_layers * config.n_kv_heads * config.head_dim * decode.bucket(context) * cache_item
    figures[f"cache_bytes_per_token_at_{context}"] = cache
    figures[f"floor_ms_per_token_at_{context}"] = 1e3 * (weights + cache) / bandwidth
  short, long_ = min(contexts), max(contexts)
  figures["latency_ratio"] = measured[f"ms_per_token_at_{long_}"] / measured[f"ms_per_token_at_{short}"]
  figures["floor_ratio"] = figures[f"floor_ms_per_token_at_{long_}"] / figures[f"floor_ms_per_token_at_{short}"]
  return figures


def _scanned(params: dict[str, Any], config: Any) -> tuple[dict[str, Any], Any]:
  """Host copies of the parameters with layers stacked, as xbook.model.hf writes them."""
  import dataclasses

  import jax
  params = jax.tree.map(np.asarray, params)
  if config.scan_layers:
    return params, config
  layers = [params[f"layers_{i}"] for i in range(config.n_layers)]
  rest = {k: v for k, v in params.items() if not k.startswith("layers_")}
  return {**rest, "layers": jax.tree.map(lambda *xs: np.stack(xs), *layers)}, dataclasses.replace(
      config, scan_layers=True)


def _transformers_figures(params: Any, config: Any, args: argparse.Namespace, contexts: list[int],
                          xbook_greedy: list[int]) -> dict[str, Any]:
  """The same figures for transformers' generate on the exported weights ({} with a note if missing)."""
  try:
    import torch
    import transformers
  except ImportError as error:
    return {"hf_skipped": f"transformers/torch not installed ({error}); pip install -r requirements-test.txt"}
  torch.set_num_threads(args.threads or os.cpu_count() or 1)
  params, config = _scanned(params, config)
  longest = max([*contexts, args.prefill + 1, DECODE_CONTEXT])
  with tempfile.TemporaryDirectory() as folder:
    write_hf_checkpoint(folder, config, params, model_type=default_model_type(config), dtype="float32",
                        max_position_embeddings=max(longest, 8192))
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

  def generate_s(prompts: list[list[int]], new: int) -> tuple[float, list[int]]:
    """Median seconds of generate, and the first row's new tokens."""
    ids = torch.tensor(prompts)
    options = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0,
                   attention_mask=torch.ones_like(ids))
    seconds = []
    with torch.no_grad():
      out = model.generate(ids, **options)  # warm-up
      for _ in range(args.repeats):
        started = time.perf_counter()
        model.generate(ids, **options)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), out[0, len(prompts[0]):].tolist()

  def decode_s(prompts: list[list[int]]) -> tuple[float, list[int]]:
    """Seconds of the --tokens - 1 decode steps after the first token (generate's total minus a
    one-token generate), and the greedy tokens."""
    total, tokens = generate_s(prompts, args.tokens)
    return total - generate_s(prompts, 1)[0], tokens

  figures: dict[str, Any] = {}
  seconds, _ = generate_s(_prompts(1, args.prefill, config.vocab_size, 0), 1)
  figures["hf_prefill_tokens_per_s"] = args.prefill / seconds
  for batch in BATCHES:
    seconds, tokens = decode_s(_prompts(batch, DECODE_CONTEXT - args.tokens, config.vocab_size, 1))
    figures[f"hf_decode_tokens_per_s_b{batch}"] = batch * (args.tokens - 1) / seconds
    if batch == 1:
      agree = next((i for i, (a, b) in enumerate(zip(tokens, xbook_greedy)) if a != b), len(tokens))
      figures["greedy_match"] = agree / max(len(tokens), 1)
  for context in contexts:
    seconds, _ = decode_s(_prompts(1, context - args.tokens, config.vocab_size, 2))
    figures[f"hf_ms_per_token_at_{context}"] = 1e3 * seconds / (args.tokens - 1)
  short, long_ = min(contexts), max(contexts)
  figures["hf_latency_ratio"] = figures[f"hf_ms_per_token_at_{long_}"] / figures[f"hf_ms_per_token_at_{short}"]
  figures["hf_torch_threads"] = torch.get_num_threads()
  return figures


def run(args: argparse.Namespace) -> int:
  """Run the benchmark the parsed flags describe and print its figures."""
  contexts = [int(c) for c in args.contexts.split(",") if c.strip()]
  if args.tokens < 2 or any(c <= args.tokens for c in contexts):
    raise SystemExit(f"error: --tokens {args.tokens} must be at least 2 and below every context ({contexts})")
  mesh = rules = None
  if args.mesh:
    mesh, rules = inference_mesh(parse_mesh_flag(args.mesh), args.shard_cache_length)
  run_ = load_run(args.run_dir, step=args.step, mesh=mesh, rules=rules)
  config = run_.model.config
  figures: dict[str, Any] = {"step": run_.step, "params": config.num_params(), "dtype": config.dtype,
                             "param_dtype": config.param_dtype, "tokens": args.tokens}
  xbook, greedy = _xbook_figures(run_.params, config, args, contexts, mesh, rules)
  figures.update(xbook)
  if not args.no_transformers:
    figures.update(_transformers_figures(run_.params, config, args, contexts, greedy))
  print_figures(figures, args.json)
  return 0
